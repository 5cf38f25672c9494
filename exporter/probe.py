"""Multi-target mode: ``/probe?target=&module=`` runs one check on one server, and ``/sd`` lists
the inventory in Prometheus' HTTP service discovery format.

Never an open proxy. A target is admitted only when it is a server of this exporter's inventory
(its name, any case), or when ``probe.allow`` admits it: host names exactly, ``*.suffix`` for
any name below the suffix, CIDRs for IP literals only. The decision is made on the text of the
request before any DNS lookup or packet, and a name is never resolved to decide. A port in the
target is never accepted: ports come from the inventory or the check's configuration. Anything
refused is answered 400/403 and counted in ``exchange_auth_probe_denied_total{reason}``.

The answer carries the check's own series, exactly as ``/metrics`` has them for that server,
plus ``exchange_auth_probe_success`` and ``exchange_auth_probe_duration_seconds``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from .checks.base import CheckRun, CheckSpec, Failure, clock_readings_of
from .checks.clock import clock_metrics
from .config import Settings
from .inventory import Inventory
from .scrape import MIN_BUDGET, run_scrape, scrape_budget
from .servers import Role, Server

__all__ = [
    "DENIED_REASONS",
    "AllowList",
    "ProbeRefused",
    "ProbeState",
    "Target",
    "handle_probe",
    "parse_target",
    "service_discovery",
    "with_probe_metrics",
]

log = logging.getLogger(__name__)

TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
# Bounded values of exchange_auth_probe_denied_total's reason label.
DENIED_REASONS = (
    "not_allowed",  # 403: neither in the inventory nor admitted by probe.allow
    "bad_request",  # 400: no or malformed target, a port in it, a role that does not fit
    "unknown_module",  # 400: module is not a check name
    "module_disabled",  # 400: the check is disabled in the configuration
    "disabled",  # 403: probe.enabled is false
    "overloaded",  # 503: probe.max_concurrency probes ran for the whole budget
)
# fullmatch, not match with "$": "$" also matches before a final newline.
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_OFFSET_FAMILIES = {"exchange_auth_clock_offset_seconds", "exchange_auth_clock_uncertainty_seconds"}


class ProbeRefused(Exception):
    """A request that is not probed: ``reason`` is the counter's label, ``message`` the body."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def _bad(message: str) -> ProbeRefused:
    return ProbeRefused(400, "bad_request", message)


@dataclass(frozen=True, slots=True)
class Target:
    """A target as written: a lower-case host name, or an IP literal (then ``ip`` is set)."""

    text: str
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None


def parse_target(raw: str | None) -> Target:
    """The ``target`` parameter, or :class:`ProbeRefused` (bad_request) saying what is wrong."""
    if not raw:
        raise _bad("the target parameter is required, e.g. /probe?target=dc01.corp.example.com")
    shown = repr(raw[:100])
    text = raw.strip().rstrip(".").lower()
    if not text or len(text) > 253 or not (text.isascii() and text.isprintable()):
        raise _bad(f"invalid target {shown}: expected a host name or an IP address")
    if "%" in text or "[" in text or "/" in text or "@" in text:
        raise _bad(
            f"invalid target {shown}: expected a bare host name or IP address (no URL, no "
            "port, no zone index)"
        )
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return Target(str(ip), ip)
    if ":" in text:
        raise _bad(
            f"invalid target {shown}: a port is not accepted; ports come from the inventory "
            "or the check's configuration"
        )
    labels = text.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise _bad(f"invalid target {shown}: expected a host name or an IP address")
    try:
        # 127.1, 0x7f.1 or 2130706433 would reach an address no CIDR of the allow-list was
        # checked against: IPv4 addresses are accepted in dotted decimal only.
        socket.inet_aton(text)
    except OSError:
        return Target(text)
    raise _bad(f"invalid target {shown}: write IPv4 addresses as four decimal numbers")


@dataclass(frozen=True)
class AllowList:
    """``probe.allow``: names exactly, ``*.suffix`` below a suffix, CIDRs for IP literals."""

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> AllowList:
        """From the validated, normalised entries of ``probe.allow`` (exporter/config.py)."""
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            if entry.startswith("*."):
                suffixes.append(entry[1:])  # keeps the dot: *.corp.com admits a.corp.com only
                continue
            try:
                networks.append(ipaddress.ip_network(entry))
            except ValueError:
                names.add(entry)
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def admits(self, target: Target) -> bool:
        if target.ip is not None:
            # An address of another IP version is never inside the network.
            return any(target.ip in network for network in self.networks)
        return target.text in self.names or any(target.text.endswith(s) for s in self.suffixes)


