"""A service ticket to each Exchange server's SPNs through each DC's KDC: what Exchange itself asks.

Before one Exchange server sends mail to another with ``X-EXPS GSSAPI``, it asks a KDC for a
ticket to ``SMTPSVC/<target fqdn>``. A missing or duplicated SPN, an account without usable
keys, encryption types that do not match or clocks apart make the KDC refuse right there, with
the error Exchange logs (event 2017, "Outbound authentication failed with error
KdcUnknownEncryptionType ... The target is SMTPSVC/<fqdn>"). This check asks the same question,
every scrape, with the exporter's own account: the LDAP bind account's password, or a keytab.

Each DC gets a worker process of its own (exporter/kdc_workers.py, exporter/krb5_worker.py)
whose krb5.conf names that DC as the only KDC, so every DC is asked on its own. Tickets are
never cached: each request is a TGS exchange with the KDC. The reason for a refusal comes from
the Kerberos error number, never from message text.

A ticket that failed before the target was asked (``phase`` ``tgt``: the exporter's own TGT)
says nothing about the target's SPNs or keys: its reason is ``no_credentials`` (the KDC's error
number stays in ``_error_code``, and ``exchange_auth_kerberos_credentials_failure`` names it),
except for what is about the DC or the exporter's secret itself: ``preauth_failed``, ``skew``,
``kdc_unreachable`` and ``timeout`` stay.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from ..config import ServiceTicketsCheck, Settings
from ..kdc_workers import KdcWorker, WorkerGone, WorkerSpec, worker_for
from ..protocols.krb5_errors import REASONS
from ..servers import Role, Server
from .base import CheckContext, CheckError, CheckRun, CheckSpec, Failure

__all__ = [
    "SPEC",
    "CredentialsResult",
    "ServiceTicketsResult",
    "TicketResult",
    "check_service_tickets",
    "principal_for",
]

_MAX_DETAIL = 300


@dataclass(frozen=True, slots=True)
class TicketResult:
    domain_controller: str  # the DC's inventory name
    spn: str  # as requested, e.g. SMTPSVC/exch1.corp.example.test
    ok: bool
    reason: str = ""  # one of protocols.krb5_errors.REASONS when not ok
    code: int | None = None  # the krb5 error number (7 = server not found, 14, 37, ...)
    detail: str = ""
    duration: float = 0.0  # the TGS exchange (and the AP-REQ built from it), seconds
    # tgs: the KDC answered about the SPN; tgt: the exporter's own TGT failed first (the SPN
    # was not asked); address: the DC's address could not be found.
    phase: str = "tgs"


@dataclass(frozen=True, slots=True)
class CredentialsResult:
    """The exporter's own TGT from one DC, as that DC's worker last reported it."""

    domain_controller: str
    ok: bool
    reason: str = ""
    code: int | None = None
    detail: str = ""
    expires: float | None = None  # Unix time the TGT ends


@dataclass(frozen=True, slots=True)
class ServiceTicketsResult:
    tickets: tuple[TicketResult, ...]
    credentials: tuple[CredentialsResult, ...]


def principal_for(settings: Settings, check: ServiceTicketsCheck) -> str | None:
    """The exporter's Kerberos principal: ``principal``, else ``ldap.user``, in the realm."""
    realm = settings.realm
    if check.principal:
        return check.principal if "@" in check.principal else f"{check.principal}@{realm}"
    user = settings.ldap.user if settings.ldap is not None else None
    if not user or "=" in user:  # none, or a DN: nothing to derive a principal from
        return None
    if "\\" in user:  # CORP\user
        user = user.split("\\", 1)[1]
    # A UPN (user@corp.example.com): the account name in the realm. Where the UPN's name part
    # differs from the sAMAccountName, set checks.service_tickets.principal.
    local = user.rsplit("@", 1)[0]
    return f"{local}@{realm}" if local else None


def applies_to(server: Server, check: ServiceTicketsCheck) -> bool:
    # Edge Transport servers are not domain members: nobody asks a KDC for their tickets.
    return server.role is Role.EXCHANGE and not (server.exchange and server.exchange.edge)


def _credentials_problem(settings: Settings, check: ServiceTicketsCheck) -> str | None:
    if principal_for(settings, check) is None:
        return (
            "no Kerberos principal: set ldap.user (a UPN or DOMAIN\\user) or "
            "checks.service_tickets.principal"
        )
    if check.keytab is None and (settings.ldap is None or settings.ldap.password is None):
        return "no secret: set ldap's password or checks.service_tickets.keytab_file"
    return None


