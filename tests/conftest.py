"""Shared real components: one local Ray instance and one S3 server (moto) per session.

The S3 variables are set before Ray starts so that trial processes inherit them,
exactly as on a cluster where the chart injects them into every Ray pod. The S3
server checks credentials (moto's IAM auth): after the first three unauthenticated
calls that create our IAM user and its key, every request must be signed by that key.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"  # read by moto at import

import boto3
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tool(name: str) -> str:
    """A real binary from PATH (helm, prometheus, promtool); `make test` runs `make tools` first, so a missing one is a failure."""
    binary = shutil.which(name)
    assert binary, f"{name} is not on PATH: run `make tools` and put .tools/bin on PATH (make test does both)"
    return binary


@pytest.fixture()
def hung_endpoint():
    """`http://127.0.0.1:PORT` that accepts connections and never answers (a hung proxy or load balancer).

    Accepted sockets are held open until the test ends, or at most 120 s.
    """
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    server.settimeout(0.2)
    held, stop = [], threading.Event()

    def accept_and_hold() -> None:
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept_and_hold, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for sock in [*held, server]:
        sock.close()


class _SlowDown(http.server.BaseHTTPRequestHandler):
    """Answers every S3 request as throttled S3 does: 503 with a `SlowDown` error body (none for HEAD)."""

    BODY = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")

    def _answer(self) -> None:
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.BODY)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def slow_down_endpoint():
    """`http://127.0.0.1:PORT` that answers every request with 503 SlowDown."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowDown)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API (moto's server) on 127.0.0.1; the AWS variables point at it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    iam = boto3.client(
        "iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap"
    )
    iam.create_user(UserName="pbt-job")
    iam.put_user_policy(UserName="pbt-job", PolicyName="all", PolicyDocument=json.dumps(ALLOW_ALL))
    key = iam.create_access_key(UserName="pbt-job")["AccessKey"]
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID=key["AccessKeyId"],
        AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"],
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield endpoint
    server.stop()


@pytest.fixture()
def bucket(s3_endpoint) -> str:
    """A fresh bucket per test."""
    name = f"pbt-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


class RestartableS3:
    """A second S3 endpoint over the session's moto backend (same buckets, same users and keys),
    stopped and restarted on the same port: the MinIO restart of a real cluster."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = None
        self.start()

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture()
def restartable_s3(s3_endpoint):
    s3 = RestartableS3()
    yield s3
    s3.stop()


@pytest.fixture(scope="session")
def ray_start_2_cpus(s3_endpoint):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def list_keys(bucket: str, prefix: str = "") -> list[str]:
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


def read_object(bucket: str, key: str) -> str:
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    return client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()


def donor_modules(event: dict, exploits: list[dict], modules_dir: str) -> Path:
    """The modules a recipient loaded at `event`. A donor restored from a pin may be a donor before
    it has a checkpoint of its own, and that pin is released later; a pin is a copy of the
    checkpoint its own exploit names, kept while `num_to_keep` is null."""
    source_of_pin = {e["pinned_checkpoint"]: e["donor_checkpoint"] for e in exploits}
    path = event["donor_checkpoint"]
    while path in source_of_pin:
        path = source_of_pin[path]
    return Path(path) / modules_dir
