"""Evidence -> which KB 979174 cause is present for each Exchange server, and what fixes it.

One pure function shared by ``/metrics``, ``diagnose`` and the status page, so they can never
disagree. Missing evidence is ``unknown`` with the reason, never ``ok``.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from .background import ScanState
from .checks.base import CheckRun, ClockReading, Failure, clock_readings_of
from .checks.clock import best_readings
from .checks.kerberos import KerberosResult
from .checks.replication import Replication
from .checks.smtp import SmtpResult
from .checks.spn import Duplicates, ServerAccounts, expected_spns, short_name
from .config import Settings
from .inventory import Inventory
from .scrape import ScrapeResult
from .servers import Server

__all__ = ["Cause", "Evidence", "State", "Verdict", "verdict_metrics", "verdicts"]

INTRA_ORG_PORT = 2525


class State(enum.StrEnum):
    OK = "ok"
    PROBLEM = "problem"
    UNKNOWN = "unknown"


class Cause(enum.StrEnum):
    """In the order of KB 979174's steps, then the symptoms."""

    CLOCK_SKEW = "clock_skew"
    REPLICATION = "replication"
    SPN_MISSING = "spn_missing"
    SPN_DUPLICATE = "spn_duplicate"
    KERBEROS_PORTS_BLOCKED = "kerberos_ports_blocked"
    RECEIVE_CONNECTOR_AUTH = "receive_connector_auth"
    QUEUE_AUTH_ERRORS = "queue_auth_errors"
    LOG_AUTH_FAILURES = "log_auth_failures"


SYMPTOMS = frozenset({Cause.QUEUE_AUTH_ERRORS, Cause.LOG_AUTH_FAILURES})


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


Judge = Callable[[Evidence, Server], Verdict]


def _unknown(server: Server, cause: Cause, reason: str, why: str) -> Verdict:
    return Verdict(server.name, cause, State.UNKNOWN, (why,), reason)


def _clock_skew(evidence: Evidence, server: Server) -> Verdict:
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


def _spn_missing(evidence: Evidence, server: Server) -> Verdict:
    cause = Cause.SPN_MISSING
    if _is_edge(server):
        return Verdict(server.name, cause, State.OK, (_EDGE,))
    state = evidence.scan("spn")
    if state is None:
        return _unknown(server, cause, "no_scan", "the SPN scan has not succeeded yet")
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
            ),
            fix=("check the server's domain membership: Test-ComputerSecureChannel -Verbose",),
        )
    held = {spn.casefold() for spn in account.spns}
    missing = [spn for spn in wanted if spn.casefold() not in held]
    if not missing:
        return Verdict(
            server.name, cause, State.OK, (f"{len(wanted)} SPNs on {account.sam_account_name}",)
        )
    return Verdict(
        server.name,
        cause,
        State.PROBLEM,
        (f"missing on {account.sam_account_name}: {', '.join(missing)}",),
        fix=tuple(f"setspn -S {spn} {short_name(server)}" for spn in missing),
    )


def _spn_duplicate(evidence: Evidence, server: Server) -> Verdict:
    cause = Cause.SPN_DUPLICATE
    if _is_edge(server):
        return Verdict(server.name, cause, State.OK, (_EDGE,))
    state = evidence.scan("duplicate_spn")
    if state is None:
        return _unknown(server, cause, "no_scan", "the duplicate SPN scan has not succeeded yet")
    result = state.result
    assert isinstance(result, Duplicates)
    lines = []
    fixes = []
    for spn in expected_spns(server, evidence.settings.checks.spn.service_classes):
        found = result.owners.get(spn.casefold())
        if found is None:
            continue
        lines.append(f"{found[0]} is held by {len(found[1])} accounts: {'; '.join(found[1])}")
        fixes.append(
            f"setspn -Q {spn}   then remove it from every account but {short_name(server)}$: setspn -D {spn} <account>"
        )
    if not lines:
        return Verdict(
            server.name, cause, State.OK, (f"none of its SPNs is duplicated ({result.scope} scan)",)
        )
    return Verdict(server.name, cause, State.PROBLEM, tuple(lines), fix=("setspn -X -F", *fixes))


def _kerberos_ports(evidence: Evidence, server: Server) -> Verdict:
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
                "allow TCP and UDP 88 (Kerberos) and 464 (kpasswd) between the Exchange servers and every DC",
                f"from {short_name(server)}: Test-NetConnection <dc> -Port 88; Test-NetConnection <dc> -Port 464",
            ),
        )
    if unknown and len(unknown) == len(runs):
        return _unknown(server, cause, "no_reading", f"no DC could be probed: {', '.join(unknown)}")
    return Verdict(
        server.name, cause, State.OK, (f"88 and 464 answer on {len(runs) - len(unknown)} DC(s)",)
    )


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
