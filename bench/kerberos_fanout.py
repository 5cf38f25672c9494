"""Benchmark: one scrape's Kerberos fan-out (N KDCs x 4 probes), next to blackbox_exporter.

N KDC responders run on loopback in a separate process (so their CPU is not counted as anyone's):
an epoll loop listening on 88/udp, 88/tcp, 464/udp and 464/tcp of N addresses in
127.0.30.0/23, answering every request with a real, precomputed KRB-ERROR (kpasswd-framed on 464).
Our side is the exporter's real scrape path (``run_scrape`` with the Kerberos check, then the
exposition of every series). Beside it, in the same run and interleaved, the Debian
``prometheus-blackbox-exporter`` does what it can do against the same KDCs: a TCP connect,
driven over HTTP like Prometheus would, 50 probes at a time. Prints wall time, CPU per probe
for both and the ratio.

    python bench/kerberos_fanout.py [--addresses 500] [--rounds 3] [--limits 2000,256] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import errno
import multiprocessing
import os
import pstats
import resource
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.exposition import generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from processes import die_with_parent

from exporter.checks.kerberos import SPEC as KERBEROS
from exporter.checks.kerberos import KerberosResult
from exporter.config import Settings
from exporter.inventory import build_inventory
from exporter.metrics import ReloadStatus, ScrapeCollector
from exporter.protocols.krb5 import frame_tcp
from exporter.scrape import run_scrape
from tests.integration.exporter_process import free_port
from tests.kdc_peer import reply_for

KDC, KPASSWD = 88, 464
# 127.0.30.0/24 and 127.0.31.0/24 without .0 and .255: loopback addresses no one else here uses.
# Linux treats all of 127.0.0.0/8 as local, so they bind without adding aliases to lo.
ADDRESS_POOL = [f"127.0.{30 + i // 254}.{i % 254 + 1}" for i in range(2 * 254)]
BLACKBOX_PACKAGE = "prometheus-blackbox-exporter"
BLACKBOX_CONCURRENCY = 50
BUDGET = 5.0


@dataclass(frozen=True)
class Endpoint:
    address: str
    kdc_port: int
    kpasswd_port: int


# --- the responders, in their own process ----------------------------------------------------


def _raise_fd_limit() -> None:
    # 2000 listeners here, 2000 client sockets at once on the exporter's side: more than 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _bind_pair(address: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A TCP listener and a UDP socket on one port number, as a KDC has; port 0: any free one."""
    for _ in range(20):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # Server-side TIME_WAITs of a previous run must not block the fixed ports 88 and 464.
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((address, port))
            tcp.listen(512)
            udp.bind((address, tcp.getsockname()[1]))
        except OSError as exc:
            tcp.close()
            udp.close()
            if port == 0 and exc.errno == errno.EADDRINUSE:
                continue  # the number the kernel picked for TCP is taken on UDP: another one
            raise
        tcp.setblocking(False)
        udp.setblocking(False)
        return tcp, udp
    raise OSError(errno.EADDRINUSE, f"no port free on both UDP and TCP at {address}")


def _bind_all(count: int) -> tuple[list[Endpoint], list[tuple[socket.socket, int]], str]:
    """Sockets with the service port (88/464) each answers for; a note when not the real ports."""
    bound: list[tuple[socket.socket, int]] = []
    endpoints: list[Endpoint] = []
    if count <= len(ADDRESS_POOL):
        try:
            for address in ADDRESS_POOL[:count]:
                for service in (KDC, KPASSWD):
                    tcp, udp = _bind_pair(address, service)
                    bound += [(tcp, service), (udp, service)]
                endpoints.append(Endpoint(address, KDC, KPASSWD))
            return endpoints, bound, ""
        except OSError as exc:
            failure = f"cannot bind the real ports ({exc.strerror or exc})"
            for sock, _ in bound:
                sock.close()
            bound, endpoints = [], []
    else:
        failure = f"{count} addresses do not fit in 127.0.30.0/23"
    for index in range(count):
        address = ADDRESS_POOL[index % len(ADDRESS_POOL)]
        ports = []
        for service in (KDC, KPASSWD):
            tcp, udp = _bind_pair(address, 0)
            bound += [(tcp, service), (udp, service)]
            ports.append(tcp.getsockname()[1])
        endpoints.append(Endpoint(address, ports[0], ports[1]))
    note = f"{failure}: kernel-chosen ports instead, through the servers' `ports:` overrides"
    return endpoints, bound, note


