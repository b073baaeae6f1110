"""Which storage errors are outages (retried, resumable) and which fail at once with their own words.

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
import time
import uuid

import boto3
import botocore.config
import pyarrow.fs
import pytest

from conftest import free_port
from pbt_job.storage import StorageOutage, is_outage, retry_storage


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
