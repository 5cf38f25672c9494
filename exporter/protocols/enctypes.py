"""``msDS-SupportedEncryptionTypes``: which keys the KDC may encrypt an account's tickets with.

The attribute is a bitmask (MS-KILE 2.2.7). Unset, or 0, means the KDC's default applies: the
``DefaultDomainSupportedEncTypes`` registry value of each KDC, 0x27 since the November 2022
updates (DES, RC4 and AES session keys: the ticket itself is RC4-encrypted). DES has been
disabled on every KDC since Windows Server 2008 R2, so it never counts as usable here.
"""

from __future__ import annotations

__all__ = [
    "AES128",
    "AES256",
    "AES256_SK",
    "AES_TICKET_TYPES",
    "DES_CBC_CRC",
    "DES_CBC_MD5",
    "ENCRYPTION_TYPE_BITS",
    "KDC_DEFAULT",
    "RC4_HMAC",
    "aes_missing",
    "describe",
    "effective",
    "names",
    "rc4_only",
    "usable",
]

DES_CBC_CRC = 0x01
DES_CBC_MD5 = 0x02
RC4_HMAC = 0x04
AES128 = 0x08  # AES128-CTS-HMAC-SHA1-96
AES256 = 0x10  # AES256-CTS-HMAC-SHA1-96
AES256_SK = 0x20  # AES session keys even when the ticket is RC4 (November 2022 and later)

# The bits that name encryption types; higher ones (FAST, compound identity, claims,
# resource-SID compression) say what the account supports, not which keys it has.
ENCRYPTION_TYPE_BITS = 0x3F
AES_TICKET_TYPES = AES128 | AES256
# What a current KDC issues tickets with: no DES.
USABLE_TICKET_TYPES = RC4_HMAC | AES_TICKET_TYPES
# DefaultDomainSupportedEncTypes when the registry value is absent (KB5021131).
KDC_DEFAULT = DES_CBC_CRC | DES_CBC_MD5 | RC4_HMAC | AES256_SK

_NAMES = (
    (DES_CBC_CRC, "DES-CBC-CRC"),
    (DES_CBC_MD5, "DES-CBC-MD5"),
    (RC4_HMAC, "RC4-HMAC"),
    (AES128, "AES128"),
    (AES256, "AES256"),
    (AES256_SK, "AES256-SK"),
)


def effective(value: int | None, default: int = KDC_DEFAULT) -> int:
    """The types the KDC uses for an account: its own value, or the default when unset or 0."""
    return value if value else default


def names(mask: int) -> list[str]:
    """``[RC4-HMAC, AES256-SK]``; bits this module does not name (FAST, compound identity,
    claims) are left out: they say what the account supports, not which keys it has."""
    return [name for bit, name in _NAMES if mask & bit]


def describe(mask: int) -> str:
    """``RC4-HMAC, AES256-SK (0x24)``, as an admin compares it with ``Get-ADComputer``."""
    listed = ", ".join(names(mask)) or "no encryption type"
    return f"{listed} (0x{mask:x})"


def usable(mask: int) -> bool:
    """A current KDC can issue a ticket with one of these types (RC4 or AES; DES is off)."""
    return bool(mask & USABLE_TICKET_TYPES)


def aes_missing(mask: int) -> bool:
    """Neither AES128 nor AES256: tickets for the account cannot be AES-encrypted."""
    return not mask & AES_TICKET_TYPES


def rc4_only(mask: int) -> bool:
    """RC4 is the only type a current KDC can use: it breaks once the KDCs refuse RC4."""
    return bool(mask & RC4_HMAC) and aes_missing(mask)
