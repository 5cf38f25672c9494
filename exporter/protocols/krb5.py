"""The few Kerberos messages a credential-free probe needs (RFC 4120, RFC 3244), as pyasn1 types.

An AS-REQ for a random client gets a KRB-ERROR back (C_PRINCIPAL_UNKNOWN) whose ``stime`` and
``susec`` read the KDC's clock; a kpasswd request with a junk AP-REQ gets a KRB-ERROR inside the
kpasswd framing. Nothing here is authenticated: a reply proves a Kerberos service answers, and
its clock is what that service says, not what it can prove.
"""

from __future__ import annotations

import calendar
import struct
from dataclasses import dataclass

from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import char, namedtype, tag, univ, useful

__all__ = [
    "ERROR_NAMES",
    "KerberosReply",
    "KerberosReplyError",
    "build_as_req",
    "build_kpasswd_request",
    "frame_tcp",
    "parse_kdc_reply",
    "parse_kpasswd_reply",
]

PVNO = 5
MSG_AS_REQ = 10
MSG_AS_REP = 11
MSG_KRB_ERROR = 30
NT_PRINCIPAL = 1
NT_SRV_INST = 2
# aes256-cts-hmac-sha1-96, aes128-cts-hmac-sha1-96, rc4-hmac: what AD offers by default.
DEFAULT_ETYPES = (18, 17, 23)
# MIT krb5's "no end time" for the requested ticket lifetime.
_TILL = "20370913024805Z"
KPASSWD_VERSION = 0xFF80

ERROR_NAMES = {
    6: "KDC_ERR_C_PRINCIPAL_UNKNOWN",
    7: "KDC_ERR_S_PRINCIPAL_UNKNOWN",
    14: "KDC_ERR_ETYPE_NOSUPP",
    24: "KDC_ERR_PREAUTH_FAILED",
    25: "KDC_ERR_PREAUTH_REQUIRED",
    37: "KRB_AP_ERR_SKEW",
    41: "KRB_AP_ERR_MODIFIED",
    52: "KRB_ERR_RESPONSE_TOO_BIG",
    60: "KRB_ERR_GENERIC",
    68: "KDC_ERR_WRONG_REALM",
}


def _explicit(number: int) -> tag.Tag:
    return tag.Tag(tag.tagClassContext, tag.tagFormatSimple, number)


def _application(number: int) -> tag.TagSet:
    application = tag.Tag(tag.tagClassApplication, tag.tagFormatConstructed, number)
    tagged: tag.TagSet = univ.Sequence.tagSet.tagExplicitly(application)  # type: ignore[no-untyped-call]
    return tagged


def _field(name: str, number: int, asn1: object) -> namedtype.NamedType:
    return namedtype.NamedType(name, asn1.subtype(explicitTag=_explicit(number)))  # type: ignore[attr-defined]


def _optional(name: str, number: int, asn1: object) -> namedtype.OptionalNamedType:
    return namedtype.OptionalNamedType(name, asn1.subtype(explicitTag=_explicit(number)))  # type: ignore[attr-defined]


class KerberosString(char.GeneralString):
    pass


class PrincipalName(univ.Sequence):
    componentType = namedtype.NamedTypes(
        _field("name-type", 0, univ.Integer()),
        _field("name-string", 1, univ.SequenceOf(componentType=KerberosString())),
    )


class PAData(univ.Sequence):
    componentType = namedtype.NamedTypes(
        _field("padata-type", 1, univ.Integer()),
        _field("padata-value", 2, univ.OctetString()),
    )


class EncryptedData(univ.Sequence):
    componentType = namedtype.NamedTypes(
        _field("etype", 0, univ.Integer()),
        _optional("kvno", 1, univ.Integer()),
        _field("cipher", 2, univ.OctetString()),
    )


class Ticket(univ.Sequence):
    tagSet = _application(1)
    componentType = namedtype.NamedTypes(
        _field("tkt-vno", 0, univ.Integer()),
        _field("realm", 1, KerberosString()),
        _field("sname", 2, PrincipalName()),
        _field("enc-part", 3, EncryptedData()),
    )


class KdcReqBody(univ.Sequence):
    componentType = namedtype.NamedTypes(
        _field("kdc-options", 0, univ.BitString()),
        _optional("cname", 1, PrincipalName()),
        _field("realm", 2, KerberosString()),
        _optional("sname", 3, PrincipalName()),
        _optional("from", 4, useful.GeneralizedTime()),
        _field("till", 5, useful.GeneralizedTime()),
        _optional("rtime", 6, useful.GeneralizedTime()),
        _field("nonce", 7, univ.Integer()),
        _field("etype", 8, univ.SequenceOf(componentType=univ.Integer())),
    )


