"""A real Prometheus (Debian's ``prometheus`` binary) for tests, on 127.0.0.1 and a free port.

``prometheus_server(binary, config, work)`` starts it on ``config`` with its data and log in
``work``, waits for /-/ready and stops it (its whole process group) on leaving.
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.exporter_process import free_port, stop, wait_started


@dataclass
class PrometheusServer:
    url: str
    process: subprocess.Popen[bytes]
    log_file: Path

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a successful HTTP API answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            document = json.load(response)
        assert document["status"] == "success", document
        return document["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("/api/v1/query", query=promql)["result"]
        return result

    def targets(self, **params: str) -> list[dict[str, Any]]:
        """The active targets (``state="active"`` narrows the answer to them)."""
        found: list[dict[str, Any]] = self.api("/api/v1/targets", **params)["activeTargets"]
        return found

    def alerts(self, state: str = "firing") -> list[dict[str, Any]]:
        return [a for a in self.api("/api/v1/alerts")["alerts"] if a["state"] == state]

    def ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


@contextmanager
def prometheus_server(
    binary: str, config: Path, work: Path, timeout: float = 30
) -> Iterator[PrometheusServer]:
    """Run ``binary`` on ``config`` with ``work``/data and ``work``/prometheus.log."""
    port = free_port()
    log_file = work / "prometheus.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", process, log_file)
    try:
        wait_started(
            process, server.ready, name="prometheus", log=server.log, timeout=timeout, interval=0.2
        )
        yield server
    finally:
        stop(process, timeout=15, group=True)
