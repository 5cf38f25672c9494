"""Benchmark: the duplicate-SPN scan over 50,000 computer accounts, beside ldapsearch | sort | uniq.

The lab's dc1 (a real Samba AD DC, on 127.0.17.10 unless ``--network`` says otherwise) is
started from a prepared copy of its database holding 50,000 bulk computer accounts with 4 SPNs
each and a known set of planted duplicates (bench/bulk_directory.py: built once, then cached).
Then, in the same run and interleaved, for each target (the domain NC over LDAPS, the Global Catalog over LDAPS):

* ours: the exporter's ``scan_duplicates`` (ldap3 paged search in its LDAP thread, grouping by
  case-folded value), in a fresh process each time (bench/duplicate_scan_worker.py), so its
  peak RSS is its own;
* theirs: ``ldapsearch -E pr=1000/noprompt ... servicePrincipalName | grep | sort -f |
  uniq -di``, each stage under GNU time for its own peak RSS and CPU.

Both duplicate sets are compared (case-folded) with the planted ones. Last, the real exporter
runs against the DC with the scan every ``--refresh`` seconds while /metrics is scraped every
50 ms: scrape latency while no scan runs, and while one does.

    python bench/duplicate_scan.py [--accounts 50000] [--duplicates 25] [--rounds 3]
        [--targets domain,gc] [--rebuild] [--scrape-scans 2] [--refresh 20] [--network 127.0.17]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import logging
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bulk_directory import (
    BulkEntry,
    BulkPlan,
    ensure_bulk,
    expected_duplicates,
    lab_cache_root,
    planted_duplicates,
)
from processes import die_with_parent

from tests.integration.exporter_process import free_port
from tests.lab.directory import domain_dn
from tests.lab.errors import LabError
from tests.lab.lab import Lab

DEFAULT_NETWORK = "127.0.17"  # a lab network of its own, beside the tests' 127.0.10
REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "duplicate_scan_worker.py"
SCRAPE_TIMEOUT = 5.0  # X-Prometheus-Scrape-Timeout-Seconds, as a 5 s scrape_timeout sends
EXTRA_LATENCY_TARGET = 0.050
WALL_RATIO_TARGET = 2.0
RSS_TARGET_MB = 200.0


@dataclass(frozen=True)
class Target:
    name: str  # domain or gc
    label: str
    url: str
    base: str


def _targets(lab: Lab, names: list[str]) -> list[Target]:
    known = {
        "domain": Target("domain", "domain NC, LDAPS 636", lab.ldaps_url, domain_dn(lab.domain)),
        "gc": Target("gc", "Global Catalog, LDAPS 3269", lab.gc_ldaps_url, ""),
    }
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown target(s) {', '.join(unknown)}: choose from domain, gc")
    return [known[name] for name in names]


@dataclass
class Run:
    wall: float
    cpu: float
    rss_kb: int  # ours: the process's peak; theirs: the largest stage's peak
    rss_sum_kb: int  # theirs: the stages' peaks added up (they run at once); ours: rss_kb
    found: set[str]  # case-folded duplicate values
    owners: dict[str, list[str]] = field(default_factory=dict)  # ours: value -> owner DNs
    objects: int = 0
    values: int = 0
    rss_before_kb: int = 0  # ours: peak before the scan (interpreter and imports)


# --- ours: the exporter's scan in a fresh process ---------------------------------------------


def _scan_config(lab: Lab, target: Target, path: Path) -> Path:
    gc = target.name == "gc"
    return lab.write_exporter_config(
        path,
        ldap={"global_catalog_url": lab.gc_ldaps_url if gc else None},
        checks={"duplicate_spn": {"scope": "forest" if gc else "domain"}},
    )


def run_ours(config: Path) -> Run:
    result = subprocess.run(
        [sys.executable, str(WORKER), str(config)],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"the scan worker failed ({result.returncode}):\n{result.stderr.strip()[-3000:]}"
        )
    data = json.loads(result.stdout)
    return Run(
        wall=data["wall"],
        cpu=data["cpu"],
        rss_kb=data["rss_kb"],
        rss_sum_kb=data["rss_kb"],
        found=set(data["duplicates"]),
        owners=data["duplicates"],
        objects=data["objects"],
        values=data["values"],
        rss_before_kb=data["rss_before_kb"],
    )


# --- theirs: ldapsearch | grep | sort -f | uniq -di ------------------------------------------


def pipeline_stages(lab: Lab, target: Target) -> list[list[str]]:
    return [
        [
            "ldapsearch",
            "-LLL",
            "-o",
            "ldif-wrap=no",  # a long value would otherwise be folded onto a second line
            "-H",
            target.url,
            "-x",
            "-D",
            lab.admin_user,
            "-y",
            str(lab.password_file),
            "-b",
            target.base,
            "-E",
            "pr=1000/noprompt",
            "(servicePrincipalName=*)",
            "servicePrincipalName",
        ],
        ["grep", "^servicePrincipalName:"],
        ["sort", "-f"],
        ["uniq", "-di"],
    ]


def _spn_value(line: str) -> str | None:
    """A ``servicePrincipalName:`` line's value; ``::`` marks base64 (non-ASCII, say)."""
    name, sep, value = line.partition(":")
    if not sep or name.lower() != "serviceprincipalname":
        return None
    if value.startswith(":"):
        return base64.b64decode(value[1:].strip()).decode("utf-8", "replace")
    return value.strip()


