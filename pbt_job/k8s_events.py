"""Kubernetes Events on the RayJob that runs this driver: what `kubectl describe rayjob` shows.

Someone watching a job on a cluster looks at the RayJob first; KubeRay's own events say
when pods start and the job ends, and pbt-job adds what only the driver knows (each
exploit, each trial error, the end of training; `pbt_job.training.rayjob_events` words
them). The events are core/v1 Events whose `involvedObject` is the RayJob, uid included,
since `kubectl describe` lists only events of the object's uid.

On only inside a cluster: the kubelet's in-cluster configuration (`KUBERNETES_SERVICE_HOST`
and `_PORT`, the service account's token, CA and namespace files) is present and the
chart named the RayJob in `PBT_JOB_RAYJOB_NAME` on the head container. Anywhere else
(a laptop, CI, a RayCluster without the chart) it is off, and says nothing.

Training never waits for the API server: `post` only queues, and one daemon thread sends
the events in order, each request with a short timeout and no retry. The first failure is
logged once, as a warning naming what to check (the head's ServiceAccount and the chart's
`kubernetesEvents.enabled`); later ones only at debug level. A refusal (401, 403, 404, an
invalid event) would refuse every later event too: sending stops for this driver session.
An outage (connection refused or timed out, 5xx, 429) may pass: the event is dropped and
the next one is tried.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import urllib3
from kubernetes import client
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import InClusterConfigLoader

logger = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
"""Where the kubelet mounts the pod's token, ca.crt and namespace."""
RAYJOB_NAME_ENV = "PBT_JOB_RAYJOB_NAME"
"""Set by the chart on the head container: the RayJob whose driver this is (same namespace as the pod)."""
COMPONENT = "pbt-job"
REQUEST_TIMEOUT_S = (3.0, 5.0)
"""Connect and read timeout of each request."""
CLOSE_TIMEOUT_S = 10.0
"""How long the end of training waits for queued events to go out."""
QUEUE_LIMIT = 1000
MESSAGE_LIMIT = 1024
INSTANCE_LIMIT = 128
"""Bytes: the API server refuses longer messages and reporting instances on events with an `eventTime`."""
OUTAGE_STATUSES = frozenset({429, 500, 502, 503, 504})
RBAC_HINT = (
    "check that the head pod's ServiceAccount may create events and get this RayJob (the chart's Role "
    "and RoleBinding, created with kubernetesEvents.enabled); no more events from this driver"
)


@dataclasses.dataclass(frozen=True)
class Event:
    """One event to post about the RayJob."""

    reason: str
    """UpperCamelCase, what `kubectl get events` shows under REASON (e.g. `Exploit`)."""
    message: str
    warning: bool = False
    at: float = 0.0
    """When it happened (epoch seconds); 0: when queued."""


