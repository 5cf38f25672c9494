"""The NTP wire format: our requests, and decoding of any reply a peer may send."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.protocols.ntp import NtpReplyError, build_request, parse_reply
from tests.ntp_peer import reply_to

NONCE = 0x1234_5678_9ABC_DEF0


def test_request_is_a_client_packet_carrying_the_nonce() -> None:
    request = build_request(NONCE)
    assert len(request) == 48
    assert request[0] & 0x07 == 3  # client mode
    assert (request[0] >> 3) & 0x07 == 4  # version 4
    assert struct.unpack("!Q", request[40:48])[0] == NONCE


@pytest.mark.parametrize("offset", [0.0, 420.0, -3600.5])
def test_offset_of_a_good_reply(offset: float) -> None:
    import time

    request = build_request(NONCE)
    sent = time.time()
    reply = reply_to(request, offset, "good")
    assert reply is not None
    reading = parse_reply(reply, request, sent, time.time())
    assert reading.offset == pytest.approx(offset, abs=0.01)
    assert reading.stratum == 2
    assert reading.leap == 0
    assert reading.precision == 2.0**-20
    assert 0 <= reading.delay < 0.01
    assert reading.uncertainty == pytest.approx(reading.delay / 2 + 2.0**-20)


def test_unsynchronised_windows_reply_still_reads_the_clock() -> None:
    request = build_request(NONCE)
    reply = reply_to(request, 5.0, "unsynchronised")
    assert reply is not None
    reading = parse_reply(reply, request, 0.0, 0.0)
    assert (reading.leap, reading.stratum) == (3, 0)


@pytest.mark.parametrize(
    ("behaviour", "reason", "detail"),
    [
        ("short", "protocol_error", "reply of 21 bytes"),
        ("wrong_mode", "protocol_error", "mode 3"),
        ("wrong_origin", "protocol_error", "does not echo"),
        ("kiss", "kiss_of_death", "RATE"),
    ],
)
def test_unusable_replies(behaviour: str, reason: str, detail: str) -> None:
    request = build_request(NONCE)
    reply = reply_to(request, 0.0, behaviour)  # type: ignore[arg-type]
    assert reply is not None
    with pytest.raises(NtpReplyError, match=detail) as caught:
        parse_reply(reply, request, 0.0, 0.0)
    assert caught.value.reason == reason


def test_zero_transmit_timestamp_is_rejected() -> None:
    request = build_request(NONCE)
    reply = reply_to(request, 0.0, "good")
    assert reply is not None
    with pytest.raises(NtpReplyError, match="lacks its receive or transmit timestamp"):
        parse_reply(reply[:40] + bytes(8), request, 0.0, 0.0)


@given(st.binary(max_size=200))
def test_any_bytes_either_decode_or_raise_reply_error(data: bytes) -> None:
    request = build_request(NONCE)
    try:
        reading = parse_reply(data, request, 1.7e9, 1.7e9)
    except NtpReplyError as exc:
        assert exc.reason in {"protocol_error", "kiss_of_death"}
    else:
        assert reading.delay >= 0
        assert reading.leap in range(4)


@given(body=st.binary(min_size=48, max_size=48), sent=st.floats(0, 4e9), rtt=st.floats(0, 10))
def test_any_reply_echoing_the_nonce_decodes_without_crashing(
    body: bytes, sent: float, rtt: float
) -> None:
    request = build_request(NONCE)
    data = bytes([body[0] & 0xF8 | 4]) + body[1:24] + request[40:48] + body[32:]
    try:
        reading = parse_reply(data, request, sent, sent + rtt)
    except NtpReplyError as exc:
        assert exc.reason in {"protocol_error", "kiss_of_death"}
    else:
        # An accepted reply can never claim more precision than the exchange allows.
        assert 0 <= reading.delay <= rtt + 1e-9
        assert reading.offset == reading.offset  # never NaN
