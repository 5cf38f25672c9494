"""SPNs of each Exchange server's computer account, and SPNs held by more than one account.

Both are background scans (``setspn -L`` and ``setspn -X -F`` as time series): the per-server
lookup every ``checks.spn.refresh_interval``, the forest-wide duplicate search every
``checks.duplicate_spn.refresh_interval``. Scrapes report their cached results.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ldap3.utils.conv import escape_filter_chars
from prometheus_client.core import GaugeMetricFamily, Metric

from ..background import Scan, ScanState
from ..config import Settings
from ..inventory import Inventory
from ..ldap import LdapClient, LdapEntry, LdapError, LdapTarget, client_for, run_in_ldap_thread
from ..protocols import enctypes
from ..servers import Server

__all__ = [
    "DUPLICATE_SCAN",
    "SERVER_SPN_SCAN",
    "Account",
    "Duplicates",
    "Krbtgt",
    "ServerAccounts",
    "expected_spns",
    "find_duplicates",
]

log = logging.getLogger(__name__)

# Owner series are one per (SPN, account): a forest full of duplicates must not flood Prometheus.
MAX_OWNER_SERIES = 500
_SERVERS_PER_SEARCH = 50


@dataclass(frozen=True, slots=True)
class Account:
    dn: str
    sam_account_name: str
    dns_host_name: str
    spns: tuple[str, ...]
    # msDS-SupportedEncryptionTypes; None when unset (or 0: the KDC's default applies then).
    encryption_types: int | None = None
    # False when it could not be read: the account is outside the configured DC's domain.
    encryption_types_read: bool = False

    def effective_encryption_types(self, default: int) -> int | None:
        """What the KDC uses for this account's tickets; None when the attribute was not read."""
        return (
            enctypes.effective(self.encryption_types, default)
            if self.encryption_types_read
            else None
        )


@dataclass(frozen=True)
class Krbtgt:
    """The realm's krbtgt account: its msDS-SupportedEncryptionTypes (None when unset)."""

    dn: str
    encryption_types: int | None


@dataclass(frozen=True)
class ServerAccounts:
    """Per Exchange server (by name): its computer account, or None when there is none."""

    accounts: dict[str, Account | None]
    krbtgt: Krbtgt | None = None  # None: not found in the configured DC's domain


@dataclass(frozen=True)
class Duplicates:
    scope: str  # forest (Global Catalog) or domain (the configured DC's domain NC only)
    objects: int
    spns: int
    # case-folded SPN -> (the SPN as the first owner spells it, every owner's DN)
    owners: Mapping[str, tuple[str, tuple[str, ...]]]


def short_name(server: Server) -> str:
    return server.name.split(".", 1)[0].upper()


def expected_spns(server: Server, service_classes: Sequence[str]) -> list[str]:
    """SMTP/EXCH1, SMTP/exch1.corp.example.com, SMTPSVC/... as Exchange registers them."""
    return [
        f"{cls}/{name}" for cls in service_classes for name in (short_name(server), server.name)
    ]


def _needs_account(server: Server) -> bool:
    return server.exchange is None or not server.exchange.edge


def _search_target(settings: Settings) -> tuple[LdapClient, str | None]:
    """The Global Catalog when configured (whole forest, base ""), else the configured DC."""
    if settings.ldap is None:
        raise LdapError("search_failed", "no ldap section configured")
    gc = settings.ldap.global_catalog_url
    if gc:
        return client_for(LdapTarget.from_settings(settings.ldap, gc)), ""
    return client_for(LdapTarget.from_settings(settings.ldap)), None


def default_naming_context(client: LdapClient, deadline: float) -> str:
    base = client.root_dse(["defaultNamingContext"], deadline).first("defaultNamingContext")
    if not base:
        raise LdapError("search_failed", "rootDSE has no defaultNamingContext")
    return base


