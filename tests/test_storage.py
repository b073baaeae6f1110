"""Storage: which errors are outages (retried, resumable) and which fail at once with their own words; URIs with
one meaning; messages without secrets.

Every error here is raised by the real component: pyarrow's and botocore's S3 clients
against moto (access denied, missing bucket), a port nobody listens on (refused), an
endpoint that accepts and never answers (timeout) and one that answers 503 SlowDown
(throttling); the socket and file errors come from real calls where a real call can
raise them here (root ignores permissions, so EACCES and EMFILE are built as Python
raises them).
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import botocore.config
import pyarrow.fs
import pytest

from conftest import REPO, free_port
from pbt_job.storage import StorageError, StorageOutage, is_outage, parse_storage_uri, redact, retry_limit_s, retry_storage
from test_cli import TINY, assert_bad_input, run_cli


def pyarrow_error(endpoint: str, path: str = "bucket/key", write: bool = False, keys: dict | None = None) -> OSError:
    """What pyarrow's S3 filesystem raises at `endpoint` for a stat (or a write) of `path`, tried once."""
    keys = keys or {"access_key": "AKIAEXAMPLE", "secret_key": "example"}
    fs = pyarrow.fs.S3FileSystem(
        endpoint_override=endpoint.removeprefix("http://"), scheme="http", region="us-east-1",
        connect_timeout=1, request_timeout=1, retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=1),
        **keys,
    )
    with pytest.raises(OSError) as raised:
        if write:
            with fs.open_output_stream(path) as stream:
                stream.write(b"x")
        else:
            fs.get_file_info(path)
    return raised.value


def botocore_error(endpoint: str, bucket: str = "bucket", keys: dict | None = None) -> Exception:
    """What boto3 raises at `endpoint` for a put into `bucket`, tried once."""
    keys = keys or {"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": "example"}
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", **keys,
        config=botocore.config.Config(connect_timeout=1, read_timeout=1, retries={"total_max_attempts": 1}),
    )
    with pytest.raises(Exception) as raised:
        client.put_object(Bucket=bucket, Key="key", Body=b"x")
    return raised.value


def refused_socket_error() -> OSError:
    with pytest.raises(OSError) as raised, socket.socket() as sock:
        sock.connect(("127.0.0.1", free_port()))
    return raised.value


@pytest.fixture(scope="module")
def denied_keys(s3_endpoint) -> dict[str, str]:
    """Keys of an IAM user with no policy: moto answers AccessDenied to everything it asks."""
    iam = boto3.client("iam", endpoint_url=s3_endpoint)
    user = f"denied-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return {"access_key": key["AccessKeyId"], "secret_key": key["SecretAccessKey"]}


def own_keys() -> dict[str, str]:
    """The session's allowed keys (conftest's `s3_endpoint` puts them in the environment)."""
    return {"access_key": os.environ["AWS_ACCESS_KEY_ID"], "secret_key": os.environ["AWS_SECRET_ACCESS_KEY"]}


def boto_keys(keys: dict[str, str]) -> dict[str, str]:
    return {"aws_access_key_id": keys["access_key"], "aws_secret_access_key": keys["secret_key"]}


def test_connection_failures_timeouts_5xx_and_throttling_are_outages(hung_endpoint, slow_down_endpoint):
    dead = f"http://127.0.0.1:{free_port()}"
    errors = {
        "refused (socket)": refused_socket_error(),
        "refused (pyarrow)": pyarrow_error(dead),
        "refused (botocore)": botocore_error(dead),
        "hung (pyarrow)": pyarrow_error(hung_endpoint),
        "hung (botocore)": botocore_error(hung_endpoint),
        "503 (pyarrow stat)": pyarrow_error(slow_down_endpoint),
        "SlowDown (pyarrow write)": pyarrow_error(slow_down_endpoint, write=True),
        "SlowDown (botocore)": botocore_error(slow_down_endpoint),
    }
    seen = {name: f"{type(err).__name__}: {err}" for name, err in errors.items()}
    for name, needle in [("refused (pyarrow)", "NETWORK_CONNECTION"), ("hung (pyarrow)", "Timeout"),
                         ("hung (botocore)", "Read timeout"), ("503 (pyarrow stat)", "HTTP status 503"),
                         ("SlowDown (pyarrow write)", "SLOW_DOWN"), ("SlowDown (botocore)", "SlowDown")]:
        assert needle in seen[name], seen  # each fault is the one named
    assert {name: is_outage(err) for name, err in errors.items()} == dict.fromkeys(errors, True), seen


