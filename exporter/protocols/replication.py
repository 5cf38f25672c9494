"""A domain controller's inbound replication state, as its directory stores or describes it.

Two sources, one shape (:class:`Neighbor`, one per naming context and source DC):

* ``repsFrom`` on each naming-context head: binary REPLICA_LINK values (MS-DRSR 5.167), what
  Samba serves. Version 1 as Samba encodes it: dwVersion, 4 bytes of padding, then V1 with
  little-endian integers, DSTIME seconds since 1601 (0 = never), the source DSA's GUID in the
  MS-DTYP layout, and an MTX_ADDR (length-prefixed, NUL-terminated DNS name) at an offset
  counted from the start of the value.
* ``msDS-ReplAllInboundNeighbors`` on a Windows DC's rootDSE: one XML document per neighbor,
  its child elements named after the DS_REPL_NEIGHBORW fields (MS-ADTS 3.1.1.3.2.28).

Pure functions, no I/O. Whatever bytes come in, the only exception out is
:class:`ReplicationParseError`.
"""

from __future__ import annotations

import struct
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

# defusedxml ships no type hints; its fromstring returns the standard library's Element.
from defusedxml import DefusedXmlException  # type: ignore[import-untyped]
from defusedxml.ElementTree import fromstring as _safe_fromstring  # type: ignore[import-untyped]

__all__ = [
    "OTHER_RESULT",
    "RESULTS",
    "Neighbor",
    "ReplicationParseError",
    "Win32Result",
    "dstime_to_unix",
    "parse_neighbor_xml",
    "parse_replica_link",
    "result_name",
    "signed_result",
]

# Seconds from 1601-01-01 (the DSTIME and FILETIME epoch) to 1970-01-01.
EPOCH_1601 = 11_644_473_600

_LINK_HEADER = struct.Struct("<II")  # dwVersion, padding
# V1 up to and including uuidTransportObj, as Samba writes it (Windows adds fields after it).
_LINK_V1 = struct.Struct("<IIQQIIII84sI24s16s16s16s")
_LINK_FIXED = _LINK_HEADER.size + _LINK_V1.size
_MTX_LENGTH = struct.Struct("<I")
# A partner's address is a DNS name: anything longer is not an address.
_MAX_ADDRESS = 1024


class ReplicationParseError(ValueError):
    """A replication value that cannot be read; the other values of the DC still can."""


@dataclass(frozen=True, slots=True)
class Win32Result:
    name: str
    meaning: str


