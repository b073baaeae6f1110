"""Kubernetes Events on the RayJob, posted to a stand-in API server.

No real API server can run here (no cluster, no Docker); `scripts/kind-e2e.sh` checks the
events on a real one. The stand-in speaks the part of the API the driver uses, over TLS
as in a pod: GET the RayJob (for its uid) and POST core/v1 Events, answering with the
API server's own Status objects, and it records every request. The client is set up
exactly as in a pod, by `RayJobEvents.in_cluster` from KUBERNETES_SERVICE_HOST/PORT and a
service account folder (token, ca.crt, namespace) that the test writes.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import logging
import re
import socket
import ssl
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import free_port
from pbt_job import k8s_events
from pbt_job.k8s_events import Event, RayJobEvents
from pbt_job.run_folder import RunFiles, TrialLedger, parse_lineage
from pbt_job.storage import parse_storage_uri
from pbt_job.training.config import load_config
from pbt_job.training.rayjob_events import (
    RayJobEventLog,
    exploit_message,
    finished_message,
    last_error_line,
    number,
)
from pbt_job.training.run import train
from test_training_pbt import TINY

NAMESPACE = "training"
RAYJOB = "pbt-job"
RAYJOB_UID = "0b7c6a8e-5f0d-4c1e-9d53-2f0a7e1c4b11"
TOKEN = "stand-in-service-account-token"
RAYJOB_PATH = f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayjobs/{RAYJOB}"
EVENTS_PATH = f"/api/v1/namespaces/{NAMESPACE}/events"
FORBIDDEN_MESSAGE = (
    f'events is forbidden: User "system:serviceaccount:{NAMESPACE}:{RAYJOB}" cannot create resource "events" '
    f'in API group "" in the namespace "{NAMESPACE}"'
)
AT = 1_700_000_000.0
"""A whole second: the eventTime must still carry six fraction digits."""


def status(code: int, reason: str, message: str) -> dict:
    """A `Status` as the API server answers a failed request."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class StandInApiServer(http.server.ThreadingHTTPServer):
    """The part of the Kubernetes API the driver uses, over TLS, recording each request.

    `answers` holds what the next POSTs get instead of a 201 (an outage, a refusal);
    `refuse_events` refuses every POST with 403 as RBAC does.
    """

    def __init__(self, context: ssl.SSLContext):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.requests: list[dict] = []
        self.answers: list[tuple[int, dict]] = []
        self.refuse_events = False

    @property
    def port(self) -> int:
        return self.server_address[1]

    def bodies(self) -> list[dict]:
        return [r["body"] for r in self.requests if r["method"] == "POST"]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: StandInApiServer

    def do_GET(self) -> None:
        self._record(None)
        if not self._authorized():
            return
        if self.path != RAYJOB_PATH:
            self._answer(404, status(404, "NotFound", f"rayjobs.ray.io {self.path.rsplit('/', 1)[-1]!r} not found"))
            return
        self._answer(200, {"apiVersion": "ray.io/v1", "kind": "RayJob",
                           "metadata": {"name": RAYJOB, "namespace": NAMESPACE, "uid": RAYJOB_UID}, "spec": {}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._record(body)
        if not self._authorized():
            return
        if self.path != EVENTS_PATH:
            self._answer(404, status(404, "NotFound", "the server could not find the requested resource"))
        elif self.server.refuse_events:
            self._answer(403, status(403, "Forbidden", FORBIDDEN_MESSAGE))
        elif self.server.answers:
            self._answer(*self.server.answers.pop(0))
        else:
            self._answer(201, {**body, "metadata": {**body["metadata"], "uid": "stored", "resourceVersion": "1"}})

    def _record(self, body: dict | None) -> None:
        self.server.requests.append(
            {"method": self.command, "path": self.path, "authorization": self.headers["Authorization"], "body": body}
        )

    def _authorized(self) -> bool:
        if self.headers["Authorization"] != f"bearer {TOKEN}":
            self._answer(401, status(401, "Unauthorized", "Unauthorized"))
            return False
        return True

    def _answer(self, code: int, document: dict) -> None:
        data = json.dumps(document).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def cluster_ca(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the stand-in's, and the pod's ca.crt) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stand-in kube-apiserver")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("ca")
    cert_file, key_file = folder / "ca.crt", folder / "ca.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    return cert_file, key_file


@pytest.fixture()
def api_server(cluster_ca):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*map(str, cluster_ca))
    server = StandInApiServer(context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def pod_environment(tmp_path: Path, cluster_ca: tuple[Path, Path], port: int) -> tuple[dict[str, str], Path]:
    """What the kubelet and the chart give the head pod: the in-cluster variables, the RayJob's
    name, and the service account folder (token, ca.crt, namespace)."""
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(TOKEN)
    (account / "ca.crt").write_bytes(cluster_ca[0].read_bytes())
    (account / "namespace").write_text(NAMESPACE)
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port),
               k8s_events.RAYJOB_NAME_ENV: RAYJOB}
    return environ, account


