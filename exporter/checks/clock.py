"""Clock offsets over NTP, and the skew between each Exchange server and each domain controller.

NTP probes of one scrape share a few non-blocking UDP sockets driven by the event loop's
reader callback: no thread, no transport object, no socket per probe. Skew pairs take every :class:`ClockReading` of the scrape, from any
check, so later clock sources (Kerberos, SMTP banner, LDAP) need no change here.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric

from ..config import ClockCheck, Settings
from ..protocols.ntp import NtpReading, NtpReplyError, build_request, parse_reply
from ..servers import Role, Server
from .base import CheckContext, CheckError, CheckRun, CheckSpec, ClockReading, Failure

__all__ = ["SPEC", "NtpResult", "check_clock", "clock_metrics", "ntp_query", "skew_pairs"]

_UNREACHABLE = {
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EADDRNOTAVAIL,
    errno.EACCES,
    errno.EPERM,
}
_SOCKET_ERRORS = _UNREACHABLE | {errno.ECONNREFUSED}
# Not exported by Python's socket module: <linux/in.h> IP_RECVERR and <linux/in6.h> IPV6_RECVERR.
_RECVERR = {socket.AF_INET: (socket.IPPROTO_IP, 11), socket.AF_INET6: (socket.IPPROTO_IPV6, 25)}
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # struct sock_extended_err
_RECV_SIZE = 1024
_WANTED_RCVBUF = 1 << 20
# Replies to one socket arrive in bursts on a LAN and each small datagram occupies about this
# much of the receive buffer; the kernel may grant less buffer than asked (net.core.rmem_max).
_BUFFER_PER_REPLY = 1280
_MAX_PROBES_PER_SOCKET = 256


@dataclass(frozen=True, slots=True)
class NtpResult:
    reading: NtpReading
    clock_readings: tuple[ClockReading, ...]


def _unmatched(data: bytes) -> str:
    if len(data) < 48:
        return f"reply of {len(data)} bytes, expected at least 48"
    return "reply does not echo our transmit timestamp"


def _failure(code: int | None, detail: str) -> CheckError:
    if code == errno.ECONNREFUSED:
        return CheckError("refused", "NTP port closed (ICMP port unreachable)")
    if code in _UNREACHABLE:
        return CheckError("unreachable", detail or os.strerror(code or 0))
    return CheckError("unreachable", f"socket error: {detail}")


class _Probe:
    __slots__ = ("bad_reply", "future", "peer", "request", "sent_at")

    def __init__(
        self, peer: tuple[str, int], request: bytes, future: asyncio.Future[NtpReading]
    ) -> None:
        self.peer = peer
        self.request = request
        self.future = future
        self.sent_at = 0.0
        self.bad_reply: NtpReplyError | None = None


class _Channel:
    """One unconnected UDP socket carrying many exchanges, matched by nonce and peer address.

    ICMP errors reach an unconnected socket only through its error queue (IP_RECVERR), which
    also hands back the original datagram: that is how "refused" is pinned on one probe.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, family: socket.AddressFamily) -> None:
        self._loop = loop
        try:
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError as exc:  # no IPv6 on this host, out of file descriptors, ...
            raise CheckError("error", f"cannot open a UDP socket: {exc.strerror or exc}") from None
        self.sock.setblocking(False)
        self.sock.setsockopt(*_RECVERR[family], 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _WANTED_RCVBUF)
        granted = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.capacity = max(16, min(_MAX_PROBES_PER_SOCKET, granted // _BUFFER_PER_REPLY))
        self.by_nonce: dict[bytes, _Probe] = {}
        # Probes waiting on each peer, to pin a malformed reply (no usable nonce) on them.
        self.by_peer: dict[tuple[str, int], list[_Probe]] = {}
        self.assigned = 0
        loop.add_reader(self.sock.fileno(), self._on_readable)

    def send(self, probe: _Probe) -> None:
        self.assigned += 1
        self.by_nonce[probe.request[40:48]] = probe
        self.by_peer.setdefault(probe.peer, []).append(probe)
        for _attempt in (1, 2):
            probe.sent_at = time.time()
            try:
                self.sock.sendto(probe.request, probe.peer)
                return
            except BlockingIOError:
                self._finish(probe, CheckError("error", "local UDP send buffer full"))
                return
            except OSError as exc:
                # A pending ICMP report about another probe surfaces on the next send: when the
                # error queue held one, it was not about this probe, so send again.
                if exc.errno not in _SOCKET_ERRORS or not self._drain_errors():
                    self._finish(probe, _failure(exc.errno, exc.strerror or str(exc)))
                    return
        self._finish(probe, CheckError("unreachable", "send failed twice after ICMP errors"))

    def expire(self, probe: _Probe) -> None:
        if probe.bad_reply is not None:
            self._finish(probe, CheckError(probe.bad_reply.reason, str(probe.bad_reply)))
        else:
            self._finish(probe, CheckError("timeout", "no NTP reply before the deadline"))

    def _finish(self, probe: _Probe, outcome: NtpReading | CheckError) -> None:
        if self.by_nonce.pop(probe.request[40:48], None) is not None:
            waiting = self.by_peer[probe.peer]
            waiting.remove(probe)
            if not waiting:
                del self.by_peer[probe.peer]
        if probe.future.done():
            return
        if isinstance(outcome, CheckError):
            probe.future.set_exception(outcome)
        else:
            probe.future.set_result(outcome)

    def _on_readable(self) -> None:
        self._drain_errors()
        self._drain()

    def _drain(self) -> None:
        sock = self.sock
        while True:
            try:
                data, source = sock.recvfrom(_RECV_SIZE)
            except BlockingIOError:
                return
            except OSError:
                self._drain_errors()
                continue
            received_at = time.time()
            peer = (source[0], source[1])
            probe = self.by_nonce.get(data[24:32])
            if probe is None or peer != probe.peer:
                # Not an answer to anything we asked: dropped, but remembered against the
                # peer's probes so a server that only sends garbage says protocol_error.
                for waiting in self.by_peer.get(peer, ()):
                    waiting.bad_reply = NtpReplyError("protocol_error", _unmatched(data))
                continue
            try:
                self._finish(probe, parse_reply(data, probe.request, probe.sent_at, received_at))
            except NtpReplyError as exc:
                probe.bad_reply = exc
            except Exception as exc:  # a peer's bytes must never break the scrape
                probe.bad_reply = NtpReplyError("protocol_error", f"undecodable reply: {exc!r}")

    def _drain_errors(self) -> int:
        """Read the error queue; return how many ICMP reports it held."""
        count = 0
        while True:
            try:
                original, ancillary, _flags, dest = self.sock.recvmsg(
                    _RECV_SIZE, 256, socket.MSG_ERRQUEUE
                )
            except OSError:
                return count
            count += 1
            code: int | None = None
            for _level, _kind, blob in ancillary:
                if len(blob) >= _EXTENDED_ERR.size:
                    code = _EXTENDED_ERR.unpack_from(blob)[0]
            # The quoted datagram names the probe; a router that quotes only the UDP header
            # leaves the original destination, which names every probe waiting on that peer.
            probe = self.by_nonce.get(original[40:48])
            victims = (
                [probe] if probe is not None else list(self.by_peer.get((dest[0], dest[1]), ()))
            )
            for victim in victims:
                self._finish(victim, _failure(code, os.strerror(code) if code else "ICMP error"))

    def close(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


class NtpClient:
    """All NTP exchanges of one scrape: a few shared sockets and one timer per deadline.

    A socket and a task per probe cost several times more CPU than the exchange itself; this
    keeps the per-probe work to one sendto, one recvfrom and the decoding.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._channels: dict[socket.AddressFamily, _Channel] = {}
        self._timers: dict[float, list[tuple[_Channel, _Probe]]] = {}
        self._handles: list[asyncio.TimerHandle] = []
        self._retired: list[_Channel] = []
        self._entropy = b""
        self._entropy_used = 0
        self._closed = False

    def _nonce(self) -> bytes:
        # A random transmit timestamp is the nonce a genuine reply must echo (RFC 5905 §9.1);
        # one getrandom() call serves 512 probes.
        if self._entropy_used >= len(self._entropy):
            self._entropy, self._entropy_used = os.urandom(4096), 0
        start = self._entropy_used
        self._entropy_used += 8
        return self._entropy[start : start + 8]

    async def query(self, address: str, port: int, deadline: float) -> NtpReading:
        """Ask ``address:port`` for the time; give up at ``deadline`` (event-loop time).

        Raises :class:`CheckError` with reason timeout, refused, unreachable, protocol_error
        (only malformed or non-matching replies arrived) or kiss_of_death.
        """
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        channel = self._channels.get(family)
        if self._closed:
            raise CheckError("error", "NTP client used after the scrape ended")
        if channel is None or channel.assigned >= channel.capacity:
            if channel is not None:
                self._retired.append(channel)
            channel = self._channels[family] = _Channel(self._loop, family)
        request = build_request(self._nonce())
        probe = _Probe((address, port), request, self._loop.create_future())
        waiting = self._timers.get(deadline)
        if waiting is None:
            waiting = self._timers[deadline] = []
            self._handles.append(self._loop.call_at(deadline, self._expire, deadline))
        waiting.append((channel, probe))
        channel.send(probe)
        return await probe.future

    def _expire(self, deadline: float) -> None:
        for channel, probe in self._timers.pop(deadline, ()):
            if not probe.future.done():
                channel.expire(probe)

    def close(self) -> None:
        self._closed = True
        for handle in self._handles:
            handle.cancel()
        for channel in (*self._channels.values(), *self._retired):
            channel.close()
        self._channels.clear()


async def ntp_query(address: str, port: int, deadline: float) -> NtpReading:
    """One NTP exchange on its own client; the scrape shares one client among all servers."""
    client = NtpClient()
    try:
        return await client.query(address, port, deadline)
    finally:
        client.close()


async def check_clock(ctx: CheckContext, target: Server, settings: ClockCheck) -> NtpResult:
    address = target.address or await ctx.resolver.address(target)
    client = ctx.shared.get(NtpClient, NtpClient)
    reading = await client.query(address, target.port("ntp", settings.ntp_port), ctx.deadline)
    clock = ClockReading(target, "ntp", reading.offset, reading.uncertainty)
    return NtpResult(reading, (clock,))


@dataclass(frozen=True, slots=True)
class SkewPair:
    exchange: ClockReading
    domain_controller: ClockReading

    @property
    def skew(self) -> float:
        return abs(self.exchange.offset - self.domain_controller.offset)

    @property
    def uncertainty(self) -> float:
        return self.exchange.uncertainty + self.domain_controller.uncertainty


def best_readings(
    readings: Iterable[ClockReading], sources: Sequence[str]
) -> dict[str, ClockReading]:
    """Per server, the reading with the smallest uncertainty among the enabled sources."""
    best: dict[str, ClockReading] = {}
    for reading in readings:
        if reading.source not in sources:
            continue
        current = best.get(reading.server.name)
        if current is None or reading.uncertainty < current.uncertainty:
            best[reading.server.name] = reading
    return best


def skew_pairs(readings: Iterable[ClockReading], sources: Sequence[str]) -> list[SkewPair]:
    """Every (Exchange server, domain controller) pair where both clocks were read."""
    best = best_readings(readings, sources).values()
    exchange = [r for r in best if r.server.role is Role.EXCHANGE]
    dcs = [r for r in best if r.server.role is Role.DOMAIN_CONTROLLER]
    return [SkewPair(e, d) for e in exchange for d in dcs]


def _ntp_metrics(runs: Sequence[CheckRun[NtpResult]], settings: ClockCheck) -> Iterator[Metric]:
    labels = ["server", "role"]
    up = GaugeMetricFamily(
        "exchange_auth_ntp_up",
        "1 when the server answered an NTP request with a usable reply.",
        labels=labels,
    )
    failure = GaugeMetricFamily(
        "exchange_auth_ntp_failure",
        "1 for the reason the last NTP request got no usable reply: timeout, refused, "
        "unreachable, dns, protocol_error, kiss_of_death or error.",
        labels=[*labels, "reason"],
    )
    stratum = GaugeMetricFamily(
        "exchange_auth_ntp_stratum",
        "Stratum from the server's NTP reply; 0 or 16 means unsynchronised.",
        labels=labels,
    )
    leap = GaugeMetricFamily(
        "exchange_auth_ntp_leap",
        "Leap indicator from the server's NTP reply; 3 means unsynchronised.",
        labels=labels,
    )
    for run in runs:
        values = [run.server.name, run.server.role.value]
        if isinstance(run.outcome, Failure):
            up.add_metric(values, 0)
            failure.add_metric([*values, run.outcome.reason], 1)
        else:
            up.add_metric(values, 1)
            stratum.add_metric(values, run.outcome.reading.stratum)
            leap.add_metric(values, run.outcome.reading.leap)
    yield from (up, failure, stratum, leap)


def clock_metrics(readings: Sequence[ClockReading], settings: Settings) -> Iterator[Metric]:
    """Offsets of every source and skew of every pair; called once per scrape by the collector."""
    clock = settings.checks.clock
    offset = GaugeMetricFamily(
        "exchange_auth_clock_offset_seconds",
        "Server clock minus exporter clock, per source. Kerberos, SMTP and LDAP readings are "
        "unauthenticated; absent when the source gave no reading.",
        labels=["server", "role", "source"],
    )
    uncertainty = GaugeMetricFamily(
        "exchange_auth_clock_uncertainty_seconds",
        "Uncertainty of the offset reading: half the round trip plus the source's resolution.",
        labels=["server", "role", "source"],
    )
    for reading in readings:
        values = [reading.server.name, reading.server.role.value, reading.source]
        offset.add_metric(values, reading.offset)
        uncertainty.add_metric(values, reading.uncertainty)
    yield offset
    yield uncertainty

    skew = GaugeMetricFamily(
        "exchange_auth_clock_skew_seconds",
        "Absolute clock difference between an Exchange server and a domain controller, from each "
        "server's most precise reading. Kerberos fails above the realm's tolerance (5m by default).",
        labels=["exchange_server", "domain_controller"],
    )
    skew_uncertainty = GaugeMetricFamily(
        "exchange_auth_clock_skew_uncertainty_seconds",
        "Sum of the uncertainties of the two readings behind exchange_auth_clock_skew_seconds.",
        labels=["exchange_server", "domain_controller"],
    )
    for pair in skew_pairs(readings, clock.sources):
        values = [pair.exchange.server.name, pair.domain_controller.server.name]
        skew.add_metric(values, pair.skew)
        skew_uncertainty.add_metric(values, pair.uncertainty)
    yield skew
    yield skew_uncertainty
    yield GaugeMetricFamily(
        "exchange_auth_clock_max_skew_seconds",
        "The configured Kerberos clock tolerance (checks.clock.max_skew).",
        value=clock.max_skew,
    )


SPEC: CheckSpec[ClockCheck, NtpResult] = CheckSpec(
    name="clock",
    run=check_clock,
    settings=lambda s: s.checks.clock,
    enabled=lambda c: c.enabled and "ntp" in c.sources,
    applies_to=lambda server, c: True,
    timeout=lambda c: c.timeout,
    emit=_ntp_metrics,
)
