"""Each Exchange server's SMTP ports: banner (and the clock in it), EHLO keywords, polite QUIT.

Never sends mail and never authenticates. ``X-EXPS GSSAPI`` in the EHLO reply means the
receive connector offers ExchangeServer authentication, the Kerberos exchange that fails with
454 4.7.0. Reads are bounded in size and time: a peer that sends no banner, or 10 MB without a
newline, costs a reason, never a hang or the memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric

from ..config import SmtpCheck
from ..protocols.smtp import Reply, SmtpReplyError, banner_time, ehlo_keywords, parse_reply_line
from ..servers import Role, Server
from .base import CheckContext, CheckError, CheckRun, CheckSpec, ClockReading, Failure
from .net import os_error

__all__ = ["SPEC", "PortResult", "SmtpResult", "check_smtp", "probe_port"]

MAX_LINE = 4096  # RFC 5321 allows 512 per reply line; Exchange stays well below
MAX_LINES = 64
WHOLE_SECOND_UNCERTAINTY = 1.0
QUIT_WAIT = 0.5


@dataclass(frozen=True, slots=True)
class PortResult:
    port: int
    banner: str = ""
    keywords: tuple[tuple[str, tuple[str, ...]], ...] = ()
    rtt: float = 0.0  # connect to banner
    clock_offset: float | None = None
    clock_reason: str = ""  # why the banner gave no reading: custom_banner
    reason: str = ""
    detail: str = ""

    @property
    def up(self) -> bool:
        return not self.reason

    def offers(self, keyword: str, parameter: str | None = None) -> bool:
        for name, parameters in self.keywords:
            if name == keyword and (parameter is None or parameter in parameters):
                return True
        return False


@dataclass(frozen=True, slots=True)
class SmtpResult:
    ports: tuple[PortResult, ...]
    clock_readings: tuple[ClockReading, ...]


async def _reply(reader: asyncio.StreamReader) -> tuple[int, list[str]]:
    """One (possibly multi-line) reply: its code and each line's text."""
    lines: list[str] = []
    while len(lines) < MAX_LINES:
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            raise CheckError(
                "protocol_error", f"connection closed mid-reply after {len(exc.partial)} bytes"
            ) from None
        except asyncio.LimitOverrunError:
            raise CheckError("protocol_error", f"reply line longer than {MAX_LINE} bytes") from None
        try:
            reply: Reply = parse_reply_line(raw.decode("utf-8", "replace").rstrip("\r\n"))
        except SmtpReplyError as exc:
            raise CheckError("protocol_error", str(exc)) from None
        lines.append(reply.text)
        if reply.last:
            return reply.code, lines
    raise CheckError("protocol_error", f"reply of more than {MAX_LINES} lines")


async def probe_port(address: str, port: int, ehlo_name: str) -> PortResult:
    """Banner, EHLO, QUIT on one port; the caller bounds the time."""
    started = time.time()
    try:
        reader, writer = await asyncio.open_connection(address, port, limit=MAX_LINE)
    except OSError as exc:
        error = os_error(exc, "smtp connect")
        return PortResult(port, reason=error.reason, detail=error.detail)
    try:
        code, banner = await _reply(reader)
        received = time.time()
        if code != 220:
            return PortResult(
                port, " ".join(banner), reason="protocol_error", detail=f"banner code {code}"
            )
        writer.write(f"EHLO {ehlo_name}\r\n".encode())
        await writer.drain()
        code, lines = await _reply(reader)
        if code != 250:
            return PortResult(
                port, banner[0], reason="protocol_error", detail=f"EHLO answered {code}"
            )
        keywords = tuple(ehlo_keywords(lines).items())
        writer.write(b"QUIT\r\n")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.drain(), QUIT_WAIT)
            await asyncio.wait_for(_reply(reader), QUIT_WAIT)  # 221, out of courtesy only
    except CheckError as exc:
        return PortResult(port, reason=exc.reason, detail=exc.detail)
    except OSError as exc:
        error = os_error(exc, "smtp")
        return PortResult(port, reason=error.reason, detail=error.detail)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), QUIT_WAIT)
    reading = banner_time(banner[0])
    if reading is None:
        return PortResult(
            port, banner[0], keywords, received - started, clock_reason="custom_banner"
        )
    # The banner names the start of a second; its middle is the best guess of the moment.
    offset = reading.unix + 0.5 - (started + received) / 2
    return PortResult(port, banner[0], keywords, received - started, offset)


