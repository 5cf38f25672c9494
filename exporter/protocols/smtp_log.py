"""Exchange SMTP protocol-log lines (SmtpSend, SmtpReceive): headers, CSV fields, response codes.

Pure parsing, no I/O. Two paths give the same answer for every line:

- :func:`parse_line` is the reference: one line through the ``csv`` module (strict quoting),
  then the response code read from the ``data`` column.
- :func:`count_lines` is what the follower runs over megabytes at a time. One regular
  expression per ``#Fields`` layout, anchored on each line's preceding newline and built from
  single-byte negations (the regex engine's cheapest loops), is applied by ``findall`` to the
  whole block; it captures one group per line, the counted event's codes, so every other line
  yields the same empty bytes. The pattern may run across a newline on a line that does not
  fit, but then some line start goes unused: so when it matches exactly as many times as
  there are lines, each match is one whole line and the block is done, with Python work per
  distinct code rather than per line. Otherwise (a header, a blank or a malformed line in
  the block) a slower pattern that cannot cross a newline goes line by line and hands
  whatever it cannot read to :func:`parse_line`. Layouts whose ``data`` column does not
  directly follow ``event`` (Exchange's always does) take that slower road throughout.

What is counted: the remote side's responses, that is ``<`` events in send logs (what the
server we connected to answered) and ``>`` events in receive logs (what we answered our
clients). Exchange writes each response, multi-line ones included (``250-EXCH2 Hello [10.0.0.5]
SIZE ... CHUNKING``), as one log line, so one line is one response, and a ``250-`` line counts
like a ``250`` one. The code is three digits at the start of ``data`` followed by a space, a
hyphen or the end of the field; the enhanced code (RFC 3463 ``class.subject.detail``, class 2,
4 or 5) follows after one space or hyphen and ends at a space or the end of the field.

What is malformed: a line longer than ``max_line_length`` bytes (the newline not counted), a
line the strict CSV reader rejects (a quoted field not closed, or closed and followed by
anything but a comma), a different number of fields than the ``#Fields`` header announces,
or an event other than ``+ - > < *``. A response whose data does not start with a code is not
malformed: it counts under ``smtp_code="other"``. Blank lines and ``#`` header lines are
neither. One trailing ``\\r`` belongs to the line ending; any other ``\\r`` is an ordinary byte.
Lines are split on ``\\n`` only, so a quoted field cannot span lines (Exchange writes none).
"""

from __future__ import annotations

import csv
import enum
import functools
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "BOM",
    "COUNTED_EVENT",
    "DEFAULT_LAYOUT",
    "DIRECTIONS",
    "MAX_CODE_SERIES",
    "OTHER",
    "Kind",
    "Layout",
    "Line",
    "Tally",
    "count_lines",
    "parse_line",
]

DIRECTIONS = ("send", "receive")
# The remote side's responses: what the server we sent to said, what we said to our clients.
COUNTED_EVENT: Mapping[str, bytes] = {"send": b"<", "receive": b">"}
OTHER = "other"
# Codes come from remote servers, some on the Internet: a hostile peer must not be able to
# mint series. Past this many (code, enhanced code) pairs per server and direction, new pairs
# count as smtp_code="other".
MAX_CODE_SERIES = 200

BOM = b"\xef\xbb\xbf"
_EVENTS = frozenset("+-<>*")
_FIELDS_PREFIX = b"#fields:"
_DEFAULT_FIELDS = (
    "date-time",
    "connector-id",
    "session-id",
    "sequence-number",
    "local-endpoint",
    "remote-endpoint",
    "event",
    "data",
    "context",
)

# The lines we count are short, but max_line_length may be set up to 1 MiB: csv's default
# field limit (128 KiB) would otherwise make a long-but-allowed quoted field malformed.
_FIELD_LIMIT = 1 << 21
if csv.field_size_limit() < _FIELD_LIMIT:
    csv.field_size_limit(_FIELD_LIMIT)

# The leading code of a response, applied to the unquoted data field (the reference path).
_CODE = re.compile(r"(\d{3})(?=[ -]|\Z)(?:[ -]([245]\.\d{1,3}\.\d{1,3})(?= |\Z))?", re.ASCII)