def _spec_for(
    settings: Settings, check: ServiceTicketsCheck, dc: Server, address: str
) -> WorkerSpec:
    principal = principal_for(settings, check)
    assert principal is not None
    password = None
    if check.keytab is None and settings.ldap is not None:
        password = settings.ldap.password
    return WorkerSpec(
        domain_controller=dc.name,
        address=address,
        port=dc.port("kerberos", 88),
        realm=settings.realm,
        principal=principal,
        password=password,
        keytab=check.keytab,
        encryption_types=tuple(check.encryption_types),
        ticket_lifetime=check.ticket_lifetime,
        threads=check.max_concurrency,
        request_timeout=check.timeout,
    )


def _credentials_of(dc: str, worker: KdcWorker | None) -> CredentialsResult:
    state: dict[str, Any] | None = worker.credentials if worker is not None else None
    if state is None:
        return CredentialsResult(dc, False, "no_credentials", None, "no answer from the KDC yet")
    return CredentialsResult(
        dc,
        bool(state.get("ok")),
        str(state.get("reason") or ""),
        _int_or_none(state.get("code")),
        str(state.get("detail") or "")[:_MAX_DETAIL],
        _float_or_none(state.get("expires")),
    )


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# What a failure of the exporter's own TGT may still be reported as: about its secret, or about
# the DC (its port, its clock) rather than the target's account.
_TGT_REASONS = frozenset({"preauth_failed", "skew", "kdc_unreachable", "timeout", "no_credentials"})


def _ticket_of(dc: str, spn: str, answer: dict[str, Any]) -> TicketResult:
    duration = _float_or_none(answer.get("duration")) or 0.0
    if answer.get("ok") is True:
        return TicketResult(dc, spn, True, duration=duration)
    reason = str(answer.get("reason") or "other")
    if reason not in REASONS:
        reason = "other"
    phase = "tgt" if answer.get("phase") == "tgt" else "tgs"
    if phase == "tgt" and reason not in _TGT_REASONS:
        reason = "no_credentials"  # e.g. etype_nosupp: our account's keys, not the target's
    return TicketResult(
        dc,
        spn,
        False,
        reason,
        _int_or_none(answer.get("code")),
        str(answer.get("detail") or "")[:_MAX_DETAIL],
        duration,
        phase,
    )


async def check_service_tickets(
    ctx: CheckContext, target: Server, settings: ServiceTicketsCheck
) -> ServiceTicketsResult:
    loop = asyncio.get_running_loop()
    dcs = [s for s in ctx.servers if s.role is Role.DOMAIN_CONTROLLER]
    if not dcs:
        raise CheckError("no_domain_controllers", "the inventory lists no domain controller")
    spns = [f"{service}/{target.name}" for service in settings.service_classes]
    problem = _credentials_problem(ctx.settings, settings)
    if problem is not None:
        return ServiceTicketsResult(
            tuple(
                TicketResult(dc.name, spn, False, "no_credentials", detail=problem, phase="tgt")
                for dc in dcs
                for spn in spns
            ),
            tuple(
                CredentialsResult(dc.name, False, "no_credentials", detail=problem) for dc in dcs
            ),
        )

    async def through(dc: Server) -> tuple[list[TicketResult], CredentialsResult]:
        try:
            address = dc.address or await ctx.resolver.address(dc)
        except CheckError as exc:
            failed = [
                TicketResult(
                    dc.name, spn, False, "kdc_unreachable", detail=exc.detail, phase="address"
                )
                for spn in spns
            ]
            return failed, CredentialsResult(dc.name, False, "kdc_unreachable", detail=exc.detail)
        try:
            worker = await asyncio.to_thread(
                worker_for, _spec_for(ctx.settings, settings, dc, address)
            )
        except OSError as exc:
            detail = f"cannot start the Kerberos worker: {exc.strerror or exc}"
            return (
                [
                    TicketResult(dc.name, spn, False, "other", detail=detail, phase="tgt")
                    for spn in spns
                ],
                CredentialsResult(dc.name, False, "other", detail=detail),
            )
        # The deadline is event-loop time, which is time.monotonic(): Linux shares that clock
        # between processes, so the worker can drop requests that waited past it.
        futures = [worker.request(spn, ctx.settings.realm, ctx.deadline) for spn in spns]
        waiting = [asyncio.wrap_future(future) for future in futures]
        await asyncio.wait(waiting, timeout=max(0.0, ctx.deadline - loop.time()))
        tickets = []
        for spn, future, awaited in zip(spns, futures, waiting, strict=True):
            if not awaited.done():
                awaited.cancel()
                worker.forget(future)
                tickets.append(
                    TicketResult(
                        dc.name, spn, False, "timeout", detail="no answer from the KDC in time"
                    )
                )
                continue
            try:
                answer = awaited.result()
            except (WorkerGone, concurrent.futures.CancelledError) as exc:
                tickets.append(TicketResult(dc.name, spn, False, "other", detail=str(exc)))
                continue
            tickets.append(_ticket_of(dc.name, spn, answer))
        return tickets, _credentials_of(dc.name, worker)

    per_dc = await asyncio.gather(*(through(dc) for dc in dcs))
    return ServiceTicketsResult(
        tuple(ticket for tickets, _ in per_dc for ticket in tickets),
        tuple(credentials for _, credentials in per_dc),
    )


