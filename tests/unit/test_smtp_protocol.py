"""Exchange banners and EHLO replies: the clock in the banner, the keywords that matter."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.protocols.smtp import SmtpReplyError, banner_time, ehlo_keywords, parse_reply_line


def utc(*fields: int) -> float:
    return float(calendar.timegm((*fields, 0, 0, 0)))


@pytest.mark.parametrize(
    ("banner", "unix", "offset"),
    [
        # Exchange 2013-2019 default banner, as in Microsoft's documentation.
        (
            "EXCH1.contoso.com Microsoft ESMTP MAIL Service ready at Tue, 29 Feb 2000 18:55:48 -0600",
            utc(2000, 3, 1, 0, 55, 48),
            -21600,
        ),
        (
            "exch1.corp.example.test Microsoft ESMTP MAIL Service ready at Sun, 29 Nov 2026 11:40:05 +0000",
            utc(2026, 11, 29, 11, 40, 5),
            0,
        ),
        # Exchange 2003 (IIS SMTPSVC): a version and two spaces before the date.
        (
            "mail.contoso.com Microsoft ESMTP MAIL Service, Version: 6.0.3790.4675 ready at  Wed, 10 Oct 2012 11:50:03 +0100",
            utc(2012, 10, 10, 10, 50, 3),
            3600,
        ),
        # A one-digit day and no weekday are still RFC 2822.
        (
            "x Microsoft ESMTP MAIL Service ready at 3 Jun 2015 10:00:00 +0200",
            utc(2015, 6, 3, 8, 0, 0),
            7200,
        ),
        # A localised weekday before the comma is skipped like an English one.
        (
            "x Microsoft ESMTP MAIL Service ready at Mi, 3 Jun 2015 10:00:00 +0200",
            utc(2015, 6, 3, 8, 0, 0),
            7200,
        ),
        ("x ready at Sun, 29 Nov 2026 11:40:05 GMT", utc(2026, 11, 29, 11, 40, 5), 0),
    ],
)
def test_banner_clock(banner: str, unix: float, offset: int) -> None:
    reading = banner_time(banner)
    assert reading is not None
    assert reading.unix == unix
    assert reading.utc_offset_seconds == offset


@pytest.mark.parametrize(
    "banner",
    [
        "mail.corp.example.test ESMTP",  # a custom banner: no reading, and certainly not 0
        "mail.contoso.com Microsoft ESMTP MAIL Service ready",
        "x ready at Sun, 29 Nov 2026 11:40:05",  # no zone: not comparable with anything
        "x ready at yesterday",
        "x ready at Sun, 31 Feb 2026 25:61:05 +0000",
    ],
)
def test_banners_without_a_usable_clock(banner: str) -> None:
    assert banner_time(banner) is None


def test_reply_lines() -> None:
    first = parse_reply_line("250-exch1.corp.example.test Hello [127.0.0.1]")
    assert (first.code, first.last) == (250, False)
    last = parse_reply_line("250 XRDST")
    assert (last.code, last.last, last.text) == (250, True, "XRDST")
    assert parse_reply_line("220").last


@pytest.mark.parametrize("line", ["", "hello", "2500 x", "099 x", "abc def"])
def test_bad_reply_lines(line: str) -> None:
    with pytest.raises(SmtpReplyError):
        parse_reply_line(line)


def test_ehlo_keywords_of_an_intra_org_connector() -> None:
    lines = [
        "exch1.corp.example.test Hello [127.0.0.1]",
        "SIZE 37748736",
        "PIPELINING",
        "STARTTLS",
        "X-ANONYMOUSTLS",
        "AUTH NTLM",
        "X-EXPS GSSAPI NTLM",
        "XRDST",
    ]
    keywords = ehlo_keywords(lines)
    assert keywords["X-EXPS"] == ("GSSAPI", "NTLM")
    assert keywords["STARTTLS"] == ()
    assert "EXCH1.CORP.EXAMPLE.TEST" not in keywords  # the greeting is not an extension


@given(st.text(max_size=300))
def test_any_banner_text_reads_or_gives_none(text: str) -> None:
    reading = banner_time(text)
    assert reading is None or reading.unix > 0