# GNU time forks each stage from its own small process and reports the stage's ru_maxrss: a
# stage spawned from this Python process would carry this process's RSS in its ru_maxrss
# (Linux keeps the pre-exec high-water mark), so wait4() alone overstates small tools.
GNU_TIME = "/usr/bin/time" if Path("/usr/bin/time").exists() else None


@dataclass(frozen=True)
class _Usage:
    maxrss_kb: int
    cpu: float


def _timed(argv: list[str], report: Path) -> list[str]:
    if GNU_TIME is None:
        return argv
    return [GNU_TIME, "-f", "%M %U %S", "-o", str(report), *argv]


def _usage(report: Path, fallback: resource.struct_rusage) -> _Usage:
    if GNU_TIME is not None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            rss, user, system = report.read_text().strip().splitlines()[-1].split()
            return _Usage(int(rss), float(user) + float(system))
    return _Usage(fallback.ru_maxrss, fallback.ru_utime + fallback.ru_stime)


def run_pipeline(stages: list[list[str]]) -> Run:
    # C locale: byte order and ASCII case folding, and sort's fastest path.
    env = {**os.environ, "LDAPTLS_REQCERT": "never", "LC_ALL": "C"}
    processes: list[subprocess.Popen[bytes]] = []
    with (
        tempfile.TemporaryDirectory(prefix="pipeline-") as tmp,
        (Path(tmp) / "stderr").open("w+b") as errors,
    ):
        reports = [Path(tmp) / f"stage-{number}" for number in range(len(stages))]
        wall0 = time.perf_counter()
        try:
            upstream: IO[bytes] | None = None
            for argv, report in zip(stages, reports, strict=True):
                process = subprocess.Popen(
                    _timed(argv, report),
                    stdin=upstream if upstream is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=errors,
                    env=env,
                )
                if upstream is not None:
                    upstream.close()  # the next stage holds it now; EOF reaches it properly
                upstream = process.stdout
                processes.append(process)
            assert upstream is not None
            output = upstream.read()
            upstream.close()
            rusages = []
            for process in processes:
                _, status, rusage = os.wait4(process.pid, 0)
                process.returncode = os.waitstatus_to_exitcode(status)
                rusages.append(rusage)
            wall = time.perf_counter() - wall0
        finally:
            for process in processes:
                if process.returncode is None:
                    process.kill()
                    process.wait()
        # grep exits 1 when nothing matched: no SPN at all, which the comparison reports.
        failed = [
            f"{argv[0]} exited {p.returncode}"
            for argv, p in zip(stages, processes, strict=True)
            if p.returncode not in ((0, 1) if argv[0] == "grep" else (0,))
        ]
        if failed:
            errors.seek(0)
            detail = errors.read().decode(errors="replace").strip()[-2000:]
            raise RuntimeError(f"the ldapsearch pipeline failed: {', '.join(failed)}\n{detail}")
        usages = [_usage(r, u) for r, u in zip(reports, rusages, strict=True)]
    found = set()
    for line in output.decode("utf-8", "replace").splitlines():
        value = _spn_value(line)
        if value is not None:
            found.add(value.casefold())
    return Run(
        wall=wall,
        cpu=sum(u.cpu for u in usages),
        rss_kb=max(u.maxrss_kb for u in usages),
        rss_sum_kb=sum(u.maxrss_kb for u in usages),
        found=found,
    )


