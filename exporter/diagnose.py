"""``exchange-auth-exporter diagnose``: every check once, now, and a verdict per server and cause.

Exit 0 when nothing is wrong, 1 when a cause is present, 2 when the checks could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .background import ScanRunner
from .checks import SCANS
from .config import ConfigError, load_file
from .inventory import build_inventory
from .ldap import close_all
from .scrape import run_scrape
from .verdicts import SYMPTOMS, Evidence, State, Verdict, verdicts

__all__ = ["diagnose_main", "render_json", "render_text"]

EXIT_OK, EXIT_PROBLEM, EXIT_ERROR = 0, 1, 2

_MARKS = {State.OK: "ok", State.PROBLEM: "PROBLEM", State.UNKNOWN: "unknown"}
_COLOURS = {State.OK: "\033[32m", State.PROBLEM: "\033[1;31m", State.UNKNOWN: "\033[90m"}
_RESET = "\033[0m"


@dataclass(frozen=True)
class Report:
    generated_at: float
    duration: float
    verdicts: list[Verdict]

    @property
    def exit_code(self) -> int:
        return EXIT_PROBLEM if any(v.state is State.PROBLEM for v in self.verdicts) else EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exchange-auth-exporter diagnose",
        description="Run every check once and say, per Exchange server, which KB 979174 cause is present and how to fix it.",
    )
    parser.add_argument(
        "--config.file", dest="config_file", type=Path, default=Path("exchange-auth-exporter.yml")
    )
    parser.add_argument("--output", choices=["text", "json"], default="text")
    parser.add_argument(
        "--timeout", type=float, default=15.0, help="seconds for the checks (default %(default)s)"
    )
    parser.add_argument("servers", nargs="*", help="Exchange servers to report (default: all)")
    return parser


async def collect(
    config_file: Path, budget: float, servers: Sequence[str], progress: TextIO | None
) -> Report:
    started = time.monotonic()
    settings = load_file(config_file)
    _say(progress, "discovering servers")
    inventory = await build_inventory(settings)
    _say(progress, f"checking {len(inventory.servers)} servers")
    runner = ScanRunner(SCANS, lambda: settings, lambda: inventory)
    enabled = [scan for scan in SCANS if scan.interval(settings) is not None]
    try:
        scrape, *_ = await asyncio.gather(
            run_scrape(settings, inventory, budget),
            *(asyncio.wait_for(runner.run_once(scan), budget) for scan in enabled),
            return_exceptions=False,
        )
    finally:
        close_all()
    _say(progress, "")
    evidence = Evidence(settings, inventory, scrape, runner.states)
    return Report(time.time(), time.monotonic() - started, verdicts(evidence, servers or None))


def _say(progress: TextIO | None, text: str) -> None:
    if progress is not None:
        progress.write(f"\r\033[K{text}{'...' if text else ''}")
        progress.flush()


def render_text(report: Report, colour: bool) -> str:
    lines: list[str] = []
    current = None
    for verdict in report.verdicts:
        if verdict.server != current:
            current = verdict.server
            lines.append("")
            lines.append(current)
        mark = _MARKS[verdict.state]
        if colour:
            mark = f"{_COLOURS[verdict.state]}{mark}{_RESET}"
        kind = "symptom" if verdict.cause in SYMPTOMS else "cause"
        lines.append(f"  {verdict.cause.value:<24} {mark:<7}  ({kind})")
        lines.extend(f"      {line}" for line in verdict.evidence)
        if verdict.state is State.PROBLEM:
            lines.extend(f"      fix: {fix}" for fix in verdict.fix)
    problems = sum(v.state is State.PROBLEM for v in report.verdicts)
    lines.append("")
    lines.append(
        f"{problems} problem(s) found in {report.duration:.1f} s"
        if problems
        else f"no problem found in {report.duration:.1f} s"
    )
    return "\n".join(lines).lstrip("\n") + "\n"


def render_json(report: Report) -> str:
    servers: dict[str, list[dict[str, Any]]] = {}
    for verdict in report.verdicts:
        servers.setdefault(verdict.server, []).append(
            {
                "cause": verdict.cause.value,
                "kind": "symptom" if verdict.cause in SYMPTOMS else "cause",
                "state": verdict.state.value,
                "evidence": list(verdict.evidence),
                "reason": verdict.reason or None,
                "fix": list(verdict.fix),
            }
        )
    document = {
        "version": __version__,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(report.generated_at)),
        "exit_code": report.exit_code,
        "servers": [{"server": name, "causes": causes} for name, causes in servers.items()],
    }
    return json.dumps(document, indent=2) + "\n"


def diagnose_main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    interactive = sys.stderr.isatty() and args.output == "text"
    try:
        report = asyncio.run(
            collect(
                args.config_file, args.timeout, args.servers, sys.stderr if interactive else None
            )
        )
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # the checks could not run at all
        print(f"diagnose: the checks could not run: {exc!r}", file=sys.stderr)
        return EXIT_ERROR
    if args.servers and not report.verdicts:
        print(
            f"diagnose: no Exchange server named {', '.join(args.servers)} in the inventory",
            file=sys.stderr,
        )
        return EXIT_ERROR
    if args.output == "json":
        sys.stdout.write(render_json(report))
    else:
        sys.stdout.write(render_text(report, colour=sys.stdout.isatty()))
    return report.exit_code
