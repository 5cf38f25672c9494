"""python -m tests.lab up | demo | down | status — the lab by hand, for CI and ``make demo``."""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.lab.errors import LabError
from tests.lab.lab import DEFAULT_NETWORK, Lab
from tests.lab.net import loopback_addresses, ntp_answers, tcp_accepts
from tests.lab.procs import wait_until
from tests.lab.state import RUNTIME_DIR, bring_down, recorded_labs

log = logging.getLogger("tests.lab")


def _describe(lab: Lab, seconds: float, config: Path) -> str:
    lines = [f"lab up in {seconds:.1f} s, folder {lab.directory}"]
    for host in (*lab.hosts, lab.dead_dc):
        services = []
        if host is lab.dc and lab.samba_running:
            services.append(
                f"Samba AD DC ({lab.ldaps_url}, KDC {host.address}:88, DNS {lab.dns_server}:53)"
            )
        if host is lab.skewed_dc and lab.skewed_dc_running:
            services.append(f"Samba KDC {host.address}:88 {host.ntp_offset:+d} s (clone of dc1)")
        if host is lab.replica_dc and lab.replica_dc_running:
            services.append("Samba AD DC, replica of dc1 (both pull every 5 s)")
        if host is lab.dead_dc:
            if not lab.dead_dc_running:
                continue
            services.append("dead: TCP 88/464 refused, UDP 88/464/123 dropped")
        elif lab.ntp_running:
            services.append(f"NTP {host.ntp_offset:+d} s")
        lines.append(f"  {host.name:<26} {host.address:<13} {host.role:<18} {', '.join(services)}")
    if lab.smtp_running:
        for smtp in lab.smtp_servers:
            banner = (
                f"banner {smtp.custom_banner!r}"
                if smtp.custom_banner is not None
                else f"banner clock {smtp.clock_offset:+d} s in {smtp.utc_offset}"
            )
            exps = "/".join(map(str, smtp.x_exps_ports)) or "none"
            lines.append(
                f"  {smtp.name:<26} {smtp.address:<13} SMTP {'/'.join(map(str, smtp.ports))}"
                f"{'':<8} {banner}, X-EXPS on {exps}"
            )
    if lab.samba_running:
        lines.append(f"  LDAP user {lab.admin_user}, password in {lab.password_file}")
        lines.append(f"  Global Catalog {lab.gc_url} (StartTLS) and {lab.gc_ldaps_url}")
        servers = ", ".join(s.name for s in lab.exchange_directory.servers)
        lines.append(f"  Exchange servers in AD: {servers}; duplicate SPNs planted")
        lines.append(f"  KRB5_CONFIG={lab.krb5_conf}")
    lines.append(f"  exporter config: {config}")
    lines.append("Stop with Ctrl-C, SIGTERM or `python -m tests.lab down`.")
    return "\n".join(lines)


# What runs in the foreground while the lab is up: returns the exit status once ``stop`` is set
# or something broke.
Foreground = Callable[[Lab, Path, threading.Event], int]


def _run_lab(args: argparse.Namespace, foreground: Foreground) -> int:
    ready_file: Path | None = args.ready_file
    if ready_file is not None:
        ready_file.unlink(missing_ok=True)  # a stale one would tell a waiting Makefile "ready"

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping the lab", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    started = time.monotonic()
    try:
        lab = Lab.start(
            samba=args.samba,
            ntp=args.ntp,
            skewed_dc=args.samba and args.skewed_dc,
            replica_dc=args.samba and args.replica_dc,
            dead_dc=args.dead_dc,
            smtp=args.smtp,
            network=args.network,
            use_cache=args.cache,
        )
    except LabError as exc:
        log.error("%s", exc)
        return 1
    with lab:
        # With a DC: everything the directory gives, the SMTP stand-ins and every clock source.
        everything = (
            lab.directory_exporter_config(
                exchange_servers={"static": [s.static_entry for s in lab.smtp_servers]},
                checks={"clock": {"sources": ["ntp", "kerberos", "smtp", "ldap"]}},
            )
            if lab.samba_running
            else lab.exporter_config()
        )
        config = lab.directory / "exporter.yml"
        config.write_text(yaml.safe_dump(everything, sort_keys=False))
        print(_describe(lab, time.monotonic() - started, config), flush=True)
        try:
            return foreground(lab, config, stop)
        finally:
            if ready_file is not None:
                ready_file.unlink(missing_ok=True)


def _lab_broken(lab: Lab) -> bool:
    failures = lab.failures()
    if failures:
        log.error("the lab is broken:\n%s", "\n".join(failures))
    return bool(failures)


def cmd_up(args: argparse.Namespace) -> int:
    def hold(lab: Lab, config: Path, stop: threading.Event) -> int:
        if args.ready_file is not None:
            args.ready_file.touch()
        while not stop.wait(0.5):
            if _lab_broken(lab):
                return 1
        return 0

    return _run_lab(args, hold)


