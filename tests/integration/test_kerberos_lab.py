"""The Kerberos check and DNS discovery against the lab's real Samba KDCs and DNS."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.exporter_process import scrape_once
from tests.lab import SKEWED_CLOCK_OFFSET, Lab
from tests.metrics_text import value

pytestmark = pytest.mark.lab

PORTS = [("88", "udp"), ("88", "tcp"), ("464", "udp"), ("464", "tcp")]


def scrape(lab: Lab, tmp_path: Path, timeout: str = "5", **overrides: object) -> tuple[str, float]:
    return scrape_once(lab.exporter_config(**overrides), tmp_path, timeout)


def test_the_samba_kdc_answers_on_all_four_ports(lab: Lab, tmp_path: Path) -> None:
    text, _ = scrape(lab, tmp_path)
    for port, transport in PORTS:
        labels = {"server": lab.dc.name, "port": port, "transport": transport}
        assert value(text, "exchange_auth_kerberos_port_up", **labels) == 1, labels
        rtt = value(text, "exchange_auth_kerberos_port_rtt_seconds", **labels)
        assert rtt is not None and 0 < rtt < 1
        code = value(text, "exchange_auth_kerberos_error_code", **labels)
        # 6 = C_PRINCIPAL_UNKNOWN for the random client; Samba's kpasswd answers 2 (hard error).
        assert code == (6 if port == "88" else 2), labels
    assert value(text, "exchange_auth_check_success", check="kerberos", server=lab.dc.name) == 1
    offset = value(
        text,
        "exchange_auth_clock_offset_seconds",
        server=lab.dc.name,
        role="domain_controller",
        source="kerberos",
    )
    assert offset == pytest.approx(0.0, abs=0.05)


def test_a_skewed_kdc_is_read_through_its_krb_error(lab: Lab, tmp_path: Path) -> None:
    text, _ = scrape(lab, tmp_path)
    skewed = lab.skewed_dc
    labels = {"server": skewed.name, "role": "domain_controller"}
    kerberos = value(text, "exchange_auth_clock_offset_seconds", **labels, source="kerberos")
    assert kerberos == pytest.approx(SKEWED_CLOCK_OFFSET, abs=1.5)
    uncertainty = value(
        text, "exchange_auth_clock_uncertainty_seconds", **labels, source="kerberos"
    )
    assert uncertainty is not None and uncertainty < 0.05
    # exch1 keeps true time, so its pair with the skewed DC shows the 7 minutes.
    skew = value(
        text,
        "exchange_auth_clock_skew_seconds",
        exchange_server="exch1.corp.example.test",
        domain_controller=skewed.name,
    )
    assert skew == pytest.approx(SKEWED_CLOCK_OFFSET, abs=1.5)


def test_the_kdc_clock_alone_feeds_the_skew_pairs(lab: Lab, tmp_path: Path) -> None:
    """With NTP off for the DCs' side, the pair still appears from the KRB-ERROR reading."""
    text, _ = scrape(lab, tmp_path, checks={"clock": {"sources": ["ntp", "kerberos"]}})
    skew = value(
        text,
        "exchange_auth_clock_skew_seconds",
        exchange_server="exch1.corp.example.test",
        domain_controller=lab.skewed_dc.name,
    )
    assert skew is not None
    text, _ = scrape(lab, tmp_path, checks={"clock": {"sources": ["kerberos"]}})
    # Exchange servers run no KDC: with only the Kerberos source there is no pair at all.
    assert (
        value(
            text,
            "exchange_auth_clock_skew_seconds",
            exchange_server="exch1.corp.example.test",
            domain_controller=lab.skewed_dc.name,
        )
        is None
    )


def test_a_dead_dc_is_refused_on_tcp_and_times_out_on_udp_within_the_deadline(
    lab: Lab, tmp_path: Path
) -> None:
    dead = lab.dead_dc
    dcs = [
        {"name": lab.dc.name, "address": lab.dc.address},
        {"name": dead.name, "address": dead.address},
    ]
    text, elapsed = scrape(lab, tmp_path, timeout="2", domain_controllers={"static": dcs})
    assert elapsed < 2.2, f"scrape took {elapsed:.2f} s with a 2 s timeout"
    expected = {
        ("88", "tcp"): "refused",
        ("464", "tcp"): "refused",
        ("88", "udp"): "timeout",
        ("464", "udp"): "timeout",
    }
    for (port, transport), reason in expected.items():
        labels = {"server": dead.name, "port": port, "transport": transport}
        assert value(text, "exchange_auth_kerberos_port_up", **labels) == 0
        assert value(text, "exchange_auth_kerberos_port_failure", **labels, reason=reason) == 1, (
            labels
        )
        assert value(text, "exchange_auth_kerberos_port_rtt_seconds", **labels) is None
    # The check reached a verdict (ports down), and the live DC in the same scrape is unaffected.
    assert value(text, "exchange_auth_check_success", check="kerberos", server=dead.name) == 1
    assert (
        value(
            text, "exchange_auth_kerberos_port_up", server=lab.dc.name, port="88", transport="udp"
        )
        == 1
    )
    assert (
        value(
            text,
            "exchange_auth_clock_offset_seconds",
            server=dead.name,
            role="domain_controller",
            source="kerberos",
        )
        is None
    )


def test_domain_controllers_are_discovered_through_samba_dns(lab: Lab, tmp_path: Path) -> None:
    text, _ = scrape(
        lab,
        tmp_path,
        dns={"nameservers": [lab.dns_server]},
        domain_controllers={"discover": "dns", "static": []},
    )
    assert (
        value(text, "exchange_auth_discovery_success", role="domain_controller", method="dns") == 1
    )
    found = value(text, "exchange_auth_inventory_servers", role="domain_controller", source="dns")
    assert found is not None and found >= 1
    # The discovered DC was resolved through the same DNS and probed like a static one.
    assert (
        value(
            text, "exchange_auth_kerberos_port_up", server=lab.dc.name, port="88", transport="tcp"
        )
        == 1
    )


def test_static_entries_win_over_discovered_ones(lab: Lab, tmp_path: Path) -> None:
    text, _ = scrape(
        lab,
        tmp_path,
        dns={"nameservers": [lab.dns_server]},
        domain_controllers={
            "discover": "dns",
            "static": [{"name": lab.dc.name, "address": lab.dc.address}],
        },
    )
    assert (
        value(text, "exchange_auth_inventory_servers", role="domain_controller", source="static")
        == 1
    )
    assert (
        value(
            text, "exchange_auth_kerberos_port_up", server=lab.dc.name, port="88", transport="udp"
        )
        == 1
    )


def test_failed_discovery_is_reported_and_static_servers_stay(lab: Lab, tmp_path: Path) -> None:
    # The dead DC's address serves no DNS: discovery fails, static servers are still probed.
    text, _ = scrape(
        lab,
        tmp_path,
        dns={"nameservers": [lab.dead_dc.address], "timeout": "1s"},
        domain_controllers={
            "discover": "dns",
            "static": [{"name": lab.dc.name, "address": lab.dc.address}],
        },
    )
    assert (
        value(text, "exchange_auth_discovery_success", role="domain_controller", method="dns") == 0
    )
    assert (
        value(
            text,
            "exchange_auth_discovery_last_success_timestamp_seconds",
            role="domain_controller",
            method="dns",
        )
        == 0
    )
    assert (
        value(
            text, "exchange_auth_kerberos_port_up", server=lab.dc.name, port="88", transport="udp"
        )
        == 1
    )