def _metrics(
    runs: Sequence[CheckRun[ServiceTicketsResult]], settings: ServiceTicketsCheck
) -> Iterator[Metric]:
    labels = ["server", "spn", "domain_controller"]
    ok = GaugeMetricFamily(
        "exchange_auth_service_ticket_ok",
        "1 when the domain controller's KDC issued a service ticket to the SPN (what Exchange asks "
        "before X-EXPS GSSAPI); asked afresh every scrape.",
        labels=labels,
    )
    failure = GaugeMetricFamily(
        "exchange_auth_service_ticket_failure",
        "1 for the reason the KDC issued no ticket: principal_unknown (SPN missing or duplicated), "
        "etype_nosupp (no usable keys or encryption types), skew, kdc_unreachable, preauth_failed "
        "(the exporter's own credentials), no_credentials (the exporter's own TGT failed: see "
        "exchange_auth_kerberos_credentials_failure), timeout or other.",
        labels=[*labels, "reason"],
    )
    duration = GaugeMetricFamily(
        "exchange_auth_service_ticket_duration_seconds",
        "How long the ticket request to the KDC took (successful or not).",
        labels=labels,
    )
    error_code = GaugeMetricFamily(
        "exchange_auth_service_ticket_error_code",
        "The Kerberos error number of a refused request (7 = server not found in the database, "
        "14 = encryption type not supported, 37 = clock skew; above 127: the client library's).",
        labels=labels,
    )
    cred_labels = ["domain_controller"]
    cred_ok = GaugeMetricFamily(
        "exchange_auth_kerberos_credentials_ok",
        "1 when the exporter's last attempt to get or renew its TGT from the domain controller's "
        "KDC succeeded (its own account, password or keytab; held in memory only).",
        labels=cred_labels,
    )
    cred_failure = GaugeMetricFamily(
        "exchange_auth_kerberos_credentials_failure",
        "1 for the reason the last attempt to get or renew the TGT failed (same reasons as "
        "exchange_auth_service_ticket_failure).",
        labels=[*cred_labels, "reason"],
    )
    cred_expiry = GaugeMetricFamily(
        "exchange_auth_kerberos_credentials_expiry_timestamp_seconds",
        "When the exporter's TGT from the domain controller ends (Unix time); it is renewed at "
        "half its lifetime.",
        labels=cred_labels,
    )
    # The DCs of this scrape, for servers whose whole run failed (e.g. the scrape's deadline).
    dc_names = sorted(
        {
            t.domain_controller
            for r in runs
            if not isinstance(r.outcome, Failure)
            for t in r.outcome.tickets
        }
    )
    credentials: dict[str, CredentialsResult] = {}
    for run in runs:
        if isinstance(run.outcome, Failure):
            for dc in dc_names:
                for service in settings.service_classes:
                    values = [run.server.name, f"{service}/{run.server.name}", dc]
                    ok.add_metric(values, 0)
                    failure.add_metric([*values, run.outcome.reason], 1)
            continue
        for ticket in run.outcome.tickets:
            values = [run.server.name, ticket.spn, ticket.domain_controller]
            ok.add_metric(values, 1 if ticket.ok else 0)
            if ticket.ok or ticket.duration > 0:
                duration.add_metric(values, ticket.duration)
            if not ticket.ok:
                failure.add_metric([*values, ticket.reason], 1)
                if ticket.code is not None:
                    error_code.add_metric(values, ticket.code)
        for cred in run.outcome.credentials:
            credentials[cred.domain_controller] = cred
    for name, cred in sorted(credentials.items()):
        cred_ok.add_metric([name], 1 if cred.ok else 0)
        if not cred.ok:
            cred_failure.add_metric([name, cred.reason or "other"], 1)
        if cred.expires is not None:
            cred_expiry.add_metric([name], cred.expires)
    yield from (ok, failure, duration, error_code, cred_ok, cred_failure, cred_expiry)


SPEC: CheckSpec[ServiceTicketsCheck, ServiceTicketsResult] = CheckSpec(
    name="service_tickets",
    run=check_service_tickets,
    settings=lambda s: s.checks.service_tickets,
    enabled=lambda c: c.active,
    applies_to=applies_to,
    timeout=lambda c: c.timeout,
    emit=_metrics,
)