class ProbeState:
    """What outlives one request: the refusal counters and the concurrency limit."""

    def __init__(self) -> None:
        self.denied: Counter[str] = Counter(dict.fromkeys(DENIED_REASONS, 0))
        self._limit: asyncio.Semaphore | None = None
        self._limit_size = 0

    def limit(self, size: int) -> asyncio.Semaphore:
        # A reload may change probe.max_concurrency; probes holding the old one finish with it.
        if self._limit is None or size != self._limit_size:
            self._limit, self._limit_size = asyncio.Semaphore(size), size
        return self._limit

    def collect(self) -> Iterator[Metric]:
        denied = CounterMetricFamily(
            "exchange_auth_probe_denied",
            "Requests to /probe that were refused without probing anything: not_allowed (not in "
            "the inventory nor admitted by probe.allow), bad_request, unknown_module, "
            "module_disabled, disabled (probe.enabled false) or overloaded.",
            labels=["reason"],
        )
        for reason, count in sorted(self.denied.items()):
            denied.add_metric([reason], count)
        yield denied


class _Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


@dataclass(frozen=True)
class _Chained:
    parts: tuple[_Collector, ...]

    def collect(self) -> Iterator[Metric]:
        for part in self.parts:
            yield from part.collect()


@dataclass(frozen=True)
class _Families:
    families: tuple[Metric, ...]

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def with_probe_metrics(collector: _Collector, state: ProbeState) -> _Collector:
    """``/metrics``' collector followed by the probe counters."""
    return _Chained((collector, state))


def _module(checks: Sequence[CheckSpec[Any, Any]], name: str | None) -> CheckSpec[Any, Any]:
    names = ", ".join(spec.name for spec in checks)
    if not name:
        raise ProbeRefused(
            400, "unknown_module", f"the module parameter is required: one of {names}"
        )
    for spec in checks:
        if spec.name == name:
            return spec
    raise ProbeRefused(
        400, "unknown_module", f"unknown module {name[:50]!r}: expected one of {names}"
    )


def _roles_of(spec: CheckSpec[Any, Any], check_settings: Any) -> list[Role]:
    return [role for role in Role if spec.applies_to(Server("probe.invalid", role), check_settings)]


def _role_param(raw: str | None) -> Role | None:
    if raw is None:
        return None
    try:
        return Role(raw)
    except ValueError:
        choices = ", ".join(r.value for r in Role)
        raise _bad(f"invalid role {raw[:50]!r}: expected one of {choices}") from None


def _server_for(
    target: Target,
    role: Role | None,
    spec: CheckSpec[Any, Any],
    check_settings: Any,
    settings: Settings,
    inventory: Inventory,
) -> Server:
    """The server to probe, decided on the request's text alone: no lookup, no packet."""
    known = next((s for s in inventory.servers if s.name == target.text), None)
    if known is not None:
        if role is not None and role is not known.role:
            raise _bad(f"{known.name} is a {known.role.value} server in the inventory, not {role}")
        if not spec.applies_to(known, check_settings):
            raise _bad(f"module {spec.name} does not apply to {known.role.value} servers")
        return known
    if not AllowList.from_entries(settings.probe.allow).admits(target):
        raise ProbeRefused(
            403,
            "not_allowed",
            f"target {target.text!r} is not in the inventory"
            + (f" (shard {inventory.shard})" if inventory.shard.sharded else "")
            + " and probe.allow does not admit it",
        )
    roles = _roles_of(spec, check_settings)
    if role is None:
        if len(roles) != 1:
            raise _bad(
                f"module {spec.name} applies to every role: say which with role="
                f"{' or role='.join(r.value for r in roles)}"
            )
        role = roles[0]
    elif role not in roles:
        raise _bad(f"module {spec.name} does not apply to {role.value} servers")
    address = str(target.ip) if target.ip is not None else None
    return Server(target.text, role, address, origin="probe")


def _healthy(outcome: object) -> bool:
    """Every port the check probed answered (an inconclusive 464/udp is not a failure)."""
    ports: Sequence[Any] = getattr(outcome, "ports", ())
    return all(port.up or getattr(port, "reason", "") == "inconclusive" for port in ports)


def _probe_metrics(
    spec: CheckSpec[Any, Any],
    runs: Sequence[CheckRun[Any]],
    settings: Settings,
    duration: float,
) -> Iterator[Metric]:
    yield from spec.emit(runs, spec.settings(settings))
    readings = [reading for run in runs for reading in clock_readings_of(run.outcome)]
    # The same offset series as /metrics; skew pairs need two servers, a probe has one.
    yield from (m for m in clock_metrics(readings, settings) if m.name in _OFFSET_FAMILIES)
    check_success = GaugeMetricFamily(
        "exchange_auth_check_success",
        "1 when the check ran to a verdict for the server in this scrape.",
        labels=["check", "server"],
    )
    check_duration = GaugeMetricFamily(
        "exchange_auth_check_duration_seconds",
        "How long the check took for the server in this scrape.",
        labels=["check", "server"],
    )
    for run in runs:
        check_success.add_metric([run.check, run.server.name], 1 if run.ok else 0)
        check_duration.add_metric([run.check, run.server.name], run.duration)
    yield check_success
    yield check_duration
    success = bool(runs) and all(
        not isinstance(run.outcome, Failure) and _healthy(run.outcome) for run in runs
    )
    yield GaugeMetricFamily(
        "exchange_auth_probe_success",
        "1 when the module's check reached the target and every port it probes answered.",
        value=1 if success else 0,
    )
    yield GaugeMetricFamily(
        "exchange_auth_probe_duration_seconds",
        "How long the probe took, waiting for a free slot included.",
        value=duration,
    )


