"""Pure parts of the LDAP checks: duplicate grouping, expected SPNs, Exchange objects, times."""

from __future__ import annotations

import pytest
from ldap3.core import exceptions as ldap_errors
from pydantic import SecretStr

from exporter.background import ScanState
from exporter.checks.ldap_clock import parse_generalized_time
from exporter.checks.spn import (
    MAX_OWNER_SERIES,
    SERVER_SPN_SCAN,
    Account,
    Duplicates,
    Krbtgt,
    ServerAccounts,
    _duplicate_metrics,
    expected_spns,
    find_duplicates,
)
from exporter.config import load_text
from exporter.inventory import Inventory
from exporter.ldap import LdapEntry, _reason
from exporter.ldap_discovery import parse_directory
from exporter.servers import ExchangeDetails, Role, Server
from tests.metrics_text import expose, value

EXCH = "CN=EXCH1,CN=Servers,CN=Exchange Administrative Group (FYDIBOHF23SPDLT),CN=Administrative Groups,CN=Corp,CN=Microsoft Exchange,CN=Services,CN=Configuration,DC=corp,DC=example,DC=test"


def entry(dn: str, **attributes: list[str]) -> LdapEntry:
    return LdapEntry(dn, dict(attributes))


def test_duplicates_are_found_case_insensitively_with_every_owner() -> None:
    entries = [
        entry(
            "CN=EXCH3,DC=x",
            servicePrincipalName=["SMTPSVC/exch3.x", "SMTP/exch3.x", "HOST/exch3.x"],
        ),
        entry("CN=svc-legacy,DC=x", servicePrincipalName=["SMTPSVC/exch3.x"]),
        entry("CN=OLD,DC=x", servicePrincipalName=["smtp/EXCH3.x", "HTTP/old.x"]),
        entry("CN=third,DC=x", servicePrincipalName=["SmtpSvc/Exch3.X"]),
    ]
    objects, values, owners = find_duplicates(entries)
    assert (objects, values) == (4, 7)
    assert owners == {
        "smtpsvc/exch3.x": (
            "SMTPSVC/exch3.x",
            ("CN=EXCH3,DC=x", "CN=svc-legacy,DC=x", "CN=third,DC=x"),
        ),
        "smtp/exch3.x": ("SMTP/exch3.x", ("CN=EXCH3,DC=x", "CN=OLD,DC=x")),
    }


def test_no_duplicates_in_a_clean_forest() -> None:
    entries = [
        entry(f"CN=S{i},DC=x", servicePrincipalName=[f"HOST/s{i}.x", f"HOST/S{i}"])
        for i in range(50)
    ]
    assert find_duplicates(entries) == (50, 100, {})


def test_expected_spns_follow_setspn() -> None:
    server = Server("exch1.corp.example.test", Role.EXCHANGE)
    assert expected_spns(server, ["SMTP", "SMTPSVC"]) == [
        "SMTP/EXCH1",
        "SMTP/exch1.corp.example.test",
        "SMTPSVC/EXCH1",
        "SMTPSVC/exch1.corp.example.test",
    ]


def test_exchange_objects_become_servers_with_their_connectors() -> None:
    entries = [
        entry(
            EXCH,
            objectClass=["top", "server", "msExchExchangeServer"],
            cn=["EXCH1"],
            networkAddress=[
                "netbios:EXCH1",
                "ncacn_ip_tcp:EXCH1.corp.example.test",
                "ncalrpc:EXCH1",
            ],
            msExchCurrentServerRoles=["38"],
            serialNumber=["Version 15.2 (Build 1544.4)"],
            msExchServerSite=[
                "CN=Branch-Site,CN=Sites,CN=Configuration,DC=corp,DC=example,DC=test"
            ],
        ),
        entry(
            f"CN=Default EXCH1,CN=SMTP Receive Connectors,CN=Protocols,{EXCH}",
            objectClass=["msExchSmtpReceiveConnector"],
            cn=["Default EXCH1"],
            msExchSMTPReceiveInboundSecurityFlag=["29"],
        ),
        entry(
            f"CN=Client EXCH1,CN=SMTP Receive Connectors,CN=Protocols,{EXCH}",
            objectClass=["msExchSmtpReceiveConnector"],
            cn=["Client EXCH1"],
            msExchSMTPReceiveInboundSecurityFlag=["13"],
        ),
        entry(
            EXCH.replace("EXCH1", "EDGE1"),
            objectClass=["msExchExchangeServer"],
            networkAddress=["ncacn_ip_tcp:edge1.dmz.example.test"],
            msExchCurrentServerRoles=["64"],
        ),
        entry(
            EXCH.replace("EXCH1", "NOADDR"),
            objectClass=["msExchExchangeServer"],
            networkAddress=["netbios:NOADDR"],
        ),
    ]
    exch1, edge = parse_directory(entries)
    assert exch1.name == "exch1.corp.example.test"
    assert exch1.origin == "ldap"
    assert exch1.exchange is not None
    assert exch1.exchange.role_names == "Mailbox,ClientAccess,HubTransport"
    assert exch1.exchange.version == "Version 15.2 (Build 1544.4)"
    assert exch1.exchange.site == "Branch-Site"
    assert not exch1.exchange.edge
    assert {(c.name, c.exchange_server_auth) for c in exch1.exchange.connectors} == {
        ("Default EXCH1", True),
        ("Client EXCH1", False),
    }
    assert edge.exchange is not None
    assert edge.exchange.edge
    assert edge.exchange.connectors == ()


