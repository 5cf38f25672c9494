"""Each domain controller's inbound replication, partner by partner: ``repadmin /showrepl`` as
time series (KB 979174's second cause: an SPN or password change that has not reached every DC).

A background scan, every ``checks.replication.refresh_interval``: each DC of the inventory is
read over its own LDAP (the ``ldap`` section's credentials and TLS settings; that DC's address,
else its name, and its ``ports.ldap``). Windows DCs describe their neighbors in the rootDSE's constructed
``msDS-ReplAllInboundNeighbors``; Samba leaves it empty, so the ``repsFrom`` values of each
naming-context head are read instead. Partners are named by the ``dNSHostName`` of the server
object above their NTDS Settings object, as the DC being read knows it. A DC that cannot be
read says why and keeps its last reading; the other DCs are reported as usual.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric

from ..background import Scan, ScanState
from ..config import Settings
from ..inventory import Inventory
from ..ldap import (
    LdapClient,
    LdapEntry,
    LdapError,
    LdapRawEntry,
    LdapTarget,
    client_for,
    run_in_ldap_thread,
)
from ..protocols.replication import (
    Neighbor,
    ReplicationParseError,
    parse_neighbor_xml,
    parse_replica_link,
    result_name,
    signed_result,
)
from ..servers import Server

__all__ = [
    "NEIGHBORS_ATTRIBUTE",
    "REASONS",
    "REPLICATION_SCAN",
    "DcOutcome",
    "DcReading",
    "DsaDirectory",
    "PartnerState",
    "Replication",
    "dsa_directory",
    "read_dc",
    "replication_metrics",
    "scan_replication",
]

log = logging.getLogger(__name__)

NEIGHBORS_ATTRIBUTE = "msDS-ReplAllInboundNeighbors"
REPS_FROM = "repsFrom"
# Why a DC could not be read; a bounded label set.
REASONS = (
    "bind_failed",
    "tls_failed",
    "timeout",
    "unreachable",
    "no_rights",
    "not_found",
    "search_failed",
    "dns",
    "error",
)
# DCs read at once: the LDAP thread pool is shared with the other scans and discovery.
_PARALLEL_DCS = 8
# A hub DC with more neighbor values than MaxValRange gets them in ranges; bounded all the same.
_MAX_RANGES = 64
_RANGE = re.compile(r"range=(\d+)-(\d+|\*)", re.IGNORECASE)
_DSA_FILTER = "(|(objectClass=server)(objectClass=nTDSDSA))"
_DSA_ATTRIBUTES = ("objectClass", "objectGUID", "dNSHostName")
_DN_SPACING = re.compile(r"\s*([,=])\s*")
# What ldap3 and getaddrinfo (glibc, musl, BSD) say of a name that does not resolve.
_NAME_NOT_FOUND = (
    "invalid server address",
    "name or service not known",
    "nodename nor servname",
    "no address associated",
    "temporary failure in name resolution",
    "name does not resolve",
)


@dataclass(frozen=True, slots=True)
class PartnerState:
    """One (source DC, naming context) pair of one DC, labels resolved."""

    partner: str
    naming_context: str
    consecutive_failures: int | None
    last_success: float | None  # Unix seconds; None: never succeeded
    last_attempt: float | None  # None: never attempted
    last_result: int | None  # unsigned 32-bit; None when the DC did not say


@dataclass(frozen=True, slots=True)
class DcReading:
    source: str  # msDS-ReplAllInboundNeighbors or repsFrom
    partners: tuple[PartnerState, ...]
    unparsed: int  # values that could not be read (left out of partners)
    read_at: float  # Unix time


@dataclass(frozen=True, slots=True)
class DcOutcome:
    """This run's reading of one DC, or why there is none and the last good reading."""

    reading: DcReading | None
    reason: str = ""  # "" when this run read the DC
    detail: str = ""


@dataclass(frozen=True)
class Replication:
    dcs: Mapping[str, DcOutcome]  # by the DC's inventory name

    def problems(self, stale_after: float, now: float) -> list[str]:
        """What ``repadmin /replsummary`` would flag: failures, stale or never-replicated partners."""
        found: list[str] = []
        for dc, outcome in sorted(self.dcs.items()):
            reading = outcome.reading
            if reading is None:
                continue
            for p in reading.partners:
                where = f"{dc} <- {p.partner} ({p.naming_context})"
                if p.consecutive_failures:
                    found.append(
                        f"{where}: {p.consecutive_failures} consecutive failures, last result {p.last_result}"
                    )
                elif p.last_success is None:
                    found.append(f"{where}: has never replicated")
                elif now - p.last_success > stale_after:
                    found.append(f"{where}: last success {int(now - p.last_success)} s ago")
        return found


# --- who is who ------------------------------------------------------------------------------


