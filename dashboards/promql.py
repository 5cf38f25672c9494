"""Small PromQL builders, so rules and dashboards read like the query they produce."""

from __future__ import annotations

from .config import MixinConfig


def selector(config: MixinConfig, metric: str, *matchers: str) -> str:
    """``metric{<job selector>, matchers...}``."""
    return f"{metric}{{{', '.join([config.job_selector, *matchers])}}}"


def label_replace(expr: str, dst: str, replacement: str, src: str, regex: str) -> str:
    return f'label_replace({expr}, "{dst}", "{replacement}", "{src}", "{regex}")'


def set_label(expr: str, name: str, value: str) -> str:
    """Give every series the label ``name="value"`` (label_replace on the empty label)."""
    return label_replace(expr, name, value, "", "")


def copy_label(expr: str, dst: str, src: str) -> str:
    return label_replace(expr, dst, "$1", src, "(.+)")


def by(labels: tuple[str, ...]) -> str:
    return ", ".join(labels)


def indent(expr: str, spaces: int = 2) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line else line for line in expr.splitlines())
