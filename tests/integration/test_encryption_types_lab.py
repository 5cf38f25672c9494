"""msDS-SupportedEncryptionTypes of each Exchange server's account, and krbtgt's, from the lab;
and the service tickets as evidence in the verdicts.

EXCH1$ has the attribute unset (the KDC's default applies); RC4ONLY$ (not an Exchange server:
a static ``exchange_servers`` entry points at it) allows RC4-HMAC only; NOKEYS$ has no keys at
all; krbtgt is unset.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.protocols import enctypes
from tests.integration.test_directory_lab import running, scans_done
from tests.lab import Lab
from tests.metrics_text import value

pytestmark = pytest.mark.lab


def rc4only_name(lab: Lab) -> str:
    name = lab.exchange_directory.account("RC4ONLY$").dns_host_name
    assert name is not None
    return name


def config_with_rc4only(lab: Lab, **ldap: Any) -> dict[str, Any]:
    config = lab.directory_exporter_config(ldap=ldap) if ldap else lab.directory_exporter_config()
    account = lab.exchange_directory.account("RC4ONLY$")
    assert account.supported_encryption_types == enctypes.RC4_HMAC
    assert account.dns_host_name is not None
    config["exchange_servers"]["static"].append({"name": account.dns_host_name})
    return config


def assert_lab_encryption_types(lab: Lab, text: str) -> None:
    directory = lab.exchange_directory
    exch1 = directory.server("EXCH1")
    assert directory.account("EXCH1$").supported_encryption_types is None
    # Unset: the KDC's default (0x27), said to be unset, not flagged: it follows the KDCs.
    assert value(text, "exchange_auth_account_encryption_types", server=exch1.fqdn) == 0x27
    assert value(text, "exchange_auth_account_encryption_types_set", server=exch1.fqdn) == 0
    assert value(text, "exchange_auth_account_rc4_only", server=exch1.fqdn) == 0
    assert value(text, "exchange_auth_account_aes_missing", server=exch1.fqdn) == 0
    rc4only = rc4only_name(lab)
    assert value(text, "exchange_auth_account_encryption_types", server=rc4only) == 4
    assert value(text, "exchange_auth_account_encryption_types_set", server=rc4only) == 1
    assert value(text, "exchange_auth_account_rc4_only", server=rc4only) == 1
    assert value(text, "exchange_auth_account_aes_missing", server=rc4only) == 1
    # Every member server is read; the Edge server has no account and no series.
    for server in directory.members:
        assert value(text, "exchange_auth_account_encryption_types", server=server.fqdn), server
    edge = directory.server("EDGE1").fqdn
    assert value(text, "exchange_auth_account_encryption_types", server=edge) is None
    # krbtgt: unset in a fresh domain; the KDC encrypts TGTs with its AES key.
    assert value(text, "exchange_auth_krbtgt_encryption_types") == 0x18
    assert value(text, "exchange_auth_krbtgt_encryption_types_set") == 0
    assert value(text, "exchange_auth_krbtgt_rc4_only") == 0
    assert value(text, "exchange_auth_krbtgt_aes_missing") == 0


def test_encryption_types_through_the_global_catalog(lab: Lab, tmp_path: Path) -> None:
    # Accounts are found through the GC, their encryption types read from the domain's DC
    # (an AD Global Catalog does not hold msDS-SupportedEncryptionTypes).
    with running(tmp_path, config_with_rc4only(lab)) as exporter:
        text = exporter.scrape_until(scans_done)
    assert value(text, "exchange_auth_spn_duplicate_scan_scope", scope="forest") == 1
    assert_lab_encryption_types(lab, text)


def test_encryption_types_without_a_global_catalog(lab: Lab, tmp_path: Path) -> None:
    with running(tmp_path, config_with_rc4only(lab, global_catalog_url=None)) as exporter:
        text = exporter.scrape_until(scans_done)
    assert value(text, "exchange_auth_spn_duplicate_scan_scope", scope="domain") == 1
    assert_lab_encryption_types(lab, text)


def test_the_kdcs_default_comes_from_the_config(lab: Lab, tmp_path: Path) -> None:
    config = config_with_rc4only(lab)
    config["checks"]["spn"] = {"default_encryption_types": 0x18}
    with running(tmp_path, config) as exporter:
        text = exporter.scrape_until(scans_done)
    exch1 = lab.exchange_directory.server("EXCH1").fqdn
    assert value(text, "exchange_auth_account_encryption_types", server=exch1) == 0x18
    assert value(text, "exchange_auth_account_encryption_types", server=rc4only_name(lab)) == 4


def diagnose(lab: Lab, tmp_path: Path, **tickets: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """``diagnose --output json`` with RC4ONLY and NOKEYS as Exchange servers, dc1 as the only DC:
    per server, per cause, the verdict."""
    config = config_with_rc4only(lab)
    nokeys = lab.exchange_directory.account("NOKEYS$")
    assert not nokeys.has_keys
    config["exchange_servers"]["static"].append({"name": nokeys.dns_host_name})
    config["domain_controllers"] = {"static": [{"name": lab.dc.name, "address": lab.dc.address}]}
    if tickets:
        config["checks"]["service_tickets"] = tickets
    path = tmp_path / "exporter.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "diagnose", f"--config.file={path}", "--output=json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    document = json.loads(result.stdout)
    return {
        entry["server"]: {c["cause"]: c for c in entry["causes"]} for entry in document["servers"]
    }


def test_ticket_evidence_in_the_verdicts(lab: Lab, tmp_path: Path) -> None:
    found = diagnose(lab, tmp_path)
    directory = lab.exchange_directory
    dc = lab.dc.name
    # No keys at all: the KDC refuses, naming the DC; a new password is the fix.
    keys = found["nokeys.corp.example.test"]["kerberos_keys"]
    assert keys["state"] == "problem", keys
    assert (
        f"refused by {dc}: no key of a usable encryption type (KDC_ERR_ETYPE_NOSUPP)"
        in (keys["evidence"][0])
    )
    assert any("Reset-ComputerMachinePassword" in fix for fix in keys["fix"])
    assert not any("Set-ADComputer" in fix for fix in keys["fix"])  # unset: the types are not it
    assert found["nokeys.corp.example.test"]["spn_missing"]["state"] == "ok"
    # RC4 only: tickets still come (the exporter permits RC4, as Windows does), with a warning.
    rc4 = found[rc4only_name(lab)]["kerberos_keys"]
    assert rc4["state"] == "ok", rc4
    assert any("at risk: RC4-HMAC is its only encryption type" in line for line in rc4["evidence"])
    assert found[directory.server("EXCH1").fqdn]["kerberos_keys"]["state"] == "ok"
    # The missing SPN is refused by the KDC too; the duplicated ones as well.
    exch2 = found[directory.server("EXCH2").fqdn]["spn_missing"]
    assert exch2["state"] == "problem"
    assert f"service ticket for SMTPSVC/exch2.corp.example.test refused by {dc}" in "\n".join(
        exch2["evidence"]
    )
    exch3 = found[directory.server("EXCH3").fqdn]
    assert exch3["spn_duplicate"]["state"] == "problem"
    assert f"service ticket for SMTPSVC/exch3.corp.example.test refused by {dc}" in "\n".join(
        exch3["spn_duplicate"]["evidence"]
    )
    assert exch3["spn_missing"]["state"] == "ok"  # held, and a duplicate: not "missing"


def test_an_rc4_only_account_fails_once_rc4_is_refused(lab: Lab, tmp_path: Path) -> None:
    # The client side of a hardened realm: AES only. RC4ONLY's tickets are refused; the fix is
    # to allow AES on the account.
    aes_only = ["aes256-cts-hmac-sha1-96", "aes128-cts-hmac-sha1-96"]
    keys = diagnose(lab, tmp_path, encryption_types=aes_only)[rc4only_name(lab)]["kerberos_keys"]
    assert keys["state"] == "problem", keys
    assert "RC4ONLY$ msDS-SupportedEncryptionTypes RC4-HMAC (0x4)" in keys["evidence"]
    assert any(
        "Set-ADComputer RC4ONLY -KerberosEncryptionType AES128,AES256" in fix for fix in keys["fix"]
    )
