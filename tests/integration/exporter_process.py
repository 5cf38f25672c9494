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

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

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


def answers_ready(exporter: ExporterProcess) -> bool:
    """The exporter answers 200 on /-/ready over plain HTTP."""
    return exporter.get("/-/ready")[0] == 200


def wait_started(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    *,
    name: str,
    log: Callable[[], str],
    timeout: float,
    interval: float,
) -> None:
    """Wait until ``ready`` holds (an ``OSError`` counts as not yet); fail with the log if the
    process exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log()}")
        try:
            if ready():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not ready after {timeout:.0f} s:\n{log()}")
        time.sleep(interval)


def stop(process: subprocess.Popen[bytes], *, timeout: float, group: bool = False) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; to the whole process group when ``group`` (the
    process was started with ``start_new_session=True``)."""
    if process.poll() is not None:
        return
    if group:
        os.killpg(process.pid, signal.SIGTERM)
    else:
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait()


@contextmanager
def exporter_process(
    config: Path,
    log_file: Path,
    *extra: str,
    ready: Callable[[ExporterProcess], bool] = answers_ready,
) -> Iterator[ExporterProcess]:
    """Run ``python -m exporter`` on ``config`` and a free port until ``ready`` holds (by
    default: /-/ready answers 200 over plain HTTP); stop it on leaving."""
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
        wait_started(
            process,
            lambda: ready(exporter),
            name="exporter",
            log=exporter.log,
            timeout=15,
            interval=0.05,
        )
        yield exporter
    finally:
        stop(process, timeout=10)


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
