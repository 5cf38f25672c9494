"""The monitoring mixin: alerts, recording rules and Grafana dashboards for the exporter.

Everything is generated from :mod:`dashboards.config` by ``python -m dashboards``, which
writes ``prometheus_alerts.yaml``, ``prometheus_rules.yaml`` and ``dashboards_out/*.json``
next to this file. Rule unit tests for ``promtool test rules`` live in ``dashboards/tests/``.
"""
