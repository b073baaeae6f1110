"""Where a run lives: a local folder or an S3-compatible bucket (S3, MinIO, GCS via its S3 API).

One URI names the storage root: a path, `file://...`, or `s3://bucket/prefix`. For S3
the endpoint and credentials come from the standard AWS variables
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_DEFAULT_REGION`), so MinIO only needs `AWS_ENDPOINT_URL`.

The pyarrow filesystem is built with the endpoint explicitly (a bare
`S3FileSystem()` may ignore `AWS_ENDPOINT_URL`) but *without* keys: it then reads
them from the environment when used, so pickled copies (Tune pickles its storage
into `tuner.pkl` and experiment state) never contain a secret.

`check_storage` proves before any trial starts that the root is reachable and
writable, turning each failure into a `StorageError` that says what to fix.

Once a run is going, storage may go away for a while (a MinIO restart, a network
blip): `retry_storage` retries writes for up to `PBT_JOB_STORAGE_RETRY_S` seconds
(default 300) before it gives up with `StorageOutage`; the run then stops and the
same command resumes it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import urlparse

import pyarrow.fs

from pbt_job.errors import BadInput

logger = logging.getLogger(__name__)

S3_SCHEMES = ("s3",)
CONNECT_TIMEOUT_S = 5.0
RETRY_ENV = "PBT_JOB_STORAGE_RETRY_S"
MIN_FREE_ENV = "PBT_JOB_MIN_FREE_MB"
DEFAULT_MIN_FREE_MB = 200
DEFAULT_RETRY_S = 300.0
MAX_RETRY_DELAY_S = 10.0

PERMANENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR})
"""Errors that waiting does not fix: raised at once."""

T = TypeVar("T")


class StorageError(BadInput):
    """Storage is misnamed, unreachable or refuses us; the message says what to fix."""


class StorageOutage(OSError):
    """Storage failed for longer than the retry limit while the run was going."""

    @classmethod
    def stopped(cls, what: str, err: BaseException) -> "StorageOutage":
        return cls(
            f"storage failed while {what} ({err}); the run stopped: once storage is back, "
            f"run the same command to resume ({RETRY_ENV} sets how long writes are retried)"
        )


def retry_limit_s() -> float:
    """Seconds a storage write is retried during an outage, from `PBT_JOB_STORAGE_RETRY_S`.

    Raises:
        StorageError: the variable is not a number >= 0.
    """
    text = os.environ.get(RETRY_ENV, "").strip()
    if not text:
        return DEFAULT_RETRY_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise StorageError(f"{RETRY_ENV}={text!r}: write the seconds storage writes are retried, e.g. {RETRY_ENV}=300")
    return value


def retry_storage(action: Callable[[], T], what: str) -> T:
    """Run a storage `action`, retrying I/O errors with backoff for up to `retry_limit_s()`.

    Raises:
        StorageOutage: it still failed when the limit ran out.
    """
    limit = retry_limit_s()
    deadline = time.monotonic() + limit
    delay = 0.5
    while True:
        try:
            return action()
        except OSError as err:
            if err.errno in PERMANENT_ERRNOS:
                raise
            if time.monotonic() + delay > deadline:
                raise StorageOutage.stopped(f"{what}, retried for {limit:.0f} s", err) from err
            logger.warning("[storage] %s failed (%s); retrying in %.1f s", what, err, delay)
            time.sleep(delay)
            delay = min(2 * delay, MAX_RETRY_DELAY_S)


@dataclass(frozen=True)
class StorageLocation:
    """A parsed storage root.

    Attributes:
        uri: The URI as the user wrote it (normalised: no trailing slash).
        is_s3: True for `s3://`, False for a local folder.
        path: Path in the filesystem: `bucket/prefix` for S3, an absolute path locally.
        bucket: The S3 bucket ("" locally).
    """

    uri: str
    is_s3: bool
    path: str
    bucket: str = ""

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])

    def display(self, *parts: str) -> str:
        """A user-facing name for a path below the root (an `s3://` URI or a local path)."""
        return f"s3://{self.join(*parts)}" if self.is_s3 else self.join(*parts)


def parse_storage_uri(uri: str) -> StorageLocation:
    """Parse `--storage`.

    Raises:
        StorageError: an unsupported scheme or an `s3://` URI without a bucket.
    """
    if not uri or not uri.strip():
        raise StorageError("--storage is empty: give a folder (./runs) or s3://bucket/prefix")
    uri = uri.strip().rstrip("/") or "/"
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in S3_SCHEMES:
        if not parsed.netloc:
            raise StorageError(f"--storage {uri}: no bucket; write s3://BUCKET/optional/prefix")
        if parsed.query or parsed.fragment:
            raise StorageError(f"--storage {uri}: remove the '?'/'#' part; set the endpoint with AWS_ENDPOINT_URL")
        prefix = parsed.path.strip("/")
        path = f"{parsed.netloc}/{prefix}" if prefix else parsed.netloc
        return StorageLocation(uri=f"s3://{path}", is_s3=True, path=path, bucket=parsed.netloc)
    if scheme in ("gs", "gcs"):
        raise StorageError(
            f"--storage {uri}: use GCS through its S3 API: s3://BUCKET/prefix with "
            "AWS_ENDPOINT_URL=https://storage.googleapis.com and HMAC keys"
        )
    if scheme == "file":
        return StorageLocation(uri=uri, is_s3=False, path=str(Path(parsed.path).resolve()))
    if scheme and len(scheme) > 1:
        raise StorageError(f"--storage {uri}: unsupported scheme {scheme}://; use a folder or s3://bucket/prefix")
    return StorageLocation(uri=uri, is_s3=False, path=str(Path(uri).expanduser().resolve()))


@dataclass(frozen=True)
class S3Endpoint:
    """The S3 endpoint from `AWS_ENDPOINT_URL` (None: AWS itself) and the region."""

    url: str | None
    host: str | None
    scheme: str
    region: str

    @classmethod
    def from_env(cls) -> S3Endpoint:
        url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
        if url is None:
            return cls(url=None, host=None, scheme="https", region=region)
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise StorageError(
                f"AWS_ENDPOINT_URL={url!r} is not a URL; write it like http://minio:9000 or https://s3.example.com"
            )
        try:
            port = parsed.port
        except ValueError:
            raise StorageError(f"AWS_ENDPOINT_URL={url!r} has a bad port; write it like http://minio:9000") from None
        host = f"{parsed.hostname}:{port}" if port else parsed.hostname
        return cls(url=url, host=host, scheme=parsed.scheme, region=region)


def _check_credentials_env() -> None:
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if bool(key) != bool(secret):
        missing = "AWS_SECRET_ACCESS_KEY" if key else "AWS_ACCESS_KEY_ID"
        raise StorageError(f"{missing} is not set while its partner is; set both or neither")


def filesystem(location: StorageLocation) -> pyarrow.fs.FileSystem:
    """The pyarrow filesystem for `location` (keys are read from the environment at use)."""
    if not location.is_s3:
        return pyarrow.fs.LocalFileSystem()
    _check_credentials_env()
    endpoint = S3Endpoint.from_env()
    options = dict(region=endpoint.region, connect_timeout=CONNECT_TIMEOUT_S, request_timeout=60.0)
    if endpoint.host:
        options.update(endpoint_override=endpoint.host, scheme=endpoint.scheme)
    return pyarrow.fs.S3FileSystem(**options)


def check_storage(location: StorageLocation) -> list[str]:
    """Prove `location` is usable now: reachable, credentials accepted, bucket exists, writable.

    Writes and deletes one probe object below the root.

    Returns:
        What was checked, one line each, for `pbt-job validate` to print.

    Raises:
        StorageError: the first problem found, with the fix.
    """
    retry_limit_s()
    if location.is_s3:
        return _check_s3(location)
    return _check_local(location)


def _check_local(location: StorageLocation) -> list[str]:
    """A probe write, then enough free space; a refused check leaves no folder behind."""
    root = Path(location.path).absolute()
    existing = next(p for p in (root, *root.parents) if p.exists())
    first_created = None if existing == root else existing / root.relative_to(existing).parts[0]
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".pbt-job-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"probe")
        probe.unlink()
        free_mb = shutil.disk_usage(root).free // 2**20
        needed_mb = _min_free_mb()
        if free_mb < needed_mb:
            raise StorageError(
                f"--storage {location.uri}: only {free_mb} MB free there, {needed_mb} MB needed for checkpoints; "
                f"free some space, choose another --storage, or lower {MIN_FREE_ENV}"
            )
    except (OSError, StorageError) as err:
        if first_created is not None:
            shutil.rmtree(first_created, ignore_errors=True)
        if isinstance(err, StorageError):
            raise
        reason = err.strerror or str(err)
        raise StorageError(f"--storage {location.uri}: cannot write there ({reason}); choose a writable folder") from None
    return [f"local folder {root} is writable, {free_mb} MB free"]


def _min_free_mb() -> int:
    text = os.environ.get(MIN_FREE_ENV, "").strip()
    if not text:
        return DEFAULT_MIN_FREE_MB
    if not text.isdigit():
        raise StorageError(f"{MIN_FREE_ENV}={text!r}: write the free megabytes a local run needs, e.g. {MIN_FREE_ENV}=200")
    return int(text)


def _check_s3(location: StorageLocation) -> list[str]:
    import boto3
    import botocore.config
    import botocore.exceptions

    _check_credentials_env()
    endpoint = S3Endpoint.from_env()
    where = endpoint.url or "AWS S3"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint.url,
        region_name=endpoint.region,
        config=botocore.config.Config(
            connect_timeout=CONNECT_TIMEOUT_S, read_timeout=15, retries={"max_attempts": 2, "mode": "standard"}
        ),
    )
    probe = f"{location.path.partition('/')[2]}/.pbt-job-probe-{uuid.uuid4().hex}".lstrip("/")
    try:
        client.head_bucket(Bucket=location.bucket)
        client.put_object(Bucket=location.bucket, Key=probe, Body=b"probe")
        client.delete_object(Bucket=location.bucket, Key=probe)
    except botocore.exceptions.NoCredentialsError:
        raise StorageError(
            f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ) from None
    except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError) as err:
        raise StorageError(
            f"S3 endpoint {where} is unreachable ({type(err).__name__}); check AWS_ENDPOINT_URL and the network"
        ) from None
    except botocore.exceptions.ClientError as err:
        raise StorageError(_explain_s3_error(err, location, where)) from None
    except botocore.exceptions.BotoCoreError as err:
        raise StorageError(f"S3 endpoint {where} failed: {type(err).__name__}; check AWS_ENDPOINT_URL") from None
    return [
        f"S3 endpoint {where} reachable, credentials accepted",
        f"bucket {location.bucket} exists",
        f"{location.uri} is writable (probe object written and deleted)",
    ]


def _explain_s3_error(err, location: StorageLocation, where: str) -> str:
    code = str(err.response.get("Error", {}).get("Code", ""))
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("404", "NoSuchBucket"):
        return f"bucket {location.bucket} does not exist at {where}; create it (e.g. mc mb) or fix --storage"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken") or (
        code in ("403", "AccessDenied") and status == 403
    ):
        return (
            f"S3 at {where} refused the credentials for bucket {location.bucket} ({code}); "
            "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy"
        )
    return f"S3 at {where} answered {code or status} for {location.uri}; check the bucket and credentials"


def read_text(fs: pyarrow.fs.FileSystem, path: str) -> str | None:
    """The file's text, or None if it does not exist."""

    def read() -> str | None:
        if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
            return None
        with fs.open_input_stream(path) as stream:
            return stream.readall().decode(errors="replace")  # bad bytes then fail as JSON, with a warning

    return retry_storage(read, f"reading {path}")


def write_text(fs: pyarrow.fs.FileSystem, path: str, text: str) -> None:
    """Replace the file with `text` (see `write_bytes`)."""
    write_bytes(fs, path, text.encode())


def write_bytes(fs: pyarrow.fs.FileSystem, path: str, data: bytes) -> None:
    """Replace the file with `data` (atomically on a local disk; S3 puts are atomic), retrying outages."""
    retry_storage(lambda: _write_bytes(fs, path, data), f"writing {path}")


def _write_bytes(fs: pyarrow.fs.FileSystem, path: str, data: bytes) -> None:
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with fs.open_output_stream(tmp) as stream:
                stream.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    with fs.open_output_stream(path) as stream:
        stream.write(data)
