"""One scrape: every enabled check on every server it applies to, concurrently, under one deadline."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .checks import CHECKS
from .checks.base import CheckContext, CheckError, CheckRun, CheckSpec, Failure, Resolver, Shared
from .config import Settings
from .inventory import Inventory, Server

__all__ = ["ScrapeResult", "run_scrape", "scrape_budget"]

log = logging.getLogger(__name__)

# Checks are told the deadline and stop themselves; the runner cancels this much later, so a
# check can still name its own reason (e.g. protocol_error rather than timeout).
CANCEL_GRACE = 0.05
MIN_BUDGET = 0.1
MAX_BUDGET = 300.0


@dataclass(frozen=True)
class ScrapeResult:
    runs: dict[str, list[CheckRun[Any]]]
    budget: float  # seconds the scrape was allowed
    duration: float
    finished_at: float = field(default_factory=time.time)  # Unix time the evidence is from

    def all_runs(self) -> list[CheckRun[Any]]:
        return [run for runs in self.runs.values() for run in runs]


def scrape_budget(header: str | None, settings: Settings, reserve: float = 0.0) -> float:
    """Seconds this scrape's checks may take.

    Prometheus' timeout header (or the default), minus the configured offset, minus ``reserve``
    (the time the answer itself takes to build).
    """
    timeout = settings.scrape.default_timeout
    if header:
        try:
            value = float(header)
        except ValueError:
            value = 0.0
        if 0 < value < math.inf:
            timeout = min(value, MAX_BUDGET)
    return max(MIN_BUDGET, timeout - settings.scrape.timeout_offset - reserve)


async def _run_one(
    spec: CheckSpec[Any, Any],
    ctx: CheckContext,
    server: Server,
    check_settings: Any,
    limit: asyncio.Semaphore | None,
) -> CheckRun[Any]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome: Any
    try:
        if limit is None:
            outcome = await spec.run(ctx, server, check_settings)
        else:
            async with limit:
                outcome = await spec.run(ctx, server, check_settings)
    except CheckError as exc:
        outcome = Failure(exc.reason, exc.detail)
    except TimeoutError:
        outcome = Failure("timeout", "not done before the scrape deadline")
    except asyncio.CancelledError:
        if loop.time() < ctx.deadline:
            raise  # not the deadline: the whole scrape is being cancelled
        outcome = Failure("timeout", "not done before the scrape deadline")
    except Exception as exc:
        log.warning("check %s on %s raised %r", spec.name, server.name, exc, exc_info=exc)
        outcome = Failure("error", f"internal error: {exc!r}")
    if isinstance(outcome, Failure):
        log.debug(
            "check %s on %s failed: %s (%s)", spec.name, server.name, outcome.reason, outcome.detail
        )
    return CheckRun(spec.name, server, outcome, loop.time() - started)


def _cancel_unfinished(tasks: list[asyncio.Task[CheckRun[Any]]]) -> None:
    for task in tasks:
        if not task.done():
            task.cancel()


async def run_scrape(
    settings: Settings,
    inventory: Inventory,
    budget: float,
    checks: Sequence[CheckSpec[Any, Any]] = CHECKS,
    context: Sequence[Server] | None = None,
) -> ScrapeResult:
    """Run every applicable check and return within ``budget`` seconds plus a few milliseconds.

    ``context``: the servers checks may pair their targets with (``CheckContext.servers``);
    default the inventory's. /probe runs one target with the whole inventory as context.
    """
    loop = asyncio.get_running_loop()
    peers = tuple(inventory.servers if context is None else context)
    started = loop.time()
    scrape_deadline = started + budget
    resolver = Resolver(settings.dns)
    shared = Shared()
    batches: list[tuple[CheckSpec[Any, Any], CheckContext, Any, list[Server]]] = []
    for spec in checks:
        check_settings = spec.settings(settings)
        if spec.enabled(check_settings):
            deadline = min(scrape_deadline, started + spec.timeout(check_settings))
            targets = [s for s in inventory.servers if spec.applies_to(s, check_settings)]
            ctx = CheckContext(deadline, settings, resolver, shared, peers)
            batches.append((spec, ctx, check_settings, targets))

    # Under the limit, a semaphore would only cost time.
    limit = None
    if sum(len(targets) for *_, targets in batches) > settings.scrape.max_concurrency:
        limit = asyncio.Semaphore(settings.scrape.max_concurrency)
    runs: dict[str, list[CheckRun[Any]]] = {}
    planned: list[tuple[str, Server, asyncio.Task[CheckRun[Any]]]] = []
    timers: list[asyncio.TimerHandle] = []
    for spec, ctx, check_settings, targets in batches:
        runs[spec.name] = []
        tasks = [
            asyncio.create_task(_run_one(spec, ctx, server, check_settings, limit))
            for server in targets
        ]
        planned.extend(
            (spec.name, server, task) for server, task in zip(targets, tasks, strict=True)
        )
        # One timer per check rather than one per task: a scrape may run thousands of tasks.
        timers.append(loop.call_at(ctx.deadline + CANCEL_GRACE, _cancel_unfinished, tasks))

    try:
        if planned:
            # Only a check that swallows cancellation can still run here; never wait for it.
            await asyncio.wait(
                [task for _, _, task in planned],
                timeout=max(0.0, scrape_deadline + 2 * CANCEL_GRACE - loop.time()),
            )
    finally:
        # Also when this scrape itself is cancelled: no check may outlive it.
        for timer in timers:
            timer.cancel()
        _cancel_unfinished([task for _, _, task in planned])
        resolver.close()
        shared.close()
    for name, server, task in planned:
        if task.done() and not task.cancelled() and task.exception() is None:
            runs[name].append(task.result())
        else:
            runs[name].append(
                CheckRun(
                    name,
                    server,
                    Failure("timeout", "did not stop at the deadline"),
                    loop.time() - started,
                )
            )
    return ScrapeResult(runs, budget, loop.time() - started)