@pytest.mark.parametrize(
    ("text", "unix"),
    [
        ("20261129111100.0Z", 1795950660.0),
        ("20261129111100Z", 1795950660.0),
        ("20261129111100.5Z", 1795950660.5),
    ],
)
def test_generalized_time(text: str, unix: float) -> None:
    assert parse_generalized_time(text) == unix


@pytest.mark.parametrize("text", ["20261129111100", "garbage", "2026112911Z"])
def test_generalized_time_rejects(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        parse_generalized_time(text)


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ldap_errors.LDAPInvalidCredentialsResult("invalidCredentials hunter2"), "bind_failed"),
        (
            ldap_errors.LDAPSocketOpenError("socket ssl wrapping error: certificate verify failed"),
            "tls_failed",
        ),
        (
            ldap_errors.LDAPSocketOpenError("socket connection error while opening: timed out"),
            "timeout",
        ),
        (ldap_errors.LDAPSocketOpenError("[Errno 111] Connection refused"), "unreachable"),
        (ldap_errors.LDAPStartTLSError("wrap socket error"), "tls_failed"),
    ],
)
def test_ldap_failures_get_bounded_reasons_and_never_the_password(
    exc: Exception, reason: str
) -> None:
    error = _reason(exc, SecretStr("hunter2"))
    assert error.reason == reason
    assert "hunter2" not in str(error)


def test_server_spn_metrics_explain_a_missing_account() -> None:
    settings = load_text("realm: corp.example.test\n")
    servers = (
        Server("exch1.corp.example.test", Role.EXCHANGE),
        Server("exch2.corp.example.test", Role.EXCHANGE),
        Server("edge1.corp.example.test", Role.EXCHANGE, exchange=ExchangeDetails(64, "", "")),
    )
    account = Account(
        "CN=EXCH1,DC=x",
        "EXCH1$",
        "exch1.corp.example.test",
        ("smtp/exch1", "SMTPSVC/EXCH1.corp.example.test"),
    )
    state = ScanState(
        result=ServerAccounts({"exch1.corp.example.test": account, "exch2.corp.example.test": None})
    )
    text = expose(SERVER_SPN_SCAN.emit(state, settings, Inventory(servers)))
    exch1 = "exch1.corp.example.test"
    assert value(text, "exchange_auth_computer_account_found", server=exch1) == 1
    assert value(text, "exchange_auth_spn_present", server=exch1, spn="SMTP/EXCH1") == 1
    assert (
        value(
            text, "exchange_auth_spn_present", server=exch1, spn="SMTPSVC/exch1.corp.example.test"
        )
        == 1
    )
    assert value(text, "exchange_auth_spn_present", server=exch1, spn="SMTPSVC/EXCH1") == 0
    assert value(text, "exchange_auth_spn_count", server=exch1, service_class="SMTP") == 1
    assert (
        value(text, "exchange_auth_computer_account_found", server="exch2.corp.example.test") == 0
    )
    assert (
        value(text, "exchange_auth_computer_account_found", server="edge1.corp.example.test")
        is None
    )


