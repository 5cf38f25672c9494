"""A Kerberos responder for tests: KRB-ERRORs like a KDC's, or broken ones on purpose.

Real Samba answers the good cases in the lab; this one sends what Samba never would (no stime,
truncated DER, 70 kB of junk) so the probe's decoding can be tested against it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from pyasn1.codec.der import encoder
from pyasn1.type import namedtype, univ

from exporter.protocols import krb5

Behaviour = Literal[
    "error", "no_susec", "no_stime", "garbage", "truncated", "huge", "silent", "too_big", "kpasswd"
]


class KrbErrorWithoutStime(univ.Sequence):
    """The KRB-ERROR schema with stime optional, to build the reply RFC 4120 forbids."""

    tagSet = krb5.KrbError.tagSet
    componentType = namedtype.NamedTypes(
        *(
            namedtype.OptionalNamedType(t.name, t.asn1Object) if t.name == "stime" else t
            for t in krb5.KrbError.componentType.namedTypes
        )
    )


def krb_error(
    code: int,
    offset: float = 0.0,
    *,
    susec: bool = True,
    stime: bool = True,
    at: float | None = None,
) -> bytes:
    """A KRB-ERROR as a KDC sends it, its clock ``offset`` seconds ahead (of ``at``, default now)."""
    message = krb5.KrbError() if stime else KrbErrorWithoutStime()
    message["pvno"] = 5
    message["msg-type"] = 30
    now = datetime.fromtimestamp((time.time() if at is None else at) + offset, UTC)
    if stime:
        message["stime"] = now.strftime("%Y%m%d%H%M%SZ")
    if susec:
        message["susec"] = now.microsecond
    message["error-code"] = code
    message["realm"] = "CORP.EXAMPLE.TEST"
    sname = message["sname"]
    sname["name-type"] = 2
    sname["name-string"][0] = "krbtgt"
    sname["name-string"][1] = "CORP.EXAMPLE.TEST"
    encoded: bytes = encoder.encode(message)
    return encoded


def reply_for(behaviour: Behaviour, offset: float) -> bytes | None:
    if behaviour == "silent":
        return None
    if behaviour == "garbage":
        return os.urandom(64)
    if behaviour == "huge":
        return b"\x7e" + b"\x00" * 70_000
    if behaviour == "truncated":
        return krb_error(6, offset)[:-9]
    if behaviour == "no_stime":
        return krb_error(6, offset, stime=False)
    if behaviour == "no_susec":
        return krb_error(6, offset, susec=False)
    if behaviour == "too_big":
        return krb_error(52, offset)
    if behaviour == "kpasswd":
        error = krb_error(2, offset)
        return struct.pack("!HHH", 6 + len(error), 1, 0) + error
    return krb_error(6, offset)


@dataclass
class _Udp(asyncio.DatagramProtocol):
    behaviour: Behaviour
    offset: float
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = reply_for(self.behaviour, self.offset)
        if reply is not None and self.transport is not None:
            # A datagram cannot exceed 65507 bytes; the huge case is cut to the largest one.
            self.transport.sendto(reply[:65507], addr)


@dataclass
class KdcPeer:
    """Serves one behaviour per port on UDP and TCP at ``host``."""

    host: str = "127.0.0.1"
    closers: list[asyncio.AbstractServer | asyncio.BaseTransport] = field(default_factory=list)

    async def serve(self, udp: Behaviour | None, tcp: Behaviour | None, offset: float = 0.0) -> int:
        """One port number for both transports, as a KDC has; None leaves that one closed."""
        for _ in range(20):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((self.host, 0))  # a number free on UDP; closed again at once
                port = int(probe.getsockname()[1])
            opened = len(self.closers)
            try:
                if tcp is not None:
                    await self._tcp(tcp, offset, port)
                if udp is not None:
                    await self._udp(udp, offset, port)
            except OSError:  # taken on TCP meanwhile: undo this attempt only, try another
                for closer in self.closers[opened:]:
                    closer.close()
                del self.closers[opened:]
                continue
            return port
        raise RuntimeError("no port free on both UDP and TCP")

    async def _udp(self, behaviour: Behaviour, offset: float, port: int) -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(behaviour, offset), local_addr=(self.host, port)
        )
        self.closers.append(transport)
        return int(transport.get_extra_info("sockname")[1])

    async def _tcp(self, behaviour: Behaviour, offset: float, port: int) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                (length,) = struct.unpack("!I", await reader.readexactly(4))
                await reader.readexactly(length)
                reply = reply_for(behaviour, offset)
                if reply is None:
                    await asyncio.sleep(30)
                    return
                writer.write(struct.pack("!I", len(reply)) + reply)
                await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, self.host, port)
        self.closers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def close(self) -> None:
        for closer in self.closers:
            closer.close()
