"""SMTP peers that misbehave, for tests of a client's deadlines and read limits.

    with HostileSmtpPeer("flood") as peer:          # 127.0.0.1, a free port
        probe(peer.address, peer.port)
        assert peer.wait_for_disconnect(timeout=2)  # the client hung up; it was not left open

Modes (each connection behaves the same way until the client closes or the peer stops):

* ``silent``: accepts, reads and discards, never sends a byte (no banner).
* ``flood``: sends ``220 `` and then ``flood_bytes`` (default 10 MiB) of ``x`` with no newline,
  as fast as the client reads, and then nothing more; the connection stays open.
* ``reset_at_ehlo``: sends Exchange's banner, then answers EHLO (or HELO) with a TCP reset
  (SO_LINGER 0, then close).
* ``endless_ehlo``: sends the banner, then answers EHLO with ``250-`` lines forever (as fast as
  the client reads); the final ``250 `` line never comes.
* ``stall_at_ehlo``: sends the banner, then never answers anything.

The server runs on its own event loop in a daemon thread, so it works from synchronous tests
and beside an asyncio test's loop alike. Any address in 127.0.0.0/8 can be bound without an
alias (``lo`` holds 127.0.0.1/8); a lab address with its port free works too.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Literal, get_args

HostileMode = Literal["silent", "flood", "reset_at_ehlo", "endless_ehlo", "stall_at_ehlo"]
HOSTILE_MODES: tuple[HostileMode, ...] = get_args(HostileMode)
FLOOD_BYTES = 10 * 1024 * 1024
_CHUNK = 64 * 1024
HOSTILE_BANNER = (
    "220 hostile.corp.example.test Microsoft ESMTP MAIL Service ready at "
    "Sun, 29 Nov 2026 11:40:05 +0000"
)


class HostileSmtpPeer:
    """A TCP server on ``address:port`` (0: a free port) that misbehaves as ``mode`` says.

    Use as a context manager: listening once ``__enter__`` returns (bind errors raise there),
    every connection closed and the thread gone once ``__exit__`` returns.

    Counters, readable at any time: ``accepted`` connections, ``open_connections``,
    ``bytes_sent`` (over all connections), ``received`` (the lines clients sent, CRLF kept).
    """

    def __init__(
        self,
        mode: HostileMode,
        address: str = "127.0.0.1",
        port: int = 0,
        *,
        flood_bytes: int = FLOOD_BYTES,
        banner: str = HOSTILE_BANNER,
    ) -> None:
        if mode not in HOSTILE_MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(HOSTILE_MODES)}")
        self.mode = mode
        self.address = address
        self.port = port
        self.flood_bytes = flood_bytes
        self.banner = banner
        self.accepted = 0
        self.open_connections = 0
        self.bytes_sent = 0
        self.received: list[bytes] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> tuple[str, int]:
        return (self.address, self.port)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> HostileSmtpPeer:
        if self._thread is not None:
            raise RuntimeError("this peer has been started already")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(ready))
            except BaseException as exc:
                failure.append(exc)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"hostile-smtp-{self.mode}", daemon=True)
        self._thread.start()
        ready.wait(10.0)
        if failure:
            self._thread.join(5.0)
            raise failure[0]
        if not ready.is_set():
            raise RuntimeError(f"hostile SMTP peer on {self.address}:{self.port} did not start")
        return self

    def stop(self) -> None:
        """Close the listener and every connection; safe to repeat."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        if self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop may have closed meanwhile
                loop.call_soon_threadsafe(self._stop.set)
        thread.join(10.0)
        if thread.is_alive():
            raise RuntimeError(f"hostile SMTP peer on {self.address}:{self.port} did not stop")

    def __enter__(self) -> HostileSmtpPeer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- what tests wait for --------------------------------------------------------------------

    def wait_for(self, condition: Callable[[HostileSmtpPeer], bool], timeout: float) -> bool:
        """Wait until ``condition(self)`` holds (re-checked on every connection change)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.05))
        return True

    def wait_for_disconnect(self, timeout: float, *, connections: int = 1) -> bool:
        """True once at least ``connections`` were accepted and none is open any more."""
        return self.wait_for(
            lambda p: p.accepted >= connections and p.open_connections == 0, timeout
        )

    # --- the server -----------------------------------------------------------------------------

    async def _serve(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(
            self._connection, host=self.address, port=self.port, reuse_address=True, limit=65536
        )
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self._changed:
            self.accepted += 1
            self.open_connections += 1
            self._changed.notify_all()
        try:
            await getattr(self, f"_{self.mode}")(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            self._tasks.discard(task)
            with self._changed:
                self.open_connections -= 1
                self._changed.notify_all()

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        with self._lock:
            self.bytes_sent += len(data)

    async def _read_line(self, reader: asyncio.StreamReader) -> bytes:
        """The next line, or b"" at end of file; IncompleteReadError/LimitOverrunError pass."""
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return b""
        with self._lock:
            self.received.append(line)
        return line

    async def _until_closed(self, reader: asyncio.StreamReader) -> None:
        while await reader.read(65536):
            pass

    async def _until_ehlo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Banner, then read until EHLO/HELO (True) or the end (False); other verbs get 500."""
        await self._send(writer, f"{self.banner}\r\n".encode())
        while line := await self._read_line(reader):
            if line[:4].upper() in (b"EHLO", b"HELO"):
                return True
            await self._send(writer, b"500 5.3.3 Unrecognized command\r\n")
        return False

    async def _silent(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._until_closed(reader)

    async def _flood(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        left = self.flood_bytes
        first = b"220 "
        while left > 0:
            chunk = (first + b"x" * (_CHUNK - len(first)))[:left]
            first = b""
            await self._send(writer, chunk)
            left -= len(chunk)
        await self._until_closed(reader)

    async def _reset_at_ehlo(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if await self._until_ehlo(reader, writer):
            sock = writer.get_extra_info("socket")
            # Linger on, timeout 0: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

    async def _endless_ehlo(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if not await self._until_ehlo(reader, writer):
            return
        await self._send(writer, b"250-hostile.corp.example.test Hello [127.0.0.1]\r\n")
        number = 0
        while True:
            batch = b"".join(b"250-X-ENDLESS-%08d\r\n" % (number + i) for i in range(1024))
            number += 1024
            await self._send(writer, batch)

    async def _stall_at_ehlo(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if await self._until_ehlo(reader, writer):
            await self._until_closed(reader)
