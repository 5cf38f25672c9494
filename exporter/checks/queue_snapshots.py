"""Queue snapshots: the JSON files each Exchange server writes with ``Get-Queue``, read from a share.

A background scan reads every file in ``checks.queues.snapshots`` each ``poll_interval``. Per
server it keeps the last good snapshot: a file that is missing, half-written, too large or not a
snapshot leaves that snapshot in place, counts a bounded reason, and the snapshot's age goes on
growing, so staleness is what alerts see rather than a gap. Parsing is in ``exporter.queues``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..background import Scan, ScanState
from ..config import QueueSource, Settings
from ..inventory import Inventory
from ..queues import ERROR_CLASSES, Queue, Snapshot, SnapshotError, parse_snapshot

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_QUEUE_SERIES",
    "OTHER_QUEUES",
    "QUEUE_SNAPSHOT_SCAN",
    "REASONS",
    "QueueSnapshots",
    "ReadError",
    "ServerSnapshot",
    "read_snapshot_file",
    "scan_queue_snapshots",
]

log = logging.getLogger(__name__)

# A busy hub has a few hundred queues, well under 1 MB of JSON; a file far past that is not a
# snapshot, and reading it every poll would cost memory for nothing.
MAX_FILE_BYTES = 16 * 1024 * 1024
# Per server. Queue rows are numbered afresh whenever Exchange recreates a queue, so a server
# relaying to many domains could flood Prometheus; the rest are summed into one series.
MAX_QUEUE_SERIES = 200
OTHER_QUEUES = "_other"
# Longest wait for one file; a hung CIFS mount must not hold the scan.
READ_TIMEOUT = 10.0
REASONS: tuple[str, ...] = (
    "missing",
    "unreadable",
    "too_large",
    "invalid_json",
    "invalid_shape",
    "wrong_server",
    "timeout",
)

# Reads run here so a share that stops answering ties up these threads, not the default pool.
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="queue-snapshot")

Stamp = tuple[int, int, int]  # (mtime_ns, size, inode): unchanged files are not parsed again
Pending = dict[str, Future[tuple[Stamp, float, Snapshot | None]]]


class ReadError(Exception):
    """The file could not be read; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ServerSnapshot:
    snapshot: Snapshot | None = None  # the last good one
    mtime: float = 0.0  # of the file that snapshot came from
    stamp: Stamp | None = None
    last_success: float = 0.0  # Unix time of the last good read; 0 = never
    errors: Mapping[str, int] = field(default_factory=dict)  # failed reads by reason, ever
    reason: str = ""  # of the last read when it failed

    @property
    def written_at(self) -> float:
        """When the snapshot was taken: its own generated_at, else the file's mtime."""
        if self.snapshot is not None and self.snapshot.generated_at is not None:
            return self.snapshot.generated_at
        return self.mtime


@dataclass
class QueueSnapshots:
    servers: dict[str, ServerSnapshot]
    # Reads still blocked after READ_TIMEOUT: no second read of that file starts until it ends.
    stuck: Pending = field(default_factory=dict)

    def auth_failures(self, server: str) -> list[str] | None:
        """Queues of ``server`` whose last error is an authentication failure; None: no snapshot."""
        found = self.servers.get(server)
        if found is None or found.snapshot is None:
            return None
        return [
            f"queue {q.name} to {q.next_hop_domain or '?'} ({q.message_count} messages): "
            f"{q.error.smtp_code} {q.error.enhanced_code} ({q.error.error_class})"
            for q in found.snapshot.queues
            if q.error is not None and q.error.error_class in ("auth_temporary", "auth_permanent")
        ]


def read_snapshot_file(
    path: Path, unchanged: Stamp | None = None, max_bytes: int = MAX_FILE_BYTES
) -> tuple[Stamp, float, Snapshot | None]:
    """(stamp, mtime, snapshot) of one file; snapshot None when its stamp equals ``unchanged``.

    Raises :class:`ReadError` or :class:`exporter.queues.SnapshotError`. Blocking.
    """
    try:
        # stat before open: opening a FIFO someone left at the path would block.
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ReadError("unreadable", "not a regular file")
        with open(path, "rb") as file:
            info = os.fstat(file.fileno())
            stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
            if stamp == unchanged:
                return stamp, info.st_mtime, None
            if info.st_size > max_bytes:
                raise ReadError("too_large", f"{info.st_size} bytes, more than {max_bytes}")
            # The file may grow between fstat and read: never read more than the cap.
            data = file.read(max_bytes + 1)
    except FileNotFoundError:
        raise ReadError("missing", "no such file") from None
    except OSError as exc:
        raise ReadError("unreadable", exc.strerror or type(exc).__name__) from None
    if len(data) > max_bytes:
        raise ReadError("too_large", f"more than {max_bytes} bytes")
    return stamp, info.st_mtime, parse_snapshot(data)


