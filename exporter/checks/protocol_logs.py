"""Follow the SMTP protocol-log folders of each Exchange server and count the responses in them.

A background scan every ``checks.queues.poll_interval``: each configured folder is listed, and
every ``SEND*.LOG`` / ``RECV*.LOG`` file in it is read from where the last poll stopped, in
chunks, up to its last complete line (a partial line waits for its newline). Every file is
followed on its own, so on rotation the old one is finished and the new one read from its
start, whichever of them Exchange is still writing.

- First sight of a folder (no saved state): its existing files are taken up at their end, so
  history is not replayed as one spike; files that appear later are read from the start.
- A file is known by a hash of its first bytes (Exchange's header holds the time the file
  was opened, to the millisecond) and its inode. Shorter than our offset: truncated; another
  head: replaced; either way it is read again from the start. A new inode under the same
  full head is the same file seen through a remount, and keeps its offset.
- Offsets are saved to ``checks.queues.state_file`` (JSON, written to a temporary file and
  renamed) before the counts of a poll are published, so a restart resumes at the next line.
- Counters only grow within a process; the scan result handed to scrapes is a copy.
- Reads run in a thread of their own under ``POLL_TIMEOUT``: a hung share fails the scan
  with a reason instead of stalling it, and never gets a second reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..background import Scan, ScanState
from ..config import Settings, format_duration
from ..inventory import Inventory
from ..protocols.smtp_log import (
    BOM,
    COUNTED_EVENT,
    DEFAULT_LAYOUT,
    DIRECTIONS,
    Layout,
    Tally,
    count_lines,
)

__all__ = [
    "PROTOCOL_LOG_SCAN",
    "FileState",
    "FolderKey",
    "Follower",
    "PollTimeout",
    "ProtocolLogs",
    "Snapshot",
]

log = logging.getLogger(__name__)

CHUNK = 4 << 20
# Enough to take in Exchange's header, whose #Date line makes each file's start unique.
HEAD = 1024
# One poll reads at most this much, so catching up on a backlog saves progress as it goes and
# stays well inside POLL_TIMEOUT.
MAX_BYTES_PER_POLL = 256 << 20
# Where the #Fields line must be for a file taken up from its end.
MAX_HEADER_BYTES = 64 << 10
STATE_VERSION = 1
# Longest wait for one poll; past it the scan reports a failure and the read goes on.
POLL_TIMEOUT = 120.0
# How far back the verdict looks for authentication failures in the logs.
RECENT_SECONDS = 900.0
# RFC 4954's authentication replies (454 is what a failed X-EXPS GSSAPI gets); the enhanced
# codes of TLS trouble (X.7.5, X.7.10, X.7.11) are TLS, not Kerberos.
AUTH_CODES = frozenset({"432", "454", "530", "534", "535", "538"})
_TLS_SUBJECTS = frozenset({"7.5", "7.10", "7.11"})

_FILE_NAME = re.compile(r"(send|recv).*\.log", re.IGNORECASE)
_FILE_ORDER = re.compile(r"(?:send|recv)(\d+)-(\d+)\.log", re.IGNORECASE)

Key = tuple[str, str]  # (server, direction)


@dataclass(frozen=True, order=True)
class FolderKey:
    server: str
    path: Path


@dataclass
class FileState:
    """Where reading stopped in one file, and what the file looked like then."""

    offset: int = 0  # just past the last line consumed (or inside one being skipped)
    inode: int = 0
    size: int = 0
    mtime_ns: int = 0
    head: str = ""  # hash of the first head_length bytes
    head_length: int = 0
    discarding: bool = False  # inside an over-long line, which was already counted malformed
    fields: tuple[str, ...] | None = None  # from the file's #Fields line
    # Seen when its folder was first listed but not opened yet: taken up at its end once it is.
    start_at_end: bool = False
    caught_up: bool = False  # the last read reached the end of the file

    def to_json(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "inode": self.inode,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "head": self.head,
            "head_length": self.head_length,
            "discarding": self.discarding,
            "fields": list(self.fields) if self.fields is not None else None,
            "start_at_end": self.start_at_end,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileState:
        fields = data.get("fields")
        state = cls(
            offset=_int(data, "offset"),
            inode=_int(data, "inode"),
            size=_int(data, "size"),
            mtime_ns=_int(data, "mtime_ns"),
            head=str(data.get("head", "")),
            head_length=_int(data, "head_length"),
            discarding=bool(data.get("discarding", False)),
            fields=tuple(str(f) for f in fields) if isinstance(fields, list) else None,
            start_at_end=bool(data.get("start_at_end", False)),
        )
        if state.head_length > HEAD:
            raise ValueError(f"head_length above {HEAD}")
        return state


class PollTimeout(Exception):
    """A poll did not finish in time; its thread goes on and the next run waits for it."""


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
    return value


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "not_found"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission_denied"
    if exc.errno == errno.ENOTDIR:
        return "not_a_directory"
    return "io_error"


def _direction(name: str) -> str:
    return "send" if name[:4].lower() == "send" else "receive"


def _order(name: str) -> tuple[str, int, int, str]:
    # SEND20261129-10.LOG comes after SEND20261129-9.LOG, which a plain sort gets wrong.
    match = _FILE_ORDER.fullmatch(name)
    if match is None:
        return (name[:4].lower(), 0, 0, name)
    return (name[:4].lower(), int(match.group(1)), int(match.group(2)), name)


def is_auth_failure(smtp_code: str, enhanced_code: str) -> bool:
    subject = enhanced_code.split(".", 1)[1] if enhanced_code else ""
    return smtp_code in AUTH_CODES and subject not in _TLS_SUBJECTS


def _head_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True)
class Snapshot:
    """What scrapes read: copies taken at the end of a poll."""

    totals: Mapping[Key, Tally]
    bytes_read: Mapping[Key, int]
    files: Mapping[Key, int]
    unread: Mapping[Key, int]
    resets: Mapping[tuple[str, str, str], int]  # (server, direction, reason)
    read_errors: Mapping[tuple[str, str], int]  # (server, reason)
    folders: Mapping[FolderKey, str]  # "" when the last listing and reads worked, else a reason
    state_errors: Mapping[str, int]  # load or save
    # Servers with a folder listed at least once: only for them do the logs tell anything.
    listed: frozenset[str] = frozenset()
    # (poll time, server, direction, smtp_code, enhanced_code, count) of the last RECENT_SECONDS
    recent_auth: tuple[tuple[float, str, str, str, str, int], ...] = ()


@dataclass
class PollStats:
    bytes_read: int = 0
    files: int = 0


@dataclass
class Follower:
    """Read positions and counts for every followed folder; used by one thread at a time."""

    files: dict[FolderKey, dict[str, FileState]] = field(default_factory=dict)
    # Folders listed successfully before: a file new to them is new, so read from its start.
    known: set[FolderKey] = field(default_factory=set)
    totals: dict[Key, Tally] = field(default_factory=dict)
    bytes_read: Counter[Key] = field(default_factory=Counter)
    resets: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    read_errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    state_errors: Counter[str] = field(default_factory=Counter)
    followed: dict[Key, int] = field(default_factory=dict)
    unread: dict[Key, int] = field(default_factory=dict)
    folders: dict[FolderKey, str] = field(default_factory=dict)
    recent_auth: list[tuple[float, str, str, str, str, int]] = field(default_factory=list)
    loaded: bool = False  # the state file was read (or there is none)
    # The poll running in its thread, if any: never two at once on one follower.
    inflight: Future[Snapshot] | None = field(default=None, repr=False, compare=False)
    _file_errors: dict[tuple[FolderKey, str], str] = field(default_factory=dict)
    _saved: str | None = None

    # -- state file ------------------------------------------------------------------------

    @classmethod
    def from_state_file(cls, path: Path | None) -> Follower:
        follower = cls()
        follower.load(path)
        return follower

    def load(self, path: Path | None) -> None:
        """Take up the positions saved in ``path``; without it, every log starts at its end."""
        self.loaded = True
        if path is None:
            return
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            self.state_errors["load"] += 1
            log.warning(
                "cannot read the protocol-log state file %s, starting afresh: %s", path, exc
            )
            return
        try:
            self._restore(json.loads(text))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            self.files.clear()
            self.known.clear()
            self.state_errors["load"] += 1
            log.warning(
                "the protocol-log state file %s is not usable, starting at the end of every "
                "log: %s",
                path,
                exc,
            )
            return
        self._saved = text

    def _restore(self, data: Any) -> None:
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError(f"expected version {STATE_VERSION}")
        for folder in data["folders"]:
            key = FolderKey(str(folder["server"]), Path(str(folder["path"])))
            self.files[key] = {
                str(name): FileState.from_json(state) for name, state in folder["files"].items()
            }
            self.known.add(key)

    def state_json(self) -> str:
        folders = [
            {
                "server": key.server,
                "path": str(key.path),
                "files": {name: state.to_json() for name, state in sorted(files.items())},
            }
            for key, files in sorted(self.files.items())
            if key in self.known
        ]
        return json.dumps({"version": STATE_VERSION, "folders": folders}, indent=1) + "\n"

    def save(self, path: Path) -> None:
        """Write the positions atomically (temporary file, fsync, rename); skip when unchanged."""
        text = self.state_json()
        if text == self._saved:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
            ) as tmp:
                tmp.write(text)
                tmp.flush()
                os.fsync(tmp.fileno())
            try:
                os.replace(tmp.name, path)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp.name)
                raise
        except OSError as exc:
            self.state_errors["save"] += 1
            log.warning("cannot save protocol-log positions to %s: %s", path, exc)
            return
        self._saved = text

    # -- polling ---------------------------------------------------------------------------

    def poll(
        self,
        folders: Sequence[FolderKey],
        max_line_length: int,
        budget: int = MAX_BYTES_PER_POLL,
    ) -> PollStats:
        """Read what was appended to every file of these folders since the last poll."""
        auth_before = self._auth_counts()
        stats = PollStats()
        self.followed = {}
        self.unread = {}
        for key in folders:
            for direction in DIRECTIONS:
                self.followed.setdefault((key.server, direction), 0)
                self.unread.setdefault((key.server, direction), 0)
        for key in folders:
            stats.bytes_read += self._poll_folder(
                key, max_line_length, budget - stats.bytes_read, stats
            )
        # Folders no longer configured: their positions are forgotten, their counts kept.
        wanted = set(folders)
        for key in list(self.files):
            if key not in wanted:
                del self.files[key]
                self.known.discard(key)
                self.folders.pop(key, None)
        now = time.time()
        for (server, direction, code, enhanced), count in self._auth_counts().items():
            grown = count - auth_before.get((server, direction, code, enhanced), 0)
            if grown:
                self.recent_auth.append((now, server, direction, code, enhanced, grown))
        self.recent_auth = [r for r in self.recent_auth if now - r[0] <= RECENT_SECONDS]
        return stats

    def _auth_counts(self) -> dict[tuple[str, str, str, str], int]:
        return {
            (server, direction, code, enhanced): count
            for (server, direction), tally in self.totals.items()
            for (code, enhanced), count in tally.responses.items()
            if is_auth_failure(code, enhanced)
        }

    def _poll_folder(self, key: FolderKey, limit: int, budget: int, stats: PollStats) -> int:
        try:
            with os.scandir(key.path) as entries:
                names = sorted(
                    (e.name for e in entries if _FILE_NAME.fullmatch(e.name) and e.is_file()),
                    key=_order,
                )
        except OSError as exc:
            self._folder_failed(key, _reason(exc), exc)
            return 0
        first_sight = key not in self.known
        states = self.files.setdefault(key, {})
        for gone in set(states) - set(names):
            del states[gone]
            self._file_errors.pop((key, gone), None)
        consumed = 0
        failure = ""
        for name in names:
            direction = _direction(name)
            path = key.path / name
            state = states.get(name)
            if state is None:
                state = states[name] = FileState(start_at_end=first_sight)
            try:
                consumed += self._read(key, path, state, direction, limit, budget - consumed)
            except OSError as exc:
                failure = _reason(exc)
                self.read_errors[(key.server, failure)] += 1
                if self._file_errors.get((key, name)) != failure:
                    log.warning("cannot read protocol log %s: %s", path, exc)
                self._file_errors[(key, name)] = failure
                continue
            if self._file_errors.pop((key, name), None):
                log.info("protocol log %s is readable again", path)
            stats.files += 1
            where = (key.server, direction)
            self.followed[where] = self.followed.get(where, 0) + 1
            self.unread[where] = self.unread.get(where, 0) + max(0, state.size - state.offset)
        self.known.add(key)
        if failure:
            self.folders[key] = failure
        else:
            if self.folders.get(key):
                log.info("protocol-log folder %s (%s) is readable again", key.path, key.server)
            self.folders[key] = ""
        return consumed

    def _folder_failed(self, key: FolderKey, reason: str, exc: OSError) -> None:
        self.read_errors[(key.server, reason)] += 1
        if self.folders.get(key) != reason:
            log.warning("cannot list protocol-log folder %s of %s: %s", key.path, key.server, exc)
        self.folders[key] = reason

    def _read(
        self, key: FolderKey, path: Path, state: FileState, direction: str, limit: int, budget: int
    ) -> int:
        stat = path.stat()
        unchanged = (stat.st_size, stat.st_mtime_ns, stat.st_ino) == (
            state.size,
            state.mtime_ns,
            state.inode,
        )
        if state.caught_up and unchanged:
            return 0
        if budget <= 0:
            state.size = stat.st_size  # for the unread-bytes gauge; read on the next poll
            return 0
        where = (key.server, direction)
        with path.open("rb", buffering=0) as file:
            stat_now = os.fstat(file.fileno())
            reason = self._changed(file, state, stat_now)
            if reason:
                self.resets[(key.server, direction, reason)] += 1
                log.info("protocol log %s was %s: reading it from the start", path, reason)
                state.offset, state.discarding, state.fields = 0, False, None
                state.head, state.head_length = "", 0
            state.inode, state.mtime_ns = stat_now.st_ino, stat_now.st_mtime_ns
            if state.start_at_end:
                _take_up_at_end(file, state, stat_now.st_size, limit)
            before = state.offset
            tally = self.totals.setdefault(where, Tally())
            state.caught_up = _follow(file, state, tally, COUNTED_EVENT[direction], limit, budget)
            state.size = max(stat_now.st_size, state.offset)
            if state.head_length < HEAD and state.size > state.head_length:
                file.seek(0)
                head = file.read(HEAD)
                state.head, state.head_length = _head_hash(head), len(head)
        consumed = state.offset - before
        self.bytes_read[where] += consumed
        return consumed

    @staticmethod
    def _changed(file: BinaryIO, state: FileState, stat: os.stat_result) -> str:
        if stat.st_size < state.offset:
            return "truncated"
        if state.head_length:
            file.seek(0)
            if _head_hash(file.read(state.head_length)) != state.head:
                return "replaced"
        # A new inode under the same full head is the same file seen through a remount (CIFS
        # without serverino numbers inodes itself); under a shorter head it may not be.
        if state.inode and stat.st_ino != state.inode and state.head_length < HEAD:
            return "replaced"
        return ""

    # -- results ---------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return Snapshot(
            totals={key: tally.copy() for key, tally in self.totals.items()},
            bytes_read=dict(self.bytes_read),
            files=dict(self.followed),
            unread=dict(self.unread),
            resets=dict(self.resets),
            read_errors=dict(self.read_errors),
            folders=dict(self.folders),
            state_errors=dict(self.state_errors),
            listed=frozenset(key.server for key in self.known),
            recent_auth=tuple(self.recent_auth),
        )

    @property
    def file_count(self) -> int:
        return sum(self.followed.values())


def _take_up_at_end(file: BinaryIO, state: FileState, size: int, limit: int) -> None:
    """Position a file seen at the first listing of its folder just past its last full line."""
    state.start_at_end = False
    state.fields = _read_fields(file, size)
    # Not at the very end: a line still being written is read whole once it is complete.
    tail = min(size, limit + 1)
    file.seek(size - tail)
    newline = file.read(tail).rfind(b"\n")
    if newline != -1:
        state.offset = size - tail + newline + 1
    elif size > limit:
        # Already longer than any line may be: skip the rest of it, uncounted, as it began
        # before we started.
        state.offset, state.discarding = size, True


def _read_fields(file: BinaryIO, size: int) -> tuple[str, ...] | None:
    """The #Fields of a file's header: the ``#`` lines at its top."""
    file.seek(0)
    data = file.read(min(size, MAX_HEADER_BYTES)).removeprefix(BOM)
    for line in data.split(b"\n")[:-1]:
        if not line.startswith(b"#"):
            break
        layout = Layout.from_header(line)
        if layout is not None:
            return layout.fields
    return None