ENCRYPTION_TYPES = "msDS-SupportedEncryptionTypes"
_ACCOUNT_ATTRIBUTES = ["sAMAccountName", "dNSHostName", "servicePrincipalName"]
_KRBTGT = "(&(objectCategory=person)(objectClass=user)(sAMAccountName=krbtgt))"
# krbtgt's attribute is normally unset: the KDC then encrypts TGTs with krbtgt's strongest key,
# AES from domain functional level 2008 on. An unset krbtgt value is reported as this.
KRBTGT_ASSUMED = enctypes.AES128 | enctypes.AES256


def parse_encryption_types(entry: LdapEntry) -> int | None:
    """The account's msDS-SupportedEncryptionTypes; None when unset, 0, not a number, or
    without any encryption-type bit.

    AD stores it as a signed 32-bit integer: a value with the top bit set reads negative.
    """
    text = entry.first(ENCRYPTION_TYPES)
    if text is None:
        return None
    try:
        value = int(text.strip()) % 2**32
    except ValueError:
        log.warning("%s: %s is not a number: %.40r", entry.dn, ENCRYPTION_TYPES, text)
        return None
    # Only FAST, claims or compound-identity bits (0x10000 and up) and no type bit: the KDC
    # falls back to its default for the keys, as for an unset value (MS-KILE 3.3.5.7).
    return value if value & enctypes.ENCRYPTION_TYPE_BITS else None


def _account(entry: LdapEntry, encryption: Mapping[str, int | None]) -> Account:
    key = entry.dn.lower()
    return Account(
        entry.dn,
        entry.first("sAMAccountName") or "",
        (entry.first("dNSHostName") or "").lower(),
        tuple(entry.attributes.get("servicePrincipalName", [])),
        encryption.get(key),
        key in encryption,
    )


