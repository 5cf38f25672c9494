"""The servers the exporter probes: plain data shared by the inventory, discovery and checks."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["ExchangeDetails", "ReceiveConnector", "Role", "Server"]


class Role(enum.StrEnum):
    DOMAIN_CONTROLLER = "domain_controller"
    EXCHANGE = "exchange"


@dataclass(frozen=True, slots=True)
class Server:
    """One host to probe. ``name`` is the lower-case FQDN and the ``server`` label."""

    name: str
    role: Role
    address: str | None = None
    # Left out of the hash (a dict has none); equal servers still hash alike.
    ports: Mapping[str, int] = field(default_factory=dict, hash=False)
    origin: str = "static"  # static, or the discovery method that found it
    exchange: ExchangeDetails | None = None  # from LDAP discovery; None for static entries

    def port(self, service: str, default: int) -> int:
        return self.ports.get(service, default)


# msExchCurrentServerRoles bits (MS-ADA, Exchange's own constants).
EXCHANGE_ROLES = {
    2: "Mailbox",
    4: "ClientAccess",
    16: "UnifiedMessaging",
    32: "HubTransport",
    64: "Edge",
}
EDGE_ROLE = 64
# msExchSMTPReceiveInboundSecurityFlag bit for "ExchangeServer" in a connector's AuthMechanism.
EXCHANGE_SERVER_AUTH = 0x10


@dataclass(frozen=True, slots=True)
class ReceiveConnector:
    name: str
    security_flags: int | None  # None when the attribute is absent (Exchange then defaults to 29)

    @property
    def exchange_server_auth(self) -> bool:
        flags = 29 if self.security_flags is None else self.security_flags
        return bool(flags & EXCHANGE_SERVER_AUTH)


@dataclass(frozen=True, slots=True)
class ExchangeDetails:
    """What the Exchange configuration in AD says of a server."""

    roles: int
    version: str
    site: str
    connectors: tuple[ReceiveConnector, ...] = ()

    @property
    def edge(self) -> bool:
        """Edge Transport servers are not domain members: no computer account, no SPNs."""
        return bool(self.roles & EDGE_ROLE)

    @property
    def role_names(self) -> str:
        return ",".join(name for bit, name in EXCHANGE_ROLES.items() if self.roles & bit)
