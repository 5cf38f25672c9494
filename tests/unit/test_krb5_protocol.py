"""Kerberos messages: our requests decode as RFC 4120 says, and no reply bytes crash the decoder."""

from __future__ import annotations

import contextlib
import struct
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyasn1.codec.der import decoder

from exporter.protocols import krb5
from tests.kdc_peer import krb_error, reply_for


def test_as_req_carries_realm_client_and_krbtgt() -> None:
    request = krb5.build_as_req("CORP.EXAMPLE.TEST", "probe-1", 0x1234, (18, 23))
    assert request[0] == 0x6A  # [APPLICATION 10]
    message, rest = decoder.decode(request, asn1Spec=krb5.AsReq())
    assert rest == b""
    body = message["req-body"]
    assert int(message["pvno"]) == 5
    assert int(message["msg-type"]) == 10
    assert str(body["realm"]) == "CORP.EXAMPLE.TEST"
    assert [str(p) for p in body["cname"]["name-string"]] == ["probe-1"]
    assert int(body["cname"]["name-type"]) == 1
    assert [str(p) for p in body["sname"]["name-string"]] == ["krbtgt", "CORP.EXAMPLE.TEST"]
    assert int(body["sname"]["name-type"]) == 2
    assert [int(e) for e in body["etype"]] == [18, 23]
    assert int(body["nonce"]) == 0x1234
    assert not message["padata"].isValue  # no pre-authentication, no credentials


def test_kpasswd_request_framing() -> None:
    request = krb5.build_kpasswd_request(b"junk", b"x")
    assert struct.unpack("!HHH", request[:6]) == (len(request), 0xFF80, 4)
    assert request[6:] == b"junkx"


def test_tcp_framing_prefixes_the_length() -> None:
    assert krb5.frame_tcp(b"abc") == b"\x00\x00\x00\x03abc"


@pytest.mark.parametrize("offset", [0.0, 420.0, -90.5])
def test_krb_error_reads_the_kdc_clock(offset: float) -> None:
    reply = krb5.parse_kdc_reply(krb_error(6, offset))
    assert reply.error_code == 6
    assert reply.error_name == "KDC_ERR_C_PRINCIPAL_UNKNOWN"
    assert reply.has_microseconds
    assert reply.server_time == pytest.approx(time.time() + offset, abs=0.05)


def test_krb_error_without_susec_reads_whole_seconds() -> None:
    reply = krb5.parse_kdc_reply(krb_error(6, susec=False))
    assert not reply.has_microseconds
    assert reply.server_time is not None
    assert reply.server_time == int(reply.server_time)


def test_kpasswd_reply_unwraps_the_krb_error() -> None:
    raw = reply_for("kpasswd", 0.0)
    assert raw is not None
    reply = krb5.parse_kpasswd_reply(raw)
    assert reply.error_code == 2


def test_bare_krb_error_on_kpasswd_counts_as_an_answer() -> None:
    assert krb5.parse_kpasswd_reply(krb_error(60)).error_code == 60


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (reply_for("no_stime", 0.0), "undecodable KrbError"),
        (reply_for("truncated", 0.0), "undecodable KrbError"),
        (b"\x7e" + b"\x00" * 70_000, "undecodable KrbError"),
        (b"", "not a KRB-ERROR or AS-REP"),
        (b"\x30\x00", "not a KRB-ERROR or AS-REP"),
        (krb_error(6) + b"tail", "bytes after the KrbError"),
    ],
)
def test_broken_kdc_replies(data: bytes, message: str) -> None:
    with pytest.raises(krb5.KerberosReplyError, match=message):
        krb5.parse_kdc_reply(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x05", "expected at least 6"),
        (struct.pack("!HHH", 99, 1, 0), "says 99 bytes, got 6"),
        (struct.pack("!HHH", 6, 7, 0), "version 0x7"),
        (struct.pack("!HHH", 8, 1, 2) + b"\x6f\x00", "AP-REP to a junk request"),
    ],
)
def test_broken_kpasswd_replies(data: bytes, message: str) -> None:
    with pytest.raises(krb5.KerberosReplyError, match=message):
        krb5.parse_kpasswd_reply(data)


@given(st.binary(max_size=400))
def test_any_bytes_decode_or_raise_reply_error(data: bytes) -> None:
    for parse in (krb5.parse_kdc_reply, krb5.parse_kpasswd_reply):
        with contextlib.suppress(krb5.KerberosReplyError):
            parse(data)


@given(st.data())
def test_mutated_krb_errors_decode_or_raise_reply_error(data: st.DataObject) -> None:
    """Flip bytes of a real-shaped reply: deep inside the DER, where random bytes never reach."""
    # A fixed moment: the reply's length must not change between examples (susec varies).
    original = bytearray(krb_error(6, at=1_795_950_000.123456))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(original) - 1))
        original[index] = data.draw(st.integers(0, 255))
    try:
        reply = krb5.parse_kdc_reply(bytes(original))
    except krb5.KerberosReplyError:
        return
    assert reply.server_time is None or reply.server_time > 0