def _short(name: str) -> str:
    return name.split(".", 1)[0].casefold()


def _other_server(snapshot: Snapshot, server: str) -> str | None:
    """A server the file names that is not ``server``: a share mapped to the wrong path."""
    if snapshot.shape == "script":
        named = {snapshot.server}
    else:
        named = {queue.server for queue in snapshot.queues}
    others = sorted(n for n in named if n and _short(n) != _short(server))
    return others[0] if others else None


def _failed(server: str, old: ServerSnapshot, reason: str, detail: str) -> ServerSnapshot:
    # Logged when the reason changes, not on every poll of a file that stays broken.
    level = logging.WARNING if reason != old.reason else logging.DEBUG
    kept = (
        "keeping the snapshot of " + _when(old.last_success) if old.snapshot else "no snapshot yet"
    )
    log.log(level, "queue snapshot of %s: %s (%s); %s", server, reason, detail, kept)
    errors = dict(old.errors)
    errors[reason] = errors.get(reason, 0) + 1
    return replace(old, errors=errors, reason=reason)


def _when(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment)) if moment else "never"


async def _read_one(
    source: QueueSource, old: ServerSnapshot, stuck: Pending, patience: float
) -> ServerSnapshot:
    server = source.server
    blocked = stuck.get(server)
    if blocked is not None:
        if not blocked.done():
            return _failed(server, old, "timeout", "an earlier read of the file has not returned")
        del stuck[server]
    future = _POOL.submit(read_snapshot_file, source.path, old.stamp)
    try:
        stamp, mtime, snapshot = await asyncio.wait_for(asyncio.wrap_future(future), patience)
    except TimeoutError:
        stuck[server] = future
        return _failed(server, old, "timeout", f"no answer within {patience:g}s")
    except (ReadError, SnapshotError) as exc:
        return _failed(server, old, exc.reason, exc.detail)
    if snapshot is not None:
        other = _other_server(snapshot, server)
        if other is not None:
            return _failed(server, old, "wrong_server", f"the file is the snapshot of {other!r}")
    if old.reason:
        log.info("queue snapshot of %s readable again after %s", server, old.reason)
    return replace(
        old,
        snapshot=snapshot or old.snapshot,
        mtime=mtime,
        stamp=stamp,
        last_success=time.time(),
        reason="",
    )


def _sources(settings: Settings) -> list[QueueSource]:
    """The configured files, one per server (the first entry wins)."""
    seen: dict[str, QueueSource] = {}
    for source in settings.checks.queues.snapshots:
        seen.setdefault(source.server, source)
    return list(seen.values())


async def scan_queue_snapshots(
    settings: Settings, inventory: Inventory, previous: QueueSnapshots | None = None
) -> QueueSnapshots:
    """Read every configured snapshot file once; failures stay per server, never raise."""
    sources = _sources(settings)
    before = previous.servers if previous is not None else {}
    stuck = dict(previous.stuck) if previous is not None else {}
    patience = min(READ_TIMEOUT, settings.checks.queues.poll_interval)
    states = await asyncio.gather(
        *(_read_one(s, before.get(s.server, ServerSnapshot()), stuck, patience) for s in sources)
    )
    servers = {source.server: state for source, state in zip(sources, states, strict=True)}
    return QueueSnapshots(servers, {k: v for k, v in stuck.items() if k in servers})


def _ranked(queues: Sequence[Queue]) -> list[Queue]:
    # Queues worth a series of their own first: the fullest, then those with an error.
    return sorted(queues, key=lambda q: (-q.message_count, q.error is None, q.name))


