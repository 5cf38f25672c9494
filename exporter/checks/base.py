"""What every check shares: its context, its failures, and the clock readings it may yield.

A check is ``async def check_x(ctx, target, settings) -> Result``: it does I/O and returns
plain data. It raises :class:`CheckError` with a bounded ``reason`` when it reaches no
verdict; the scrape runner turns that, a timeout or any other exception into a failed run.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import dns.exception
from prometheus_client.core import Metric

from ..config import DnsSettings, Settings
from ..dns_discovery import make_resolver, resolve_address
from ..servers import Server

__all__ = [
    "CheckContext",
    "CheckError",
    "CheckRun",
    "CheckSpec",
    "ClockReading",
    "Failure",
    "Resolver",
    "Shared",
    "clock_readings_of",
]

S = TypeVar("S")
R = TypeVar("R")


class CheckError(Exception):
    """A check reached no verdict. ``reason`` is a short label value; ``detail`` is for logs."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail or reason


@dataclass(frozen=True, slots=True)
class Failure:
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class ClockReading:
    """One reading of a server's clock: server time minus exporter time, in seconds."""

    server: Server
    source: str
    offset: float
    uncertainty: float


def clock_readings_of(outcome: object) -> Sequence[ClockReading]:
    """The clock readings a check's result carries, if any: they feed the skew pairs."""
    readings: Sequence[ClockReading] = getattr(outcome, "clock_readings", ())
    return readings


class Resolver:
    """Name to address, once per scrape per name, so checks on one server share the answer.

    With ``dns.nameservers`` configured, names are looked up there (the AD DNS that knows the
    servers), else through the host's resolver. Closed with the scrape: a lookup still running
    then is cancelled, never left behind.
    """

    def __init__(self, dns_settings: DnsSettings | None = None) -> None:
        self._pending: dict[str, asyncio.Task[str]] = {}
        self._dns = (
            make_resolver(dns_settings) if dns_settings and dns_settings.nameservers else None
        )

    async def address(self, server: Server) -> str:
        if server.address:
            return server.address
        task = self._pending.get(server.name)
        if task is None:
            task = self._pending[server.name] = asyncio.create_task(self._lookup(server.name))
        return await asyncio.shield(task)

    def close(self) -> None:
        for task in self._pending.values():
            if task.done():
                if not task.cancelled():
                    task.exception()  # retrieved: a failed lookup was reported through its checks
            else:
                task.cancel()
        self._pending.clear()

    async def _lookup(self, name: str) -> str:
        if self._dns is not None:
            try:
                address = await resolve_address(self._dns, name)
            except dns.exception.DNSException as exc:
                raise CheckError("dns", f"cannot resolve {name}: {exc}") from None
            if address is None:
                raise CheckError("dns", f"{name} has no A or AAAA record")
            return address
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(name, None, type=socket.SOCK_DGRAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise CheckError("dns", f"cannot resolve {name}: {exc}") from None
        if not infos:
            raise CheckError("dns", f"{name} has no address")
        return str(infos[0][4][0])


class Closeable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closeable)


class Shared:
    """Objects that all checks of one scrape share (sockets, clients); closed when it ends."""

    def __init__(self) -> None:
        self._items: dict[object, Closeable] = {}

    def get(self, key: object, factory: Callable[[], C]) -> C:
        item = self._items.get(key)
        if item is None:
            item = self._items[key] = factory()
        return item  # type: ignore[return-value]

    def close(self) -> None:
        for item in self._items.values():
            item.close()
        self._items.clear()


@dataclass(slots=True)
class CheckContext:
    """Per scrape: the check's deadline (event-loop time), the resolver and shared objects."""

    deadline: float
    settings: Settings
    resolver: Resolver = field(default_factory=Resolver)
    shared: Shared = field(default_factory=Shared)
    # Every server of this scrape's inventory, for checks that pair servers (service tickets
    # through each DC); empty where a scrape covers one target only (/probe).
    servers: tuple[Server, ...] = ()


@dataclass(frozen=True, slots=True)
class CheckRun(Generic[R]):
    """One check on one server in one scrape: its result or why there is none."""

    check: str
    server: Server
    outcome: R | Failure
    duration: float

    @property
    def ok(self) -> bool:
        return not isinstance(self.outcome, Failure)


@dataclass(frozen=True)
class CheckSpec(Generic[S, R]):
    """A row of the check table: how to run a check, on whom, and how to report it."""

    name: str
    run: Callable[[CheckContext, Server, S], Awaitable[R]]
    settings: Callable[[Settings], S]
    enabled: Callable[[S], bool]
    applies_to: Callable[[Server, S], bool]
    timeout: Callable[[S], float]
    # Turns this check's runs of one scrape into metric families; called from collect().
    emit: Callable[[Sequence[CheckRun[R]], S], Iterable[Metric]]

    def erased(self) -> CheckSpec[Any, Any]:
        return self