@pytest.fixture()
def in_pod(tmp_path, cluster_ca, api_server, monkeypatch) -> StandInApiServer:
    """This process as the driver in the head pod, talking to the stand-in API server."""
    environ, account = pod_environment(tmp_path, cluster_ca, api_server.port)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(k8s_events, "SERVICE_ACCOUNT_DIR", account)
    return api_server


@pytest.fixture()
def event_log(caplog):
    caplog.set_level(logging.DEBUG, logger="pbt_job")
    return caplog


def events_logged(caplog, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == k8s_events.__name__ and r.levelno == level]


def run_files(folder: Path) -> RunFiles:
    return RunFiles(partial(pyarrow.fs.LocalFileSystem), str(folder))


# --- Requests as the API server sees them --------------------------------------------


def test_an_event_is_posted_on_the_rayjob_with_its_uid(tmp_path, cluster_ca, api_server):
    environ, account = pod_environment(tmp_path, cluster_ca, api_server.port)
    events = RayJobEvents.in_cluster(environ, account)
    events.post(Event("Exploit", "trial a_00001 cloned a_00000 at iteration 4: lr 0.001 -> 0.0005", at=AT))
    events.close()

    assert [(r["method"], r["path"]) for r in api_server.requests] == [("GET", RAYJOB_PATH), ("POST", EVENTS_PATH)]
    assert {r["authorization"] for r in api_server.requests} == {f"bearer {TOKEN}"}
    [body] = api_server.bodies()
    name = body["metadata"].pop("name")
    assert re.fullmatch(rf"{RAYJOB}\.[0-9a-f]+", name), name
    assert body == {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"namespace": NAMESPACE},
        "involvedObject": {"apiVersion": "ray.io/v1", "kind": "RayJob", "name": RAYJOB, "namespace": NAMESPACE,
                           "uid": RAYJOB_UID},
        "reason": "Exploit",
        "action": "Exploit",
        "type": "Normal",
        "message": "trial a_00001 cloned a_00000 at iteration 4: lr 0.001 -> 0.0005",
        "source": {"component": "pbt-job"},
        "reportingComponent": "pbt-job",
        "reportingInstance": socket.gethostname(),
        "firstTimestamp": "2023-11-14T22:13:20Z",
        "lastTimestamp": "2023-11-14T22:13:20Z",
        "eventTime": "2023-11-14T22:13:20.000000Z",
        "count": 1,
    }


