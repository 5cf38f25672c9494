"""Benchmark: one scrape's NTP fan-out against N servers, next to the naive thread-pool approach.

N NTP responders run on loopback ports in a separate process (so their CPU is not counted as
ours). For each N, the exporter's real scrape path (``run_scrape`` with the clock check and the
metric exposition) is timed against ntplib's blocking ``request`` in a 32-thread pool, in the
same process and the same run. Prints wall time, CPU seconds per probe and the ratios.

    python bench/clock_fanout.py [--sizes 10,100,1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import ntplib
from prometheus_client.exposition import generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.checks.clock import SPEC as CLOCK
from exporter.config import Settings, load_text
from exporter.inventory import build_inventory
from exporter.metrics import ReloadStatus, ScrapeCollector
from exporter.scrape import run_scrape
from tests.ntp_peer import serve_blocking

HOST = "127.0.0.1"


def _responders(count: int, pipe: Connection) -> None:
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, 0))
        sock.setblocking(False)
        sockets.append(sock)
    pipe.send([s.getsockname()[1] for s in sockets])
    stop = threading.Event()
    server = threading.Thread(target=serve_blocking, args=(sockets, stop))
    server.start()
    pipe.recv()  # until told to stop
    stop.set()
    server.join()


@dataclass
class Measure:
    wall: float
    cpu: float
    answered: int
    # The exporter's full /metrics work: the probes plus the exposition of every series.
    full_wall: float = 0.0
    full_cpu: float = 0.0


def _settings(ports: list[int], max_concurrency: int | None) -> Settings:
    # One Exchange server and the rest DCs: the skew pairs grow with N, not N², so the
    # exposition stays a measure of the fan-out (pairs are Exchange servers x DCs).
    exchange = ports[:1]
    dcs = ports[len(exchange) :]

    def entries(prefix: str, group: list[int]) -> str:
        return ", ".join(
            f"{{name: {prefix}{i}.corp.example.test, address: {HOST}, ports: {{ntp: {p}}}}}"
            for i, p in enumerate(group)
        )

    return load_text(
        "realm: corp.example.test\n"
        + (f"scrape: {{max_concurrency: {max_concurrency}}}\n" if max_concurrency else "")
        + f"domain_controllers: {{static: [{entries('dc', dcs)}]}}\n"
        f"exchange_servers: {{static: [{entries('exch', exchange)}]}}\n"
    )


async def _exporter_scrape(settings: Settings) -> Measure:
    inventory = await build_inventory(settings)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = await run_scrape(settings, inventory, 5.0, [CLOCK.erased()])
    wall1, cpu1 = time.perf_counter(), time.process_time()
    generate_latest(ScrapeCollector(result, settings, inventory, ReloadStatus(True, 0)))
    wall2, cpu2 = time.perf_counter(), time.process_time()
    answered = sum(run.ok for run in result.runs["clock"])
    return Measure(wall1 - wall0, cpu1 - cpu0, answered, wall2 - wall0, cpu2 - cpu0)


def _thread_pool(ports: list[int]) -> Measure:
    client = ntplib.NTPClient()

    def probe(port: int) -> bool:
        try:
            client.request(HOST, version=4, port=port, timeout=5)
        except (ntplib.NTPException, OSError):
            return False
        return True

    wall0, cpu0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max_workers=32) as pool:
        answered = sum(pool.map(probe, ports))
    return Measure(time.perf_counter() - wall0, time.process_time() - cpu0, answered)


def _median(values: list[Measure]) -> Measure:
    return Measure(
        statistics.median(m.wall for m in values),
        statistics.median(m.cpu for m in values),
        min(m.answered for m in values),
        statistics.median(m.full_wall for m in values),
        statistics.median(m.full_cpu for m in values),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        help="scrape.max_concurrency (default: the exporter's default, 256)",
    )
    args = parser.parse_args()

    print(
        f"{'servers':>7} | {'probes wall':>11} {'cpu/probe':>9} | {'threads wall':>12} {'cpu/probe':>9} "
        f"| {'wall x':>6} {'cpu x':>6} | {'/metrics wall':>13} {'cpu/server':>10}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        parent, child = multiprocessing.Pipe()
        responder = multiprocessing.Process(target=_responders, args=(size, child), daemon=True)
        responder.start()
        ports: list[int] = parent.recv()
        try:
            settings = _settings(ports, args.max_concurrency)
            ours: list[Measure] = []
            theirs: list[Measure] = []
            asyncio.run(_exporter_scrape(settings))  # warm-up: imports, first-use caches
            for _ in range(args.rounds):
                # Interleaved, so drift in machine load hits both sides alike.
                ours.append(asyncio.run(_exporter_scrape(settings)))
                theirs.append(_thread_pool(ports))
        finally:
            parent.send("stop")
            responder.join(timeout=5)
        a, b = _median(ours), _median(theirs)
        if a.answered != size or b.answered != size:
            print(
                f"  warning: answered {a.answered}/{size} (exporter), {b.answered}/{size} (threads)"
            )
        print(
            f"{size:>7} | {a.wall * 1000:>8.1f} ms {a.cpu / size * 1e6:>6.0f} µs | "
            f"{b.wall * 1000:>9.1f} ms {b.cpu / size * 1e6:>6.0f} µs | "
            f"{b.wall / a.wall:>5.1f}x {b.cpu / a.cpu:>5.1f}x | "
            f"{a.full_wall * 1000:>10.1f} ms {a.full_cpu / size * 1e6:>7.0f} µs"
        )
    print(
        f"medians of {args.rounds} rounds. probes: the scrape runner with the NTP check; threads: "
        "ntplib in a 32-thread pool;\nx: threads / exporter; /metrics: probes plus the exposition "
        "of every series (7 per server, 2 per skew pair). CPU is this process's only."
    )


if __name__ == "__main__":
    main()
