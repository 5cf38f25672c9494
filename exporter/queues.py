"""Exchange queue snapshots: the JSON shapes of ``Get-Queue`` output, and LastError classes.

Pure: bytes in, frozen dataclasses out, no I/O. Three shapes are accepted:

- ``script``: what ``deploy/windows/Export-QueueSnapshot.ps1`` writes: ``schema_version``,
  ``server``, ``generated_at`` (ISO 8601 UTC) and ``queues``, enums as ``{name, value}``.
- ``get-queue``: plain ``Get-Queue | ConvertTo-Json``. Windows PowerShell 5.1 writes enums as
  numbers and times as ``/Date(ms)/``, and a single queue as an object rather than a list;
  PowerShell 7 writes ISO 8601 times and, with ``-EnumsAsStrings``, enum names. Each field is
  read by what it holds, so a mixture (remoting produces some) is fine too.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

__all__ = [
    "DELIVERY_TYPES",
    "ERROR_CLASSES",
    "QUEUE_STATUSES",
    "ErrorClass",
    "LastError",
    "Queue",
    "Snapshot",
    "SnapshotError",
    "classify_last_error",
    "decode",
    "parse_snapshot",
    "parse_time",
]

SCHEMA_VERSION = 1

ErrorClass = Literal["auth_temporary", "auth_permanent", "tls", "connection", "dns", "other"]
ERROR_CLASSES: tuple[ErrorClass, ...] = (
    "auth_temporary",
    "auth_permanent",
    "tls",
    "connection",
    "dns",
    "other",
)

# Microsoft.Exchange.Data.QueueViewer.QueueStatus, by number.
QUEUE_STATUSES: tuple[str, ...] = (
    "None",
    "Active",
    "Ready",
    "Retry",
    "Suspended",
    "Connecting",
    "Throttled",
)

# Microsoft.Exchange.Data.DeliveryType (a short enum with implicit numbering), by number, as
# Exchange 2013 to 2019 declare it. A number past the end (a later Exchange) is kept as digits.
DELIVERY_TYPES: tuple[str, ...] = (
    "Undefined",
    "DnsConnectorDelivery",
    "MapiDelivery",
    "NonSmtpGatewayDelivery",
    "SmartHostConnectorDelivery",
    "SmtpRelayToRemoteAdSite",
    "SmtpRelayToTiRg",
    "SmtpRelayWithinAdSite",
    "SmtpRelayWithinAdSiteToEdge",
    "Unreachable",
    "ShadowRedundancy",
    "Heartbeat",
    "DeliveryAgent",
    "SmtpDeliveryToMailbox",
    "SmtpRelayToDag",
    "SmtpRelayToMailboxDeliveryGroup",
    "SmtpRelayToConnectorSourceServers",
    "SmtpRelayToServers",
)

# Microsoft.Exchange.Data.QueueViewer.QueueType: only met when Identity is an object.
_QUEUE_TYPES: tuple[str, ...] = (
    "Undefined",
    "Delivery",
    "Poison",
    "Submission",
    "Unreachable",
    "Shadow",
)

_ENUM_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")
_MAX_NAME = 255
_MS_DATE = re.compile(r"^/Date\((-?\d{1,15})(?:[+-]\d{4})?\)/$")


class SnapshotError(ValueError):
    """The file cannot be used; ``reason`` is ``invalid_json`` or ``invalid_shape``."""

    def __init__(self, reason: Literal["invalid_json", "invalid_shape"], detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class LastError:
    error_class: ErrorClass
    # The most specific code: the remote server's quoted reply when there is one, else Exchange's
    # own. Empty when the text carries none.
    smtp_code: str
    enhanced_code: str


@dataclass(frozen=True, slots=True)
class Queue:
    name: str  # Identity without the server: "7", "Shadow\\8", "Submission", "Poison"
    server: str  # the server part of Identity, "" when it has none
    delivery_type: str
    status: str
    message_count: int
    next_hop_domain: str
    last_error: str
    error: LastError | None
    retry_count: int | None = None
    last_retry_time: float | None = None  # Unix time
    next_retry_time: float | None = None
    velocity: float | None = None
    incoming_rate: float | None = None
    outgoing_rate: float | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    shape: Literal["script", "get-queue"]
    server: str  # as the file names it; "" when it names none
    generated_at: float | None  # Unix time; None for shapes that carry no time of their own
    queues: tuple[Queue, ...]


# ---------------------------------------------------------------------------------------------
# LastError


# A reply code with its enhanced code ("454 4.7.0", "451-4.4.0"), anywhere in the text.
_CODE_PAIR = re.compile(r"(?<![\w.])([245]\d\d)[ -]([245]\.\d{1,3}\.\d{1,3})(?!\w|\.\d)")
# A bare reply code counts only where a reply starts: bare three-digit numbers elsewhere are
# ports, counts and octets.
_CODE_LEAD = re.compile(r'(?:^|"|->|LED=)\s*([245]\d\d)(?=[\s"]|$)')
# Exchange 2013+ wraps the text: [{LRT=...};{LED=<the error>};{FQDN=...};{IP=...}]. The host
# name must not be read as error text (a host called tls-gw would read as a TLS failure).
_LED = re.compile(r"\{LED=(.*?)\};\{(?:FQDN|IP)=", re.DOTALL)
_LED_TAIL = re.compile(r"\{LED=(.*?)\}\]?\s*$", re.DOTALL)

_TLS_TEXT = re.compile(
    r"starttls|\btls\b|\bssl\b|certificate|x\.?509|subjectmismatch|untrustedroot|\bschannel\b",
    re.IGNORECASE,
)
_DNS_TEXT = re.compile(
    r"\bdns\b|name resolution|could not be resolved|nonexistentdomain|non-existent domain"
    r"|no such host|\bmx records?\b",
    re.IGNORECASE,
)
_CONNECTION_TEXT = re.compile(
    r"(?:failed|unable|could not) to connect|connection (?:timed out|dropped|refused|reset|was closed)"
    r"|closed abruptly|actively refused|no connection could be made|socket ?error|winsock"
    r"|timed out|(?:network|host) is unreachable",
    re.IGNORECASE,
)
_AUTH_TEMPORARY_TEXT = re.compile(r"temporary authentication failure", re.IGNORECASE)

# RFC 3463 X.7.5 cryptographic failure, RFC 5248 X.7.10/X.7.11 encryption needed; 4.4.317 is
# Exchange's "cannot connect to remote server" when TLS fails.
_TLS_CODES = frozenset({"4.4.317"})
_TLS_SUBJECTS = frozenset({"7.5", "7.10", "7.11"})
_CONNECTION_CODES = frozenset({"4.4.1", "4.4.2"})


def _codes(text: str) -> list[tuple[str, str]]:
    """Every (reply code, enhanced code or "") in the text, outermost first."""
    found: dict[int, tuple[str, str]] = {}
    for match in _CODE_LEAD.finditer(text):
        found[match.start(1)] = (match.group(1), "")
    for match in _CODE_PAIR.finditer(text):
        found[match.start(1)] = (match.group(1), match.group(2))
    return [found[position] for position in sorted(found)]


def _class_of_code(basic: str, enhanced: str) -> ErrorClass | None:
    subject = enhanced.split(".", 1)[1] if enhanced else ""
    if enhanced in _TLS_CODES or subject in _TLS_SUBJECTS:
        return "tls"
    if basic == "454":  # RFC 4954's temporary authentication failure; TLS ones are out already
        return "auth_temporary"
    if enhanced.startswith("5.7.") or (not enhanced and basic in ("530", "535")):
        return "auth_permanent"
    if enhanced in _CONNECTION_CODES:
        return "connection"
    if subject == "4.4" or enhanced == "4.4.7":
        return "dns"
    return None  # a wrapper such as 451 4.4.0: the nested reply or the text decides


def _error_text(raw: str) -> str:
    match = _LED.search(raw) or _LED_TAIL.search(raw)
    return match.group(1).strip() if match else raw.strip()


def classify_last_error(raw: str | None) -> LastError | None:
    """The class and most specific codes of a queue's LastError; None when there is no error."""
    if not raw or not raw.strip():
        return None
    text = _error_text(raw)
    if not text:
        return None
    codes = _codes(text)
    basic, enhanced = codes[-1] if codes else ("", "")
    # TLS words first: a failed STARTTLS comes back with codes that look like authentication
    # (454 4.7.0 TLS not available, 5.7.3 STARTTLS is required) but the fix is a certificate.
    if _TLS_TEXT.search(text):
        return LastError("tls", basic, enhanced)
    # The innermost reply is the remote server's: it says why, the outer ones say "it failed".
    for code in reversed(codes):
        found = _class_of_code(*code)
        if found is not None:
            return LastError(found, basic, enhanced)
    if _DNS_TEXT.search(text):
        return LastError("dns", basic, enhanced)
    if _CONNECTION_TEXT.search(text):
        return LastError("connection", basic, enhanced)
    if _AUTH_TEMPORARY_TEXT.search(text):
        return LastError("auth_temporary", basic, enhanced)
    return LastError("other", basic, enhanced)


