"""The verdict function: each cause alone, several together, missing evidence, the warning margin."""

from __future__ import annotations

import time
from typing import Any

import pytest

from exporter.background import ScanState
from exporter.checks.base import CheckRun, ClockReading, Failure
from exporter.checks.clock import NtpResult
from exporter.checks.kerberos import KerberosResult
from exporter.checks.kerberos import PortResult as KerberosPort
from exporter.checks.queue_snapshots import QueueSnapshots, ServerSnapshot
from exporter.checks.replication import DcOutcome, DcReading, PartnerState, Replication
from exporter.checks.smtp import PortResult as SmtpPort
from exporter.checks.smtp import SmtpResult
from exporter.checks.spn import Account, Duplicates, ServerAccounts
from exporter.config import Settings, load_text
from exporter.inventory import Inventory
from exporter.protocols.krb5 import KerberosReply
from exporter.protocols.ntp import NtpReading
from exporter.queues import LastError, Queue, Snapshot
from exporter.scrape import ScrapeResult
from exporter.servers import ExchangeDetails, ReceiveConnector, Role, Server
from exporter.verdicts import Cause, Evidence, State, Verdict, verdict_metrics, verdicts
from tests.metrics_text import expose, value

DC = Server("dc1.corp.example.test", Role.DOMAIN_CONTROLLER, "127.0.0.1")
EXCH = Server(
    "exch1.corp.example.test",
    Role.EXCHANGE,
    "127.0.0.2",
    exchange=ExchangeDetails(38, "Version 15.2", "Site", (ReceiveConnector("Default EXCH1", 29),)),
)
SPNS = (
    "SMTP/EXCH1",
    "SMTP/exch1.corp.example.test",
    "SMTPSVC/EXCH1",
    "SMTPSVC/exch1.corp.example.test",
)
KDC_OK = KerberosReply(6, 0.0, True)


def settings(extra: str = "") -> Settings:
    return load_text("realm: corp.example.test\n" + extra)


def ntp(server: Server, offset: float) -> CheckRun[Any]:
    reading = NtpReading(offset, 0.001, 1e-6, 2, 0, 4)
    return CheckRun(
        "clock", server, NtpResult(reading, (ClockReading(server, "ntp", offset, 0.001),)), 0.01
    )


def kerberos(*down: tuple[int, str, str]) -> CheckRun[Any]:
    ports = []
    for port, transport in ((88, "udp"), (88, "tcp"), (464, "udp"), (464, "tcp")):
        reason = next((r for p, t, r in down if (p, t) == (port, transport)), "")
        ports.append(
            KerberosPort(port, transport, None if reason else KDC_OK, 0.001, reason=reason)
        )
    return CheckRun("kerberos", DC, KerberosResult(tuple(ports), ()), 0.01)


def smtp(x_exps: bool = True) -> CheckRun[Any]:
    keywords = (("X-EXPS", ("GSSAPI", "NTLM")),) if x_exps else (("AUTH", ("NTLM",)),)
    return CheckRun("smtp", EXCH, SmtpResult((SmtpPort(2525, "220 banner", keywords),), ()), 0.01)


def healthy_scans(
    spns: tuple[str, ...] = SPNS, owners: dict[str, Any] | None = None
) -> dict[str, ScanState[Any]]:
    account = Account("CN=EXCH1,CN=Computers,DC=x", "EXCH1$", EXCH.name, spns)
    return {
        "spn": ScanState(result=ServerAccounts({EXCH.name: account}), success=True),
        "duplicate_spn": ScanState(result=Duplicates("forest", 10, 40, owners or {}), success=True),
    }


def judge(
    runs: list[CheckRun[Any]] | None = None,
    scans: dict[str, ScanState[Any]] | None = None,
    server: Server = EXCH,
    config: Settings | None = None,
) -> dict[Cause, Verdict]:
    runs = [ntp(EXCH, 0.0), ntp(DC, 0.0), kerberos(), smtp()] if runs is None else runs
    grouped: dict[str, list[CheckRun[Any]]] = {}
    for run in runs:
        grouped.setdefault(run.check, []).append(run)
    evidence = Evidence(
        config or settings(),
        Inventory((DC, server)),
        ScrapeResult(grouped, 5.0, 0.1),
        healthy_scans() if scans is None else scans,
    )
    return {v.cause: v for v in verdicts(evidence)}


def states(found: dict[Cause, Verdict]) -> dict[Cause, State]:
    return {cause: v.state for cause, v in found.items()}


def test_a_healthy_server_is_ok_where_evidence_exists() -> None:
    found = states(judge())
    for cause in (
        Cause.CLOCK_SKEW,
        Cause.SPN_MISSING,
        Cause.SPN_DUPLICATE,
        Cause.KERBEROS_PORTS_BLOCKED,
        Cause.RECEIVE_CONNECTOR_AUTH,
    ):
        assert found[cause] is State.OK, cause
    # No replication scan, no queue snapshots, no logs: unknown, never ok.
    for cause in (Cause.REPLICATION, Cause.QUEUE_AUTH_ERRORS, Cause.LOG_AUTH_FAILURES):
        assert found[cause] is State.UNKNOWN, cause