# The results `repadmin /showrepl` most often shows, and those that point at Kerberos.
# Keys are the unsigned 32-bit values; HRESULTs (top bit set) are listed that way too.
RESULTS: Mapping[int, Win32Result] = {
    0: Win32Result("ERROR_SUCCESS", "The operation completed successfully."),
    2: Win32Result(
        "ERROR_FILE_NOT_FOUND",
        "Samba's result when the source DC cannot be reached or its GUID name not resolved.",
    ),
    5: Win32Result("ERROR_ACCESS_DENIED", "Access is denied."),
    53: Win32Result("ERROR_BAD_NETPATH", "The network path was not found."),
    64: Win32Result("ERROR_NETNAME_DELETED", "The specified network name is no longer available."),
    1225: Win32Result(
        "ERROR_CONNECTION_REFUSED",
        "The remote computer refused the network connection: Samba's result when the source "
        "DC's RPC port is closed (its samba stopped).",
    ),
    1256: Win32Result("ERROR_HOST_DOWN", "The remote system is not available."),
    1311: Win32Result(
        "ERROR_NO_LOGON_SERVERS", "No logon servers (KDCs) are available to service the request."
    ),
    1326: Win32Result("ERROR_LOGON_FAILURE", "The user name or password is incorrect."),
    1355: Win32Result(
        "ERROR_NO_SUCH_DOMAIN", "The specified domain does not exist or could not be contacted."
    ),
    1396: Win32Result("ERROR_WRONG_TARGET_NAME", "The target account name (SPN) is incorrect."),
    1398: Win32Result(
        "ERROR_TIME_SKEW", "There is a time difference between the client and server."
    ),
    1722: Win32Result("RPC_S_SERVER_UNAVAILABLE", "The RPC server is unavailable."),
    1726: Win32Result("RPC_S_CALL_FAILED", "The remote procedure call failed."),
    1727: Win32Result(
        "RPC_S_CALL_FAILED_DNE", "The remote procedure call failed and did not execute."
    ),
    1753: Win32Result(
        "EPT_S_NOT_REGISTERED", "There are no more endpoints available from the endpoint mapper."
    ),
    1818: Win32Result("RPC_S_CALL_CANCELLED", "The remote procedure call was cancelled."),
    1908: Win32Result(
        "ERROR_DOMAIN_CONTROLLER_NOT_FOUND", "Could not find the domain controller for this domain."
    ),
    8240: Win32Result("ERROR_DS_NO_SUCH_OBJECT", "There is no such object on the server."),
    8418: Win32Result(
        "ERROR_DS_DRA_SCHEMA_MISMATCH", "The replication failed because of a schema mismatch."
    ),
    8444: Win32Result("ERROR_DS_DRA_CONNECTION_FAILED", "The replication connection failed."),
    8446: Win32Result(
        "ERROR_DS_DRA_OUT_OF_MEM", "The replication operation failed to allocate memory."
    ),
    8451: Win32Result("ERROR_DS_DRA_DB_ERROR", "The replication operation hit a database error."),
    8452: Win32Result(
        "ERROR_DS_DRA_NO_REPLICA",
        "The naming context is being removed or is not replicated from the specified server.",
    ),
    8453: Win32Result("ERROR_DS_DRA_ACCESS_DENIED", "Replication access was denied."),
    8456: Win32Result(
        "ERROR_DS_DRA_SOURCE_DISABLED", "The source server is rejecting replication requests."
    ),
    8457: Win32Result(
        "ERROR_DS_DRA_SINK_DISABLED", "The destination server is rejecting replication requests."
    ),
    8461: Win32Result("ERROR_DS_DRA_PREEMPTED", "The replication operation was preempted."),
    8463: Win32Result("ERROR_DS_DRA_SHUTDOWN", "The replication operation failed due to shutdown."),
    8477: Win32Result(
        "ERROR_DS_DRA_REPL_PENDING", "The replication request has been posted; waiting for reply."
    ),
    8524: Win32Result(
        "ERROR_DS_DNS_LOOKUP_FAILURE", "The DSA operation failed because of a DNS lookup failure."
    ),
    8545: Win32Result(
        "ERROR_DS_DRA_OBJ_NC_MISMATCH",
        "An update could not be applied: a recent cross-domain move has not reached both sides.",
    ),
    8589: Win32Result(
        "ERROR_DS_CANT_DERIVE_SPN_WITHOUT_SERVER_REF",
        "No SPN can be derived for the source: its server object has no serverReference.",
    ),
    8606: Win32Result(
        "ERROR_DS_INSUFFICIENT_ATTR_TO_CREATE_OBJECT",
        "Insufficient attributes to create an object: a lingering object (strict replication).",
    ),
    8614: Win32Result(
        "ERROR_DS_REPL_LIFETIME_EXCEEDED",
        "The last replication with this server is older than the tombstone lifetime.",
    ),
    0x8009030C: Win32Result("SEC_E_LOGON_DENIED", "The logon attempt failed."),
    0x80090322: Win32Result("SEC_E_WRONG_PRINCIPAL", "The target principal name is incorrect."),
    0x80090324: Win32Result(
        "SEC_E_TIME_SKEW", "The clocks on the client and server machines are skewed."
    ),
}
OTHER_RESULT = "other"


def result_name(code: int) -> str:
    """The symbolic name of a result (``ERROR_NO_LOGON_SERVERS``), or ``other``: a bounded set."""
    entry = RESULTS.get(code & 0xFFFFFFFF)
    return entry.name if entry else OTHER_RESULT


def signed_result(code: int) -> int:
    """The result as repadmin prints it: HRESULTs negative (-2146893022), Win32 codes as is."""
    code &= 0xFFFFFFFF
    return code - (1 << 32) if code & 0x80000000 else code


def dstime_to_unix(seconds: int) -> float | None:
    """DSTIME (seconds since 1601-01-01 UTC) to Unix seconds; 0 means never."""
    return float(seconds - EPOCH_1601) if seconds > 0 else None


@dataclass(frozen=True, slots=True)
class Neighbor:
    """One inbound partner of one naming context. Fields the source left out are None."""

    naming_context: str
    source_dsa_guid: uuid.UUID | None  # objectGUID of the source's NTDS Settings object
    source_dsa_dn: str | None  # its DN: given by the XML form only
    source_address: str | None  # "<guid>._msdcs.<forest root>"
    consecutive_failures: int | None
    last_success: float | None  # Unix seconds; None: never succeeded (or not given)
    last_attempt: float | None
    last_result: int | None  # unsigned 32-bit Win32 error or HRESULT; 0 = success


def _mtx_address(data: bytes, offset: int) -> str | None:
    if offset <= 0 or offset + _MTX_LENGTH.size > len(data):
        return None
    (length,) = _MTX_LENGTH.unpack_from(data, offset)
    start = offset + _MTX_LENGTH.size
    raw = data[start : start + min(length, _MAX_ADDRESS)]
    name = raw.split(b"\0", 1)[0].decode("utf-8", "replace").strip()
    return name or None