def test_the_rayjob_is_read_once_and_long_messages_are_cut_to_the_api_s_byte_limit(tmp_path, cluster_ca, api_server):
    events = RayJobEvents.in_cluster(*pod_environment(tmp_path, cluster_ca, api_server.port))
    events.post(Event("TrialError", "ü" * 3000, warning=True))
    events.post(Event("JobFinished", "training ended"))
    events.close()
    assert [r["method"] for r in api_server.requests] == ["GET", "POST", "POST"]
    first, second = api_server.bodies()
    assert (first["type"], first["message"]) == ("Warning", "ü" * (k8s_events.MESSAGE_LIMIT // 2))
    assert first["metadata"]["name"] != second["metadata"]["name"]


def test_the_callback_posts_exploits_trial_errors_and_the_end(tmp_path, in_pod, event_log):
    """A stub replays what Tune calls, in its order, on one driver session.

    1. An exploit recorded by an earlier session (before `setup`) is not posted again.
    2. The scheduler records an exploit, then Tune hands the result to the callbacks: posted.
    3. A trial fails and is restarted, then fails for good: two TrialError warnings quoting the error.
    4. The experiment ends with a trial in ERROR: a JobFinished warning naming the best trial.
    """
    files = run_files(tmp_path)
    files.record({"event": "exploit", "time": time.time() - 60, "iteration": 2, "recipient": "a_00000", "donor": "a_00001"})
    callback = RayJobEventLog(files, "max")
    callback.setup()
    exploit = {"event": "exploit", "time": time.time(), "iteration": 4, "recipient": "a_00001", "donor": "a_00000",
               "recipient_metric": 1.5, "donor_metric": 3.25,
               "config_before": {"lr": 1e-3, "clip_param": 0.2}, "config_after": {"lr": 5e-4, "clip_param": 0.2}}
    files.record(exploit)
    trials = [SimpleNamespace(trial_id="a_00000", status="TERMINATED"), SimpleNamespace(trial_id="a_00001", status="RUNNING")]
    callback.on_trial_result(1, trials, trials[1], {"training_iteration": 4})
    callback.on_trial_result(2, trials, trials[0], {"training_iteration": 4})
    error_file = tmp_path / "error.txt"
    error_file.write_text("Failure # 1 (occurred at 2024-05-01_12-00-00)\nray::PBTPPO.train() (pid=7)\n"
                          '  File "algorithm.py", line 9, in step\nValueError: the env exploded\n\n')
    failing = SimpleNamespace(trial_id="a_00001", last_result={"training_iteration": 5}, num_failures=1,
                              error_file=str(error_file), status="RUNNING")
    callback.on_trial_recover(3, trials, failing)
    failing.num_failures, failing.status = 4, "ERROR"
    callback.on_trial_error(4, trials, failing)
    files.ledgers().update(a_00000=TrialLedger(iteration=6, metric=3.5), a_00001=TrialLedger(iteration=5, metric=2.0))
    callback.on_experiment_end([trials[0], failing])

    assert [(b["reason"], b["type"], b["message"]) for b in in_pod.bodies()] == [
        ("Exploit", "Normal", "trial a_00001 cloned a_00000 at iteration 4: lr 0.001 -> 0.0005, metric 1.5 -> 3.25"),
        ("TrialError", "Warning", "trial a_00001 failed at iteration 5 (failure 1), Tune restarts it from its last "
                                  "checkpoint: ValueError: the env exploded"),
        ("TrialError", "Warning", "trial a_00001 failed at iteration 5 (failure 4), no retry left, the trial stays in "
                                  "ERROR: ValueError: the env exploded"),
        ("JobFinished", "Warning", "training ended: 2 trials (1 ERROR, 1 TERMINATED), 2 exploits; "
                                   "best trial a_00000, metric 3.5 at iteration 6"),
    ]
    assert in_pod.bodies()[0]["eventTime"] == datetime.fromtimestamp(exploit["time"], timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"), "an exploit is dated when it was decided"
    assert not events_logged(event_log, logging.WARNING)


@pytest.mark.parametrize("missing", ["KUBERNETES_SERVICE_HOST", "token", k8s_events.RAYJOB_NAME_ENV])
def test_outside_a_cluster_or_without_the_rayjob_name_nothing_is_sent_or_logged(
    tmp_path, cluster_ca, api_server, monkeypatch, event_log, missing
):
    """Off without a word: not in a pod (no service host, no token) or not started by the chart (no RayJob name)."""
    environ, account = pod_environment(tmp_path, cluster_ca, api_server.port)
    for name, value in environ.items():
        if name != missing:
            monkeypatch.setenv(name, value)
    if missing in environ:
        monkeypatch.delenv(missing, raising=False)
    else:
        (account / missing).unlink()
    monkeypatch.setattr(k8s_events, "SERVICE_ACCOUNT_DIR", account)
    assert RayJobEvents.in_cluster() is None

    files = run_files(tmp_path)
    callback = RayJobEventLog(files, "max")
    callback.setup()
    files.record({"event": "exploit", "time": time.time(), "iteration": 2, "recipient": "a_00000", "donor": "a_00001"})
    trial = SimpleNamespace(trial_id="a_00000", status="TERMINATED")
    callback.on_trial_result(1, [trial], trial, {})
    callback.on_experiment_end([trial])
    assert api_server.requests == []
    assert [r for r in event_log.records if r.name.startswith("pbt_job")] == []


# --- Failures: logged once, never raised ---------------------------------------------


def test_a_refusal_is_logged_once_and_stops_the_events_not_training(tmp_path, in_pod, event_log):
    """RBAC refuses events (the chart's Role is off): one warning naming the fix, no more requests,
    and the callback returns as usual every time."""
    in_pod.refuse_events = True
    files = run_files(tmp_path)
    callback = RayJobEventLog(files, "max")
    callback.setup()
    trial = SimpleNamespace(trial_id="a_00000", status="RUNNING", last_result={}, num_failures=1, error_file=None)
    for iteration in (2, 4):
        files.record({"event": "exploit", "time": time.time(), "iteration": iteration, "recipient": "a_00000",
                      "donor": "a_00001"})
        callback.on_trial_result(iteration, [trial], trial, {})
    callback.on_trial_recover(5, [trial], trial)
    callback.on_experiment_end([trial])

    assert [(r["method"], r["path"]) for r in in_pod.requests] == [("GET", RAYJOB_PATH), ("POST", EVENTS_PATH)]
    [warning] = events_logged(event_log, logging.WARNING)
    assert f"RayJob {NAMESPACE}/{RAYJOB}" in warning
    assert f"403 Forbidden: {FORBIDDEN_MESSAGE}" in warning
    assert "ServiceAccount" in warning and "kubernetesEvents.enabled" in warning and "no more events" in warning


def test_an_outage_drops_events_warns_once_and_later_ones_go_out(tmp_path, cluster_ca, api_server, event_log):
    api_server.answers = [(503, status(503, "ServiceUnavailable", "the server is currently unable to handle the request"))] * 2
    events = RayJobEvents.in_cluster(*pod_environment(tmp_path, cluster_ca, api_server.port))
    for reason in ("Exploit", "TrialError", "JobFinished"):
        events.post(Event(reason, reason.lower()))
    events.close()
    assert [r["body"]["reason"] for r in api_server.requests if r["method"] == "POST"] == ["Exploit", "TrialError", "JobFinished"]
    [warning] = events_logged(event_log, logging.WARNING)
    assert "503 Service Unavailable" in warning and "tried again" in warning, warning
    assert len(events_logged(event_log, logging.DEBUG)) == 1, "the second failure is only a debug line"


def test_an_api_server_that_does_not_answer_is_an_outage(tmp_path, cluster_ca, event_log):
    environ, account = pod_environment(tmp_path, cluster_ca, free_port())  # nothing listens there
    events = RayJobEvents.in_cluster(environ, account)
    events.post(Event("Exploit", "first"))
    events.post(Event("Exploit", "second"))
    events.close()
    [warning] = events_logged(event_log, logging.WARNING)
    assert "tried again" in warning and "refused" in warning.lower(), warning


# --- Messages ---------------------------------------------------------------------------


def test_exploit_message_names_the_trials_the_changed_hyperparameters_and_the_metric():
    event = {"recipient": "3f2a1_00003", "donor": "3f2a1_00001", "iteration": 40, "recipient_metric": 120.0,
             "donor_metric": 190.0, "config_before": {"lr": 1e-4, "clip_param": 0.2, "entropy_coeff": 0.0},
             "config_after": {"lr": 8e-5, "clip_param": 0.2, "entropy_coeff": 0.001}}
    assert exploit_message(event) == (
        "trial 3f2a1_00003 cloned 3f2a1_00001 at iteration 40: entropy_coeff 0 -> 0.001, lr 0.0001 -> 8e-5, "
        "metric 120 -> 190"
    )


@pytest.mark.parametrize(("value", "text"), [
    (1e-4, "0.0001"), (8e-5, "8e-5"), (3.0e-12, "3e-12"), (123456.0, "1.235e5"), (190.0, "190"), (0.23456, "0.2346"),
    (7, "7"), (float("nan"), "nan"), (None, "None"), (True, "True"),
])
def test_numbers_are_written_short(value, text):
    assert number(value) == text


def test_finished_message_says_how_training_ended():
    best = ("a_00002", TrialLedger(iteration=500, metric=190.25))
    assert finished_message(Counter(TERMINATED=4), 37, best, None) == (
        "training ended: 4 trials (4 TERMINATED), 37 exploits; best trial a_00002, metric 190.2 at iteration 500"
    )
    assert finished_message(Counter(PAUSED=1, RUNNING=3), 0, None, "SIGTERM") == (
        "training interrupted by SIGTERM (resumable from storage): 4 trials (1 PAUSED, 3 RUNNING), 0 exploits"
    )


def test_the_last_error_line_is_the_exception(tmp_path):
    error_file = tmp_path / "error.txt"
    error_file.write_text("Failure # 1\nTraceback\nRuntimeError: " + "y" * 1000 + "\n")
    assert last_error_line(str(error_file)) == ("RuntimeError: " + "y" * 1000)[:300]
    assert last_error_line(str(tmp_path / "missing.txt")) == last_error_line(None) == "see the trial's error.txt"


# --- A real run ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_run_posts_each_exploit_and_its_end_on_the_rayjob(ray_start_2_cpus, tmp_path, in_pod):
    """A population of 2 trains as the driver of a RayJob would: every exploit of lineage.jsonl,
    in order, and the end reach the API server; the RayJob is read once."""
    job = load_config(TINY, ["stop.training_iteration=4", "pbt.perturbation_interval=1"])  # 3 rounds: exploits are sure
    outcome = train(job, parse_storage_uri(str(tmp_path)), "events", resume="never")
    assert outcome.errors == 0
    lineage = parse_lineage((tmp_path / "events" / "lineage.jsonl").read_text())
    assert lineage, "the run exploited"
    assert [r["method"] for r in in_pod.requests].count("GET") == 1
    posted = [(b["reason"], b["type"], b["message"]) for b in in_pod.bodies()]
    assert posted[:-1] == [("Exploit", "Normal", exploit_message(event)) for event in lineage]
    reason, kind, message = posted[-1]
    assert (reason, kind) == ("JobFinished", "Normal")
    assert message.startswith(f"training ended: 2 trials (2 TERMINATED), {len(lineage)} exploits; best trial ")
