"""Service tickets through the lab's real Samba KDCs: what Exchange asks before X-EXPS GSSAPI.

The lab's domain holds EXCH1$ (every SPN), EXCH2$ (SMTPSVC/<fqdn> missing), EXCH3$ (both FQDN
SPNs also held by another account), RC4ONLY$ (msDS-SupportedEncryptionTypes 4) and NOKEYS$
(SPNs, no keys); dc1 and dc3 are real DCs, dc2 a KDC 420 s ahead (libfaketime), dc9 dead.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.exporter_process import ExporterProcess, exporter_process
from tests.lab import Lab
from tests.metrics_text import series, value

pytestmark = pytest.mark.lab

OTHER_CHECKS = ("clock", "kerberos", "smtp", "spn", "duplicate_spn", "replication")
TICKET_OK = "exchange_auth_service_ticket_ok"
TICKET_FAILURE = "exchange_auth_service_ticket_failure"


def config_for(
    lab: Lab,
    exchange: list[dict[str, str]] | None = None,
    dcs: list[dict[str, str]] | None = None,
    **tickets: Any,
) -> dict[str, Any]:
    """The lab's config with only this check on; ``exchange``/``dcs``: static entries."""
    domain = lab.exchange_directory.dns_domain
    if exchange is None:
        exchange = [s.static_entry for s in lab.smtp_servers] + [
            {"name": f"rc4only.{domain}"},
            {"name": f"nokeys.{domain}"},
        ]
    checks: dict[str, Any] = {name: {"enabled": False} for name in OTHER_CHECKS}
    checks["service_tickets"] = {"timeout": "8s", **tickets}
    return lab.exporter_config(
        domain_controllers={
            "discover": "none",
            "static": dcs if dcs is not None else [h.static_entry for h in lab.domain_controllers],
        },
        exchange_servers={"discover": "none", "static": exchange},
        checks=checks,
    )


@contextmanager
def running(tmp_path: Path, config: dict[str, Any]) -> Iterator[ExporterProcess]:
    path = tmp_path / "exporter.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with exporter_process(path, tmp_path / "exporter.log") as exporter:
        yield exporter


def scrape(exporter: ExporterProcess, timeout: str = "10") -> tuple[str, float]:
    started = time.monotonic()
    status, text = exporter.get("/metrics", {"X-Prometheus-Scrape-Timeout-Seconds": timeout})
    assert status == 200, text
    return text, time.monotonic() - started


def spn_labels(server: str, service: str, dc: str) -> dict[str, str]:
    return {"server": server, "spn": f"{service}/{server}", "domain_controller": dc}


def reason_of(text: str, server: str, service: str, dc: str) -> str | None:
    """The failure reason of one ticket, None when it was issued."""
    labels = spn_labels(server, service, dc)
    if value(text, TICKET_OK, **labels) == 1:
        assert not [s for s in series(text, TICKET_FAILURE) if s.items() >= labels.items()]
        return None
    (failure,) = [s for s in series(text, TICKET_FAILURE) if s.items() >= labels.items()]
    assert value(text, TICKET_OK, **labels) == 0
    return failure["reason"]