def _normal_dn(dn: str) -> str:
    # Called for every server and NTDS Settings object each DC lists: the common case, a DN
    # as a directory writes it, must stay a single casefold.
    text = dn.strip()
    if ", " in text or " ," in text or "= " in text or " =" in text:
        text = _DN_SPACING.sub(lambda m: m.group(1), text)
    return text.casefold()


def _parent(dn: str) -> str:
    return dn.split(",", 1)[1] if "," in dn else ""


def _first_rdn_value(dn: str) -> str:
    return dn.split(",", 1)[0].partition("=")[2].strip()


def _text(entry: LdapRawEntry, name: str) -> list[str]:
    return [v.decode("utf-8", "replace") for v in entry.values(name)]


@dataclass(frozen=True)
class DsaDirectory:
    """The forest's DCs as one DC's Configuration partition lists them: NTDS Settings objects
    by objectGUID and by DN, each to the host name of the server object above it."""

    by_guid: Mapping[uuid.UUID, str]
    by_dn: Mapping[str, str]  # normalised NTDS Settings DN -> host

    def partner_name(self, neighbor: Neighbor) -> str:
        if neighbor.source_dsa_guid is not None and neighbor.source_dsa_guid in self.by_guid:
            return self.by_guid[neighbor.source_dsa_guid]
        dn = neighbor.source_dsa_dn
        if dn and _normal_dn(dn) in self.by_dn:
            return self.by_dn[_normal_dn(dn)]
        # Not (or no longer) in this DC's configuration: a deleted or not yet known DC.
        if dn and (server := _first_rdn_value(_parent(dn))):
            return server.lower()
        if neighbor.source_address:
            return neighbor.source_address.lower()
        if neighbor.source_dsa_guid is not None:
            return str(neighbor.source_dsa_guid)
        return "unknown"

    def other_dsas(self, own_dn: str | None) -> int:
        own = _normal_dn(own_dn) if own_dn else ""
        return sum(1 for dn in self.by_dn if dn != own)


def dsa_directory(entries: Iterable[LdapRawEntry]) -> DsaDirectory:
    """From the server and nTDSDSA objects under ``CN=Sites,<configuration NC>``."""
    hosts: dict[str, str] = {}
    settings: list[LdapRawEntry] = []
    for entry in entries:
        classes = {c.lower() for c in _text(entry, "objectClass")}
        if "ntdsdsa" in classes:
            settings.append(entry)
        elif "server" in classes:
            names = _text(entry, "dNSHostName")
            host = names[0] if names else _first_rdn_value(entry.dn)
            hosts[_normal_dn(entry.dn)] = host.strip().rstrip(".").lower()
    by_guid: dict[uuid.UUID, str] = {}
    by_dn: dict[str, str] = {}
    for entry in settings:
        server_host = hosts.get(_normal_dn(_parent(entry.dn)))
        if server_host is None:
            continue
        by_dn[_normal_dn(entry.dn)] = server_host
        guids = entry.values("objectGUID")
        if guids and len(guids[0]) == 16:
            # objectGUID travels in the MS-DTYP layout, as uuidDsaObj in REPLICA_LINK does.
            by_guid[uuid.UUID(bytes_le=guids[0])] = server_host
    return DsaDirectory(by_guid, by_dn)


# --- reading one DC (blocking: runs in an LDAP thread) ----------------------------------------


def _values_of(entry: LdapEntry, name: str) -> tuple[list[str], int | None]:
    """The values of ``name``, and where the next range starts when the DC sent only part of
    them (``msDS-ReplAllInboundNeighbors;range=0-1499``)."""
    wanted = name.lower()
    for key, values in entry.attributes.items():
        base, _, options = key.partition(";")
        if base.lower() != wanted:
            continue
        present = [v for v in values if v.strip("\0 \t\r\n")]
        match = _RANGE.search(options)
        if match and match.group(2) != "*":
            return present, int(match.group(2)) + 1
        return present, None
    return [], None


def _neighbor_values(client: LdapClient, root: LdapEntry, deadline: float) -> list[str]:
    values, following = _values_of(root, NEIGHBORS_ATTRIBUTE)
    for _ in range(_MAX_RANGES):
        if following is None:
            break
        entry = client.root_dse([f"{NEIGHBORS_ATTRIBUTE};range={following}-*"], deadline)
        more, following = _values_of(entry, NEIGHBORS_ATTRIBUTE)
        values += more
    return values


def _partners(neighbors: Iterable[Neighbor], directory: DsaDirectory) -> tuple[PartnerState, ...]:
    found: dict[tuple[str, str], PartnerState] = {}
    for n in neighbors:
        key = (directory.partner_name(n), n.naming_context)
        # Two values for one pair would be two samples of one series: the first one stands.
        found.setdefault(
            key,
            PartnerState(
                key[0],
                n.naming_context,
                n.consecutive_failures,
                n.last_success,
                n.last_attempt,
                n.last_result,
            ),
        )
    return tuple(found.values())