# --- the comparison --------------------------------------------------------------------------


@dataclass
class Comparison:
    target: Target
    ours: list[Run] = field(default_factory=list)
    theirs: list[Run] = field(default_factory=list)


def compare(lab: Lab, targets: list[Target], rounds: int, workdir: Path) -> list[Comparison]:
    comparisons = []
    for target in targets:
        config = _scan_config(lab, target, workdir / f"scan-{target.name}.yml")
        stages = pipeline_stages(lab, target)
        # Warm-up, both sides: Samba's caches, the page cache, the first TLS handshakes.
        run_ours(config)
        run_pipeline(stages)
        comparisons.append(Comparison(target))
    for number in range(rounds):
        for comparison in comparisons:
            config = workdir / f"scan-{comparison.target.name}.yml"
            stages = pipeline_stages(lab, comparison.target)
            # Interleaved, and the order flipped every round: drift hits both sides alike.
            if number % 2 == 0:
                comparison.ours.append(run_ours(config))
                comparison.theirs.append(run_pipeline(stages))
            else:
                comparison.theirs.append(run_pipeline(stages))
                comparison.ours.append(run_ours(config))
            print(
                f"  round {number + 1}/{rounds} {comparison.target.name}: ours "
                f"{comparison.ours[-1].wall:.2f} s, ldapsearch pipeline "
                f"{comparison.theirs[-1].wall:.2f} s",
                flush=True,
            )
    return comparisons


def _mb(kb: float) -> float:
    return kb / 1024


def _verdict(found: set[str], expected: set[str]) -> str:
    if found == expected:
        return "OK"
    missing, extra = sorted(expected - found), sorted(found - expected)
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} e.g. {missing[0]}")
    if extra:
        parts.append(f"extra {len(extra)} e.g. {extra[0]}")
    return "MISMATCH (" + "; ".join(parts) + ")"


def _owner_problems(plan: BulkPlan, run: Run) -> list[str]:
    """Planted duplicates whose owners (from our result's DNs) are not the planted accounts."""
    problems = []
    for planted in planted_duplicates(plan):
        owners = sorted(
            dn.split(",", 1)[0].removeprefix("CN=").upper() + "$"
            for dn in run.owners.get(planted.key, [])
        )
        wanted = sorted(account.upper() for account, _ in planted.holders)
        if owners != wanted:
            problems.append(f"{planted.key}: owners {owners}, planted on {wanted}")
    return problems


