"""Where a run lives: a local folder or an S3-compatible bucket (S3, MinIO, GCS via its S3 API).

One URI names the storage root: a path, `file://...`, or `s3://bucket/prefix`. For S3
the endpoint and credentials come from the standard AWS variables
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_DEFAULT_REGION`), so MinIO only needs `AWS_ENDPOINT_URL`.

The pyarrow filesystem is built with the endpoint explicitly (a bare
`S3FileSystem()` may ignore `AWS_ENDPOINT_URL`) but *without* keys: it then reads
them from the environment when used, so pickled copies (Tune pickles its storage
into `tuner.pkl` and experiment state) never contain a secret.

`parse_storage_uri` gives every URI one meaning or refuses it: a `file://` URI
needs an absolute path (`file://data/runs` would name host `data`), an `s3://`
bucket must be a name S3 allows. Messages never show the userinfo of a URI or of
`AWS_ENDPOINT_URL` (`redact`).

`check_storage` proves before any trial starts that the root is reachable and
writable (`check_writable`: writable, for a report; `check_readable`: reachable,
for a reader), turning each failure into a `StorageError` that names the flag or
the endpoint and says what to fix. These checks wait at most a few seconds per call
(`PREFLIGHT_*`), so a dead or hung endpoint is named within ~10 s.

Once a run is going, storage may go away for a while (a MinIO restart, a network
blip): `retry_storage` retries what `is_outage` calls an outage (connection
failures, timeouts, 5xx, throttling) for up to `PBT_JOB_STORAGE_RETRY_S` seconds
(default 300, at most a day) before it gives up with `StorageOutage`; the run then
stops and the same command resumes it. Anything else (access denied, not found,
file exists, too many open files, ...) is raised at once, as it is. Each retry is
counted (`retries_so_far`): the driver's exporter reads the count when scraped, because
while a write is being retried the driver does nothing else.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import re
import shutil
import sys
import threading
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
PREFLIGHT_CONNECT_TIMEOUT_S = 3
PREFLIGHT_READ_TIMEOUT_S = 4
PREFLIGHT_ATTEMPTS = 2
"""A preflight S3 call: 3 s to connect, 4 s for an answer, tried twice (~10 s worst case)."""
RETRY_ENV = "PBT_JOB_STORAGE_RETRY_S"
MIN_FREE_ENV = "PBT_JOB_MIN_FREE_MB"
DEFAULT_MIN_FREE_MB = 200
DEFAULT_RETRY_S = 300.0
MAX_RETRY_S = 86400.0
"""A day: a longer wait is a typo (or `inf`), and a run that waits for ever looks hung."""
MAX_RETRY_DELAY_S = 10.0

OUTAGE_ERRNOS = frozenset({
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH,
    errno.EHOSTDOWN, errno.ENETUNREACH, errno.ENETDOWN, errno.ENETRESET, errno.EPIPE,
})
"""Socket errors of a connection that failed or timed out; every other errno is not an outage."""
OUTAGE_AWS_ERRORS = frozenset({
    "NETWORK_CONNECTION", "REQUEST_TIMEOUT", "SERVICE_UNAVAILABLE", "INTERNAL_FAILURE", "THROTTLING", "SLOW_DOWN",
})
"""pyarrow's names (`AWS Error NAME during ...`) for connection failures, timeouts, 5xx and throttling."""
OUTAGE_S3_CODES = frozenset({
    "RequestTimeout", "ServiceUnavailable", "InternalError", "SlowDown", "Throttling", "ThrottlingException",
    "RequestLimitExceeded", "TooManyRequestsException",
})
"""S3 error codes (botocore `ClientError`) for timeouts, 5xx and throttling."""
_PYARROW_AWS_ERROR = re.compile(r"AWS Error (\w+)(?: \(HTTP status (\d+)\))?")
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
BUCKET_RULE = "3-63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit"
"""S3's bucket naming rules (general purpose buckets), besides: no `..`, not an IP address."""
REGION_NAME = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")
"""What botocore accepts as a region name (`InvalidRegionError` otherwise)."""

T = TypeVar("T")

_retries = 0
_retries_lock = threading.Lock()


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


