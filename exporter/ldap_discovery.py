"""Servers from the configuration partition of AD, over LDAP.

Exchange servers: every one has an ``msExchExchangeServer`` object under
``CN=Microsoft Exchange,CN=Services,<configuration NC>``, its receive connectors below it; one
subtree search reads both. Domain controllers: every one has an ``nTDSDSA`` object ("NTDS
Settings") below its server object under ``CN=Sites,<configuration NC>``.
"""

from __future__ import annotations

import logging
import time

from .config import Settings
from .ldap import LdapEntry, LdapError, LdapTarget, client_for, run_in_ldap_thread
from .servers import ExchangeDetails, ReceiveConnector, Role, Server

__all__ = ["discover_domain_controllers", "discover_exchange_servers", "fqdn_of", "parse_directory"]

log = logging.getLogger(__name__)

_ATTRIBUTES = (
    "objectClass",
    "cn",
    "networkAddress",
    "msExchCurrentServerRoles",
    "serialNumber",
    "msExchServerSite",
    "msExchSMTPReceiveInboundSecurityFlag",
)
_FILTER = "(|(objectCategory=msExchExchangeServer)(objectCategory=msExchSmtpReceiveConnector))"


def fqdn_of(entry: LdapEntry) -> str | None:
    """The server's FQDN from ``networkAddress`` (``ncacn_ip_tcp:exch1.corp.example.com``)."""
    for address in entry.attributes.get("networkAddress", []):
        protocol, _, value = address.partition(":")
        if protocol.lower() == "ncacn_ip_tcp" and value:
            return value.strip().rstrip(".").lower()
    return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _site(dn: str | None) -> str:
    # msExchServerSite is the site's DN: CN=<site>,CN=Sites,CN=Configuration,...
    if not dn or not dn.upper().startswith("CN="):
        return ""
    return dn[3:].split(",", 1)[0]


def _is(entry: LdapEntry, object_class: str) -> bool:
    return object_class.lower() in (c.lower() for c in entry.attributes.get("objectClass", []))


def parse_directory(entries: list[LdapEntry]) -> list[Server]:
    """Servers, with the receive connectors found below each one."""
    servers = [e for e in entries if _is(e, "msExchExchangeServer")]
    connectors = [e for e in entries if _is(e, "msExchSmtpReceiveConnector")]
    found: list[Server] = []
    for entry in servers:
        fqdn = fqdn_of(entry)
        if fqdn is None:
            log.warning("Exchange server %s has no ncacn_ip_tcp networkAddress; skipped", entry.dn)
            continue
        suffix = "," + entry.dn.lower()
        mine = tuple(
            ReceiveConnector(
                c.first("cn") or c.dn, _int(c.first("msExchSMTPReceiveInboundSecurityFlag"))
            )
            for c in connectors
            if c.dn.lower().endswith(suffix)
        )
        details = ExchangeDetails(
            roles=_int(entry.first("msExchCurrentServerRoles")) or 0,
            version=entry.first("serialNumber") or "",
            site=_site(entry.first("msExchServerSite")),
            connectors=mine,
        )
        found.append(Server(fqdn, Role.EXCHANGE, origin="ldap", exchange=details))
    return found


async def _search_configuration(
    settings: Settings, container: str, search_filter: str, attributes: tuple[str, ...]
) -> list[LdapEntry]:
    if settings.ldap is None:
        raise LdapError("search_failed", "discovery by ldap needs the ldap section")
    client = client_for(LdapTarget.from_settings(settings.ldap))
    deadline = time.monotonic() + settings.ldap.timeout

    def search() -> list[LdapEntry]:
        root = client.root_dse(["configurationNamingContext"], deadline)
        config_nc = root.first("configurationNamingContext")
        if not config_nc:
            raise LdapError("search_failed", "rootDSE has no configurationNamingContext")
        return client.search(f"{container},{config_nc}", search_filter, attributes, deadline)

    return await run_in_ldap_thread(search)


async def discover_exchange_servers(settings: Settings) -> list[Server]:
    entries = await _search_configuration(
        settings, "CN=Microsoft Exchange,CN=Services", _FILTER, _ATTRIBUTES
    )
    return parse_directory(entries)


async def discover_domain_controllers(settings: Settings) -> list[Server]:
    """Server objects under CN=Sites that hold an NTDS Settings object: the forest's DCs."""
    entries = await _search_configuration(
        settings,
        "CN=Sites",
        "(|(objectClass=server)(objectClass=nTDSDSA))",
        ("objectClass", "dNSHostName"),
    )
    with_ntds = {
        e.dn.split(",", 1)[1].lower() for e in entries if _is(e, "nTDSDSA") and "," in e.dn
    }
    return [
        Server(host.lower(), Role.DOMAIN_CONTROLLER, origin="ldap")
        for e in entries
        if _is(e, "server") and e.dn.lower() in with_ntds and (host := e.first("dNSHostName"))
    ]