async def check_smtp(ctx: CheckContext, target: Server, settings: SmtpCheck) -> SmtpResult:
    address = target.address or await ctx.resolver.address(target)
    ehlo_name = settings.ehlo_name or socket.gethostname()
    probes = [asyncio.create_task(probe_port(address, p, ehlo_name)) for p in settings.ports]
    await asyncio.wait(probes, timeout=max(0.0, ctx.deadline - asyncio.get_running_loop().time()))
    results = []
    for port, probe in zip(settings.ports, probes, strict=True):
        if probe.done():
            results.append(probe.result())
        else:
            probe.cancel()
            results.append(
                PortResult(port, reason="timeout", detail="no complete answer before the deadline")
            )
    readings = [
        ClockReading(target, "smtp", r.clock_offset, WHOLE_SECOND_UNCERTAINTY + r.rtt / 2)
        for r in results
        if r.clock_offset is not None
    ]
    best = (min(readings, key=lambda r: r.uncertainty),) if readings else ()
    return SmtpResult(tuple(results), best)


def _metrics(runs: Sequence[CheckRun[SmtpResult]], settings: SmtpCheck) -> Iterator[Metric]:
    labels = ["server", "port"]
    up = GaugeMetricFamily(
        "exchange_auth_smtp_up",
        "1 when the SMTP banner and the EHLO reply were read.",
        labels=labels,
    )
    failure = GaugeMetricFamily(
        "exchange_auth_smtp_failure",
        "1 for the reason the SMTP probe failed: timeout, refused, unreachable, dns, protocol_error or error.",
        labels=[*labels, "reason"],
    )
    exps = GaugeMetricFamily(
        "exchange_auth_smtp_exchange_auth_advertised",
        "1 when EHLO offers X-EXPS GSSAPI: the receive connector takes ExchangeServer (Kerberos) "
        "authentication from other Exchange servers.",
        labels=labels,
    )
    starttls = GaugeMetricFamily(
        "exchange_auth_smtp_starttls_advertised", "1 when EHLO offers STARTTLS.", labels=labels
    )
    rtt = GaugeMetricFamily(
        "exchange_auth_smtp_banner_rtt_seconds",
        "From starting the connection to the complete banner.",
        labels=labels,
    )
    clock_up = GaugeMetricFamily(
        "exchange_auth_smtp_banner_clock_up",
        "1 when the banner carried a readable date (Exchange's default banner does); 0 for a "
        "custom banner, which gives no clock reading.",
        labels=labels,
    )
    for run in runs:
        if isinstance(run.outcome, Failure):
            for port in settings.ports:
                values = [run.server.name, str(port)]
                up.add_metric(values, 0)
                failure.add_metric([*values, run.outcome.reason], 1)
            continue
        for result in run.outcome.ports:
            values = [run.server.name, str(result.port)]
            up.add_metric(values, 1 if result.up else 0)
            if not result.up:
                failure.add_metric([*values, result.reason], 1)
                continue
            exps.add_metric(values, 1 if result.offers("X-EXPS", "GSSAPI") else 0)
            starttls.add_metric(values, 1 if result.offers("STARTTLS") else 0)
            rtt.add_metric(values, result.rtt)
            clock_up.add_metric(values, 1 if result.clock_offset is not None else 0)
    yield from (up, failure, exps, starttls, rtt, clock_up)


SPEC: CheckSpec[SmtpCheck, SmtpResult] = CheckSpec(
    name="smtp",
    run=check_smtp,
    settings=lambda s: s.checks.smtp,
    enabled=lambda c: c.enabled,
    applies_to=lambda server, c: server.role is Role.EXCHANGE,
    timeout=lambda c: c.timeout,
    emit=_metrics,
)
