"""Replication values as domain controllers store them, built from the documented layouts.

REPLICA_LINK version 1 as Samba encodes ``repsFrom`` (tests/../shared/reference/lab.md, MS-DRSR
5.167): dwVersion, 4 bytes of padding, then V1, little-endian, no alignment gaps; the partner's
address (MTX_ADDR: a uint32 length counting the NUL, then the name) at cbOtherDrsOffset, counted
from the first byte of the value. DS_REPL_NEIGHBOR XML as a Windows DC returns it in the rootDSE's
``msDS-ReplAllInboundNeighbors``: one document per neighbor, tab-indented, ending in a newline.
Shared by the unit tests and bench/replication.py.
"""

from __future__ import annotations

import struct
import uuid
from datetime import UTC, datetime

EPOCH_1601 = 11_644_473_600
# The V1 fields up to and including uuidTransportObj: 200 bytes after the 8-byte header.
V1_FIXED_END = 208
# Windows' V1 has dwReserved1 and cbPASDataOffset after uuidTransportObj; Samba's does not.
WINDOWS_EXTRA = 8


def dstime(unix: float | None) -> int:
    """Unix seconds to DSTIME (seconds since 1601); None (never) is 0."""
    return 0 if unix is None else int(unix) + EPOCH_1601


def replica_link(
    dsa_guid: uuid.UUID,
    *,
    failures: int = 0,
    last_success: float | None = None,
    last_attempt: float | None = None,
    result: int = 0,
    address: str | None = None,
    invocation_id: uuid.UUID | None = None,
    windows_tail: bool = False,
    version: int = 1,
) -> bytes:
    """One ``repsFrom`` value; ``address`` None leaves cbOtherDrsOffset 0 (no MTX_ADDR)."""
    fixed = V1_FIXED_END + (WINDOWS_EXTRA if windows_tail else 0)
    other = b""
    if address is not None:
        name = address.encode("ascii") + b"\0"
        other = struct.pack("<I", len(name)) + name
    value = bytearray(fixed)
    struct.pack_into("<II", value, 0, version, 0)
    struct.pack_into(
        "<IIQQIIII",
        value,
        8,
        fixed - 8 + len(other),  # cb
        failures,
        dstime(last_success),
        dstime(last_attempt),
        result,
        fixed if address is not None else 0,  # cbOtherDrsOffset
        len(other),  # cbOtherDrs
        0x70,  # ulReplicaFlags: WRITEABLE | SYNC_ON_STARTUP | DO_SCHEDULED_SYNCS
    )
    value[48:132] = b"\x11" * 84  # rtSchedule: every 15-minute slot of the week
    struct.pack_into("<QQQ", value, 136, 4711, 0, 4711)  # USN_VECTOR
    value[160:176] = dsa_guid.bytes_le  # uuidDsaObj, MS-DTYP layout
    value[176:192] = (invocation_id or uuid.UUID(int=dsa_guid.int ^ 1)).bytes_le
    return bytes(value) + other


def xml_time(unix: float | None) -> str:
    """XML dateTime in UTC, whole seconds; never is FILETIME 0 (1601-01-01T00:00:00Z)."""
    if unix is None:
        return "1601-01-01T00:00:00Z"
    return datetime.fromtimestamp(int(unix), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def neighbor_xml(
    naming_context: str,
    source_dsa_dn: str,
    dsa_guid: uuid.UUID,
    *,
    forest: str = "corp.example.test",
    failures: int = 0,
    last_success: float | None = None,
    last_attempt: float | None = None,
    result: int = 0,
) -> str:
    """One ``msDS-ReplAllInboundNeighbors`` value, every DS_REPL_NEIGHBORW field in order."""
    fields = [
        ("pszNamingContext", naming_context),
        ("pszSourceDsaDN", source_dsa_dn),
        ("pszSourceDsaAddress", f"{dsa_guid}._msdcs.{forest}"),
        ("pszAsyncIntersiteTransportDN", ""),
        ("dwReplicaFlags", "1879048304"),
        ("dwReserved", "0"),
        ("uuidNamingContextObjGuid", str(uuid.UUID(int=dsa_guid.int ^ 2))),
        ("uuidSourceDsaObjGuid", str(dsa_guid)),
        ("uuidSourceDsaInvocationID", str(uuid.UUID(int=dsa_guid.int ^ 1))),
        ("uuidAsyncIntersiteTransportObjGuid", "00000000-0000-0000-0000-000000000000"),
        ("usnLastObjChangeSynced", "4711"),
        ("usnAttributeFilter", "4711"),
        ("ftimeLastSyncSuccess", xml_time(last_success)),
        ("ftimeLastSyncAttempt", xml_time(last_attempt)),
        ("dwLastSyncResult", str(result)),
        ("cNumConsecutiveSyncFailures", str(failures)),
    ]
    body = "".join(f"\t<{name}>{text}</{name}>\n" for name, text in fields)
    return f"<DS_REPL_NEIGHBOR>\n{body}</DS_REPL_NEIGHBOR>\n"
