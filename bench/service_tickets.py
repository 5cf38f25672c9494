"""Benchmark: service tickets through one lab KDC, the exporter's path beside MIT's ``kvno``.

The lab's dc1 (a real Samba AD DC) gets ``--spns / 2`` computer accounts ``bench-NNN`` with
``SMTPSVC/`` and ``SMTP/`` SPNs on their FQDN. Our side is the exporter's real scrape path:
``run_scrape`` with the service-ticket check over as many static Exchange servers, whose
requests go to the DC's Kerberos worker process (exporter/kdc_workers.py) with 1 thread and
with the default 4. Beside it, in the same run and interleaved, MIT's ``kvno`` gets the same
tickets in one process, from the same TGT (a file cache holding only the TGT, copied afresh
each round so no ticket comes from a cache) and the same krb5.conf as the worker's.

Prints, per side, tickets per second (wall) and CPU per ticket: for the exporter its own
process plus the worker's; for kvno its process; and, for both, the KDC's (Samba's) CPU,
which both pay the same.

    python bench/service_tickets.py [--spns 200] [--rounds 3] [--lab-network 127.0.10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ldap3 import NONE, SIMPLE, Connection, Server, Tls

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter import kdc_workers
from exporter.checks.service_tickets import SPEC, ServiceTicketsResult
from exporter.config import Settings, load_text
from exporter.inventory import Inventory, build_inventory
from exporter.scrape import run_scrape
from tests.lab import Lab, LabError
from tests.lab.procs import group_members

CLK_TCK = os.sysconf("SC_CLK_TCK")
OTHER_CHECKS = ("clock", "kerberos", "smtp", "spn", "duplicate_spn", "replication")


def _process_cpu(pids: list[int]) -> float:
    """User plus system CPU seconds of these processes so far (those still alive)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _add_accounts(lab: Lab, count: int) -> list[str]:
    """``count`` computer accounts with keys and SMTPSVC/SMTP SPNs; their FQDNs."""
    domain = lab.exchange_directory.dns_domain
    base = lab.exchange_directory.domain_dn
    server = Server(lab.ldaps_url, use_ssl=True, get_info=NONE, tls=Tls(validate=ssl.CERT_NONE))
    conn = Connection(
        server, user=lab.admin_user, password=lab.admin_password, authentication=SIMPLE
    )
    if not conn.bind():
        raise SystemExit(f"cannot bind to {lab.ldaps_url}: {conn.result}")
    names = []
    password = base64.b64encode(f'"Bench!{os.urandom(8).hex()}Zq7"'.encode("utf-16-le"))
    for number in range(count):
        short = f"BENCH-{number:03d}"
        fqdn = f"{short.lower()}.{domain}"
        ok = conn.add(  # type: ignore[no-untyped-call]
            f"CN={short},CN=Computers,{base}",
            "computer",
            {
                "sAMAccountName": f"{short}$",
                "userAccountControl": "4096",
                "dNSHostName": fqdn,
                "unicodePwd": base64.b64decode(password),
                "servicePrincipalName": [f"SMTPSVC/{fqdn}", f"SMTP/{fqdn}"],
            },
        )
        if not ok:
            raise SystemExit(f"cannot add {short}: {conn.result}")
        names.append(fqdn)
    conn.unbind()
    return names


@dataclass
class Sample:
    wall: float
    cpu: float  # the client side: exporter + worker, or kvno
    kdc_cpu: float


def _settings(lab: Lab, servers: list[str], threads: int) -> Settings:
    checks: dict[str, Any] = {name: {"enabled": False} for name in OTHER_CHECKS}
    checks["service_tickets"] = {"max_concurrency": threads, "timeout": "120s"}
    config = lab.exporter_config(
        domain_controllers={"discover": "none", "static": [lab.dc.static_entry]},
        exchange_servers={"discover": "none", "static": [{"name": name} for name in servers]},
        checks=checks,
    )
    return load_text(yaml.safe_dump(config), base_dir=lab.directory)


def _scrape(settings: Settings, inventory: Inventory) -> None:
    result = asyncio.run(run_scrape(settings, inventory, 120.0, [SPEC]))
    outcomes = [run.outcome for run in result.runs["service_tickets"]]
    tickets = [t for o in outcomes if isinstance(o, ServiceTicketsResult) for t in o.tickets]
    bad = [t for t in tickets if not t.ok]
    if bad or not tickets:
        raise SystemExit(f"{len(bad)} of {len(tickets)} tickets refused, e.g. {bad[:1]}")


