"""SMTP protocol-log lines: the reference parser, the block counter, and that both agree."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.protocols import smtp_log
from exporter.protocols.smtp_log import (
    BOM,
    DEFAULT_LAYOUT,
    MAX_CODE_SERIES,
    OTHER,
    Kind,
    Layout,
    Line,
    Tally,
    count_lines,
    parse_line,
)

TESTDATA = Path(__file__).parent.parent / "testdata" / "protocol_logs"
LIMIT = 16384
PREFIX = b"2026-11-29T09:44:12.041Z,Intra-Organization SMTP Send Connector,08DE2F6A1B3C4D01,12,10.0.1.21:50213,10.0.1.22:25,"
SEND, RECEIVE = b"<", b">"


def line(event: str, data: str = "", context: str = "") -> bytes:
    return PREFIX + f"{event},{data},{context}".encode()


def reference(block: bytes, layout: Layout, counted: bytes, limit: int = LIMIT) -> Tally:
    """Every line through parse_line, in order: what count_lines must equal."""
    tally = Tally()
    for raw in block.split(b"\n")[:-1]:
        parsed = parse_line(raw, layout, counted, limit)
        if parsed.layout is not None:
            layout = parsed.layout
        tally.add(parsed)
    return tally


def counted(
    block: bytes, layout: Layout = DEFAULT_LAYOUT, event: bytes = SEND, limit: int = LIMIT
) -> Tally:
    tally = Tally()
    count_lines(block, 0, len(block), layout, event, tally, limit)
    return tally


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            line("<", "454 4.7.0 Temporary authentication failure"),
            Line(Kind.RESPONSE, "<", "454", "4.7.0"),
        ),
        (line("<", "250 2.0.0 OK"), Line(Kind.RESPONSE, "<", "250", "2.0.0")),
        # The banner holds commas, so Exchange quotes it.
        (
            line(
                "<",
                '"220 EXCH02.corp.example.com Microsoft ESMTP MAIL Service ready at Sun, 29 Nov 2026 09:44:13 +0000"',
            ),
            Line(Kind.RESPONSE, "<", "220", ""),
        ),
        # A multi-line EHLO answer is one log line: one response, no enhanced code.
        (
            line(
                "<",
                "250-EXCH02.corp.example.com Hello [10.0.1.21] SIZE 37748736 PIPELINING X-EXPS GSSAPI NTLM",
            ),
            Line(Kind.RESPONSE, "<", "250", ""),
        ),
        (
            line(
                "<", '"451 4.7.1 Greylisted, see ""https://partner.example/greylist"" for details"'
            ),
            Line(Kind.RESPONSE, "<", "451", "4.7.1"),
        ),
        (
            line("<", '"250 2.6.0 <a@b> [InternalId=1, Hostname=EXCH02] Queued mail for delivery"'),
            Line(Kind.RESPONSE, "<", "250", "2.6.0"),
        ),
        (line("<", "550 5.7.1"), Line(Kind.RESPONSE, "<", "550", "5.7.1")),
        (line("<", "250-2.1.5 Recipient OK"), Line(Kind.RESPONSE, "<", "250", "2.1.5")),
        (line("<", "221 Bye"), Line(Kind.RESPONSE, "<", "221", "")),
        (line("<", "235"), Line(Kind.RESPONSE, "<", "235", "")),
        # Codes that are not: other, never a new series per oddity.
        (line("<", "2500 too long"), Line(Kind.RESPONSE, "<", OTHER, "")),
        (line("<", "25 short"), Line(Kind.RESPONSE, "<", OTHER, "")),
        (line("<", ""), Line(Kind.RESPONSE, "<", OTHER, "")),
        (line("<", "Hello"), Line(Kind.RESPONSE, "<", OTHER, "")),
        (line("<", '"250"" quoted"'), Line(Kind.RESPONSE, "<", OTHER, "")),
        (line("<", '"250x, y"'), Line(Kind.RESPONSE, "<", OTHER, "")),
        (line("<", '"250"'), Line(Kind.RESPONSE, "<", "250", "")),
        (line("<", '"454 4.7.0x, y"'), Line(Kind.RESPONSE, "<", "454", "")),
        (line("<", '"454 4.7.0"'), Line(Kind.RESPONSE, "<", "454", "4.7.0")),
        # Enhanced codes outside RFC 3463's shape are left out, the code stays.
        (line("<", "454 4.7.0000 x"), Line(Kind.RESPONSE, "<", "454", "")),
        (line("<", "454 3.7.0 x"), Line(Kind.RESPONSE, "<", "454", "")),
        (line("<", "454 4.7.0.1"), Line(Kind.RESPONSE, "<", "454", "")),
        (line("<", "454 4.7.0x"), Line(Kind.RESPONSE, "<", "454", "")),
        (line("<", "454  4.7.0"), Line(Kind.RESPONSE, "<", "454", "")),
        (line("<", "454 4.999.999 x"), Line(Kind.RESPONSE, "<", "454", "4.999.999")),
        # Our own commands and other events are read, not counted.
        (line(">", "EHLO EXCH01.corp.example.com"), Line(Kind.EVENT, ">")),
        (line(">", "250 2.0.0 looks like a code"), Line(Kind.EVENT, ">")),
        (line("*", "", "attempting to connect"), Line(Kind.EVENT, "*")),
        (line("+"), Line(Kind.EVENT, "+")),
        (line("-", "", "Local"), Line(Kind.EVENT, "-")),
        # CRLF; a stray CR inside is an ordinary byte.
        (
            line("<", "454 4.7.0 Temporary authentication failure") + b"\r",
            Line(Kind.RESPONSE, "<", "454", "4.7.0"),
        ),
        (line("<", "454 4.7.0", "a\rb"), Line(Kind.RESPONSE, "<", "454", "4.7.0")),
        (line("<", "454\r4.7.0"), Line(Kind.RESPONSE, "<", OTHER, "")),
        # Junk bytes decode to something; the codes are ASCII either way.
        (PREFIX + b"<,454 4.7.0 \xff\xfe\x00,\x80", Line(Kind.RESPONSE, "<", "454", "4.7.0")),
        # Malformed: fields, quoting, events.
        (line("<", "451 4.4.0 Queue delay, message deferred"), Line(Kind.MALFORMED)),
        (PREFIX + b"<,250 2.0.0 OK", Line(Kind.MALFORMED)),  # a field short
        (line("<", '"250 2.0.0 OK'), Line(Kind.MALFORMED)),  # quote never closed
        (line("<", '"250 2.0.0" OK'), Line(Kind.MALFORMED)),  # text after the closing quote
        (line("<<", "250 2.0.0 OK"), Line(Kind.MALFORMED)),
        (line("x", "250 2.0.0 OK"), Line(Kind.MALFORMED)),
        (line("", "250 2.0.0 OK"), Line(Kind.MALFORMED)),
        (b"\x00\x01\x02 binary junk", Line(Kind.MALFORMED)),
        # Quotes inside an unquoted field are literal in CSV.
        (line("<", '250 2.0.0 "OK"'), Line(Kind.RESPONSE, "<", "250", "2.0.0")),
        # A quoted field before the event moves no column, commas and all.
        (
            b'2026-11-29T09:44:12.041Z,"Partner, Inc",08DE01,12,10.0.1.21:50213,10.0.1.22:25,<,250 2.0.0 OK,',
            Line(Kind.RESPONSE, "<", "250", "2.0.0"),
        ),
        (
            b'2026-11-29T09:44:12.041Z,"Partner, Inc",08DE01,12,10.0.1.21:50213,<,250 2.0.0 OK,',
            Line(Kind.MALFORMED),
        ),
        # A quoted event is still an event.
        (PREFIX + b'"<",454 4.7.0,', Line(Kind.RESPONSE, "<", "454", "4.7.0")),
        (b"", Line(Kind.BLANK)),
        (b"\r", Line(Kind.BLANK)),
        (b"#Software: Microsoft Exchange Server", Line(Kind.HEADER)),
        # A header is never data, however much it looks like a row.
        (b"#Note: a,b,c,d,e,f,<,250 2.0.0 OK,", Line(Kind.HEADER)),
    ],
)
def test_reference_parser_on_send_lines(raw: bytes, expected: Line) -> None:
    assert parse_line(raw, DEFAULT_LAYOUT, SEND, LIMIT) == expected
    # The block counter agrees: as a block's first line (no newline before it), inside a
    # block read by the fast pattern, and inside one the slow pattern reads line by line.
    for block in (raw + b"\n", b"\n" + raw + b"\n", b"\n" + raw + b"\nnot a log line\n"):
        assert counted(block) == reference(block, DEFAULT_LAYOUT, SEND)


def test_receive_logs_count_our_answers_not_the_clients_commands() -> None:
    assert parse_line(
        line(">", "454 4.7.0 Temporary authentication failure"), DEFAULT_LAYOUT, RECEIVE, LIMIT
    ) == Line(Kind.RESPONSE, ">", "454", "4.7.0")
    assert parse_line(line("<", "EHLO exch01"), DEFAULT_LAYOUT, RECEIVE, LIMIT) == Line(
        Kind.EVENT, "<"
    )


def test_overlong_lines_are_malformed_and_skipped() -> None:
    long = line("<", "250 2.0.0 " + "x" * 300)
    assert parse_line(long, DEFAULT_LAYOUT, SEND, 256) == Line(Kind.MALFORMED)
    block = line("<", "454 4.7.0") + b"\n" + long + b"\n" + line("<", "250 2.0.0") + b"\n"
    tally = counted(block, limit=256)
    assert tally == Tally({("454", "4.7.0"): 1, ("250", "2.0.0"): 1}, lines=3, malformed=1)
    # Exactly at the limit is fine; the CR of CRLF counts, the LF does not.
    exact = line("<", "250 2.0.0 ")
    exact += b"x" * (256 - len(exact))
    assert counted(exact + b"\n", limit=256).malformed == 0
    assert counted(exact + b"\r\n", limit=256).malformed == 1


def test_fields_header_sets_the_columns() -> None:
    assert (
        Layout.from_header(
            b"#Fields: date-time,connector-id,session-id,sequence-number,local-endpoint,remote-endpoint,event,data,context\r"
        )
        == DEFAULT_LAYOUT
    )
    assert Layout.from_header(BOM + b"#fields: EVENT , Data") == Layout(("EVENT", "Data"), 0, 1)
    assert Layout.from_header(b"#Software: Microsoft Exchange Server") is None
    assert not Layout.from_header(b"#Fields: date-time,context").usable  # type: ignore[union-attr]
    assert parse_line(b"#Fields: event,data", DEFAULT_LAYOUT, SEND, LIMIT).layout == Layout(
        ("event", "data"), 0, 1
    )


def test_columns_follow_the_header_not_a_fixed_split() -> None:
    # Another order, data before the event, and the event as the last column.
    block = (
        b"#Fields: data,session-id,event\n"
        b'"454 4.7.0 Temporary, authentication failure",08DE01,<\n'
        b"250 2.0.0 OK,08DE01,<\r\n"
        b"EHLO x,08DE01,>\n"
        b"250 2.0.0 OK,08DE01,<,extra\n"
        b"#Fields: event,data\n"
        b"<,221 2.0.0 Bye\n"
    )
    tally = counted(block)
    assert tally == reference(block, DEFAULT_LAYOUT, SEND)
    assert tally == Tally(
        {("454", "4.7.0"): 1, ("250", "2.0.0"): 1, ("221", "2.0.0"): 1}, lines=5, malformed=1
    )


def test_a_header_without_event_or_data_makes_every_line_malformed() -> None:
    block = b"#Fields: date-time,context\n" + line("<", "250 2.0.0") + b"\na,b\n"
    assert counted(block) == Tally(lines=2, malformed=2)


@pytest.mark.parametrize(
    ("name", "event"), [("SEND20261129-1.LOG", SEND), ("RECV20261129-1.LOG", RECEIVE)]
)
def test_real_looking_files(name: str, event: bytes) -> None:
    data = (TESTDATA / name).read_bytes().removeprefix(BOM)
    tally = counted(data, event=event)
    assert tally == reference(data, DEFAULT_LAYOUT, event)
    if event == SEND:
        assert tally == Tally(
            {
                ("220", ""): 2,
                ("250", ""): 3,
                ("220", "2.0.0"): 1,
                ("454", "4.7.0"): 1,
                ("221", "2.0.0"): 1,
                ("250", "2.1.0"): 1,
                ("451", "4.7.1"): 1,
                ("221", ""): 1,
            },
            lines=28,
        )
    else:
        assert tally == Tally(
            {
                ("220", ""): 1,
                ("250", ""): 2,
                ("220", "2.0.0"): 1,
                ("454", "4.7.0"): 1,
                ("221", "2.0.0"): 1,
            },
            lines=15,
        )


def test_well_formed_blocks_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # Realistic lines, quoted fields included, must not fall back to the line-by-line path:
    # that is where the speed comes from.
    body = (TESTDATA / "SEND20261129-1.LOG").read_bytes().split(b"\n", 5)[5]

    def refuse(*args: object) -> None:
        raise AssertionError("took the slow path")

    monkeypatch.setattr(smtp_log, "_count_exact", refuse)
    tally = Tally()
    count_lines(body * 50, 0, len(body) * 50, DEFAULT_LAYOUT, SEND, tally, LIMIT)
    assert tally.responses[("454", "4.7.0")] == 50
    assert sum(tally.responses.values()) == 550


def test_one_bad_line_does_not_change_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    good = (TESTDATA / "SEND20261129-1.LOG").read_bytes().split(b"\n", 5)[5]
    block = good + b"garbage, not a log line\n\n" + good
    tally = counted(block)
    assert tally == reference(block, DEFAULT_LAYOUT, SEND)
    assert tally.responses[("454", "4.7.0")] == 2
    assert tally.malformed == 1


def test_blocks_may_start_anywhere_after_a_newline() -> None:
    data = (TESTDATA / "SEND20261129-1.LOG").read_bytes().removeprefix(BOM)
    start = data.index(b"\n", 1000) + 1
    tally = Tally()
    count_lines(data, start, len(data), DEFAULT_LAYOUT, SEND, tally, LIMIT)
    assert tally == reference(data[start:], DEFAULT_LAYOUT, SEND)


def test_codes_past_the_cap_count_as_other() -> None:
    tally = Tally()
    for n in range(MAX_CODE_SERIES + 50):
        tally.add_response(f"{n % 1000:03d}", "")
    assert len(tally.responses) == MAX_CODE_SERIES + 1  # the capped ones plus "other"
    assert tally.responses[(OTHER, "")] == 50
    assert sum(tally.responses.values()) == MAX_CODE_SERIES + 50


# -- properties ----------------------------------------------------------------------------

_PIECES = [*'abc 0123456789.-<>+*,"#\r\xff\x00', "454 4.7.0", "250-", "2.0.0"]
_FIELD_TEXT = st.lists(st.sampled_from(_PIECES), max_size=8).map(
    lambda p: "".join(p).encode("latin-1")
)


@st.composite
def _csv_field(draw: st.DrawFn) -> bytes:
    text = draw(_FIELD_TEXT)
    style = draw(st.sampled_from(["plain", "quoted", "raw"]))
    if style == "quoted":
        return b'"' + text.replace(b'"', b'""') + b'"'
    if style == "plain":
        return text.replace(b'"', b"").replace(b",", b"")
    return text


@st.composite
def _log_line(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["row", "row", "row", "junk", "header", "blank"]))
    if kind == "junk":
        return draw(st.binary(max_size=40)).replace(b"\n", b"")
    if kind == "header":
        return draw(
            st.sampled_from(
                [
                    b"#Software: Microsoft Exchange Server",
                    b"#Fields: event,data",
                    b"#Fields: date-time,connector-id,session-id,sequence-number,local-endpoint,remote-endpoint,event,data,context\r",
                    b"#Version: 15.0.0.0",
                ]
            )
        )
    if kind == "blank":
        return draw(st.sampled_from([b"", b"\r"]))
    fields = draw(st.lists(_csv_field(), min_size=7, max_size=10))
    if draw(st.booleans()) and len(fields) > 7:
        fields[6] = draw(st.sampled_from([b"<", b">", b"*", b"+", b"-"]))
        fields[7] = draw(
            st.sampled_from(
                [
                    b"454 4.7.0 Temporary authentication failure",
                    b'"250 2.6.0 <x>, queued"',
                    b"250-EXCH Hello",
                    b"221",
                    b'"220 a, b"',
                    b"",
                ]
            )
        )
    text = b",".join(fields)
    return text + (b"\r" if draw(st.booleans()) else b"")


@settings(max_examples=400, deadline=None)
@given(
    lines=st.lists(_log_line(), max_size=30),
    limit=st.sampled_from([16, 64, 256, LIMIT]),
    event=st.sampled_from([SEND, RECEIVE]),
)
def test_block_counter_equals_the_reference(lines: list[bytes], limit: int, event: bytes) -> None:
    block = b"".join(raw + b"\n" for raw in lines)
    tally = Tally()
    layout = count_lines(block, 0, len(block), DEFAULT_LAYOUT, event, tally, limit)
    expected = reference(block, DEFAULT_LAYOUT, event, limit)
    assert tally == expected
    headers = [
        Layout.from_header(raw.rstrip(b"\r"))
        for raw in lines
        if len(raw) <= limit and raw.startswith(b"#")
    ]
    fields = [h for h in headers if h is not None]
    assert layout == (fields[-1] if fields else DEFAULT_LAYOUT)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), start=st.integers(min_value=0, max_value=400))
def test_any_bytes_never_raise(data: bytes, start: int) -> None:
    for raw in data.split(b"\n"):
        parse_line(raw, DEFAULT_LAYOUT, SEND, 64)
    block = data[: data.rfind(b"\n") + 1]
    start = min(start, len(block))
    start = block.rfind(b"\n", 0, start) + 1 if start else 0
    tally = Tally()
    count_lines(block, start, len(block), DEFAULT_LAYOUT, SEND, tally, 64)
    assert tally == reference(block[start:], DEFAULT_LAYOUT, SEND, 64)
