"""Loopback aliases, the kernel's socket tables, and the probes that tell a service is ready.

The probes speak just enough of each protocol to prove the service answers, with no client
library: the lab must be able to say "Samba is up" before any of the project's code runs.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

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
