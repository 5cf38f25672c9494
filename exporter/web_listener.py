"""The listening sockets: TLS chosen per connection, a handshake timeout, a connection cap.

aiohttp's TCPSite fixes one SSL context at start and has no TLS handshake timeout. Here each
accepted connection gets the context of the web configuration in force at that moment, so new
certificates, client CAs and TLS versions apply to new connections after a reload while open
connections keep theirs; plain HTTP to a TLS listener fails its handshake and is closed.
Slow clients are bounded three ways: the TLS handshake must finish within ``read_timeout``,
aiohttp's keep-alive timer (``keepalive_timeout`` = ``read_timeout``, armed when a connection
opens and after each response) closes a connection that has not sent a complete request head
by then, and at most ``max_connections`` are open at once (more are closed at accept).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web_server

__all__ = ["Listener", "WebLimits"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WebLimits:
    # Handshake, request head, and idle keep-alive, each at most this long.
    read_timeout: float = 30.0
    max_connections: int = 512
    # aiohttp's own defaults, spelled out: a longer request line or header is answered 400.
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 128

    def runner_args(self) -> dict[str, Any]:
        """Keyword arguments for aiohttp's AppRunner (passed on to each RequestHandler)."""
        return {
            "keepalive_timeout": self.read_timeout,
            "max_line_size": self.max_line_size,
            "max_field_size": self.max_field_size,
            "max_headers": self.max_headers,
        }


def _listening_sockets(host: str | None, port: int, backlog: int) -> list[socket.socket]:
    if host is None:  # every interface, IPv4 and IPv6 where the host has it
        if socket.has_dualstack_ipv6():
            return [
                socket.create_server(
                    ("", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=backlog
                )
            ]
        return [socket.create_server(("", port), backlog=backlog)]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, _type, _proto, _name, address in dict.fromkeys(
            (i[0], i[1], i[2], i[3], i[4][:2]) for i in infos
        ):
            sockets.append(socket.create_server(address, family=family, backlog=backlog))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Listener:
    def __init__(
        self,
        server: web_server.Server,
        host: str | None,
        port: int,
        tls: Callable[[], ssl.SSLContext | None],
        limits: WebLimits,
        backlog: int = 128,
    ) -> None:
        self._server, self._host, self._port = server, host, port
        self._tls, self._limits, self._backlog = tls, limits, backlog
        self._sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._handshaking = 0

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._sockets[0].getsockname()[1]) if self._sockets else self._port

    async def start(self) -> None:
        self._sockets = _listening_sockets(self._host, self._port, self._backlog)
        for sock in self._sockets:
            sock.setblocking(False)
            self._spawn(self._accept(sock))

    async def stop(self) -> None:
        """Stop accepting and drop connections still in their handshake; aiohttp's runner
        cleanup ends the established ones."""
        for sock in self._sockets:
            sock.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                if sock.fileno() == -1:
                    return
                # Out of file descriptors, most likely: wait a little instead of spinning.
                log.warning("accepting a connection failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            open_now = len(self._server.connections) + self._handshaking
            if open_now >= self._limits.max_connections:
                log.warning("refused a connection: %d are open (--web.max-connections)", open_now)
                conn.close()
                continue
            self._handshaking += 1
            self._spawn(self._connect(conn, address))

    async def _connect(self, conn: socket.socket, address: object) -> None:
        loop = asyncio.get_running_loop()
        context = self._tls()
        try:
            await loop.connect_accepted_socket(
                self._server,
                conn,
                ssl=context,
                ssl_handshake_timeout=self._limits.read_timeout if context else None,
            )
        except (TimeoutError, OSError) as exc:
            # A failed handshake: plain HTTP to the TLS port, no or a wrong client certificate,
            # a TLS version below min_version, or a client too slow. The socket is closed.
            log.debug("TLS handshake with %s failed: %s", address, exc)
            conn.close()
        finally:
            self._handshaking -= 1
