"""Evidence -> which KB 979174 cause is present for each Exchange server, and what fixes it.

One pure function shared by ``/metrics``, ``diagnose`` and the status page, so they can never
disagree. Missing evidence is ``unknown`` with the reason, never ``ok``.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from .background import ScanState
from .checks.base import CheckRun, ClockReading, Failure, clock_readings_of
from .checks.clock import best_readings
from .checks.kerberos import KerberosResult
from .checks.replication import Replication
from .checks.service_tickets import ServiceTicketsResult
from .checks.smtp import SmtpResult
from .checks.spn import Account, Duplicates, ServerAccounts, expected_spns, short_name
from .config import Settings
from .inventory import Inventory
from .protocols import enctypes
from .scrape import ScrapeResult
from .servers import Server

__all__ = ["Cause", "Evidence", "State", "Ticket", "Verdict", "verdict_metrics", "verdicts"]

INTRA_ORG_PORT = 2525


class State(enum.StrEnum):
    OK = "ok"
    PROBLEM = "problem"
    UNKNOWN = "unknown"


class Cause(enum.StrEnum):
    """In the order of KB 979174's steps, then the causes beyond the KB, then the symptoms."""

    CLOCK_SKEW = "clock_skew"
    REPLICATION = "replication"
    SPN_MISSING = "spn_missing"
    SPN_DUPLICATE = "spn_duplicate"
    KERBEROS_PORTS_BLOCKED = "kerberos_ports_blocked"
    RECEIVE_CONNECTOR_AUTH = "receive_connector_auth"
    # Not in KB 979174: the account has no key of a type the KDC will encrypt a ticket with.
    KERBEROS_KEYS = "kerberos_keys"
    QUEUE_AUTH_ERRORS = "queue_auth_errors"
    LOG_AUTH_FAILURES = "log_auth_failures"


SYMPTOMS = frozenset({Cause.QUEUE_AUTH_ERRORS, Cause.LOG_AUTH_FAILURES})
BEYOND_KB = frozenset({Cause.KERBEROS_KEYS})


@dataclass(frozen=True)
class Verdict:
    server: str
    cause: Cause
    state: State
    evidence: tuple[str, ...] = ()  # a line or two an admin can act on
    reason: str = ""  # for unknown: why there is no evidence (a bounded label value)
    fix: tuple[str, ...] = ()  # commands, in order


@dataclass(frozen=True)
class Evidence:
    """Everything one verdict pass looks at."""

    settings: Settings
    inventory: Inventory
    scrape: ScrapeResult | None
    scans: Mapping[str, ScanState[Any]] = field(default_factory=dict)

    def runs(self, check: str) -> dict[str, CheckRun[Any]]:
        if self.scrape is None:
            return {}
        return {run.server.name: run for run in self.scrape.runs.get(check, [])}

    def scan(self, name: str) -> ScanState[Any] | None:
        state = self.scans.get(name)
        return state if state is not None and state.result is not None else None

    def tickets(self, server: str) -> list[Ticket] | None:
        """The service tickets asked for ``server``'s SPNs, at every DC; None when the service
        ticket check has not run at all (then there is no ticket evidence either way)."""
        by_server = self._tickets_by_server
        return None if by_server is None else by_server.get(server, [])

    @cached_property
    def _tickets_by_server(self) -> dict[str, list[Ticket]] | None:
        runs = self.runs(TICKET_CHECK)
        if not runs:
            return None
        by_server: dict[str, list[Ticket]] = {}
        for name, run in runs.items():
            if isinstance(run.outcome, Failure):
                continue  # no verdict for this server: nothing learnt from its tickets
            result: ServiceTicketsResult = run.outcome
            by_server[name] = [
                Ticket(name, t.spn, t.domain_controller, t.ok, t.reason, t.phase)
                for t in result.tickets
            ]
        return by_server


Judge = Callable[[Evidence, Server], Verdict]

TICKET_CHECK = "service_tickets"


@dataclass(frozen=True)
class Ticket:
    """One service ticket the exporter asked a DC's KDC for (exporter/checks/service_tickets.py)."""

    server: str  # the Exchange server whose SPN it is
    spn: str
    domain_controller: str  # the DC whose KDC answered (or did not)
    ok: bool
    # principal_unknown, etype_nosupp, skew, kdc_unreachable, preauth_failed, ...; "" when ok
    reason: str = ""
    # tgs: the KDC answered about the SPN; tgt: the exporter's own TGT failed (nothing about
    # the server's SPNs or keys); address: the DC's address was not found
    phase: str = "tgs"