def test_clock_skew_names_the_dc_and_the_seconds() -> None:
    verdict = judge([ntp(EXCH, 420.0), ntp(DC, 0.0), kerberos(), smtp()])[Cause.CLOCK_SKEW]
    assert verdict.state is State.PROBLEM
    assert "420.0 s apart from dc1.corp.example.test" in verdict.evidence[0]
    assert any("w32tm /resync" in fix for fix in verdict.fix)


@pytest.mark.parametrize(
    ("skew", "state"),
    [(239.0, State.OK), (241.0, State.PROBLEM), (299.0, State.PROBLEM), (301.0, State.PROBLEM)],
)
def test_the_warning_margin_counts_near_misses(skew: float, state: State) -> None:
    # 5 minutes tolerance, 1 minute margin: from 240 s on, the clocks are a problem.
    assert judge([ntp(EXCH, skew), ntp(DC, 0.0)])[Cause.CLOCK_SKEW].state is state


def test_a_wider_margin_from_the_config() -> None:
    config = settings("checks: {clock: {warning_margin: 2m}}\n")
    assert (
        judge([ntp(EXCH, 200.0), ntp(DC, 0.0)], config=config)[Cause.CLOCK_SKEW].state
        is State.PROBLEM
    )


def test_no_clock_reading_is_unknown_not_ok() -> None:
    dead: CheckRun[Any] = CheckRun("clock", EXCH, Failure("timeout", "no reply"), 3.0)
    verdict = judge([dead, ntp(DC, 0.0)])[Cause.CLOCK_SKEW]
    assert (verdict.state, verdict.reason) == (State.UNKNOWN, "no_reading")
    no_dc = judge([ntp(EXCH, 0.0)])[Cause.CLOCK_SKEW]
    assert (no_dc.state, no_dc.reason) == (State.UNKNOWN, "no_dc_reading")


def test_a_missing_spn_is_named_with_its_fix() -> None:
    verdict = judge(scans=healthy_scans(SPNS[:3]))[Cause.SPN_MISSING]
    assert verdict.state is State.PROBLEM
    assert "SMTPSVC/exch1.corp.example.test" in verdict.evidence[0]
    assert verdict.fix == ("setspn -S SMTPSVC/exch1.corp.example.test EXCH1",)


def test_no_computer_account_is_its_own_problem() -> None:
    scans = healthy_scans()
    scans["spn"] = ScanState(result=ServerAccounts({EXCH.name: None}))
    verdict = judge(scans=scans)[Cause.SPN_MISSING]
    assert verdict.state is State.PROBLEM
    assert "no computer account" in verdict.evidence[0]


def test_spn_scan_not_yet_run_is_unknown() -> None:
    found = judge(scans={})
    assert found[Cause.SPN_MISSING].state is State.UNKNOWN
    assert found[Cause.SPN_DUPLICATE].reason == "no_scan"


def test_a_duplicate_names_the_other_accounts() -> None:
    owners = {
        "smtpsvc/exch1.corp.example.test": (
            "SMTPSVC/exch1.corp.example.test",
            ("CN=EXCH1,DC=x", "CN=svc-legacy,DC=x"),
        )
    }
    verdict = judge(scans=healthy_scans(owners=owners))[Cause.SPN_DUPLICATE]
    assert verdict.state is State.PROBLEM
    assert "CN=svc-legacy,DC=x" in verdict.evidence[0]
    assert verdict.fix[0] == "setspn -X -F"


def test_blocked_kerberos_ports_name_the_dc_port_and_transport() -> None:
    verdict = judge([ntp(EXCH, 0.0), ntp(DC, 0.0), kerberos((88, "udp", "timeout")), smtp()])[
        Cause.KERBEROS_PORTS_BLOCKED
    ]
    assert verdict.state is State.PROBLEM
    assert "dc1.corp.example.test 88/udp: timeout" in verdict.evidence[0]


def test_inconclusive_kpasswd_udp_is_not_blocked() -> None:
    verdict = judge([kerberos((464, "udp", "inconclusive"))])[Cause.KERBEROS_PORTS_BLOCKED]
    assert verdict.state is State.OK


def test_receive_connector_without_exchange_server_auth() -> None:
    broken = Server(
        EXCH.name,
        Role.EXCHANGE,
        exchange=ExchangeDetails(38, "", "", (ReceiveConnector("Default EXCH1", 13),)),
    )
    verdict = judge(server=broken)[Cause.RECEIVE_CONNECTOR_AUTH]
    assert verdict.state is State.PROBLEM
    assert "Set-ReceiveConnector 'EXCH1\\Default EXCH1'" in verdict.fix[0]


def test_x_exps_missing_on_2525_is_a_problem_even_without_ad_data() -> None:
    plain = Server(EXCH.name, Role.EXCHANGE)
    verdict = judge([smtp(x_exps=False)], server=plain)[Cause.RECEIVE_CONNECTOR_AUTH]
    assert verdict.state is State.PROBLEM
    assert "X-EXPS" in verdict.evidence[0]
    assert judge([], server=plain)[Cause.RECEIVE_CONNECTOR_AUTH].state is State.UNKNOWN