async def scan_server_accounts(
    settings: Settings, inventory: Inventory, previous: ServerAccounts | None = None
) -> ServerAccounts:
    servers = [s for s in inventory.exchange_servers if _needs_account(s)]
    client, base = _search_target(settings)
    assert settings.ldap is not None
    # msDS-SupportedEncryptionTypes is not in the Global Catalog's partial attribute set: it
    # and krbtgt are read from the configured DC's own domain.
    domain = client if base is None else client_for(LdapTarget.from_settings(settings.ldap))
    deadline = time.monotonic() + settings.ldap.timeout * (2 + len(servers) // _SERVERS_PER_SEARCH)

    def lookup() -> tuple[list[LdapEntry], dict[str, int | None], Krbtgt | None]:
        domain_nc = default_naming_context(domain, deadline)
        entries: list[LdapEntry] = []
        encryption: dict[str, int | None] = {}
        for start in range(0, len(servers), _SERVERS_PER_SEARCH):
            terms = "".join(
                f"(dNSHostName={escape_filter_chars(s.name)})(sAMAccountName={escape_filter_chars(short_name(s))}$)"
                for s in servers[start : start + _SERVERS_PER_SEARCH]
            )
            search_filter = f"(&(objectCategory=computer)(|{terms}))"
            if base is None:
                found = client.search(
                    domain_nc, search_filter, [*_ACCOUNT_ATTRIBUTES, ENCRYPTION_TYPES], deadline
                )
                in_domain = found
            else:
                found = client.search(base, search_filter, _ACCOUNT_ATTRIBUTES, deadline)
                in_domain = domain.search(domain_nc, search_filter, [ENCRYPTION_TYPES], deadline)
            encryption.update({e.dn.lower(): parse_encryption_types(e) for e in in_domain})
            entries += found
        krbtgt = domain.search(domain_nc, _KRBTGT, [ENCRYPTION_TYPES], deadline)
        realm = Krbtgt(krbtgt[0].dn, parse_encryption_types(krbtgt[0])) if krbtgt else None
        return entries, encryption, realm

    entries, encryption, krbtgt = await run_in_ldap_thread(lookup)
    accounts = [_account(e, encryption) for e in entries]
    by_host = {a.dns_host_name: a for a in accounts if a.dns_host_name}
    by_sam = {a.sam_account_name.upper(): a for a in accounts}
    # dNSHostName first: two domains may each have an EXCH1$; the FQDN tells them apart.
    return ServerAccounts(
        {s.name: by_host.get(s.name) or by_sam.get(f"{short_name(s)}$") for s in servers},
        krbtgt,
    )


def _server_metrics(
    state: ScanState[ServerAccounts], settings: Settings, inventory: Inventory
) -> Iterator[Metric]:
    found = GaugeMetricFamily(
        "exchange_auth_computer_account_found",
        "1 when the Exchange server's computer account was found (by dNSHostName, then "
        "sAMAccountName); 0 explains why all its SPNs read 0. Cached: see "
        'exchange_auth_last_success_timestamp_seconds{scan="spn"}.',
        labels=["server"],
    )
    present = GaugeMetricFamily(
        "exchange_auth_spn_present",
        "1 when the expected SPN (service class / short name or FQDN) is on the server's computer "
        "account. Cached from the last spn scan.",
        labels=["server", "spn"],
    )
    count = GaugeMetricFamily(
        "exchange_auth_spn_count",
        "SPNs of this service class on the server's computer account. Cached from the last spn scan.",
        labels=["server", "service_class"],
    )
    if state.result is not None:
        classes = settings.checks.spn.service_classes
        for server in inventory.exchange_servers:
            if server.name not in state.result.accounts:
                continue  # new since the last scan, or an Edge server: no claim either way
            account = state.result.accounts[server.name]
            found.add_metric([server.name], 0 if account is None else 1)
            held = {spn.casefold() for spn in (account.spns if account else ())}
            for spn in expected_spns(server, classes):
                present.add_metric([server.name, spn], 1 if spn.casefold() in held else 0)
            by_class = Counter(spn.split("/", 1)[0].casefold() for spn in held)
            for cls in classes:
                count.add_metric([server.name, cls], by_class[cls.casefold()])
    yield from (found, present, count)
    yield from _encryption_metrics(state.result, settings, inventory)


def _encryption_metrics(
    result: ServerAccounts | None, settings: Settings, inventory: Inventory
) -> Iterator[Metric]:
    default = settings.checks.spn.default_encryption_types
    cached = " Cached from the last spn scan."
    bits = (
        " Bits: 0x1 DES-CBC-CRC, 0x2 DES-CBC-MD5, 0x4 RC4-HMAC, 0x8 AES128, 0x10 AES256, "
        "0x20 AES256 session keys."
    )
    value = GaugeMetricFamily(
        "exchange_auth_account_encryption_types",
        "msDS-SupportedEncryptionTypes of the Exchange server's computer account as the KDC uses "
        f"it: when unset (or 0), the KDC's default, checks.spn.default_encryption_types (0x{default:x} "
        "here), and ..._set is 0. Absent when the account is outside the configured DC's domain."
        + bits
        + cached,
        labels=["server"],
    )
    is_set = GaugeMetricFamily(
        "exchange_auth_account_encryption_types_set",
        "1 when msDS-SupportedEncryptionTypes is set on the Exchange server's computer account, 0 "
        "when the KDC's default applies." + cached,
        labels=["server"],
    )
    rc4_only = GaugeMetricFamily(
        "exchange_auth_account_rc4_only",
        "1 when the Exchange server's msDS-SupportedEncryptionTypes allows RC4-HMAC and no AES "
        "(DES is off on every current KDC): its tickets fail once the KDCs refuse RC4. 0 when "
        "unset: the account then follows the KDCs' default, which changes with them." + cached,
        labels=["server"],
    )
    aes_missing = GaugeMetricFamily(
        "exchange_auth_account_aes_missing",
        "1 when the Exchange server's msDS-SupportedEncryptionTypes allows neither AES128 nor "
        "AES256 (0 when unset, as for ..._rc4_only)." + cached,
        labels=["server"],
    )
    krbtgt_value = GaugeMetricFamily(
        "exchange_auth_krbtgt_encryption_types",
        "msDS-SupportedEncryptionTypes of the realm's krbtgt account; when unset the KDC encrypts "
        f"TGTs with krbtgt's strongest key, AES from domain functional level 2008 on (reported as "
        f"0x{KRBTGT_ASSUMED:x}, with ..._set 0)." + bits + cached,
    )
    krbtgt_set = GaugeMetricFamily(
        "exchange_auth_krbtgt_encryption_types_set",
        "1 when msDS-SupportedEncryptionTypes is set on the krbtgt account." + cached,
    )
    krbtgt_rc4_only = GaugeMetricFamily(
        "exchange_auth_krbtgt_rc4_only",
        "1 when krbtgt's msDS-SupportedEncryptionTypes allows RC4-HMAC and no AES." + cached,
    )
    krbtgt_aes_missing = GaugeMetricFamily(
        "exchange_auth_krbtgt_aes_missing",
        "1 when krbtgt's msDS-SupportedEncryptionTypes allows neither AES128 nor AES256." + cached,
    )
    if result is not None:
        for server in inventory.exchange_servers:
            account = result.accounts.get(server.name)
            effective = account.effective_encryption_types(default) if account else None
            if account is None or effective is None:
                continue
            labels = [server.name]
            value.add_metric(labels, effective)
            is_set.add_metric(labels, 0 if account.encryption_types is None else 1)
            own = account.encryption_types
            rc4_only.add_metric(labels, 1 if own and enctypes.rc4_only(own) else 0)
            aes_missing.add_metric(labels, 1 if own and enctypes.aes_missing(own) else 0)
        if result.krbtgt is not None:
            realm = result.krbtgt.encryption_types
            krbtgt_value.add_metric([], realm or KRBTGT_ASSUMED)
            krbtgt_set.add_metric([], 0 if realm is None else 1)
            krbtgt_rc4_only.add_metric([], 1 if realm and enctypes.rc4_only(realm) else 0)
            krbtgt_aes_missing.add_metric([], 1 if realm and enctypes.aes_missing(realm) else 0)
    yield from (value, is_set, rc4_only, aes_missing)
    yield from (krbtgt_value, krbtgt_set, krbtgt_rc4_only, krbtgt_aes_missing)


def _with_bind_account(enabled: bool, interval: float, settings: Settings) -> float | None:
    """A scan's interval, when it is enabled and there is an account to search the directory with."""
    wanted = enabled and settings.ldap is not None and settings.ldap.user is not None
    return interval if wanted else None


def _spn_interval(settings: Settings) -> float | None:
    spn = settings.checks.spn
    return _with_bind_account(spn.enabled, spn.refresh_interval, settings)


SERVER_SPN_SCAN: Scan[ServerAccounts] = Scan(
    name="spn",
    interval=_spn_interval,
    run=scan_server_accounts,
    count=lambda result: sum(1 for a in result.accounts.values() if a is not None),
    emit=_server_metrics,
)


def find_duplicates(
    entries: Iterable[LdapEntry],
) -> tuple[int, int, dict[str, tuple[str, tuple[str, ...]]]]:
    """Group every SPN by its case-folded value, as ``setspn -X`` does.

    Returns (objects, SPN values, duplicates). Only the first owner of each value is kept until
    a second one shows up, so memory follows the number of SPNs, not of duplicates.
    """
    first: dict[str, tuple[str, str]] = {}
    duplicates: dict[str, tuple[str, list[str]]] = {}
    objects = values = 0
    for entry in entries:
        objects += 1
        for spn in entry.attributes.get("servicePrincipalName", []):
            values += 1
            key = spn.casefold()
            seen = first.get(key)
            if seen is None:
                first[key] = (spn, entry.dn)
            elif key in duplicates:
                if entry.dn not in duplicates[key][1]:
                    duplicates[key][1].append(entry.dn)
            elif seen[1] != entry.dn:
                duplicates[key] = (seen[0], [seen[1], entry.dn])
    return objects, values, {k: (spn, tuple(owners)) for k, (spn, owners) in duplicates.items()}


_warned_scope = False


async def scan_duplicates(
    settings: Settings, inventory: Inventory, previous: Duplicates | None = None
) -> Duplicates:
    global _warned_scope
    client, base = _search_target(settings)
    assert settings.ldap is not None
    scope = "forest" if base == "" else "domain"
    if settings.checks.duplicate_spn.scope == "forest" and scope == "domain" and not _warned_scope:
        log.warning(
            "ldap.global_catalog_url is not set: duplicate SPNs are searched in the domain of %s only, "
            "not forest-wide",
            settings.ldap.url,
        )
        _warned_scope = True
    # Decoding the whole forest's SPNs takes seconds of CPU: in a child process, so the event
    # loop keeps serving scrapes meanwhile (exporter/scan_worker.py).
    result = await _in_child_process(
        request_for(client.target, base), settings.checks.duplicate_spn.refresh_interval
    )
    if "error" in result:
        raise LdapError(result["error"]["reason"], result["error"]["detail"])
    owners = {key: (spn, tuple(dns)) for key, (spn, dns) in result["owners"].items()}
    return Duplicates(scope, int(result["objects"]), int(result["values"]), owners)


def request_for(target: LdapTarget, base: str | None) -> bytes:
    """What exporter/scan_worker.py reads on its standard input (the password included)."""
    fields: dict[str, Any] = {k: v for k, v in target.__dict__.items() if k != "password"}
    password = target.password.get_secret_value() if target.password else None
    return json.dumps({"target": fields, "password": password, "base": base}).encode()


async def _in_child_process(request: bytes, limit: float) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exporter.scan_worker",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(request), limit)
    except BaseException:  # timeout, or the exporter stopping: never leave the child behind
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise LdapError(
            "search_failed", f"duplicate scan process exited {process.returncode}: {tail[0]}"
        )
    answer: dict[str, Any] = json.loads(out)
    return answer


def _duplicate_metrics(
    state: ScanState[Duplicates], settings: Settings, inventory: Inventory
) -> Iterator[Metric]:
    per_class = GaugeMetricFamily(
        "exchange_auth_spn_duplicates",
        "SPN values held by more than one account, by service class (case-insensitive, like "
        "setspn -X). Cached from the last duplicate_spn scan.",
        labels=["service_class"],
    )
    owner = GaugeMetricFamily(
        "exchange_auth_spn_duplicate_owner_info",
        f"1 per account holding a duplicated SPN; at most {MAX_OWNER_SERIES} series, the configured "
        "service classes first. Cached from the last duplicate_spn scan.",
        labels=["spn", "account"],
    )
    truncated = GaugeMetricFamily(
        "exchange_auth_spn_duplicate_owner_info_truncated",
        "1 when exchange_auth_spn_duplicate_owner_info left owners out to stay within its cap.",
    )
    scope = GaugeMetricFamily(
        "exchange_auth_spn_duplicate_scan_scope",
        "1 for where duplicates were searched: forest (Global Catalog) or domain (no GC configured).",
        labels=["scope"],
    )
    result = state.result
    if result is not None:
        classes = Counter(key.split("/", 1)[0] for key in result.owners)
        wanted = [c.casefold() for c in settings.checks.spn.service_classes]
        for cls in wanted:
            classes.setdefault(cls, 0)
        for cls, number in sorted(classes.items()):
            per_class.add_metric([cls.upper()], number)
        # The classes that break Exchange first, then the rest, in a stable order.
        ordered = sorted(
            result.owners.items(), key=lambda kv: (kv[0].split("/", 1)[0] not in wanted, kv[0])
        )
        emitted = 0
        cut = False
        for _key, (spn, accounts) in ordered:
            for account in accounts:
                if emitted >= MAX_OWNER_SERIES:
                    cut = True
                    break
                owner.add_metric([spn, account], 1)
                emitted += 1
        truncated.add_metric([], 1 if cut else 0)
        scope.add_metric([result.scope], 1)
    yield from (per_class, owner, truncated, scope)


def _duplicate_interval(settings: Settings) -> float | None:
    duplicate = settings.checks.duplicate_spn
    return _with_bind_account(duplicate.enabled, duplicate.refresh_interval, settings)


DUPLICATE_SCAN: Scan[Duplicates] = Scan(
    name="duplicate_spn",
    interval=_duplicate_interval,
    run=scan_duplicates,
    count=lambda result: result.objects,
    emit=_duplicate_metrics,
)