def _follow(
    file: BinaryIO, state: FileState, tally: Tally, counted: bytes, limit: int, budget: int
) -> bool:
    """Count the complete lines from ``state.offset`` on; True when the end of file was reached.

    The line cut by a chunk boundary is put together on its own (a few hundred bytes), so no
    chunk is ever copied; a line growing past ``limit`` is counted malformed once and skipped
    without being kept.
    """
    layout = Layout.of(state.fields) if state.fields is not None else DEFAULT_LAYOUT
    file.seek(state.offset)
    carry = b""  # the start of a line cut by the previous chunk
    read = 0
    while read < budget:
        data = file.read(CHUNK)
        if not data:
            break
        read += len(data)
        base = state.offset + len(carry)  # file position of data[0]
        pos = 0
        if base == 0 and len(data) < len(BOM) and BOM.startswith(data):
            # Cut inside a byte order mark: it must be seen whole to be skipped.
            more = file.read(len(BOM) - len(data))
            read += len(more)
            data += more
            if len(data) < len(BOM) and BOM.startswith(data):
                break  # still being written
        if base == 0 and data.startswith(BOM):
            pos = len(BOM)
            state.offset = len(BOM)
        if state.discarding:
            newline = data.find(b"\n", pos)
            if newline == -1:
                state.offset = base + len(data)
                continue
            pos = newline + 1
            state.discarding = False
            state.offset = base + pos
        elif carry:
            newline = data.find(b"\n", pos)
            if newline == -1:
                if len(carry) + len(data) > limit:
                    tally.add_malformed()
                    state.discarding = True
                    state.offset = base + len(data)
                    carry = b""
                else:
                    carry += data
                continue
            joined = carry + data[: newline + 1]
            layout = count_lines(joined, 0, len(joined), layout, counted, tally, limit)
            carry = b""
            pos = newline + 1
            state.offset = base + pos
        last = data.rfind(b"\n", pos)
        if last != -1:
            layout = count_lines(data, pos, last + 1, layout, counted, tally, limit)
            pos = last + 1
            state.offset = base + pos
        rest = len(data) - pos
        if rest > limit:
            tally.add_malformed()
            state.discarding = True
            state.offset = base + len(data)
        elif rest:
            carry = data[pos:]
    state.fields = layout.fields
    return read < budget