def redact(uri: str) -> str:
    """`uri` for messages and logs: all between its scheme and its last `@` (`user:password@`) becomes `***@`.

    Up to the *last* `@`: a secret key may hold a `/`, so the end of the host cannot be told
    from the URI; an `@` in a path hides a little too much, never a secret.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "", uri  # `key:secret@host:9000`, no scheme
    if "@" not in rest:
        return uri
    return f"{scheme}{sep}***@{rest.rsplit('@', 1)[1]}"


def retry_limit_s() -> float:
    """Seconds a storage write is retried during an outage, from `PBT_JOB_STORAGE_RETRY_S`.

    Raises:
        StorageError: the variable is not a number from 0 to `MAX_RETRY_S` (NaN and `inf` are refused).
    """
    text = os.environ.get(RETRY_ENV, "").strip()
    if not text:
        return DEFAULT_RETRY_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_RETRY_S:
        raise StorageError(
            f"{RETRY_ENV}={text!r}: write the seconds storage writes are retried, from 0 to {MAX_RETRY_S:.0f}, "
            f"e.g. {RETRY_ENV}=300"
        )
    return value


def is_outage(err: BaseException) -> bool:
    """Whether `err` says storage is unavailable for now (waiting may fix it), not that it refuses us.

    Outages: a connection refused, reset or timed out, an HTTP 5xx or 429, throttling
    (`SlowDown`), as a socket `OSError`, a pyarrow S3 error or a botocore error. Not
    outages: permission denied, not found, file exists, too many open files, bad
    credentials, and anything unrecognised.
    """
    if isinstance(err, StorageOutage):  # retried for the whole limit already (its text quotes the outage)
        return False
    botocore_exceptions = sys.modules.get("botocore.exceptions")  # not loaded: `err` is none of its errors
    if botocore_exceptions is not None:  # before OSError: some of them (ReadTimeoutError) are OSErrors too
        if isinstance(err, (botocore_exceptions.ConnectionError, botocore_exceptions.ReadTimeoutError)):
            return True
        if isinstance(err, botocore_exceptions.ClientError):
            code = str(err.response.get("Error", {}).get("Code", ""))
            status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            return code in OUTAGE_S3_CODES or status >= 500 or status == 429
    if not isinstance(err, OSError):
        return False
    if isinstance(err, (ConnectionError, TimeoutError)) or err.errno in OUTAGE_ERRNOS:
        return True
    match = _PYARROW_AWS_ERROR.search(str(err)) if err.errno is None else None
    if match is None:
        return False
    name, status = match.group(1), int(match.group(2) or 0)
    return name in OUTAGE_AWS_ERRORS or (name == "UNKNOWN" and (status >= 500 or status == 429))


def retries_so_far() -> int:
    """Failed attempts `retry_storage` has tried again in this process (one per wait before another attempt)."""
    return _retries


def retry_storage(action: Callable[[], T], what: str) -> T:
    """Run a storage `action`, retrying outages (`is_outage`) with backoff for up to `retry_limit_s()`.

    Raises:
        StorageOutage: it still failed when the limit ran out.
        Exception: any error that is not an outage, at once and as it is.
    """
    global _retries
    limit = retry_limit_s()
    deadline = time.monotonic() + limit
    delay = 0.5
    while True:
        try:
            return action()
        except Exception as err:
            if not is_outage(err):
                raise
            if time.monotonic() + delay > deadline:
                raise StorageOutage.stopped(f"{what}, retried for {limit:.0f} s", err) from err
            logger.warning("[storage] %s failed (%s); retrying in %.1f s", what, err, delay)
            with _retries_lock:
                _retries += 1
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
        flag: The flag or argument that named it (`--storage`, `--out`, `run folder`), for messages.
    """

    uri: str
    is_s3: bool
    path: str
    bucket: str = ""
    flag: str = "--storage"

    @property
    def named(self) -> str:
        """How messages name it: the flag and the URI."""
        return f"{self.flag} {self.uri}"

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])

    def display(self, *parts: str) -> str:
        """A user-facing name for a path below the root (an `s3://` URI or a local path)."""
        return f"s3://{self.join(*parts)}" if self.is_s3 else self.join(*parts)