def test_refusals_not_found_and_local_errors_are_not_outages(s3_endpoint, bucket, denied_keys, tmp_path):
    with pytest.raises(FileExistsError) as exists:
        os.mkdir(tmp_path)
    with pytest.raises(FileNotFoundError) as missing:
        open(tmp_path / "missing")
    errors = {
        "too many open files": OSError(errno.EMFILE, os.strerror(errno.EMFILE)),
        "permission denied": PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/runs"),
        "no space left": OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
        "file exists": exists.value,
        "file not found": missing.value,
        "access denied (pyarrow stat)": pyarrow_error(s3_endpoint, f"{bucket}/key", keys=denied_keys),
        "access denied (pyarrow write)": pyarrow_error(s3_endpoint, f"{bucket}/key", write=True, keys=denied_keys),
        "no such bucket (pyarrow write)": pyarrow_error(s3_endpoint, "no-such-bucket-here/key", write=True, keys=own_keys()),
        "access denied (botocore)": botocore_error(s3_endpoint, bucket, keys=boto_keys(denied_keys)),
        "no such bucket (botocore)": botocore_error(s3_endpoint, "no-such-bucket-here", keys=boto_keys(own_keys())),
        "not an I/O error": ValueError("bad value"),
        "an outage retried to the limit": StorageOutage.stopped("writing x", pyarrow_error(f"http://127.0.0.1:{free_port()}")),
    }
    seen = {name: f"{type(err).__name__}: {err}" for name, err in errors.items()}
    for name, needle in [("access denied (pyarrow write)", "ACCESS_DENIED"), ("access denied (botocore)", "AccessDenied"),
                         ("no such bucket (pyarrow write)", "NO_SUCH_BUCKET"), ("no such bucket (botocore)", "NoSuchBucket")]:
        assert needle in seen[name], seen
    assert {name: is_outage(err) for name, err in errors.items()} == dict.fromkeys(errors, False), seen


def test_retry_storage_retries_outages_and_raises_anything_else_at_once(monkeypatch, s3_endpoint, bucket, denied_keys):
    monkeypatch.setenv("PBT_JOB_STORAGE_RETRY_S", "20")
    outage = pyarrow_error(f"http://127.0.0.1:{free_port()}")
    calls = []

    def fails_twice() -> str:
        calls.append(time.monotonic())
        if len(calls) <= 2:
            raise outage
        return "written"

    assert retry_storage(fails_twice, "writing x") == "written" and len(calls) == 3

    for refusal in (OSError(errno.EMFILE, os.strerror(errno.EMFILE)),
                    pyarrow_error(s3_endpoint, f"{bucket}/key", write=True, keys=denied_keys)):
        calls.clear()

        def refused() -> None:
            calls.append(time.monotonic())
            raise refusal

        with pytest.raises(OSError) as raised:
            retry_storage(refused, "writing x")
        assert raised.value is refusal, f"{refusal!r} became {raised.value!r}"
        assert len(calls) == 1, f"{refusal!r} was retried {len(calls) - 1} times"

    monkeypatch.setenv("PBT_JOB_STORAGE_RETRY_S", "1")
    with pytest.raises(StorageOutage, match="storage failed while writing x"):
        retry_storage(lambda: (_ for _ in ()).throw(outage), "writing x")


def test_a_permission_error_during_a_run_is_not_reported_as_a_storage_outage(s3_endpoint, bucket, denied_keys):
    """Tune wraps what failed in its own `TuneError`; only an outage inside becomes 'storage failed ... resume'."""
    from ray.tune.error import TuneError

    from pbt_job.training.run import _storage_outage_behind

    def failed_fit(cause: BaseException) -> TuneError:
        try:
            raise TuneError("The Ray Tune run failed.") from cause
        except TuneError as err:
            return err

    not_outages = {
        "permission denied": PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/runs/x/experiment_state.json"),
        "too many open files": OSError(errno.EMFILE, os.strerror(errno.EMFILE)),
        "access denied (pyarrow)": pyarrow_error(s3_endpoint, f"{bucket}/key", write=True, keys=denied_keys),
    }
    assert {name: _storage_outage_behind(failed_fit(err)) for name, err in not_outages.items()} == dict.fromkeys(
        not_outages
    )

    refused = pyarrow_error(f"http://127.0.0.1:{free_port()}")
    outage = _storage_outage_behind(failed_fit(refused))
    assert isinstance(outage, StorageOutage) and "storage failed while" in str(outage) and "resume" in str(outage)
    ours = StorageOutage.stopped("writing x", refused)
    assert _storage_outage_behind(failed_fit(ours)) is ours


# One meaning per URI: what parse_storage_uri refuses, with the rule it names and never a secret.

