"""The status page at ``/``: the verdicts as a matrix, Exchange servers against KB causes.

Server-rendered, no external assets, readable without JavaScript (evidence in ``<details>``),
and it refreshes itself.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence

from . import __version__
from .inventory import Inventory
from .verdicts import BEYOND_KB, SYMPTOMS, Cause, State, Verdict

__all__ = ["render_status_page"]

REFRESH_SECONDS = 30
RUNBOOK = (
    "https://github.com/exchange-auth-exporter/exchange-auth-exporter/blob/main/docs/runbook.md"
)

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}
th.cause{writing-mode:vertical-rl;transform:rotate(180deg);font-weight:normal;white-space:nowrap}
td.ok{background:#d9f2d9}td.problem{background:#f7c6c6;font-weight:bold}td.unknown{background:#e6e6e6;color:#555}
td details{max-width:22em;font-weight:normal}td summary{cursor:pointer}
.legend span{display:inline-block;padding:0 .5em;margin-right:.5em}
small{color:#555}
"""


def _cell(verdict: Verdict) -> str:
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in verdict.evidence)
    fixes = ""
    if verdict.state is State.PROBLEM and verdict.fix:
        fixes = (
            "<p>fix:</p><ul>"
            + "".join(f"<li><code>{html.escape(f)}</code></li>" for f in verdict.fix)
            + "</ul>"
        )
    title = html.escape(" / ".join(verdict.evidence), quote=True)
    return (
        f'<td class="{verdict.state.value}" data-server="{html.escape(verdict.server, quote=True)}" '
        f'data-cause="{verdict.cause.value}" data-state="{verdict.state.value}" title="{title}">'
        f"<details><summary>{verdict.state.value}</summary><ul>{lines}</ul>{fixes}</details></td>"
    )


def render_status_page(
    verdicts: Sequence[Verdict], inventory: Inventory, realm: str, evidence_time: float | None
) -> str:
    causes = list(Cause)
    by_server: dict[str, dict[Cause, Verdict]] = {}
    for verdict in verdicts:
        by_server.setdefault(verdict.server, {})[verdict.cause] = verdict
    header = "".join(
        f'<th class="cause"><a href="{RUNBOOK}#{c.value.replace("_", "-")}">{c.value}</a>'
        f"{' (symptom)' if c in SYMPTOMS else ' (beyond the KB)' if c in BEYOND_KB else ''}</th>"
        for c in causes
    )
    rows = "\n".join(
        f"<tr><th>{html.escape(server)}</th>"
        + "".join(_cell(found[c]) for c in causes if c in found)
        + "</tr>"
        for server, found in by_server.items()
    )
    problems = sum(v.state is State.PROBLEM for v in verdicts)
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(evidence_time))
        if evidence_time
        else "no scrape yet"
    )
    dcs = ", ".join(html.escape(s.name) for s in inventory.domain_controllers) or "none"
    summary = (
        f'<p id="summary" data-problems="{problems}"><b>{problems} problem(s)</b> across '
        f"{len(by_server)} Exchange server(s).</p>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>exchange-auth-exporter: {problems} problem(s)</title>
<style>{_STYLE}</style>
</head><body>
<h1>Exchange server authentication, realm {html.escape(realm)}</h1>
{summary}
<p><small>Evidence from {when}; this page refreshes every {REFRESH_SECONDS} s.
Domain controllers: {dcs}.</small></p>
<p class="legend"><span class="ok" style="background:#d9f2d9">ok</span><span style="background:#f7c6c6">problem</span><span
style="background:#e6e6e6">unknown (no evidence)</span> Open a cell for the evidence and the fix.</p>
<table id="verdicts">
<tr><th>Exchange server</th>{header}</tr>
{rows}
</table>
<p><a href="metrics">/metrics</a> · <a href="config">/config</a> · <a href="{RUNBOOK}">runbook</a> ·
<a href="-/healthy">/-/healthy</a> · <a href="-/ready">/-/ready</a></p>
<p><small>exchange-auth-exporter {html.escape(__version__)}</small></p>
</body></html>
"""