def test_several_causes_together() -> None:
    owners = {"smtp/exch1": ("SMTP/EXCH1", ("CN=EXCH1,DC=x", "CN=OLD,DC=x"))}
    found = states(
        judge(
            [ntp(EXCH, 400.0), ntp(DC, 0.0), kerberos((88, "tcp", "refused")), smtp(x_exps=False)],
            scans=healthy_scans(SPNS[1:], owners),
        )
    )
    assert {c for c, s in found.items() if s is State.PROBLEM} == {
        Cause.CLOCK_SKEW,
        Cause.SPN_MISSING,
        Cause.SPN_DUPLICATE,
        Cause.KERBEROS_PORTS_BLOCKED,
        Cause.RECEIVE_CONNECTOR_AUTH,
    }


def test_edge_servers_need_no_spns() -> None:
    edge = Server("edge1.dmz.example.test", Role.EXCHANGE, exchange=ExchangeDetails(64, "", ""))
    found = judge(scans={}, server=edge)
    assert found[Cause.SPN_MISSING].state is State.OK
    assert found[Cause.SPN_DUPLICATE].state is State.OK


def test_metrics_carry_problems_as_1_and_unknowns_separately() -> None:
    found = list(judge([ntp(EXCH, 420.0), ntp(DC, 0.0)], scans={}).values())
    text = expose(verdict_metrics(found))
    assert value(text, "exchange_auth_cause", server=EXCH.name, cause="clock_skew") == 1
    assert value(text, "exchange_auth_cause", server=EXCH.name, cause="spn_missing") is None
    assert (
        value(
            text,
            "exchange_auth_cause_unknown",
            server=EXCH.name,
            cause="spn_missing",
            reason="no_scan",
        )
        == 1
    )


def replication_scan(*partners: PartnerState) -> dict[str, ScanState[Any]]:
    reading = DcReading("repsFrom", partners, 0, 1_795_950_000.0)
    scans = healthy_scans()
    scans["replication"] = ScanState(result=Replication({DC.name: DcOutcome(reading)}))
    return scans


def test_replication_failures_and_never_replicated_partners() -> None:
    now = time.time()
    ok = PartnerState(
        "dc2.corp.example.test", "DC=corp,DC=example,DC=test", 0, now - 30, now - 30, 0
    )
    assert judge(scans=replication_scan(ok))[Cause.REPLICATION].state is State.OK
    failing = PartnerState(
        "dc2.corp.example.test", "DC=corp,DC=example,DC=test", 7, now - 4000, now - 5, 1722
    )
    verdict = judge(scans=replication_scan(ok, failing))[Cause.REPLICATION]
    assert verdict.state is State.PROBLEM
    assert "7 consecutive failures, last result 1722" in verdict.evidence[0]
    never = PartnerState(
        "dc3.corp.example.test", "CN=Configuration,DC=corp,DC=example,DC=test", 0, None, None, 0
    )
    assert (
        "has never replicated"
        in judge(scans=replication_scan(never))[Cause.REPLICATION].evidence[0]
    )
    stale = PartnerState(
        "dc2.corp.example.test", "DC=corp,DC=example,DC=test", 0, now - 7200, now - 7200, 0
    )
    assert (
        "last success 7200 s ago"
        in judge(scans=replication_scan(stale))[Cause.REPLICATION].evidence[0]
    )


def test_replication_with_no_dc_read_is_unknown() -> None:
    scans = healthy_scans()
    scans["replication"] = ScanState(result=Replication({DC.name: DcOutcome(None, "unreachable")}))
    verdict = judge(scans=scans)[Cause.REPLICATION]
    assert (verdict.state, verdict.reason) == (State.UNKNOWN, "no_reading")


def test_queues_with_454_are_the_symptom() -> None:
    error = LastError("auth_temporary", "454", "4.7.0")
    queue = Queue(
        "7",
        "EXCH1",
        "SmtpDeliveryToMailbox",
        "Retry",
        12,
        "exch2.corp.example.test",
        "451 4.4.0 ...",
        error,
    )
    snapshot = Snapshot("script", "EXCH1", 1_795_950_000.0, (queue,))
    scans = healthy_scans()
    scans["queue_snapshots"] = ScanState(
        result=QueueSnapshots({EXCH.name: ServerSnapshot(snapshot)})
    )
    verdict = judge(scans=scans)[Cause.QUEUE_AUTH_ERRORS]
    assert verdict.state is State.PROBLEM
    assert "queue 7 to exch2.corp.example.test (12 messages): 454 4.7.0" in verdict.evidence[0]
    clean = Snapshot("script", "EXCH1", 1_795_950_000.0, ())
    scans["queue_snapshots"] = ScanState(result=QueueSnapshots({EXCH.name: ServerSnapshot(clean)}))
    assert judge(scans=scans)[Cause.QUEUE_AUTH_ERRORS].state is State.OK
    scans["queue_snapshots"] = ScanState(result=QueueSnapshots({}))
    assert judge(scans=scans)[Cause.QUEUE_AUTH_ERRORS].state is State.UNKNOWN