def report(comparisons: list[Comparison], plan: BulkPlan, rounds: int) -> bool:
    expected = expected_duplicates(plan)
    print()
    print(
        f"{'target':<27} | {'ours wall':>9} {'cpu':>6} {'peak RSS':>9} | "
        f"{'ldapsearch|sort wall':>20} {'cpu':>6} {'peak RSS':>9} {'(sum)':>8} | "
        f"{'wall x':>6} {'RSS x':>6} | duplicates ours/theirs/expected"
    )
    good = True
    notes = []
    for c in comparisons:
        ours_wall = statistics.median(r.wall for r in c.ours)
        theirs_wall = statistics.median(r.wall for r in c.theirs)
        ours_rss = max(r.rss_kb for r in c.ours)
        theirs_rss = max(r.rss_kb for r in c.theirs)
        theirs_sum = max(r.rss_sum_kb for r in c.theirs)
        ours_found = [_verdict(r.found, expected) for r in c.ours]
        theirs_found = [_verdict(r.found, expected) for r in c.theirs]
        ours_ok = all(v == "OK" for v in ours_found)
        theirs_ok = all(v == "OK" for v in theirs_found)
        verdict = "OK" if ours_ok and theirs_ok else "MISMATCH"
        print(
            f"{c.target.label:<27} | {ours_wall:>7.2f} s "
            f"{statistics.median(r.cpu for r in c.ours):>5.1f}s {_mb(ours_rss):>6.0f} MB | "
            f"{theirs_wall:>18.2f} s {statistics.median(r.cpu for r in c.theirs):>5.1f}s "
            f"{_mb(theirs_rss):>6.0f} MB {_mb(theirs_sum):>5.0f} MB | "
            f"{ours_wall / theirs_wall:>5.2f}x {ours_rss / theirs_sum:>5.1f}x | "
            f"{len(c.ours[-1].found)}/{len(c.theirs[-1].found)}/{len(expected)} {verdict}"
        )
        last = c.ours[-1]
        notes.append(
            f"  {c.target.name}: ours read {last.objects} objects, {last.values} SPN values; "
            f"its RSS before the scan {_mb(max(r.rss_before_kb for r in c.ours)):.0f} MB"
        )
        for side, verdicts in (("ours", ours_found), ("ldapsearch", theirs_found)):
            notes += [f"  {c.target.name} {side}: {v}" for v in set(verdicts) if v != "OK"]
        owner_problems = _owner_problems(plan, last)
        notes += [f"  {c.target.name} ours, owners: {p}" for p in owner_problems[:5]]
        good &= (
            ours_ok
            and theirs_ok
            and not owner_problems
            and ours_wall <= WALL_RATIO_TARGET * theirs_wall
            and _mb(ours_rss) < RSS_TARGET_MB
        )
    print("\n".join(notes))
    print(
        f"medians of {rounds} interleaved rounds after a warm-up; wall: the scan alone (ours: "
        "connect, bind, paged search, grouping, in a fresh\nprocess, its start-up and imports "
        "excluded; theirs: the four processes from spawn to the last exit); cpu: user+sys of "
        "that\nprocess, or of all four stages; peak RSS: ours = VmHWM of the scan's process "
        "(interpreter and imports included), theirs =\nthe largest stage's ru_maxrss (from GNU "
        "time), (sum) = "
        "the four stages' peaks added up, as they run at once; x: ours / theirs (RSS against "
        "(sum));\nduplicates: distinct case-folded values found, last round; expected: "
        "planted + the lab's own. Targets: wall x <= "
        f"{WALL_RATIO_TARGET:.0f}, ours under {RSS_TARGET_MB:.0f} MB, OK."
    )
    return good


# --- scrape latency while the exporter scans -------------------------------------------------


_SCAN_LINE = re.compile(
    rb'^exchange_auth_(last_success_timestamp_seconds|scan_duration_seconds)\{scan="duplicate_spn"\} (\S+)$',
    re.M,
)


@dataclass(frozen=True)
class Scrape:
    start: float  # time.time()
    latency: float
    status: int


@dataclass
class ScrapeResult:
    scrapes: list[Scrape]
    windows: list[tuple[float, float]]  # (start, end) of each completed duplicate scan, time.time()
    refresh: float
    cutoff: float  # scrapes before this (the first scan, at start-up) were warm-up


class Exporter:
    """The real exporter (``python -m exporter``) on a free loopback port, logging to a file."""

    def __init__(self, config: Path, log_path: Path, source: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.log = log_path.open("wb")
        env = {**os.environ, "PYTHONPATH": str(source)}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "--config.file",
                str(config),
                "--web.listen-address",
                f"127.0.0.1:{self.port}",
            ],
            cwd=source,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # out of Ctrl-C's reach: we stop it ourselves, in order
            preexec_fn=die_with_parent,
        )

    def memory(self) -> str:
        """VmRSS (now) and VmHWM (peak) of the exporter's own process."""
        fields = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    fields[name] = int(value.split()[0]) / 1024
        return ", ".join(f"{name} {mb:.0f} MB" for name, mb in fields.items()) or "unknown"

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def _scrape(connection: http.client.HTTPConnection) -> tuple[int, bytes]:
    connection.request(
        "GET", "/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": f"{SCRAPE_TIMEOUT:g}"}
    )
    response = connection.getresponse()
    return response.status, response.read()