def parse_storage_uri(uri: str, flag: str = "--storage") -> StorageLocation:
    """Parse a storage URI given by `flag` (`--storage`, `--out`, `run folder`: messages name it).

    Raises:
        StorageError: an unsupported scheme, a `file://` URI without an absolute path, an
            `s3://` URI without a bucket S3 allows, or a path whose `~user` does not exist.
    """
    if not uri or not uri.strip():
        raise StorageError(f"{flag} is empty: give a folder (./runs) or s3://bucket/prefix")
    uri = uri.strip().rstrip("/") or "/"
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    shown = f"{flag} {redact(uri) if scheme else uri}"
    if scheme in S3_SCHEMES:
        if not parsed.netloc:
            raise StorageError(f"{shown}: no bucket; write s3://BUCKET/optional/prefix")
        if parsed.query or parsed.fragment:
            raise StorageError(f"{shown}: remove the '?'/'#' part; set the endpoint with AWS_ENDPOINT_URL")
        _check_bucket_name(parsed.netloc, shown)
        prefix = parsed.path.strip("/")
        path = f"{parsed.netloc}/{prefix}" if prefix else parsed.netloc
        return StorageLocation(uri=f"s3://{path}", is_s3=True, path=path, bucket=parsed.netloc, flag=flag)
    if scheme in ("gs", "gcs"):
        raise StorageError(
            f"{shown}: use GCS through its S3 API: s3://BUCKET/prefix with "
            "AWS_ENDPOINT_URL=https://storage.googleapis.com and HMAC keys"
        )
    if scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise StorageError(
                f"{shown}: a file:// URI needs an absolute path (file://data/runs names host 'data'); "
                "use file:///abs/path or a plain path"
            )
        return StorageLocation(uri=uri, is_s3=False, path=str(Path(parsed.path).resolve()), flag=flag)
    if scheme and len(scheme) > 1:
        raise StorageError(f"{shown}: unsupported scheme {scheme}://; use a folder or s3://bucket/prefix")
    try:
        path = Path(uri).expanduser()
    except RuntimeError:  # `~name` of a user this machine does not know
        user = uri.split("/", 1)[0]
        raise StorageError(f"{shown}: {user!r} is no user's home folder here; write the path without '~'") from None
    return StorageLocation(uri=uri, is_s3=False, path=str(path.resolve()), flag=flag)


