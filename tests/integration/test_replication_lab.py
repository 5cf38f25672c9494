"""The replication scan against real replication: dc1 and its replica dc3 pull from each other
every 5 s (tests/lab/replica.py); one of them is stopped and started again under the exporter.

Each test leaves both DCs running and replicated, for the tests after it in the session.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.checks.replication import scan_replication
from exporter.config import load_file
from exporter.inventory import build_inventory
from exporter.ldap import close_all
from tests.integration.exporter_process import ExporterProcess, exporter_process
from tests.lab import Host, Lab
from tests.metrics_text import samples, value

pytestmark = pytest.mark.lab

PREFIX = "exchange_auth_replication_"
# Both DCs pull every 5 s; an exporter refresh every 2 s sees each attempt.
REFRESH = "2s"
# Samba counts one failure per attempt (every 5 s): a few attempts' worth of patience.
PATIENCE = 45.0


@pytest.fixture(autouse=True)
def _both_dcs_replicating(lab: Lab) -> Iterator[None]:
    lab.wait_replicated()
    yield
    for host in (lab.dc, lab.replica_dc):
        lab.start_samba(host)  # a no-op unless a failed test left it stopped
    lab.wait_replicated()


def naming_contexts(lab: Lab) -> set[str]:
    domain = lab.exchange_directory.domain_dn
    return {
        domain,
        f"CN=Configuration,{domain}",
        f"CN=Schema,CN=Configuration,{domain}",
        f"DC=DomainDnsZones,{domain}",
        f"DC=ForestDnsZones,{domain}",
    }


def write_config(lab: Lab, tmp_path: Path, *dcs: Host) -> Path:
    config = lab.exporter_config(
        domain_controllers={"static": [h.static_entry for h in dcs]},
        checks={"replication": {"refresh_interval": REFRESH}},
    )
    path = tmp_path / "exporter.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def pairs(text: str, dc: Host, metric: str) -> dict[tuple[str, str], float]:
    """(partner, naming context) -> value of ``exchange_auth_replication_<metric>`` for ``dc``."""
    found = {}
    for (name, labels), sample in samples(text).items():
        label = dict(labels)
        if name == PREFIX + metric and label.get("domain_controller") == dc.name:
            found[(label["partner"], label["naming_context"])] = sample
    return found


def read_at(text: str, dc: Host) -> float | None:
    return value(text, PREFIX + "dc_read_timestamp_seconds", domain_controller=dc.name)


def scrape_after(exporter: ExporterProcess, dcs: tuple[Host, ...], moment: float) -> str:
    """A scrape whose readings of ``dcs`` were all taken after ``moment`` (Unix time)."""
    return exporter.scrape_until(
        lambda text: all((read_at(text, dc) or 0) > moment for dc in dcs), timeout=PATIENCE
    )


def assert_healthy(lab: Lab, text: str, dc: Host, partner: Host, since: float) -> None:
    """``dc`` pulls every naming context from ``partner``: no failures, a success after ``since``."""
    expected = {(partner.name, nc) for nc in naming_contexts(lab)}
    failures = pairs(text, dc, "consecutive_failures")
    assert set(failures) == expected, f"{dc.name}: {sorted(failures)}"
    assert set(failures.values()) == {0}, failures
    successes = pairs(text, dc, "last_success_timestamp_seconds")
    assert set(successes) == expected
    stale = {key: since - when for key, when in successes.items() if when < since}
    assert not stale, f"{dc.name}: last success before {since:.0f} by {stale}"
    assert set(pairs(text, dc, "last_result").values()) == {0}
    assert value(text, PREFIX + "dc_success", domain_controller=dc.name) == 1
    assert value(text, PREFIX + "unparsed_values", domain_controller=dc.name) == 0


def test_both_dcs_replicate_every_naming_context_from_each_other(lab: Lab, tmp_path: Path) -> None:
    config = write_config(lab, tmp_path, lab.dc, lab.replica_dc)
    started = time.time()
    with exporter_process(config, tmp_path / "exporter.log") as exporter:
        text = scrape_after(exporter, (lab.dc, lab.replica_dc), started)
        # Each DC pulls every 5 s: a success within the last few pulls.
        for dc, partner in ((lab.dc, lab.replica_dc), (lab.replica_dc, lab.dc)):
            assert_healthy(lab, text, dc, partner, since=started - 15)
            info = [
                dict(labels)["result"]
                for (name, labels) in samples(text)
                if name == PREFIX + "last_result_info"
                and dict(labels)["domain_controller"] == dc.name
            ]
            assert info == ["ERROR_SUCCESS"] * len(naming_contexts(lab))
        assert not any(name == PREFIX + "dc_failure" for name, _ in samples(text))


def _stop_and_recover(lab: Lab, tmp_path: Path, stopped: Host, reader: Host) -> None:
    """Stop ``stopped``; ``reader``'s failures from it rise and its last success freezes; start
    it again and both recover. ``stopped`` itself reads as unreachable meanwhile."""
    config = write_config(lab, tmp_path, lab.dc, lab.replica_dc)
    with exporter_process(config, tmp_path / "exporter.log") as exporter:
        text = scrape_after(exporter, (lab.dc, lab.replica_dc), time.time())
        assert_healthy(lab, text, reader, stopped, since=time.time() - 15)
        before = pairs(text, reader, "last_success_timestamp_seconds")

        lab.stop_samba(stopped)
        stopped_at = time.time()
        try:
            # Two failed attempts on every naming context: the count rises attempt by attempt.
            text = exporter.scrape_until(
                lambda t: min(pairs(t, reader, "consecutive_failures").values(), default=0) >= 2,
                timeout=PATIENCE,
            )
            first = pairs(text, reader, "consecutive_failures")
            assert min(first.values()) >= 2, f"no failures counted: {first}"
            frozen = pairs(text, reader, "last_success_timestamp_seconds")
            assert set(frozen) == set(before)
            assert all(when <= stopped_at + 1 for when in frozen.values()), frozen
            results = pairs(text, reader, "last_result")
            assert 0 not in results.values(), results
            # Named, not "other": the exporter knows what Samba reports (1225 here).
            names = {
                dict(labels)["result"]
                for (name, labels) in samples(text)
                if name == PREFIX + "last_result_info"
                and dict(labels)["domain_controller"] == reader.name
            }
            assert names and names.isdisjoint({"ERROR_SUCCESS", "other"}), names
            # The stopped DC cannot be read: a reason, and its last reading kept.
            assert (
                value(
                    text,
                    PREFIX + "dc_failure",
                    domain_controller=stopped.name,
                    reason="unreachable",
                )
                == 1
            )
            assert value(text, PREFIX + "dc_success", domain_controller=stopped.name) == 0
            assert (read_at(text, stopped) or 0) < stopped_at
            assert pairs(text, stopped, "consecutive_failures")  # kept, not dropped
            assert value(text, PREFIX + "dc_success", domain_controller=reader.name) == 1

            # Later: more failures, the same last success.
            text = exporter.scrape_until(
                lambda t: all(
                    n > first[key] for key, n in pairs(t, reader, "consecutive_failures").items()
                ),
                timeout=PATIENCE,
            )
            later = pairs(text, reader, "consecutive_failures")
            assert all(n > first[key] for key, n in later.items()), (first, later)
            assert pairs(text, reader, "last_success_timestamp_seconds") == frozen
        finally:
            lab.start_samba(stopped)
        restarted = time.time()

        text = exporter.scrape_until(
            lambda t: (
                value(t, PREFIX + "dc_success", domain_controller=stopped.name) == 1
                and set(pairs(t, reader, "consecutive_failures").values()) == {0}
                and min(pairs(t, reader, "last_success_timestamp_seconds").values()) > restarted
                and min(pairs(t, stopped, "last_success_timestamp_seconds").values()) > restarted
            ),
            timeout=PATIENCE,
        )
        assert_healthy(lab, text, reader, stopped, since=restarted)
        assert_healthy(lab, text, stopped, reader, since=restarted)
        assert not any(name == PREFIX + "dc_failure" for name, _ in samples(text))


def test_a_stopped_replica_shows_as_failures_on_dc1_until_it_is_back(
    lab: Lab, tmp_path: Path
) -> None:
    _stop_and_recover(lab, tmp_path, stopped=lab.replica_dc, reader=lab.dc)


def test_a_stopped_dc1_shows_as_failures_on_the_replica_until_it_is_back(
    lab: Lab, tmp_path: Path
) -> None:
    _stop_and_recover(lab, tmp_path, stopped=lab.dc, reader=lab.replica_dc)


async def test_a_dc_restarted_between_two_refreshes_reads_as_healthy_at_once(
    lab: Lab, tmp_path: Path
) -> None:
    # The connection the first refresh left open dies with the DC's samba; the next refresh
    # must not report the DC, which answers again, as failing ("session terminated by server").
    settings = load_file(write_config(lab, tmp_path, lab.dc, lab.replica_dc))
    inventory = await build_inventory(settings)
    try:
        first = await scan_replication(settings, inventory)
        assert {dc: o.reason for dc, o in first.dcs.items()} == {
            lab.dc.name: "",
            lab.replica_dc.name: "",
        }
        lab.stop_samba(lab.replica_dc)
        lab.start_samba(lab.replica_dc)
        second = await scan_replication(settings, inventory, first)
        outcome = second.dcs[lab.replica_dc.name]
        assert (outcome.reason, outcome.detail) == ("", "")
        assert outcome.reading is not None
        assert outcome.reading.read_at > first.dcs[lab.replica_dc.name].reading.read_at  # type: ignore[union-attr]
        # And once it is down, the reason is that it cannot be reached.
        lab.stop_samba(lab.replica_dc)
        third = await scan_replication(settings, inventory, second)
        assert third.dcs[lab.replica_dc.name].reason == "unreachable"
    finally:
        lab.start_samba(lab.replica_dc)
        close_all()


def test_an_unreachable_dc_gets_a_reason_and_the_others_are_still_reported(
    lab: Lab, tmp_path: Path
) -> None:
    config = write_config(lab, tmp_path, lab.dc, lab.dead_dc, lab.replica_dc)
    started = time.time()
    with exporter_process(config, tmp_path / "exporter.log") as exporter:
        text = exporter.scrape_until(
            lambda t: (
                all((read_at(t, dc) or 0) > started for dc in (lab.dc, lab.replica_dc))
                and value(t, PREFIX + "dc_success", domain_controller=lab.dead_dc.name) is not None
            ),
            timeout=PATIENCE,
        )
    dead = lab.dead_dc.name
    assert value(text, PREFIX + "dc_success", domain_controller=dead) == 0
    reasons = {
        dict(labels)["reason"]: sample
        for (name, labels), sample in samples(text).items()
        if name == PREFIX + "dc_failure" and dict(labels)["domain_controller"] == dead
    }
    assert reasons == {"unreachable": 1}  # dc9 refuses TCP: nothing listens on 636
    assert read_at(text, lab.dead_dc) is None  # never read: no partner series at all
    assert not pairs(text, lab.dead_dc, "consecutive_failures")
    assert_healthy(lab, text, lab.dc, lab.replica_dc, since=started - 15)
    assert_healthy(lab, text, lab.replica_dc, lab.dc, since=started - 15)


def _diagnose(lab: Lab, tmp_path: Path) -> dict[str, Any]:
    config = write_config(lab, tmp_path, lab.dc, lab.replica_dc)
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "diagnose", f"--config.file={config}", "--output=json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def _replication_cause(document: dict[str, Any], server: str) -> dict[str, Any]:
    (entry,) = [s for s in document["servers"] if s["server"] == server]
    (cause,) = [c for c in entry["causes"] if c["cause"] == "replication"]
    found: dict[str, Any] = cause
    return found


def test_diagnose_names_replication_from_a_stopped_dc(lab: Lab, tmp_path: Path) -> None:
    exch1 = lab.exchange_servers[0].name
    healthy = _replication_cause(_diagnose(lab, tmp_path), exch1)
    assert healthy["state"] == "ok", healthy

    with lab.samba_stopped(lab.replica_dc):
        assert _wait_until_failing(lab, lab.dc)
        cause = _replication_cause(_diagnose(lab, tmp_path), exch1)
    assert cause["state"] == "problem", cause
    where = f"{lab.dc.name} <- {lab.replica_dc.name}"
    assert any(
        line.startswith(where) and "consecutive failures" in line for line in cause["evidence"]
    )
    assert "repadmin /replsummary" in cause["fix"]


def _wait_until_failing(lab: Lab, dc: Host) -> bool:
    """Until showrepl on ``dc`` counts a failure on every naming context."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        reps = lab.replication(dc)
        if reps and all(r["consecutive failures"] > 0 for r in reps):
            return True
        time.sleep(1.0)
    return False