def _refused(tickets: Sequence[Ticket], reason: str) -> dict[str, list[str]]:
    """SPN -> the DCs that refused a ticket for it with ``reason``, in a stable order. Only
    the KDCs' answers about the SPN count, never the exporter's own TGT failing."""
    by_spn: dict[str, list[str]] = {}
    for ticket in sorted(tickets, key=lambda t: (t.spn.casefold(), t.domain_controller)):
        if not ticket.ok and ticket.reason == reason and ticket.phase == "tgs":
            by_spn.setdefault(ticket.spn, []).append(ticket.domain_controller)
    return by_spn


def _dcs(tickets: Sequence[Ticket], spn: str | None = None) -> list[str]:
    """The DCs asked (for ``spn``, or for any SPN)."""
    return sorted(
        {t.domain_controller for t in tickets if spn is None or t.spn.casefold() == spn.casefold()}
    )


def _which(refusing: Sequence[str], asked: Sequence[str]) -> str:
    """``every DC asked (dc1, dc3)`` or ``dc3 (of 2 DCs asked)``: one DC refusing what others
    issue points at that DC (replication), every DC at the account or the SPN itself."""
    names = ", ".join(refusing)
    if len(refusing) >= len(asked):
        return f"every DC asked ({names})" if len(refusing) > 1 else names
    return f"{names} (of {len(asked)} DCs asked)"


def _ticket_line(spn: str, refusing: Sequence[str], asked: Sequence[str], what: str) -> str:
    return f"service ticket for {spn} refused by {_which(refusing, asked)}: {what}"


_PRINCIPAL_UNKNOWN = (
    "principal unknown (KDC_ERR_S_PRINCIPAL_UNKNOWN: no account, or more than one, holds it)"
)
_ETYPE_NOSUPP = "no key of a usable encryption type (KDC_ERR_ETYPE_NOSUPP)"


def _unknown(server: Server, cause: Cause, reason: str, why: str) -> Verdict:
    return Verdict(server.name, cause, State.UNKNOWN, (why,), reason)


def _clock_readings_skew(evidence: Evidence, server: Server) -> Verdict:
    cause = Cause.CLOCK_SKEW
    clock = evidence.settings.checks.clock
    if not clock.enabled or evidence.scrape is None:
        return _unknown(server, cause, "disabled", "the clock check is not enabled")
    readings: list[ClockReading] = [
        r for run in evidence.scrape.all_runs() for r in clock_readings_of(run.outcome)
    ]
    best = best_readings(readings, clock.sources)
    mine = best.get(server.name)
    if mine is None:
        return _unknown(
            server,
            cause,
            "no_reading",
            f"no clock reading of {server.name} from {', '.join(clock.sources)}",
        )
    dcs = [r for name, r in sorted(best.items()) if r.server.role.value == "domain_controller"]
    if not dcs:
        return _unknown(
            server, cause, "no_dc_reading", "no domain controller's clock could be read"
        )
    limit = clock.max_skew - clock.warning_margin
    bad = [(abs(mine.offset - dc.offset), dc) for dc in dcs if abs(mine.offset - dc.offset) > limit]
    if not bad:
        worst = max(abs(mine.offset - dc.offset) for dc in dcs)
        return Verdict(
            server.name,
            cause,
            State.OK,
            (
                f"largest skew {worst:.1f} s against {len(dcs)} DC(s), tolerance {clock.max_skew:.0f} s",
            ),
        )
    lines = tuple(
        f"{skew:.1f} s apart from {dc.server.name} ({mine.source} {mine.offset:+.1f} s vs "
        f"{dc.source} {dc.offset:+.1f} s); Kerberos allows {clock.max_skew:.0f} s"
        for skew, dc in sorted(bad, key=lambda item: -item[0])
    )
    return Verdict(
        server.name,
        cause,
        State.PROBLEM,
        lines,
        fix=(
            f"on {short_name(server)}: w32tm /query /status; w32tm /resync /rediscover",
            "on the PDC emulator: w32tm /query /source (it must follow a reliable source)",
        ),
    )


