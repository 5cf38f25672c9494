"""Domain controllers from DNS SRV records, as Windows clients find them (MS-ADTS 6.3.6)."""

from __future__ import annotations

import asyncio
import logging

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from .config import DnsSettings, Settings
from .servers import Role, Server

__all__ = [
    "DiscoveryError",
    "discover_domain_controllers",
    "make_resolver",
    "resolve_address",
    "srv_names",
]

log = logging.getLogger(__name__)


class DiscoveryError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def srv_names(domain: str) -> tuple[str, ...]:
    # Every DC registers the first; the second also lists KDCs, which in AD are the same hosts.
    return (f"_ldap._tcp.dc._msdcs.{domain}", f"_kerberos._tcp.{domain}")


def make_resolver(configured: DnsSettings) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=not configured.nameservers)
    if configured.nameservers:
        resolver.nameservers = list(configured.nameservers)
        resolver.port = configured.port
    resolver.lifetime = configured.timeout
    return resolver


async def _targets(resolver: dns.asyncresolver.Resolver, name: str) -> list[str]:
    try:
        answer = await resolver.resolve(name, "SRV")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    # A target of "." means the service is decidedly not available (RFC 2782).
    return [
        str(record.target).rstrip(".").lower() for record in answer if str(record.target) != "."
    ]


async def resolve_address(resolver: dns.asyncresolver.Resolver, name: str) -> str | None:
    """The first A (else AAAA) record of ``name``; None when DNS says there is none."""
    for rdtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(name, rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        for record in answer:
            return str(record.address)
    return None


async def discover_domain_controllers(settings: Settings) -> list[Server]:
    """DCs named by the domain's SRV records, each with an address when DNS has one.

    Raises when DNS itself fails (no answer, timeout, SERVFAIL), so the caller can keep the
    servers found last time rather than dropping them all.
    """
    resolver = make_resolver(settings.dns)
    try:
        found = await asyncio.gather(*(_targets(resolver, n) for n in srv_names(settings.domain)))
        names = sorted({name for names in found for name in names})
        addresses = await asyncio.gather(*(resolve_address(resolver, n) for n in names))
    except dns.exception.DNSException as exc:
        raise DiscoveryError("dns", f"DNS discovery failed: {exc}") from exc
    if not names:
        raise DiscoveryError("dns", f"no SRV records for {' or '.join(srv_names(settings.domain))}")
    for name, address in zip(names, addresses, strict=True):
        if address is None:
            log.warning(
                "DC %s from SRV records has no A or AAAA record; resolving at scrape time", name
            )
    return [
        Server(name, Role.DOMAIN_CONTROLLER, address, origin="dns")
        for name, address in zip(names, addresses, strict=True)
    ]
