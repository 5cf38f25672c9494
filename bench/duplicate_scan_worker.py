"""One run of the exporter's duplicate-SPN scan in a process of its own; prints JSON.

Used by bench/duplicate_scan.py, so the peak RSS it reports is the scan's process alone: the
interpreter, the exporter's imports and the scan. VmHWM, not ``ru_maxrss``: Linux carries the
parent's RSS at fork into the child's ``ru_maxrss`` across exec, and VmHWM starts afresh.

    python bench/duplicate_scan_worker.py CONFIG.yml
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.checks.spn import scan_duplicates
from exporter.config import load_file
from exporter.inventory import build_inventory
from exporter.ldap import close_all


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_kb() -> int:
    """This process's peak resident set (VmHWM), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    settings = load_file(sys.argv[1])
    inventory = asyncio.run(build_inventory(settings))
    rss_before = peak_rss_kb()
    cpu0, wall0 = _cpu(), time.perf_counter()
    # The exporter's own code path: ldap3 paged search in its LDAP thread pool, then grouping.
    result = asyncio.run(scan_duplicates(settings, inventory))
    wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
    close_all()
    json.dump(
        {
            "wall": wall,
            "cpu": cpu,
            "rss_before_kb": rss_before,
            "rss_kb": peak_rss_kb(),
            "scope": result.scope,
            "objects": result.objects,
            "values": result.spns,
            "duplicates": {key: list(owners) for key, (_, owners) in result.owners.items()},
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