_EDGE = "Edge Transport server: not a domain member, no SPNs"


def _is_edge(server: Server) -> bool:
    return server.exchange is not None and server.exchange.edge


def _duplicated(evidence: Evidence) -> Duplicates | None:
    state = evidence.scan("duplicate_spn")
    return state.result if state is not None and isinstance(state.result, Duplicates) else None


def _spn_missing(evidence: Evidence, server: Server) -> Verdict:
    cause = Cause.SPN_MISSING
    if _is_edge(server):
        return Verdict(server.name, cause, State.OK, (_EDGE,))
    tickets = evidence.tickets(server.name) or []
    unknown_to_kdc = _refused(tickets, "principal_unknown")
    state = evidence.scan("spn")
    if state is None:
        return _spn_missing_from_tickets(server, tickets, unknown_to_kdc)
    result = state.result
    assert isinstance(result, ServerAccounts)
    if server.name not in result.accounts:
        return _unknown(server, cause, "not_scanned", "not in the last SPN scan (new since?)")
    account = result.accounts[server.name]
    wanted = expected_spns(server, evidence.settings.checks.spn.service_classes)
    if account is None:
        return Verdict(
            server.name,
            cause,
            State.PROBLEM,
            (
                f"no computer account found for {server.name} (by dNSHostName or {short_name(server)}$)",
                *(
                    _ticket_line(spn, dcs, _dcs(tickets, spn), _PRINCIPAL_UNKNOWN)
                    for spn, dcs in unknown_to_kdc.items()
                ),
            ),
            fix=("check the server's domain membership: Test-ComputerSecureChannel -Verbose",),
        )
    held = {spn.casefold() for spn in account.spns}
    missing = [spn for spn in wanted if spn.casefold() not in held]
    lines: list[str] = []
    fixes: list[str] = []
    if missing:
        lines.append(f"missing on {account.sam_account_name}: {', '.join(missing)}")
        fixes += [f"setspn -S {spn} {short_name(server)}" for spn in missing]
    refused = {spn.casefold(): (spn, dcs) for spn, dcs in unknown_to_kdc.items()}
    issued = {t.spn.casefold(): t for t in tickets if t.ok}
    for spn in missing:
        if spn.casefold() in refused:
            # The strongest sign: the KDC Exchange asks does not find it either.
            lines.append(
                _ticket_line(
                    spn, refused[spn.casefold()][1], _dcs(tickets, spn), "principal unknown"
                )
            )
        elif spn.casefold() in issued:
            ticket = issued[spn.casefold()]
            lines.append(
                f"yet {ticket.domain_controller} issued a ticket for {spn}: it was added after the "
                "last SPN scan, or another account holds it (then the receiver cannot decrypt the "
                "ticket: KRB_AP_ERR_MODIFIED)"
            )
            fixes.insert(0, f"setspn -Q {spn}")
    # Held according to LDAP, unknown to a KDC, and not a duplicate (spn_duplicate reports those):
    # the DC that refused has not received it yet.
    duplicates = _duplicated(evidence)
    for key, (spn, dcs) in refused.items():
        if key not in held or (duplicates is not None and key in duplicates.owners):
            continue
        duplicate = " or held twice (the duplicate scan has not run)" if duplicates is None else ""
        lines.append(
            _ticket_line(spn, dcs, _dcs(tickets, spn), "principal unknown")
            + f", though {account.sam_account_name} holds it: not yet replicated to that DC{duplicate}"
        )
        fixes += [f"repadmin /syncall /AdeP   (then: klist get {spn})", f"setspn -Q {spn}"]
    if not lines:
        confirmed = (
            f"; {len(issued)} of them confirmed by a service ticket from "
            f"{', '.join(_dcs([t for t in tickets if t.ok]))}"
            if issued
            else ""
        )
        return Verdict(
            server.name,
            cause,
            State.OK,
            (f"{len(wanted)} SPNs on {account.sam_account_name}{confirmed}",),
        )
    return Verdict(server.name, cause, State.PROBLEM, tuple(lines), fix=tuple(dict.fromkeys(fixes)))


