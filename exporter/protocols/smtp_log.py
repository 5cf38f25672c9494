"""Exchange SMTP protocol-log lines (SmtpSend, SmtpReceive): headers, CSV fields, response codes.

Pure parsing, no I/O. Two paths give the same answer for every line:

- :func:`parse_line` is the reference: one line through the ``csv`` module (strict quoting),
  then the response code read from the ``data`` column.
- :func:`count_lines` is what the follower runs over megabytes at a time: one regular
  expression per ``#Fields`` layout, applied by ``findall`` to a whole block, matches every
  line that is plainly well formed (quoted or not) and captures its event and leading codes;
  whatever it does not match goes through :func:`parse_line`. Python-level work is then per
  distinct (event, code) pair, not per line, which is what makes ~1 GB/s-class blocks cheap.

What is counted: the responses of the remote side, that is ``<`` events in send logs (what
the server we connected to answered) and ``>`` events in receive logs (what we answered).
Exchange writes each response, multi-line ones included (``250-EXCH2 Hello ... CHUNKING``),
as one log line, so one line is one response; a ``250-`` line counts like a ``250`` one.

What is malformed: a line longer than ``max_line_length`` bytes, a line the strict CSV reader
rejects (unbalanced or stray quotes in a quoted field), a line with a different number of
fields than its ``#Fields`` header, or an event that is not one of ``+ - > < *``. A
response whose data does not start with three digits is not malformed: it counts under
``smtp_code="other"``. Blank lines and ``#`` header lines are neither.
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
    # and the codes we read are ASCII either way.
    try:
        rows = list(csv.reader([line.decode("latin-1")], strict=True))
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


# A field as the strict CSV reader accepts it, without CR or LF inside (those lines take the
# reference path). The quoted form is written unrolled so each run of plain bytes is one
# tight character-class loop in the regex engine.
_PLAIN = rb'[^,"\r\n]*'
_QUOTED = rb'"[^"\r\n]*(?:""[^"\r\n]*)*"'
_FIELD = rb"(?:" + _QUOTED + rb"|" + _PLAIN + rb")"
_EVENT = rb"(?P<event>[-+*<>])"
_ENHANCED = rb"[245]\.\d{1,3}\.\d{1,3}"
# The data field, capturing the leading code and enhanced code exactly as _CODE does on the
# unquoted text: a code ends at a space, a hyphen or the end of the field, and a quoted field
# ends at a quote followed by a comma or the end of the line.
_QUOTED_END = rb'"(?:,|\r?$)'
_DATA = (
    rb'(?:"(?:(?P<qcode>\d{3})(?=[ -]|' + _QUOTED_END + rb")"
    rb"(?:[ -](?P<qenhanced>" + _ENHANCED + rb")(?= |" + _QUOTED_END + rb"))?)?"
    rb'[^"\r\n]*(?:""[^"\r\n]*)*"'
    rb"|(?:(?P<code>\d{3})(?=[ -]|,|\r?$)"
    rb"(?:[ -](?P<enhanced>" + _ENHANCED + rb")(?=[ ,]|\r?$))?)?" + _PLAIN + rb")"
)


@dataclass(frozen=True, slots=True)
class _BlockPattern:
    """Per line: the fast form, or else the whole line (``rest``) for :func:`parse_line`."""

    regex: re.Pattern[bytes]
    # Positions in each findall tuple (group number - 1); -1 when the layout has no such group.
    event: int
    qcode: int
    qenhanced: int
    code: int
    enhanced: int
    rest: int


@functools.lru_cache(maxsize=32)
def _block_pattern(layout: Layout) -> _BlockPattern:
    if layout.event is None or layout.data is None:
        # findall on a single group yields strings, not tuples: keep a dummy group first.
        regex = re.compile(rb"^()(.+)$", re.MULTILINE)
        return _BlockPattern(regex, -1, -1, -1, -1, -1, 1)
    parts = [
        _EVENT if index == layout.event else _DATA if index == layout.data else _FIELD
        for index in range(len(layout.fields))
    ]
    regex = re.compile(rb"^(?:" + b",".join(parts) + rb"\r?$|(?P<rest>.+)$)", re.MULTILINE)
    group = {name: number - 1 for name, number in regex.groupindex.items()}
    return _BlockPattern(
        regex,
        group["event"],
        group["qcode"],
        group["qenhanced"],
        group["code"],
        group["enhanced"],
        group["rest"],
    )


def _long_line(buf: bytes, pos: int, end: int, limit: int) -> tuple[int, int] | None:
    """The first line in ``buf[pos:end]`` longer than ``limit`` bytes, as (start, past its \\n).

    Jumps about ``limit`` bytes at a time: every line that starts and ends inside one window
    of ``limit + 1`` bytes is short, so only the window's last newline matters. A few calls
    per block instead of one per line.
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
    lines that follow. Same result as :func:`parse_line` on each line, in order.
    """
    pos = start
    while pos < end:
        long = _long_line(buf, pos, end, max_line_length)
        stop = end if long is None else long[0]
        layout = _count_short_lines(buf, pos, stop, layout, counted, tally, max_line_length)
        if long is None:
            break
        tally.add(_MALFORMED)
        pos = long[1]
    return layout


def _count_short_lines(
    buf: bytes,
    pos: int,
    end: int,
    layout: Layout,
    counted: bytes,
    tally: Tally,
    max_line_length: int,
) -> Layout:
    while pos < end:
        if buf[pos] == 0x23:  # "#": a header line, which may change the layout
            newline = buf.index(b"\n", pos, end)
            header = parse_line(buf[pos:newline], layout, counted, max_line_length)
            if header.layout is not None:
                layout = header.layout
            pos = newline + 1
            continue
        header_at = buf.find(b"\n#", pos, end)
        stop = end if header_at == -1 else header_at + 1
        _count_data_lines(buf, pos, stop, layout, counted, tally, max_line_length)
        pos = stop
    return layout


def _count_data_lines(
    buf: bytes,
    pos: int,
    end: int,
    layout: Layout,
    counted: bytes,
    tally: Tally,
    max_line_length: int,
) -> None:
    """Lines with no header among them: one findall, then work per distinct outcome."""
    pattern = _block_pattern(layout)
    # endpos leaves out the last newline, so "$" ends the last line and no empty line follows.
    # Lines the pattern skips are empty ones: it needs a byte at least.
    found = Counter(pattern.regex.findall(buf, pos, end - 1))
    for groups, count in found.items():
        rest = groups[pattern.rest]
        if rest:
            tally.add(parse_line(rest, layout, counted, max_line_length), count)
            continue
        tally.lines += count
        if groups[pattern.event] != counted:
            continue
        code = groups[pattern.qcode] or groups[pattern.code]
        enhanced = groups[pattern.qenhanced] or groups[pattern.enhanced]
        tally.add_response(code.decode() if code else OTHER, enhanced.decode(), count)
