"""Each domain controller's clock from its rootDSE ``currentTime``, read anonymously over LDAP.

``currentTime`` has whole seconds, so the reading is taken at the middle of its second and is
worth about a second; it matters where a DC serves neither NTP nor a reachable KDC.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily, Metric

from ..config import Settings
from ..ldap import LdapError, LdapTarget, client_for, run_in_ldap_thread
from ..servers import Role, Server
from .base import CheckContext, CheckError, CheckRun, CheckSpec, ClockReading, Failure

__all__ = ["SPEC", "LdapClockResult", "check_ldap_clock", "parse_generalized_time"]

WHOLE_SECOND_UNCERTAINTY = 1.0


@dataclass(frozen=True, slots=True)
class LdapClockResult:
    rtt: float
    clock_readings: tuple[ClockReading, ...]


def parse_generalized_time(text: str) -> float:
    """``20261129111100.0Z`` (GeneralizedTime as AD writes it) to Unix seconds."""
    value = text.strip()
    if not value.endswith("Z"):
        raise ValueError(f"currentTime {text!r} is not in UTC")
    whole, _, fraction = value[:-1].partition(".")
    if len(whole) != 14 or not whole.isdigit():
        raise ValueError(f"currentTime {text!r} is not YYYYMMDDHHMMSS")
    moment = datetime.strptime(whole, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    return moment.timestamp() + (float(f"0.{fraction}") if fraction.isdigit() else 0.0)


async def check_ldap_clock(
    ctx: CheckContext, target: Server, settings: Settings
) -> LdapClockResult:
    ldap = settings.ldap
    if ldap is None:
        raise CheckError("error", "no ldap section configured")
    address = target.address or await ctx.resolver.address(target)
    # The configured scheme and port, at this DC, with no credentials: the rootDSE is public.
    client = client_for(LdapTarget.from_settings(ldap, anonymous=True).with_host(address))
    remaining = max(0.0, ctx.deadline - asyncio.get_running_loop().time())
    deadline = time.monotonic() + remaining

    def read() -> tuple[float, str | None, float]:
        sent = time.time()
        entry = client.root_dse(["currentTime"], deadline)
        return sent, entry.first("currentTime"), time.time()

    try:
        sent, current, received = await run_in_ldap_thread(read)
    except LdapError as exc:
        raise CheckError(exc.reason, exc.detail) from None
    if current is None:
        raise CheckError("protocol_error", "rootDSE has no currentTime")
    try:
        server_time = parse_generalized_time(current) + 0.5  # the middle of the reported second
    except ValueError as exc:
        raise CheckError("protocol_error", str(exc)) from None
    rtt = received - sent
    offset = server_time - (sent + received) / 2
    reading = ClockReading(target, "ldap", offset, WHOLE_SECOND_UNCERTAINTY + rtt / 2)
    return LdapClockResult(rtt, (reading,))


def _metrics(runs: Sequence[CheckRun[LdapClockResult]], settings: Settings) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "exchange_auth_ldap_up",
        "1 when the DC's rootDSE was read over LDAP (anonymously, with the configured scheme and port).",
        labels=["server"],
    )
    failure = GaugeMetricFamily(
        "exchange_auth_ldap_failure",
        "1 for the reason the rootDSE read failed: timeout, unreachable, tls_failed, dns, "
        "protocol_error, search_failed or error.",
        labels=["server", "reason"],
    )
    for run in runs:
        if isinstance(run.outcome, Failure):
            up.add_metric([run.server.name], 0)
            failure.add_metric([run.server.name, run.outcome.reason], 1)
        else:
            up.add_metric([run.server.name], 1)
    yield up
    yield failure


def _enabled(settings: Settings) -> bool:
    clock = settings.checks.clock
    return settings.ldap is not None and clock.enabled and "ldap" in clock.sources


SPEC: CheckSpec[Settings, LdapClockResult] = CheckSpec(
    name="ldap_clock",
    run=check_ldap_clock,
    settings=lambda s: s,
    enabled=_enabled,
    applies_to=lambda server, s: server.role is Role.DOMAIN_CONTROLLER,
    timeout=lambda s: s.checks.clock.timeout,
    emit=_metrics,
)