def _metrics(
    state: ScanState[QueueSnapshots], settings: Settings, inventory: Inventory
) -> Iterator[Metric]:
    source_note = "Read from the server's queue snapshot file (Get-Queue), not measured here."
    messages = GaugeMetricFamily(
        "exchange_auth_queue_messages",
        f"Messages in the queue (MessageCount). {source_note} At most {MAX_QUEUE_SERIES} queues "
        f'per server, the fullest first; the rest are summed into queue="{OTHER_QUEUES}".',
        labels=["server", "queue", "delivery_type", "status"],
    )
    errors = GaugeMetricFamily(
        "exchange_auth_queue_errors",
        "Queues whose LastError is of this class (auth_temporary = 454 4.7.0, auth_permanent = "
        "5.7.x, tls, connection, dns, other), by the most specific reply code in it; 0 for every "
        f"class with empty codes. {source_note}",
        labels=["server", "class", "smtp_code", "enhanced_code"],
    )
    info = GaugeMetricFamily(
        "exchange_auth_queue_info",
        "1 per queue with a series in exchange_auth_queue_messages: its NextHopDomain and the "
        f"class of its LastError (empty when none). {source_note}",
        labels=["server", "queue", "next_hop_domain", "error_class"],
    )
    counts = GaugeMetricFamily(
        "exchange_auth_queue_snapshot_queues",
        f"Queues in the last good snapshot, whether or not each has a series. {source_note}",
        labels=["server"],
    )
    age = GaugeMetricFamily(
        "exchange_auth_queue_snapshot_age_seconds",
        "Now minus when the last good snapshot was taken (its generated_at, else the file's "
        "modification time; both by the writer's clock). Grows while the file cannot be read.",
        labels=["server"],
    )
    last_success = GaugeMetricFamily(
        "exchange_auth_queue_snapshot_last_success_timestamp_seconds",
        "When the server's queue snapshot file was last read and parsed (0 = never).",
        labels=["server"],
    )
    read_errors = CounterMetricFamily(
        "exchange_auth_queue_snapshot_errors",
        "Failed reads of the server's queue snapshot file, by reason: " + ", ".join(REASONS) + ".",
        labels=["server", "reason"],
    )
    now = time.time()
    result = state.result
    for source in _sources(settings):
        server = source.server
        known = result.servers.get(server) if result is not None else None
        current = known or ServerSnapshot()
        last_success.add_metric([server], current.last_success)
        for reason in REASONS:
            read_errors.add_metric([server, reason], current.errors.get(reason, 0))
        snapshot = current.snapshot
        if snapshot is None:
            continue
        age.add_metric([server], now - current.written_at)
        counts.add_metric([server], len(snapshot.queues))

        by_error: Counter[tuple[str, str, str]] = Counter(
            {(cls, "", ""): 0 for cls in ERROR_CLASSES}
        )
        for queue in snapshot.queues:
            if queue.error is not None:
                e = queue.error
                by_error[(e.error_class, e.smtp_code, e.enhanced_code)] += 1
        for (cls, code, enhanced), number in sorted(by_error.items()):
            errors.add_metric([server, cls, code, enhanced], number)

        ranked = _ranked(snapshot.queues)
        by_series: Counter[tuple[str, str, str]] = Counter()
        described: set[tuple[str, str, str]] = set()
        for index, queue in enumerate(ranked):
            name = queue.name if index < MAX_QUEUE_SERIES else OTHER_QUEUES
            # Summed, never repeated: a label set twice in one exposition is an error.
            by_series[(name, queue.delivery_type, queue.status)] += queue.message_count
            if name != OTHER_QUEUES:
                cls = queue.error.error_class if queue.error else ""
                described.add((name, queue.next_hop_domain, cls))
        for (name, delivery_type, status), number in by_series.items():
            messages.add_metric([server, name, delivery_type, status], number)
        for name, hop, cls in sorted(described):
            info.add_metric([server, name, hop, cls], 1)
    yield from (messages, errors, info, counts, age, last_success, read_errors)


def _interval(settings: Settings) -> float | None:
    queues = settings.checks.queues
    return queues.poll_interval if queues.snapshots else None


QUEUE_SNAPSHOT_SCAN: Scan[QueueSnapshots] = Scan(
    name="queue_snapshots",
    interval=_interval,
    run=scan_queue_snapshots,
    count=lambda result: sum(
        len(s.snapshot.queues) for s in result.servers.values() if s.snapshot is not None
    ),
    emit=_metrics,
)