def measure_scrapes(
    exporter: Exporter, refresh: float, scans: int, interval: float, expected_scan: float
) -> ScrapeResult:
    connection = http.client.HTTPConnection("127.0.0.1", exporter.port, timeout=30)
    deadline = time.monotonic() + 60
    while True:  # until it listens
        if exporter.process.poll() is not None:
            raise RuntimeError(f"the exporter exited:\n{exporter.log_tail()}")
        try:
            _scrape(connection)
            break
        except OSError:
            connection.close()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the exporter did not answer within 60 s:\n{exporter.log_tail()}"
                ) from None
            time.sleep(0.1)
    # The first scan (at start-up) is warm-up; then ``scans`` more, and a little idle time.
    budget = (scans + 1) * (refresh + 4 * expected_scan + 10) + 30
    deadline = time.monotonic() + budget
    scrapes: list[Scrape] = []
    windows: dict[float, float] = {}
    stop_at: float | None = None
    while stop_at is None or time.time() < stop_at:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{len(windows)} duplicate scans completed in {budget:.0f} s, wanted "
                f"{scans + 1}; the exporter's log:\n{exporter.log_tail()}"
            )
        wall, began = time.time(), time.perf_counter()
        status, body = _scrape(connection)
        latency = time.perf_counter() - began
        scrapes.append(Scrape(wall, latency, status))
        values = {name: float(value) for name, value in _SCAN_LINE.findall(body)}
        end = values.get(b"last_success_timestamp_seconds", 0.0)
        if end > 0 and end not in windows:
            windows[end] = values.get(b"scan_duration_seconds", 0.0)
            if len(windows) == scans + 1:
                stop_at = end + min(3.0, refresh / 4)  # idle tail, before the next scan starts
        time.sleep(max(0.0, interval - (time.perf_counter() - began)))
    connection.close()
    spans = sorted((end - duration, end) for end, duration in windows.items())
    return ScrapeResult(scrapes, spans, refresh, cutoff=spans[0][1] + 0.5)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report_scrapes(result: ScrapeResult, interval: float) -> bool:
    during: list[float] = []
    idle: list[float] = []
    margin = 0.25
    failed = 0
    for scrape in result.scrapes:
        if scrape.start < result.cutoff:
            continue
        failed += scrape.status != 200
        end = scrape.start + scrape.latency
        if any(scrape.start < e and end > s for s, e in result.windows):
            during.append(scrape.latency)
        elif not any(scrape.start < e + margin and end > s - margin for s, e in result.windows):
            idle.append(scrape.latency)
    measured = result.windows[1:]
    print()
    print(
        f"scrape latency: GET /metrics every {interval * 1000:.0f} ms (X-Prometheus-Scrape-"
        f"Timeout-Seconds: {SCRAPE_TIMEOUT:g}); the exporter scans every {result.refresh:g} s; "
        f"{len(measured)} scans measured, taking "
        + ", ".join(f"{e - s:.1f} s" for s, e in measured)
    )
    if not idle or not during:
        print("  not enough scrapes on both sides of a scan to compare")
        return False
    print(f"{'':<12} | {'scrapes':>7} | {'p50':>8} {'p99':>8} {'max':>8}")
    for name, values in (("idle", idle), ("during scan", during)):
        print(
            f"{name:<12} | {len(values):>7} | {statistics.median(values) * 1000:>5.1f} ms "
            f"{_percentile(values, 0.99) * 1000:>5.1f} ms {max(values) * 1000:>5.1f} ms"
        )
    base = statistics.median(idle)
    extra_p99 = _percentile(during, 0.99) - base
    extra_max = max(during) - base
    ok = extra_max <= EXTRA_LATENCY_TARGET and failed == 0
    print(
        f"extra during scan (latency - idle p50): p99 {extra_p99 * 1000:.1f} ms, max "
        f"{extra_max * 1000:.1f} ms; target max <= {EXTRA_LATENCY_TARGET * 1000:.0f} ms: "
        f"{'OK' if ok else 'OVER'}" + (f"; {failed} scrapes not 200" if failed else "")
    )
    print(
        "idle: scrapes more than 0.25 s away from any scan; during scan: scrapes overlapping "
        "one (by the exporter's own last_success and\nduration of the duplicate_spn scan); the "
        "start-up scan is warm-up. Latency: request sent to body read, keep-alive, from this\n"
        f"process. The machine has {os.cpu_count()} CPUs, shared by Samba, the exporter and "
        "this client."
    )
    return ok


def scrape_phase(lab: Lab, args: argparse.Namespace, workdir: Path, expected_scan: float) -> bool:
    config = lab.write_exporter_config(
        workdir / "exporter.yml",
        domain_controllers={"discover": "none", "static": [lab.dc.static_entry]},
        checks={
            "clock": {"enabled": False},
            "kerberos": {"enabled": True},
            "smtp": {"enabled": False},
            "duplicate_spn": {"scope": "domain", "refresh_interval": f"{args.refresh:g}s"},
        },
    )
    exporter = Exporter(config, workdir / "exporter.log", Path(args.exporter_src).resolve())
    try:
        result = measure_scrapes(
            exporter, args.refresh, args.scrape_scans, args.scrape_interval, expected_scan
        )
        memory = exporter.memory()
    finally:
        exporter.close()
    ok = report_scrapes(result, args.scrape_interval)
    print(
        f"the exporter's process after the scans: {memory} (scan subprocesses, if any, not included)"
    )
    return ok


