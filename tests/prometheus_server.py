"""A real Prometheus server (the `prometheus` binary from `make tools`) scraping test targets.

Tests that check what Prometheus makes of our exporter (dashboard queries, alert
rules) start one per test on 127.0.0.1 with its database in the test's folder, and
ask it over its HTTP API, as Grafana and Alertmanager would.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator

import yaml

from conftest import free_port, tool

READY_TIMEOUT_S = 60


class PrometheusServer:
    """A running server: its HTTP API and the scrape interval it was configured with."""

    def __init__(self, url: str, scrape_interval_s: int, log: Path):
        self.url = url
        self.scrape_interval_s = scrape_interval_s
        self.log = log

    def api(self, path: str, **params: str | list[str]) -> dict:
        """GET `/api/v1/<path>`: the decoded body, `status` "success" or "error" (a bad query answers 400 with a body)."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as response:
                return json.load(response)
        except urllib.error.HTTPError as err:
            if err.code in (400, 422):
                return json.load(err)
            raise

    def wait_scraped_after(self, moment: float, timeout_s: float = 30) -> None:
        """Wait until every target was scraped, successfully, after `moment` (epoch seconds)."""
        deadline = time.monotonic() + timeout_s
        while True:
            targets = self.api("targets")["data"]["activeTargets"]
            if targets and all(t["health"] == "up" and _epoch(t["lastScrape"]) > moment for t in targets):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"no successful scrape of every target after {moment:.1f} within {timeout_s} s: {targets}")
            time.sleep(self.scrape_interval_s / 4)


def _epoch(rfc3339: str) -> float:
    """Prometheus' RFC 3339 times carry nanoseconds, more digits than `fromisoformat` reads."""
    seconds, _, fraction = rfc3339.removesuffix("Z").partition(".")
    return datetime.fromisoformat(seconds + "+00:00").timestamp() + float(f"0.{fraction or 0}")


@contextmanager
def prometheus_scraping(targets: list[str], folder: Path, scrape_interval_s: int = 1) -> Iterator[PrometheusServer]:
    """Run Prometheus on a free port of 127.0.0.1, scraping `targets` ("host:port") every `scrape_interval_s`.

    Yields once the server is ready; stops it (and waits for it) on exit. Its log is
    `folder/prometheus.log`, quoted when it does not become ready.
    """
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": f"{scrape_interval_s}s", "scrape_timeout": f"{scrape_interval_s}s"},
        "scrape_configs": [{"job_name": "pbt-job", "static_configs": [{"targets": targets}]}],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    log = folder / "prometheus.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [tool("prometheus"), f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'tsdb'}",
             f"--web.listen-address={address}"],
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        server = PrometheusServer(f"http://{address}", scrape_interval_s, log)
        _wait_ready(server, process)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(server: PrometheusServer, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"prometheus exited with {process.returncode}:\n{server.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"prometheus not ready within {READY_TIMEOUT_S} s:\n{server.log.read_text()[-3000:]}")