def _ours(settings: Settings, inventory: Inventory, kdc: Callable[[], float]) -> Sample:
    (worker,) = kdc_workers.running_workers()
    pid = worker._process.pid
    mine, theirs, kdc_before = _own_cpu(), _process_cpu([pid]), kdc()
    started = time.perf_counter()
    _scrape(settings, inventory)
    wall = time.perf_counter() - started
    cpu = _own_cpu() - mine + _process_cpu([pid]) - theirs
    return Sample(wall, cpu, kdc() - kdc_before)


def _kvno(spns: list[str], env: dict[str, str], tgt: Path, kdc: Callable[[], float]) -> Sample:
    cache = Path(env["KRB5CCNAME"].removeprefix("FILE:"))
    shutil.copyfile(tgt, cache)  # the TGT only: every ticket is asked of the KDC
    before, kdc_before = _children_cpu(), kdc()
    started = time.perf_counter()
    done = subprocess.run(["kvno", "-q", *spns], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"kvno failed: {done.stderr.strip()[:300]}")
    return Sample(wall, _children_cpu() - before, kdc() - kdc_before)


def _line(name: str, samples: list[Sample], count: int) -> str:
    wall = statistics.median(s.wall for s in samples)
    cpu = statistics.median(s.cpu for s in samples) / count
    kdc = statistics.median(s.kdc_cpu for s in samples) / count
    return (
        f"  {name:<34} {count / wall:7.0f} tickets/s  {wall * 1000:7.0f} ms  "
        f"client CPU {cpu * 1e6:6.0f} us/ticket  KDC CPU {kdc * 1e6:6.0f} us/ticket"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spns", type=int, default=200, help="an even number (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="median of this many (default 3)")
    parser.add_argument("--lab-network", help="first three octets (default: the lab's, 127.0.10)")
    args = parser.parse_args()
    if shutil.which("kvno") is None:
        raise SystemExit("kvno is missing: apt-get install krb5-user")
    network = {} if args.lab_network is None else {"network": args.lab_network}
    try:
        lab_context = Lab.start(
            samba=True,
            skewed_dc=False,
            replica_dc=False,
            dead_dc=False,
            ntp=False,
            smtp=False,
            **network,
        )
    except LabError as exc:
        raise SystemExit(f"the lab could not start: {exc}") from None
    with lab_context as lab, tempfile.TemporaryDirectory(prefix="bench-tickets-") as scratch:
        assert lab.samba is not None and lab.samba.process is not None
        samba_group = lab.samba.process.pid

        def kdc() -> float:
            return _process_cpu(group_members(samba_group))

        servers = _add_accounts(lab, args.spns // 2)
        spns = [f"{service}/{name}" for name in servers for service in ("SMTPSVC", "SMTP")]
        variants = {threads: _settings(lab, servers, threads) for threads in (1, 4)}
        inventories = {t: asyncio.run(build_inventory(s)) for t, s in variants.items()}

        # kvno with the very krb5.conf a worker gets, and a TGT of the same account.
        settings = variants[1]
        assert settings.ldap is not None and settings.ldap.password is not None
        conf = Path(scratch) / "krb5.conf"
        spec = kdc_workers.WorkerSpec(
            lab.dc.name, lab.dc.address, 88, lab.realm, f"Administrator@{lab.realm}",
            settings.ldap.password, None, tuple(settings.checks.service_tickets.encryption_types),
            None, 1,
        )  # fmt: skip
        conf.write_text(kdc_workers.krb5_conf(spec))
        env = {
            **os.environ,
            "KRB5_CONFIG": str(conf),
            "KRB5CCNAME": f"FILE:{scratch}/tgt",
            "LC_ALL": "C",
        }
        subprocess.run(
            ["kinit", f"Administrator@{lab.realm}"],
            input=settings.ldap.password.get_secret_value() + "\n",
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        tgt = Path(scratch) / "tgt"
        env["KRB5CCNAME"] = f"FILE:{scratch}/round"

        samples: dict[str, list[Sample]] = {}
        print(
            f"{len(spns)} SPNs on {len(servers)} accounts through {lab.dc.name} "
            f"(Samba {lab.dc.address}), {args.rounds} rounds, medians"
        )
        for _ in range(args.rounds):
            for threads, variant in variants.items():
                kdc_workers.close_all()
                _scrape(variant, inventories[threads])  # start the worker, get the TGT
                name = f"exporter, {threads} thread{'s' if threads > 1 else ''}"
                samples.setdefault(name, []).append(_ours(variant, inventories[threads], kdc))
            samples.setdefault("kvno -q (MIT, one process)", []).append(_kvno(spns, env, tgt, kdc))
        kdc_workers.close_all()
        for name, found in samples.items():
            print(_line(name, found, len(spns)))
        ours = statistics.median(s.cpu for s in samples["exporter, 1 thread"])
        theirs = statistics.median(s.cpu for s in samples["kvno -q (MIT, one process)"])
        print(f"  client CPU, exporter (1 thread) / kvno: {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