# -- the scan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProtocolLogs:
    follower: Follower  # carried from run to run; only the scan's thread touches it
    snapshot: Snapshot  # what scrapes and verdicts read

    def auth_failures(self, server: str, now: float | None = None) -> list[str] | None:
        """Authentication failures in the server's logs lately; None: no log folder read."""
        if server not in self.snapshot.listed:
            return None
        now = time.time() if now is None else now
        found: Counter[tuple[str, str, str]] = Counter()
        for when, name, direction, code, enhanced, count in self.snapshot.recent_auth:
            if name == server and now - when <= RECENT_SECONDS:
                found[(direction, code, enhanced)] += count
        window = format_duration(RECENT_SECONDS)
        lines = []
        for (direction, code, enhanced), count in sorted(found.items()):
            reply = f"{code} {enhanced}".rstrip()
            times = "once" if count == 1 else f"{count} times"
            if direction == "send":
                lines.append(
                    f"servers it sent to answered {reply} {times} in the last {window} "
                    "(SmtpSend log)"
                )
            else:
                lines.append(
                    f"it answered {reply} to connecting servers {times} in the last {window} "
                    "(SmtpReceive log)"
                )
        return lines


def _folders(settings: Settings) -> list[FolderKey]:
    seen: dict[FolderKey, None] = {}
    for source in settings.checks.queues.protocol_logs:
        seen[FolderKey(source.server, source.path)] = None
    return list(seen)