def read_dc(client: LdapClient, deadline: float) -> DcReading:
    """One DC's inbound neighbors; raises :class:`LdapError` when they cannot be read."""
    root = client.root_dse(
        [NEIGHBORS_ATTRIBUTE, "namingContexts", "configurationNamingContext", "dsServiceName"],
        deadline,
    )
    config_nc = _single(root, "configurationNamingContext")
    if not config_nc:
        raise LdapError("not_found", "rootDSE has no configurationNamingContext")
    directory = dsa_directory(
        client.search_raw(f"CN=Sites,{config_nc}", _DSA_FILTER, _DSA_ATTRIBUTES, deadline)
    )
    neighbors: list[Neighbor] = []
    unparsed = 0
    xml_values = _neighbor_values(client, root, deadline)
    if xml_values:
        source = NEIGHBORS_ATTRIBUTE
        for text in xml_values:
            try:
                neighbors.append(parse_neighbor_xml(text))
            except ReplicationParseError as exc:
                unparsed += 1
                log.debug("%s: unreadable %s value: %s", client.target.where, source, exc)
    else:
        source = REPS_FROM
        for nc in _values_of(root, "namingContexts")[0]:
            for entry in client.search_raw(
                nc, "(objectClass=*)", [REPS_FROM], deadline, base_only=True
            ):
                for value in entry.values(REPS_FROM):
                    try:
                        neighbors.append(parse_replica_link(value, nc))
                    except ReplicationParseError as exc:
                        unparsed += 1
                        log.debug("%s: unreadable repsFrom of %s: %s", client.target.where, nc, exc)
    others = directory.other_dsas(_single(root, "dsServiceName"))
    if not neighbors and not unparsed and others:
        # Both attributes are returned only to accounts allowed to read them; an account that
        # is not gets an empty answer, not an error. A DC with no inbound partner at all while
        # other DCs exist is no healthier, so either way this is not a success.
        raise LdapError(
            "no_rights",
            f"{client.target.where} returned no {NEIGHBORS_ATTRIBUTE} and no repsFrom although "
            f"{others} other DCs exist: the account may not read them",
        )
    return DcReading(source, _partners(neighbors, directory), unparsed, time.time())


def _single(entry: LdapEntry, name: str) -> str | None:
    values = _values_of(entry, name)[0]
    return values[0] if values else None


# --- the scan -------------------------------------------------------------------------------


def _reason(exc: LdapError) -> str:
    detail = exc.detail.lower()
    # ldap3 names LDAP result 50 in the message only; the search itself reports search_failed.
    if exc.reason == "search_failed" and "insufficientaccessrights" in detail.replace(" ", ""):
        return "no_rights"
    if exc.reason == "unreachable" and any(text in detail for text in _NAME_NOT_FOUND):
        return "dns"
    return exc.reason if exc.reason in REASONS else "error"


async def _read(server: Server, base: LdapTarget) -> DcReading:
    # By name when no address is configured: ldap3 resolves it, and TLS verifies the name the
    # DC's certificate carries rather than an address it does not.
    target = dataclasses.replace(
        base.with_host(server.address or server.name), port=server.port("ldap", base.port)
    )
    client = client_for(target)
    # Bounds only the wait for a connection an earlier run still holds; each LDAP operation
    # has the ldap.timeout of its own, and the first one that fails ends this DC's reading.
    deadline = time.monotonic() + target.timeout
    # A connection an earlier run left open and the DC has since dropped is replaced by the
    # client itself (exporter/ldap.py), so a restarted DC is not reported failing.
    return await run_in_ldap_thread(lambda: read_dc(client, deadline))


async def scan_replication(
    settings: Settings, inventory: Inventory, previous: Replication | None = None
) -> Replication:
    ldap = settings.ldap
    if ldap is None:
        raise LdapError("search_failed", "no ldap section configured")
    base = LdapTarget.from_settings(ldap)
    kept = previous.dcs if previous is not None else {}
    limit = asyncio.Semaphore(_PARALLEL_DCS)

    async def one(server: Server) -> DcOutcome:
        async with limit:
            try:
                return DcOutcome(await _read(server, base))
            except LdapError as exc:
                reason, detail = _reason(exc), exc.detail
            except Exception as exc:  # a bug on one DC's answer must not hide the other DCs
                log.exception("reading the replication state of %s failed", server.name)
                reason, detail = "error", f"{type(exc).__name__}: {exc}"
        last = kept.get(server.name)
        reading = last.reading if last is not None else None
        log.warning(
            "replication state of %s not read (%s), keeping the reading of %s: %s",
            server.name,
            reason,
            _when(reading.read_at) if reading else "never",
            detail,
        )
        return DcOutcome(reading, reason, detail)

    servers = inventory.domain_controllers
    outcomes = await asyncio.gather(*(one(s) for s in servers))
    return Replication({s.name: o for s, o in zip(servers, outcomes, strict=True)})


