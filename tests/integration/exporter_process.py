"""The exporter as a real process, the way an admin runs it, for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ExporterProcess:
    process: subprocess.Popen[bytes]
    url: str
    log_file: Path

    def get(
        self, path: str, headers: dict[str, str] | None = None, method: str = "GET"
    ) -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def scrape_until(self, ready: Callable[[str], bool], timeout: float = 20.0) -> str:
        """Scrape until ``ready`` holds (e.g. the background scans have reported), or time out."""
        deadline = time.monotonic() + timeout
        while True:
            status, text = self.get("/metrics", {"X-Prometheus-Scrape-Timeout-Seconds": "5"})
            assert status == 200
            if ready(text) or time.monotonic() > deadline:
                return text
            time.sleep(0.2)


@contextmanager
def exporter_process(config: Path, log_file: Path, *extra: str) -> Iterator[ExporterProcess]:
    port = free_port()
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{port}",
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    exporter = ExporterProcess(process, f"http://127.0.0.1:{port}", log_file)
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"exporter exited with {process.returncode}:\n{exporter.log()}")
            try:
                if exporter.get("/-/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"exporter not ready after 15 s:\n{exporter.log()}")
            time.sleep(0.05)
        yield exporter
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def scrape_once(config: dict[str, Any], tmp_path: Path, timeout: str = "5") -> tuple[str, float]:
    """Start the exporter on ``config``, scrape once with a timeout header, stop it.

    Returns the exposition and how long the scrape took.
    """
    path = tmp_path / "exporter.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with exporter_process(path, tmp_path / "exporter.log") as exporter:
        started = time.monotonic()
        status, text = exporter.get("/metrics", {"X-Prometheus-Scrape-Timeout-Seconds": timeout})
        elapsed = time.monotonic() - started
    assert status == 200, text
    return text, elapsed
