"""NTP client messages (RFC 5905) on top of ntplib's packet encoding.

ntplib trusts the origin timestamp the server echoes back; we keep our own transmit time and
send a nonce in the transmit field instead, so a reply counts only if it echoes that nonce.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import ntplib

__all__ = ["NtpReading", "NtpReplyError", "build_request", "parse_reply"]

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01
PACKET_SIZE = 48
_ORIGIN = slice(24, 32)
_TRANSMIT = slice(40, 48)
_MODE_SERVER = 4
_KISS_CODE_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


class NtpReplyError(ValueError):
    """A datagram that is not a usable answer to our request; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class NtpReading:
    """One exchange: the server's clock relative to ours, and what the server says of itself."""

    offset: float  # server clock minus our clock, seconds
    delay: float  # round trip minus the server's processing time, seconds
    precision: float  # the server's clock resolution, seconds
    stratum: int
    leap: int
    version: int

    @property
    def uncertainty(self) -> float:
        return self.delay / 2 + self.precision


def _request_header(version: int) -> bytes:
    header: bytes = ntplib.NTPPacket(version=version, mode=3).to_data()[:40]
    return header


_REQUEST_HEADER = _request_header(4)


def build_request(nonce: bytes | int) -> bytes:
    """A version 4 client request whose transmit timestamp is the 8-byte ``nonce``.

    The first 40 bytes never change, so ntplib encodes them once.
    """
    if isinstance(nonce, int):
        nonce = struct.pack("!Q", nonce & 0xFFFF_FFFF_FFFF_FFFF)
    if len(nonce) != 8:
        raise ValueError("an NTP nonce is 8 bytes")
    return _REQUEST_HEADER + nonce


def parse_reply(data: bytes, request: bytes, sent_at: float, received_at: float) -> NtpReading:
    """Decode a server reply to ``request``; raise :class:`NtpReplyError` when it is not usable.

    ``sent_at`` and ``received_at`` are our Unix times for T1 and T4.
    """
    if len(data) < PACKET_SIZE:
        raise NtpReplyError("protocol_error", f"reply of {len(data)} bytes, expected at least 48")
    if data[_ORIGIN] != request[_TRANSMIT]:
        raise NtpReplyError("protocol_error", "reply does not echo our transmit timestamp")
    stats = ntplib.NTPStats()
    stats.from_data(data)
    if stats.mode != _MODE_SERVER:
        raise NtpReplyError("protocol_error", f"reply in mode {stats.mode}, expected 4 (server)")
    if stats.stratum == 0 and _is_kiss_code(data[12:16]):
        code = data[12:16].decode("ascii")
        raise NtpReplyError("kiss_of_death", f"server sent kiss-o'-death {code}")
    if stats.tx_timestamp == 0 or stats.recv_timestamp == 0:
        raise NtpReplyError("protocol_error", "reply lacks its receive or transmit timestamp")
    t2 = stats.recv_timestamp - NTP_EPOCH_OFFSET
    t3 = stats.tx_timestamp - NTP_EPOCH_OFFSET
    round_trip = received_at - sent_at
    # A server cannot spend longer on a request than the whole exchange took, nor answer
    # before it received it: such timestamps would read as a precise but wrong offset.
    if not 0 <= t3 - t2 <= max(round_trip, 0.0):
        raise NtpReplyError("protocol_error", f"server times inconsistent: T3-T2 = {t3 - t2:.6f} s")
    offset = ((t2 - sent_at) + (t3 - received_at)) / 2
    delay = max(0.0, round_trip - (t3 - t2))
    return NtpReading(
        offset=offset,
        delay=delay,
        precision=2.0**stats.precision,
        stratum=stats.stratum,
        leap=stats.leap,
        version=stats.version,
    )


def _is_kiss_code(ref_id: bytes) -> bool:
    # RFC 5905 §7.4: with stratum 0 the reference id holds a four-letter ASCII code. An
    # unsynchronised Windows host also answers stratum 0, but with a zero reference id.
    stripped = ref_id.rstrip(b"\0")
    return bool(stripped) and all(c in _KISS_CODE_CHARS for c in stripped)
