"""The servers the exporter probes: plain data shared by the inventory, discovery and checks."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Role", "Server"]


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

    def port(self, service: str, default: int) -> int:
        return self.ports.get(service, default)