class Kind(enum.Enum):
    RESPONSE = "response"  # the counted event, with its codes
    EVENT = "event"  # any other well-formed line
    BLANK = "blank"
    HEADER = "header"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the columns are, from a file's ``#Fields`` line."""

    fields: tuple[str, ...]
    event: int | None
    data: int | None

    @classmethod
    def of(cls, fields: Iterable[str]) -> Layout:
        names = tuple(fields)
        lowered = [name.lower() for name in names]
        event = lowered.index("event") if "event" in lowered else None
        data = lowered.index("data") if "data" in lowered else None
        return cls(names, event, data)

    @classmethod
    def from_header(cls, line: bytes) -> Layout | None:
        """The layout a ``#Fields:`` line announces (key in any case); None for other lines."""
        text = line.removeprefix(BOM).rstrip(b"\r")
        if text[: len(_FIELDS_PREFIX)].lower() != _FIELDS_PREFIX:
            return None
        names = text[len(_FIELDS_PREFIX) :].decode("latin-1").split(",")
        return cls.of(name.strip() for name in names)

    @property
    def usable(self) -> bool:
        return self.event is not None and self.data is not None


# Exchange 2013 to 2019 write exactly these; used until a file's own #Fields line is read
# (a file whose header we never saw, or a header that lacks the line).
DEFAULT_LAYOUT = Layout.of(_DEFAULT_FIELDS)


@dataclass(frozen=True, slots=True)
class Line:
    kind: Kind
    event: str = ""
    smtp_code: str = ""  # for RESPONSE: three digits or "other"
    enhanced_code: str = ""  # for RESPONSE: X.Y.Z or ""
    layout: Layout | None = None  # for a #Fields header


_BLANK = Line(Kind.BLANK)
_MALFORMED = Line(Kind.MALFORMED)
_HEADER = Line(Kind.HEADER)


def parse_line(line: bytes, layout: Layout, counted: bytes, max_line_length: int) -> Line:
    """One line, without its ``\\n``: the reference for what :func:`count_lines` counts."""
    if len(line) > max_line_length:
        return _MALFORMED
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line:
        return _BLANK
    if line.startswith(b"#"):
        found = Layout.from_header(line)
        return _HEADER if found is None else Line(Kind.HEADER, layout=found)
    if layout.event is None or layout.data is None:
        return _MALFORMED
    # latin-1 maps every byte to one character: stray non-UTF-8 bytes cannot fail to decode,
    # and the codes we read are ASCII either way. csv would end the record at a bare CR; to us
    # it is an ordinary byte, so it becomes one csv has no opinion about.
    try:
        text = line.decode("latin-1").replace("\r", "\x7f")
        rows = list(csv.reader([text], strict=True))
    except csv.Error:
        return _MALFORMED
    if len(rows) != 1 or len(rows[0]) != len(layout.fields):
        return _MALFORMED
    row = rows[0]
    event = row[layout.event]
    if event not in _EVENTS:
        return _MALFORMED
    if event.encode("latin-1") != counted:
        return Line(Kind.EVENT, event)
    match = _CODE.match(row[layout.data])
    if match is None:
        return Line(Kind.RESPONSE, event, OTHER, "")
    return Line(Kind.RESPONSE, event, match.group(1), match.group(2) or "")


@dataclass
class Tally:
    """Counts for one server and direction. Only ever grows."""

    responses: dict[tuple[str, str], int] = field(default_factory=dict)
    lines: int = 0  # data lines: neither blank nor header
    malformed: int = 0

    def add_response(self, smtp_code: str, enhanced_code: str, count: int = 1) -> None:
        key = (smtp_code, enhanced_code)
        if key not in self.responses and len(self.responses) >= MAX_CODE_SERIES:
            key = (OTHER, "")
        self.responses[key] = self.responses.get(key, 0) + count

    def add_malformed(self, count: int = 1) -> None:
        self.lines += count
        self.malformed += count

    def add(self, line: Line, count: int = 1) -> None:
        if line.kind is Kind.RESPONSE:
            self.lines += count
            self.add_response(line.smtp_code, line.enhanced_code, count)
        elif line.kind is Kind.EVENT:
            self.lines += count
        elif line.kind is Kind.MALFORMED:
            self.lines += count
            self.malformed += count

    def merge(self, other: Tally) -> None:
        for (code, enhanced), count in other.responses.items():
            self.add_response(code, enhanced, count)
        self.lines += other.lines
        self.malformed += other.malformed

    def copy(self) -> Tally:
        return Tally(dict(self.responses), self.lines, self.malformed)