async def handle_probe(
    query: Mapping[str, str],
    headers: Mapping[str, str],
    settings: Settings,
    inventory: Inventory,
    checks: Sequence[CheckSpec[Any, Any]],
    state: ProbeState,
) -> web.Response:
    """``/probe``: refuse (counted) or run one check on one server within the scrape budget."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        if not settings.probe.enabled:
            raise ProbeRefused(403, "disabled", "/probe is disabled (probe.enabled: false)")
        spec = _module(checks, query.get("module"))
        check_settings = spec.settings(settings)
        target = parse_target(query.get("target"))
        server = _server_for(
            target, _role_param(query.get("role")), spec, check_settings, settings, inventory
        )
        if not spec.enabled(check_settings):
            raise ProbeRefused(
                400, "module_disabled", f"module {spec.name} is disabled in the configuration"
            )
        budget = scrape_budget(headers.get(TIMEOUT_HEADER), settings)
        limit = state.limit(settings.probe.max_concurrency)
        try:
            await asyncio.wait_for(limit.acquire(), budget)
        except TimeoutError:
            raise ProbeRefused(
                503,
                "overloaded",
                f"{settings.probe.max_concurrency} probes (probe.max_concurrency) ran for the "
                "whole scrape timeout",
            ) from None
    except ProbeRefused as refused:
        state.denied[refused.reason] += 1
        log.debug("probe refused (%s): %s", refused.reason, refused.message)
        return web.Response(status=refused.status, text=refused.message + "\n")
    try:
        remaining = max(MIN_BUDGET, budget - (loop.time() - started))
        one = Inventory((server,), shard=inventory.shard)
        context = (*inventory.servers, *inventory.clock_peers)  # e.g. the DCs to ask for tickets
        result = await run_scrape(settings, one, remaining, [spec], context=context)
    finally:
        limit.release()
    runs = result.runs.get(spec.name, [])
    answer = _Families(tuple(_probe_metrics(spec, runs, settings, loop.time() - started)))
    encoder, content_type = choose_encoder(headers.get("Accept", ""))
    return web.Response(body=encoder(answer), headers={"Content-Type": content_type})


def _modules_for(
    server: Server, checks: Sequence[CheckSpec[Any, Any]], settings: Settings
) -> list[str]:
    found = []
    for spec in checks:
        check_settings = spec.settings(settings)
        if spec.enabled(check_settings) and spec.applies_to(server, check_settings):
            found.append(spec.name)
    return found


def service_discovery(
    query: Mapping[str, str],
    settings: Settings,
    inventory: Inventory,
    checks: Sequence[CheckSpec[Any, Any]],
) -> web.Response:
    """``/sd``: one target group per server, with ``__meta_exchange_auth_*`` labels only.

    Only meta labels: a plain ``role`` target label would clash with the ``role`` label the
    probe's series carry. ``?role=`` and ``?module=`` keep the servers of a role, or those the
    module applies to.
    """
    try:
        role = _role_param(query.get("role"))
        wanted = _module(checks, query["module"]).name if "module" in query else None
    except ProbeRefused as refused:
        return web.Response(status=refused.status, text=refused.message + "\n")
    groups: list[dict[str, Any]] = []
    for server in inventory.servers:
        modules = _modules_for(server, checks, settings)
        if (role is not None and server.role is not role) or (
            wanted is not None and wanted not in modules
        ):
            continue
        labels = {
            "__meta_exchange_auth_role": server.role.value,
            "__meta_exchange_auth_origin": server.origin,
            # Comma on both ends, so a relabel regex `.*,kerberos,.*` matches one module.
            "__meta_exchange_auth_modules": "," + ",".join(modules) + ",",
            "__meta_exchange_auth_shard": str(inventory.shard),
        }
        if server.address:
            labels["__meta_exchange_auth_address"] = server.address
        if server.exchange is not None:
            labels["__meta_exchange_auth_site"] = server.exchange.site
            labels["__meta_exchange_auth_version"] = server.exchange.version
            labels["__meta_exchange_auth_exchange_roles"] = server.exchange.role_names
        groups.append({"targets": [server.name], "labels": labels})
    return web.json_response(groups)
