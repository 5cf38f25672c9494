"""The monitoring mixin (dashboards/): generated files, promtool, rule tests, conventions.

promtool comes with Debian's ``prometheus`` package (``make system-deps`` installs it); these
tests fail, never skip, without it. Which metrics the expressions read is checked against a
real scrape in tests/integration/test_prometheus_e2e.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards import render
from dashboards.alerts import REPLICATION_RESULTS, alert_rule_groups
from dashboards.config import CONFIG, MixinConfig, duration
from dashboards.expressions import expressions, metric_names, recording_rule_names
from dashboards.grafana import dashboards, panel_queries
from dashboards.rules import CAUSE_VERDICT, EXCHANGE_SERVERS, VERDICT_CAUSES, recording_rule_groups
from exporter.config import ClockCheck, ReplicationCheck
from exporter.protocols.replication import RESULTS
from exporter.verdicts import Cause

ROOT = Path(__file__).resolve().parents[2]
MIXIN = ROOT / "dashboards"
RULE_TESTS = sorted((MIXIN / "tests").glob("*.yaml"))
RUNBOOK = ROOT / "docs" / "runbook.md"
TEST_KINDS = ("fires", "blip", "absent")


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool not found: apt-get install prometheus (or make system-deps)")
    return subprocess.run(
        [tool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in alert_rule_groups(CONFIG) for rule in group["rules"]]


def test_generated_files_are_up_to_date() -> None:
    stale = render.stale()
    assert not stale, f"regenerate with `python -m dashboards`: {stale}"


def test_generation_is_deterministic(tmp_path: Path) -> None:
    render.write(tmp_path)
    assert render.stale(tmp_path) == []
    assert sorted(p.name for p in (tmp_path / "dashboards_out").iterdir()) == sorted(
        p.name for p in (MIXIN / "dashboards_out").iterdir()
    )


def test_promtool_check_rules_on_the_generated_files() -> None:
    result = promtool("check", "rules", render.ALERTS_FILE, render.RULES_FILE, cwd=MIXIN)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no rule tests under dashboards/tests/"
    result = promtool("test", "rules", *(str(p) for p in RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def _rule_tests() -> list[dict[str, Any]]:
    groups = []
    for path in RULE_TESTS:
        document = yaml.safe_load(path.read_text())
        assert {"../prometheus_alerts.yaml", "../prometheus_rules.yaml"} <= set(
            document["rule_files"]
        ), f"{path.name} must load both generated files"
        groups.extend(document["tests"])
    return groups


_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^{}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def _first_selector(expr: str) -> tuple[str, list[tuple[str, str, str]]]:
    """The metric and matchers of the first selector: what an alert is about."""
    match = _SELECTOR.search(expr)
    assert match is not None, expr
    return match.group(1), _MATCHER.findall(match.group(2))


def _matches(selector: tuple[str, list[tuple[str, str, str]]], series: str) -> bool:
    name, matchers = selector
    found = _SELECTOR.fullmatch(series.strip())
    assert found is not None, series
    if found.group(1) != name:
        return False
    labels = {k: v for k, _, v in _MATCHER.findall(found.group(2))}
    for label, op, value in matchers:
        have = labels.get(label, "")
        ok = {
            "=": have == value,
            "!=": have != value,
            "=~": re.fullmatch(value, have) is not None,
            "!~": re.fullmatch(value, have) is None,
        }[op]
        if not ok:
            return False
    return True


def test_every_alert_fires_stays_silent_on_a_blip_and_when_absent() -> None:
    by_name: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for group in _rule_tests():
        name = group.get("name", "")
        alert, _, kind = name.partition(": ")
        if kind in TEST_KINDS:
            by_name[(alert, kind)].append(group)
    problems = []
    for rule in alert_rules():
        alert = rule["alert"]
        for kind in TEST_KINDS:
            groups = by_name.get((alert, kind), [])
            cases = [
                case
                for group in groups
                for case in group.get("alert_rule_test", [])
                if case["alertname"] == alert
            ]
            if not cases:
                problems.append(f'no test group "{alert}: {kind}" with an alert_rule_test for it')
                continue
            firing = [case for case in cases if case.get("exp_alerts")]
            if kind == "fires" and not firing:
                problems.append(f"{alert}: fires: no case expects it to fire")
            if kind != "fires" and firing:
                problems.append(f"{alert}: {kind}: a case expects it to fire")
            if kind == "absent":
                selected = _first_selector(rule["expr"])
                for series in (s["series"] for g in groups for s in g["input_series"]):
                    if _matches(selected, series):
                        problems.append(f"{alert}: absent: {series} is what it alerts on")
    assert not problems, "\n".join(problems)


def test_firing_cases_give_exact_labels_and_every_annotation() -> None:
    by_alert = {rule["alert"]: rule for rule in alert_rules()}
    for group in _rule_tests():
        for case in group.get("alert_rule_test", []):
            rule = by_alert[case["alertname"]]
            for expected in case.get("exp_alerts") or []:
                assert expected["exp_labels"]["severity"] == rule["labels"]["severity"]
                assert set(expected["exp_annotations"]) == set(rule["annotations"]), group["name"]


def test_alert_conventions() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"ExchangeAuth(?:[A-Z][a-z0-9]*|KDCs?)+", name), name
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}, name
        assert rule["annotations"]["runbook_url"] == f"{CONFIG.runbook_url}#{name.lower()}"
        # The description names the server (or the exporter instance) and the value, unless
        # the alert is a plain state (== 0), whose value says nothing more.
        description = rule["annotations"]["description"]
        assert "$labels." in description, name
        assert "$value" in description or "query" in description or "== 0" in rule["expr"], name


def test_every_alert_has_a_runbook_section() -> None:
    headings = {
        line[3:].strip() for line in RUNBOOK.read_text().splitlines() if line.startswith("## ")
    }
    alerts = {rule["alert"] for rule in alert_rules()}
    assert alerts <= headings, f"sections missing in docs/runbook.md: {sorted(alerts - headings)}"
    stray = {h for h in headings if h.startswith("ExchangeAuth")} - alerts
    assert not stray, f"runbook sections for alerts that do not exist: {sorted(stray)}"


def test_every_expression_parses(tmp_path: Path) -> None:
    found = expressions(CONFIG)
    assert len({e.where.split()[0] for e in found}) == 3  # rules, alerts, dashboards
    rules = [{"record": f"mixin:parse_check:{i}", "expr": e.promql} for i, e in enumerate(found)]
    path = tmp_path / "parse.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "parse", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    if result.returncode != 0:
        where = {f"mixin:parse_check:{i}": e.where for i, e in enumerate(found)}
        report = result.stdout + result.stderr
        for record, place in where.items():
            report = report.replace(record, f"{record} ({place})")
        pytest.fail(report)


def test_metric_names_are_read_from_selectors_only() -> None:
    assert metric_names(
        'sum by (job, server) (rate(exchange_auth_x_total{job="a", server=~"b|c"}[5m])) '
        '> bool 1e9 or on (job) label_replace(up, "d", "$1", "e", "(.+)") unless ALERTS'
    ) == {"exchange_auth_x_total", "up", "ALERTS"}


def test_short_for_durations_for_end_to_end_tests() -> None:
    short = CONFIG.for_.all_set_to(5)
    groups = alert_rule_groups(MixinConfig(for_=short))
    assert {rule["for"] for group in groups for rule in group["rules"]} == {"5s"}
    assert duration(300) == "5m" and duration(5400) == "1h30m" and duration(0) == "0s"


def test_dashboards() -> None:
    boards = dashboards(CONFIG)
    assert set(boards) == {
        "exchange-auth-overview",
        "exchange-auth-clocks",
        "exchange-auth-kerberos",
        "exchange-auth-spn",
        "exchange-auth-queues",
        "exchange-auth-replication",
    }
    uids = set()
    for name, board in boards.items():
        uids.add(board["uid"])
        assert board["uid"].startswith(CONFIG.dashboard_uid_prefix + "-"), name
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert {"datasource", "job", "server"} <= set(variables), name
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel.get("options"), f"{name}: panel {panel['title']!r} has no options"
            assert panel.get("targets"), f"{name}: panel {panel['title']!r} has no query"
            assert panel.get("description"), f"{name}: panel {panel['title']!r}"
        queries = " ".join(expr for _, expr in panel_queries(board))
        assert '$job"' in queries, name
        # What was written is what the builders produced.
        written = json.loads((MIXIN / "dashboards_out" / f"{name}.json").read_text())
        assert written == board
    assert len(uids) == len(boards)


# --- the attribution reads the exporter's verdicts ------------------------------------------------


def test_the_mixin_knows_every_cause_of_the_exporter_in_kb_order() -> None:
    assert [c.name for c in VERDICT_CAUSES] == [c.value for c in Cause]
    steps = [c.kb_step for c in VERDICT_CAUSES if c.kb_step is not None and c.in_kb]
    assert steps == ["1", "2", "3", "4", "5", "6"]
    assert dict((c.name, c.kb_step) for c in VERDICT_CAUSES)["replication"] == "2"
    # A cause beyond the KB sorts after the KB's steps (descriptions sort on kb_step), and its
    # title says it is not a KB step.
    beyond = [c for c in VERDICT_CAUSES if not c.in_kb]
    assert [c.name for c in beyond] == ["kerberos_keys"]
    assert all(c.kb_step is not None and c.kb_step > "6" for c in beyond)
    symptoms = {r["alert"]: r for r in alert_rules()}["ExchangeAuthQueueAuthErrors"]
    assert (
        '{{ if eq .Labels.cause "kerberos_keys" }} (beyond KB 979174)'
        in (symptoms["annotations"]["description"])
    )


def test_verdicts_are_read_not_derived() -> None:
    rules = {r["record"]: r["expr"] for g in recording_rule_groups(CONFIG) for r in g["rules"]}
    assert metric_names(rules[EXCHANGE_SERVERS]) == {
        "exchange_auth_cause",
        "exchange_auth_cause_unknown",
        "exchange_auth_server_info",  # only to leave the Edge servers out
    }
    assert metric_names(rules[CAUSE_VERDICT]) == {
        "exchange_auth_cause",
        "exchange_auth_cause_unknown",
        EXCHANGE_SERVERS,
    }
    # The overview matrix is the verdict rule, nothing else.
    overview = dashboards(CONFIG)["exchange-auth-overview"]
    (matrix,) = [p for p in overview["panels"] if p.get("title") == "Causes by Exchange server"]
    assert [t["expr"] for t in matrix["targets"]] == [
        f'{CAUSE_VERDICT}{{job=~"$job", server=~"$server"}}'
    ]
    # The symptom alerts list the causes the exporter finds, and those it could not judge.
    symptoms = {
        r["alert"]: r
        for r in alert_rules()
        if r["alert"] in ("ExchangeAuthQueueAuthErrors", "ExchangeAuthSmtpLogAuthFailures")
    }
    assert len(symptoms) == 2
    for rule in symptoms.values():
        description = rule["annotations"]["description"]
        assert f"{CAUSE_VERDICT}{{job=%q,instance=%q,server=%q," in description
        assert "exchange_auth_cause_unknown{" in description


def test_thresholds_agree_with_the_exporters_verdicts() -> None:
    # The exporter counts a skew above max_skew - warning_margin as a problem, like the
    # near-tolerance alert; replication is stale after the same age. Same defaults, or the
    # matrix and the alerts would disagree.
    clock, replication = ClockCheck(), ReplicationCheck()
    assert CONFIG.kerberos_tolerance_seconds == clock.max_skew
    assert CONFIG.skew_warning_seconds == clock.max_skew - clock.warning_margin
    assert CONFIG.replication_stale_after_seconds == replication.stale_after


def test_replication_results_are_the_exporters_and_the_runbook_explains_them() -> None:
    names = {result.name: code for code, result in RESULTS.items()}
    assert set(REPLICATION_RESULTS) <= set(names)
    runbook = RUNBOOK.read_text()
    for code in (1311, 1722, 1256, 8453, 8524, 8606, 8614):
        name = RESULTS[code].name
        assert re.search(rf"^\| {code} \| `{name}` \|", runbook, re.M), (code, name)
        assert name in REPLICATION_RESULTS, name
    for command in ("repadmin /showrepl", "repadmin /replsummary", "repadmin /syncall /AdeP"):
        assert command in runbook, command


def test_recording_rules_do_not_shadow_exporter_metrics() -> None:
    assert all(name.startswith("exchange_auth:") for name in recording_rule_names(CONFIG))
