"""msDS-SupportedEncryptionTypes: the bitmask, the KDC's default, and the flags."""

from __future__ import annotations

import pytest

from exporter.checks.spn import parse_encryption_types
from exporter.ldap import LdapEntry
from exporter.protocols import enctypes


@pytest.mark.parametrize(
    ("mask", "rc4_only", "aes_missing", "usable"),
    [
        (0x4, True, True, True),  # RC4-HMAC alone: the lab's RC4ONLY$
        (0x1C, False, False, True),  # RC4 + AES128 + AES256: what Windows writes by default
        (0x18, False, False, True),  # AES only: the hardened target
        (0x10, False, False, True),
        (0x24, True, True, True),  # RC4 with AES session keys: still RC4 tickets
        (0x27, True, True, True),  # the KDC's default since November 2022: DES is off, so RC4
        (0x3, False, True, False),  # DES only: no current KDC issues such a ticket
        (0x20, False, True, False),  # the session-key bit alone names no ticket type
        (0x80000 | 0x18, False, False, True),  # feature bits (FAST) do not count as types
    ],
)
def test_flags(mask: int, rc4_only: bool, aes_missing: bool, usable: bool) -> None:
    assert enctypes.rc4_only(mask) is rc4_only
    assert enctypes.aes_missing(mask) is aes_missing
    assert enctypes.usable(mask) is usable


def test_unset_and_zero_mean_the_kdc_default() -> None:
    assert enctypes.KDC_DEFAULT == 0x27
    assert enctypes.effective(None) == 0x27
    assert enctypes.effective(0) == 0x27
    assert enctypes.effective(None, 0x18) == 0x18
    assert enctypes.effective(0x4) == 0x4


def test_describe_names_the_types_and_the_value() -> None:
    assert enctypes.describe(0x1C) == "RC4-HMAC, AES128, AES256 (0x1c)"
    assert enctypes.describe(0x27) == "DES-CBC-CRC, DES-CBC-MD5, RC4-HMAC, AES256-SK (0x27)"
    assert enctypes.describe(0x80000) == "no encryption type (0x80000)"


@pytest.mark.parametrize(
    ("values", "parsed"),
    [
        ([], None),  # unset
        (["0"], None),  # 0 is unset for the KDC too
        (["4"], 4),
        (["28"], 28),
        (["-2147483620"], 0x8000001C),  # AD's signed 32-bit integer with the top bit set
        (["garbage"], None),  # a peer's nonsense never crashes the scan
        (["524288"], None),  # 0x80000 (FAST only), no type bit: the KDC default applies
        (["524316"], 0x8001C),  # FAST + RC4/AES: the types count, the extra bit is kept
    ],
)
def test_parse_the_attribute(values: list[str], parsed: int | None) -> None:
    entry = LdapEntry("CN=X,DC=x", {"msDS-SupportedEncryptionTypes": values})
    assert parse_encryption_types(entry) == parsed