URI_REFUSALS = {
    "file-relative": ("file://data/runs", ["file:///abs/path or a plain path", "names host 'data'"]),
    "file-host": ("file://nas/srv/runs", ["file:///abs/path or a plain path"]),
    "file-no-slashes": ("file:data/runs", ["file:///abs/path or a plain path"]),
    "file-empty": ("file://", ["file:///abs/path or a plain path"]),
    "bucket-port": ("s3://bucket:99/x", ["'bucket:99' is not an S3 bucket name", "its port with AWS_ENDPOINT_URL"]),
    "bucket-credentials": ("s3://u:p4ss@bucket/x", ["credentials do not belong in the URI", "AWS_SECRET_ACCESS_KEY"]),
    "bucket-space": ("s3://my bucket/x", ["'my bucket' is not an S3 bucket name", "lowercase"]),
    "bucket-uppercase": ("s3://MyBucket/x", ["'MyBucket' is not an S3 bucket name"]),
    "bucket-underscore": ("s3://my_bucket/x", ["'my_bucket' is not an S3 bucket name"]),
    "bucket-too-short": ("s3://ab/x", ["'ab' is not an S3 bucket name", "3-63"]),
    "bucket-too-long": (f"s3://{'a' * 64}/x", ["is not an S3 bucket name", "3-63"]),
    "bucket-hyphen-end": ("s3://bucket-/x", ["'bucket-' is not an S3 bucket name", "ending with a letter or digit"]),
    "bucket-double-dot": ("s3://a..b/x", ["'a..b' is not an S3 bucket name"]),
    "bucket-ip": ("s3://192.168.1.10/x", ["'192.168.1.10' is not an S3 bucket name", "not an IP address"]),
    "no-such-user": ("~nosuchuser-pbt/x", ["'~nosuchuser-pbt' is no user's home folder"]),
    "gcs": ("gs://x", ["S3 API"]),
}


@pytest.mark.parametrize("case", list(URI_REFUSALS))
@pytest.mark.parametrize("flag", ["--storage", "--out"])
def test_a_uri_that_means_something_else_or_nothing_is_refused_naming_its_flag_and_rule(case, flag):
    uri, needles = URI_REFUSALS[case]
    with pytest.raises(StorageError) as refused:
        parse_storage_uri(uri, flag=flag)
    message = str(refused.value)
    assert message.startswith(f"{flag} ") and "\n" not in message, message
    assert all(needle in message for needle in needles), message
    assert "p4ss" not in message, message


def test_uris_that_name_one_place_are_taken_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_storage_uri(f"file://{tmp_path}/runs").path == str(tmp_path / "runs")
    assert parse_storage_uri(f"file://localhost{tmp_path}/runs").path == str(tmp_path / "runs")
    assert parse_storage_uri("data/runs").path == str(tmp_path / "data" / "runs")
    assert parse_storage_uri("~/runs").path == str(Path.home() / "runs")
    for bucket in ("abc", "my.bucket-1", "a" * 63):
        location = parse_storage_uri(f"s3://{bucket}/runs/")
        assert (location.bucket, location.path, location.uri) == (bucket, f"{bucket}/runs", f"s3://{bucket}/runs")


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://key:secret@minio:9000", "http://***@minio:9000"),
        ("https://AKIA:wJalr/K7MDENG@s3.example.com/x", "https://***@s3.example.com/x"),
        ("key:secret@minio:9000", "***@minio:9000"),
        ("http://minio:9000", "http://minio:9000"),
    ],
    ids=["userinfo", "secret-with-slash", "no-scheme", "no-userinfo"],
)
def test_redact_hides_userinfo(uri, shown):
    assert redact(uri) == shown


@pytest.mark.parametrize("value", ["inf", "Infinity", "nan", "-1", "1e9", "86401", "soon"])
def test_a_retry_limit_that_never_ends_or_is_no_number_is_refused(monkeypatch, value):
    monkeypatch.setenv("PBT_JOB_STORAGE_RETRY_S", value)
    with pytest.raises(StorageError, match=f"PBT_JOB_STORAGE_RETRY_S={value!r}: .* from 0 to 86400"):
        retry_limit_s()


@pytest.mark.parametrize(("value", "limit"), [("", 300.0), ("0", 0.0), ("2.5", 2.5), ("86400", 86400.0)])
def test_a_retry_limit_within_a_day_is_taken(monkeypatch, value, limit):
    monkeypatch.setenv("PBT_JOB_STORAGE_RETRY_S", value)
    assert retry_limit_s() == limit