# Pieces of the line patterns. A quoted field is written unrolled and possessive, so each run
# of ordinary bytes is one tight loop with no backtracking into it.
#
# The codes are read by a lookahead at the counted event into one group, "key": the event, its
# comma, the data's opening quote if any, then the code and enhanced code under the same rules
# as _CODE (a code ends at a space, a hyphen or the end of the field; a quoted field ends at a
# quote followed by a delimiter). One group means findall yields a bytes object per line, the
# empty (shared) one for every line of another event: half the cost of tuples to make, count
# and free.
_KEY = (
    rb'%(event)b,(?:"\d{3}(?=[ -]|%(end)b)(?:[ -]%(enhanced)b(?= |%(end)b))?'
    rb"|\d{3}(?=[ -]|,|\r?\n)(?:[ -]%(enhanced)b(?=[ ,]|\r?\n))?"
    rb"|)"
)
_ENHANCED = rb"[245]\.\d{1,3}\.\d{1,3}"
# A #Fields line is data from the file: one with thousands of columns must not compile into a
# pattern to match.
_MAX_PATTERN_FIELDS = 64
_QUOTED_END = rb'"(?:,|\r?\n)'


def _line_pattern(layout: Layout, counted: bytes, *, fast: bool) -> re.Pattern[bytes] | None:
    """The pattern for one line of this layout, from its preceding newline; groups key, rest.

    ``fast``: ordinary bytes are "anything but a comma" (or a quote, inside quotes), which may
    run past a newline; only a full count of matches proves otherwise. Not fast: they exclude
    the newline too, and a line that does not fit is captured whole as ``rest``. None when the
    data column does not follow the event column (never so in Exchange): the reference path
    reads those files.
    """
    if (
        layout.event is None
        or layout.data != layout.event + 1
        or len(layout.fields) > _MAX_PATTERN_FIELDS
    ):
        return None
    nl = b"" if fast else rb"\n"
    plain = b"[^," + nl + b"]*+"
    ordinary = b'[^"' + nl + b"]*+"  # inside quotes
    quoted = b'"' + ordinary + b'(?:""' + ordinary + b')*+"'
    others = b"".join(re.escape(bytes([c])) for c in b"+*<>-" if bytes([c]) != counted)
    key = _KEY % {b"event": re.escape(counted), b"end": _QUOTED_END, b"enhanced": _ENHANCED}
    parts = []
    for index in range(len(layout.fields)):
        body = rb"[^,\n]*+" if index == len(layout.fields) - 1 else plain
        if index == layout.event:
            parts.append(
                b"(?:(?=(?P<key>" + key + b"))" + re.escape(counted) + b"|[" + others + b"])"
            )
        elif index < layout.event:
            # Exchange never quotes the fields before the event: their plain-only form keeps the
            # common case cheap, and a quoted one sends its block to the slow path. A line
            # starting with "#" is a header, never data.
            parts.append((rb'(?![#"])' if index == 0 else rb'(?!")') + body)
        else:
            parts.append(b"(?:" + quoted + rb'|(?!")' + body + b")")
    line = b",".join(parts) + rb"\r?(?=\n)"
    if fast:
        return re.compile(rb"\n" + line)
    # Blank lines match neither branch, and count as nothing.
    return re.compile(rb"\n(?:" + line + rb"|(?P<rest>[^\n]+))")


@functools.lru_cache(maxsize=64)
def _patterns(
    layout: Layout, counted: bytes
) -> tuple[re.Pattern[bytes] | None, re.Pattern[bytes] | None]:
    return _line_pattern(layout, counted, fast=True), _line_pattern(layout, counted, fast=False)


@functools.lru_cache(maxsize=1024)
def _codes(key: bytes) -> tuple[str, str]:
    """(smtp_code, enhanced_code) from a key: event, comma, maybe a quote, code, enhanced."""
    codes = key[2:].removeprefix(b'"').decode("ascii")
    return (codes[:3], codes[4:]) if codes else (OTHER, "")