class AsReq(univ.Sequence):
    tagSet = _application(MSG_AS_REQ)
    componentType = namedtype.NamedTypes(
        _field("pvno", 1, univ.Integer()),
        _field("msg-type", 2, univ.Integer()),
        _optional("padata", 3, univ.SequenceOf(componentType=PAData())),
        _field("req-body", 4, KdcReqBody()),
    )


class AsRep(univ.Sequence):
    tagSet = _application(MSG_AS_REP)
    componentType = namedtype.NamedTypes(
        _field("pvno", 0, univ.Integer()),
        _field("msg-type", 1, univ.Integer()),
        _optional("padata", 2, univ.SequenceOf(componentType=PAData())),
        _field("crealm", 3, KerberosString()),
        _field("cname", 4, PrincipalName()),
        _field("ticket", 5, Ticket()),
        _field("enc-part", 6, EncryptedData()),
    )


class KrbError(univ.Sequence):
    tagSet = _application(MSG_KRB_ERROR)
    componentType = namedtype.NamedTypes(
        _field("pvno", 0, univ.Integer()),
        _field("msg-type", 1, univ.Integer()),
        _optional("ctime", 2, useful.GeneralizedTime()),
        _optional("cusec", 3, univ.Integer()),
        _field("stime", 4, useful.GeneralizedTime()),
        # Mandatory in RFC 4120, but a KDC that leaves it out still tells the time to a second.
        _optional("susec", 5, univ.Integer()),
        _field("error-code", 6, univ.Integer()),
        _optional("crealm", 7, KerberosString()),
        _optional("cname", 8, PrincipalName()),
        _field("realm", 9, KerberosString()),
        _field("sname", 10, PrincipalName()),
        _optional("e-text", 11, KerberosString()),
        _optional("e-data", 12, univ.OctetString()),
    )


# Decoding never changes the schema object it is given; building one per reply costs a third of
# the decoding time.
_KRB_ERROR = KrbError()
_AS_REP = AsRep()


class KerberosReplyError(ValueError):
    """Bytes that are not a Kerberos reply we can use; always reason ``protocol_error``."""

    reason = "protocol_error"


@dataclass(frozen=True, slots=True)
class KerberosReply:
    """What a KDC or kpasswd service said: an error code (None for an AS-REP) and its clock."""

    error_code: int | None
    server_time: float | None  # Unix seconds, from stime + susec
    has_microseconds: bool

    @property
    def error_name(self) -> str:
        if self.error_code is None:
            return "AS-REP"
        return ERROR_NAMES.get(self.error_code, f"error {self.error_code}")


def _fill_principal(principal: univ.Sequence, name_type: int, *parts: str) -> None:
    # Constructed components are filled in place: pyasn1 keeps the explicit tag of the slot.
    principal["name-type"] = name_type
    names = principal["name-string"]
    for index, part in enumerate(parts):
        names[index] = part


def build_as_req(
    realm: str, client: str, nonce: int, etypes: tuple[int, ...] = DEFAULT_ETYPES
) -> bytes:
    """An AS-REQ for ``client@realm`` asking for ``krbtgt/realm``, without pre-authentication."""
    request = AsReq()
    request["pvno"] = PVNO
    request["msg-type"] = MSG_AS_REQ
    body = request["req-body"]
    body["kdc-options"] = (0,) * 32
    _fill_principal(body["cname"], NT_PRINCIPAL, client)
    body["realm"] = realm
    _fill_principal(body["sname"], NT_SRV_INST, "krbtgt", realm)
    body["till"] = _TILL
    body["nonce"] = nonce & 0x7FFF_FFFF
    for index, etype in enumerate(etypes):
        body["etype"][index] = etype
    encoded: bytes = encoder.encode(request)
    return encoded


def build_kpasswd_request(ap_req: bytes = b"junk", priv: bytes = b"x") -> bytes:
    """A correctly framed kpasswd request (RFC 3244 §2); its AP-REQ may be junk.

    KDCs drop badly framed requests silently, but answer a framed one whose AP-REQ does not
    decode with a KRB-ERROR, which is all a probe needs.
    """
    return (
        struct.pack("!HHH", 6 + len(ap_req) + len(priv), KPASSWD_VERSION, len(ap_req))
        + ap_req
        + priv
    )