# ---------------------------------------------------------------------------------------------
# Field readers: each accepts every spelling the three shapes produce.


def _get(record: Mapping[str, object], key: str) -> object:
    """A property by name, whatever its case (PowerShell property names are case-insensitive)."""
    if key in record:
        return record[key]
    lowered = key.lower()
    for name, value in record.items():
        if name.lower() == lowered:
            return value
    return None


def _unwrap(value: object) -> object:
    # Windows PowerShell 5.1 serialises an object with extended properties (a DateTime from
    # Get-Date, a deserialised enum) as {"value": ..., "DisplayHint": ...}.
    if isinstance(value, Mapping):
        inner = _get(value, "value")
        if inner is not None and not isinstance(inner, Mapping):
            return inner
    return value


def _enum(value: object, names: Sequence[str]) -> str:
    if isinstance(value, Mapping):
        # The script's {name, value}: the name is Exchange's own ToString().
        name = _get(value, "name")
        if isinstance(name, str) and _ENUM_NAME.match(name):
            return name
        value = _get(value, "value")
    if isinstance(value, bool):
        return "unknown"
    if isinstance(value, int):
        if 0 <= value < len(names):
            return names[value]
        return str(value) if 0 <= value < 1000 else "unknown"
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit() and len(text) <= 3:
            return _enum(int(text), names)
        if _ENUM_NAME.match(text):
            return text
    return "unknown"


