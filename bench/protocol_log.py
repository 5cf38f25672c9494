"""Benchmark: counting responses in a ~1 GB SMTP send protocol log, beside grep and csv.reader.

Writes a realistic SmtpSend log (sessions of connect, banner, EHLO, STARTTLS, X-EXPS GSSAPI,
MAIL/RCPT/BDAT, QUIT; mostly 250s, some 4xx including ``454 4.7.0``, quoted data and context
with commas), then in the same run times:

- ours: the exporter's follower reading the file from offset 0 in chunks (the real code path,
  in a child process so its peak RSS is its own),
- ``grep -c ',<,454 4.7.0'``,
- a plain ``csv.reader`` loop counting ``<`` lines by leading code.

Prints MB/s for each and the ratios, checks our 454 4.7.0 count equals grep's and our total
response count equals csv.reader's, and deletes the file unless ``--keep``.

    python bench/protocol_log.py [--size-mb 1024] [--dir /tmp] [--keep] [--rounds 3]
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.checks.protocol_logs import FolderKey, Follower
from exporter.protocols.smtp_log import Tally

MB = 1_000_000
HEADER = (
    "#Software: Microsoft Exchange Server\r\n"
    "#Version: 15.0.0.0\r\n"
    "#Log-type: SMTP Send Protocol Log\r\n"
    "#Date: 2026-11-29T00:00:00.031Z\r\n"
    "#Fields: date-time,connector-id,session-id,sequence-number,local-endpoint,"
    "remote-endpoint,event,data,context\r\n"
)
CONNECTORS = ("Intra-Organization SMTP Send Connector", "Internet Outbound", "SEND.Partner TLS")
HOSTS = [f"EXCH{n:02d}.corp.example.com" for n in range(1, 9)]
EHLO_REPLY = (
    "250-{host} Hello [{ip}] SIZE 37748736 PIPELINING DSN ENHANCEDSTATUSCODES STARTTLS "
    "X-ANONYMOUSTLS AUTH NTLM X-EXPS GSSAPI NTLM 8BITMIME BINARYMIME CHUNKING XRDST"
)
TLS_CONTEXT = (
    '"TLS protocol SP_PROT_TLS1_2_CLIENT negotiation succeeded using bulk encryption '
    "algorithm CALG_AES_256 with strength 256 bits, MAC hash algorithm CALG_SHA_384 with "
    'strength 0 bits and key exchange algorithm CALG_ECDH_EPHEM with strength 384 bits"'
)
# Per session, what the receiving side ends up answering: mostly success.
OUTCOMES = (
    ("ok", 900),
    ("auth_454", 40),
    ("busy_451", 20),
    ("greylist_421", 15),
    ("reject_550", 15),
    ("tls_failed", 10),
)


def _session(rng: random.Random, clock: list[float], out: list[str]) -> None:
    connector = rng.choice(CONNECTORS)
    session = f"08DE{rng.getrandbits(48):012X}"
    local_host, remote_host = rng.sample(HOSTS, 2)
    local = f"10.0.0.{rng.randint(10, 250)}:{rng.randint(20000, 65000)}"
    remote = f"10.0.1.{rng.randint(10, 250)}:25"
    outcome = rng.choices([o for o, _ in OUTCOMES], [w for _, w in OUTCOMES])[0]
    seq = 0

    def line(event: str, data: str = "", context: str = "") -> None:
        nonlocal seq
        clock[0] += rng.random() * 0.004
        seconds = clock[0]
        stamp = (
            f"2026-11-29T{int(seconds // 3600) % 24:02d}:{int(seconds // 60) % 60:02d}:"
            f"{seconds % 60:06.3f}Z"
        )
        out.append(
            f"{stamp},{connector},{session},{seq},{local if seq else ''},{remote},{event},{data},{context}\r\n"
        )
        seq += 1

    line("*", "", "attempting to connect")
    line("+")
    if outcome == "greylist_421":
        line("<", "421 4.3.2 Service not available")
        line("-", "", "Remote")
        return
    line(
        "<",
        f'"220 {remote_host} Microsoft ESMTP MAIL Service ready at Sun, 29 Nov 2026 09:44:13 +0000"',
    )
    line(">", f"EHLO {local_host}")
    line("<", EHLO_REPLY.format(host=remote_host, ip=local.split(":")[0]))
    line(">", "STARTTLS")
    line("<", "220 2.0.0 SMTP server ready")
    if outcome == "tls_failed":
        line("*", "", '"TlsNegotiationFailed, SEC_E_UNTRUSTED_ROOT"')
        line("-", "", "Local")
        return
    line("*", "", "Sending certificate")
    line("*", f'"CN={local_host}, OU=Exchange, O=Corp"', "Certificate subject")
    line("*", "", TLS_CONTEXT)
    line(">", f"EHLO {local_host}")
    line("<", EHLO_REPLY.format(host=remote_host, ip=local.split(":")[0]))
    line(">", "X-EXPS GSSAPI")
    if outcome == "auth_454":
        line("<", "454 4.7.0 Temporary authentication failure")
        line(">", "QUIT")
        line("<", "221 2.0.0 Service closing transmission channel")
        line("-", "", "Local")
        return
    line("<", "235 <authentication information>")
    line("*", "", "sending message with RecordId 51539607553 and InternetMessageId <x@corp>")
    line(
        ">",
        f"MAIL FROM:<user{rng.randint(1, 9999)}@corp.example.com> SIZE={rng.randint(900, 90000)}",
    )
    recipients = rng.choice((1, 1, 1, 2, 3))
    for _ in range(recipients):
        line(">", f"RCPT TO:<user{rng.randint(1, 9999)}@corp.example.com>")
    if outcome == "reject_550":
        line("<", "550 5.7.1 Client does not have permissions to send as this sender")
        line(">", "QUIT")
        line("<", "221 2.0.0 Service closing transmission channel")
        line("-", "", "Local")
        return
    line("<", "250 2.1.0 Sender OK")
    for _ in range(recipients):
        line("<", "250 2.1.5 Recipient OK")
    line(">", f"BDAT {rng.randint(900, 90000)} LAST")
    if outcome == "busy_451":
        line("<", '"451 4.4.0 Queue delay, message deferred"')
    else:
        line(
            "<",
            f'"250 2.6.0 <{rng.getrandbits(64):016x}@{local_host}> [InternalId={rng.getrandbits(40)}, '
            f"Hostname={remote_host}] {rng.randint(900, 90000)} bytes in 0.0{rng.randint(10, 99)}, "
            f'{rng.randint(10, 900)}.{rng.randint(0, 999):03d} KB/sec Queued mail for delivery"',
        )
    line(">", "QUIT")
    line("<", "221 2.0.0 Service closing transmission channel")
    line("-", "", "Local")


def generate(path: Path, size: int, seed: int = 1129) -> None:
    rng = random.Random(seed)
    clock = [0.0]
    written = 0
    with path.open("w", encoding="utf-8", newline="") as file:
        file.write(HEADER)
        while written < size:
            batch: list[str] = []
            while len(batch) < 20_000:
                _session(rng, clock, batch)
            text = "".join(batch)
            file.write(text)
            written += len(text)


@dataclass
class Run:
    seconds: float
    cpu: float
    auth_454: int
    responses: int
    peak_rss_mb: float = 0.0
    baseline_rss_mb: float = 0.0  # the child's resident memory before reading: imports


def _current_rss_mb() -> float:
    # Resident now, not the high-water mark: imports peak higher than they settle.
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _ours_child(folder: str, pipe: Connection) -> None:
    key = FolderKey("exch01.corp.example.com", Path(folder))
    follower = Follower()
    follower.known.add(key)  # as if the file had appeared after a first poll: read from 0
    baseline = _current_rss_mb()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while follower.poll([key], 16384).bytes_read:
        pass
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    tally = follower.totals.get(("exch01.corp.example.com", "send"), Tally())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    auth = tally.responses.get(("454", "4.7.0"), 0)
    pipe.send(Run(wall, cpu, auth, sum(tally.responses.values()), peak, baseline))


def ours(folder: Path) -> Run:
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=_ours_child, args=(str(folder), child)
    )
    process.start()
    run: Run = parent.recv()
    process.join()
    return run


def grep(path: Path) -> Run:
    wall0 = time.perf_counter()
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        ["grep", "-c", ",<,454 4.7.0", str(path)], capture_output=True, text=True, check=False
    )
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    return Run(time.perf_counter() - wall0, cpu, int(done.stdout.strip() or 0), -1)


def csv_reader(path: Path) -> Run:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    codes: Counter[str] = Counter()
    with path.open(encoding="utf-8", errors="replace", newline="") as file:
        for row in csv.reader(file):
            if len(row) > 7 and row[6] == "<":
                codes[row[7][:9]] += 1
    return Run(
        time.perf_counter() - wall0, time.process_time() - cpu0, codes["454 4.7.0"], codes.total()
    )


def _median(runs: list[Run]) -> Run:
    return Run(
        statistics.median(r.seconds for r in runs),
        statistics.median(r.cpu for r in runs),
        runs[0].auth_454,
        runs[0].responses,
        max(r.peak_rss_mb for r in runs),
        max(r.baseline_rss_mb for r in runs),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the generated log")
    parser.add_argument("--dir", type=Path, default=None, help="where to write it (default /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated log")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-csv", action="store_true", help="leave the csv.reader run out")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="protocol-log-bench-", dir=args.dir))
    path = folder / "SEND20261129-1.LOG"
    try:
        started = time.perf_counter()
        generate(path, args.size_mb * MB)
        size = path.stat().st_size
        print(
            f"generated {size / MB:.0f} MB in {time.perf_counter() - started:.1f} s: {path}",
            flush=True,
        )
        grep(path)  # warm the page cache, so every reader below reads from memory
        runs: dict[str, list[Run]] = {"ours": [], "grep": [], "csv.reader": []}
        for _ in range(args.rounds):
            # Interleaved, so drift in machine load hits every reader alike.
            runs["ours"].append(ours(folder))
            runs["grep"].append(grep(path))
            if not args.skip_csv:
                runs["csv.reader"].append(csv_reader(path))
        results = {name: _median(r) for name, r in runs.items() if r}
        base = results["ours"]
        mb = size / MB
        print(
            f"{'reader':>10} | {'wall s':>7} {'cpu s':>7} | {'MB/s':>6} {'MB/s cpu':>8} | "
            f"{'454 4.7.0':>9} {'responses':>10} | {'ours x':>6}"
        )
        for name, run in results.items():
            responses = str(run.responses) if run.responses >= 0 else "-"
            print(
                f"{name:>10} | {run.seconds:>7.2f} {run.cpu:>7.2f} | {mb / run.seconds:>6.0f} "
                f"{mb / run.cpu:>8.0f} | {run.auth_454:>9} {responses:>10} | "
                f"{run.seconds / base.seconds:>5.2f}x"
            )
        print(
            f"ours: peak RSS {base.peak_rss_mb:.0f} MB; {base.baseline_rss_mb:.0f} MB resident "
            "before the first read (interpreter and imports)"
        )
        problems = []
        if base.auth_454 != results["grep"].auth_454:
            problems.append(f"454 4.7.0: ours {base.auth_454}, grep {results['grep'].auth_454}")
        if "csv.reader" in results and base.responses != results["csv.reader"].responses:
            problems.append(
                f"responses: ours {base.responses}, csv.reader {results['csv.reader'].responses}"
            )
        print(
            f"medians of {args.rounds} rounds, file in the page cache. ours x: how many times our "
            "wall time that reader took (>1: slower than ours). ours: the follower reading the "
            "file from offset 0 in chunks, in a child process; cpu s: user+system time of the "
            "reader alone."
        )
        if problems:
            print("MISMATCH: " + "; ".join(problems))
            sys.exit(1)
        print("counts match")
    finally:
        if args.keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