def frame_tcp(message: bytes) -> bytes:
    """RFC 4120 §7.2.2: over TCP each message is preceded by its length, 4 bytes big-endian."""
    return struct.pack("!I", len(message)) + message


def _unix_time(generalized: useful.GeneralizedTime) -> float:
    text = str(generalized)
    # RFC 4120 §5.2.3: KerberosTime is always YYYYMMDDHHMMSSZ, so no strptime is needed (it
    # costs more than a tenth of the whole probe); anything else falls back to pyasn1's parser.
    if len(text) == 15 and text[14] == "Z" and text[:14].isdigit():
        fields = (
            int(text[0:4]),
            int(text[4:6]),
            int(text[6:8]),
            int(text[8:10]),
            int(text[10:12]),
            int(text[12:14]),
        )
        if (
            1 <= fields[1] <= 12
            and 1 <= fields[2] <= 31
            and fields[3] < 24
            and fields[4] < 60
            and fields[5] < 61
        ):
            return float(calendar.timegm((*fields, 0, 0, 0)))
    try:
        moment = generalized.asDateTime
    except (PyAsn1Error, ValueError, OverflowError) as exc:
        raise KerberosReplyError(f"invalid time {text!r}") from exc
    return float(calendar.timegm(moment.utctimetuple()) + moment.microsecond / 1e6)


def _decode(data: bytes, spec: univ.Sequence) -> univ.Sequence:
    try:
        message: univ.Sequence
        message, rest = decoder.decode(data, asn1Spec=spec)
    except (PyAsn1Error, ValueError, TypeError, IndexError, OverflowError, RecursionError) as exc:
        raise KerberosReplyError(f"undecodable {type(spec).__name__}: {exc}") from None
    if rest:
        raise KerberosReplyError(f"{len(rest)} bytes after the {type(spec).__name__}")
    return message


def _krb_error(data: bytes) -> KerberosReply:
    message = _decode(data, _KRB_ERROR)
    if int(message["pvno"]) != PVNO or int(message["msg-type"]) != MSG_KRB_ERROR:
        raise KerberosReplyError("KRB-ERROR with a wrong pvno or msg-type")
    server_time = _unix_time(message["stime"])
    susec = message["susec"]
    has_microseconds = susec.isValue
    if has_microseconds:
        microseconds = int(susec)
        if not 0 <= microseconds < 1_000_000:
            raise KerberosReplyError(f"susec {microseconds} out of range")
        server_time += microseconds / 1e6
    return KerberosReply(int(message["error-code"]), server_time, has_microseconds)


def parse_kdc_reply(data: bytes) -> KerberosReply:
    """A KRB-ERROR or an AS-REP, bare (as on UDP, or after the TCP length prefix)."""
    if data[:1] == b"\x7e":  # [APPLICATION 30]
        return _krb_error(data)
    if data[:1] == b"\x6b":  # [APPLICATION 11]
        message = _decode(data, _AS_REP)
        if int(message["pvno"]) != PVNO or int(message["msg-type"]) != MSG_AS_REP:
            raise KerberosReplyError("AS-REP with a wrong pvno or msg-type")
        return KerberosReply(None, None, False)
    raise KerberosReplyError(f"not a KRB-ERROR or AS-REP (first byte {data[:1].hex() or 'none'})")


def parse_kpasswd_reply(data: bytes) -> KerberosReply:
    """A kpasswd reply (RFC 3244 §2): its framing, then the KRB-ERROR it carries.

    Some services answer a request they cannot parse with a bare KRB-ERROR; that is a
    Kerberos service answering too.
    """
    if data[:1] == b"\x7e":
        return _krb_error(data)
    if len(data) < 6:
        raise KerberosReplyError(f"kpasswd reply of {len(data)} bytes, expected at least 6")
    length, version, ap_rep_length = struct.unpack_from("!HHH", data)
    if length != len(data):
        raise KerberosReplyError(f"kpasswd reply says {length} bytes, got {len(data)}")
    if version not in (1, KPASSWD_VERSION):
        raise KerberosReplyError(f"kpasswd reply version {version:#x}")
    if ap_rep_length:
        # An AP-REP and KRB-PRIV: a password change went through, which a junk request cannot do.
        raise KerberosReplyError("kpasswd reply with an AP-REP to a junk request")
    return _krb_error(data[6:])
