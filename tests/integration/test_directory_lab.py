"""Discovery, SPNs, duplicates, receive connectors and the LDAP clock against the lab's Samba AD."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.exporter_process import ExporterProcess, exporter_process
from tests.lab import Lab
from tests.metrics_text import series, value

pytestmark = pytest.mark.lab


def directory_config(lab: Lab, **overrides: Any) -> dict[str, Any]:
    return lab.directory_exporter_config(**overrides)


@contextmanager
def running(tmp_path: Path, config: dict[str, Any], *extra: str) -> Iterator[ExporterProcess]:
    path = tmp_path / "exporter.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with exporter_process(path, tmp_path / "exporter.log", *extra) as exporter:
        yield exporter


def scans_done(text: str) -> bool:
    """The background SPN scans have reported (they start with the exporter)."""
    return all(
        (value(text, "exchange_auth_last_success_timestamp_seconds", scan=scan) or 0) > 0
        for scan in ("spn", "duplicate_spn")
    )


def test_exchange_servers_and_connectors_are_discovered(lab: Lab, tmp_path: Path) -> None:
    directory = lab.exchange_directory
    with running(tmp_path, directory_config(lab)) as exporter:
        text = exporter.scrape_until(scans_done)
    assert value(text, "exchange_auth_discovery_success", role="exchange", method="ldap") == 1
    info = {s["server"]: s for s in series(text, "exchange_auth_server_info")}
    assert set(info) == {s.fqdn for s in directory.servers}
    exch3 = directory.server("EXCH3")
    assert info[exch3.fqdn]["version"] == exch3.version
    assert info[exch3.fqdn]["site"] == "Default-First-Site-Name"
    assert (
        info[directory.server("EXCH1").fqdn]["exchange_roles"]
        == "Mailbox,ClientAccess,HubTransport"
    )
    assert info[directory.server("EDGE1").fqdn]["exchange_roles"] == "Edge"
    for server in directory.servers:
        for connector in server.receive_connectors:
            reported = value(
                text,
                "exchange_auth_receive_connector_exchange_auth_enabled",
                server=server.fqdn,
                connector=connector.name,
            )
            assert reported == (1 if connector.exchange_server_auth else 0), connector.name
    # exch1/exch2 are static (with their NTP addresses) and learn their details from AD.
    assert value(text, "exchange_auth_inventory_servers", role="exchange", source="static") == 2
    assert value(text, "exchange_auth_inventory_servers", role="exchange", source="ldap") == 2


def test_spns_of_each_exchange_server_exactly(lab: Lab, tmp_path: Path) -> None:
    directory = lab.exchange_directory
    with running(tmp_path, directory_config(lab)) as exporter:
        text = exporter.scrape_until(scans_done)
    for server in directory.members:
        assert value(text, "exchange_auth_computer_account_found", server=server.fqdn) == 1
        for spn, held in directory.present_spns(server.name).items():
            assert value(text, "exchange_auth_spn_present", server=server.fqdn, spn=spn) == (
                1 if held else 0
            ), spn
    exch2 = directory.server("EXCH2")
    assert directory.missing_spns("EXCH2") == ("SMTPSVC/exch2.corp.example.test",)
    assert value(text, "exchange_auth_spn_count", server=exch2.fqdn, service_class="SMTPSVC") == 1
    assert value(text, "exchange_auth_spn_count", server=exch2.fqdn, service_class="SMTP") == 2
    # Edge servers are not domain members: no claim about their SPNs at all.
    edge = directory.server("EDGE1")
    assert value(text, "exchange_auth_computer_account_found", server=edge.fqdn) is None
    assert series(text, "exchange_auth_spn_present") and not any(
        s["server"] == edge.fqdn for s in series(text, "exchange_auth_spn_present")
    )


def test_duplicates_forest_wide_and_case_insensitive_with_owners(lab: Lab, tmp_path: Path) -> None:
    directory = lab.exchange_directory
    with running(tmp_path, directory_config(lab)) as exporter:
        text = exporter.scrape_until(scans_done)
    assert value(text, "exchange_auth_spn_duplicate_scan_scope", scope="forest") == 1
    assert value(text, "exchange_auth_spn_duplicates", service_class="SMTP") == 1
    assert value(text, "exchange_auth_spn_duplicates", service_class="SMTPSVC") == 1
    # Other classes appear only when they have duplicates; the configured ones always do.
    assert value(text, "exchange_auth_spn_duplicates", service_class="HOST") is None
    owners = {
        (s["spn"].lower(), s["account"].lower())
        for s in series(text, "exchange_auth_spn_duplicate_owner_info")
    }
    expected = {(d.spn, dn.lower()) for d in directory.duplicate_spns for dn in d.owner_dns}
    assert owners == expected
    assert any(d.case_only for d in directory.duplicate_spns)
    assert value(text, "exchange_auth_spn_duplicate_owner_info_truncated") == 0


def test_without_a_global_catalog_the_domain_is_scanned_and_says_so(
    lab: Lab, tmp_path: Path
) -> None:
    config = directory_config(lab, ldap={"global_catalog_url": None})
    with running(tmp_path, config) as exporter:
        text = exporter.scrape_until(scans_done)
        log = exporter.log()
    assert value(text, "exchange_auth_spn_duplicate_scan_scope", scope="domain") == 1
    assert value(text, "exchange_auth_spn_duplicates", service_class="SMTPSVC") == 1
    assert "global_catalog_url is not set" in log


def test_the_ldap_clock_of_the_dc(lab: Lab, tmp_path: Path) -> None:
    with running(tmp_path, directory_config(lab)) as exporter:
        text = exporter.scrape_until(scans_done)
    labels = {"server": lab.dc.name, "role": "domain_controller", "source": "ldap"}
    offset = value(text, "exchange_auth_clock_offset_seconds", **labels)
    assert offset is not None
    assert abs(offset) <= 1.0  # whole seconds, read at the middle of the second
    uncertainty = value(text, "exchange_auth_clock_uncertainty_seconds", **labels)
    assert uncertainty is not None
    assert 1.0 <= uncertainty < 1.1
    assert value(text, "exchange_auth_ldap_up", server=lab.dc.name) == 1


def test_a_wrong_password_is_bind_failed_and_never_shown(lab: Lab, tmp_path: Path) -> None:
    wrong = "Wr0ng-But-Secret-Passw0rd"
    (tmp_path / "wrong-password").write_text(wrong + "\n")
    config = directory_config(lab, ldap={"password_file": str(tmp_path / "wrong-password")})
    with running(tmp_path, config, "--log.level=debug") as exporter:
        text = exporter.scrape_until(
            lambda t: all(
                value(t, "exchange_auth_scan_failure", scan=scan, reason="bind_failed") == 1
                for scan in ("spn", "duplicate_spn")
            ),
        )
        shown = exporter.get("/config")[1] + exporter.get("/")[1]
        log = exporter.log()
    assert value(text, "exchange_auth_scan_failure", scan="spn", reason="bind_failed") == 1
    assert (
        value(text, "exchange_auth_scan_failure", scan="duplicate_spn", reason="bind_failed") == 1
    )
    assert (
        value(
            text,
            "exchange_auth_discovery_failure",
            role="exchange",
            method="ldap",
            reason="bind_failed",
        )
        == 1
    )
    assert "bind_failed" in log
    for place in (text, shown, log):
        assert wrong not in place


def test_a_hung_ldap_server_never_delays_a_scrape_and_cached_results_stay(
    lab: Lab, tmp_path: Path
) -> None:
    with running(tmp_path, directory_config(lab)) as exporter:
        before = exporter.scrape_until(scans_done)
        assert value(before, "exchange_auth_spn_duplicates", service_class="SMTPSVC") == 1
        with lab.pause_ldap():
            for _ in range(3):
                started = time.monotonic()
                status, text = exporter.get(
                    "/metrics", {"X-Prometheus-Scrape-Timeout-Seconds": "2"}
                )
                elapsed = time.monotonic() - started
                assert status == 200
                assert elapsed < 2.2, f"scrape took {elapsed:.2f} s with LDAP hung"
                assert value(text, "exchange_auth_spn_duplicates", service_class="SMTPSVC") == 1
                assert value(text, "exchange_auth_ldap_up", server=lab.dc.name) == 0
            # Kerberos is served by other processes and keeps answering meanwhile.
            assert (
                value(
                    text,
                    "exchange_auth_kerberos_port_up",
                    server=lab.dc.name,
                    port="88",
                    transport="udp",
                )
                == 1
            )
        after = exporter.scrape_until(
            lambda t: value(t, "exchange_auth_ldap_up", server=lab.dc.name) == 1
        )
        assert value(after, "exchange_auth_ldap_up", server=lab.dc.name) == 1
