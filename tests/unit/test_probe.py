"""Multi-target mode and sharding: target parsing, allow-list decisions, the shard hash, and
/probe, /sd and a sharded /metrics served by the real application against a real NTP peer."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.app import Runtime, make_app
from exporter.background import Scan, ScanRunner, ScanState
from exporter.config import ConfigError, load_text
from exporter.inventory import Inventory, build_inventory
from exporter.metrics import ReloadStatus, ScrapeCollector
from exporter.probe import DENIED_REASONS, AllowList, ProbeRefused, parse_target
from exporter.scrape import ScrapeResult
from exporter.shard import MAX_SHARDS, WHOLE, Shard, shard_of
from tests.metrics_text import expose, series, value
from tests.ntp_peer import NtpPeer

Client = TestClient[web.Request, web.Application]
NAMES = [f"{kind}{i:03d}.corp.example.test" for kind in ("dc", "exch") for i in range(300)]


# --- target parsing and the allow-list -------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text", "is_ip"),
    [
        ("DC1.Corp.Example.Test", "dc1.corp.example.test", False),
        ("dc1.corp.example.test.", "dc1.corp.example.test", False),
        ("10.0.0.5", "10.0.0.5", True),
        ("::1", "::1", True),
        ("2001:DB8::1", "2001:db8::1", True),
        ("exch1", "exch1", False),
    ],
)
def test_targets_are_names_or_ip_literals(raw: str, text: str, is_ip: bool) -> None:
    target = parse_target(raw)
    assert target.text == text
    assert (target.ip is not None) is is_ip


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (None, "target parameter is required"),
        ("", "target parameter is required"),
        ("dc1.corp.example.test:88", "a port is not accepted"),
        ("10.0.0.5:88", "a port is not accepted"),
        ("[::1]:88", "no port"),
        ("http://dc1.corp.example.test/", "no URL"),
        ("user@dc1.corp.example.test", "no URL"),
        ("fe80::1%lo", "zone index"),
        ("127.1", "expected a host name"),  # numeric last label: never a real TLD
        ("2130706433", "expected a host name"),
        ("0x7f000001", "four decimal numbers"),  # inet_aton would read 127.0.0.1
        ("dc_1.corp.example.test", "expected a host name"),
        ("a" * 254, "expected a host name"),
        ("dc1\n.corp.example.test", "expected a host name"),  # "$" would have let it through
        ("dc1.corp.example.test\x00", "expected a host name"),
        ("dc1.c\u00f6rp.example.test", "expected a host name"),
    ],
)
def test_malformed_targets_are_bad_requests(raw: str | None, fragment: str) -> None:
    with pytest.raises(ProbeRefused) as refused:
        parse_target(raw)
    assert refused.value.status == 400
    assert refused.value.reason == "bad_request"
    assert fragment in refused.value.message


ALLOW = AllowList.from_entries(
    load_text(
        "realm: corp.example.test\n"
        "probe: {allow: [Mail.Example.COM, '*.branch.example.com', 10.1.0.0/16, 192.0.2.7, "
        "'2001:db8::/32']}\n"
    ).probe.allow
)


@pytest.mark.parametrize(
    ("target", "admitted"),
    [
        ("mail.example.com", True),
        ("MAIL.example.com.", True),
        ("other.example.com", False),
        ("x.mail.example.com", False),  # an exact name admits no name below it
        ("dc.branch.example.com", True),
        ("a.b.branch.example.com", True),
        ("branch.example.com", False),  # *.suffix is below the suffix only
        ("evilbranch.example.com", False),
        ("10.1.255.3", True),
        ("10.2.0.1", False),
        ("192.0.2.7", True),
        ("192.0.2.8", False),
        ("2001:db8::25", True),
        ("::ffff:10.1.0.1", False),  # another IP version is never inside an IPv4 network
        ("10-1-0-1.example.com", False),  # CIDRs admit IP literals only, never resolved names
    ],
)
def test_allow_list_decides_on_the_text_alone(target: str, admitted: bool) -> None:
    assert ALLOW.admits(parse_target(target)) is admitted


def test_an_empty_allow_list_admits_nothing() -> None:
    empty = AllowList.from_entries(load_text("realm: corp.example.test\n").probe.allow)
    assert not empty.admits(parse_target("127.0.0.1"))
    assert not empty.admits(parse_target("dc1.corp.example.test"))


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ("10.0.0.1/8", "has host bits set"),
        ("10.0.0.0/33", "invalid IP address or CIDR '10.0.0.0/33'"),
        ("10.0.0", "invalid IP address or CIDR"),
        ("*.", "invalid host name"),
        ("bad_name.example.com", "invalid host name"),
    ],
)
def test_allow_list_errors_name_the_entry_and_line(entry: str, fragment: str) -> None:
    text = f"realm: corp.example.test\nprobe:\n  allow:\n    - mail.example.com\n    - '{entry}'\n"
    with pytest.raises(ConfigError) as error:
        load_text(text, "probe.yml")
    assert "probe.allow[1] (line 5)" in str(error.value)
    assert fragment in str(error.value)


# --- the shard hash ---------------------------------------------------------------------------


def test_shard_flag_parsing() -> None:
    assert Shard.parse("0/2") == Shard(0, 2)
    assert Shard.parse(" 2/3 ") == Shard(2, 3)
    assert Shard.parse("0/1") == WHOLE
    for bad, fragment in [
        ("2/2", "from 0 to 1"),
        ("1/0", "from 1 to"),
        ("-1/2", "expected i/n"),
        ("1", "expected i/n"),
        ("a/b", "expected i/n"),
        (f"0/{MAX_SHARDS + 1}", "from 1 to"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            Shard.parse(bad)


def test_shards_cover_every_server_exactly_once() -> None:
    for count in (2, 3, 7):
        owners = {name: [i for i in range(count) if Shard(i, count).owns(name)] for name in NAMES}
        assert all(len(found) == 1 for found in owners.values()), count
        sizes = [sum(1 for f in owners.values() if f == [i]) for i in range(count)]
        # The hash spreads: no shard gets less than half its fair share of 600 names.
        assert min(sizes) > len(NAMES) / count / 2, sizes


def test_the_hash_ignores_case_and_a_final_dot_and_never_changes() -> None:
    assert shard_of("DC001.Corp.Example.Test.", 5) == shard_of("dc001.corp.example.test", 5)
    # Pinned: the same on every machine and release, or a rolling upgrade would move servers.
    pinned = {name: shard_of(name, 3) for name in NAMES[:20]}
    script = (
        "import json,sys; from exporter.shard import shard_of; "
        "print(json.dumps({n: shard_of(n, 3) for n in json.loads(sys.argv[1])}))"
    )
    for seed in ("1", "2"):  # Python's own hash() differs with PYTHONHASHSEED; ours must not
        other = subprocess.run(
            [sys.executable, "-c", script, json.dumps(NAMES[:20])],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert json.loads(other.stdout) == pinned
    assert [shard_of(f"exch{i}.corp.example.test", 4) for i in range(1, 9)] == [
        shard_of(f"exch{i}.corp.example.test", 4) for i in range(1, 9)
    ]
    assert shard_of("dc1.corp.example.test", 2) == 0
    assert shard_of("exch2.corp.example.test", 2) == 1
    assert shard_of("exch6.corp.example.test", 3) == 2


def test_adding_servers_or_a_shard_moves_only_what_it_must() -> None:
    before = {name: shard_of(name, 3) for name in NAMES}
    grown = NAMES + [f"new{i}.corp.example.test" for i in range(50)]
    assert {name: shard_of(name, 3) for name in grown if name in before} == before
    # Jump consistent hash: from 3 to 4 shards, a server either stays or moves to the new one.
    after = {name: shard_of(name, 4) for name in NAMES}
    moved = [name for name in NAMES if after[name] != before[name]]
    assert all(after[name] == 3 for name in moved)
    assert len(moved) < len(NAMES) / 4 * 1.5


STATIC = """
realm: corp.example.test
domain_controllers:
  static:
    - {name: dc1.corp.example.test, address: 127.0.0.1}
    - {name: dc6.corp.example.test, address: 127.0.0.1}
