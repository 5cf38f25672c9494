"""Multi-target mode and sharding with the exporter as a process against the real lab.

A tripwire (UDP and TCP sockets on an address outside the inventory, on every port a module
would use, and on DNS) proves that a refused probe sends nothing: not a datagram, not a
connection, not even a DNS query.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml

from tests.integration.exporter_process import ExporterProcess, exporter_process
from tests.lab import SKEWED_CLOCK_OFFSET, Lab
from tests.metrics_text import series, value
from tests.prometheus_server import prometheus_server

pytestmark = pytest.mark.lab

TIMEOUT = {"X-Prometheus-Scrape-Timeout-Seconds": "3"}
# Every port a module sends to (NTP, Kerberos, kpasswd, SMTP) and DNS, which a probe of a name
# would ask first.
TRIPWIRE_UDP = (53, 88, 123, 464)
TRIPWIRE_TCP = (25, 53, 88, 464, 2525)


@dataclass
class Tripwire:
    """Sockets bound on ``address`` and never answered; ``seen()`` drains what reached them."""

    address: str
    sockets: list[tuple[str, int, socket.socket]] = field(default_factory=list)

    def open(self) -> Tripwire:
        for port in TRIPWIRE_UDP:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            udp.bind((self.address, port))
            udp.setblocking(False)
            self.sockets.append(("udp", port, udp))
        for port in TRIPWIRE_TCP:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((self.address, port))
            tcp.listen(16)  # the kernel completes handshakes into the backlog without accept()
            tcp.setblocking(False)
            self.sockets.append(("tcp", port, tcp))
        return self

    def seen(self) -> list[str]:
        found = []
        for transport, port, sock in self.sockets:
            while True:
                try:
                    if transport == "udp":
                        sock.recvfrom(4096)
                    else:
                        sock.accept()[0].close()
                except BlockingIOError:
                    break
                found.append(f"{port}/{transport}")
        return found

    def close(self) -> None:
        for _, _, sock in self.sockets:
            sock.close()


@pytest.fixture
def tripwires(ntp_lab: Lab) -> Iterator[tuple[Tripwire, Tripwire]]:
    """(outside: nothing may reach it, allowed: admitted by probe.allow) on the lab network."""
    net = ntp_lab.dc.address.rsplit(".", 1)[0]
    outside = Tripwire(f"{net}.77").open()
    allowed = Tripwire(f"{net}.78")
    try:
        allowed.open()
        yield outside, allowed
    finally:
        outside.close()
        allowed.close()


def start(lab: Lab, tmp_path: Path, name: str, *extra: str, **overrides: Any) -> Any:
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(lab.exporter_config(**overrides), sort_keys=False))
    return exporter_process(path, tmp_path / f"{name}.log", *extra)


def probe(exporter: ExporterProcess, **params: str) -> tuple[int, str]:
    return exporter.get("/probe?" + urlencode(params), TIMEOUT)


def test_probe_of_inventory_servers_over_ntp(ntp_lab: Lab, tmp_path: Path) -> None:
    with start(ntp_lab, tmp_path, "exporter") as exporter:
        status, text = probe(exporter, target=ntp_lab.skewed_dc.name.upper(), module="clock")
        assert status == 200, text
        labels = {"server": ntp_lab.skewed_dc.name, "role": "domain_controller"}
        assert value(text, "exchange_auth_probe_success") == 1
        assert value(text, "exchange_auth_ntp_up", **labels) == 1
        assert value(text, "exchange_auth_ntp_stratum", **labels) == 8  # chrony's local stratum
        offset = value(text, "exchange_auth_clock_offset_seconds", **labels, source="ntp")
        assert offset == pytest.approx(SKEWED_CLOCK_OFFSET, abs=1.0)
        # Only the target's series: a probe is one check on one server.
        assert {s["server"] for s in series(text, "exchange_auth_ntp_up")} == {labels["server"]}

        # The same series, with the same values, as /metrics has for that server.
        status, full = exporter.get("/metrics", TIMEOUT)
        assert status == 200
        assert value(full, "exchange_auth_ntp_up", **labels) == 1
        assert value(
            full, "exchange_auth_clock_offset_seconds", **labels, source="ntp"
        ) == pytest.approx(offset, abs=0.1)


def test_kerberos_probe_of_the_samba_dc(lab: Lab, tmp_path: Path) -> None:
    with start(lab, tmp_path, "exporter") as exporter:
        status, text = probe(exporter, target=lab.dc.name, module="kerberos")
    assert status == 200, text
    assert value(text, "exchange_auth_probe_success") == 1
    for port, transport in [("88", "udp"), ("88", "tcp"), ("464", "udp"), ("464", "tcp")]:
        labels = {"server": lab.dc.name, "port": port, "transport": transport}
        assert value(text, "exchange_auth_kerberos_port_up", **labels) == 1, labels
    assert (
        value(
            text,
            "exchange_auth_kerberos_error_code",
            server=lab.dc.name,
            port="88",
            transport="udp",
        )
        == 6
    )  # client unknown: the answer a credential-free AS-REQ gets
    offset = value(
        text,
        "exchange_auth_clock_offset_seconds",
        server=lab.dc.name,
        role="domain_controller",
        source="kerberos",
    )
    assert offset == pytest.approx(0, abs=1.0)


def test_outside_targets_are_refused_without_a_packet(
    ntp_lab: Lab, tmp_path: Path, tripwires: tuple[Tripwire, Tripwire]
) -> None:
    outside, allowed = tripwires
    overrides: dict[str, Any] = {
        # Were a name looked up, the query would go to the outside tripwire's DNS port.
        "dns": {"nameservers": [outside.address], "timeout": "1s"},
        "probe": {"allow": [f"{allowed.address}/32", "*.allowed.example.test"]},
        "checks": {"kerberos": {"enabled": True}, "smtp": {"enabled": True}},
    }
    with start(ntp_lab, tmp_path, "exporter", **overrides) as exporter:
        refused = 0
        for target in (outside.address, "outside.corp.example.test", "allowed.example.test"):
            for module, role in [("clock", "exchange"), ("kerberos", ""), ("smtp", "")]:
                params = {"target": target, "module": module, **({"role": role} if role else {})}
                status, text = probe(exporter, **params)
                assert status == 403, (params, text)
                assert "not in the inventory" in text
                refused += 1
        time.sleep(0.5)  # anything sent would have arrived by now
        assert outside.seen() == []
        assert allowed.seen() == []
        status, metrics = exporter.get("/metrics", TIMEOUT)
        assert value(metrics, "exchange_auth_probe_denied_total", reason="not_allowed") == refused

        # An address the allow-list admits is probed, on the port the module uses.
        status, text = exporter.get(
            "/probe?"
            + urlencode({"target": allowed.address, "module": "clock", "role": "exchange"}),
            {"X-Prometheus-Scrape-Timeout-Seconds": "1.5"},
        )
        assert status == 200, text
        assert value(text, "exchange_auth_probe_success") == 0  # the tripwire never answers
        assert (
            value(
                text,
                "exchange_auth_ntp_failure",
                server=allowed.address,
                role="exchange",
                reason="timeout",
            )
            == 1
        )
        assert allowed.seen() == ["123/udp"]
        status, text = probe(exporter, target=allowed.address, module="kerberos")
        assert status == 200, text
        assert sorted(allowed.seen()) == ["464/tcp", "464/udp", "88/tcp", "88/udp"]
        assert outside.seen() == []


def test_service_discovery_lists_the_inventory(ntp_lab: Lab, tmp_path: Path) -> None:
    with start(ntp_lab, tmp_path, "exporter") as exporter:
        status, body = exporter.get("/sd")
    assert status == 200
    groups = json.loads(body)
    assert sorted(t for g in groups for t in g["targets"]) == sorted(h.name for h in ntp_lab.hosts)
    roles = {g["targets"][0]: g["labels"]["__meta_exchange_auth_role"] for g in groups}
    assert roles == {h.name: h.role for h in ntp_lab.hosts}


def test_two_shards_cover_the_inventory_exactly_once(ntp_lab: Lab, tmp_path: Path) -> None:
    inventory = sorted(h.name for h in ntp_lab.hosts)
    texts, listed = [], []
    with (
        start(ntp_lab, tmp_path, "shard0", "--inventory.shard=0/2") as first,
        start(ntp_lab, tmp_path, "shard1", "--inventory.shard=1/2") as second,
    ):
        for index, exporter in enumerate((first, second)):
            status, text = exporter.get("/metrics", TIMEOUT)
            assert status == 200
            assert value(text, "exchange_auth_inventory_shard", index=str(index), count="2") == 1
            texts.append(text)
            listed += [t for g in json.loads(exporter.get("/sd")[1]) for t in g["targets"]]
    assert sorted(listed) == inventory
    for name in ("exchange_auth_ntp_up", "exchange_auth_clock_offset_seconds"):
        found = sorted(
            s["server"]
            for text in texts
            for s in series(text, name)
            if s.get("source", "ntp") == "ntp"
        )
        assert found == inventory, name
    checked = [
        (s["check"], s["server"]) for t in texts for s in series(t, "exchange_auth_check_success")
    ]
    assert len(checked) == len(set(checked))
    assert {server for _, server in checked} == set(inventory)
    # Every Exchange server against every DC exactly once, whichever shard holds the DC.
    pairs = {
        (s["exchange_server"], s["domain_controller"]): value(
            text, "exchange_auth_clock_skew_seconds", **s
        )
        for text in texts
        for s in series(text, "exchange_auth_clock_skew_seconds")
    }
    expected = {
        (e.name, d.name): abs(e.ntp_offset - d.ntp_offset)
        for e in ntp_lab.exchange_servers
        for d in ntp_lab.domain_controllers
    }
    assert pairs.keys() == expected.keys()
    assert sum(len(series(t, "exchange_auth_clock_skew_seconds")) for t in texts) == len(expected)
    for pair, skew in expected.items():
        assert pairs[pair] == pytest.approx(skew, abs=1.0), pair


def test_prometheus_discovers_from_sd_and_scrapes_probe(lab: Lab, tmp_path: Path) -> None:
    """The shipped scrape config (deploy/prometheus/multi-target.yml) with a real Prometheus."""
    binary = shutil.which("prometheus")
    assert binary is not None, "prometheus not found: apt-get install prometheus"
    with start(lab, tmp_path, "exporter") as exporter:
        host = exporter.url.removeprefix("http://")
        shipped = SHIPPED_SCRAPE_CONFIG.read_text().replace(SHIPPED_EXPORTER_HOST, host)
        config = yaml.safe_load(shipped)
        for job in config["scrape_configs"]:
            job.update(scrape_interval="1s", scrape_timeout="1s")
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        with prometheus_server(binary, tmp_path / "prometheus.yml", tmp_path) as server:
            expected = {
                (module, g["targets"][0])
                for module in ("clock", "kerberos", "smtp")
                for g in json.loads(exporter.get(f"/sd?module={module}")[1])
            }
            assert ("kerberos", lab.dc.name) in expected and ("smtp", lab.dc.name) not in expected

            def probed() -> dict[tuple[str, str], float]:
                return {
                    (r["metric"]["module"], r["metric"]["instance"]): float(r["value"][1])
                    for r in server.query('up{job="exchange-auth-probe"}')
                }

            deadline = time.monotonic() + 30
            while probed().keys() != expected and time.monotonic() < deadline:
                time.sleep(0.5)
            assert probed().keys() == expected, server.log()
            assert set(probed().values()) == {1.0}  # every /probe answered 200
            success = {
                (r["metric"]["module"], r["metric"]["instance"]): float(r["value"][1])
                for r in server.query('exchange_auth_probe_success{job="exchange-auth-probe"}')
            }
            for module, target in expected:
                assert success[(module, target)] == 1.0, (module, target)
            # The probe's series keep the exporter's labels (server, role) beside Prometheus'.
            offsets = server.query(
                f'exchange_auth_clock_offset_seconds{{job="exchange-auth-probe",source="ntp",'
                f'server="{lab.skewed_dc.name}"}}'
            )
            assert len(offsets) == 1
            assert offsets[0]["metric"]["role"] == "domain_controller"
            assert float(offsets[0]["value"][1]) == pytest.approx(SKEWED_CLOCK_OFFSET, abs=1.0)


SHIPPED_SCRAPE_CONFIG = Path(__file__).parents[2] / "deploy" / "prometheus" / "multi-target.yml"
SHIPPED_EXPORTER_HOST = "exporter-host.corp.example.com:9817"
