"""Turns one scrape's results into metric families; ``collect()`` only formats, never does I/O."""

from __future__ import annotations

import platform
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from . import __version__
from .background import ScanRunner, scan_metrics
from .checks import CHECKS
from .checks.base import CheckSpec, ClockReading, clock_readings_of
from .checks.clock import clock_metrics
from .config import Settings
from .inventory import Inventory, Role
from .scrape import ScrapeResult
from .shard import CLOCK_PEERS_CHECK
from .verdicts import Evidence, verdict_metrics, verdicts

__all__ = ["ReloadStatus", "ScrapeCollector"]

# Each shard's own scans' health (labelled scan=...): always reported.
SCAN_SELF_METRICS = frozenset(
    {
        "exchange_auth_last_success_timestamp_seconds",
        "exchange_auth_scan_success",
        "exchange_auth_scan_failure",
        "exchange_auth_scan_duration_seconds",
        "exchange_auth_scan_objects",
    }
)


@dataclass(frozen=True)
class ReloadStatus:
    successful: bool
    last_success: float


class ScrapeCollector:
    """A collector for one ``/metrics`` response, built fresh for each request."""

    def __init__(
        self,
        result: ScrapeResult,
        settings: Settings,
        inventory: Inventory,
        reload: ReloadStatus,
        checks: Sequence[CheckSpec[Any, Any]] = CHECKS,
        scans: ScanRunner | None = None,
    ) -> None:
        self._result = result
        self._settings = settings
        self._inventory = inventory
        self._reload = reload
        self._checks = checks
        self._scans = scans

    def collect(self) -> Iterator[Metric]:
        result, settings = self._result, self._settings
        for spec in self._checks:
            if spec.name in result.runs:
                yield from spec.emit(result.runs[spec.name], spec.settings(settings))

        readings: list[ClockReading] = []
        for run in result.all_runs():
            readings.extend(clock_readings_of(run.outcome))
        yield from self._without_clock_peers(clock_metrics(readings, settings))
        yield from self._check_metrics()
        yield from self._shard_reported(scan_metrics(self._scans, settings, self._inventory))
        states = self._scans.states if self._scans is not None else {}
        yield from verdict_metrics(verdicts(Evidence(settings, self._inventory, result, states)))
        yield from self._inventory_metrics()
        yield from self._exchange_metrics()
        yield from self._self_metrics()

    def _check_metrics(self) -> Iterator[Metric]:
        success = GaugeMetricFamily(
            "exchange_auth_check_success",
            "1 when the check ran to a verdict for the server in this scrape.",
            labels=["check", "server"],
        )
        duration = GaugeMetricFamily(
            "exchange_auth_check_duration_seconds",
            "How long the check took for the server in this scrape.",
            labels=["check", "server"],
        )
        for run in self._result.all_runs():
            if run.check == CLOCK_PEERS_CHECK:
                continue
            labels = [run.check, run.server.name]
            success.add_metric(labels, 1 if run.ok else 0)
            duration.add_metric(labels, run.duration)
        yield success
        yield duration

    def _without_clock_peers(self, families: Iterator[Metric]) -> Iterator[Metric]:
        """Another shard's DCs feed this shard's skew pairs, but their series are that shard's."""
        peers = {server.name for server in self._inventory.clock_peers}
        for family in families:
            if peers:
                family.samples = [s for s in family.samples if s.labels.get("server") not in peers]
            yield family

    def _shard_reported(self, families: Iterator[Metric]) -> Iterator[Metric]:
        """Each shard runs every scan; a scan's series are reported by one shard only."""
        shard = self._inventory.shard
        for family in families:
            if shard.sharded and family.name not in SCAN_SELF_METRICS:
                family.samples = [s for s in family.samples if shard.reports(s.labels)]
            yield family

    def _inventory_metrics(self) -> Iterator[Metric]:
        shard = self._inventory.shard
        info = GaugeMetricFamily(
            "exchange_auth_inventory_shard",
            "Always 1: this exporter's shard of the inventory (--inventory.shard=index/count; "
            "0/1 when not sharded).",
            labels=["index", "count"],
        )
        info.add_metric([str(shard.index), str(shard.count)], 1)
        yield info
        yield GaugeMetricFamily(
            "exchange_auth_inventory_clock_peers",
            "Domain controllers of other shards whose clocks this shard reads over NTP for the "
            "skew pairs only (their own series come from their shard).",
            value=len(self._inventory.clock_peers),
        )
        servers = GaugeMetricFamily(
            "exchange_auth_inventory_servers",
            "Servers in the inventory, by role and by where they came from (static, dns, ldap).",
            labels=["role", "source"],
        )
        counts = Counter((s.role.value, s.origin) for s in self._inventory.servers)
        for each_role in Role:
            counts.setdefault((each_role.value, "static"), 0)
        for (role, source), count in sorted(counts.items()):
            servers.add_metric([role, source], count)
        yield servers
        success = GaugeMetricFamily(
            "exchange_auth_discovery_success",
            "1 when the last discovery of servers of this role by this method succeeded; on failure "
            "the servers it found before are kept.",
            labels=["role", "method"],
        )
        last_success = GaugeMetricFamily(
            "exchange_auth_discovery_last_success_timestamp_seconds",
            "When discovery of servers of this role by this method last succeeded; 0 = never.",
            labels=["role", "method"],
        )
        failure = GaugeMetricFamily(
            "exchange_auth_discovery_failure",
            "1 for the reason the last discovery failed: dns, bind_failed, tls_failed, timeout, "
            "unreachable, not_found, search_failed, unsupported or error.",
            labels=["role", "method", "reason"],
        )
        for d in self._inventory.discoveries:
            success.add_metric([d.role.value, d.method], 1 if d.success else 0)
            last_success.add_metric([d.role.value, d.method], d.last_success)
            if not d.success:
                failure.add_metric([d.role.value, d.method, d.reason], 1)
        yield success
        yield last_success
        yield failure

    def _exchange_metrics(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "exchange_auth_server_info",
            "1 per Exchange server found in the Exchange configuration in AD, with its version, AD "
            "site and Exchange roles (msExchCurrentServerRoles).",
            labels=["server", "role", "version", "site", "exchange_roles"],
        )
        connector = GaugeMetricFamily(
            "exchange_auth_receive_connector_exchange_auth_enabled",
            "1 when the receive connector offers ExchangeServer authentication (bit 0x10 of "
            "msExchSMTPReceiveInboundSecurityFlag), which server-to-server mail needs.",
            labels=["server", "connector"],
        )
        for server in self._inventory.exchange_servers:
            details = server.exchange
            if details is None:
                continue
            info.add_metric(
                [server.name, server.role.value, details.version, details.site, details.role_names],
                1,
            )
            for receive in details.connectors:
                connector.add_metric(
                    [server.name, receive.name], 1 if receive.exchange_server_auth else 0
                )
        yield info
        yield connector

    def _self_metrics(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "exchange_auth_scrape_duration_seconds",
            "How long the checks of this scrape took.",
            value=self._result.duration,
        )
        yield GaugeMetricFamily(
            "exchange_auth_scrape_timeout_seconds",
            "The time budget of this scrape: the scrape timeout header minus the offset.",
            value=self._result.budget,
        )
        info = GaugeMetricFamily(
            "exchange_auth_build_info",
            "Version of the exporter and of the Python it runs on; always 1.",
            labels=["version", "python_version"],
        )
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
        yield GaugeMetricFamily(
            "exchange_auth_config_last_reload_successful",
            "1 when the last configuration reload succeeded; a failed reload keeps the previous configuration.",
            value=1 if self._reload.successful else 0,
        )
        yield GaugeMetricFamily(
            "exchange_auth_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully.",
            value=self._reload.last_success,
        )
