"""`diagnose` against the lab: the healthy server passes, each broken one names its causes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.lab import Lab

pytestmark = pytest.mark.lab

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "diagnose.schema.json").read_text())


def run(lab: Lab, tmp_path: Path, *args: str, **overrides: Any) -> subprocess.CompletedProcess[str]:
    config = lab.directory_exporter_config(**overrides)
    path = tmp_path / "exporter.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return subprocess.run(
        [sys.executable, "-m", "exporter", "diagnose", f"--config.file={path}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def by_cause(document: dict[str, Any], server: str) -> dict[str, dict[str, Any]]:
    (entry,) = [s for s in document["servers"] if s["server"] == server]
    return {c["cause"]: c for c in entry["causes"]}


def test_each_broken_server_names_its_causes(lab: Lab, tmp_path: Path) -> None:
    # Only the healthy DC, so the skewed clone does not make every Exchange server look broken.
    healthy_dcs = {"static": [{"name": lab.dc.name, "address": lab.dc.address}]}
    result = run(lab, tmp_path, "--output=json", domain_controllers=healthy_dcs)
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    jsonschema.validate(document, SCHEMA)
    directory = lab.exchange_directory
    exch1 = by_cause(document, directory.server("EXCH1").fqdn)
    problems1 = {cause for cause, c in exch1.items() if c["state"] == "problem"}
    assert problems1 == set(), exch1
    assert exch1["clock_skew"]["state"] == "ok"
    assert exch1["spn_missing"]["state"] == "ok"

    exch2 = by_cause(document, directory.server("EXCH2").fqdn)
    assert {c for c, v in exch2.items() if v["state"] == "problem"} == {
        "clock_skew",  # its clock is 7 minutes ahead
        "spn_missing",  # SMTPSVC/exch2.corp.example.test
        "receive_connector_auth",  # Default EXCH2 lacks ExchangeServer auth
    }
    assert "SMTPSVC/exch2.corp.example.test" in exch2["spn_missing"]["evidence"][0]
    assert exch2["spn_missing"]["fix"] == ["setspn -S SMTPSVC/exch2.corp.example.test EXCH2"]

    exch3 = by_cause(document, directory.server("EXCH3").fqdn)
    assert exch3["spn_duplicate"]["state"] == "problem"
    assert any("svc-legacy" in line for line in exch3["spn_duplicate"]["evidence"])
    # No NTP, SMTP or DNS record for EXCH3 in the lab: its clock is unknown, never "ok".
    assert exch3["clock_skew"]["state"] == "unknown"


def test_a_healthy_server_alone_exits_0(lab: Lab, tmp_path: Path) -> None:
    healthy_dcs = {"static": [{"name": lab.dc.name, "address": lab.dc.address}]}
    result = run(lab, tmp_path, "exch1.corp.example.test", domain_controllers=healthy_dcs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no problem found" in result.stdout
    assert "exch2" not in result.stdout
    assert "\033[" not in result.stdout  # plain text when piped


def test_the_skewed_dc_shows_as_skew_on_a_healthy_exchange_server(lab: Lab, tmp_path: Path) -> None:
    result = run(lab, tmp_path, "--output=json", "exch1.corp.example.test")
    assert result.returncode == 1
    clock = by_cause(json.loads(result.stdout), "exch1.corp.example.test")["clock_skew"]
    assert clock["state"] == "problem"
    assert lab.skewed_dc.name in clock["evidence"][0]


def test_exit_2_when_the_checks_cannot_run(lab: Lab, tmp_path: Path) -> None:
    result = run(lab, tmp_path, realm="not a realm")
    assert result.returncode == 2
    assert "invalid realm" in result.stderr
