"""The aiohttp application: routes, the live configuration, and reloads."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from prometheus_client.exposition import choose_encoder

from . import kdc_workers, ldap
from .background import Scan, ScanRunner
from .checks import CHECKS, SCANS
from .checks.base import CheckSpec
from .config import ConfigError, Settings, load_file
from .inventory import Inventory, build_inventory, refresh_interval
from .metrics import ReloadStatus, ScrapeCollector
from .probe import ProbeState, handle_probe, service_discovery, with_probe_metrics
from .scrape import ScrapeResult, run_scrape, scrape_budget
from .shard import WHOLE, Shard, checks_with_clock_peers
from .status_page import render_status_page
from .verdicts import Evidence, verdicts
from .web_config import WebSecurity

__all__ = ["RUNTIME", "Runtime", "make_app"]

log = logging.getLogger(__name__)

TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
# The status page reuses Prometheus' last scrape when it is this recent, else scrapes itself.
STATUS_MAX_AGE = 60.0


class Runtime:
    """The configuration in force and its inventory; swapped whole on a successful reload."""

    def __init__(
        self,
        config_file: Path,
        settings: Settings,
        inventory: Inventory,
        checks: Sequence[CheckSpec[Any, Any]] = CHECKS,
        scans: Sequence[Scan[Any]] = SCANS,
        shard: Shard = WHOLE,
    ) -> None:
        self.config_file = config_file
        self.shard = shard
        self.checks = checks
        self.scans = ScanRunner(scans, lambda: self.settings, self._scan_inventory)
        self.settings = settings
        self.inventory = inventory
        self.reload_status = ReloadStatus(successful=True, last_success=time.time())
        # --web.config.file (TLS, basic auth): reloaded with the configuration, all or nothing.
        self.web_security: WebSecurity | None = None
        self._lock = asyncio.Lock()
        self._inflight: asyncio.Task[ScrapeResult] | None = None
        self.last_result: ScrapeResult | None = None
        self._inflight_deadline = 0.0
        # How long the last answer took to encode: kept back from the next scrape's budget.
        self.exposition_seconds = 0.0

    def _scan_inventory(self) -> Inventory:
        """What the background scans look at: on a shard, the other shards' DCs too, so that
        forest-wide verdicts (replication) weigh every DC; each series is still reported by
        the shard owning its server (ScrapeCollector)."""
        inventory = self.inventory
        if not inventory.clock_peers:
            return inventory
        return dataclasses.replace(
            inventory, servers=(*inventory.servers, *inventory.clock_peers), clock_peers=()
        )

    async def scrape(self, budget: float) -> ScrapeResult:
        """Run a scrape, or join the one in flight when it ends in time for this request.

        Two Prometheus replicas, or a person with curl beside Prometheus, then cost the
        domain controllers one round of probes, not one per request.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        task = self._inflight
        if task is None or task.done() or self._inflight_deadline > deadline:
            inventory, checks = self.inventory, list(self.checks)
            if inventory.clock_peers:  # sharded: the other shards' DCs are read for clocks only
                checks = checks_with_clock_peers(checks, inventory.clock_peers)
                inventory = dataclasses.replace(
                    inventory, servers=(*inventory.servers, *inventory.clock_peers)
                )
            task = asyncio.create_task(run_scrape(self.settings, inventory, budget, checks))
            self._inflight, self._inflight_deadline = task, deadline
        result = await asyncio.shield(task)
        # The status page reads this instead of probing again when Prometheus scraped lately.
        if self.last_result is None or result.finished_at >= self.last_result.finished_at:
            self.last_result = result
        return result

    @classmethod
    async def load(cls, config_file: Path, shard: Shard = WHOLE) -> Runtime:
        settings = load_file(config_file)
        _log_warnings(settings)
        inventory = await build_inventory(settings, shard=shard)
        return cls(config_file, settings, inventory, shard=shard)

    async def refresh_inventory(self) -> None:
        """Run discovery again; what a failing discovery found before is kept."""
        async with self._lock:
            inventory = await build_inventory(self.settings, self.inventory, self.shard)
            changed = {s.name for s in inventory.servers} != {
                s.name for s in self.inventory.servers
            }
            self.inventory = inventory
        if changed:
            self.scans.wake()

    async def reload(self) -> None:
        """Load the file again; on any problem keep the configuration in force and re-raise."""
        async with self._lock:
            try:
                settings = await asyncio.to_thread(load_file, self.config_file)
                web_config = (
                    None if self.web_security is None else await self.web_security.load_again()
                )
                inventory = await build_inventory(settings, self.inventory, self.shard)
            except Exception as exc:
                self.reload_status = ReloadStatus(False, self.reload_status.last_success)
                if isinstance(exc, ConfigError):
                    raise
                raise ConfigError(str(self.config_file), [f"unexpected error: {exc!r}"]) from exc
            _log_warnings(settings)
            self.settings, self.inventory = settings, inventory
            if self.web_security is not None and web_config is not None:
                self.web_security.apply(web_config)
            self.reload_status = ReloadStatus(True, time.time())
            self.scans.wake()
            log.info(
                "configuration reloaded from %s: %d servers",
                self.config_file,
                len(inventory.servers),
            )

    async def reload_logged(self) -> None:
        try:
            await self.reload()
        except ConfigError as exc:
            log.error("reload failed, keeping the previous configuration: %s", exc)