def test_duplicate_owner_series_are_capped() -> None:
    settings = load_text("realm: corp.example.test\n")
    owners = {
        f"http/web{i}.x": (f"HTTP/web{i}.x", (f"CN=A{i},DC=x", f"CN=B{i},DC=x")) for i in range(400)
    }
    owners["smtpsvc/exch3.x"] = ("SMTPSVC/exch3.x", ("CN=EXCH3,DC=x", "CN=svc,DC=x"))
    state = ScanState(result=Duplicates("forest", 800, 1600, owners))
    text = expose(_duplicate_metrics(state, settings, Inventory(())))
    assert value(text, "exchange_auth_spn_duplicates", service_class="HTTP") == 400
    assert value(text, "exchange_auth_spn_duplicates", service_class="SMTPSVC") == 1
    assert value(text, "exchange_auth_spn_duplicates", service_class="SMTP") == 0
    assert value(text, "exchange_auth_spn_duplicate_owner_info_truncated") == 1
    assert text.count("exchange_auth_spn_duplicate_owner_info{") == MAX_OWNER_SERIES
    # The classes Exchange needs come first, so the cap never hides them.
    assert (
        value(
            text,
            "exchange_auth_spn_duplicate_owner_info",
            spn="SMTPSVC/exch3.x",
            account="CN=svc,DC=x",
        )
        == 1
    )


def test_encryption_type_metrics_from_the_spn_scan() -> None:
    settings = load_text("realm: corp.example.test\n")
    names = ("exch1", "rc4only", "aes", "other", "gone")
    servers = tuple(Server(f"{n}.corp.example.test", Role.EXCHANGE) for n in names)
    accounts: dict[str, Account | None] = {
        "exch1.corp.example.test": Account("CN=EXCH1,DC=x", "EXCH1$", "", (), None, True),
        "rc4only.corp.example.test": Account("CN=RC4ONLY,DC=x", "RC4ONLY$", "", (), 0x4, True),
        "aes.corp.example.test": Account("CN=AES,DC=x", "AES$", "", (), 0x18, True),
        # In another domain of the forest: found through the GC, attribute not read.
        "other.corp.example.test": Account("CN=OTHER,DC=child", "OTHER$", "", (), None, False),
        "gone.corp.example.test": None,
    }
    state = ScanState(result=ServerAccounts(accounts, Krbtgt("CN=krbtgt,DC=x", None)))
    text = expose(SERVER_SPN_SCAN.emit(state, settings, Inventory(servers)))

    def at(metric: str, name: str) -> float | None:
        return value(text, metric, server=f"{name}.corp.example.test")

    # Unset: the KDC's default, flagged as not set, and not RC4-only (it follows the default).
    assert at("exchange_auth_account_encryption_types", "exch1") == 0x27
    assert at("exchange_auth_account_encryption_types_set", "exch1") == 0
    assert at("exchange_auth_account_rc4_only", "exch1") == 0
    assert at("exchange_auth_account_aes_missing", "exch1") == 0
    assert at("exchange_auth_account_encryption_types", "rc4only") == 4
    assert at("exchange_auth_account_encryption_types_set", "rc4only") == 1
    assert at("exchange_auth_account_rc4_only", "rc4only") == 1
    assert at("exchange_auth_account_aes_missing", "rc4only") == 1
    assert at("exchange_auth_account_rc4_only", "aes") == 0
    assert at("exchange_auth_account_aes_missing", "aes") == 0
    for unread in ("other", "gone"):
        assert at("exchange_auth_account_encryption_types", unread) is None
        assert at("exchange_auth_account_rc4_only", unread) is None
    assert value(text, "exchange_auth_krbtgt_encryption_types") == 0x18
    assert value(text, "exchange_auth_krbtgt_encryption_types_set") == 0
    assert value(text, "exchange_auth_krbtgt_rc4_only") == 0
    # The KDCs' default comes from the config.
    aes_default = load_text(
        "realm: corp.example.test\nchecks: {spn: {default_encryption_types: 0x18}}\n"
    )
    text = expose(SERVER_SPN_SCAN.emit(state, aes_default, Inventory(servers)))
    assert (
        value(text, "exchange_auth_account_encryption_types", server="exch1.corp.example.test")
        == 0x18
    )
    rc4_krbtgt = ScanState(result=ServerAccounts({}, Krbtgt("CN=krbtgt,DC=x", 0x4)))
    text = expose(SERVER_SPN_SCAN.emit(rc4_krbtgt, settings, Inventory(())))
    assert value(text, "exchange_auth_krbtgt_encryption_types") == 4
    assert value(text, "exchange_auth_krbtgt_encryption_types_set") == 1
    assert value(text, "exchange_auth_krbtgt_rc4_only") == 1
    assert value(text, "exchange_auth_krbtgt_aes_missing") == 1