@pytest.fixture(scope="module")
def lab_scrape(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One scrape of every lab Exchange server, RC4ONLY and NOKEYS through dc1, dc2 and dc3."""
    with running(tmp_path_factory.mktemp("tickets"), config_for(lab)) as exporter:
        # Right after the lab starts, a KDC may still be busy (dc3 replicating): wait for
        # every DC to answer in time, so the tests below see answers, not timeouts.
        return exporter.scrape_until(
            lambda text: not any(s["reason"] == "timeout" for s in series(text, TICKET_FAILURE)),
            timeout=30,
        )


def test_the_healthy_server_gets_its_tickets_through_each_dc(lab: Lab, lab_scrape: str) -> None:
    exch1 = lab.exchange_directory.server("EXCH1").fqdn
    assert lab.replica_dc in lab.domain_controllers
    for dc in (lab.dc, lab.replica_dc):
        for service in ("SMTPSVC", "SMTP"):
            labels = spn_labels(exch1, service, dc.name)
            assert reason_of(lab_scrape, exch1, service, dc.name) is None, labels
            took = value(lab_scrape, "exchange_auth_service_ticket_duration_seconds", **labels)
            assert took is not None and 0 < took < 2
        assert value(lab_scrape, "exchange_auth_kerberos_credentials_ok", domain_controller=dc.name)
        expiry = value(
            lab_scrape,
            "exchange_auth_kerberos_credentials_expiry_timestamp_seconds",
            domain_controller=dc.name,
        )
        # Samba's default user ticket lifetime: 10 hours.
        assert expiry == pytest.approx(time.time() + 36000, abs=600)
    assert value(lab_scrape, "exchange_auth_check_success", check="service_tickets", server=exch1)


def test_a_missing_spn_is_principal_unknown(lab: Lab, lab_scrape: str) -> None:
    directory = lab.exchange_directory
    exch2 = directory.server("EXCH2").fqdn
    assert directory.missing_spns("EXCH2") == (f"SMTPSVC/{exch2}",)
    for dc in (lab.dc, lab.replica_dc):
        assert reason_of(lab_scrape, exch2, "SMTPSVC", dc.name) == "principal_unknown"
        labels = spn_labels(exch2, "SMTPSVC", dc.name)
        # KDC_ERR_S_PRINCIPAL_UNKNOWN, as Exchange's event 2017 would report.
        assert value(lab_scrape, "exchange_auth_service_ticket_error_code", **labels) == 7
        assert reason_of(lab_scrape, exch2, "SMTP", dc.name) is None


def test_a_duplicated_spn_is_principal_unknown(lab: Lab, lab_scrape: str) -> None:
    directory = lab.exchange_directory
    exch3 = directory.server("EXCH3").fqdn
    duplicated = {d.spn for d in directory.duplicate_spns}
    assert duplicated == {f"smtp/{exch3}", f"smtpsvc/{exch3}"}
    for service in ("SMTPSVC", "SMTP"):  # exact duplicate, and one in other letter case
        assert reason_of(lab_scrape, exch3, service, lab.dc.name) == "principal_unknown"
    # Each KDC answers from its own replica: svc-legacy's copy was written into dc1's file
    # beside replication and never reached dc3, where SMTPSVC/exch3 is held once, while
    # OLDEXCH$'s (an attribute that replicated whole) is there too.
    assert reason_of(lab_scrape, exch3, "SMTP", lab.replica_dc.name) == "principal_unknown"
    assert reason_of(lab_scrape, exch3, "SMTPSVC", lab.replica_dc.name) is None


def test_an_spn_on_an_account_without_keys_is_etype_nosupp(lab: Lab, lab_scrape: str) -> None:
    nokeys = lab.exchange_directory.account("NOKEYS$")
    assert not nokeys.has_keys and nokeys.dns_host_name is not None
    for service in ("SMTPSVC", "SMTP"):
        assert reason_of(lab_scrape, nokeys.dns_host_name, service, lab.dc.name) == "etype_nosupp"
        labels = spn_labels(nokeys.dns_host_name, service, lab.dc.name)
        assert value(lab_scrape, "exchange_auth_service_ticket_error_code", **labels) == 14


def test_an_rc4_only_account_gets_tickets_while_rc4_is_allowed(lab: Lab, lab_scrape: str) -> None:
    rc4 = lab.exchange_directory.account("RC4ONLY$")
    assert rc4.supported_encryption_types == 4 and rc4.dns_host_name is not None
    for service in ("SMTPSVC", "SMTP"):
        assert reason_of(lab_scrape, rc4.dns_host_name, service, lab.dc.name) is None


def test_a_kdc_seven_minutes_ahead_is_skew(lab: Lab, lab_scrape: str) -> None:
    exch1 = lab.exchange_directory.server("EXCH1").fqdn
    skewed = lab.skewed_dc.name
    for service in ("SMTPSVC", "SMTP"):
        assert reason_of(lab_scrape, exch1, service, skewed) == "skew"
    # The exporter's own TGT already fails there: kdc_timesync = 0, no silent correction.
    assert value(lab_scrape, "exchange_auth_kerberos_credentials_ok", domain_controller=skewed) == 0
    assert (
        value(
            lab_scrape,
            "exchange_auth_kerberos_credentials_failure",
            domain_controller=skewed,
            reason="skew",
        )
        == 1
    )
    labels = spn_labels(exch1, "SMTPSVC", skewed)
    assert value(lab_scrape, "exchange_auth_service_ticket_error_code", **labels) == 37


def test_an_aes_only_exporter_is_refused_by_the_rc4_only_account(lab: Lab, tmp_path: Path) -> None:
    domain = lab.exchange_directory.dns_domain
    config = config_for(
        lab,
        exchange=[{"name": f"rc4only.{domain}"}, {"name": f"exch1.{domain}"}],
        dcs=[lab.dc.static_entry],
        encryption_types=["aes256-cts-hmac-sha1-96", "aes128-cts-hmac-sha1-96"],
    )
    with running(tmp_path, config) as exporter:
        text, _ = scrape(exporter)
    assert reason_of(text, f"rc4only.{domain}", "SMTPSVC", lab.dc.name) == "etype_nosupp"
    # EXCH1$ has AES keys: its tickets still come (with an AES session key).
    assert reason_of(text, f"exch1.{domain}", "SMTPSVC", lab.dc.name) is None


def test_a_wrong_password_is_preauth_failed_and_never_shown(lab: Lab, tmp_path: Path) -> None:
    wrong = f"Wrong!{secrets.token_hex(8)}"
    password_file = tmp_path / "wrong-password"
    password_file.write_text(wrong)
    config = config_for(
        lab, exchange=[lab.exchange_servers[0].static_entry], dcs=[lab.dc.static_entry]
    )
    config["ldap"]["password_file"] = str(password_file)
    with running(tmp_path, config) as exporter:
        text, _ = scrape(exporter)
        _, shown_config = exporter.get("/config")
        log = exporter.log()
    exch1 = lab.exchange_servers[0].name
    for service in ("SMTPSVC", "SMTP"):
        assert reason_of(text, exch1, service, lab.dc.name) == "preauth_failed"
    assert (
        value(
            text,
            "exchange_auth_kerberos_credentials_failure",
            domain_controller=lab.dc.name,
            reason="preauth_failed",
        )
        == 1
    )
    for where in (text, shown_config, log):
        assert wrong not in where


def bad_password_count(lab: Lab, address: str, account: str) -> int | None:
    """The account's badPwdCount on one DC (not replicated: each DC counts its own), read over
    LDAP as Administrator; None while the account has not reached that DC."""
    conn = lab.admin_ldap(f"ldaps://{address}:636")
    try:
        base = ",".join(f"DC={part}" for part in lab.realm.lower().split("."))
        conn.search(base, f"(sAMAccountName={account})", attributes=["badPwdCount"])
        if not conn.entries:
            return None
        return int(conn.entries[0].badPwdCount.value or 0)
    finally:
        conn.unbind()


@pytest.fixture
def lockout_account(lab: Lab) -> Iterator[str]:
    """A user of its own (so no other test's account comes near a lockout), present on dc1 and
    dc3, in a domain that counts bad passwords (Samba counts only with a lockout threshold)."""
    name = f"svc-lock-{secrets.token_hex(3)}"
    lab.samba_tool(lab.dc, "user", "create", name, f"Right!{secrets.token_hex(8)}")
    shown = lab.samba_tool(lab.dc, "domain", "passwordsettings", "show").stdout
    found = re.search(r"Account lockout threshold \(attempts\): (\d+)", shown)
    threshold = found.group(1) if found else "0"
    lab.samba_tool(lab.dc, "domain", "passwordsettings", "set", "--account-lockout-threshold=100")
    try:
        deadline = time.monotonic() + 60
        while bad_password_count(lab, lab.replica_dc.address, name) is None:
            assert time.monotonic() < deadline, f"{name} did not replicate to dc3"
            time.sleep(1)
        yield name
    finally:
        lab.samba_tool(
            lab.dc, "domain", "passwordsettings", "set", f"--account-lockout-threshold={threshold}"
        )
        lab.samba_tool(lab.dc, "user", "delete", name, check=False)


def test_a_wrong_password_costs_one_bad_attempt_not_one_per_dc(
    lab: Lab, tmp_path: Path, lockout_account: str
) -> None:
    """Each DC's worker logging in on its own would cost one bad password per DC, every scrape
    after the backoff and every restart: AD locks the (LDAP bind) account after a few."""
    dcs = (lab.dc, lab.replica_dc)

    def bad_attempts() -> int:
        counts = [bad_password_count(lab, dc.address, lockout_account) for dc in dcs]
        return sum(count or 0 for count in counts)

    before = bad_attempts()
    password_file = tmp_path / "wrong-password"
    password_file.write_text(f"Wrong!{secrets.token_hex(8)}")
    exch1 = lab.exchange_servers[0]
    config = config_for(lab, exchange=[exch1.static_entry], dcs=[dc.static_entry for dc in dcs])
    config["ldap"]["user"] = f"{lockout_account}@{lab.realm.lower()}"
    config["ldap"]["password_file"] = str(password_file)
    with running(tmp_path, config) as exporter:
        for _ in range(3):
            text, _ = scrape(exporter)
            for dc in dcs:
                for service in ("SMTPSVC", "SMTP"):
                    assert reason_of(text, exch1.name, service, dc.name) == "preauth_failed"
                failure = value(
                    text,
                    "exchange_auth_kerberos_credentials_failure",
                    domain_controller=dc.name,
                    reason="preauth_failed",
                )
                assert failure == 1, dc.name
    # One login was tried, at one DC, and refused: one bad password, not one per DC or scrape.
    assert bad_attempts() - before == 1


def test_a_keytab_stands_in_for_the_password(lab: Lab, tmp_path: Path) -> None:
    keytab = tmp_path / "exporter.keytab"
    principal = f"Administrator@{lab.realm}"
    lab.samba_tool(lab.dc, "domain", "exportkeytab", str(keytab), f"--principal={principal}")
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not the password")
    config = config_for(
        lab,
        exchange=[lab.exchange_servers[0].static_entry],
        dcs=[lab.dc.static_entry],
        keytab_file=str(keytab),
        principal=principal,
    )
    config["ldap"]["password_file"] = str(wrong)  # so only the keytab can succeed
    with running(tmp_path, config) as exporter:
        text, _ = scrape(exporter)
    exch1 = lab.exchange_servers[0].name
    for service in ("SMTPSVC", "SMTP"):
        assert reason_of(text, exch1, service, lab.dc.name) is None
    assert value(text, "exchange_auth_kerberos_credentials_ok", domain_controller=lab.dc.name) == 1


def test_every_scrape_asks_the_kdc_afresh(lab: Lab, tmp_path: Path) -> None:
    """An SPN removed between two scrapes fails at once: no ticket is answered from a cache."""
    rc4 = lab.exchange_directory.account("RC4ONLY$")
    host = rc4.dns_host_name
    assert host is not None
    spn = f"SMTPSVC/{host}"
    config = config_for(lab, exchange=[{"name": host}], dcs=[lab.dc.static_entry])
    with running(tmp_path, config) as exporter:
        before, _ = scrape(exporter)
        assert reason_of(before, host, "SMTPSVC", lab.dc.name) is None
        lab.samba_tool(lab.dc, "spn", "delete", spn, rc4.sam_account_name)
        try:
            removed, _ = scrape(exporter)
        finally:
            lab.samba_tool(lab.dc, "spn", "add", spn, rc4.sam_account_name)
        back, _ = scrape(exporter)
    assert reason_of(removed, host, "SMTPSVC", lab.dc.name) == "principal_unknown"
    assert reason_of(removed, host, "SMTP", lab.dc.name) is None
    assert reason_of(back, host, "SMTPSVC", lab.dc.name) is None


def test_a_stopped_kdc_is_kdc_unreachable_within_the_deadline(lab: Lab, tmp_path: Path) -> None:
    replica = lab.replica_dc
    exch1 = lab.exchange_servers[0]
    config = config_for(
        lab,
        exchange=[exch1.static_entry],
        dcs=[lab.dc.static_entry, replica.static_entry, lab.dead_dc.static_entry],
        timeout="3s",
    )
    with running(tmp_path, config) as exporter:
        text, _ = scrape(exporter, timeout="4")
        assert reason_of(text, exch1.name, "SMTPSVC", replica.name) is None
        lab.stop_samba(replica)
        try:
            text, took = scrape(exporter, timeout="4")
        finally:
            lab.start_samba(replica)
        # dc3 refuses at once (TCP reset, ICMP port unreachable); dc9 drops UDP, so the deadline
        # ends its wait; dc1 is untouched.
        assert took < 4.0
        for service in ("SMTPSVC", "SMTP"):
            assert reason_of(text, exch1.name, service, replica.name) == "kdc_unreachable"
            assert reason_of(text, exch1.name, service, lab.dead_dc.name) in (
                "kdc_unreachable",
                "timeout",
            )
            assert reason_of(text, exch1.name, service, lab.dc.name) is None
        # Back again: the next scrapes ask dc3 anew and get tickets.
        recovered = exporter.scrape_until(
            lambda t: reason_of(t, exch1.name, "SMTPSVC", replica.name) is None, timeout=30
        )
    assert reason_of(recovered, exch1.name, "SMTP", replica.name) is None


@pytest.mark.timeout(240)  # a TGT's whole lifetime, which Samba wants above two minutes
def test_credentials_are_renewed_across_expiry(lab: Lab, tmp_path: Path) -> None:
    # Samba refuses a TGT with less than about two minutes left (KRB_AP_ERR_TKT_EXPIRED), so
    # 125 s is about as short as a lifetime can be: the worker renews at half its lifetime or
    # when the KDC says so, whichever comes first.
    lifetime = 125.0
    exch1 = lab.exchange_servers[0].name
    config = config_for(
        lab,
        exchange=[lab.exchange_servers[0].static_entry],
        dcs=[lab.dc.static_entry],
        ticket_lifetime="125s",
    )

    def reasons(text: str) -> set[str | None]:
        return {reason_of(text, exch1, service, lab.dc.name) for service in ("SMTPSVC", "SMTP")}

    def expiry(text: str) -> float:
        found = value(
            text,
            "exchange_auth_kerberos_credentials_expiry_timestamp_seconds",
            domain_controller=lab.dc.name,
        )
        assert found is not None
        return found

    with running(tmp_path, config) as exporter:
        started = time.time()
        text = exporter.scrape_until(lambda t: reasons(t) == {None}, timeout=30)
        first = expiry(text)
        assert first == pytest.approx(started + lifetime, abs=35)
        expiries = [first]
        while time.time() < first + 5:
            time.sleep(10)
            text, _ = scrape(exporter)
            # Never a credentials problem; a KDC busy replicating may answer late, though.
            assert reasons(text) <= {None, "timeout"}, time.time() - started
            expiries.append(expiry(text))
        # After the first TGT has ended, tickets still come, with a later TGT.
        last = exporter.scrape_until(lambda t: reasons(t) == {None}, timeout=30)
        assert reasons(last) == {None}
    expiries.append(expiry(last))
    assert expiries == sorted(expiries)
    assert len(set(expiries)) >= 3  # renewed more than once
    assert expiries[-1] > first + 10