def _long_line(buf: bytes, pos: int, end: int, limit: int) -> tuple[int, int] | None:
    """The first line in ``buf[pos:end]`` longer than ``limit`` bytes, as (start, past its \\n).

    Jumps about ``limit`` bytes at a time: every line that starts and ends inside one window
    of ``limit + 1`` bytes is short, so only the window's last newline matters.
    """
    while pos < end:
        stop = min(pos + limit + 1, end)
        if buf.find(b"\n", pos, stop) == -1:
            return pos, buf.index(b"\n", pos, end) + 1
        pos = buf.rfind(b"\n", pos, stop) + 1
    return None


def count_lines(
    buf: bytes,
    start: int,
    end: int,
    layout: Layout,
    counted: bytes,
    tally: Tally,
    max_line_length: int,
) -> Layout:
    """Count the complete lines of ``buf[start:end]`` (``end`` just past a ``\\n``) into ``tally``.

    Returns the layout in force after them: a ``#Fields`` line among them changes it for the
    lines that follow. The same counts as :func:`parse_line` on each line in turn.
    """
    pos = start
    while pos < end:
        long = _long_line(buf, pos, end, max_line_length)
        stop = end if long is None else long[0]
        if pos < stop:
            layout = _count_short_lines(buf, pos, stop, layout, counted, tally, max_line_length)
        if long is None:
            break
        tally.add(_MALFORMED)
        pos = long[1]
    return layout


def _count_short_lines(
    buf: bytes, pos: int, end: int, layout: Layout, counted: bytes, tally: Tally, limit: int
) -> Layout:
    if _count_fast(buf, pos, end, layout, counted, tally, limit):
        return layout
    whole = (pos, end)
    while pos < end:
        if buf[pos] == 0x23:  # "#": a header line, which may change the layout
            newline = buf.index(b"\n", pos, end)
            header = parse_line(buf[pos:newline], layout, counted, limit)
            if header.layout is not None:
                layout = header.layout
            pos = newline + 1
            continue
        header_at = buf.find(b"\n#", pos, end)
        stop = end if header_at == -1 else header_at + 1
        # The fast pattern already failed on the whole range; a part of it may still pass.
        if (pos, stop) == whole or not _count_fast(buf, pos, stop, layout, counted, tally, limit):
            _count_exact(buf, pos, stop, layout, counted, tally, limit)
        pos = stop
    return layout


def _count_fast(
    buf: bytes, pos: int, end: int, layout: Layout, counted: bytes, tally: Tally, limit: int
) -> bool:
    """All of ``buf[pos:end]`` with the fast pattern, or nothing at all (False)."""
    pattern = _patterns(layout, counted)[0]
    if pattern is None:
        return False
    anchor = pos - 1
    first: Line | None = None
    if pos == 0 or buf[anchor] != 0x0A:
        # No newline to anchor the first line on: it alone takes the reference path.
        anchor = buf.index(b"\n", pos, end)
        first = parse_line(buf[pos:anchor], layout, counted, limit)
        if first.kind is Kind.HEADER:
            return False
    found = Counter(pattern.findall(buf, anchor, end))
    matched = found.total()
    if matched != buf.count(b"\n", anchor + 1, end):
        return False
    if first is not None:
        tally.add(first)
    tally.lines += matched
    for key, count in found.items():
        if key:
            tally.add_response(*_codes(key), count)
    return True


def _count_exact(
    buf: bytes, pos: int, end: int, layout: Layout, counted: bytes, tally: Tally, limit: int
) -> None:
    """Line by line: the slow pattern where it fits, :func:`parse_line` where it does not."""
    pattern = _patterns(layout, counted)[1]
    if pattern is None:
        for line in buf[pos : end - 1].split(b"\n"):
            tally.add(parse_line(line, layout, counted, limit))
        return
    anchor = pos - 1
    if pos == 0 or buf[anchor] != 0x0A:
        anchor = buf.index(b"\n", pos, end)
        tally.add(parse_line(buf[pos:anchor], layout, counted, limit))
    found: Counter[tuple[bytes, bytes]] = Counter(pattern.findall(buf, anchor, end))
    for (key, rest), count in found.items():
        if rest:  # the whole line, which the pattern could not read
            tally.add(parse_line(rest, layout, counted, limit), count)
            continue
        tally.lines += count
        if key:
            tally.add_response(*_codes(key), count)
