"""The Kerberos check against responders on loopback: live, closed, silent and broken ports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from exporter.checks.base import CheckContext, CheckRun, Failure
from exporter.checks.kerberos import SPEC, KerberosResult, PortResult, check_kerberos
from exporter.config import KerberosCheck, Settings, load_text
from exporter.servers import Role, Server
from tests.kdc_peer import Behaviour, KdcPeer
from tests.metrics_text import expose, value

SETTINGS = KerberosCheck()


@pytest.fixture
async def peer() -> AsyncIterator[KdcPeer]:
    peer = KdcPeer()
    yield peer
    peer.close()


def context(seconds: float = 1.0) -> CheckContext:
    settings: Settings = load_text("realm: corp.example.test\n")
    return CheckContext(asyncio.get_running_loop().time() + seconds, settings)


async def dc(
    peer: KdcPeer,
    kdc: tuple[Behaviour | None, Behaviour | None],
    kpasswd: tuple[Behaviour | None, Behaviour | None] = ("kpasswd", "kpasswd"),
    offset: float = 0.0,
) -> Server:
    ports = {
        "kerberos": await peer.serve(*kdc, offset=offset),
        "kpasswd": await peer.serve(*kpasswd, offset=offset),
    }
    return Server("dc1.corp.example.test", Role.DOMAIN_CONTROLLER, "127.0.0.1", ports)


def by_port(result: KerberosResult) -> dict[str, PortResult]:
    return {f"{r.port}/{r.transport}": r for r in result.ports}


async def test_a_healthy_dc_answers_on_all_four_ports(peer: KdcPeer) -> None:
    target = await dc(peer, ("error", "error"), offset=420.0)
    result = await check_kerberos(context(), target, SETTINGS)
    ports = by_port(result)
    assert set(ports) == {"88/udp", "88/tcp", "464/udp", "464/tcp"}
    assert all(p.up for p in ports.values())
    assert ports["88/udp"].reply is not None
    assert ports["88/udp"].reply.error_code == 6
    assert ports["464/tcp"].reply is not None
    assert ports["464/tcp"].reply.error_code == 2
    (clock,) = result.clock_readings
    assert clock.source == "kerberos"
    assert clock.offset == pytest.approx(420.0, abs=0.05)
    assert clock.uncertainty < 0.05


async def test_closed_ports_are_refused(peer: KdcPeer) -> None:
    target = await dc(peer, (None, None), (None, None))
    result = await check_kerberos(context(), target, SETTINGS)
    assert {name: p.reason for name, p in by_port(result).items()} == dict.fromkeys(
        ["88/udp", "88/tcp", "464/udp", "464/tcp"], "refused"
    )
    assert result.clock_readings == ()


async def test_silent_ports_time_out_at_the_deadline(peer: KdcPeer) -> None:
    target = await dc(peer, ("silent", "silent"), ("silent", "silent"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await check_kerberos(context(0.3), target, SETTINGS)
    assert loop.time() - started < 0.6
    assert {p.reason for p in result.ports} == {"timeout"}


async def test_silent_kpasswd_udp_beside_live_tcp_is_inconclusive(peer: KdcPeer) -> None:
    target = await dc(peer, ("error", "error"), ("silent", "kpasswd"))
    ports = by_port(await check_kerberos(context(0.3), target, SETTINGS))
    assert ports["464/udp"].reason == "inconclusive"
    assert ports["464/tcp"].up


@pytest.mark.parametrize("behaviour", ["garbage", "truncated", "no_stime", "huge"])
async def test_broken_replies_are_a_protocol_error(peer: KdcPeer, behaviour: Behaviour) -> None:
    target = await dc(peer, (behaviour, behaviour))
    ports = by_port(await check_kerberos(context(), target, SETTINGS))
    assert ports["88/udp"].reason == "protocol_error"
    assert ports["88/tcp"].reason == "protocol_error"
    assert ports["464/tcp"].up


async def test_response_too_big_on_udp_is_still_a_kdc_answering(peer: KdcPeer) -> None:
    target = await dc(peer, ("too_big", "error"))
    ports = by_port(await check_kerberos(context(), target, SETTINGS))
    assert ports["88/udp"].up
    assert ports["88/udp"].reply is not None
    assert ports["88/udp"].reply.error_code == 52


async def test_a_kdc_without_microseconds_is_read_to_the_second(peer: KdcPeer) -> None:
    target = await dc(peer, ("no_susec", "no_susec"), ("silent", None))
    result = await check_kerberos(context(0.3), target, SETTINGS)
    (clock,) = result.clock_readings
    assert 1.0 <= clock.uncertainty < 1.05
    assert clock.offset == pytest.approx(0.0, abs=1.01)


def test_every_configured_port_has_series_when_the_whole_check_fails() -> None:
    server = Server("dc9.corp.example.test", Role.DOMAIN_CONTROLLER)
    runs: list[CheckRun[KerberosResult]] = [
        CheckRun("kerberos", server, Failure("dns", "cannot resolve"), 0.01)
    ]

    text = expose(SPEC.emit(runs, SETTINGS))
    for port, transport in [("88", "udp"), ("88", "tcp"), ("464", "udp"), ("464", "tcp")]:
        labels = {"server": server.name, "port": port, "transport": transport}
        assert value(text, "exchange_auth_kerberos_port_up", **labels) == 0
        assert value(text, "exchange_auth_kerberos_port_failure", **labels, reason="dns") == 1
