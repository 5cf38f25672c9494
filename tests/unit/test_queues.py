"""Queue snapshot parsing: the three JSON shapes, PowerShell's date and enum spellings, LastError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.queues import (
    DELIVERY_TYPES,
    QUEUE_STATUSES,
    SCHEMA_VERSION,
    LastError,
    SnapshotError,
    classify_last_error,
    decode,
    parse_snapshot,
    parse_time,
)

DATA = Path(__file__).parent.parent / "testdata" / "queues"

KB_979174 = (
    '451 4.4.0 Primary target IP address responded with: "454 4.7.0 Temporary authentication '
    'failure." Attempted failover to alternate host, but that did not succeed. Either there are '
    "no alternate hosts, or delivery failed to all alternate hosts."
)
FAILOVER = (
    " Attempted failover to alternate host, but that did not succeed. Either there are no "
    "alternate hosts, or delivery failed to all alternate hosts. The last endpoint attempted was "
    "10.4.4.250:25"
)


def led(text: str, fqdn: str = "exch02.corp.example.com", ip: str = "10.0.0.22") -> str:
    """LastError as Exchange 2013 and later wrap it."""
    return f"[{{LRT=11/29/2026 9:43:58 AM}};{{LED={text}}};{{FQDN={fqdn}}};{{IP={ip}}}]"


CLASSIFIED = [
    # auth_temporary: the KB case, however it is wrapped
    (KB_979174, ("auth_temporary", "454", "4.7.0")),
    (
        led(KB_979174 + " The last endpoint attempted was 10.0.0.22:25"),
        ("auth_temporary", "454", "4.7.0"),
    ),
    ("454 4.7.0 Temporary authentication failure", ("auth_temporary", "454", "4.7.0")),
    (
        "451 4.4.395 Target host responded with error. -> 454 4.7.0 Temporary authentication failure",
        ("auth_temporary", "454", "4.7.0"),
    ),
    # Exchange Online's 4.4.317 would read as TLS, but the reply inside it says why
    (
        "451 4.4.317 Cannot connect to remote server [Message=454 4.7.0 Temporary authentication "
        "failure] [LastAttemptedServerName=exch02.corp.example.com] [LastAttemptedIP=10.0.0.22:25]",
        ("auth_temporary", "454", "4.7.0"),
    ),
    # auth_permanent: 5.7.x, outer or inner
    ("451 5.7.3 Cannot achieve Exchange Server authentication", ("auth_permanent", "451", "5.7.3")),
    (
        '451 4.4.0 Primary target IP address responded with: "530 5.7.1 Client was not '
        'authenticated."' + FAILOVER,
        ("auth_permanent", "530", "5.7.1"),
    ),
    ("550 5.7.1 Unable to relay", ("auth_permanent", "550", "5.7.1")),
    ("535 5.7.3 Authentication unsuccessful", ("auth_permanent", "535", "5.7.3")),
    # tls: the words win over codes that look like authentication
    (
        "454 4.7.5 The certificate specified in TlsCertificateName of the SendConnector could not "
        "be found.",
        ("tls", "454", "4.7.5"),
    ),
    ("454 4.7.0 TLS not available due to local problem", ("tls", "454", "4.7.0")),
    (
        "451 4.4.317 Cannot connect to remote server [Message=451 5.7.3 STARTTLS is required to "
        "send mail] [LastAttemptedServerName=mx.partner.example] [LastAttemptedIP=198.51.100.7:25]",
        ("tls", "451", "5.7.3"),
    ),
    (
        led(
            '451 4.4.0 Primary target IP address responded with: "421 4.4.2 TLS negotiation '
            'failed with error UnknownCredentials."' + FAILOVER
        ),
        ("tls", "421", "4.4.2"),
    ),
    ("451 4.4.317 Cannot connect to remote server", ("tls", "451", "4.4.317")),
    # connection
    ("421 4.4.2 Connection dropped due to SocketError", ("connection", "421", "4.4.2")),
    ("421 4.4.1 Connection timed out", ("connection", "421", "4.4.1")),
    (
        '441 4.4.1 Error encountered while communicating with primary target IP address: "Failed '
        'to connect. Winsock error code: 10060, Win32 error code: 10060."' + FAILOVER,
        ("connection", "441", "4.4.1"),
    ),
    (
        "451 4.4.397 Error communicating with target host. -> 421 4.4.2 Connection dropped due to "
        "SocketError",
        ("connection", "421", "4.4.2"),
    ),
    (
        led(
            '451 4.4.0 Primary target IP address responded with: "421 4.4.2 Connection dropped due to SocketError."'
            + FAILOVER
        ),
        ("connection", "421", "4.4.2"),
    ),
    (
        '451 4.4.0 Primary target IP address responded with: "421 4.2.1 Unable to connect."'
        + FAILOVER,
        ("connection", "421", "4.2.1"),
    ),
    (
        "Failed to connect. Winsock error code: 10061, Win32 error code: 10061.",
        ("connection", "", ""),
    ),
    # dns
    (
        "451 4.4.0 DNS query failed. The error was: DNS query failed with error ErrorRetry",
        ("dns", "451", "4.4.0"),
    ),
    (
        led(
            "451 4.4.0 DNS query failed. The error was: SMTPSEND.DNS.NonExistentDomain; nonexistent domain",
            fqdn="tailspintoys.example",
            ip="",
        ),
        ("dns", "451", "4.4.0"),
    ),
    ("554 5.4.4 SMTPSEND.DNS.NonExistentDomain; nonexistent domain", ("dns", "554", "5.4.4")),
    ("451 4.4.7 Message delayed", ("dns", "451", "4.4.7")),
    # other
    ("451 4.7.0 Temporary server error. Please try again later. PRX4", ("other", "451", "4.7.0")),
    ("452 4.3.1 Insufficient system resources", ("other", "452", "4.3.1")),
    ("421 4.3.2 Service not available, closing transmission channel", ("other", "421", "4.3.2")),
    ("A matching connector cannot be found to route the external recipient", ("other", "", "")),
]


@pytest.mark.parametrize(("text", "expected"), CLASSIFIED)
def test_last_error_classes(text: str, expected: tuple[str, str, str]) -> None:
    assert classify_last_error(text) == LastError(*expected)  # type: ignore[arg-type]


def test_every_class_is_in_the_table() -> None:
    from exporter.queues import ERROR_CLASSES

    assert {cls for _text, (cls, _code, _enhanced) in CLASSIFIED} == set(ERROR_CLASSES)


@pytest.mark.parametrize("empty", [None, "", "   ", led("")])
def test_no_error_is_no_class(empty: str | None) -> None:
    assert classify_last_error(empty) is None


def test_the_host_name_in_the_wrapper_is_not_error_text() -> None:
    # A send-connector smart host named tls-gw must not turn a DNS failure into a TLS one.
    text = led(
        "451 4.4.0 DNS query failed. The error was: DNS query failed with error ErrorRetry",
        fqdn="tls-gw.partner.example",
    )
    assert classify_last_error(text) == LastError("dns", "451", "4.4.0")


def test_numbers_that_are_not_reply_codes_are_ignored() -> None:
    # The endpoint 10.4.4.250:25 holds "250" and "4.4.250"; neither is a reply.
    assert classify_last_error("421 4.4.1 Connection timed out." + FAILOVER) == LastError(
        "connection", "421", "4.4.1"
    )


# ---------------------------------------------------------------------------------------------
# Shapes


def test_script_shape() -> None:
    snapshot = parse_snapshot((DATA / "script.json").read_bytes())
    assert snapshot.shape == "script"
    assert snapshot.server == "exch01.corp.example.com"
    assert snapshot.generated_at == pytest.approx(1795945453.512)
    by_name = {q.name: q for q in snapshot.queues}
    assert set(by_name) == {
        "7",
        "9",
        "12",
        "11",
        "13",
        "15",
        "3",
        "Shadow\\4",
        "Submission",
        "Unreachable",
        "Poison",
    }
    kb = by_name["7"]
    assert (kb.server, kb.delivery_type, kb.status, kb.message_count) == (
        "EXCH01",
        "SmtpRelayToDag",
        "Retry",
        42,
    )
    assert kb.next_hop_domain == "dag02"
    assert kb.error == LastError("auth_temporary", "454", "4.7.0")
    assert kb.retry_count == 6
    assert kb.last_retry_time == pytest.approx(1795945438.0)
    assert kb.next_retry_time == pytest.approx(1795945498.0)
    assert (kb.velocity, kb.incoming_rate, kb.outgoing_rate) == (-3.0, 2.4, 0.0)
    assert by_name["Shadow\\4"].delivery_type == "ShadowRedundancy"
    assert by_name["Poison"].message_count == 1
    assert by_name["15"].error is None and by_name["15"].last_retry_time is None
    assert sum(q.message_count for q in snapshot.queues) == 74


def test_windows_powershell_51_shape_utf16_numbers_and_ms_dates() -> None:
    raw = (DATA / "getqueue-ps51.json").read_bytes()
    assert raw.startswith(b"\xff\xfe")  # Out-File's UTF-16 LE, as 5.1 writes it
    snapshot = parse_snapshot(raw)
    assert (snapshot.shape, snapshot.server, snapshot.generated_at) == ("get-queue", "", None)
    by_name = {q.name: q for q in snapshot.queues}
    # Identity here is a serialised QueueIdentity object, not text.
    assert set(by_name) == {
        "4",
        "6",
        "Shadow\\2",
        "Submission",
        "Poison",
        "Unreachable",
        "8",
        "5",
        "10",
    }
    assert {q.server for q in snapshot.queues} == {"EXCH02"}
    assert by_name["6"].delivery_type == "SmtpRelayToServers"
    assert by_name["6"].status == "Retry"
    assert by_name["6"].error == LastError("auth_temporary", "454", "4.7.0")
    assert by_name["Shadow\\2"].delivery_type == "ShadowRedundancy"
    assert by_name["Unreachable"].delivery_type == "Unreachable"
    assert by_name["10"].status == "Suspended"
    assert by_name["5"].status == "Active"
    assert by_name["4"].last_retry_time == pytest.approx(1795945438.0)
    assert sum(q.message_count for q in snapshot.queues) == 37


def test_windows_powershell_51_single_queue_is_an_object() -> None:
    raw = (DATA / "getqueue-ps51-single.json").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    snapshot = parse_snapshot(raw)
    (queue,) = snapshot.queues
    assert (queue.server, queue.name, queue.delivery_type, queue.status) == (
        "EXCH04",
        "5",
        "SmtpRelayToDag",
        "Retry",
    )
    assert queue.error == LastError("auth_temporary", "454", "4.7.0")


def test_powershell_7_shape_strings_and_iso_dates_with_offsets() -> None:
    snapshot = parse_snapshot((DATA / "getqueue-ps7.json").read_bytes())
    by_name = {q.name: q for q in snapshot.queues}
    assert set(by_name) == {
        "21",
        "22",
        "25",
        "Shadow\\23",
        "24",
        "Submission",
        "Unreachable",
        "Poison",
    }
    assert by_name["21"].delivery_type == "SmtpRelayToDag"
    # 10:43:58.4471923+01:00 is 09:43:58.447 UTC; seven fraction digits as .NET writes them.
    assert by_name["21"].last_retry_time == pytest.approx(1795945438.4471923, abs=1e-3)
    assert by_name["22"].error == LastError("dns", "451", "4.4.0")
    assert by_name["25"].error == LastError("tls", "421", "4.4.2")


def queue_in(shape: str) -> dict[str, object]:
    error = led(KB_979174)
    if shape == "script":
        return {
            "Identity": "EXCH01\\7",
            "DeliveryType": {"name": "SmtpRelayToDag", "value": 14},
            "Status": {"name": "Retry", "value": 3},
            "MessageCount": 42,
            "NextHopDomain": "dag02",
            "LastError": error,
            "RetryCount": 6,
            "LastRetryTime": "2026-11-29T09:43:58.000Z",
            "NextRetryTime": None,
        }
    if shape == "ps51":
        return {
            "Identity": {"Type": 1, "RowId": 7, "NextHopDomain": "dag02", "Server": "EXCH01"},
            "DeliveryType": 14,
            "Status": 3,
            "MessageCount": 42,
            "NextHopDomain": "dag02",
            "LastError": error,
            "RetryCount": 6,
            "LastRetryTime": "/Date(1795945438000)/",
            "NextRetryTime": None,
        }
    return {
        "identity": "EXCH01\\7",  # property names are case-insensitive in PowerShell
        "deliveryType": "SmtpRelayToDag",
        "status": "Retry",
        "messageCount": 42,
        "nextHopDomain": "dag02",
        "lastError": error,
        "retryCount": 6,
        "lastRetryTime": "2026-11-29T10:43:58+01:00",
        "nextRetryTime": None,
    }


def test_the_same_queue_reads_the_same_in_every_shape() -> None:
    document = {
        "schema_version": 1,
        "server": "exch01",
        "generated_at": "2026-11-29T09:44:13Z",
        "queues": [queue_in("script")],
    }
    script = parse_snapshot(json.dumps(document).encode()).queues
    ps51 = parse_snapshot(json.dumps([queue_in("ps51")]).encode()).queues
    ps7 = parse_snapshot(json.dumps(queue_in("ps7")).encode()).queues
    assert script == ps51 == ps7
    assert script[0].delivery_type == "SmtpRelayToDag"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (14, "SmtpRelayToDag"),
        ("14", "SmtpRelayToDag"),
        ({"value": 14, "DisplayHint": 0}, "SmtpRelayToDag"),
        ({"name": "SmtpRelayToDag", "value": 99}, "SmtpRelayToDag"),  # the name is Exchange's own
        ({"name": None, "value": 17}, "SmtpRelayToServers"),
        (18, "18"),  # a later Exchange's value: kept, as a number
        (100000, "unknown"),
        (-1, "unknown"),
        (True, "unknown"),
        ("Smtp Relay; DROP", "unknown"),
        (None, "unknown"),
    ],
)
def test_delivery_type_spellings(value: object, expected: str) -> None:
    record = {"Identity": "EXCH01\\7", "MessageCount": 0, "DeliveryType": value}
    assert parse_snapshot(json.dumps(record).encode()).queues[0].delivery_type == expected


def test_enum_tables() -> None:
    # Status numbers as protocols.md lists them; DeliveryType as Microsoft.Exchange.Data declares it.
    assert QUEUE_STATUSES.index("Retry") == 3 and QUEUE_STATUSES.index("Throttled") == 6
    assert len(DELIVERY_TYPES) == 18
    assert DELIVERY_TYPES.index("DnsConnectorDelivery") == 1
    assert DELIVERY_TYPES.index("Unreachable") == 9
    assert DELIVERY_TYPES.index("ShadowRedundancy") == 10
    assert DELIVERY_TYPES.index("SmtpRelayToServers") == 17


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/Date(1795945438000)/", 1795945438.0),
        ("/Date(1795945438000+0100)/", 1795945438.0),
        (
            {
                "value": "/Date(1795945438000)/",
                "DisplayHint": 2,
                "DateTime": "Sunday, 29 November 2026 10:43:58",
            },
            1795945438.0,
        ),
        ("2026-11-29T09:43:58Z", 1795945438.0),
        ("2026-11-29T09:43:58.000Z", 1795945438.0),
        ("2026-11-29T10:43:58.1234567+01:00", 1795945438.1234567),
        ("2026-11-29T09:43:58", 1795945438.0),  # no offset: taken as UTC
        ("yesterday", None),
        ("", None),
        (None, None),
        (1795945438, None),
    ],
)
def test_times(value: object, expected: float | None) -> None:
    got = parse_time(value)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-3)


def test_ansi_text_is_read_as_windows_1252() -> None:
    # Set-Content in Windows PowerShell 5.1 writes the ANSI code page, not UTF-8.
    raw = '[{"Identity": "EXCH01\\\\7", "MessageCount": 1, "LastError": "Zustellung fehlgeschlagen: Empf\xe4nger"}]'.encode(
        "cp1252"
    )
    assert parse_snapshot(raw).queues[0].last_error.endswith("Empfänger")
    assert decode("é".encode("utf-16")) == "é"


def test_an_array_wrapped_with_its_count_is_still_the_array() -> None:
    document = {
        "schema_version": 1,
        "server": "exch01",
        "generated_at": "2026-11-29T09:44:13Z",
        "queues": {"value": [queue_in("script")], "Count": 1},
    }
    assert len(parse_snapshot(json.dumps(document).encode()).queues) == 1


def script_document(**changes: object) -> bytes:
    document: dict[str, object] = {
        "schema_version": SCHEMA_VERSION,
        "server": "exch01",
        "generated_at": "2026-11-29T09:44:13Z",
        "queues": [queue_in("script")],
    }
    document.update(changes)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ((DATA / "script.json").read_bytes()[:2000], "invalid_json"),  # half-written
        (b"", "invalid_json"),
        (b"\xef\xbb\xbf  \r\n", "invalid_json"),
        (b"[" * 100_000, "invalid_json"),
        (b'"queues"', "invalid_shape"),
        (b"[1, 2]", "invalid_shape"),
        (b'[{"Identity": "EXCH01\\\\7"}]', "invalid_shape"),  # no MessageCount
        (b'[{"Identity": "EXCH01\\\\7", "MessageCount": -1}]', "invalid_shape"),
        (b'[{"MessageCount": 3}]', "invalid_shape"),  # no Identity
        (script_document(schema_version=2), "invalid_shape"),
        (script_document(schema_version=True), "invalid_shape"),
        (script_document(generated_at="29/11/2026 09:44"), "invalid_shape"),
        (script_document(queues="none"), "invalid_shape"),
    ],
)
def test_files_that_are_not_snapshots(raw: bytes, reason: str) -> None:
    with pytest.raises(SnapshotError) as caught:
        parse_snapshot(raw)
    assert caught.value.reason == reason