def _poll(follower: Follower, settings: Settings) -> Snapshot:
    queues = settings.checks.queues
    if not follower.loaded:
        follower.load(queues.state_file)
    follower.poll(_folders(settings), queues.max_line_length)
    # Saved before the counts are published: a crash in between loses a poll's counts from
    # this process's series, rather than counting its lines twice after the restart.
    if queues.state_file is not None:
        follower.save(queues.state_file)
    return follower.snapshot()


def _in_thread(follower: Follower, settings: Settings) -> Future[Snapshot]:
    # A daemon thread of its own: a read stuck on a hung share can neither hold up the other
    # scans' threads nor keep the process from exiting.
    future: Future[Snapshot] = Future()

    def work() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(_poll(follower, settings))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=work, name="protocol-logs", daemon=True).start()
    return future


# A first run that timed out leaves its follower here, so the next run waits for that reader
# rather than starting a second one (and a second writer of the same state file).
_UNFINISHED_FIRST_RUNS: dict[Path | None, Follower] = {}


async def scan_protocol_logs(
    settings: Settings, inventory: Inventory, previous: ProtocolLogs | None = None
) -> ProtocolLogs:
    state_file = settings.checks.queues.state_file
    if previous is not None:
        follower = previous.follower
    else:
        follower = _UNFINISHED_FIRST_RUNS.get(state_file) or Follower()
    if follower.inflight is not None and not follower.inflight.done():
        raise PollTimeout("the previous poll of the protocol logs is still reading (a hung share?)")
    follower.inflight = _in_thread(follower, settings)
    try:
        snapshot = await asyncio.wait_for(
            asyncio.shield(asyncio.wrap_future(follower.inflight)), POLL_TIMEOUT
        )
    except TimeoutError:
        if previous is None:
            _UNFINISHED_FIRST_RUNS[state_file] = follower
        raise PollTimeout(
            f"a poll of the protocol logs took over {POLL_TIMEOUT:g} s; it goes on reading"
        ) from None
    _UNFINISHED_FIRST_RUNS.pop(state_file, None)
    return ProtocolLogs(follower, snapshot)