def _spn_missing_from_tickets(
    server: Server, tickets: Sequence[Ticket], unknown_to_kdc: Mapping[str, list[str]]
) -> Verdict:
    """No SPN scan (no LDAP credentials, or not run yet): the tickets alone, if any."""
    cause = Cause.SPN_MISSING
    if unknown_to_kdc:
        return Verdict(
            server.name,
            cause,
            State.PROBLEM,
            tuple(
                _ticket_line(spn, dcs, _dcs(tickets, spn), _PRINCIPAL_UNKNOWN)
                for spn, dcs in unknown_to_kdc.items()
            ),
            fix=tuple(f"setspn -Q {spn}" for spn in unknown_to_kdc),
        )
    issued = sorted({t.spn for t in tickets if t.ok})
    if issued:
        return Verdict(
            server.name,
            cause,
            State.OK,
            (
                f"the KDCs issue tickets for {', '.join(issued)} (the SPN scan has not run: which "
                "account holds them is unchecked)",
            ),
        )
    return _unknown(server, cause, "no_scan", "the SPN scan has not succeeded yet")


def _spn_duplicate(evidence: Evidence, server: Server) -> Verdict:
    cause = Cause.SPN_DUPLICATE
    if _is_edge(server):
        return Verdict(server.name, cause, State.OK, (_EDGE,))
    result = _duplicated(evidence)
    if result is None:
        return _unknown(server, cause, "no_scan", "the duplicate SPN scan has not succeeded yet")
    tickets = evidence.tickets(server.name) or []
    refused = {spn.casefold(): dcs for spn, dcs in _refused(tickets, "principal_unknown").items()}
    lines = []
    fixes = []
    for spn in expected_spns(server, evidence.settings.checks.spn.service_classes):
        found = result.owners.get(spn.casefold())
        if found is None:
            continue
        lines.append(f"{found[0]} is held by {len(found[1])} accounts: {'; '.join(found[1])}")
        if spn.casefold() in refused:
            lines.append(
                _ticket_line(spn, refused[spn.casefold()], _dcs(tickets, spn), "principal unknown")
            )
        fixes.append(
            f"setspn -Q {spn}   then remove it from every account but {short_name(server)}$: setspn -D {spn} <account>"
        )
    if not lines:
        return Verdict(
            server.name, cause, State.OK, (f"none of its SPNs is duplicated ({result.scope} scan)",)
        )
    return Verdict(server.name, cause, State.PROBLEM, tuple(lines), fix=("setspn -X -F", *fixes))


def _kerberos_port_probes(evidence: Evidence, server: Server) -> Verdict:
    cause = Cause.KERBEROS_PORTS_BLOCKED
    if not evidence.settings.checks.kerberos.enabled:
        return _unknown(server, cause, "disabled", "the Kerberos check is not enabled")
    runs = evidence.runs("kerberos")
    if not runs:
        return _unknown(server, cause, "no_reading", "no domain controller was probed")
    blocked = []
    unknown = []
    for name, run in sorted(runs.items()):
        if isinstance(run.outcome, Failure):
            unknown.append(f"{name}: {run.outcome.reason}")
            continue
        result: KerberosResult = run.outcome
        blocked += [
            f"{name} {p.port}/{p.transport}: {p.reason}"
            for p in result.ports
            if not p.up and p.reason != "inconclusive"
        ]
    if blocked:
        return Verdict(
            server.name,
            cause,
            State.PROBLEM,
            (f"seen from the exporter: {', '.join(blocked)}",),
            fix=(
                *_PORT_FIXES,
                f"from {short_name(server)}: Test-NetConnection <dc> -Port 88; Test-NetConnection <dc> -Port 464",
            ),
        )
    if unknown and len(unknown) == len(runs):
        return _unknown(server, cause, "no_reading", f"no DC could be probed: {', '.join(unknown)}")
    return Verdict(
        server.name, cause, State.OK, (f"88 and 464 answer on {len(runs) - len(unknown)} DC(s)",)
    )


def _refusing_dcs(evidence: Evidence, server: Server, reason: str, phase: str = "tgs") -> list[str]:
    """The DCs whose answers for ``server``'s tickets failed with ``reason`` in ``phase`` (tgs:
    the service ticket itself; tgt: the exporter's own TGT from that DC)."""
    return sorted(
        {
            t.domain_controller
            for t in evidence.tickets(server.name) or []
            if not t.ok and t.reason == reason and t.phase == phase
        }
    )


_PORT_FIXES = (
    "allow TCP and UDP 88 (Kerberos) and 464 (kpasswd) between the Exchange servers and every DC",
)


