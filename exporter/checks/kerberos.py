"""Kerberos reachability of each domain controller: 88 and 464 over UDP and TCP, real messages.

Port 88 gets an AS-REQ for a random client, port 464 a framed kpasswd request with a junk
AP-REQ; either way a KDC answers with a KRB-ERROR, so no credentials are needed. A TCP connect
says nothing about UDP and an open port nothing about a KDC behind it: a port is up only when
a Kerberos reply was parsed. The KRB-ERROR's ``stime``/``susec`` also read the DC's clock.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric

from ..config import KerberosCheck
from ..protocols.krb5 import (
    KerberosReply,
    KerberosReplyError,
    build_as_req,
    build_kpasswd_request,
    frame_tcp,
    parse_kdc_reply,
    parse_kpasswd_reply,
)
from ..servers import Role, Server
from .base import CheckContext, CheckError, CheckRun, CheckSpec, ClockReading, Failure
from .net import Exchange, tcp_exchange, udp_exchange

__all__ = ["SPEC", "KerberosResult", "PortResult", "check_kerberos"]

KDC_PORT = 88
KPASSWD_PORT = 464
# KRB-ERROR stime has whole seconds; without susec the reading is that coarse.
_NO_MICROSECONDS_UNCERTAINTY = 1.0


@dataclass(frozen=True, slots=True)
class PortResult:
    port: int  # the service port (88 or 464), the `port` label, whatever port was dialled
    transport: str  # udp or tcp
    reply: KerberosReply | None = None
    rtt: float = 0.0
    clock_offset: float | None = None  # the service's clock minus ours, when it sent stime
    reason: str = ""
    detail: str = ""

    @property
    def up(self) -> bool:
        return self.reply is not None


@dataclass(frozen=True, slots=True)
class KerberosResult:
    ports: tuple[PortResult, ...]
    clock_readings: tuple[ClockReading, ...]


def parse_port_spec(spec: str) -> tuple[int, str]:
    port, transport = spec.split("/")
    return int(port), transport


class _Requests:
    """The scrape's requests, encoded once: pyasn1 takes longer to encode one than to send it.

    Every KDC of one scrape is asked about the same random client; the next scrape picks another.
    """

    def __init__(self, realm: str) -> None:
        client = f"exchange-auth-probe-{secrets.token_hex(6)}"
        self.as_req = build_as_req(realm, client, secrets.randbits(31))
        self.kpasswd = build_kpasswd_request()

    def close(self) -> None:
        pass


async def _probe(
    ctx: CheckContext, address: str, target: Server, port: int, transport: str
) -> PortResult:
    realm = ctx.settings.realm
    requests = ctx.shared.get(_Requests, lambda: _Requests(realm))
    if port == KDC_PORT:
        request = requests.as_req
        parse = parse_kdc_reply
        dialled = target.port("kerberos", KDC_PORT)
    else:
        request = requests.kpasswd
        parse = parse_kpasswd_reply
        dialled = target.port("kpasswd", KPASSWD_PORT)
    exchange: Exchange
    try:
        if transport == "udp":
            exchange = await udp_exchange(address, dialled, request, None)
        else:
            exchange = await tcp_exchange(address, dialled, frame_tcp(request), None)
        reply = parse(exchange.reply)
    except CheckError as exc:
        return PortResult(port, transport, reason=exc.reason, detail=exc.detail)
    except KerberosReplyError as exc:
        return PortResult(port, transport, reason=exc.reason, detail=str(exc))
    offset = None
    if reply.server_time is not None:
        offset = reply.server_time - (exchange.sent_at + exchange.received_at) / 2
    return PortResult(port, transport, reply, exchange.rtt, offset)


def _inconclusive(results: list[PortResult]) -> list[PortResult]:
    # kpasswd over UDP is often filtered or unanswered where TCP works (and Windows' answer to a
    # junk request is unconfirmed): a UDP timeout beside a live 464/tcp is not "down".
    tcp_up = any(r.up for r in results if (r.port, r.transport) == (KPASSWD_PORT, "tcp"))
    return [
        PortResult(
            r.port, r.transport, reason="inconclusive", detail=r.detail + "; 464/tcp answers"
        )
        if tcp_up and (r.port, r.transport, r.reason) == (KPASSWD_PORT, "udp", "timeout")
        else r
        for r in results
    ]


def _clock(target: Server, results: Sequence[PortResult]) -> tuple[ClockReading, ...]:
    """The most precise of the KDC's clock readings (RFC 4120 gives no better source)."""
    readings = [
        ClockReading(
            target,
            "kerberos",
            r.clock_offset,
            r.rtt / 2 + (0.0 if r.reply.has_microseconds else _NO_MICROSECONDS_UNCERTAINTY),
        )
        for r in results
        if r.reply is not None and r.clock_offset is not None
    ]
    return (min(readings, key=lambda r: r.uncertainty),) if readings else ()


