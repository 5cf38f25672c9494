"""Read sample values out of an exposition, as Prometheus would parse it."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample with exactly these labels, or None when absent."""
    return samples(text).get((name, frozenset(labels.items())))


def series(text: str, name: str) -> list[dict[str, str]]:
    """The label sets of every sample of ``name``."""
    return [dict(labels) for (n, labels) in samples(text) if n == name]


def expose(metrics: Iterable[Metric]) -> str:
    """The text exposition of some metric families, as a scrape would serve them."""
    families = list(metrics)

    class Collector:
        def collect(self) -> Iterable[Metric]:
            return families

    return generate_latest(Collector()).decode()