@dataclass(slots=True)
class _Connection:
    sock: socket.socket
    service: int
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytes = b""
    writing: bool = False  # registered for EPOLLOUT: a reply did not fit in the send buffer


class _Responder:
    """Epoll, non-blocking sockets and precomputed replies: as little CPU per request as Python
    allows, so the responders never become what the benchmark measures."""

    def __init__(self, bound: list[tuple[socket.socket, int]], pipe: Connection) -> None:
        self.epoll = select.epoll()
        self.pipe = pipe
        self.udp: dict[int, tuple[socket.socket, int]] = {}
        self.listeners: dict[int, tuple[socket.socket, int]] = {}
        self.connections: dict[int, _Connection] = {}
        self.replies: dict[int, bytes] = {}
        self.framed: dict[int, bytes] = {}
        self.refresh()
        for sock, service in bound:
            table = self.udp if sock.type == socket.SOCK_DGRAM else self.listeners
            table[sock.fileno()] = (sock, service)
            self.epoll.register(sock.fileno(), select.EPOLLIN)
        self.epoll.register(pipe.fileno(), select.EPOLLIN)

    def refresh(self) -> None:
        # stime moves on with the clock, so the exporter's clock readings stay within a second.
        kdc = reply_for("error", 0.0)  # KDC_ERR_C_PRINCIPAL_UNKNOWN, what a KDC says to the probe
        kpasswd = reply_for("kpasswd", 0.0)
        assert kdc is not None and kpasswd is not None
        self.replies = {KDC: kdc, KPASSWD: kpasswd}
        self.framed = {service: frame_tcp(reply) for service, reply in self.replies.items()}

    def run(self) -> None:
        next_refresh = time.monotonic() + 1.0
        pipe_fd = self.pipe.fileno()
        while True:
            timeout = max(0.0, next_refresh - time.monotonic())
            for fd, mask in self.epoll.poll(timeout, 1024):
                if fd == pipe_fd:
                    return  # told to stop, or the bench is gone (EOF)
                if fd in self.udp:
                    self._datagrams(*self.udp[fd])
                elif fd in self.listeners:
                    self._accept(*self.listeners[fd])
                elif (connection := self.connections.get(fd)) is not None:
                    self._stream(connection, mask)
            if time.monotonic() >= next_refresh:
                self.refresh()
                next_refresh = time.monotonic() + 1.0

    def _datagrams(self, sock: socket.socket, service: int) -> None:
        reply = self.replies[service]
        while True:
            try:
                _, peer = sock.recvfrom(65535)
            except BlockingIOError:
                return
            except OSError:
                continue  # an ICMP error queued on the socket: the next datagram may be fine
            with contextlib.suppress(OSError):
                sock.sendto(reply, peer)

    def _accept(self, listener: socket.socket, service: int) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:  # none left, or one reset before we got to it
                return
            sock.setblocking(False)
            self.connections[sock.fileno()] = _Connection(sock, service)
            self.epoll.register(sock.fileno(), select.EPOLLIN)

    def _stream(self, connection: _Connection, mask: int) -> None:
        if mask & select.EPOLLOUT:
            self._flush(connection)
        if not mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            return
        try:
            data = connection.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(connection)  # the client is done (blackbox's connect-only probe too)
            return
        connection.inbox += data
        # Whole requests only, as a KDC: the 4-byte length, then that many bytes.
        while len(connection.inbox) >= 4:
            (length,) = struct.unpack_from("!I", connection.inbox)
            if length > 1 << 20:
                self._close(connection)
                return
            if len(connection.inbox) < 4 + length:
                break
            del connection.inbox[: 4 + length]
            connection.outbox += self.framed[connection.service]
        if connection.outbox:
            self._flush(connection)

    def _flush(self, connection: _Connection) -> None:
        try:
            sent = connection.sock.send(connection.outbox)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(connection)
            return
        connection.outbox = connection.outbox[sent:]
        # The connection stays open after the reply, as a KDC's does: the client closes first.
        writing = bool(connection.outbox)
        if writing != connection.writing:
            connection.writing = writing
            events = select.EPOLLIN | (select.EPOLLOUT if writing else 0)
            self.epoll.modify(connection.sock.fileno(), events)

    def _close(self, connection: _Connection) -> None:
        fd = connection.sock.fileno()
        self.connections.pop(fd, None)
        with contextlib.suppress(OSError):
            self.epoll.unregister(fd)
        connection.sock.close()


