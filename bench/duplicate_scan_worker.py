"""One run of the exporter's duplicate-SPN scan in a process of its own; prints JSON.

The exporter itself runs the scan in a child (``python -m exporter.scan_worker``); this does
what that child does, so the peak RSS it reports is the scan's process alone: the interpreter,
the exporter's imports and the scan. VmHWM, not ``ru_maxrss``: Linux carries the
parent's RSS at fork into the child's ``ru_maxrss`` across exec, and VmHWM starts afresh.

    python bench/duplicate_scan_worker.py CONFIG.yml
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.checks.spn import _search_target, request_for
from exporter.config import load_file
from exporter.scan_worker import run


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
    client, base = _search_target(settings)
    request = json.loads(request_for(client.target, base))
    rss_before = peak_rss_kb()
    cpu0, wall0 = _cpu(), time.perf_counter()
    # The exporter's own code path: the child's ldap3 paged search, then grouping.
    result = run(request)
    wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
    if "error" in result:
        raise SystemExit(f"scan failed: {result['error']}")
    json.dump(
        {
            "wall": wall,
            "cpu": cpu,
            "rss_before_kb": rss_before,
            "rss_kb": peak_rss_kb(),
            "scope": "forest" if base == "" else "domain",
            "objects": result["objects"],
            "values": result["values"],
            "duplicates": {key: owners for key, (_, owners) in result["owners"].items()},
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
