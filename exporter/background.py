"""Work that takes longer than a scrape runs here, on its own interval, never on the scrape path.

Each scan keeps its last good result; a failed run marks it stale but loses nothing. Scrapes
only read the cached state, so they stay fast however long a scan takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from prometheus_client.core import GaugeMetricFamily, Metric

from .config import Settings
from .inventory import Inventory
from .ldap import LdapError

__all__ = ["Scan", "ScanRunner", "ScanState", "scan_metrics"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class ScanState(Generic[T]):
    result: T | None = None
    last_success: float = 0.0  # Unix time; 0 = never
    last_attempt: float = 0.0
    duration: float = 0.0
    success: bool = False
    reason: str = ""
    objects: int = 0


@dataclass(frozen=True)
class Scan(Generic[T]):
    """A background job: how often, what it does, how many objects it saw, how it reports."""

    name: str
    interval: Callable[[Settings], float | None]  # None: disabled with these settings
    # Gets the previous result (None at first): followers of growing files carry state over.
    run: Callable[[Settings, Inventory, T | None], Awaitable[T]]
    count: Callable[[T], int]
    emit: Callable[[ScanState[T], Settings, Inventory], Iterable[Metric]]


@dataclass
class ScanRunner:
    """Runs every scan in a loop of its own; ``states`` is what the collector reads."""

    scans: Sequence[Scan[Any]]
    settings: Callable[[], Settings]
    inventory: Callable[[], Inventory]
    states: dict[str, ScanState[Any]] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        for scan in self.scans:
            self.states.setdefault(scan.name, ScanState())
            self._tasks.append(asyncio.create_task(self._loop(scan), name=f"scan-{scan.name}"))

    def wake(self) -> None:
        """Run every scan now (after a reload or a discovery that changed the inventory)."""
        self._wake.set()

    async def run_once(self, scan: Scan[Any]) -> ScanState[Any]:
        state = self.states.setdefault(scan.name, ScanState())
        settings, inventory = self.settings(), self.inventory()
        started = time.monotonic()
        state.last_attempt = time.time()
        try:
            result = await scan.run(settings, inventory, state.result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            state.success = False
            state.reason = exc.reason if isinstance(exc, LdapError) else "error"
            log.warning(
                "scan %s failed, keeping the result of %s: %s",
                scan.name,
                _when(state.last_success),
                exc,
            )
        else:
            state.result = result
            state.success = True
            state.reason = ""
            state.last_success = time.time()
            state.objects = scan.count(result)
        state.duration = time.monotonic() - started
        return state

    async def _loop(self, scan: Scan[Any]) -> None:
        while True:
            interval = scan.interval(self.settings())
            if interval is not None:
                await self.run_once(scan)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval or 60.0)
                self._wake.clear()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()


def _when(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment)) if moment else "never"


def scan_metrics(
    runner: ScanRunner | None, settings: Settings, inventory: Inventory
) -> Iterator[Metric]:
    last_success = GaugeMetricFamily(
        "exchange_auth_last_success_timestamp_seconds",
        "When the background scan last succeeded (0 = never); its metrics are cached from then.",
        labels=["scan"],
    )
    success = GaugeMetricFamily(
        "exchange_auth_scan_success",
        "1 when the last run of the background scan succeeded; on failure the previous result stays.",
        labels=["scan"],
    )
    duration = GaugeMetricFamily(
        "exchange_auth_scan_duration_seconds",
        "How long the last run of the background scan took.",
        labels=["scan"],
    )
    objects = GaugeMetricFamily(
        "exchange_auth_scan_objects",
        "Directory objects the last successful run of the scan read.",
        labels=["scan"],
    )
    failure = GaugeMetricFamily(
        "exchange_auth_scan_failure",
        "1 for the reason the last run of the background scan failed: bind_failed, tls_failed, "
        "timeout, unreachable, not_found, search_failed or error.",
        labels=["scan", "reason"],
    )
    if runner is None:
        yield from (last_success, success, failure, duration, objects)
        return
    for scan in runner.scans:
        if scan.interval(settings) is None:
            continue
        state = runner.states.get(scan.name) or ScanState()
        last_success.add_metric([scan.name], state.last_success)
        success.add_metric([scan.name], 1 if state.success else 0)
        if state.last_attempt and not state.success:
            failure.add_metric([scan.name, state.reason], 1)
        duration.add_metric([scan.name], state.duration)
        objects.add_metric([scan.name], state.objects)
    yield from (last_success, success, failure, duration, objects)
    for scan in runner.scans:
        if scan.interval(settings) is not None:
            yield from scan.emit(runner.states.get(scan.name) or ScanState(), settings, inventory)
