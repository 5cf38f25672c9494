"""SMTP replies as Exchange sends them: the 220 banner with its clock, and the EHLO keywords.

The default Exchange banner ends with the server's local time,
``220 EXCH1.corp.example.com Microsoft ESMTP MAIL Service ready at Tue, 29 Feb 2000 18:55:48 -0600``:
an agentless reading of the Exchange server's clock to the second. Admins may replace the
banner; then there is no reading, never a zero.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from email.utils import parsedate_tz

__all__ = [
    "BannerTime",
    "Reply",
    "SmtpReplyError",
    "banner_time",
    "ehlo_keywords",
    "parse_reply_line",
]

# "ready at <date>": Exchange 2007 and later; Exchange 2003 (IIS SMTPSVC) writes
# "Microsoft ESMTP MAIL Service, Version: 6.0.3790.4675 ready at  Wed, 10 Oct 2012 11:50:03 +0100".
_READY_AT = re.compile(r"\bready at\s+(?P<date>.+?)\s*$", re.IGNORECASE)
# parsedate_tz reads a missing zone as UTC; a banner must name its zone to be a reading.
_ZONE = re.compile(r"(?:[+-]\d{4}|\b(?:UT|UTC|GMT|[ECMP][SD]T|Z))\s*$", re.IGNORECASE)
_REPLY_LINE = re.compile(r"^(?P<code>[2-5]\d\d)(?:(?P<sep>[ -])(?P<text>.*))?$")


class SmtpReplyError(ValueError):
    """A line that is not an SMTP reply; the probe reports ``protocol_error``."""


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    last: bool  # "250 " ends a reply, "250-" continues it
    text: str


@dataclass(frozen=True, slots=True)
class BannerTime:
    unix: float  # the second the banner names (its start)
    utc_offset_seconds: int  # the server's UTC offset as written, for display


def parse_reply_line(line: str) -> Reply:
    match = _REPLY_LINE.match(line)
    if match is None:
        raise SmtpReplyError(f"not an SMTP reply line: {line[:80]!r}")
    return Reply(int(match["code"]), match["sep"] != "-", match["text"] or "")


def banner_time(banner: str) -> BannerTime | None:
    """The clock reading in an Exchange-style banner; None for a custom banner without one.

    Parsed as RFC 2822 (``email.utils``), which also takes the forms without a weekday or with
    a one-digit day. A date without a UTC offset cannot be compared with anything: None.
    """
    match = _READY_AT.search(banner)
    if match is None:
        return None
    if _ZONE.search(match["date"]) is None:
        return None
    parsed = parsedate_tz(match["date"])
    if parsed is None or parsed[9] is None:
        return None
    year, month, day, hour, minute, second = parsed[:6]
    if not (
        1970 <= year <= 9999
        and 1 <= month <= 12
        and 1 <= day <= 31
        and hour < 24
        and minute < 60
        and second < 61
    ):
        return None
    offset = int(parsed[9])
    return BannerTime(
        float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset), offset
    )


def ehlo_keywords(lines: list[str]) -> dict[str, tuple[str, ...]]:
    """EHLO extensions, upper-cased, each with its parameters (``X-EXPS`` -> ``("GSSAPI", "NTLM")``).

    The first line is the greeting (``250-host Hello [1.2.3.4]``), not an extension.
    """
    keywords: dict[str, tuple[str, ...]] = {}
    for text in lines[1:]:
        parts = text.split()
        if parts:
            keywords[parts[0].upper()] = tuple(p.upper() for p in parts[1:])
    return keywords
