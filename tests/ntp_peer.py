"""A small NTP server for tests and benchmarks: one asyncio responder, any number of ports.

It answers like a real server (mode 4, echoing the client's transmit timestamp) or misbehaves
on purpose, so the exporter's NTP client can be tested against replies chrony never sends.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

NTP_EPOCH_OFFSET = 2208988800

Behaviour = Literal[
    "good",
    "noise_first",
    "short",
    "wrong_mode",
    "wrong_origin",
    "random",
    "silent",
    "kiss",
    "unsynchronised",
]


def ntp_timestamp(unix: float) -> bytes:
    ntp = unix + NTP_EPOCH_OFFSET
    seconds = int(ntp)
    return struct.pack("!II", seconds, int((ntp - seconds) * 2**32) & 0xFFFFFFFF)


def reply_to(request: bytes, offset: float, behaviour: Behaviour) -> bytes | None:
    if behaviour == "silent" or len(request) < 48:
        return None
    if behaviour == "random":
        return os.urandom(48)
    if behaviour == "short":
        return b"\x24" + os.urandom(20)
    now = time.time() + offset
    mode = 3 if behaviour == "wrong_mode" else 4
    leap, stratum, ref_id = 0, 2, b"\x7f\x00\x00\x01"
    if behaviour == "kiss":
        stratum, ref_id = 0, b"RATE"
    elif behaviour == "unsynchronised":
        leap, stratum, ref_id = 3, 0, b"\0\0\0\0"
    origin = os.urandom(8) if behaviour == "wrong_origin" else request[40:48]
    header = struct.pack("!BBbb", leap << 6 | 4 << 3 | mode, stratum, 6, -20)
    return (
        header
        + struct.pack("!II", 0, 0)
        + ref_id
        + ntp_timestamp(now - 10)
        + origin
        + ntp_timestamp(now) * 2
    )


@dataclass
class _Protocol(asyncio.DatagramProtocol):
    offset: float
    behaviour: Behaviour
    transport: asyncio.DatagramTransport | None = None
    requests: int = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.requests += 1
        if self.transport is None:
            return
        if self.behaviour == "noise_first":
            # A stale or forged datagram arriving before the real answer must be skipped.
            self.transport.sendto(reply_to(data, 0.0, "wrong_origin") or b"", addr)
            self.transport.sendto(b"\x00" * 7, addr)
        reply = reply_to(
            data, self.offset, "good" if self.behaviour == "noise_first" else self.behaviour
        )
        if reply is not None:
            self.transport.sendto(reply, addr)


@dataclass
class NtpPeer:
    """Serves NTP on ``host`` at every port in ``ports`` until closed."""

    host: str = "127.0.0.1"
    protocols: dict[int, _Protocol] = field(default_factory=dict)

    async def serve(self, offset: float = 0.0, behaviour: Behaviour = "good", port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Protocol(offset, behaviour), local_addr=(self.host, port)
        )
        bound = transport.get_extra_info("sockname")[1]
        self.protocols[bound] = protocol
        return int(bound)

    async def serve_many(self, count: int, offset: float = 0.0) -> list[int]:
        return [await self.serve(offset) for _ in range(count)]

    def requests(self, ports: Iterable[int] | None = None) -> int:
        return sum(self.protocols[p].requests for p in (ports or self.protocols))

    def close(self) -> None:
        for protocol in self.protocols.values():
            if protocol.transport is not None:
                protocol.transport.close()
        self.protocols.clear()


def serve_blocking(sockets: list[socket.socket], stop: threading.Event, offset: float = 0.0) -> int:
    """Answer NTP on ready-bound sockets with a bare epoll loop until ``stop`` is set.

    For benchmarks: the asyncio responder above spends more CPU per datagram than the
    client under test, which would make the benchmark measure the responder.
    """
    poller = select.epoll()
    by_fd = {s.fileno(): s for s in sockets}
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    answered = 0
    try:
        while not stop.is_set():
            for fd, _events in poller.poll(0.05):
                sock = by_fd[fd]
                while True:
                    try:
                        data, addr = sock.recvfrom(512)
                    except BlockingIOError:
                        break
                    reply = reply_to(data, offset, "good")
                    if reply is not None:
                        sock.sendto(reply, addr)
                        answered += 1
    finally:
        poller.close()
    return answered