def _kerberos_ports(evidence: Evidence, server: Server) -> Verdict:
    """The port probes, and the service tickets that could not reach a KDC (a ticket too big
    for UDP needs TCP 88: a firewall passing only UDP lets the probe through, not the ticket)."""
    verdict = _kerberos_port_probes(evidence, server)
    unreachable = _refusing_dcs(evidence, server, "kdc_unreachable")
    # The exporter's own TGT request not reaching a DC is about that DC's port too, not about
    # this server's SPNs.
    unreachable_tgt = [
        dc
        for dc in _refusing_dcs(evidence, server, "kdc_unreachable", "tgt")
        if dc not in unreachable
    ]
    if not unreachable and not unreachable_tgt:
        return verdict
    lines = []
    if unreachable:
        lines.append(f"service ticket requests could not reach the KDC of {', '.join(unreachable)}")
    if unreachable_tgt:
        lines.append(
            "the exporter's own TGT requests could not reach the KDC of "
            f"{', '.join(unreachable_tgt)}"
        )
    unreachable = unreachable or unreachable_tgt
    if verdict.state is State.PROBLEM:
        return replace(verdict, evidence=(*verdict.evidence, *lines))
    return Verdict(
        server.name,
        verdict.cause,
        State.PROBLEM,
        (*lines, *(verdict.evidence if verdict.state is State.OK else ())),
        fix=(
            *_PORT_FIXES,
            f"from {short_name(server)}: Test-NetConnection {unreachable[0]} -Port 88; "
            f"klist get SMTPSVC/{server.name}",
        ),
    )


def _clock_skew(evidence: Evidence, server: Server) -> Verdict:
    """The clock readings; a KDC refusing a ticket for clock skew (against the exporter's own
    clock) is added as evidence that names the DC."""
    verdict = _clock_readings_skew(evidence, server)
    skewed = _refusing_dcs(evidence, server, "skew")
    skewed_tgt = [dc for dc in _refusing_dcs(evidence, server, "skew", "tgt") if dc not in skewed]
    lines = []
    if skewed:
        lines.append(
            f"the KDC of {', '.join(skewed)} refused a service ticket for clock skew "
            "(KRB_AP_ERR_SKEW): its clock is more than the tolerance from the exporter's"
        )
    if skewed_tgt:
        lines.append(
            f"the KDC of {', '.join(skewed_tgt)} refused the exporter's own TGT for clock skew "
            "(KRB_AP_ERR_SKEW): its clock is more than the tolerance from the exporter's"
        )
    if not lines:
        return verdict
    return replace(verdict, evidence=(*verdict.evidence, *lines))


def _replication(evidence: Evidence, server: Server) -> Verdict:
    cause = Cause.REPLICATION
    state = evidence.scan("replication")
    if state is None:
        return _unknown(
            server, cause, "no_scan", "no replication scan result (not available or not yet run)"
        )
    result = state.result
    assert isinstance(result, Replication)
    if not any(outcome.reading is not None for outcome in result.dcs.values()):
        return _unknown(
            server, cause, "no_reading", "no domain controller's replication state could be read"
        )
    problems = result.problems(evidence.settings.checks.replication.stale_after, time.time())
    if problems:
        return Verdict(
            server.name,
            cause,
            State.PROBLEM,
            tuple(problems[:5]),
            fix=("repadmin /replsummary", "repadmin /showrepl <dc>", "repadmin /syncall /AdeP"),
        )
    return Verdict(server.name, cause, State.OK, ("every DC replicates inbound without failures",))


def _account_of(evidence: Evidence, server: Server) -> Account | None:
    state = evidence.scan("spn")
    if state is None or not isinstance(state.result, ServerAccounts):
        return None
    return state.result.accounts.get(server.name)


def _encryption_line(account: Account, default: int) -> str | None:
    """How the account's msDS-SupportedEncryptionTypes reads, with what the KDC makes of it."""
    if not account.encryption_types_read:
        return None
    own = account.encryption_types
    if own is None:
        return (
            f"{account.sam_account_name} msDS-SupportedEncryptionTypes unset: the KDC's default "
            f"applies, {enctypes.describe(default)} (checks.spn.default_encryption_types)"
        )
    return f"{account.sam_account_name} msDS-SupportedEncryptionTypes {enctypes.describe(own)}"


