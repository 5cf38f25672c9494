"""The exporter as a process against the real lab: chronyd (one +420 s under libfaketime) and Samba."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.exporter_process import exporter_process
from tests.lab import SKEWED_CLOCK_OFFSET, Lab
from tests.metrics_text import value

pytestmark = pytest.mark.lab


def write(path: Path, config: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_offsets_and_skew_of_the_lab_clocks(lab: Lab, tmp_path: Path) -> None:
    config = write(tmp_path / "exporter.yml", lab.exporter_config())
    with exporter_process(config, tmp_path / "exporter.log") as exporter:
        status, text = exporter.get("/metrics", {"X-Prometheus-Scrape-Timeout-Seconds": "5"})
    assert status == 200
    for host in lab.hosts:
        labels = {"server": host.name, "role": host.role}
        offset = value(text, "exchange_auth_clock_offset_seconds", **labels, source="ntp")
        assert offset is not None, f"no NTP offset for {host.name}"
        tolerance = 1.0 if host.ntp_offset else 0.05
        assert offset == pytest.approx(host.ntp_offset, abs=tolerance), host.name
        assert value(text, "exchange_auth_ntp_up", **labels) == 1
        assert value(text, "exchange_auth_ntp_stratum", **labels) == 8  # chrony's `local stratum 8`
        assert value(text, "exchange_auth_ntp_leap", **labels) == 0
        uncertainty = value(text, "exchange_auth_clock_uncertainty_seconds", **labels, source="ntp")
        # Loopback, but a loaded 2-core CI machine delays the loop: the offset tolerance bounds it.
        assert uncertainty is not None and 0 < uncertainty < 0.05

    skewed = {h.name: h.ntp_offset for h in lab.exchange_servers}
    for exchange, expected in skewed.items():
        skew = value(
            text,
            "exchange_auth_clock_skew_seconds",
            exchange_server=exchange,
            domain_controller=lab.dc.name,
        )
        assert skew == pytest.approx(expected, abs=1.0 if expected else 0.05), exchange
    assert SKEWED_CLOCK_OFFSET in skewed.values()


@pytest.fixture
def dead_ntp_servers(ntp_lab: Lab) -> Iterator[dict[str, str]]:
    """Two addresses whose NTP port swallows packets and one whose port is closed."""
    net = ntp_lab.dc.address.rsplit(".", 1)[0]
    silent = []
    for address in (f"{net}.31", f"{net}.32"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, 123))  # bound, never read: requests vanish like behind a firewall
        silent.append(sock)
    try:
        yield {
            "drop1.corp.example.test": f"{net}.31",
            "drop2.corp.example.test": f"{net}.32",
            "closed.corp.example.test": f"{net}.33",
        }
    finally:
        for sock in silent:
            sock.close()


def test_dead_servers_do_not_delay_the_scrape(
    ntp_lab: Lab, tmp_path: Path, dead_ntp_servers: dict[str, str]
) -> None:
    dead = [{"name": n, "address": a} for n, a in dead_ntp_servers.items()]
    config = ntp_lab.exporter_config(
        exchange_servers={
            "static": [*ntp_lab.exporter_config()["exchange_servers"]["static"], *dead]
        }
    )
    path = write(tmp_path / "exporter.yml", config)
    with exporter_process(path, tmp_path / "exporter.log") as exporter:
        started = time.monotonic()
        status, text = exporter.get("/metrics", {"X-Prometheus-Scrape-Timeout-Seconds": "2"})
        elapsed = time.monotonic() - started
    assert status == 200
    assert elapsed < 2.2, f"scrape took {elapsed:.2f} s with a 2 s timeout"
    assert value(text, "exchange_auth_scrape_timeout_seconds") == pytest.approx(1.5)
    for name, reason in [
        ("drop1.corp.example.test", "timeout"),
        ("drop2.corp.example.test", "timeout"),
        ("closed.corp.example.test", "refused"),
    ]:
        labels = {"server": name, "role": "exchange"}
        assert value(text, "exchange_auth_ntp_failure", **labels, reason=reason) == 1, name
        assert value(text, "exchange_auth_ntp_up", **labels) == 0
        assert value(text, "exchange_auth_clock_offset_seconds", **labels, source="ntp") is None
        assert value(text, "exchange_auth_check_success", check="clock", server=name) == 0
    # The live servers are still measured in the same scrape.
    assert (
        value(text, "exchange_auth_ntp_up", server=ntp_lab.dc.name, role="domain_controller") == 1
    )


def test_sighup_reloads_a_good_config_and_keeps_the_old_one_on_error(
    ntp_lab: Lab, tmp_path: Path
) -> None:
    config = ntp_lab.exporter_config(exchange_servers={"static": []})
    path = write(tmp_path / "exporter.yml", config)
    with exporter_process(path, tmp_path / "exporter.log") as exporter:
        assert (
            value(
                exporter.get("/metrics")[1],
                "exchange_auth_inventory_servers",
                role="exchange",
                source="static",
            )
            == 0
        )

        write(path, ntp_lab.exporter_config())
        exporter.signal(signal.SIGHUP)
        assert _eventually(
            lambda: (
                value(
                    exporter.get("/metrics")[1],
                    "exchange_auth_inventory_servers",
                    role="exchange",
                    source="static",
                )
                == 2
            )
        )
        assert (
            value(exporter.get("/metrics")[1], "exchange_auth_config_last_reload_successful") == 1
        )

        path.write_text(path.read_text() + "checks_typo: {}\n")
        exporter.signal(signal.SIGHUP)
        assert _eventually(
            lambda: (
                value(exporter.get("/metrics")[1], "exchange_auth_config_last_reload_successful")
                == 0
            )
        )
        text = exporter.get("/metrics")[1]
        assert value(text, "exchange_auth_inventory_servers", role="exchange", source="static") == 2
        assert "checks_typo (line" in exporter.log()

        exporter.signal(signal.SIGTERM)
        assert exporter.process.wait(timeout=10) == 0
        assert "shutting down" in exporter.log()


def _eventually(condition: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_the_password_never_reaches_logs_or_config(lab: Lab, tmp_path: Path) -> None:
    password = lab.password_file.read_text().strip()
    assert len(password) >= 8
    path = write(tmp_path / "exporter.yml", lab.exporter_config())
    with exporter_process(
        path, tmp_path / "exporter.log", "--log.level=debug", "--log.format=json"
    ) as exporter:
        status, shown = exporter.get("/config")
        assert status == 200
        assert "password: <secret>" in shown
        assert password not in shown
        assert password not in exporter.get("/metrics")[1]
        assert password not in exporter.get("/")[1]
        path.write_text(path.read_text().replace("timeout: 10s", "timeout: 10"))
        status, answer = exporter.get("/-/reload", method="POST")
        assert status == 500
        assert "ldap.timeout" in answer
        assert password not in answer
    assert password not in exporter.log()
    assert '"level": "info"' in exporter.log()  # the JSON format was used


def test_config_check_exit_codes(lab: Lab, tmp_path: Path) -> None:
    good = write(tmp_path / "good.yml", lab.exporter_config())
    bad = write(tmp_path / "bad.yml", lab.exporter_config(realm="not a realm", extra_key=1))
    ok = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.check", f"--config.file={good}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout
    failed = subprocess.run(
        [
            str(Path(sys.executable).parent / "exchange-auth-exporter"),
            "--config.check",
            f"--config.file={bad}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert failed.returncode == 1
    assert "2 problems" in failed.stderr
    assert "realm (line 1): invalid realm 'not a realm'" in failed.stderr
    assert "extra_key" in failed.stderr
