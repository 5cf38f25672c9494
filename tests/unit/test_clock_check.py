"""The NTP probe against real UDP sockets on loopback: good, closed, silent and misbehaving peers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from exporter.checks.base import CheckError
from exporter.checks.clock import ntp_query
from tests.ntp_peer import NtpPeer


@pytest.fixture
async def peer() -> AsyncIterator[NtpPeer]:
    peer = NtpPeer()
    yield peer
    peer.close()


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deadline_in(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_good_peer_gives_its_offset(peer: NtpPeer) -> None:
    port = await peer.serve(offset=420.0)
    reading = await ntp_query("127.0.0.1", port, deadline_in(1))
    assert reading.offset == pytest.approx(420.0, abs=0.01)
    assert reading.stratum == 2


async def test_closed_port_is_refused_at_once() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(CheckError) as caught:
        await ntp_query("127.0.0.1", closed_udp_port(), deadline_in(2))
    assert caught.value.reason == "refused"
    assert loop.time() - started < 0.5


async def test_silent_peer_times_out_at_the_deadline(peer: NtpPeer) -> None:
    port = await peer.serve(behaviour="silent")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(CheckError) as caught:
        await ntp_query("127.0.0.1", port, deadline_in(0.3))
    assert caught.value.reason == "timeout"
    assert 0.28 < loop.time() - started < 0.4
    assert peer.requests() == 1


@pytest.mark.parametrize("behaviour", ["short", "wrong_mode", "wrong_origin", "random"])
async def test_malformed_replies_are_a_protocol_error(peer: NtpPeer, behaviour: str) -> None:
    port = await peer.serve(behaviour=behaviour)  # type: ignore[arg-type]
    with pytest.raises(CheckError) as caught:
        await ntp_query("127.0.0.1", port, deadline_in(0.2))
    assert caught.value.reason == "protocol_error"


async def test_kiss_of_death_is_named(peer: NtpPeer) -> None:
    port = await peer.serve(behaviour="kiss")
    with pytest.raises(CheckError) as caught:
        await ntp_query("127.0.0.1", port, deadline_in(0.2))
    assert caught.value.reason == "kiss_of_death"


async def test_stray_datagrams_do_not_hide_the_real_reply(peer: NtpPeer) -> None:
    port = await peer.serve(offset=60.0, behaviour="noise_first")
    reading = await ntp_query("127.0.0.1", port, deadline_in(1))
    assert reading.offset == pytest.approx(60.0, abs=0.01)


async def test_ipv6_loopback(peer: NtpPeer) -> None:
    v6 = NtpPeer(host="::1")
    try:
        port = await v6.serve(offset=-5.0)
        reading = await ntp_query("::1", port, deadline_in(1))
    finally:
        v6.close()
    assert reading.offset == pytest.approx(-5.0, abs=0.01)