def _count(value: object) -> int | None:
    value = _unwrap(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _number(value: object) -> float | None:
    value = _unwrap(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _text(value: object, limit: int = 4096) -> str:
    value = _unwrap(value)
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    return text[:limit]


def parse_time(value: object) -> float | None:
    """Unix time from ``/Date(ms)/``, ISO 8601, or PowerShell 5.1's ``{"value": ...}`` wrapper.

    An ISO time without an offset is taken as UTC. None for null, empty or unreadable values.
    """
    value = _unwrap(value)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    match = _MS_DATE.match(text)
    if match:
        # The milliseconds are UTC; a trailing +hhmm only says how the writer would display it.
        return int(match.group(1)) / 1000.0
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _label(text: str) -> str:
    cleaned = "".join(ch for ch in text if ch.isprintable()).strip()
    return cleaned[:_MAX_NAME]


def _identity(value: object) -> tuple[str, str]:
    """(server, queue name) from ``SERVER\\Queue`` or from a serialised QueueIdentity object."""
    if isinstance(value, str):
        server, sep, name = value.partition("\\")
        # "Shadow\\3" without a server: Exchange itself reads a leading Shadow that way.
        if not sep or server.lower() == "shadow":
            return "", _label(value)
        return _label(server), _label(name)
    if isinstance(value, Mapping):
        server = _text(_get(value, "Server"))
        row = _count(_get(value, "RowId")) or 0
        hop = _text(_get(value, "NextHopDomain"))
        kind = _enum(_get(value, "Type"), _QUEUE_TYPES)
        if kind in ("Poison", "Submission", "Unreachable"):
            name = kind
        elif kind == "Shadow":
            name = f"Shadow\\{row if row else hop}"
        else:
            name = str(row) if row else hop
        return _label(server), _label(name)
    return "", ""


def _queue(record: object, index: int) -> Queue:
    if not isinstance(record, Mapping):
        raise SnapshotError("invalid_shape", f"queue {index} is not an object")
    server, name = _identity(_unwrap(_get(record, "Identity")))
    if not name:
        raise SnapshotError("invalid_shape", f"queue {index} has no Identity")
    count = _count(_get(record, "MessageCount"))
    if count is None:
        raise SnapshotError("invalid_shape", f"queue {name!r} has no valid MessageCount")
    last_error = _text(_get(record, "LastError"))
    return Queue(
        name=name,
        server=server,
        delivery_type=_enum(_unwrap_enum(_get(record, "DeliveryType")), DELIVERY_TYPES),
        status=_enum(_unwrap_enum(_get(record, "Status")), QUEUE_STATUSES),
        message_count=count,
        next_hop_domain=_label(_text(_get(record, "NextHopDomain"))),
        last_error=last_error,
        error=classify_last_error(last_error),
        retry_count=_count(_get(record, "RetryCount")),
        last_retry_time=parse_time(_get(record, "LastRetryTime")),
        next_retry_time=parse_time(_get(record, "NextRetryTime")),
        velocity=_number(_get(record, "Velocity")),
        incoming_rate=_number(_get(record, "IncomingRate")),
        outgoing_rate=_number(_get(record, "OutgoingRate")),
    )


def _unwrap_enum(value: object) -> object:
    # {name, value} is the script's own pair and must reach _enum whole; any other wrapper is
    # PowerShell's.
    if isinstance(value, Mapping) and _get(value, "name") is not None:
        return value
    return _unwrap(value)


# ---------------------------------------------------------------------------------------------
# Whole files


def decode(data: bytes) -> str:
    """Text from the bytes Windows tools write: UTF-8 (with or without BOM) or UTF-16 with BOM.

    ``Out-File`` in Windows PowerShell 5.1 writes UTF-16 LE; ``Set-Content`` the ANSI code page.
    """
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8) :].decode("utf-8", errors="replace")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _array(value: object) -> object:
    # Windows PowerShell 5.1 writes an array that went through the pipeline as one object as
    # {"value": [...], "Count": n} (the extended Count of System.Array).
    if isinstance(value, Mapping) and isinstance(_get(value, "value"), list):
        return _get(value, "value")
    return value