exchange_servers:
  static:
    - {name: exch1.corp.example.test, address: 127.0.0.1}
    - {name: exch2.corp.example.test, address: 127.0.0.1}
"""


async def test_two_shards_split_the_inventory_and_read_each_others_dcs() -> None:
    settings = load_text(STATIC)
    whole = await build_inventory(settings)
    first = await build_inventory(settings, shard=Shard(0, 2))
    second = await build_inventory(settings, shard=Shard(1, 2))
    assert sorted(s.name for s in (*first.servers, *second.servers)) == sorted(
        s.name for s in whole.servers
    )
    assert [s.name for s in first.servers] == ["dc1.corp.example.test", "exch1.corp.example.test"]
    assert [s.name for s in first.clock_peers] == ["dc6.corp.example.test"]
    assert [s.name for s in second.clock_peers] == ["dc1.corp.example.test"]
    # A rebuild (discovery refresh, reload) keeps the shard of the previous inventory.
    assert (await build_inventory(settings, first)).shard == Shard(0, 2)
    assert whole.clock_peers == () and whole.shard == WHOLE


async def test_a_shards_scans_weigh_every_dc(tmp_path: Path) -> None:
    # Replication verdicts are forest-wide: a failing DC of another shard must count here too.
    path = tmp_path / "config.yml"
    path.write_text(STATIC)
    runtime = await Runtime.load(path, Shard(1, 2))
    seen = runtime.scans.inventory()
    assert {s.name for s in seen.domain_controllers} == {
        "dc1.corp.example.test",
        "dc6.corp.example.test",
    }
    assert [s.name for s in seen.exchange_servers] == ["exch2.corp.example.test"]


# --- the endpoints, served by the real application --------------------------------------------


@pytest.fixture
async def peer() -> AsyncIterator[NtpPeer]:
    peer = NtpPeer()
    yield peer
    peer.close()


Serve = Callable[..., Awaitable[Client]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    clients: list[Client] = []

    async def start(text: str, shard: Shard = WHOLE) -> Client:
        path = tmp_path / f"config-{len(clients)}.yml"
        path.write_text(text)
        client = TestClient(TestServer(make_app(await Runtime.load(path, shard))))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


def ntp_config(ports: dict[str, int], extra: str = "") -> str:
    dcs = [n for n in ports if n.startswith("dc")]
    exch = [n for n in ports if n.startswith("exch")]

    def entries(names: list[str]) -> str:
        if not names:
            return "    []\n"
        return "".join(
            f"    - {{name: {n}, address: 127.0.0.1, ports: {{ntp: {ports[n]}}}}}\n" for n in names
        )

    return (
        "realm: corp.example.test\n"
        f"domain_controllers:\n  static:\n{entries(dcs)}"
        f"exchange_servers:\n  static:\n{entries(exch)}"
        "checks: {kerberos: {enabled: false}, smtp: {enabled: false}, "
        "clock: {sources: [ntp], timeout: 1s}}\n" + extra
    )


async def test_probe_of_an_inventory_server(peer: NtpPeer, serve: Serve) -> None:
    port = await peer.serve(offset=2.0)
    client = await serve(ntp_config({"dc1.corp.example.test": port}))
    response = await client.get(
        "/probe",
        params={"target": "DC1.corp.example.test", "module": "clock"},
        headers={"X-Prometheus-Scrape-Timeout-Seconds": "3"},
    )
    assert response.status == 200
    text = await response.text()
    labels = {"server": "dc1.corp.example.test", "role": "domain_controller"}
    assert value(text, "exchange_auth_probe_success") == 1
    assert 0 < (value(text, "exchange_auth_probe_duration_seconds") or 0) < 1
    assert value(text, "exchange_auth_ntp_up", **labels) == 1
    offset = value(text, "exchange_auth_clock_offset_seconds", **labels, source="ntp")
    assert offset == pytest.approx(2.0, abs=0.05)
    assert value(text, "exchange_auth_check_success", check="clock", **{"server": labels["server"]})
    assert series(text, "exchange_auth_clock_skew_seconds") == []
    assert peer.requests([port]) == 1


async def test_refusals_are_counted_and_send_nothing(peer: NtpPeer, serve: Serve) -> None:
    port = await peer.serve()
    client = await serve(
        ntp_config({"dc1.corp.example.test": port}, "probe: {allow: [127.0.0.0/8]}\n")
    )
    # The only NTP server listening is the peer: the clock module's port for outsiders is its.
    cases = [
        (
            {"target": "outside.example.com", "module": "clock", "role": "exchange"},
            403,
            "not_allowed",
        ),
        ({"target": "10.9.9.9", "module": "clock", "role": "exchange"}, 403, "not_allowed"),
        ({"target": "dc1.corp.example.test", "module": "nope"}, 400, "unknown_module"),
        ({"target": "dc1.corp.example.test"}, 400, "unknown_module"),
        ({"target": "127.0.0.1:123", "module": "clock"}, 400, "bad_request"),
        ({"module": "clock"}, 400, "bad_request"),
        ({"target": "127.0.0.1", "module": "clock"}, 400, "bad_request"),  # which role?
        (
            {"target": "dc1.corp.example.test", "module": "clock", "role": "exchange"},
            400,
            "bad_request",
        ),
        ({"target": "dc1.corp.example.test", "module": "kerberos"}, 400, "module_disabled"),
        ({"target": "dc1.corp.example.test", "module": "smtp"}, 400, "bad_request"),  # DCs: no SMTP
    ]
    expected = dict.fromkeys(DENIED_REASONS, 0.0)
    for params, status, reason in cases:
        response = await client.get("/probe", params=params)
        assert response.status == status, (params, await response.text())
        expected[reason] += 1
    body = await (await client.get("/probe", params={"target": "x", "module": "nope"})).text()
    assert "clock, kerberos, ldap_clock, smtp" in body
    assert peer.requests([port]) == 0
    metrics = await (await client.get("/metrics")).text()
    counted = {
        labels["reason"]: value(metrics, "exchange_auth_probe_denied_total", **labels)
        for labels in series(metrics, "exchange_auth_probe_denied_total")
    }
    expected["unknown_module"] += 1  # the request above that read the module list
    assert counted == expected


async def test_an_allow_listed_address_is_probed_with_the_check_port(
    peer: NtpPeer, serve: Serve
) -> None:
    port = await peer.serve(offset=-1.0)
    config = ntp_config(
        {"dc1.corp.example.test": port},
        "probe: {allow: [127.0.0.0/8]}\n",
    ).replace(
        "clock: {sources: [ntp], timeout: 1s}", f"clock: {{sources: [ntp], ntp_port: {port}}}"
    )
    client = await serve(config)
    response = await client.get(
        "/probe", params={"target": "127.0.0.1", "module": "clock", "role": "exchange"}
    )
    text = await response.text()
    assert response.status == 200, text
    assert value(text, "exchange_auth_probe_success") == 1
    assert value(text, "exchange_auth_ntp_up", server="127.0.0.1", role="exchange") == 1
    assert peer.requests([port]) == 1


async def test_a_failed_probe_answers_200_with_success_0(serve: Serve) -> None:
    # Nothing listens on port 9 of 127.0.0.1: refused at once.
    client = await serve(ntp_config({"dc1.corp.example.test": 9}))
    response = await client.get(
        "/probe", params={"target": "dc1.corp.example.test", "module": "clock"}
    )
    text = await response.text()
    assert response.status == 200
    assert value(text, "exchange_auth_probe_success") == 0
    labels = {"server": "dc1.corp.example.test", "role": "domain_controller"}
    assert value(text, "exchange_auth_ntp_failure", **labels, reason="refused") == 1


async def test_probe_can_be_disabled(serve: Serve) -> None:
    client = await serve(ntp_config({"dc1.corp.example.test": 9}, "probe: {enabled: false}\n"))
    response = await client.get(
        "/probe", params={"target": "dc1.corp.example.test", "module": "clock"}
    )
    assert response.status == 403


async def test_service_discovery_lists_the_inventory(serve: Serve) -> None:
    client = await serve(ntp_config({"dc1.corp.example.test": 1, "exch1.corp.example.test": 2}))
    response = await client.get("/sd")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/json")
    groups = await response.json()
    assert groups == [
        {
            "targets": ["dc1.corp.example.test"],
            "labels": {
                "__meta_exchange_auth_role": "domain_controller",
                "__meta_exchange_auth_origin": "static",
                "__meta_exchange_auth_modules": ",clock,",
                "__meta_exchange_auth_shard": "0/1",
                "__meta_exchange_auth_address": "127.0.0.1",
            },
        },
        {
            "targets": ["exch1.corp.example.test"],
            "labels": {
                "__meta_exchange_auth_role": "exchange",
                "__meta_exchange_auth_origin": "static",
                "__meta_exchange_auth_modules": ",clock,",
                "__meta_exchange_auth_shard": "0/1",
                "__meta_exchange_auth_address": "127.0.0.1",
            },
        },
    ]
    only = await (await client.get("/sd", params={"role": "exchange"})).json()
    assert [g["targets"] for g in only] == [["exch1.corp.example.test"]]
    assert await (await client.get("/sd", params={"module": "kerberos"})).json() == []
    assert (await client.get("/sd", params={"module": "nope"})).status == 400
    assert (await client.get("/sd", params={"role": "dc"})).status == 400


async def test_sharded_metrics_report_each_server_once_and_every_skew_pair(
    peer: NtpPeer, serve: Serve
) -> None:
    ports = dict(
        zip(
            [
                "dc1.corp.example.test",
                "dc6.corp.example.test",
                "exch1.corp.example.test",
                "exch2.corp.example.test",
            ],
            [await peer.serve(offset=o) for o in (0.0, 30.0, 0.0, 400.0)],
            strict=True,
        )
    )
    config = ntp_config(ports)
    texts = []
    for index in (0, 1):
        client = await serve(config, Shard(index, 2))
        response = await client.get(
            "/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "3"}
        )
        texts.append(await response.text())
        assert value(texts[-1], "exchange_auth_inventory_shard", index=str(index), count="2") == 1
        assert value(texts[-1], "exchange_auth_inventory_clock_peers") == 1
        sd = await (await client.get("/sd")).json()
        assert all(g["labels"]["__meta_exchange_auth_shard"] == f"{index}/2" for g in sd)
    up = [(labels["server"], t) for t in texts for labels in series(t, "exchange_auth_ntp_up")]
    offsets = [
        labels["server"]
        for t in texts
        for labels in series(t, "exchange_auth_clock_offset_seconds")
    ]
    checked = [
        labels["server"] for t in texts for labels in series(t, "exchange_auth_check_success")
    ]
    for found in ([name for name, _ in up], offsets, checked):
        assert sorted(found) == sorted(ports), found  # each server in exactly one shard
    pairs = [
        (
            labels["exchange_server"],
            labels["domain_controller"],
            value(t, "exchange_auth_clock_skew_seconds", **labels),
        )
        for t in texts
        for labels in series(t, "exchange_auth_clock_skew_seconds")
    ]
    # Every Exchange server against every DC, the other shard's DC included, exactly once.
    assert sorted((e, d) for e, d, _ in pairs) == [
        ("exch1.corp.example.test", "dc1.corp.example.test"),
        ("exch1.corp.example.test", "dc6.corp.example.test"),
        ("exch2.corp.example.test", "dc1.corp.example.test"),
        ("exch2.corp.example.test", "dc6.corp.example.test"),
    ]
    skew = {(e, d): s for e, d, s in pairs}
    assert skew[("exch1.corp.example.test", "dc6.corp.example.test")] == pytest.approx(30, abs=0.1)
    assert skew[("exch2.corp.example.test", "dc1.corp.example.test")] == pytest.approx(400, abs=0.1)
    # exch2's clock verdict weighs dc1, which lives in the other shard.
    assert (
        value(texts[1], "exchange_auth_cause", server="exch2.corp.example.test", cause="clock_skew")
        == 1
    )


async def test_probes_beyond_max_concurrency_wait_then_give_up(peer: NtpPeer, serve: Serve) -> None:
    port = await peer.serve(behaviour="silent")
    config = ntp_config({"dc1.corp.example.test": port}, "probe: {max_concurrency: 1}\n")
    client = await serve(config)
    params = {"target": "dc1.corp.example.test", "module": "clock"}
    # The first holds the only slot for the clock timeout (1 s) against a server that never
    # answers; the second may wait 0.5 s (a 1 s scrape timeout minus the 0.5 s offset).
    first = asyncio.create_task(
        client.get("/probe", params=params, headers={"X-Prometheus-Scrape-Timeout-Seconds": "5"})
    )
    await asyncio.sleep(0.2)
    second = await client.get(
        "/probe", params=params, headers={"X-Prometheus-Scrape-Timeout-Seconds": "1"}
    )
    assert second.status == 503
    assert "probe.max_concurrency" in await second.text()
    answer = await first
    assert answer.status == 200
    assert value(await answer.text(), "exchange_auth_probe_success") == 0
    metrics = await (await client.get("/metrics")).text()
    assert value(metrics, "exchange_auth_probe_denied_total", reason="overloaded") == 1


def test_scan_series_are_reported_by_one_shard() -> None:
    def emit(state: ScanState[int], settings: object, inventory: object) -> Iterator[Metric]:
        per_server = GaugeMetricFamily("exchange_auth_test_per_server", "", labels=["server"])
        for name in ("dc1.corp.example.test", "dc6.corp.example.test", "queue-only.example.test"):
            per_server.add_metric([name], 1)
        yield per_server
        yield GaugeMetricFamily("exchange_auth_test_forest_wide", "", value=1)

    scan: Scan[int] = Scan("test", lambda s: 60.0, _never, lambda r: r, emit)
    settings = load_text(STATIC)
    seen: list[tuple[str, str]] = []
    for index in (0, 1):
        inventory = asyncio.run(build_inventory(settings, shard=Shard(index, 2)))
        runner = ScanRunner([scan], lambda: settings, functools.partial(_same, inventory))
        runner.states["test"] = ScanState(result=1, success=True, last_success=1.0)
        collector = ScrapeCollector(
            ScrapeResult({}, 1.0, 0.0), settings, inventory, ReloadStatus(True, 0.0), (), runner
        )
        text = expose(collector.collect())
        seen += [(str(index), s["server"]) for s in series(text, "exchange_auth_test_per_server")]
        seen += [(str(index), "") for _ in series(text, "exchange_auth_test_forest_wide")]
        # Each shard's own scan health is always there.
        assert value(text, "exchange_auth_scan_success", scan="test") == 1
    assert sorted(seen) == sorted(
        [
            (str(shard_of("dc1.corp.example.test", 2)), "dc1.corp.example.test"),
            (str(shard_of("dc6.corp.example.test", 2)), "dc6.corp.example.test"),
            (str(shard_of("queue-only.example.test", 2)), "queue-only.example.test"),
            ("0", ""),
        ]
    )


async def _never(settings: object, inventory: object, previous: int | None) -> int:
    raise AssertionError("not run in this test")


def _same(inventory: Inventory) -> Inventory:
    return inventory
