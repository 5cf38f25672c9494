"""``python -m dashboards`` writes the generated files; ``--check`` only says which are stale."""

from __future__ import annotations

import argparse
import sys

from .render import ROOT, stale, stale_deploy, write, write_deploy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dashboards",
        description="Generate the monitoring mixin (alerts, recording rules, dashboards).",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 and list the generated files that are out of date",
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = [f"dashboards/{relative}" for relative in stale()] + stale_deploy()
        for relative in problems:
            print(f"stale: {relative} (run `python -m dashboards`)", file=sys.stderr)
        return 1 if problems else 0
    for path in [*write(), *write_deploy()]:
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