def test_a_file_in_the_way_of_a_folder_is_not_an_outage(tmp_path):
    """What pyarrow's local filesystem raises when a file stands where a folder is to be made."""
    (tmp_path / "taken").write_text("x")
    with pytest.raises(FileExistsError) as exists:
        pyarrow.fs.LocalFileSystem().create_dir(str(tmp_path / "taken"))
    assert not is_outage(exists.value)


# Secrets stay secret and bad environment is bad input: the real command, one line, exit 2.

SECRET = "s3cr3t-in-the-url"


@pytest.mark.parametrize("variable", ["AWS_DEFAULT_REGION", "AWS_REGION"])
def test_a_region_that_is_no_region_name_is_bad_input(bucket, variable):
    env = {"AWS_DEFAULT_REGION": "", variable: "not a region!"}
    proc = run_cli("validate", "--config", str(TINY), "--storage", f"s3://{bucket}/runs", env=env, timeout=60)
    assert_bad_input(proc, f"{variable}='not a region!'", "not a region name", "us-east-1")


def secret_cases(bucket: str, moto: str) -> dict[str, tuple[tuple[str, ...], dict[str, str], int]]:
    """command line, environment, exit code: the secret sits in AWS_ENDPOINT_URL or in a URI the user typed."""
    dead = f"http://key:{SECRET}@127.0.0.1:{free_port()}"
    with_secret = moto.replace("http://", f"http://key:{SECRET}@")
    config = ("--config", str(TINY))
    return {
        "validate-works": (("validate", *config, "--storage", f"s3://{bucket}/runs"), {"AWS_ENDPOINT_URL": with_secret}, 0),
        "validate-unreachable": (("validate", *config, "--storage", f"s3://{bucket}/runs"), {"AWS_ENDPOINT_URL": dead}, 2),
        "validate-not-a-url": (("validate", *config, "--storage", f"s3://{bucket}/runs"),
                               {"AWS_ENDPOINT_URL": f"key:{SECRET}@minio:9000"}, 2),
        "train-preflight": (("train", *config, "--storage", f"s3://{bucket}/runs"), {"AWS_ENDPOINT_URL": dead}, 2),
        "report-unreachable": (("report", f"s3://{bucket}/runs/tiny"), {"AWS_ENDPOINT_URL": dead}, 2),
        "storage-uri": (("validate", *config, "--storage", f"s3://key:{SECRET}@{bucket}/runs"), {}, 2),
        "report-uri": (("report", f"s3://key:{SECRET}@{bucket}/runs/tiny"), {}, 2),
        "out-uri": (("report", "missing-run", "--out", f"file://key:{SECRET}@host/x"), {}, 2),
    }


@pytest.mark.parametrize("case", ["validate-works", "validate-unreachable", "validate-not-a-url", "train-preflight",
                                  "report-unreachable", "storage-uri", "report-uri", "out-uri"])
def test_a_secret_in_an_endpoint_or_uri_never_reaches_the_output(s3_endpoint, bucket, case):
    args, env, code = secret_cases(bucket, s3_endpoint)[case]
    proc = run_cli(*args, env=env, timeout=60)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert SECRET not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    if code == 2:
        assert_bad_input(proc)
    assert "***@" in proc.stdout + proc.stderr or case == "out-uri", "the place is still named"


@pytest.mark.parametrize("command", ["validate", "train", "report"])
def test_a_retry_limit_of_inf_is_bad_input_for_every_command(tmp_path, command):
    args = ("report", str(tmp_path)) if command == "report" else (command, "--config", str(TINY), "--storage", str(tmp_path))
    proc = run_cli(*args, env={"PBT_JOB_STORAGE_RETRY_S": "inf"}, timeout=60)
    assert_bad_input(proc, "PBT_JOB_STORAGE_RETRY_S='inf'", "from 0 to 86400")
    assert not any(tmp_path.iterdir()), "nothing is written"


@pytest.mark.parametrize("case", ["file-relative", "bucket-port", "bucket-credentials", "bucket-space"])
def test_validate_refuses_a_uri_with_another_meaning(tmp_path, case):
    uri, needles = URI_REFUSALS[case]
    root_runs = sorted(Path("/runs").rglob("*")) if Path("/runs").exists() else None  # where file://data/runs went
    proc = subprocess.run([sys.executable, "-m", "pbt_job.cli", "validate", "--config", str(TINY), "--storage", uri],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert_bad_input(proc, "--storage", *needles)
    assert not any(tmp_path.iterdir()), "nothing is created here"
    assert (sorted(Path("/runs").rglob("*")) if Path("/runs").exists() else None) == root_runs, "nor at /runs"