def _kerberos_keys(evidence: Evidence, server: Server) -> Verdict:
    cause = Cause.KERBEROS_KEYS
    if _is_edge(server):
        return Verdict(server.name, cause, State.OK, (_EDGE,))
    default = evidence.settings.checks.spn.default_encryption_types
    account = _account_of(evidence, server)
    tickets = evidence.tickets(server.name)
    short = short_name(server)
    name = account.sam_account_name if account is not None else f"{short}$"
    own = account.encryption_types if account is not None else None
    described = _encryption_line(account, default) if account is not None else None
    context = (described,) if described else ()
    risk: tuple[str, ...] = ()
    if own is not None and enctypes.rc4_only(own):
        risk = (
            "at risk: RC4-HMAC is its only encryption type; its tickets fail once the KDCs "
            "refuse RC4",
        )
    refused = _refused(tickets or [], "etype_nosupp")
    if refused:
        lines = [
            _ticket_line(spn, dcs, _dcs(tickets or [], spn), _ETYPE_NOSUPP)
            for spn, dcs in refused.items()
        ]
        dc = next(iter(refused.values()))[0]
        fixes = [
            f"Get-ADComputer {short} -Properties msDS-SupportedEncryptionTypes, KerberosEncryptionType",
            f"on {dc}: System log, Kerberos-Key-Distribution-Center event 16 or 27: 'While processing "
            f"a TGS request for the target server {next(iter(refused))}, the account {name} did not "
            "have a suitable key for generating a Kerberos ticket' (it lists the requested and the "
            "available etypes)",
            "on the sending Exchange servers, MSExchangeTransport event 2017: 'Outbound "
            "authentication failed with error KdcUnknownEncryptionType ... The target is "
            f"{next(iter(refused))}'",
        ]
        if own is not None and enctypes.aes_missing(own):
            fixes.append(
                f"Set-ADComputer {short} -KerberosEncryptionType AES128,AES256   (or "
                f"-Replace @{{'msDS-SupportedEncryptionTypes'=24}})"
            )
        fixes += [
            f"on {short}: Reset-ComputerMachinePassword -Server {dc}   (new keys of every type "
            "allowed; Test-ComputerSecureChannel -Repair does the same)",
            "on the sending Exchange servers: klist purge -li 0x3e7   (drop the cached tickets)",
        ]
        return Verdict(server.name, cause, State.PROBLEM, (*lines, *context), fix=tuple(fixes))
    if own is not None and not enctypes.usable(own):
        return Verdict(
            server.name,
            cause,
            State.PROBLEM,
            (
                *context,
                "no KDC issues tickets with these types (DES is off on every current KDC)",
            ),
            fix=(
                f"Set-ADComputer {short} -KerberosEncryptionType AES128,AES256   (or "
                f"-Replace @{{'msDS-SupportedEncryptionTypes'=24}})",
                "on the sending Exchange servers: klist purge -li 0x3e7",
            ),
        )
    issued = sorted({t.domain_controller for t in tickets or [] if t.ok})
    if issued:
        return Verdict(
            server.name,
            cause,
            State.OK,
            (f"service tickets issued by {', '.join(issued)}", *context, *risk),
        )
    if tickets is None:
        why = "no service ticket was requested (the service_tickets check is not enabled)"
    elif not tickets:
        why = f"no service ticket was requested for {server.name}'s SPNs"
    else:
        reasons = sorted(
            {
                f"{t.domain_controller}: {t.reason}"
                + (" (the exporter's own TGT)" if t.phase == "tgt" else "")
                for t in tickets
            }
        )
        why = f"no DC got as far as its keys ({'; '.join(reasons)})"
    return Verdict(server.name, cause, State.UNKNOWN, (why, *context, *risk), "no_reading")