class RayJobEvents:
    """Posts events about one RayJob from a background thread (`in_cluster` builds one).

    Args:
        api_client: A client configured for the cluster's API server.
        namespace: The RayJob's namespace.
        rayjob: The RayJob's name.
        instance: Who reports (`reportingInstance`): the head pod's name.
    """

    def __init__(self, api_client: client.ApiClient, namespace: str, rayjob: str, instance: str):
        self.namespace, self.rayjob = namespace, rayjob
        self._api_client = api_client
        self._instance = truncate(instance, INSTANCE_LIMIT)
        self._uid: str | None = None
        self._refused = False
        self._warned = False
        self._queue: queue.Queue[Event | None] = queue.Queue(QUEUE_LIMIT)
        self._thread = threading.Thread(target=self._send_queued, name="pbt-job-k8s-events", daemon=True)
        self._thread.start()

    @classmethod
    def in_cluster(cls, environ: Mapping[str, str] = os.environ, account_dir: Path | None = None) -> RayJobEvents | None:
        """The RayJob's events as this pod's ServiceAccount posts them; None outside a cluster or without
        `PBT_JOB_RAYJOB_NAME` (then nothing is logged: there is nothing to fix).

        Args:
            environ: The process environment (the in-cluster variables and `PBT_JOB_RAYJOB_NAME`).
            account_dir: The mounted service account; default `SERVICE_ACCOUNT_DIR`.
        """
        rayjob = environ.get(RAYJOB_NAME_ENV, "")
        if not rayjob:
            return None
        account_dir = account_dir or SERVICE_ACCOUNT_DIR
        configuration = client.Configuration()
        try:
            InClusterConfigLoader(
                token_filename=str(account_dir / "token"), cert_filename=str(account_dir / "ca.crt"), environ=environ
            ).load_and_set(configuration)
            namespace = (account_dir / "namespace").read_text().strip()
        except (ConfigException, OSError):
            return None
        if not namespace:
            return None
        configuration.retries = 0  # an outage drops one event; the next one is the retry
        return cls(client.ApiClient(configuration), namespace, rayjob, socket.gethostname())

    def post(self, event: Event) -> None:
        """Queue `event`; never blocks (with the queue full, the event is dropped)."""
        if self._refused:
            return
        if not event.at:
            event = dataclasses.replace(event, at=time.time())
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            logger.debug("[events] queue full, %s event dropped", event.reason)

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Send what is queued, waiting at most `timeout_s`, and stop the thread."""
        deadline = time.monotonic() + timeout_s
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if not self._thread.is_alive():
            self._api_client.close()

    def _send_queued(self) -> None:
        while (event := self._queue.get()) is not None:
            if self._refused:
                continue
            try:
                self._create(event)
            except Exception as err:  # the thread must outlive any failure; training never sees it
                self._failed(err)

    def _create(self, event: Event) -> None:
        if self._uid is None:
            rayjob = client.CustomObjectsApi(self._api_client).get_namespaced_custom_object(
                "ray.io", "v1", self.namespace, "rayjobs", self.rayjob, _request_timeout=REQUEST_TIMEOUT_S
            )
            self._uid = rayjob["metadata"]["uid"]
        client.CoreV1Api(self._api_client).create_namespaced_event(
            self.namespace, self._body(event), _request_timeout=REQUEST_TIMEOUT_S
        )

    def _body(self, event: Event) -> client.CoreV1Event:
        at = datetime.fromtimestamp(event.at, timezone.utc)
        # Strings, not datetimes: the client writes `isoformat()`, which drops the fraction at
        # .000000, and the API server parses eventTime with exactly six fraction digits.
        seconds, micro = at.strftime("%Y-%m-%dT%H:%M:%SZ"), at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return client.CoreV1Event(
            api_version="v1",
            kind="Event",
            metadata=client.V1ObjectMeta(name=f"{self.rayjob}.{int(event.at * 1e9):x}", namespace=self.namespace),
            involved_object=client.V1ObjectReference(
                api_version="ray.io/v1", kind="RayJob", name=self.rayjob, namespace=self.namespace, uid=self._uid
            ),
            reason=event.reason,
            action=event.reason,
            message=truncate(event.message, MESSAGE_LIMIT),
            type="Warning" if event.warning else "Normal",
            source=client.V1EventSource(component=COMPONENT),
            reporting_component=COMPONENT,
            reporting_instance=self._instance,
            first_timestamp=seconds,
            last_timestamp=seconds,
            event_time=micro,
            count=1,
        )

    def _failed(self, err: Exception) -> None:
        outage = is_outage(err)
        self._refused = not outage
        advice = "the API server may be restarting; later events are tried again" if outage else RBAC_HINT
        log = logger.debug if self._warned else logger.warning
        self._warned = True
        log("[events] posting an event on RayJob %s/%s failed (%s): %s. Training goes on.",
            self.namespace, self.rayjob, describe(err), advice)


def is_outage(err: Exception) -> bool:
    """Whether the API server may take the next event (connection failed or timed out, 5xx, 429)."""
    if isinstance(err, client.ApiException):
        return err.status in OUTAGE_STATUSES
    return isinstance(err, (urllib3.exceptions.HTTPError, OSError))


def describe(err: Exception) -> str:
    """`err` in one line; for an API error its status and the API server's own message."""
    if not isinstance(err, client.ApiException):
        return f"{type(err).__name__}: {err}"
    try:
        message = json.loads(err.body or "{}").get("message", "")
    except (ValueError, AttributeError):
        message = ""
    return f"{err.status} {err.reason}" + (f": {message}" if message else "")


def truncate(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes (the API server counts bytes), never inside a character."""
    return text.encode()[:limit].decode(errors="ignore")