def _check_bucket_name(bucket: str, shown: str) -> None:
    """Refuse what S3 would refuse as a bucket name (a port or credentials in the URI, spaces, capitals, ...)."""
    if "@" in bucket:
        raise StorageError(
            f"{shown}: credentials do not belong in the URI; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    port_hint = "; set the endpoint and its port with AWS_ENDPOINT_URL" if ":" in bucket else ""
    if not BUCKET_NAME.fullmatch(bucket) or ".." in bucket or _is_ip_address(bucket):
        raise StorageError(f"{shown}: {bucket!r} is not an S3 bucket name ({BUCKET_RULE}, not an IP address){port_hint}")


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class S3Endpoint:
    """The S3 endpoint from `AWS_ENDPOINT_URL` (None: AWS itself) and the region.

    Attributes:
        url: The endpoint URL as set, userinfo included (only for the S3 client).
        shown: How messages name the endpoint: the URL without userinfo, or "AWS S3".
        host: `host:port` for pyarrow.
        scheme: http or https.
        region: From `AWS_DEFAULT_REGION` or `AWS_REGION` (default us-east-1).
    """

    url: str | None
    shown: str
    host: str | None
    scheme: str
    region: str

    @classmethod
    def from_env(cls) -> S3Endpoint:
        """The endpoint and region the AWS variables name.

        Raises:
            StorageError: the endpoint is not an http(s) URL, or the region is not a region name.
        """
        url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        region = _region_from_env()
        if url is None:
            return cls(url=None, shown="AWS S3", host=None, scheme="https", region=region)
        shown = redact(url)
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise StorageError(
                f"AWS_ENDPOINT_URL={shown!r} is not a URL; write it like http://minio:9000 or https://s3.example.com"
            )
        try:
            port = parsed.port
        except ValueError:
            raise StorageError(f"AWS_ENDPOINT_URL={shown!r} has a bad port; write it like http://minio:9000") from None
        host = f"{parsed.hostname}:{port}" if port else parsed.hostname
        return cls(url=url, shown=shown, host=host, scheme=parsed.scheme, region=region)


def _region_from_env() -> str:
    for variable in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        region = os.environ.get(variable)
        if region:
            if not REGION_NAME.fullmatch(region):
                raise StorageError(
                    f"{variable}={region!r} is not a region name; write it like us-east-1 (MinIO accepts any such name)"
                )
            return region
    return "us-east-1"


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
        return _check_s3(location, write=True)
    return _check_local(location)


def check_writable(location: StorageLocation) -> list[str]:
    """Prove `location` can be written now, as `check_storage` does, but ask for no free space.

    For what is small (a report), where `check_storage`'s room for checkpoints does not apply.

    Raises:
        StorageError: the first problem found, with the fix.
    """
    retry_limit_s()
    if location.is_s3:
        return _check_s3(location, write=True)
    return _check_local(location, needed_mb=0)


def check_readable(location: StorageLocation) -> list[str]:
    """Prove an S3 `location` can be read now: endpoint answers, credentials accepted, bucket exists.

    Writes nothing. A local folder is not checked here: its reader names a missing or
    unreadable path itself.

    Returns:
        What was checked, one line each.

    Raises:
        StorageError: the first problem found, with the fix.
    """
    return _check_s3(location, write=False) if location.is_s3 else []


def _check_local(location: StorageLocation, needed_mb: int | None = None) -> list[str]:
    """A probe write, then enough free space (`needed_mb`; None: `PBT_JOB_MIN_FREE_MB`); a refused check
    leaves no folder behind."""
    root = Path(location.path).absolute()
    existing = next(p for p in (root, *root.parents) if p.exists())
    first_created = None if existing == root else existing / root.relative_to(existing).parts[0]
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".pbt-job-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"probe")
        probe.unlink()
        free_mb = shutil.disk_usage(root).free // 2**20
        needed_mb = _min_free_mb() if needed_mb is None else needed_mb
        if free_mb < needed_mb:
            raise StorageError(
                f"{location.named}: only {free_mb} MB free there, {needed_mb} MB needed for checkpoints; "
                f"free some space, choose another --storage, or lower {MIN_FREE_ENV}"
            )
    except (OSError, StorageError) as err:
        if first_created is not None:
            shutil.rmtree(first_created, ignore_errors=True)
        if isinstance(err, StorageError):
            raise
        reason = err.strerror or str(err)
        raise StorageError(f"{location.named}: cannot write there ({reason}); choose a writable folder") from None
    return [f"local folder {root} is writable, {free_mb} MB free"]


def _min_free_mb() -> int:
    text = os.environ.get(MIN_FREE_ENV, "").strip()
    if not text:
        return DEFAULT_MIN_FREE_MB
    if not text.isdigit():
        raise StorageError(f"{MIN_FREE_ENV}={text!r}: write the free megabytes a local run needs, e.g. {MIN_FREE_ENV}=200")
    return int(text)


def _check_s3(location: StorageLocation, write: bool) -> list[str]:
    import boto3
    import botocore.config
    import botocore.exceptions

    _check_credentials_env()
    endpoint = S3Endpoint.from_env()
    where = endpoint.shown
    client = boto3.client(
        "s3",
        endpoint_url=endpoint.url,
        region_name=endpoint.region,
        config=botocore.config.Config(
            connect_timeout=PREFLIGHT_CONNECT_TIMEOUT_S,
            read_timeout=PREFLIGHT_READ_TIMEOUT_S,
            retries={"total_max_attempts": PREFLIGHT_ATTEMPTS, "mode": "standard"},
        ),
    )
    probe = f"{location.path.partition('/')[2]}/.pbt-job-probe-{uuid.uuid4().hex}".lstrip("/")
    try:
        client.head_bucket(Bucket=location.bucket)
        if write:
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
    except (botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectionClosedError) as err:
        raise StorageError(
            f"S3 endpoint {where} accepted the connection but did not answer within {PREFLIGHT_READ_TIMEOUT_S} s "
            f"({PREFLIGHT_ATTEMPTS} tries, {type(err).__name__}); check AWS_ENDPOINT_URL and any proxy or "
            "load balancer in front of it"
        ) from None
    except botocore.exceptions.ClientError as err:
        raise StorageError(_explain_s3_error(err, location, where)) from None
    except botocore.exceptions.BotoCoreError as err:
        raise StorageError(f"S3 endpoint {where} failed: {type(err).__name__}; check AWS_ENDPOINT_URL") from None
    checked = [f"S3 endpoint {where} reachable, credentials accepted", f"bucket {location.bucket} exists"]
    return checked + [f"{location.uri} is writable (probe object written and deleted)"] if write else checked


def _explain_s3_error(err, location: StorageLocation, where: str) -> str:
    code = str(err.response.get("Error", {}).get("Code", ""))
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("404", "NoSuchBucket"):
        return f"bucket {location.bucket} does not exist at {where}; create it (e.g. mc mb) or fix {location.flag}"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken") or (
        code in ("403", "AccessDenied") and status == 403
    ):
        return (
            f"S3 at {where} refused the credentials for bucket {location.bucket} ({code}); "
            "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy"
        )
    if is_outage(err):
        return f"S3 at {where} is unavailable now ({code or status}) for {location.uri}; try again later"
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


def write_files(target: StorageLocation, files: dict[str, bytes]) -> None:
    """Write each `name: content` into the folder `target` (an `--out`), retrying outages.

    Raises:
        StorageError: the place refuses a file (e.g. a folder of that name is in the way), naming `--out`.
        StorageOutage: S3 stayed unavailable for the retry limit.
    """
    fs = filesystem(target)
    for name, content in files.items():
        try:
            write_bytes(fs, target.join(name), content)
        except StorageOutage:
            raise
        except OSError as err:  # not an outage: the place refuses
            reason = err.strerror or str(err).splitlines()[0]
            raise StorageError(f"{target.named}: cannot write {name} there ({reason}); choose another --out") from None


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