def _protocol_log_metrics(
    state: ScanState[ProtocolLogs], settings: Settings, inventory: Inventory
) -> Iterator[Metric]:
    cached = 'Cached: see exchange_auth_last_success_timestamp_seconds{scan="protocol_logs"}.'
    responses = CounterMetricFamily(
        "exchange_auth_smtp_log_responses",
        "SMTP responses in the Exchange protocol logs: the remote server's answers in send logs "
        '(< events), ours in receive logs (> events), by reply code and enhanced code ("" when '
        f'absent; smtp_code="other" when the data has no code). {cached}',
        labels=["server", "direction", "smtp_code", "enhanced_code"],
    )
    lines = CounterMetricFamily(
        "exchange_auth_smtp_log_lines",
        f"Log lines read, headers and blank lines aside, malformed ones included. {cached}",
        labels=["server", "direction"],
    )
    malformed = CounterMetricFamily(
        "exchange_auth_smtp_log_malformed_lines",
        "Log lines that could not be read: bad CSV quoting, a field count other than the "
        f"#Fields header's, an unknown event, or longer than max_line_length. {cached}",
        labels=["server", "direction"],
    )
    bytes_read = CounterMetricFamily(
        "exchange_auth_smtp_log_bytes_read",
        f"Bytes of protocol logs consumed (complete lines and skipped over-long ones). {cached}",
        labels=["server", "direction"],
    )
    files = GaugeMetricFamily(
        "exchange_auth_smtp_log_files",
        f"Protocol-log files followed at the last poll. {cached}",
        labels=["server", "direction"],
    )
    unread = GaugeMetricFamily(
        "exchange_auth_smtp_log_unread_bytes",
        "Bytes in the followed files past the last complete line read at the last poll (a line "
        f"being written, or a backlog when a poll hit its read limit). {cached}",
        labels=["server", "direction"],
    )
    resets = CounterMetricFamily(
        "exchange_auth_smtp_log_file_resets",
        "Files read again from the start because they were truncated or replaced. " + cached,
        labels=["server", "direction", "reason"],
    )
    read_errors = CounterMetricFamily(
        "exchange_auth_smtp_log_read_errors",
        "Failed listings of a protocol-log folder or reads of a file, by reason: not_found, "
        f"permission_denied, not_a_directory or io_error. {cached}",
        labels=["server", "reason"],
    )
    folder_up = GaugeMetricFamily(
        "exchange_auth_smtp_log_folder_up",
        "1 when the protocol-log folder was listed and all its files read at the last poll. "
        + cached,
        labels=["server", "path"],
    )
    folder_failure = GaugeMetricFamily(
        "exchange_auth_smtp_log_folder_failure",
        "1 for the reason the protocol-log folder (or a file in it) failed at the last poll: "
        f"not_found, permission_denied, not_a_directory or io_error. {cached}",
        labels=["server", "path", "reason"],
    )
    state_errors = CounterMetricFamily(
        "exchange_auth_smtp_log_state_file_errors",
        "Failures to load (then every log was taken up from its end) or save the protocol-log "
        "state file.",
        labels=["operation"],
    )
    snapshot = state.result.snapshot if state.result is not None else None
    if snapshot is not None:
        keys = sorted(set(snapshot.totals) | set(snapshot.bytes_read) | set(snapshot.files))
        for key in keys:
            tally = snapshot.totals.get(key) or Tally()
            for (code, enhanced), count in sorted(tally.responses.items()):
                responses.add_metric([*key, code, enhanced], count)
            lines.add_metric(list(key), tally.lines)
            malformed.add_metric(list(key), tally.malformed)
            bytes_read.add_metric(list(key), snapshot.bytes_read.get(key, 0))
        for key, count in sorted(snapshot.files.items()):
            files.add_metric(list(key), count)
            unread.add_metric(list(key), snapshot.unread.get(key, 0))
        for (server, direction, reason), count in sorted(snapshot.resets.items()):
            resets.add_metric([server, direction, reason], count)
        for (server, reason), count in sorted(snapshot.read_errors.items()):
            read_errors.add_metric([server, reason], count)
        for folder in _folders(settings):
            status = snapshot.folders.get(folder)
            if status is None:
                continue  # configured since the last poll: no claim either way
            folder_up.add_metric([folder.server, str(folder.path)], 0 if status else 1)
            if status:
                folder_failure.add_metric([folder.server, str(folder.path), status], 1)
        for operation in ("load", "save"):
            state_errors.add_metric([operation], snapshot.state_errors.get(operation, 0))
    yield from (
        responses,
        lines,
        malformed,
        bytes_read,
        files,
        unread,
        resets,
        read_errors,
        folder_up,
        folder_failure,
        state_errors,
    )


def _interval(settings: Settings) -> float | None:
    queues = settings.checks.queues
    return queues.poll_interval if queues.protocol_logs else None


PROTOCOL_LOG_SCAN: Scan[ProtocolLogs] = Scan(
    name="protocol_logs",
    interval=_interval,
    run=scan_protocol_logs,
    count=lambda result: result.follower.file_count,
    emit=_protocol_log_metrics,
)