def _receive_connector_auth(evidence: Evidence, server: Server) -> Verdict:
    cause = Cause.RECEIVE_CONNECTOR_AUTH
    lines: list[str] = []
    fixes: list[str] = []
    seen = False
    if server.exchange is not None and server.exchange.connectors:
        seen = True
        for connector in server.exchange.connectors:
            # Only the default connectors carry intra-organisation mail; a custom relay
            # connector without ExchangeServer auth is normal.
            if connector.name.startswith("Default ") and not connector.exchange_server_auth:
                lines.append(
                    f"receive connector '{connector.name}' lacks ExchangeServer authentication"
                )
                fixes.append(
                    f"Set-ReceiveConnector '{short_name(server)}\\{connector.name}' -AuthMechanism "
                    "Tls, Integrated, BasicAuth, BasicAuthRequireTLS, ExchangeServer"
                )
    run = evidence.runs("smtp").get(server.name)
    if run is not None and not isinstance(run.outcome, Failure):
        smtp: SmtpResult = run.outcome
        for port in smtp.ports:
            if port.port == INTRA_ORG_PORT and port.up:
                seen = True
                if not port.offers("X-EXPS", "GSSAPI"):
                    lines.append(f"port {port.port} does not offer X-EXPS GSSAPI in EHLO")
    if not seen:
        return _unknown(
            server, cause, "no_reading", "no receive connector data and no EHLO on port 2525"
        )
    if lines:
        return Verdict(
            server.name,
            cause,
            State.PROBLEM,
            tuple(lines),
            fix=tuple(fixes)
            or (f"Get-ReceiveConnector -Server {short_name(server)} | ft Name, AuthMechanism",),
        )
    return Verdict(
        server.name, cause, State.OK, ("intra-organisation connectors offer ExchangeServer auth",)
    )


def _symptom(name: str, cause: Cause) -> Judge:
    def judge(evidence: Evidence, server: Server) -> Verdict:
        state = evidence.scan(name)
        if state is None:
            return _unknown(
                server, cause, "no_scan", f"no {name.replace('_', ' ')} configured or read yet"
            )
        describe = getattr(state.result, "auth_failures", None)
        if describe is None:
            return _unknown(server, cause, "no_reading", "this evidence cannot tell auth failures")
        found: Sequence[str] | None = describe(server.name)
        if found is None:
            return _unknown(
                server, cause, "no_reading", f"no {name.replace('_', ' ')} for {server.name}"
            )
        if found:
            return Verdict(server.name, cause, State.PROBLEM, tuple(found))
        return Verdict(server.name, cause, State.OK, ("no authentication failures",))

    return judge


JUDGES: dict[Cause, Judge] = {
    Cause.CLOCK_SKEW: _clock_skew,
    Cause.REPLICATION: _replication,
    Cause.SPN_MISSING: _spn_missing,
    Cause.SPN_DUPLICATE: _spn_duplicate,
    Cause.KERBEROS_PORTS_BLOCKED: _kerberos_ports,
    Cause.RECEIVE_CONNECTOR_AUTH: _receive_connector_auth,
    Cause.KERBEROS_KEYS: _kerberos_keys,
    Cause.QUEUE_AUTH_ERRORS: _symptom("queue_snapshots", Cause.QUEUE_AUTH_ERRORS),
    Cause.LOG_AUTH_FAILURES: _symptom("protocol_logs", Cause.LOG_AUTH_FAILURES),
}


def verdicts(evidence: Evidence, servers: Iterable[str] | None = None) -> list[Verdict]:
    """A verdict for every Exchange server (or those named) and every cause, in KB order."""
    wanted = None if servers is None else {s.lower() for s in servers}
    return [
        JUDGES[cause](evidence, server)
        for server in evidence.inventory.exchange_servers
        if wanted is None or server.name in wanted
        for cause in Cause
    ]


def verdict_metrics(found: Sequence[Verdict]) -> Iterator[Metric]:
    cause = GaugeMetricFamily(
        "exchange_auth_cause",
        "1 when the KB 979174 cause (or symptom) is present for the Exchange server, 0 when it was "
        "checked and is absent; absent when unknown (see exchange_auth_cause_unknown).",
        labels=["server", "cause"],
    )
    unknown = GaugeMetricFamily(
        "exchange_auth_cause_unknown",
        "1 when the evidence for the cause is missing, with the reason: disabled, no_reading, "
        "no_dc_reading, no_scan or not_scanned.",
        labels=["server", "cause", "reason"],
    )
    for verdict in found:
        if verdict.state is State.UNKNOWN:
            unknown.add_metric([verdict.server, verdict.cause.value, verdict.reason], 1)
        else:
            cause.add_metric(
                [verdict.server, verdict.cause.value], 1 if verdict.state is State.PROBLEM else 0
            )
    yield cause
    yield unknown