def _when(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


# --- metrics --------------------------------------------------------------------------------

_CACHED = 'Cached: read every checks.replication.refresh_interval (scan="replication").'


def replication_metrics(
    state: ScanState[Replication], settings: Settings, inventory: Inventory
) -> Iterator[Metric]:
    pair = ["domain_controller", "partner", "naming_context"]
    failures = GaugeMetricFamily(
        "exchange_auth_replication_consecutive_failures",
        "Consecutive failed inbound replication attempts of the naming context from the partner "
        f"(repadmin /showrepl). {_CACHED}",
        labels=pair,
    )
    last_success = GaugeMetricFamily(
        "exchange_auth_replication_last_success_timestamp_seconds",
        "When the DC last replicated the naming context from the partner successfully; absent "
        f"when it never has. {_CACHED}",
        labels=pair,
    )
    last_attempt = GaugeMetricFamily(
        "exchange_auth_replication_last_attempt_timestamp_seconds",
        "When the DC last tried to replicate the naming context from the partner; absent when "
        f"it never has. {_CACHED}",
        labels=pair,
    )
    last_result = GaugeMetricFamily(
        "exchange_auth_replication_last_result",
        "Result of the last attempt: 0 success, else the Win32 error (1722 RPC server "
        "unavailable, 1311 no logon servers, 8453 access denied, 8524 DNS lookup failure); "
        f"HRESULTs negative, as repadmin prints them. {_CACHED}",
        labels=pair,
    )
    result_info = GaugeMetricFamily(
        "exchange_auth_replication_last_result_info",
        "1, with the symbolic name of the last attempt's result (ERROR_SUCCESS, "
        f"RPC_S_SERVER_UNAVAILABLE, ...; other for codes outside the exporter's table). {_CACHED}",
        labels=[*pair, "result"],
    )
    success = GaugeMetricFamily(
        "exchange_auth_replication_dc_success",
        "1 when the last replication scan read the DC's inbound replication state; on 0 its "
        "partner series are those of its last good reading.",
        labels=["domain_controller"],
    )
    failure = GaugeMetricFamily(
        "exchange_auth_replication_dc_failure",
        "1 for why the last replication scan could not read the DC: " + ", ".join(REASONS) + ".",
        labels=["domain_controller", "reason"],
    )
    read_at = GaugeMetricFamily(
        "exchange_auth_replication_dc_read_timestamp_seconds",
        "When the DC's partner series were read (they are kept while the DC cannot be read).",
        labels=["domain_controller"],
    )
    unparsed = GaugeMetricFamily(
        "exchange_auth_replication_unparsed_values",
        "Replication values of the DC that could not be parsed and are missing from its partner "
        f"series. {_CACHED}",
        labels=["domain_controller"],
    )
    result = state.result
    if result is not None:
        for server in inventory.domain_controllers:
            outcome = result.dcs.get(server.name)
            if outcome is None:
                continue  # new since the last run: no claim either way
            dc = server.name
            success.add_metric([dc], 0 if outcome.reason else 1)
            if outcome.reason:
                failure.add_metric([dc, outcome.reason], 1)
            reading = outcome.reading
            if reading is None:
                continue
            read_at.add_metric([dc], reading.read_at)
            unparsed.add_metric([dc], reading.unparsed)
            for p in reading.partners:
                labels = [dc, p.partner, p.naming_context]
                if p.consecutive_failures is not None:
                    failures.add_metric(labels, p.consecutive_failures)
                if p.last_success is not None:
                    last_success.add_metric(labels, p.last_success)
                if p.last_attempt is not None:
                    last_attempt.add_metric(labels, p.last_attempt)
                if p.last_result is not None:
                    last_result.add_metric(labels, signed_result(p.last_result))
                    result_info.add_metric([*labels, result_name(p.last_result)], 1)
    yield from (
        failures,
        last_success,
        last_attempt,
        last_result,
        result_info,
        success,
        failure,
        read_at,
        unparsed,
    )


def _interval(settings: Settings) -> float | None:
    check = settings.checks.replication
    wanted = check.enabled and settings.ldap is not None and settings.ldap.user is not None
    return check.refresh_interval if wanted else None


def _count(result: Replication) -> int:
    return sum(len(o.reading.partners) for o in result.dcs.values() if not o.reason and o.reading)


REPLICATION_SCAN: Scan[Replication] = Scan(
    name="replication",
    interval=_interval,
    run=scan_replication,
    count=_count,
    emit=replication_metrics,
)
