"""Every PromQL expression the mixin ships, and the metric names they read.

Tests use this to parse each expression with promtool and to check, against a real scrape of
the exporter, that every metric the mixin reads is one the exporter emits. Expressions come
from three places: rule ``expr``s, dashboard queries (Grafana variables replaced by sample
values) and the ``printf`` formats of template queries in alert labels and annotations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .alerts import alert_rule_groups
from .config import MixinConfig
from .grafana import dashboards, panel_queries
from .rules import recording_rule_groups

# What Grafana would put in place of the dashboards' variables.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$job": "exchange-auth",
    "$server": ".+",
}
# Series Prometheus makes itself, not the exporter.
PROMETHEUS_METRICS = frozenset({"up", "ALERTS"})

# printf FORMAT ARGS... | query, where ARGS may hold raw strings with | or } in them.
_TEMPLATE_QUERY = re.compile(r'printf\s+(`[^`]*`|"(?:[^"\\]|\\.)*")(?:`[^`]*`|[^|}`])*\|\s*query')
_LABEL_VALUES = re.compile(r"label_values\((.*),\s*\w+\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![0-9.A-Za-z_:])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN", "atan2", "group_left"}
    | {"group_right", "by", "without", "on", "ignoring"}
)


@dataclass(frozen=True)
class Expression:
    where: str  # e.g. "alert ExchangeAuthQueueAuthErrors annotation description"
    promql: str


def _fill(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def _template_queries(text: str) -> list[str]:
    """The PromQL of each ``printf FORMAT ... | query`` in a Go template, placeholders filled."""
    found = []
    for match in _TEMPLATE_QUERY.finditer(text):
        literal = match.group(1)
        body = literal[1:-1]
        if literal.startswith('"'):
            body = body.encode().decode("unicode_escape")
        found.append(body.replace("%q", '"x"').replace("%s", "x"))
    return found


def expressions(config: MixinConfig) -> list[Expression]:
    out: list[Expression] = []
    for group in recording_rule_groups(config):
        for rule in group["rules"]:
            out.append(Expression(f"recording rule {rule['record']}", rule["expr"]))
    for group in alert_rule_groups(config):
        for rule in group["rules"]:
            name = rule["alert"]
            out.append(Expression(f"alert {name} expr", rule["expr"]))
            for kind in ("labels", "annotations"):
                for key, text in rule.get(kind, {}).items():
                    for query in _template_queries(text):
                        out.append(Expression(f"alert {name} {kind[:-1]} {key}", query))
    for board_name, board in dashboards(config).items():
        for variable in board.get("templating", {}).get("list", []):
            match = _LABEL_VALUES.fullmatch(str(variable.get("query", "")))
            if match is not None:
                selector = _fill(match.group(1))
                out.append(
                    Expression(f"dashboard {board_name} variable {variable['name']}", selector)
                )
        for title, expr in panel_queries(board):
            out.append(Expression(f"dashboard {board_name} panel {title!r}", _fill(expr)))
    return out


def metric_names(promql: str) -> set[str]:
    """The metric names an expression selects (not functions, keywords or label names)."""
    text = _STRING.sub('""', promql)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group()
        if name in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(name)
    return names


def recording_rule_names(config: MixinConfig) -> set[str]:
    return {rule["record"] for group in recording_rule_groups(config) for rule in group["rules"]}


def exporter_metrics_read(config: MixinConfig) -> dict[str, list[str]]:
    """Each metric the mixin expects from the exporter, with where it is read."""
    produced = recording_rule_names(config) | PROMETHEUS_METRICS
    read: dict[str, list[str]] = {}
    for expression in expressions(config):
        for name in metric_names(expression.promql) - produced:
            read.setdefault(name, []).append(expression.where)
    return read