def parse_replica_link(data: bytes, naming_context: str) -> Neighbor:
    """One ``repsFrom`` value of the naming context ``naming_context``."""
    if len(data) < _LINK_FIXED:
        raise ReplicationParseError(
            f"REPLICA_LINK of {len(data)} bytes; version 1 needs at least {_LINK_FIXED}"
        )
    version, _padding = _LINK_HEADER.unpack_from(data)
    if version != 1:
        raise ReplicationParseError(f"REPLICA_LINK version {version}; only 1 is known")
    (
        _cb,
        failures,
        last_success,
        last_attempt,
        result,
        other_offset,
        _other_length,
        _flags,
        _schedule,
        _reserved,
        _usn_vector,
        dsa_guid,
        _invocation_id,
        _transport,
    ) = _LINK_V1.unpack_from(data, _LINK_HEADER.size)
    return Neighbor(
        naming_context=naming_context,
        source_dsa_guid=uuid.UUID(bytes_le=dsa_guid),
        source_dsa_dn=None,
        source_address=_mtx_address(data, other_offset),
        consecutive_failures=failures,
        last_success=dstime_to_unix(last_success),
        last_attempt=dstime_to_unix(last_attempt),
        last_result=result,
    )


# --- the XML form ------------------------------------------------------------------------------

# Element names in lower case, each with the name of the same field in the binary form
# (DS_REPL_NEIGHBORW_BLOB: "osz" offsets instead of "psz" pointers), accepted alike.
_XML_FIELDS = {
    "psznamingcontext": "naming_context",
    "osznamingcontext": "naming_context",
    "pszsourcedsadn": "source_dsa_dn",
    "oszsourcedsadn": "source_dsa_dn",
    "pszsourcedsaaddress": "source_address",
    "oszsourcedsaaddress": "source_address",
    "uuidsourcedsaobjguid": "source_dsa_guid",
    "ftimelastsyncsuccess": "last_success",
    "ftimelastsyncattempt": "last_attempt",
    "dwlastsyncresult": "last_result",
    "cnumconsecutivesyncfailures": "consecutive_failures",
}
# FILETIME 0 (1601-01-01T00:00:00Z) is how a never-successful sync is written.
_FILETIME_ZERO = -EPOCH_1601


def _xml_time(text: str) -> float | None:
    """``2026-11-29T10:00:00Z`` (XML dateTime, UTC) to Unix seconds; 1601-01-01 is never.

    Also read: fractions, an explicit offset, no zone (taken as UTC), and a bare integer as
    FILETIME ticks (100 ns since 1601), in case a DC writes the raw value. Unreadable: None.
    """
    if text.isascii() and text.isdigit():  # isdigit alone takes "²", which int() refuses
        ticks = int(text)
        return float(ticks / 10_000_000 - EPOCH_1601) if ticks > 0 else None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        seconds = moment.timestamp()
    except (OverflowError, OSError, ValueError):
        return None
    return seconds if seconds > _FILETIME_ZERO else None


def _xml_int(text: str, *, low: int, high: int) -> int | None:
    try:
        number = int(text, 16) if text[:2].lower() == "0x" else int(text, 10)
    except ValueError:
        return None
    return number if low <= number <= high else None


def _xml_guid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def _local_name(tag: object) -> str:
    name = tag if isinstance(tag, str) else ""
    return name.rsplit("}", 1)[-1].lower()


def parse_neighbor_xml(value: str | bytes) -> Neighbor:
    """One value of ``msDS-ReplAllInboundNeighbors`` (or ``msDS-NCReplInboundNeighbors``).

    Lenient where DCs differ: trailing NULs and whitespace, any root element name
    (DS_REPL_NEIGHBOR in the wild, DS_REPL_NEIGHBORW in MS-ADTS), unknown elements, missing
    ones (their fields are None). Needs the naming context and some name of the source DC.
    """
    if isinstance(value, bytes):
        document: str | bytes = value.rstrip(b"\0 \t\r\n")
    else:
        document = value.lstrip("\ufeff").rstrip("\0 \t\r\n")
    try:
        root = _safe_fromstring(document, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException, ValueError, TypeError) as exc:
        raise ReplicationParseError(f"not a DS_REPL_NEIGHBOR document: {exc}") from None
    texts: dict[str, str] = {}
    for child in root:
        field = _XML_FIELDS.get(_local_name(child.tag))
        if field is not None and field not in texts:
            texts[field] = (child.text or "").strip()
    naming_context = texts.get("naming_context") or ""
    dsa_dn = texts.get("source_dsa_dn") or None
    address = texts.get("source_address") or None
    guid = _xml_guid(texts["source_dsa_guid"]) if texts.get("source_dsa_guid") else None
    if not naming_context:
        raise ReplicationParseError("DS_REPL_NEIGHBOR without pszNamingContext")
    if dsa_dn is None and address is None and guid is None:
        raise ReplicationParseError("DS_REPL_NEIGHBOR names no source DC")
    failures = texts.get("consecutive_failures")
    result = texts.get("last_result")
    success = texts.get("last_success")
    attempt = texts.get("last_attempt")
    last_result = _xml_int(result, low=-(1 << 31), high=(1 << 32) - 1) if result else None
    return Neighbor(
        naming_context=naming_context,
        source_dsa_guid=guid,
        source_dsa_dn=dsa_dn,
        source_address=address,
        consecutive_failures=_xml_int(failures, low=0, high=(1 << 32) - 1) if failures else None,
        last_success=_xml_time(success) if success else None,
        last_attempt=_xml_time(attempt) if attempt else None,
        last_result=None if last_result is None else last_result & 0xFFFFFFFF,
    )
