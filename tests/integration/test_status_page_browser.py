"""The status page in a real browser: headless Chromium renders `/` from the exporter on the lab."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from tests.integration.exporter_process import exporter_process
from tests.integration.test_directory_lab import scans_done
from tests.lab import Lab

pytestmark = pytest.mark.lab

ARTIFACTS = Path(__file__).parents[2] / "test-artifacts"
# Headless, no profile, and no name resolution but for loopback: the browser must not talk
# to anything but the exporter.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


class Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.states: dict[tuple[str, str], str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "td" and found.get("data-state"):
            self.states[(found["data-server"] or "", found["data-cause"] or "")] = (
                found["data-state"] or ""
            )


def chromium(tmp_path: Path, *args: str) -> str:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail(
            "chromium not found: apt-get install chromium (scripts/install-system-deps.sh does)"
        )
    result = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_matrix_shows_each_servers_causes(lab: Lab, tmp_path: Path) -> None:
    config = lab.directory_exporter_config(
        domain_controllers={"static": [{"name": lab.dc.name, "address": lab.dc.address}]},
    )
    path = tmp_path / "exporter.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    directory = lab.exchange_directory
    with exporter_process(path, tmp_path / "exporter.log") as exporter:
        exporter.scrape_until(scans_done)
        dom = chromium(tmp_path, "--dump-dom", exporter.url + "/")
        ARTIFACTS.mkdir(exist_ok=True)
        chromium(
            tmp_path,
            "--window-size=1600,1000",
            f"--screenshot={ARTIFACTS / 'status-page.png'}",
            exporter.url + "/",
        )
    cells = Cells()
    cells.feed(dom)
    exch1, exch2, exch3 = (directory.server(n).fqdn for n in ("EXCH1", "EXCH2", "EXCH3"))
    assert cells.states[(exch1, "clock_skew")] == "ok"
    assert cells.states[(exch1, "spn_missing")] == "ok"
    assert cells.states[(exch2, "clock_skew")] == "problem"
    assert cells.states[(exch2, "spn_missing")] == "problem"
    assert cells.states[(exch2, "receive_connector_auth")] == "problem"
    assert cells.states[(exch3, "spn_duplicate")] == "problem"
    assert cells.states[(exch3, "clock_skew")] == "unknown"
    assert (ARTIFACTS / "status-page.png").stat().st_size > 10_000
    assert (
        "SMTPSVC/exch2.corp.example.test" in dom
    )  # the evidence is in the page, not only on hover