def cmd_demo(args: argparse.Namespace) -> int:
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"

    def serve(lab: Lab, config: Path, stop: threading.Event) -> int:
        argv = [sys.executable, "-m", "exporter", f"--config.file={config}"]
        exporter = subprocess.Popen([*argv, f"--web.listen-address={args.listen}"])
        try:
            wait_until(
                lambda: tcp_accepts(host, int(port)),
                timeout=30.0,
                what=f"the exporter on {args.listen}",
                abort=lambda: None if exporter.poll() is None else "it exited",
            )
            print(
                f"exporter: http://{args.listen}/ (the verdict matrix), /metrics; try also\n"
                f"  .venv/bin/exchange-auth-exporter diagnose --config.file={config}",
                flush=True,
            )
            print(_first_scrape(f"http://{args.listen}/metrics"), flush=True)
            if args.ready_file is not None:
                args.ready_file.touch()
            while not stop.wait(0.5):
                if exporter.poll() is not None:
                    log.error("the exporter exited with status %d", exporter.returncode)
                    return exporter.returncode or 1
                if _lab_broken(lab):
                    return 1
            return 0
        except LabError as exc:
            log.error("%s", exc)
            return 1
        finally:
            if exporter.poll() is None:
                exporter.terminate()
                try:
                    exporter.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    exporter.kill()
                    exporter.wait()

    return _run_lab(args, serve)


def _first_scrape(url: str) -> str:
    """What a newcomer should see at once: each Exchange server's skew against each DC."""
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            text = response.read().decode()
    except OSError as exc:
        return f"first scrape failed: {exc}"
    lines = [
        "first scrape: clock skew, Exchange server vs domain controller (Kerberos allows 300 s)"
    ]
    for family in text_string_to_metric_families(text):
        if family.name == "exchange_auth_clock_skew_seconds":
            for sample in family.samples:
                verdict = "BROKEN: Kerberos will fail" if sample.value > 300 else "ok"
                lines.append(
                    f"  {sample.labels['exchange_server']:<26} vs {sample.labels['domain_controller']:<24}"
                    f" {sample.value:8.2f} s  {verdict}"
                )
    return "\n".join(lines)


def cmd_down(args: argparse.Namespace) -> int:
    labs = recorded_labs()
    if args.abandoned:
        labs = [state for state in labs if not state.owner_alive()]
    if not labs:
        print(f"no {'abandoned ' if args.abandoned else ''}lab recorded in {RUNTIME_DIR}")
        return 0
    status = 0
    for state in labs:
        print(f"stopping the lab in {state.lab_dir} (owner pid {state.owner.pid})")
        for problem in bring_down(state):
            print(f"  problem: {problem}")
            status = 1
    return status


def cmd_status(args: argparse.Namespace) -> int:
    labs = recorded_labs()
    if not labs:
        print(f"no lab recorded in {RUNTIME_DIR}")
        return 3
    status = 0
    on_lo = loopback_addresses()
    for state in labs:
        owner = "running" if state.owner_alive() else "GONE"
        print(f"lab {state.lab_dir}: owner pid {state.owner.pid} {owner}")
        for record in state.processes:
            members = record.members()
            print(f"  {record.name:<16} pgid {record.pid:<7} {len(members)} process(es)")
            status |= 0 if members else 1
        for address in state.addresses:
            ntp = "answers" if ntp_answers(address, timeout=0.3) else "silent"
            ldaps = "open" if tcp_accepts(address, 636, timeout=0.3) else "closed"
            kdc = "open" if tcp_accepts(address, 88, timeout=0.3) else "closed"
            smtp = "open" if tcp_accepts(address, 25, timeout=0.3) else "closed"
            alias = "on lo" if address in on_lo else "NOT on lo"
            print(
                f"  {address:<13} {alias:<10} NTP {ntp:<8} KDC {kdc:<7} LDAPS {ldaps:<7} "
                f"SMTP {smtp}"
            )
        if not state.owner_alive():
            status = 1
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the lab and stay in the foreground until signalled")
    demo = sub.add_parser("demo", help="`up`, plus the exporter against the lab until signalled")
    demo.add_argument(
        "--listen", default="127.0.0.1:9817", help="exporter address (default %(default)s)"
    )
    demo.set_defaults(func=cmd_demo)
    up.set_defaults(func=cmd_up)
    for command in (up, demo):
        command.add_argument(
            "--no-samba", dest="samba", action="store_false", help="no Samba at all (NTP only)"
        )
        command.add_argument(
            "--no-skewed-dc", dest="skewed_dc", action="store_false", help="no KDC on dc2"
        )
        command.add_argument(
            "--no-replica-dc", dest="replica_dc", action="store_false", help="no replica dc3"
        )
        command.add_argument(
            "--no-dead-dc", dest="dead_dc", action="store_false", help="leave dc9 unbound"
        )
        command.add_argument("--no-ntp", dest="ntp", action="store_false", help="no chronyd")
        command.add_argument(
            "--no-smtp", dest="smtp", action="store_false", help="no Exchange SMTP stand-ins"
        )
        command.add_argument(
            "--network", default=DEFAULT_NETWORK, help="first three octets (default %(default)s)"
        )
        command.add_argument(
            "--no-cache", dest="cache", action="store_false", help="provision Samba afresh"
        )
        command.add_argument(
            "--ready-file", type=Path, help="touched once everything answers, removed on exit"
        )
    down = sub.add_parser("down", help="stop recorded labs, including ones left by crashed runs")
    down.add_argument("--abandoned", action="store_true", help="only labs whose owner is gone")
    down.set_defaults(func=cmd_down)
    status = sub.add_parser("status", help="show recorded labs and whether they answer")
    status.set_defaults(func=cmd_status)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
