"""Who to probe: the configured servers plus whatever discovery finds, each with its role.

Static entries always win over discovered ones of the same name. A discovery that fails keeps
the servers it found last time, so a DNS hiccup never empties the inventory.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from .config import ServerEntry, Settings
from .dns_discovery import discover_domain_controllers
from .ldap_discovery import discover_domain_controllers as discover_dcs_by_ldap
from .ldap_discovery import discover_exchange_servers
from .servers import Role, Server
from .shard import WHOLE, Shard

__all__ = [
    "DISCOVERERS",
    "Discovery",
    "Inventory",
    "Role",
    "Server",
    "build_inventory",
    "refresh_interval",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Discovery:
    """The outcome of the last run of one discovery method for one role."""

    role: Role
    method: str
    success: bool
    found: int = 0
    reason: str = ""
    last_success: float = 0.0  # Unix time; 0 = never


@dataclass(frozen=True)
class Inventory:
    servers: tuple[Server, ...]
    discoveries: tuple[Discovery, ...] = ()
    shard: Shard = WHOLE
    # The other shards' domain controllers: read for their clocks only (exporter/shard.py).
    clock_peers: tuple[Server, ...] = ()

    @property
    def domain_controllers(self) -> tuple[Server, ...]:
        return tuple(s for s in self.servers if s.role is Role.DOMAIN_CONTROLLER)

    @property
    def exchange_servers(self) -> tuple[Server, ...]:
        return tuple(s for s in self.servers if s.role is Role.EXCHANGE)

    def discovery(self, role: Role, method: str) -> Discovery | None:
        return next((d for d in self.discoveries if (d.role, d.method) == (role, method)), None)


Discoverer = Callable[[Settings], Awaitable[list[Server]]]
# (role, method) -> coroutine returning the servers found; LDAP discovery registers here too.
DISCOVERERS: dict[tuple[Role, str], Discoverer] = {
    (Role.DOMAIN_CONTROLLER, "dns"): discover_domain_controllers,
    (Role.DOMAIN_CONTROLLER, "ldap"): discover_dcs_by_ldap,
    (Role.EXCHANGE, "ldap"): discover_exchange_servers,
}


def _static(entries: Iterable[ServerEntry], role: Role) -> list[Server]:
    return [
        Server(e.name, role, e.address, {str(k): v for k, v in e.ports.items()}) for e in entries
    ]


async def _discover(
    settings: Settings, role: Role, method: str, previous: Inventory | None
) -> tuple[list[Server], Discovery]:
    last = previous.discovery(role, method) if previous else None
    every = (*previous.servers, *previous.clock_peers) if previous else ()
    kept = [s for s in every if (s.role, s.origin) == (role, method)]
    discoverer = DISCOVERERS.get((role, method))
    if discoverer is None:
        log.warning("discovery of %s servers by %s is not available in this version", role, method)
        return [], Discovery(role, method, False, reason="unsupported")
    try:
        found = await discoverer(settings)
    except Exception as exc:  # any failure keeps what the last good run found
        log.warning(
            "discovery of %s servers by %s failed, keeping the %d found before: %s",
            role,
            method,
            len(kept),
            exc,
        )
        return kept, Discovery(
            role,
            method,
            False,
            len(kept),
            str(getattr(exc, "reason", "error")),
            last.last_success if last else 0.0,
        )
    return found, Discovery(role, method, True, len(found), last_success=time.time())


async def build_inventory(
    settings: Settings, previous: Inventory | None = None, shard: Shard | None = None
) -> Inventory:
    """Static servers first; discovered servers are added unless a static entry names them.

    With a ``shard`` (default: the previous inventory's), only the servers it owns are kept;
    the other shards' domain controllers become its clock peers.
    """
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
        found, discovery = await _discover(settings, role, method, previous)
        discoveries.append(discovery)
        details = {s.name: s.exchange for s in found if s.exchange is not None}
        # A static entry keeps its address and ports but learns what the directory knows.
        servers = [
            dataclasses.replace(s, exchange=details[s.name])
            if s.exchange is None and s.name in details
            else s
            for s in servers
        ]
        fresh = [s for s in found if s.name not in known]
        known.update(s.name for s in fresh)
        servers += fresh
    shard = shard or (previous.shard if previous else WHOLE)
    owned, peers = shard.split(servers)
    return Inventory(owned, tuple(discoveries), shard, peers)


def refresh_interval(settings: Settings) -> float | None:
    """How often to run discovery again; None when nothing is discovered."""
    intervals = []
    if settings.domain_controllers.discover != "none":
        intervals.append(settings.domain_controllers.refresh_interval)
    if settings.exchange_servers.discover != "none":
        intervals.append(settings.exchange_servers.refresh_interval)
    return min(intervals, default=None)
