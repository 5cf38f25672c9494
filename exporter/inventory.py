"""Who to probe: the configured servers plus whatever discovery finds, each with its role.

Discovery methods (DNS SRV, LDAP) plug in through :data:`DISCOVERERS`; until one is
registered for a configured method, the inventory says so instead of failing.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from .config import ServerEntry, Settings

__all__ = ["DISCOVERERS", "Discovery", "Inventory", "Role", "Server", "build_inventory"]

log = logging.getLogger(__name__)


class Role(enum.StrEnum):
    DOMAIN_CONTROLLER = "domain_controller"
    EXCHANGE = "exchange"


@dataclass(frozen=True, slots=True)
class Server:
    """One host to probe. ``name`` is the lower-case FQDN and the ``server`` label."""

    name: str
    role: Role
    address: str | None = None
    ports: Mapping[str, int] = field(default_factory=dict)
    origin: str = "static"

    def port(self, service: str, default: int) -> int:
        return self.ports.get(service, default)


@dataclass(frozen=True)
class Discovery:
    """The outcome of one discovery method for one role, for the inventory metrics."""

    role: Role
    method: str
    success: bool
    found: int = 0
    reason: str = ""
    at: float = 0.0


@dataclass(frozen=True)
class Inventory:
    servers: tuple[Server, ...]
    discoveries: tuple[Discovery, ...] = ()

    @property
    def domain_controllers(self) -> tuple[Server, ...]:
        return tuple(s for s in self.servers if s.role is Role.DOMAIN_CONTROLLER)

    @property
    def exchange_servers(self) -> tuple[Server, ...]:
        return tuple(s for s in self.servers if s.role is Role.EXCHANGE)


Discoverer = Callable[[Settings], Awaitable[list[Server]]]
# (role, method) -> coroutine returning the servers found. Later modules register here.
DISCOVERERS: dict[tuple[Role, str], Discoverer] = {}


def _static(entries: Iterable[ServerEntry], role: Role) -> list[Server]:
    return [
        Server(e.name, role, e.address, {str(k): v for k, v in e.ports.items()}) for e in entries
    ]


async def build_inventory(settings: Settings) -> Inventory:
    """Static servers first; discovered servers are added unless a static entry names them."""
    servers = _static(settings.domain_controllers.static, Role.DOMAIN_CONTROLLER)
    servers += _static(settings.exchange_servers.static, Role.EXCHANGE)
    known = {s.name for s in servers}
    discoveries: list[Discovery] = []
    wanted = (
        (Role.DOMAIN_CONTROLLER, settings.domain_controllers.discover),
        (Role.EXCHANGE, settings.exchange_servers.discover),
    )
    for role, method in wanted:
        if method == "none":
            continue
        discoverer = DISCOVERERS.get((role, method))
        if discoverer is None:
            log.warning(
                "discovery of %s servers by %s is not available in this version", role, method
            )
            discoveries.append(Discovery(role, method, False, reason="unsupported", at=time.time()))
            continue
        try:
            found = await discoverer(settings)
        except Exception as exc:  # a discovery failure must not lose the static servers
            log.warning("discovery of %s servers by %s failed: %s", role, method, exc)
            discoveries.append(Discovery(role, method, False, reason="error", at=time.time()))
            continue
        fresh = [s for s in found if s.name not in known]
        known.update(s.name for s in fresh)
        servers += fresh
        discoveries.append(Discovery(role, method, True, found=len(found), at=time.time()))
    return Inventory(tuple(servers), tuple(discoveries))
