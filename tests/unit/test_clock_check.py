"""The NTP probe against real UDP sockets on loopback: good, closed, silent and misbehaving peers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from exporter.checks.base import CheckError
from exporter.checks.clock import NtpClient, ntp_query
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


async def test_closed_port_is_refused_at_once() -> None:  # no peer needed
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
    assert 0.28 < loop.time() - started < 0.6
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


async def test_one_client_serves_many_peers_good_closed_and_silent_alike(peer: NtpPeer) -> None:
    """Hundreds of probes share a few sockets: each gets its own answer or its own reason."""
    good = await peer.serve_many(300, offset=5.0)
    silent = [await peer.serve(behaviour="silent") for _ in range(5)]
    closed = [closed_udp_port() for _ in range(5)]
    client = NtpClient()
    try:
        deadline = deadline_in(0.5)
        outcomes = await asyncio.gather(
            *(client.query("127.0.0.1", port, deadline) for port in [*good, *silent, *closed]),
            return_exceptions=True,
        )
        channels = len(client._retired) + len(client._channels)
    finally:
        client.close()
    readings, rest = outcomes[:300], outcomes[300:]
    assert all(
        not isinstance(r, BaseException) and r.offset == pytest.approx(5.0, abs=0.05)
        for r in readings
    )
    reasons = [r.reason if isinstance(r, CheckError) else r for r in rest]
    assert reasons == ["timeout"] * 5 + ["refused"] * 5
    assert channels >= 2  # more probes than one socket takes


async def test_a_closed_client_refuses_new_queries() -> None:
    client = NtpClient()
    client.close()
    with pytest.raises(CheckError, match="after the scrape ended"):
        await client.query("127.0.0.1", 123, deadline_in(0.1))
