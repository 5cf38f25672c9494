"""Service tickets as evidence: the SPN causes, keys and encryption types, ports and clocks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from exporter.background import ScanState
from exporter.checks.base import CheckRun, Failure
from exporter.checks.service_tickets import ServiceTicketsResult, TicketResult
from exporter.checks.spn import Account, ServerAccounts
from exporter.diagnose import Report, render_json
from exporter.inventory import Inventory
from exporter.servers import ExchangeDetails, Role, Server
from exporter.status_page import render_status_page
from exporter.verdicts import Cause, State, Verdict, verdict_metrics
from tests.metrics_text import expose, value
from tests.unit.test_verdicts import DC, EXCH, SPNS, healthy_scans, judge, kerberos, ntp, smtp

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "diagnose.schema.json").read_text())
DC3 = "dc3.corp.example.test"
FQDN_SPN = "SMTPSVC/exch1.corp.example.test"


def ticket(
    ok: bool, reason: str = "", dc: str = DC.name, spn: str = FQDN_SPN, phase: str = "tgs"
) -> TicketResult:
    return TicketResult(dc, spn, ok, reason, phase=phase)


def ticket_run(*tickets: TicketResult, server: Server = EXCH) -> CheckRun[Any]:
    return CheckRun("service_tickets", server, ServiceTicketsResult(tickets, ()), 0.01)


def base_runs(*tickets: TicketResult) -> list[CheckRun[Any]]:
    return [ntp(EXCH, 0.0), ntp(DC, 0.0), kerberos(), smtp(), ticket_run(*tickets)]


def scans_with(
    encryption_types: int | None = None,
    spns: tuple[str, ...] = SPNS,
    owners: dict[str, Any] | None = None,
) -> dict[str, ScanState[Any]]:
    scans = healthy_scans(spns, owners)
    account = Account(
        "CN=EXCH1,CN=Computers,DC=x", "EXCH1$", EXCH.name, spns, encryption_types, True
    )
    scans["spn"] = ScanState(result=ServerAccounts({EXCH.name: account}), success=True)
    return scans


def test_a_missing_spn_refused_by_the_kdc_names_the_dc() -> None:
    found = judge(base_runs(ticket(False, "principal_unknown")), scans=scans_with(spns=SPNS[:3]))
    verdict = found[Cause.SPN_MISSING]
    assert verdict.state is State.PROBLEM
    assert f"service ticket for {FQDN_SPN} refused by {DC.name}" in verdict.evidence[1]
    assert verdict.fix == (f"setspn -S {FQDN_SPN} EXCH1",)


def test_held_in_ldap_but_unknown_to_one_kdc_is_replication_not_ok() -> None:
    found = judge(
        base_runs(ticket(True), ticket(False, "principal_unknown", dc=DC3)), scans=scans_with()
    )
    verdict = found[Cause.SPN_MISSING]
    assert verdict.state is State.PROBLEM
    (line,) = verdict.evidence
    assert f"refused by {DC3} (of 2 DCs asked)" in line
    assert "not yet replicated to that DC" in line
    assert verdict.fix[0].startswith("repadmin /syncall /AdeP")
    assert found[Cause.SPN_DUPLICATE].state is State.OK


def test_a_duplicate_refused_by_every_kdc_is_the_duplicate_cause_only() -> None:
    owners = {FQDN_SPN.lower(): (FQDN_SPN, ("CN=EXCH1,DC=x", "CN=svc-legacy,DC=x"))}
    runs = base_runs(ticket(False, "principal_unknown"), ticket(False, "principal_unknown", dc=DC3))
    found = judge(runs, scans=scans_with(owners=owners))
    assert found[Cause.SPN_MISSING].state is State.OK
    duplicate = found[Cause.SPN_DUPLICATE]
    assert duplicate.state is State.PROBLEM
    assert f"refused by every DC asked ({DC.name}, {DC3})" in duplicate.evidence[1]


def test_missing_in_ldap_but_a_ticket_issued_asks_who_holds_it() -> None:
    verdict = judge(base_runs(ticket(True)), scans=scans_with(spns=SPNS[:3]))[Cause.SPN_MISSING]
    assert verdict.state is State.PROBLEM
    assert f"yet {DC.name} issued a ticket" in verdict.evidence[1]
    assert verdict.fix[0] == f"setspn -Q {FQDN_SPN}"


def test_the_ok_line_names_only_the_dcs_that_issued_a_ticket() -> None:
    runs = base_runs(ticket(True), ticket(False, "skew", dc=DC3))
    verdict = judge(runs, scans=scans_with())[Cause.SPN_MISSING]
    assert verdict.state is State.OK
    assert f"confirmed by a service ticket from {DC.name}" in verdict.evidence[0]
    assert DC3 not in verdict.evidence[0]


def test_without_an_spn_scan_the_tickets_alone_decide() -> None:
    refused = judge(base_runs(ticket(False, "principal_unknown")), scans={})[Cause.SPN_MISSING]
    assert refused.state is State.PROBLEM
    assert DC.name in refused.evidence[0]
    issued = judge(base_runs(ticket(True)), scans={})[Cause.SPN_MISSING]
    assert issued.state is State.OK
    nothing = judge(base_runs(), scans={})[Cause.SPN_MISSING]
    assert (nothing.state, nothing.reason) == (State.UNKNOWN, "no_scan")


def test_an_rc4_only_account_refused_by_the_kdcs_is_the_keys_cause() -> None:
    runs = base_runs(ticket(False, "etype_nosupp"), ticket(False, "etype_nosupp", dc=DC3))
    verdict = judge(runs, scans=scans_with(encryption_types=0x4))[Cause.KERBEROS_KEYS]
    assert verdict.state is State.PROBLEM
    assert f"refused by every DC asked ({DC.name}, {DC3})" in verdict.evidence[0]
    assert "KDC_ERR_ETYPE_NOSUPP" in verdict.evidence[0]
    assert "msDS-SupportedEncryptionTypes RC4-HMAC (0x4)" in verdict.evidence[1]
    fixes = "\n".join(verdict.fix)
    assert "Set-ADComputer EXCH1 -KerberosEncryptionType AES128,AES256" in fixes
    assert "'msDS-SupportedEncryptionTypes'=24" in fixes
    assert f"Reset-ComputerMachinePassword -Server {DC.name}" in fixes
    assert "klist purge -li 0x3e7" in fixes
    assert "event 16 or 27" in fixes
    # Not an SPN problem: the KDC found the account, it had no usable key.
    assert judge(runs, scans=scans_with(encryption_types=0x4))[Cause.SPN_MISSING].state is State.OK


def test_an_account_without_keys_gets_a_password_reset_not_new_types() -> None:
    verdict = judge(base_runs(ticket(False, "etype_nosupp")), scans=scans_with())[
        Cause.KERBEROS_KEYS
    ]
    assert verdict.state is State.PROBLEM
    assert (
        "unset: the KDC's default applies, DES-CBC-CRC, DES-CBC-MD5, RC4-HMAC, AES256-SK (0x27)"
        in (verdict.evidence[1])
    )
    assert not any("Set-ADComputer" in fix for fix in verdict.fix)
    assert any("Reset-ComputerMachinePassword" in fix for fix in verdict.fix)


def test_keys_are_ok_when_a_ticket_is_issued_and_unknown_without_one() -> None:
    issued = judge(base_runs(ticket(True)), scans=scans_with(encryption_types=0x4))[
        Cause.KERBEROS_KEYS
    ]
    assert issued.state is State.OK
    assert any("at risk: RC4-HMAC is its only encryption type" in line for line in issued.evidence)
    healthy = judge(base_runs(ticket(True)), scans=scans_with(encryption_types=0x1C))
    assert healthy[Cause.KERBEROS_KEYS].state is State.OK
    assert not any("at risk" in line for line in healthy[Cause.KERBEROS_KEYS].evidence)
    # No service_ticket check at all: no evidence about the keys, never "ok".
    absent = judge(scans=scans_with(encryption_types=0x1C))[Cause.KERBEROS_KEYS]
    assert (absent.state, absent.reason) == (State.UNKNOWN, "no_reading")
    assert "not enabled" in absent.evidence[0]
    # The exporter's own credentials refused: nothing learnt about the server's keys.
    own = judge(base_runs(ticket(False, "preauth_failed")), scans=scans_with())[Cause.KERBEROS_KEYS]
    assert (own.state, own.reason) == (State.UNKNOWN, "no_reading")
    assert f"{DC.name}: preauth_failed" in own.evidence[0]


def test_des_only_is_a_problem_without_any_ticket() -> None:
    verdict = judge(scans=scans_with(encryption_types=0x3))[Cause.KERBEROS_KEYS]
    assert verdict.state is State.PROBLEM
    assert "DES-CBC-CRC, DES-CBC-MD5 (0x3)" in verdict.evidence[0]


def test_a_kdc_unreachable_for_tickets_is_a_blocked_port_even_when_the_probe_answers() -> None:
    found = judge(base_runs(ticket(False, "kdc_unreachable", dc=DC3)), scans=scans_with())
    verdict = found[Cause.KERBEROS_PORTS_BLOCKED]
    assert verdict.state is State.PROBLEM
    assert f"could not reach the KDC of {DC3}" in verdict.evidence[0]
    assert any(f"Test-NetConnection {DC3} -Port 88" in fix for fix in verdict.fix)
    blocked = judge(
        [kerberos((88, "tcp", "timeout")), ticket_run(ticket(False, "kdc_unreachable"))],
        scans=scans_with(),
    )[Cause.KERBEROS_PORTS_BLOCKED]
    assert blocked.state is State.PROBLEM
    assert len(blocked.evidence) == 2 and DC.name in blocked.evidence[1]


def test_a_kdc_refusing_for_skew_is_named_in_the_clock_evidence() -> None:
    runs = [ntp(EXCH, 400.0), ntp(DC, 0.0), ticket_run(ticket(False, "skew"))]
    verdict = judge(runs, scans=scans_with())[Cause.CLOCK_SKEW]
    assert verdict.state is State.PROBLEM
    assert f"the KDC of {DC.name} refused a service ticket for clock skew" in verdict.evidence[-1]


def test_a_failed_ticket_run_is_no_evidence_and_other_servers_tickets_are_not_mine() -> None:
    failed: CheckRun[Any] = CheckRun("service_tickets", EXCH, Failure("timeout", "slow"), 3.0)
    verdict = judge([failed], scans=scans_with())[Cause.KERBEROS_KEYS]
    assert (verdict.state, verdict.reason) == (State.UNKNOWN, "no_reading")
    assert "no service ticket was requested for" in verdict.evidence[0]
    other = Server("exch2.corp.example.test", Role.EXCHANGE)
    runs = [ticket_run(ticket(False, "etype_nosupp", spn="SMTPSVC/exch2.x"), server=other)]
    assert judge(runs, scans=scans_with())[Cause.KERBEROS_KEYS].state is State.UNKNOWN
    # Without the check at all, the evidence says so.
    absent = judge([ntp(EXCH, 0.0)], scans=scans_with())[Cause.KERBEROS_KEYS]
    assert "the service_tickets check is not enabled" in absent.evidence[0]


def test_the_keys_cause_in_metrics_and_edge_servers() -> None:
    found: list[Verdict] = list(
        judge(base_runs(ticket(False, "etype_nosupp")), scans=scans_with()).values()
    )
    text = expose(verdict_metrics(found))
    assert value(text, "exchange_auth_cause", server=EXCH.name, cause="kerberos_keys") == 1
    edge = Server("edge1.dmz.example.test", Role.EXCHANGE, exchange=ExchangeDetails(64, "", ""))
    assert judge(scans={}, server=edge)[Cause.KERBEROS_KEYS].state is State.OK


def test_the_status_page_and_diagnose_show_the_keys_cause() -> None:
    found = list(judge(base_runs(ticket(False, "etype_nosupp")), scans=scans_with()).values())
    page = render_status_page(found, Inventory((DC, EXCH)), "CORP.EXAMPLE.TEST", None)
    assert "kerberos_keys</a> (beyond the KB)</th>" in page
    assert f'data-server="{EXCH.name}" data-cause="kerberos_keys" data-state="problem"' in page
    assert "klist purge -li 0x3e7" in page
    document = json.loads(render_json(Report(0.0, 0.1, found)))
    jsonschema.validate(document, SCHEMA)
    (server,) = document["servers"]
    keys = next(c for c in server["causes"] if c["cause"] == "kerberos_keys")
    assert (keys["kind"], keys["state"]) == ("cause", "problem")


# --- the exporter's own TGT failing (phase tgt) is never the Exchange server's problem --------


def test_the_exporters_own_tgt_failing_is_no_keys_or_spn_problem() -> None:
    """Even should an older reader hand over the TGT's own reason (our account lacking a key
    for the configured types, or our principal unknown), no Set-ADComputer for EXCH1."""
    for reason in ("etype_nosupp", "principal_unknown", "no_credentials"):
        runs = base_runs(
            ticket(False, reason, phase="tgt"), ticket(False, reason, dc=DC3, phase="tgt")
        )
        found = judge(runs, scans=scans_with(encryption_types=0x4))
        keys = found[Cause.KERBEROS_KEYS]
        assert (keys.state, keys.reason) == (State.UNKNOWN, "no_reading"), reason
        assert not any("Set-ADComputer" in fix for fix in keys.fix)
        assert f"{DC.name}: {reason} (the exporter's own TGT)" in keys.evidence[0]
        assert found[Cause.SPN_MISSING].state is State.OK, reason
        assert found[Cause.SPN_DUPLICATE].state is State.OK, reason
    # Without an SPN scan, the tickets alone: still nothing refused.
    alone = judge(base_runs(ticket(False, "principal_unknown", phase="tgt")), scans={})
    assert alone[Cause.SPN_MISSING].state is State.UNKNOWN


def test_a_kdc_unreachable_for_the_exporters_own_tgt_names_the_dc_port_only() -> None:
    runs = base_runs(ticket(False, "kdc_unreachable", dc=DC3, phase="tgt"))
    found = judge(runs, scans=scans_with())
    ports = found[Cause.KERBEROS_PORTS_BLOCKED]
    assert ports.state is State.PROBLEM
    assert ports.evidence[0] == f"the exporter's own TGT requests could not reach the KDC of {DC3}"
    assert any(f"Test-NetConnection {DC3} -Port 88" in fix for fix in ports.fix)
    assert found[Cause.KERBEROS_KEYS].state is State.UNKNOWN
    assert found[Cause.SPN_MISSING].state is State.OK
    # A DC whose address was not found: no port evidence at all.
    unresolved = base_runs(ticket(False, "kdc_unreachable", dc=DC3, phase="address"))
    assert judge(unresolved, scans=scans_with())[Cause.KERBEROS_PORTS_BLOCKED].state is State.OK


def test_a_kdc_refusing_the_exporters_own_tgt_for_skew_says_so() -> None:
    runs = [ntp(EXCH, 400.0), ntp(DC, 0.0), ticket_run(ticket(False, "skew", phase="tgt"))]
    verdict = judge(runs, scans=scans_with())[Cause.CLOCK_SKEW]
    assert (
        f"the KDC of {DC.name} refused the exporter's own TGT for clock skew"
        in (verdict.evidence[-1])
    )