def parse_snapshot(data: bytes) -> Snapshot:
    """Read one snapshot file's bytes; raise :class:`SnapshotError` when they are not one."""
    text = decode(data)
    if not text.strip():
        raise SnapshotError("invalid_json", "the file is empty")
    try:
        document = json.loads(text)
    except RecursionError:
        raise SnapshotError("invalid_json", "nested too deeply") from None
    except ValueError as exc:
        # Also what a half-written file looks like: JSON that stops in the middle.
        raise SnapshotError("invalid_json", str(exc)) from None
    document = _array(document)
    if isinstance(document, Mapping) and _get(document, "queues") is not None:
        return _script_shape(document)
    if isinstance(document, Mapping):
        # ConvertTo-Json writes a lone queue as an object, not a list of one.
        document = [document]
    if not isinstance(document, list):
        raise SnapshotError(
            "invalid_shape", f"expected queues, got a JSON {type(document).__name__}"
        )
    return Snapshot("get-queue", "", None, tuple(_queue(q, i) for i, q in enumerate(document)))


def _script_shape(document: Mapping[str, object]) -> Snapshot:
    version = _get(document, "schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise SnapshotError("invalid_shape", f"unsupported schema_version {version!r}")
    generated = parse_time(_get(document, "generated_at"))
    if generated is None:
        raise SnapshotError("invalid_shape", "generated_at is missing or not an ISO 8601 time")
    queues = _array(_get(document, "queues"))
    if isinstance(queues, Mapping):
        queues = [queues]
    if not isinstance(queues, list):
        raise SnapshotError("invalid_shape", "queues is not a list")
    return Snapshot(
        "script",
        _label(_text(_get(document, "server"))),
        generated,
        tuple(_queue(q, i) for i, q in enumerate(queues)),
    )