def _log_warnings(settings: Settings) -> None:
    for warning in settings.warnings():
        log.warning("%s", warning)


RUNTIME = web.AppKey("runtime", Runtime)
PROBES = web.AppKey("probes", ProbeState)


async def _background_scans(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    runtime.scans.start()
    yield
    await runtime.scans.stop()
    ldap.close_all()
    # The Kerberos worker processes (one per DC) would otherwise live until interpreter exit.
    await asyncio.to_thread(kdc_workers.close_all)


async def _rediscover(app: web.Application) -> AsyncIterator[None]:
    """Background discovery on the configured interval (re-read after each reload)."""
    runtime = app[RUNTIME]

    async def loop() -> None:
        while True:
            await asyncio.sleep(refresh_interval(runtime.settings) or 60.0)
            if refresh_interval(runtime.settings) is not None:
                try:
                    await runtime.refresh_inventory()
                except Exception:
                    log.exception("inventory refresh failed")

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def metrics(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    settings, inventory = runtime.settings, runtime.inventory
    reserve = min(runtime.exposition_seconds * 1.5, 1.0)
    budget = scrape_budget(request.headers.get(TIMEOUT_HEADER), settings, reserve)
    result = await runtime.scrape(budget)
    collector = with_probe_metrics(
        ScrapeCollector(
            result, settings, inventory, runtime.reload_status, runtime.checks, runtime.scans
        ),
        request.app[PROBES],
    )
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    started = time.monotonic()
    # Large inventories take long to encode; off the loop, other scrapes' timers keep running.
    body = await asyncio.to_thread(encoder, collector)
    runtime.exposition_seconds = time.monotonic() - started
    response = web.Response(body=body, headers={"Content-Type": content_type})
    response.enable_compression()
    return response


async def probe(request: web.Request) -> web.Response:
    """One check on one server, the blackbox way (exporter/probe.py)."""
    runtime = request.app[RUNTIME]
    return await handle_probe(
        request.query,
        request.headers,
        runtime.settings,
        runtime.inventory,
        runtime.checks,
        request.app[PROBES],
    )


async def sd(request: web.Request) -> web.Response:
    """The inventory (this shard's) in Prometheus' HTTP service discovery format."""
    runtime = request.app[RUNTIME]
    return service_discovery(request.query, runtime.settings, runtime.inventory, runtime.checks)


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="Healthy\n")


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="Ready\n")


async def config(request: web.Request) -> web.Response:
    text = yaml.safe_dump(request.app[RUNTIME].settings.redacted(), sort_keys=False)
    return web.Response(text=text, content_type="text/plain")


async def reload(request: web.Request) -> web.Response:
    try:
        await request.app[RUNTIME].reload()
    except ConfigError as exc:
        log.error("reload failed, keeping the previous configuration: %s", exc)
        return web.Response(
            status=500, text=f"reload failed, previous configuration kept:\n{exc}\n"
        )
    return web.Response(text="configuration reloaded\n")


async def landing(request: web.Request) -> web.Response:
    """The verdict matrix, from the last scrape when it is recent, else from a scrape now."""
    runtime = request.app[RUNTIME]
    result = runtime.last_result
    if result is None or time.time() - result.finished_at > STATUS_MAX_AGE:
        result = await runtime.scrape(scrape_budget(None, runtime.settings))
    evidence = Evidence(runtime.settings, runtime.inventory, result, runtime.scans.states)
    page = render_status_page(
        verdicts(evidence), runtime.inventory, runtime.settings.realm, result.finished_at
    )
    return web.Response(text=page, content_type="text/html")


def make_app(runtime: Runtime) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[RUNTIME] = runtime
    app[PROBES] = ProbeState()
    app.router.add_get("/", landing)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/probe", probe)
    app.router.add_get("/sd", sd)
    app.router.add_get("/config", config)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.cleanup_ctx.append(_rediscover)
    app.cleanup_ctx.append(_background_scans)
    return app
