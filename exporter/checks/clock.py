"""Clock offsets over NTP, and the skew between each Exchange server and each domain controller.

The NTP probe is a bare non-blocking UDP socket driven by the event loop's reader callback:
no thread, no transport object, one connected socket per probe so ICMP port-unreachable
comes back as "refused". Skew pairs take every :class:`ClockReading` of the scrape, from any
check, so later clock sources (Kerberos, SMTP banner, LDAP) need no change here.
"""

from __future__ import annotations

import asyncio
import errno
import secrets
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric

from ..config import ClockCheck, Settings
from ..inventory import Role, Server
from ..protocols.ntp import NtpReading, NtpReplyError, build_request, parse_reply
from .base import CheckContext, CheckError, CheckRun, CheckSpec, ClockReading, Failure

__all__ = ["SPEC", "NtpResult", "check_clock", "clock_metrics", "ntp_query", "skew_pairs"]

_UNREACHABLE = {
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EADDRNOTAVAIL,
    errno.EACCES,
    errno.EPERM,
}
_RECV_SIZE = 1024


@dataclass(frozen=True, slots=True)
class NtpResult:
    reading: NtpReading
    clock_readings: tuple[ClockReading, ...]


class _NtpExchange:
    """One request and the wait for the reply that echoes it."""

    __slots__ = ("bad_reply", "future", "request", "sent_at", "sock")

    def __init__(
        self, sock: socket.socket, request: bytes, future: asyncio.Future[NtpReading]
    ) -> None:
        self.sock = sock
        self.request = request
        self.future = future
        self.sent_at = 0.0
        self.bad_reply: NtpReplyError | None = None

    def on_readable(self) -> None:
        # Drain everything queued: a forged or stale datagram must not hide the real reply.
        while not self.future.done():
            try:
                data = self.sock.recv(_RECV_SIZE)
            except BlockingIOError:
                return
            except ConnectionRefusedError:
                self.future.set_exception(
                    CheckError("refused", "NTP port closed (ICMP port unreachable)")
                )
                return
            except OSError as exc:
                self.future.set_exception(_os_failure(exc))
                return
            received_at = time.time()
            try:
                self.future.set_result(parse_reply(data, self.request, self.sent_at, received_at))
            except NtpReplyError as exc:
                self.bad_reply = exc
            except Exception as exc:  # a peer's bytes must never break the scrape
                self.bad_reply = NtpReplyError("protocol_error", f"undecodable reply: {exc!r}")


def _os_failure(exc: OSError) -> CheckError:
    if exc.errno in _UNREACHABLE:
        return CheckError("unreachable", f"{exc.strerror}")
    if exc.errno == errno.ECONNREFUSED:
        return CheckError("refused", "NTP port closed (ICMP port unreachable)")
    return CheckError("unreachable", f"socket error: {exc.strerror or exc}")


async def ntp_query(address: str, port: int, deadline: float) -> NtpReading:
    """Ask ``address:port`` for the time; give up at ``deadline`` (event-loop time).

    Raises :class:`CheckError` with reason timeout, refused, unreachable, protocol_error
    (only malformed or non-matching replies arrived) or kiss_of_death.
    """
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    registered = False
    try:
        sock.setblocking(False)
        # A random transmit timestamp is the nonce a genuine reply must echo (RFC 5905 §9.1).
        request = build_request(int.from_bytes(secrets.token_bytes(8), "big"))
        exchange = _NtpExchange(sock, request, loop.create_future())
        try:
            sock.connect((address, port))
            loop.add_reader(sock.fileno(), exchange.on_readable)
            registered = True
            exchange.sent_at = time.time()
            sock.send(request)
        except OSError as exc:
            raise _os_failure(exc) from None
        try:
            async with asyncio.timeout_at(deadline):
                return await exchange.future
        except TimeoutError:
            if exchange.bad_reply is not None:
                bad = exchange.bad_reply
                raise CheckError(bad.reason, str(bad)) from None
            raise CheckError("timeout", "no NTP reply before the deadline") from None
    finally:
        if registered:
            loop.remove_reader(sock.fileno())
        sock.close()


async def check_clock(ctx: CheckContext, target: Server, settings: ClockCheck) -> NtpResult:
    address = await ctx.resolver.address(target)
    reading = await ntp_query(address, target.port("ntp", settings.ntp_port), ctx.deadline)
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