def _responders(count: int, pipe: Connection) -> None:
    try:
        try:
            _raise_fd_limit()
            endpoints, bound, note = _bind_all(count)
        except Exception as exc:
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
            return
        pipe.send(("ready", [(e.address, e.kdc_port, e.kpasswd_port) for e in endpoints], note))
    except BrokenPipeError:
        return  # the bench was interrupted while we started: nobody to serve
    _Responder(bound, pipe).run()


@contextlib.contextmanager
def responders(count: int) -> Iterator[tuple[list[Endpoint], str]]:
    # spawn, not fork: the child holds only its end of the pipe, so it sees EOF if we die.
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_responders, args=(count, child), daemon=True)
    # Ctrl-C reaches the whole process group, but the bench stops the responders itself, after
    # its own cleanup. An ignored signal stays ignored across exec, so the child starts immune.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    child.close()
    try:
        if not parent.poll(60):
            raise RuntimeError("the responders did not start within 60 s")
        message = parent.recv()
        if message[0] != "ready":
            raise RuntimeError(f"the responders failed: {message[1]}")
        yield [Endpoint(*e) for e in message[1]], message[2]
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        parent.close()
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()


# --- blackbox_exporter, in its own process ---------------------------------------------------


class Blackbox:
    """A private blackbox_exporter with one module, ``tcp_connect``, on a free loopback port."""

    CONFIG = "modules:\n  tcp_connect:\n    prober: tcp\n    timeout: 5s\n"

    def __init__(self, binary: str, workdir: Path) -> None:
        config = workdir / "blackbox.yml"
        config.write_text(self.CONFIG)
        self.log = (workdir / "blackbox.log").open("w+b")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # out of Ctrl-C's reach: we stop it ourselves, in order
            preexec_fn=die_with_parent,
        )
        self.ticks = os.sysconf("SC_CLK_TCK")

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + 15.0
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.url}/-/healthy") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)
        self.log.seek(0)
        output = self.log.read().decode(errors="replace").strip()
        raise RuntimeError(f"blackbox_exporter did not come up on {self.url}:\n{output}")

    def cpu_seconds(self) -> float:
        """utime + stime of every thread of the process so far (10 ms resolution at 100 Hz)."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat.rpartition(")")[2].split()  # the command name may hold spaces
        return (int(fields[11]) + int(fields[12])) / self.ticks

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


# --- the two sides ---------------------------------------------------------------------------


@dataclass
class Measure:
    wall: float
    cpu: float
    answered: int
    # The exporter's full /metrics work: the probes plus the exposition of every series.
    full_wall: float = 0.0
    full_cpu: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)


def _settings(endpoints: list[Endpoint], limit: int) -> Settings:
    def entry(index: int, endpoint: Endpoint) -> dict[str, Any]:
        ports = {}
        if endpoint.kdc_port != KDC or endpoint.kpasswd_port != KPASSWD:
            ports = {"kerberos": endpoint.kdc_port, "kpasswd": endpoint.kpasswd_port}
        return {"name": f"dc{index}.corp.example.test", "address": endpoint.address, "ports": ports}

    return Settings.model_validate(
        {
            "realm": "corp.example.test",
            "checks": {"clock": {"enabled": False}, "kerberos": {"enabled": True}},
            "scrape": {"max_concurrency": limit},
            "domain_controllers": {"static": [entry(i, e) for i, e in enumerate(endpoints)]},
        }
    )


async def _exporter_scrape(settings: Settings) -> Measure:
    inventory = await build_inventory(settings)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = await run_scrape(settings, inventory, BUDGET, [KERBEROS.erased()])
    wall1, cpu1 = time.perf_counter(), time.process_time()
    generate_latest(ScrapeCollector(result, settings, inventory, ReloadStatus(True, 0)))
    wall2, cpu2 = time.perf_counter(), time.process_time()
    answered, failures = 0, Counter[str]()
    for run in result.runs["kerberos"]:
        if not isinstance(run.outcome, KerberosResult):
            failures[f"check {run.outcome.reason}"] += 1
            continue
        for port in run.outcome.ports:
            answered += port.up
            if not port.up:
                failures[f"{port.port}/{port.transport} {port.reason}"] += 1
    return Measure(wall1 - wall0, cpu1 - cpu0, answered, wall2 - wall0, cpu2 - cpu0, failures)


def _blackbox_targets(endpoints: list[Endpoint]) -> list[str]:
    # The four probes of a KDC over TCP: 88/udp and 464/udp become a second connect to the TCP
    # port. Two passes rather than doubled neighbours, so a port is never hit twice at once.
    one_pass = [f"{e.address}:{port}" for e in endpoints for port in (e.kdc_port, e.kpasswd_port)]
    return one_pass + one_pass


def _probe_succeeded(body: str) -> bool:
    return any(line.strip() == "probe_success 1" for line in body.splitlines())


async def _blackbox_round(blackbox: Blackbox, targets: list[str]) -> Measure:
    limit = asyncio.Semaphore(BLACKBOX_CONCURRENCY)
    connector = aiohttp.TCPConnector(limit=BLACKBOX_CONCURRENCY)
    # As Prometheus does: keep-alive connections and the scrape timeout in a header.
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": "10"}
    failures = Counter[str]()
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def probe(target: str) -> bool:
            async with limit:
                try:
                    async with session.get(
                        f"{blackbox.url}/probe",
                        params={"module": "tcp_connect", "target": target},
                    ) as response:
                        body = await response.text()
                except aiohttp.ClientError as exc:
                    failures[f"http {type(exc).__name__}"] += 1
                    return False
            if response.status != 200 or not _probe_succeeded(body):
                failures[f"status {response.status}, probe_success not 1"] += 1
                return False
            return True

        wall0, cpu0 = time.perf_counter(), blackbox.cpu_seconds()
        results = await asyncio.gather(*(probe(t) for t in targets))
        wall1, cpu1 = time.perf_counter(), blackbox.cpu_seconds()
    answered = sum(results)
    return Measure(wall1 - wall0, cpu1 - cpu0, answered, wall1 - wall0, cpu1 - cpu0, failures)


def _median(values: list[Measure]) -> Measure:
    failures: Counter[str] = Counter()
    for m in values:
        failures.update(m.failures)
    return Measure(
        statistics.median(m.wall for m in values),
        statistics.median(m.cpu for m in values),
        min(m.answered for m in values),
        statistics.median(m.full_wall for m in values),
        statistics.median(m.full_cpu for m in values),
        failures,
    )


def _profile(settings: Settings, probes: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(_exporter_scrape(settings))
    profiler.disable()
    print(f"\ncProfile of one scrape ({probes} probes, profiler overhead included):")
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(25)


def _warn(side: str, measure: Measure, expected: int) -> None:
    if measure.answered == expected:
        return
    reasons = ", ".join(f"{reason} x{n}" for reason, n in measure.failures.most_common(5))
    print(f"  warning: {side}: {measure.answered}/{expected} probes succeeded ({reasons})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--addresses", type=int, default=500, help="KDCs (default 500)")
    parser.add_argument("--rounds", type=int, default=3, help="median of this many (default 3)")
    parser.add_argument(
        "--limits", default="2000,256", help="scrape.max_concurrency values (default 2000,256)"
    )
    parser.add_argument("--profile", action="store_true", help="then cProfile one scrape")
    args = parser.parse_args()
    limits = [int(v) for v in args.limits.split(",")]
    # SIGTERM ends the bench through the same finally blocks as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _raise_fd_limit()
    try:
        _run(args.addresses, args.rounds, limits, args.profile)
    except KeyboardInterrupt:
        print("\ninterrupted; responders and blackbox_exporter stopped", file=sys.stderr)
        sys.exit(130)


def _run(count: int, rounds: int, limits: list[int], profile: bool) -> None:
    probes = count * 4
    binary = shutil.which(BLACKBOX_PACKAGE) or shutil.which("blackbox_exporter")
    if binary is None:
        print(
            f"blackbox_exporter not found: for the comparison, install the Debian package with "
            f"`apt-get install {BLACKBOX_PACKAGE}` (or `make system-deps`); running the "
            "exporter's side only."
        )
    with responders(count) as (endpoints, note), tempfile.TemporaryDirectory() as workdir:
        if note:
            print(f"note: {note}")
        blackbox = Blackbox(binary, Path(workdir)) if binary else None
        try:
            if blackbox is not None:
                asyncio.run(blackbox.wait_ready())
            _compare(endpoints, rounds, limits, blackbox)
            if profile:
                _profile(_settings(endpoints, limits[0]), probes)
        finally:
            if blackbox is not None:
                blackbox.close()


def _compare(
    endpoints: list[Endpoint], rounds: int, limits: list[int], blackbox: Blackbox | None
) -> None:
    count, probes = len(endpoints), len(endpoints) * 4
    settings = {limit: _settings(endpoints, limit) for limit in limits}
    targets = _blackbox_targets(endpoints)
    # Warm-up, both sides: imports, first-use caches, the Go runtime growing its heap.
    for limit in limits:
        asyncio.run(_exporter_scrape(settings[limit]))
    if blackbox is not None:
        asyncio.run(_blackbox_round(blackbox, targets))
    ours: dict[int, list[Measure]] = {limit: [] for limit in limits}
    theirs: list[Measure] = []
    for _ in range(rounds):
        # Interleaved, so drift in machine load hits both sides alike.
        for limit in limits:
            ours[limit].append(asyncio.run(_exporter_scrape(settings[limit])))
        if blackbox is not None:
            theirs.append(asyncio.run(_blackbox_round(blackbox, targets)))

    b = _median(theirs) if theirs else None
    title = f"{count} KDCs x 4 probes (88/udp 88/tcp 464/udp 464/tcp) = {probes} per scrape"
    if blackbox is not None:
        title += (
            f"; blackbox_exporter: {len(targets)} tcp_connect probes, each TCP port twice, "
            f"{BLACKBOX_CONCURRENCY} at a time"
        )
    print(title)
    print(
        f"{'limit':>5} | {'scrape wall':>11} {'cpu/probe':>9} | {'/metrics wall':>13} "
        f"{'cpu/probe':>9} | {'blackbox wall':>13} {'cpu/probe':>9} | {'wall x':>6} {'cpu x':>6}"
    )
    for limit in limits:
        a = _median(ours[limit])
        _warn(f"exporter, limit {limit}", a, probes)
        theirs_cols = f"{'-':>10}    {'-':>6}    | {'-':>6} {'-':>6}"
        if b is not None:
            theirs_cols = (
                f"{b.wall * 1000:>10.1f} ms {b.cpu / len(targets) * 1e6:>6.0f} µs | "
                f"{b.wall / a.full_wall:>5.1f}x "
                f"{(b.cpu / len(targets)) / (a.full_cpu / probes):>5.1f}x"
            )
        print(
            f"{limit:>5} | {a.wall * 1000:>8.1f} ms {a.cpu / probes * 1e6:>6.0f} µs | "
            f"{a.full_wall * 1000:>10.1f} ms {a.full_cpu / probes * 1e6:>6.0f} µs | {theirs_cols}"
        )
    if b is not None:
        _warn("blackbox_exporter", b, len(targets))
    succeeded = [
        f"limit {limit}: {_median(ours[limit]).answered}/{probes} ports up" for limit in limits
    ]
    if b is not None:
        succeeded.append(f"blackbox: {b.answered}/{len(targets)} probe_success 1")
    print(f"succeeded, worst round: exporter {', '.join(succeeded)}")
    print(
        f"medians of {rounds} rounds. scrape: run_scrape with the Kerberos check (AS-REQ/kpasswd "
        "sent, KRB-ERROR parsed); /metrics: that plus the\nexposition of every series; blackbox: "
        f"HTTP /probe?module=tcp_connect from {BLACKBOX_CONCURRENCY} keep-alive clients, its "
        "per-probe HTTP handling included, CPU from\n/proc/<pid>/stat (10 ms ticks); x: blackbox "
        "/ exporter's /metrics (blackbox wall is at 50 at a time). Exporter CPU is this "
        "process's only;\nresponder CPU is counted nowhere. Targets: /metrics under 1 s wall, "
        "cpu x at least 2."
    )


if __name__ == "__main__":
    main()
