"""Kerberos error codes as MIT's library reports them, and the bounded reasons the exporter shows.

A GSS-API failure of the Kerberos mechanism carries the krb5 library's error as its minor
status: an unsigned 32-bit com_err code. Codes of the ``krb5`` error table are
``ERROR_TABLE_BASE_krb5 + n`` (-1765328384 + n), where ``n`` below 128 is the error number the
KDC sent in its KRB-ERROR (RFC 4120 section 7.5.9) and higher ``n`` are the library's own
(``KRB5_KDC_UNREACH`` is 156). Only numbers decide a reason, never message text: messages are
translated and change between releases.
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = [
    "CREDENTIAL_ERRORS",
    "CREDENTIAL_RETRY_AFTER",
    "ERROR_TABLE_BASE_KRB5",
    "REASONS",
    "RENEW_AT_REMAINING",
    "Reason",
    "krb5_code",
    "reason_of",
]

ERROR_TABLE_BASE_KRB5: Final = -1765328384

# RFC 4120 error numbers (the KDC's KRB-ERROR error-code) ...
KDC_ERR_C_PRINCIPAL_UNKNOWN: Final = 6
KDC_ERR_S_PRINCIPAL_UNKNOWN: Final = 7
KDC_ERR_PRINCIPAL_NOT_UNIQUE: Final = 8
KDC_ERR_ETYPE_NOSUPP: Final = 14
KDC_ERR_CLIENT_REVOKED: Final = 18  # disabled, locked out or expired account
KDC_ERR_KEY_EXPIRED: Final = 23  # the password has expired
KDC_ERR_PREAUTH_FAILED: Final = 24  # wrong password or key
KRB_AP_ERR_BAD_INTEGRITY: Final = 31  # a reply we cannot decrypt: wrong password or key
KRB_AP_ERR_TKT_EXPIRED: Final = 32
KRB_AP_ERR_SKEW: Final = 37
# ... and the library's own codes in the same table.
KRB5_KDCREP_SKEW: Final = 148  # the KDC's reply is stamped more than 5 minutes off
KRB5_PROG_ETYPE_NOSUPP: Final = 150  # no enctype in common with what the client permits
KRB5_REALM_UNKNOWN: Final = 154  # no KDC known for the realm
KRB5_KDC_UNREACH: Final = 156
KRB5_PREAUTH_FAILED: Final = 210  # a pre-authentication failure the client library raised
KRB5_REALM_CANT_RESOLVE: Final = 220
KRB5_CONFIG_ETYPE_NOSUPP: Final = 237

Reason = Literal[
    "principal_unknown",  # no single account holds the SPN: missing or duplicated
    "etype_nosupp",  # no encryption type in common (an account without keys, RC4 vs AES-only)
    "skew",  # the KDC's clock is more than 5 minutes from ours
    "kdc_unreachable",  # nothing answered on the KDC's port
    "preauth_failed",  # the exporter's own credentials were refused
    "no_credentials",  # none configured, or none usable for the principal
    "timeout",  # no answer before the scrape's deadline
    "other",
]
REASONS: Final[tuple[Reason, ...]] = (
    "principal_unknown",
    "etype_nosupp",
    "skew",
    "kdc_unreachable",
    "preauth_failed",
    "no_credentials",
    "timeout",
    "other",
)

_BY_CODE: Final[dict[int, Reason]] = {
    KDC_ERR_S_PRINCIPAL_UNKNOWN: "principal_unknown",
    # AD answers S_PRINCIPAL_UNKNOWN for a duplicated SPN; NOT_UNIQUE is what RFC 4120 offers.
    KDC_ERR_PRINCIPAL_NOT_UNIQUE: "principal_unknown",
    KDC_ERR_ETYPE_NOSUPP: "etype_nosupp",
    KRB5_PROG_ETYPE_NOSUPP: "etype_nosupp",
    KRB5_CONFIG_ETYPE_NOSUPP: "etype_nosupp",
    KRB_AP_ERR_SKEW: "skew",
    KRB5_KDCREP_SKEW: "skew",
    KRB5_KDC_UNREACH: "kdc_unreachable",
    KRB5_REALM_CANT_RESOLVE: "kdc_unreachable",
    KRB5_REALM_UNKNOWN: "kdc_unreachable",
    KDC_ERR_C_PRINCIPAL_UNKNOWN: "preauth_failed",
    KDC_ERR_CLIENT_REVOKED: "preauth_failed",
    KDC_ERR_KEY_EXPIRED: "preauth_failed",
    KDC_ERR_PREAUTH_FAILED: "preauth_failed",
    KRB_AP_ERR_BAD_INTEGRITY: "preauth_failed",
    KRB5_PREAUTH_FAILED: "preauth_failed",
}

# Errors that say the exporter's own account or secret is wrong. Asking again with the same
# secret only counts towards the account's lockout threshold, so the worker waits long.
CREDENTIAL_ERRORS: Final = frozenset(
    {
        KDC_ERR_C_PRINCIPAL_UNKNOWN,
        KDC_ERR_CLIENT_REVOKED,
        KDC_ERR_KEY_EXPIRED,
        KDC_ERR_PREAUTH_FAILED,
        KRB_AP_ERR_BAD_INTEGRITY,
        KRB5_PREAUTH_FAILED,
    }
)


# A refused secret: every try counts towards the account's lockout threshold. Try again hourly
# (a reload with a new secret tries at once). Shared by the worker and the exporter's gate.
CREDENTIAL_RETRY_AFTER: Final = 3600.0
# A TGT is renewed when this share of its lifetime is left.
RENEW_AT_REMAINING: Final = 0.5


def krb5_code(minor_status: int) -> int | None:
    """The krb5 table's number in a GSS minor status (unsigned or signed), else None."""
    signed = minor_status - (1 << 32) if minor_status >= 1 << 31 else minor_status
    number = signed - ERROR_TABLE_BASE_KRB5
    return number if 0 <= number < 256 else None


def reason_of(code: int | None) -> Reason:
    """The bounded reason for a krb5 table number (from :func:`krb5_code`)."""
    if code is None:
        return "other"
    return _BY_CODE.get(code, "other")
