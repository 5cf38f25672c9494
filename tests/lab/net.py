"""Loopback aliases, the kernel's socket tables, and the probes that tell a service is ready.

The probes speak just enough of each protocol to prove the service answers, with no client
library: the lab must be able to say "Samba is up" before any of the project's code runs.
"""

from __future__ import annotations

import calendar
import errno
import ipaddress
import secrets
import socket
import struct
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.lab.errors import LabError

LOOPBACK_DEVICE = "lo"


# --- loopback aliases -------------------------------------------------------------------------


def loopback_addresses() -> set[str]:
    """IPv4 addresses currently configured on ``lo``."""
    result = subprocess.run(
        ["ip", "-o", "-4", "addr", "show", "dev", LOOPBACK_DEVICE],
        capture_output=True,
        text=True,
        check=True,
    )
    addresses = set()
    for line in result.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            addresses.add(fields[fields.index("inet") + 1].split("/")[0])
    return addresses


def add_loopback_alias(address: str) -> bool:
    """Put ``address/32`` on ``lo``; True when we added it, False when it was already there."""
    if address in loopback_addresses():
        return False
    result = subprocess.run(
        ["ip", "addr", "add", f"{address}/32", "dev", LOOPBACK_DEVICE],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        # Another process may have added it between our check and our add; the kernel's wording
        # for that varies ("File exists", "Address already assigned"), so look rather than parse.
        if address in loopback_addresses():
            return False
        raise LabError(f"ip addr add {address}/32 dev lo failed: {result.stderr.strip()}")
    return True


def remove_loopback_alias(address: str) -> None:
    if address not in loopback_addresses():
        return
    result = subprocess.run(
        ["ip", "addr", "del", f"{address}/32", "dev", LOOPBACK_DEVICE],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 and address in loopback_addresses():
        raise LabError(f"ip addr del {address}/32 dev lo failed: {result.stderr.strip()}")


# --- who holds a port -------------------------------------------------------------------------


@dataclass(frozen=True)
class BoundSocket:
    """One row of /proc/net/{tcp,udp}{,6}: a listening TCP or a bound UDP socket."""

    transport: str  # "tcp" or "udp"
    address: str
    port: int
    inode: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}/{self.transport}"

    @property
    def is_wildcard(self) -> bool:
        return self.address in ("0.0.0.0", "::")


_TCP_LISTEN = "0A"


def _decode_address(hex_address: str) -> str:
    # The kernel prints addresses as host-order 32-bit words.
    raw = bytes.fromhex(hex_address)
    words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
    address = ipaddress.ip_address(b"".join(words))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


def bound_sockets() -> list[BoundSocket]:
    sockets = []
    for transport in ("tcp", "udp"):
        for suffix in ("", "6"):
            table = Path(f"/proc/net/{transport}{suffix}")
            try:
                lines = table.read_text().splitlines()[1:]
            except FileNotFoundError:
                continue
            for line in lines:
                fields = line.split()
                if transport == "tcp" and fields[3] != _TCP_LISTEN:
                    continue
                hex_address, hex_port = fields[1].split(":")
                sockets.append(
                    BoundSocket(
                        transport, _decode_address(hex_address), int(hex_port, 16), int(fields[9])
                    )
                )
    return sockets


def sockets_in_the_way(wanted: Iterable[tuple[str, str, int]]) -> list[BoundSocket]:
    """Bound sockets that would make binding (transport, address, port) fail.

    A socket on the wildcard address counts too: a daemon listening on 0.0.0.0:123 keeps
    chronyd from binding 127.0.10.21:123.
    """
    wanted = set(wanted)
    return [
        s
        for s in bound_sockets()
        if any(
            s.transport == transport and s.port == port and (s.address == address or s.is_wildcard)
            for transport, address, port in wanted
        )
    ]


# --- a host that never answers ----------------------------------------------------------------


def silent_udp_sockets(address: str, ports: Iterable[int]) -> list[socket.socket]:
    """UDP sockets bound to address:port and never read: datagrams vanish, as behind a firewall.

    A port with nothing bound would answer ICMP port unreachable (a client sees "refused").
    The sockets live as long as the caller keeps them open.
    """
    sockets: list[socket.socket] = []
    try:
        for port in ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(sock)
            try:
                sock.bind((address, port))
            except OSError as exc:
                hint = " (in use)" if exc.errno == errno.EADDRINUSE else ""
                raise LabError(f"cannot bind {address}:{port}/udp{hint}: {exc}") from exc
            # The smallest receive buffer: what arrives before it fills is never read either.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


# --- readiness probes -------------------------------------------------------------------------


def tcp_accepts(address: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


NTP_CLIENT_REQUEST = b"\x23" + bytes(47)  # LI 0, version 4, mode 3 (client), the rest zero
_NTP_MODE_SERVER = 4


def ntp_answers(address: str, port: int = 123, timeout: float = 0.5) -> bool:
    """True when a real NTP server reply (48 bytes, mode 4) comes back from address:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            # Connected, so a closed port fails at once (ICMP port unreachable) instead of
            # costing the whole timeout while chronyd is still starting.
            sock.connect((address, port))
            sock.send(NTP_CLIENT_REQUEST)
            reply = sock.recv(512)
        except OSError:
            return False
    return len(reply) == 48 and reply[0] & 0x07 == _NTP_MODE_SERVER


def _ber(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    size_bytes = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size_bytes)]) + size_bytes + body


def _read_ber(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """(tag, value, position after it) of the element at ``pos``; IndexError when truncated."""
    tag = data[pos]
    size = data[pos + 1]
    pos += 2
    if size & 0x80:
        count = size & 0x7F
        size = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + size > len(data):
        raise IndexError("truncated BER element")
    return tag, data[pos : pos + size], pos + size


def root_dse_request(attribute: str, message_id: int = 1) -> bytes:
    """An anonymous LDAPv3 SearchRequest for one attribute of the rootDSE (RFC 4511 4.5.1)."""
    search = _ber(
        0x63,  # [APPLICATION 3] SearchRequest
        _ber(0x04, b"")  # baseObject: the empty DN
        + _ber(0x0A, b"\x00")  # scope: baseObject
        + _ber(0x0A, b"\x00")  # derefAliases: never
        + _ber(0x02, b"\x00")  # sizeLimit
        + _ber(0x02, b"\x00")  # timeLimit
        + _ber(0x01, b"\x00")  # typesOnly: false
        + _ber(0x87, b"objectClass")  # filter: present (objectClass=*)
        + _ber(0x30, _ber(0x04, attribute.encode())),
    )
    return _ber(0x30, _ber(0x02, bytes([message_id])) + search)


def root_dse_attribute(
    address: str, attribute: str, port: int = 389, timeout: float = 2.0
) -> str | None:
    """First value of ``attribute`` in the rootDSE read anonymously over plain LDAP.

    None when the server answered without it; OSError or ValueError when it did not answer
    like an LDAP server.
    """
    with socket.create_connection((address, port), timeout=timeout) as sock:
        sock.sendall(root_dse_request(attribute))
        data = b""
        while True:
            try:
                _, message, _ = _read_ber(data, 0)
                break
            except IndexError:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ValueError("connection closed before a complete LDAP message") from None
                data += chunk
    _, _, pos = _read_ber(message, 0)  # messageID
    op_tag, entry, _ = _read_ber(message, pos)
    if op_tag == 0x65:  # SearchResultDone first: no entry, e.g. an error result
        return None
    if op_tag != 0x64:  # [APPLICATION 4] SearchResultEntry
        raise ValueError(f"unexpected LDAP response tag 0x{op_tag:02x}")
    _, _, pos = _read_ber(entry, 0)  # objectName
    _, attributes, _ = _read_ber(entry, pos)
    pos = 0
    while pos < len(attributes):
        _, partial, pos = _read_ber(attributes, pos)
        _, name, inner = _read_ber(partial, 0)
        _, values, _ = _read_ber(partial, inner)
        if name.decode().lower() == attribute.lower() and values:
            return _read_ber(values, 0)[1].decode()
    return None


# --- SMTP -------------------------------------------------------------------------------------

_SMTP_LINE_LIMIT = 4096
_SMTP_REPLY_LINES = 100


@dataclass(frozen=True)
class SmtpTranscript:
    """What an SMTP server said: its greeting and one reply per command (lines without CRLF).

    ``client_address``: our end's address, which the server names in ``Hello [...]``. Towards
    a lab address it is that address itself (the kernel picks the /32 alias on ``lo`` as the
    source), not 127.0.0.1.
    """

    banner: str
    replies: list[list[str]]
    client_address: str


def _smtp_reply(reader: IO[bytes]) -> list[str]:
    """One reply: ``250-...`` lines up to the ``250 ...`` one; ValueError if malformed or huge."""
    lines: list[str] = []
    while len(lines) < _SMTP_REPLY_LINES:
        raw = reader.readline(_SMTP_LINE_LIMIT)
        if not raw:
            raise ConnectionError("the SMTP server closed the connection")
        if not raw.endswith(b"\n"):
            raise ValueError(f"SMTP reply line longer than {_SMTP_LINE_LIMIT} bytes")
        line = raw.rstrip(b"\r\n").decode("ascii", "replace")
        lines.append(line)
        if len(line) < 4 or line[3] != "-":
            if len(line) < 3 or not line[:3].isdigit():
                raise ValueError(f"not an SMTP reply: {line!r}")
            return lines
    raise ValueError(f"SMTP reply of more than {_SMTP_REPLY_LINES} lines")


def smtp_session(
    address: str,
    port: int = 25,
    commands: Iterable[str] = ("EHLO lab-probe.corp.example.test", "QUIT"),
    timeout: float = 2.0,
) -> SmtpTranscript:
    """Connect, read the greeting, send each command and read its reply (no pipelining).

    OSError (TimeoutError, ConnectionError) or ValueError when the server does not answer
    like an SMTP server; ``timeout`` applies to each read.
    """
    with socket.create_connection((address, port), timeout=timeout) as sock:
        client_address = str(sock.getsockname()[0])
        reader = sock.makefile("rb")
        try:
            banner = _smtp_reply(reader)
            replies = []
            for command in commands:
                sock.sendall(f"{command}\r\n".encode())
                replies.append(_smtp_reply(reader))
        finally:
            reader.close()
    return SmtpTranscript("\n".join(banner), replies, client_address)


def smtp_banner(address: str, port: int = 25, timeout: float = 0.5) -> str | None:
    """The 220 greeting of address:port (QUIT sent politely after it); None if there is none."""
    try:
        transcript = smtp_session(address, port, ("QUIT",), timeout=timeout)
    except (OSError, ValueError):
        return None
    return transcript.banner if transcript.banner.startswith("220") else None


# --- DNS --------------------------------------------------------------------------------------

DNS_TYPE_A = 1
DNS_TYPE_SOA = 6
DNS_TYPE_SRV = 33


def dns_query(name: str, rdtype: int, query_id: int) -> bytes:
    """A recursive DNS query for one (name, type) in class IN (RFC 1035 4.1)."""
    header = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)  # RD set, one question
    labels = b"".join(
        len(label).to_bytes(1, "big") + label.encode() for label in name.rstrip(".").split(".")
    )
    return header + labels + b"\x00" + struct.pack("!HH", rdtype, 1)


def dns_answer_count(
    address: str, name: str, rdtype: int, port: int = 53, timeout: float = 0.5
) -> int | None:
    """How many answers address:53 gives for (name, type) over UDP; None if no clean answer.

    "Clean" means our query id, the response bit, RCODE 0 (NOERROR).
    """
    query_id = secrets.randbelow(0x10000)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
            sock.send(dns_query(name, rdtype, query_id))
            reply = sock.recv(4096)
        except OSError:
            return None
    if len(reply) < 12:
        return None
    reply_id, flags, _, answers, _, _ = struct.unpack("!HHHHHH", reply[:12])
    if reply_id != query_id or not flags & 0x8000 or flags & 0x000F:
        return None
    return int(answers)


# --- Kerberos ---------------------------------------------------------------------------------

KDC_ERR_C_PRINCIPAL_UNKNOWN = 6


def _ber_int(value: int) -> bytes:
    return _ber(0x02, value.to_bytes((value.bit_length() + 8) // 8 or 1, "big", signed=True))


def _principal(name_type: int, *parts: str) -> bytes:
    strings = b"".join(_ber(0x1B, part.encode()) for part in parts)  # GeneralString
    return _ber(0x30, _ber(0xA0, _ber_int(name_type)) + _ber(0xA1, _ber(0x30, strings)))


def as_request(realm: str, client: str) -> bytes:
    """A credential-free AS-REQ for ``client@realm`` -> krbtgt/realm (RFC 4120 5.4.1)."""
    body = (
        _ber(0xA0, _ber(0x03, b"\x00\x00\x00\x00\x00"))  # kdc-options: none
        + _ber(0xA1, _principal(1, client))  # cname, NT-PRINCIPAL
        + _ber(0xA2, _ber(0x1B, realm.encode()))
        + _ber(0xA3, _principal(2, "krbtgt", realm))  # sname, NT-SRV-INST
        + _ber(0xA5, _ber(0x18, b"20370913024805Z"))  # till
        + _ber(0xA7, _ber_int(secrets.randbelow(2**31)))  # nonce
        + _ber(0xA8, _ber(0x30, b"".join(_ber_int(e) for e in (18, 17, 23))))  # etypes
    )
    request = _ber(0xA1, _ber_int(5)) + _ber(0xA2, _ber_int(10)) + _ber(0xA4, _ber(0x30, body))
    return _ber(0x6A, _ber(0x30, request))  # [APPLICATION 10] AS-REQ


def _generalized_time(text: str) -> float:
    stamp = time.strptime(text, "%Y%m%d%H%M%SZ")
    return float(calendar.timegm(stamp))


def parse_krb_error(data: bytes) -> tuple[int, float]:
    """(error-code, server time) of a KRB-ERROR (RFC 4120 5.9.1); ValueError if it is none."""
    tag, outer, _ = _read_ber(data, 0)
    if tag != 0x7E:  # [APPLICATION 30]
        raise ValueError(f"not a KRB-ERROR: tag 0x{tag:02x}")
    _, fields, _ = _read_ber(outer, 0)
    found: dict[int, bytes] = {}
    pos = 0
    while pos < len(fields):
        field_tag, value, pos = _read_ber(fields, pos)
        found[field_tag] = _read_ber(value, 0)[1]
    try:
        stime = _generalized_time(found[0xA4].decode())
        susec = int.from_bytes(found[0xA5], "big", signed=True)
        code = int.from_bytes(found[0xA6], "big", signed=True)
    except KeyError as exc:
        raise ValueError(f"KRB-ERROR without field [{exc.args[0] - 0xA0}]") from None
    return code, stime + susec / 1e6


def kdc_error(
    address: str, realm: str, *, transport: str = "udp", port: int = 88, timeout: float = 1.0
) -> tuple[int, float]:
    """Send an AS-REQ for a client that does not exist; (error-code, the KDC's clock).

    A KDC answers 6 (C_PRINCIPAL_UNKNOWN) with its own time in stime/susec: the cheapest way
    to read a KDC's clock without credentials. OSError when it does not answer.
    """
    request = as_request(realm, f"lab-probe-{secrets.token_hex(4)}")
    if transport == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.connect((address, port))
            sock.send(request)
            return parse_krb_error(sock.recv(65536))
    with socket.create_connection((address, port), timeout=timeout) as sock:
        sock.sendall(len(request).to_bytes(4, "big") + request)
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the KDC closed the connection")
            data += chunk
        return parse_krb_error(data[4:])


def kpasswd_answers(
    address: str, *, transport: str = "udp", port: int = 464, timeout: float = 1.0
) -> bool:
    """True when address:464 answers a junk kpasswd request with a KRB-ERROR (RFC 3244)."""
    ap_req = b"junk"
    request = struct.pack("!HHH", 6 + len(ap_req) + 1, 0xFF80, len(ap_req)) + ap_req + b"x"
    try:
        if transport == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(timeout)
                sock.connect((address, port))
                sock.send(request)
                reply = sock.recv(65536)
        else:
            with socket.create_connection((address, port), timeout=timeout) as sock:
                sock.sendall(len(request).to_bytes(4, "big") + request)
                reply = sock.recv(65536)[4:]
    except OSError:
        return False
    # version 1, an empty AP-REP, then the KRB-ERROR ([APPLICATION 30]).
    return len(reply) > 6 and reply[2:4] == b"\x00\x01" and reply[6] == 0x7E
