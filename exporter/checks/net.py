"""One request, one reply, over UDP or TCP, bounded in time and size; failures become reasons.

Reasons: ``timeout`` (nothing by the deadline), ``refused`` (TCP reset, or ICMP port
unreachable on a connected UDP socket), ``unreachable`` (no route, host down) and
``protocol_error`` (a connection closed early or a reply larger than allowed).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import time
from dataclasses import dataclass

from .base import CheckError

__all__ = ["Exchange", "os_error", "tcp_exchange", "udp_exchange"]

_UNREACHABLE = {
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EHOSTDOWN,
    errno.EADDRNOTAVAIL,
    errno.EACCES,
    errno.EPERM,
}
MAX_DATAGRAM = 65535


@dataclass(frozen=True, slots=True)
class Exchange:
    reply: bytes
    sent_at: float  # Unix time just before sending
    received_at: float  # Unix time the whole reply was in

    @property
    def rtt(self) -> float:
        return max(0.0, self.received_at - self.sent_at)


def os_error(exc: OSError, what: str) -> CheckError:
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return CheckError("refused", f"{what}: connection refused")
    if exc.errno in _UNREACHABLE:
        return CheckError("unreachable", f"{what}: {exc.strerror}")
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return CheckError("protocol_error", f"{what}: connection reset by the peer")
    return CheckError("unreachable", f"{what}: {exc.strerror or exc}")


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


async def udp_exchange(address: str, port: int, request: bytes, deadline: float | None) -> Exchange:
    """Send one datagram on a connected socket and return the first datagram that comes back.

    With ``deadline`` None the caller bounds the wait (one timer for many exchanges is cheaper).
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(_family(address), socket.SOCK_DGRAM)
    sock.setblocking(False)
    future: asyncio.Future[Exchange] = loop.create_future()
    sent_at = 0.0

    def on_readable() -> None:
        if future.done():
            return
        try:
            data = sock.recv(MAX_DATAGRAM)
        except BlockingIOError:
            return
        except OSError as exc:
            future.set_exception(os_error(exc, "udp"))
            return
        future.set_result(Exchange(data, sent_at, time.time()))

    registered = False
    try:
        try:
            sock.connect((address, port))
            loop.add_reader(sock.fileno(), on_readable)
            registered = True
            sent_at = time.time()
            sock.send(request)
        except OSError as exc:
            raise os_error(exc, "udp") from None
        try:
            async with asyncio.timeout_at(deadline):
                return await future
        except TimeoutError:
            raise CheckError("timeout", "no reply before the deadline") from None
    finally:
        if registered:
            loop.remove_reader(sock.fileno())
        sock.close()


async def tcp_exchange(
    address: str, port: int, request: bytes, deadline: float | None, max_reply: int = 65536
) -> Exchange:
    """Connect, send ``request``, read one reply framed by a 4-byte big-endian length.

    With ``deadline`` None the caller bounds the wait.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(_family(address), socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout_at(deadline):
            try:
                await loop.sock_connect(sock, (address, port))
            except OSError as exc:
                raise os_error(exc, "tcp connect") from None
            sent_at = time.time()
            try:
                await loop.sock_sendall(sock, request)
                body = await _read_framed(loop, sock, max_reply)
            except OSError as exc:
                raise os_error(exc, "tcp") from None
            return Exchange(body, sent_at, time.time())
    except TimeoutError:
        raise CheckError("timeout", "no complete reply before the deadline") from None
    finally:
        sock.close()


async def _read_framed(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, max_reply: int
) -> bytes:
    """The 4-byte length, then that many bytes; a small reply usually comes in one read."""
    data = bytearray()
    expected: int | None = None
    while expected is None or len(data) < expected:
        chunk = await loop.sock_recv(
            sock, 65536 if expected is None else min(expected - len(data), 65536)
        )
        if not chunk:
            raise CheckError(
                "protocol_error", f"connection closed after {len(data)} of {expected or '?'} bytes"
            )
        data += chunk
        if expected is None and len(data) >= 4:
            (length,) = struct.unpack_from("!I", data)
            if length > max_reply:
                raise CheckError(
                    "protocol_error", f"reply declares {length} bytes, more than {max_reply}"
                )
            expected = 4 + length
    return bytes(data[4:expected])
