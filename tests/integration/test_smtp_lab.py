"""The SMTP probe against the lab's Exchange stand-ins and against hostile peers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.exporter_process import scrape_once
from tests.lab import SKEWED_CLOCK_OFFSET, Lab
from tests.lab.hostile_smtp import HostileSmtpPeer
from tests.metrics_text import value

pytestmark = pytest.mark.lab


def scrape(lab: Lab, tmp_path: Path, timeout: str = "5", **overrides: Any) -> tuple[str, float]:
    return scrape_once(lab.exporter_config(**overrides), tmp_path, timeout)


def smtp_servers(lab: Lab) -> dict[str, Any]:
    return {"static": [s.static_entry for s in lab.smtp_servers]}


def test_banner_clocks_and_exchange_auth_of_each_stand_in(lab: Lab, tmp_path: Path) -> None:
    text, _ = scrape(
        lab,
        tmp_path,
        exchange_servers=smtp_servers(lab),
        # The DCs through their KDC, the Exchange servers through their banner only.
        checks={"clock": {"sources": ["kerberos", "smtp"]}},
    )
    for server in lab.smtp_servers:
        labels = {"server": server.name, "role": "exchange", "source": "smtp"}
        offset = value(text, "exchange_auth_clock_offset_seconds", **labels)
        for port in server.ports:
            assert value(text, "exchange_auth_smtp_up", server=server.name, port=str(port)) == 1
            advertised = value(
                text,
                "exchange_auth_smtp_exchange_auth_advertised",
                server=server.name,
                port=str(port),
            )
            assert advertised == (1 if server.x_exps(port) else 0), (server.name, port)
            assert (
                value(
                    text,
                    "exchange_auth_smtp_starttls_advertised",
                    server=server.name,
                    port=str(port),
                )
                == 1
            )
        if server.banner_clock_offset is None:
            # A custom banner: no reading at all, never a zero.
            assert offset is None
            assert (
                value(text, "exchange_auth_smtp_banner_clock_up", server=server.name, port="25")
                == 0
            )
            continue
        assert offset == pytest.approx(server.banner_clock_offset, abs=1.5), server.name
        uncertainty = value(text, "exchange_auth_clock_uncertainty_seconds", **labels)
        assert uncertainty is not None and 1.0 <= uncertainty < 1.1
    # exch2's banner (written with a -0600 offset) is 7 minutes ahead of dc1's KDC.
    skew = value(
        text,
        "exchange_auth_clock_skew_seconds",
        exchange_server="exch2.corp.example.test",
        domain_controller=lab.dc.name,
    )
    assert skew == pytest.approx(SKEWED_CLOCK_OFFSET, abs=1.5)
    healthy = value(
        text,
        "exchange_auth_clock_skew_seconds",
        exchange_server="exch1.corp.example.test",
        domain_controller=lab.dc.name,
    )
    assert healthy is not None and healthy < 1.5
    assert (
        value(
            text,
            "exchange_auth_clock_skew_seconds",
            exchange_server="exch3.corp.example.test",
            domain_controller=lab.dc.name,
        )
        is None
    )


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("silent", "timeout"),
        ("flood", "protocol_error"),
        ("reset_at_ehlo", "protocol_error"),
        ("endless_ehlo", "protocol_error"),
        ("stall_at_ehlo", "timeout"),
    ],
)
def test_a_hostile_peer_costs_a_reason_never_the_deadline(
    lab: Lab,
    tmp_path: Path,
    hostile_smtp_peer: Callable[..., HostileSmtpPeer],
    mode: str,
    reason: str,
) -> None:
    address = lab.dc.address.rsplit(".", 1)[0] + ".41"
    peer = hostile_smtp_peer(mode, address, 25)
    hostile = {"name": "hostile.corp.example.test", "address": address}
    text, elapsed = scrape(
        lab,
        tmp_path,
        timeout="2",
        exchange_servers={"static": [hostile, lab.smtp_server("exch1").static_entry]},
        checks={"smtp": {"ports": [25]}, "clock": {"sources": ["kerberos", "smtp"]}},
    )
    assert elapsed < 2.2, f"scrape took {elapsed:.2f} s"
    labels = {"server": "hostile.corp.example.test", "port": "25"}
    assert value(text, "exchange_auth_smtp_up", **labels) == 0
    assert value(text, "exchange_auth_smtp_failure", **labels, reason=reason) == 1
    assert peer.accepted >= 1
    # The healthy server in the same scrape is measured as usual.
    assert value(text, "exchange_auth_smtp_up", server="exch1.corp.example.test", port="25") == 1