# --- main ------------------------------------------------------------------------------------


@contextlib.contextmanager
def bulk_lab(bulk: BulkEntry, network: str) -> Iterator[Lab]:
    started = time.monotonic()
    with lab_cache_root(bulk.root):
        lab = Lab.start(
            samba=True,
            ntp=False,
            skewed_dc=False,
            dead_dc=False,
            smtp=False,
            network=network,
            timeout=180.0,
        )
    with lab:
        print(
            f"lab up in {time.monotonic() - started:.1f} s (dc1 {lab.dc.address}, {lab.directory})"
        )
        yield lab


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=BulkPlan.accounts)
    parser.add_argument("--duplicates", type=int, default=BulkPlan.duplicates)
    parser.add_argument("--case-only", type=int, default=BulkPlan.case_only)
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached bulk data")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="median of this many (default 3); 0: scrape latency only",
    )
    parser.add_argument("--targets", default="domain,gc", help="domain, gc or both (default)")
    parser.add_argument(
        "--scrape-scans", type=int, default=2, help="scans to scrape through; 0 skips (default 2)"
    )
    parser.add_argument("--scrape-interval", type=float, default=0.05, help="seconds (0.05)")
    parser.add_argument("--refresh", type=float, default=20.0, help="scan interval, s (20)")
    parser.add_argument(
        "--network", default=DEFAULT_NETWORK, help=f"the lab's, 3 octets ({DEFAULT_NETWORK})"
    )
    parser.add_argument(
        "--exporter-src",
        default=str(REPO),
        help="the tree whose exporter package the scrape phase runs (default this repo)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("bench").setLevel(logging.INFO)
    for tool in ("ldapsearch", "ldbadd", "ldbmodify", "sort", "uniq"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install ldap-utils ldb-tools samba")
    # SIGTERM ends the bench through the same finally blocks as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        ok = _run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; lab and exporter stopped", file=sys.stderr)
        sys.exit(130)
    except (LabError, RuntimeError) as exc:
        print(f"failed: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0 if ok else 2)


def _run(args: argparse.Namespace) -> bool:
    plan = BulkPlan(args.accounts, args.duplicates, args.case_only)
    started = time.monotonic()
    bulk = ensure_bulk(plan, args.network, rebuild=args.rebuild)
    where = "found in the cache" if bulk.cached else f"built in {time.monotonic() - started:.0f} s"
    print(
        f"bulk data: {plan.accounts} computer accounts x 4 SPNs, {plan.duplicates} planted "
        f"duplicates ({plan.case_only} differing only in letter case) + the lab's own "
        f"{len(expected_duplicates(plan)) - plan.duplicates} = {len(expected_duplicates(plan))} "
        f"expected; {bulk.size_bytes / 1e6:.0f} MB, {where} ({bulk.entry}; first build took "
        f"{bulk.build_seconds:.0f} s)"
    )
    print(f"load average at start: {_load()} on {os.cpu_count()} CPUs")
    if GNU_TIME is None:
        print(
            "note: /usr/bin/time not found (apt-get install time): the pipeline's peak RSS is "
            "wait4()'s, which counts this process's RSS at fork in every stage"
        )
    with bulk_lab(bulk, args.network) as lab, tempfile.TemporaryDirectory(prefix="dupscan-") as tmp:
        workdir = Path(tmp)
        targets = _targets(lab, [t.strip() for t in args.targets.split(",") if t.strip()])
        good, expected_scan = True, 60.0
        if args.rounds > 0:
            comparisons = compare(lab, targets, args.rounds, workdir)
            good = report(comparisons, plan, args.rounds)
            expected_scan = max(r.wall for c in comparisons for r in c.ours)
        if args.scrape_scans > 0:
            good &= scrape_phase(lab, args, workdir, expected_scan)
    print(
        f"load average at the end: {_load()} (1, 5, 15 min; other work on the machine skews both sides)"
    )
    return good


def _load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