async def check_kerberos(
    ctx: CheckContext, target: Server, settings: KerberosCheck
) -> KerberosResult:
    address = target.address or await ctx.resolver.address(target)
    specs = [parse_port_spec(p) for p in settings.ports]
    probes = [asyncio.create_task(_probe(ctx, address, target, port, tr)) for port, tr in specs]
    # One timer for the server's probes, not one per probe: the exchanges themselves are unbounded.
    await asyncio.wait(probes, timeout=max(0.0, ctx.deadline - asyncio.get_running_loop().time()))
    results = []
    for (port, transport), probe in zip(specs, probes, strict=True):
        if probe.done():
            results.append(probe.result())
        else:
            probe.cancel()
            results.append(
                PortResult(port, transport, reason="timeout", detail="no reply before the deadline")
            )
    results = _inconclusive(results)
    return KerberosResult(tuple(results), _clock(target, results))


def _metrics(runs: Sequence[CheckRun[KerberosResult]], settings: KerberosCheck) -> Iterator[Metric]:
    labels = ["server", "port", "transport"]
    up = GaugeMetricFamily(
        "exchange_auth_kerberos_port_up",
        "1 when a Kerberos (88) or kpasswd (464) reply was parsed from the port; a TCP connect alone "
        "is not enough.",
        labels=labels,
    )
    rtt = GaugeMetricFamily(
        "exchange_auth_kerberos_port_rtt_seconds",
        "From sending the request to the parsed reply.",
        labels=labels,
    )
    failure = GaugeMetricFamily(
        "exchange_auth_kerberos_port_failure",
        "1 for the reason the port gave no Kerberos reply: timeout, refused, unreachable, dns, "
        "protocol_error, inconclusive (464/udp silent while 464/tcp answers) or error.",
        labels=[*labels, "reason"],
    )
    error_code = GaugeMetricFamily(
        "exchange_auth_kerberos_error_code",
        "Error code of the KRB-ERROR the port answered with (6 = client unknown is the expected "
        "answer to the probe; 68 = wrong realm).",
        labels=labels,
    )
    configured = [parse_port_spec(p) for p in settings.ports]
    for run in runs:
        if isinstance(run.outcome, Failure):
            # The whole check failed (e.g. dns): every configured port still gets its series.
            for port, transport in configured:
                values = [run.server.name, str(port), transport]
                up.add_metric(values, 0)
                failure.add_metric([*values, run.outcome.reason], 1)
            continue
        for result in run.outcome.ports:
            values = [run.server.name, str(result.port), result.transport]
            up.add_metric(values, 1 if result.up else 0)
            if result.reply is None:
                failure.add_metric([*values, result.reason], 1)
                continue
            rtt.add_metric(values, result.rtt)
            if result.reply.error_code is not None:
                error_code.add_metric(values, result.reply.error_code)
    yield from (up, rtt, failure, error_code)


SPEC: CheckSpec[KerberosCheck, KerberosResult] = CheckSpec(
    name="kerberos",
    run=check_kerberos,
    settings=lambda s: s.checks.kerberos,
    enabled=lambda c: c.enabled,
    applies_to=lambda server, c: server.role is Role.DOMAIN_CONTROLLER,
    timeout=lambda c: c.timeout,
    emit=_metrics,
)
