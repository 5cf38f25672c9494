"""The monitoring mixin end to end: a real Prometheus scrapes the exporter against the broken lab.

Prometheus (Debian's ``prometheus``) runs on 127.0.0.1 with a temporary data directory, scrapes
the exporter every 2 s and evaluates the generated rules every second, with every ``for`` cut to
5 s through the mixin's config. The exporter watches the whole lab: dc1, dc2 (420 s ahead, a KDC
without LDAP), dc9 (dead), exch1-3 and the Exchange organisation in AD, plus queue snapshots and
protocol logs written here. What must fire is derived from the lab's own description of its
faults (``lab.exchange_directory``, ``lab.smtp_servers``, the hosts' clock offsets, which DCs
serve LDAP), so a fault added to the lab shows up here as an alert to expect. The overview
matrix shows the exporter's own verdicts (``exchange_auth_cause``); every cell must agree with
the alerts of its cause.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from dashboards.config import CONFIG
from dashboards.expressions import (
    PROMETHEUS_METRICS,
    exporter_metrics_read,
    expressions,
    recording_rule_names,
)
from dashboards.render import alerts_yaml, rules_yaml
from dashboards.rules import CAUSE_VERDICT, VERDICT_CAUSES
from exporter.background import ScanState
from exporter.checks.replication import (
    DcOutcome,
    DcReading,
    PartnerState,
    Replication,
    replication_metrics,
)
from exporter.config import load_text
from exporter.inventory import Inventory
from exporter.ldap import LdapClient, LdapTarget
from exporter.servers import Role, Server
from tests.integration.exporter_process import ExporterProcess, exporter_process
from tests.lab import Lab
from tests.prometheus_server import PrometheusServer, prometheus_server

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

JOB = "exchange-auth"
SCRAPE_INTERVAL = "2s"
FOR_SECONDS = 5
MIXIN = dataclasses.replace(CONFIG, for_=CONFIG.for_.all_set_to(FOR_SECONDS))
AUTH_FAILURE = (
    "[{LRT=11/29/2026 9:43:58 AM};{LED=451 4.4.0 Primary target IP address responded with: "
    '"454 4.7.0 Temporary authentication failure." Attempted failover to alternate host, but '
    "that did not succeed.};{FQDN=exch1.corp.example.test};{IP=127.0.10.21}]"
)
# Queue snapshots written for the lab: exch1 (and any server added later) healthy, exch2 and
# exch3 with 454 4.7.0.
HEALTHY_QUEUES = [("3", 0, "dag01", "")]
QUEUES: dict[str, list[tuple[str, int, str, str]]] = {
    "exch1": HEALTHY_QUEUES,
    "exch2": [("7", 42, "dag01", AUTH_FAILURE), ("8", 3, "exch3.corp.example.test", AUTH_FAILURE)],
    "exch3": [("5", 5, "dag01", AUTH_FAILURE)],
}
# Protocol logs: exch2 answers senders with 454 4.7.0, exch3 gets it when sending.
LOG_FAILURES = {"exch2": "RECV", "exch3": "SEND"}
LOG_HEADER = (
    "\ufeff#Software: Microsoft Exchange Server\r\n#Version: 15.0.0.0\r\n"
    "#Log-type: SMTP {kind} Protocol Log\r\n#Date: {date}\r\n"
    "#Fields: date-time,connector-id,session-id,sequence-number,local-endpoint,remote-endpoint,"
    "event,data,context\r\n"
)


# --- the lab as the exporter and Prometheus see it ---------------------------------------------


def _snapshot(server: str, queues: list[tuple[str, int, str, str]]) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return json.dumps(
        {
            "schema_version": 1,
            "server": server,
            "generated_at": now,
            "generator": "test_prometheus_e2e",
            "queues": [
                {
                    "Identity": f"{server.split('.')[0].upper()}\\{queue}",
                    "DeliveryType": {"name": "SmtpRelayToDag", "value": 14},
                    "Status": {"name": "Retry" if error else "Active", "value": 3 if error else 1},
                    "MessageCount": count,
                    "NextHopDomain": hop,
                    "LastError": error,
                }
                for queue, count, hop, error in queues
            ],
        }
    )


class ProtocolLogWriter:
    """Appends 454 4.7.0 responses to the lab servers' protocol logs while the test runs."""

    def __init__(self, folders: dict[str, tuple[Path, str]]) -> None:
        self.folders = folders  # server -> (folder, "SEND" or "RECV")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._sequence = 0

    def _line(self, direction: str) -> str:
        self._sequence += 1
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        event = "<" if direction == "SEND" else ">"
        return (
            f"{now},Intra-Organization SMTP Send Connector,08DE2F6A1B3C4D01,{self._sequence},"
            f"127.0.0.1:50213,127.0.0.2:2525,{event},454 4.7.0 Temporary authentication failure,\r\n"
        )

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for folder, direction in self.folders.values():
                path = folder / f"{direction}20261129-1.LOG"
                with path.open("a", encoding="utf-8", newline="") as log:
                    if log.tell() == 0:
                        kind = "Send" if direction == "SEND" else "Receive"
                        log.write(LOG_HEADER.format(kind=kind, date="2026-11-29T00:00:00.000Z"))
                    log.write(self._line(direction) * 2)

    def __enter__(self) -> ProtocolLogWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def exporter_config(lab: Lab, work: Path, ldap_password_file: Path | None = None) -> Path:
    snapshots, logs = [], []
    for server in lab.smtp_servers:
        short = server.short_name
        path = work / "queues" / f"{short.upper()}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(_snapshot(server.name, QUEUES.get(short, HEALTHY_QUEUES)))
        snapshots.append({"server": server.name, "path": str(path)})
        folder = work / "ProtocolLog" / short
        folder.mkdir(parents=True, exist_ok=True)
        logs.append({"server": server.name, "path": str(folder)})
    overrides: dict[str, Any] = {
        "ldap": {"global_catalog_url": lab.gc_ldaps_url},
        "dns": {"nameservers": [lab.dns_server], "timeout": "1s"},
        "domain_controllers": {
            "static": [h.static_entry for h in (*lab.domain_controllers, lab.dead_dc)]
        },
        "exchange_servers": {
            "discover": "ldap",
            "static": [s.static_entry for s in lab.smtp_servers],
        },
        "checks": {
            "clock": {"sources": ["ntp", "kerberos", "ldap"]},
            "queues": {"snapshots": snapshots, "protocol_logs": logs, "poll_interval": "1s"},
            # Every 5 s rather than 5 min, so that a DC stopped by a test shows within seconds.
            "replication": {"refresh_interval": "5s"},
        },
    }
    if ldap_password_file is not None:
        overrides["ldap"]["password_file"] = str(ldap_password_file)
    config = lab.exporter_config(**overrides)
    path = work / "exporter.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --- Prometheus ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prometheus-e2e")


@pytest.fixture(scope="module")
def exporter(lab: Lab, work: Path) -> Iterator[ExporterProcess]:
    config = exporter_config(lab, work)
    with exporter_process(config, work / "exporter.log") as running:
        folders = {
            short: (work / "ProtocolLog" / short, direction)
            for short, direction in LOG_FAILURES.items()
        }
        # The follower takes a folder's existing files from their end: write after it has
        # seen the (empty) folders, so every line counts.
        time.sleep(2)
        with ProtocolLogWriter(folders):
            yield running


@pytest.fixture(scope="module")
def prometheus(exporter: ExporterProcess, work: Path) -> Iterator[PrometheusServer]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: apt-get install prometheus (or make system-deps)")
    (work / "alerts.yaml").write_text(alerts_yaml(MIXIN))
    (work / "rules.yaml").write_text(rules_yaml(MIXIN))
    target = exporter.url.removeprefix("http://")
    (work / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {
                    "scrape_interval": SCRAPE_INTERVAL,
                    "scrape_timeout": SCRAPE_INTERVAL,
                    "evaluation_interval": "1s",
                },
                "rule_files": [str(work / "alerts.yaml"), str(work / "rules.yaml")],
                "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
            }
        )
    )
    with prometheus_server(binary, work / "prometheus.yml", work) as server:
        yield server


def _wait(condition: Callable[[], bool], *, timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what()}")
        time.sleep(1)


# --- what the lab must make fire ----------------------------------------------------------------

Key = tuple[str, frozenset[tuple[str, str]]]


def _key(alertname: str, **labels: str) -> Key:
    return alertname, frozenset(labels.items())


IDENTITY = {
    "ExchangeAuthClockSkewExceedsTolerance": ("exchange_server", "domain_controller"),
    "ExchangeAuthClockSkewNearTolerance": ("exchange_server", "domain_controller"),
    "ExchangeAuthKerberosPortDown": ("server", "port", "transport"),
    "ExchangeAuthSpnMissing": ("server", "spn"),
    "ExchangeAuthSpnDuplicate": ("server", "spn"),
    "ExchangeAuthExchangeServerAuthNotAdvertised": ("server", "port"),
    "ExchangeAuthReceiveConnectorExchangeServerAuthDisabled": ("server", "connector"),
    "ExchangeAuthQueueAuthErrors": ("server",),
    "ExchangeAuthSmtpLogAuthFailures": ("server", "direction"),
    "ExchangeAuthReplicationFailing": ("domain_controller", "partner", "naming_context"),
    "ExchangeAuthReplicationStale": ("domain_controller", "partner", "naming_context"),
    "ExchangeAuthReplicationNeverSucceeded": ("domain_controller", "partner", "naming_context"),
    "ExchangeAuthReplicationDcUnreadable": ("domain_controller",),
    "ExchangeAuthServiceTicketFailing": ("server", "spn"),
    "ExchangeAuthServiceTicketFailingOnSomeDcs": ("server", "spn", "domain_controller"),
    "ExchangeAuthKerberosKeysUnusable": ("server",),
    "ExchangeAuthAccountRC4Only": ("server",),
}


def _as_key(alert: dict[str, Any]) -> Key:
    labels = alert["labels"]
    name = labels["alertname"]
    wanted = IDENTITY.get(name, tuple(k for k in labels if k not in ("alertname", "severity")))
    # SPNs compare without case; the duplicate scan spells each as its first holder does.
    return _key(
        name, **{k: labels.get(k, "").lower() if k == "spn" else labels.get(k, "") for k in wanted}
    )


def ldap_domain_controllers(lab: Lab) -> set[str]:
    """The DCs whose LDAP answers: those running a samba with its ldap service (dc1, not the
    KDC-only dc2, not the dead dc9)."""
    sambas = (lab.samba, lab.skewed_samba, getattr(lab, "replica_samba", None))
    return {
        samba.spec.fqdn
        for samba in sambas
        if samba is not None and samba.process is not None and "ldap" in samba.services
    }


def _ticket_kdcs(lab: Lab) -> dict[str, dict[str, int]]:
    """Per DC whose KDC answers tickets (dc1, and dc3 when it runs), how many accounts hold each
    SPN in its own copy of the directory, case-insensitive. They differ: a duplicate planted by
    writing dc1's database file directly carries no replication metadata, so the replica may
    never receive it (svc-legacy's SMTPSVC/exch3 does not reach dc3)."""
    hosts = [lab.dc, *([lab.replica_dc] if lab.replica_dc_running and lab.replica_dc else [])]
    held: dict[str, dict[str, int]] = {}
    for host in hosts:
        target = LdapTarget(
            host.address,
            636,
            True,
            False,
            False,
            None,
            10.0,
            f"Administrator@{lab.exchange_directory.dns_domain}",
            SecretStr(lab.admin_password),
        )
        client = LdapClient(target)
        try:
            entries = client.search(
                lab.exchange_directory.domain_dn,
                "(servicePrincipalName=*)",
                ["servicePrincipalName"],
            )
        finally:
            client.close()
        counts: dict[str, int] = {}
        for entry in entries:
            for spn in {v.lower() for v in entry.attributes.get("servicePrincipalName", [])}:
                counts[spn] = counts.get(spn, 0) + 1
        held[host.name] = counts
    return held


def expected_alerts(lab: Lab) -> set[Key]:
    directory = lab.exchange_directory
    tolerance, warning = MIXIN.kerberos_tolerance_seconds, MIXIN.skew_warning_seconds
    expected: set[Key] = set()
    for exchange in lab.exchange_servers:
        for dc in lab.domain_controllers:
            skew = abs(exchange.ntp_offset - dc.ntp_offset)
            pair = {"exchange_server": exchange.name, "domain_controller": dc.name}
            if skew > tolerance:
                expected.add(_key("ExchangeAuthClockSkewExceedsTolerance", **pair))
            if skew > warning:
                expected.add(_key("ExchangeAuthClockSkewNearTolerance", **pair))
    # dc9: TCP refused, UDP dropped, on both ports; every other DC answers.
    for port in ("88", "464"):
        for transport in ("udp", "tcp"):
            expected.add(
                _key(
                    "ExchangeAuthKerberosPortDown",
                    server=lab.dead_dc.name,
                    port=port,
                    transport=transport,
                )
            )
    classes = re.compile(rf"(?i)({MIXIN.spn_service_classes_regex})/")
    for server in directory.members:
        for spn in directory.missing_spns(server.name):
            expected.add(_key("ExchangeAuthSpnMissing", server=server.fqdn, spn=spn.lower()))
        for connector in server.receive_connectors:
            if not connector.exchange_server_auth and not re.fullmatch(
                MIXIN.receive_connector_ignore_regex, connector.name
            ):
                expected.add(
                    _key(
                        "ExchangeAuthReceiveConnectorExchangeServerAuthDisabled",
                        server=server.fqdn,
                        connector=connector.name,
                    )
                )
    for duplicate in directory.duplicate_spns:
        if not classes.match(duplicate.spn):
            continue
        owners = [
            s.fqdn for s in directory.members if duplicate.spn in map(str.lower, s.expected_spns)
        ]
        expected.add(
            _key("ExchangeAuthSpnDuplicate", server=owners[0] if owners else "", spn=duplicate.spn)
        )
    # The service-ticket check asks every DC for SMTP/ and SMTPSVC/ with the FQDN; a KDC refuses
    # one that no account or more than one holds in its own copy of the directory (dc2's clock
    # is off and dc9 is down: those refuse everything, for reasons the ticket alerts leave out).
    kdcs = _ticket_kdcs(lab)
    for server in directory.members:
        for service in ("SMTP", "SMTPSVC"):
            spn = f"{service}/{server.fqdn}".lower()
            refusing = [kdc for kdc, held in kdcs.items() if held.get(spn, 0) != 1]
            if len(refusing) == len(kdcs):
                expected.add(_key("ExchangeAuthServiceTicketFailing", server=server.fqdn, spn=spn))
            for kdc in refusing if len(refusing) < len(kdcs) else ():
                expected.add(
                    _key(
                        "ExchangeAuthServiceTicketFailingOnSomeDcs",
                        server=server.fqdn,
                        spn=spn,
                        domain_controller=kdc,
                    )
                )
    # The replication state of a DC without LDAP cannot be read. The DCs that can be read have
    # no partner that fails: dc1 replicates with no other DC in this lab.
    readable = ldap_domain_controllers(lab)
    for dc in (*lab.domain_controllers, lab.dead_dc):
        if dc.name not in readable:
            expected.add(_key("ExchangeAuthReplicationDcUnreadable", domain_controller=dc.name))
    for smtp in lab.smtp_servers:
        if smtp.hub_port not in smtp.x_exps_ports:
            expected.add(
                _key(
                    "ExchangeAuthExchangeServerAuthNotAdvertised",
                    server=smtp.name,
                    port=str(smtp.hub_port),
                )
            )
        if any(error for *_, error in QUEUES.get(smtp.short_name, HEALTHY_QUEUES)):
            expected.add(_key("ExchangeAuthQueueAuthErrors", server=smtp.name))
        if smtp.short_name in LOG_FAILURES:
            direction = "receive" if LOG_FAILURES[smtp.short_name] == "RECV" else "send"
            expected.add(
                _key("ExchangeAuthSmtpLogAuthFailures", server=smtp.name, direction=direction)
            )
    return expected


@pytest.fixture(scope="module")
def firing(lab: Lab, prometheus: PrometheusServer) -> list[dict[str, Any]]:
    """The firing alerts, once every expected one fires (and a few evaluations more)."""
    expected = expected_alerts(lab)

    def missing() -> set[Key]:
        return expected - {_as_key(a) for a in prometheus.alerts()}

    _wait(
        lambda: not missing(),
        timeout=150,
        what=lambda: (
            "the expected alerts; still missing:\n"
            + "\n".join(sorted(map(str, missing())))
            + f"\nfiring: {sorted(map(str, (_as_key(a) for a in prometheus.alerts())))}"
        ),
    )
    # Whatever was going to fire beside them has had its `for` by now.
    time.sleep(FOR_SECONDS + 3)
    return prometheus.alerts()


# --- the tests ----------------------------------------------------------------------------------


def test_expected_alerts_fire_and_none_for_healthy_servers(
    lab: Lab, firing: list[dict[str, Any]]
) -> None:
    expected = expected_alerts(lab)
    got = {_as_key(a) for a in firing}
    assert got == expected, (
        f"unexpected: {sorted(map(str, got - expected))}\nmissing: {sorted(map(str, expected - got))}"
    )
    # The healthy Exchange server has no alert of its own, and the healthy DC none either.
    healthy = lab.exchange_directory.server("EXCH1").fqdn
    for alert in firing:
        assert alert["labels"].get("server") not in (healthy, lab.dc.name), alert


def test_annotations_expand_without_template_errors(firing: list[dict[str, Any]]) -> None:
    for alert in firing:
        for name, text in [*alert["annotations"].items(), *alert["labels"].items()]:
            assert "error expanding template" not in text, (name, text)
            assert "error executing template" not in text, (name, text)
            assert "<no value>" not in text, (name, text)
        assert alert["annotations"]["runbook_url"].endswith(
            "#" + alert["labels"]["alertname"].lower()
        )


def _section(description: str, title: str) -> list[str]:
    """The ``- `` lines under the line starting with ``title``."""
    lines = description.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    found = []
    for line in lines[start + 1 :]:
        if not line.startswith("- "):
            break
        found.append(line[2:])
    return found


TITLES = {c.name: c.title for c in VERDICT_CAUSES}


def _verdicts(prometheus: PrometheusServer) -> dict[tuple[str, str], float]:
    """(server, cause) -> 1 problem, 0 ok, -1 unknown: the overview matrix's cells."""
    return {
        (r["metric"]["server"], r["metric"]["cause"]): float(r["value"][1])
        for r in prometheus.query(f'{CAUSE_VERDICT}{{job="{JOB}"}}')
    }


def _lab_causes(lab: Lab, server: str) -> dict[str, list[str]]:
    """What the lab planted on an Exchange server: cause -> phrases its detail line must hold."""
    directory = lab.exchange_directory
    offsets = {h.name: h.ntp_offset for h in lab.hosts}
    smtp = next(s for s in lab.smtp_servers if s.name == server)
    found: dict[str, list[str]] = {}
    for dc in lab.domain_controllers if server in offsets else ():
        skew = abs(offsets[server] - dc.ntp_offset)
        if skew > MIXIN.kerberos_tolerance_seconds:
            found.setdefault("clock_skew", []).append(
                f"against domain controller {dc.name}, beyond"
            )
        elif skew > MIXIN.skew_warning_seconds:
            found.setdefault("clock_skew", []).append(
                f"against domain controller {dc.name}, nearing"
            )
    member = directory.server(smtp.short_name)
    for spn in directory.missing_spns(member.name):
        found.setdefault("spn_missing", []).append(f"{spn} missing")
    for duplicate in directory.duplicate_spns:
        if duplicate.spn in map(str.lower, member.expected_spns):
            accounts = "; ".join(sorted(duplicate.owner_dns))
            found.setdefault("spn_duplicate", []).append(
                f"held by more than one account ({accounts})"
            )
    # dc9: TCP refused, UDP dropped, on both ports.
    found["kerberos_ports_blocked"] = [
        f"{lab.dead_dc.name} {port}/{transport} {reason}"
        for port in ("88", "464")
        for transport, reason in (("tcp", "refused"), ("udp", "timeout"))
    ]
    if smtp.hub_port not in smtp.x_exps_ports:
        found.setdefault("receive_connector_auth", []).append(
            f"not offered on port {smtp.hub_port}"
        )
    for connector in member.receive_connectors:
        if not connector.exchange_server_auth and not re.fullmatch(
            MIXIN.receive_connector_ignore_regex, connector.name
        ):
            found.setdefault("receive_connector_auth", []).append(
                f'receive connector "{connector.name}" without ExchangeServer authentication'
            )
    return found


def test_queue_alerts_name_the_causes_present_on_each_server(
    lab: Lab, prometheus: PrometheusServer, firing: list[dict[str, Any]]
) -> None:
    queue_alerts = {
        a["labels"]["server"]: a["annotations"]["description"]
        for a in firing
        if a["labels"]["alertname"] == "ExchangeAuthQueueAuthErrors"
    }
    assert set(queue_alerts) == {s.name for s in lab.smtp_servers if s.short_name != "exch1"}
    verdicts = _verdicts(prometheus)
    order = [c.name for c in VERDICT_CAUSES if c.kb_step is not None]
    for server, description in queue_alerts.items():
        own = _section(description, f"Causes present now on {server} (the exporter's verdicts):")
        planted = _lab_causes(lab, server)
        # One line per cause the lab planted, in KB order, each with the planted details.
        wanted = [cause for cause in order if cause in planted]
        assert [line.split(" (KB step")[0] for line in own] == [TITLES[c] for c in wanted], own
        for line, cause in zip(own, wanted, strict=True):
            for phrase in planted[cause]:
                assert phrase.lower() in line.lower(), (phrase, line)
        # ... which are the exporter's verdicts.
        assert wanted == [c for c in order if verdicts.get((server, c)) == 1], server
        # A server without NTP has no clock reading: its clock skew is not judged, and said so.
        if server not in {h.name for h in lab.hosts}:
            assert "Not judged for lack of evidence: clock skew (no_reading)" in description
        # Other servers: their own causes, never this server's, never the domain-wide ones.
        others = _section(description, "Other Exchange servers:")
        expected_others = sorted(
            f"{other}: {TITLES[cause]}"
            for (other, cause), value in verdicts.items()
            if value == 1 and other != server and cause in order
            if cause not in ("replication", "kerberos_ports_blocked")
        )
        assert sorted(line.split(" (KB step")[0] for line in others) == expected_others, others


def test_spn_duplicates_are_attributed_to_their_exchange_server(
    lab: Lab, firing: list[dict[str, Any]]
) -> None:
    duplicates = [a for a in firing if a["labels"]["alertname"] == "ExchangeAuthSpnDuplicate"]
    assert duplicates
    for alert in duplicates:
        (planted,) = [
            d
            for d in lab.exchange_directory.duplicate_spns
            if d.spn == alert["labels"]["spn"].lower()
        ]
        for owner in planted.owner_dns:
            assert owner in alert["annotations"]["description"]
        assert (
            f"of Exchange server {alert['labels']['server']}" in alert["annotations"]["description"]
        )


def test_every_dashboard_query_returns_series(prometheus: PrometheusServer, firing: object) -> None:
    empty = []
    for expression in expressions(MIXIN):
        if not expression.where.startswith("dashboard"):
            continue
        if not prometheus.query(expression.promql):
            empty.append(f"{expression.where}: {expression.promql}")
    assert not empty, "queries without a series:\n" + "\n".join(empty)


def test_the_overview_matrix_marks_broken_servers(
    lab: Lab, prometheus: PrometheusServer, firing: object
) -> None:
    cells = _verdicts(prometheus)
    directory = lab.exchange_directory
    for server in directory.members:
        spn_missing = 1.0 if directory.missing_spns(server.name) else 0.0
        assert cells[(server.fqdn, "spn_missing")] == spn_missing, server.fqdn
        duplicated = any(
            d.spn in map(str.lower, server.expected_spns) for d in directory.duplicate_spns
        )
        assert cells[(server.fqdn, "spn_duplicate")] == (1.0 if duplicated else 0.0), server.fqdn
    # Every Exchange server has every column; the Edge server none (no Kerberos).
    servers = {server for server, _ in cells}
    assert servers == {s.name for s in lab.smtp_servers}
    assert {cause for _, cause in cells} == {c.name for c in VERDICT_CAUSES}
    assert len(cells) == len(servers) * len(VERDICT_CAUSES)
    # dc9 is down: the same for every server.
    assert {v for (_, cause), v in cells.items() if cause == "kerberos_ports_blocked"} == {1.0}
    # exch3 serves no NTP: its clock cannot be read, a grey cell.
    for smtp in lab.smtp_servers:
        if smtp.name not in {h.name for h in lab.hosts}:
            assert cells[(smtp.name, "clock_skew")] == -1.0, smtp.name


# Each cause of the matrix and the alerts that say the same; None: a domain-wide cause, the
# same for every server, else the label naming the Exchange server.
CAUSE_ALERTS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "clock_skew": (
        ("ExchangeAuthClockSkewNearTolerance", "ExchangeAuthClockSkewExceedsTolerance"),
        "exchange_server",
    ),
    "replication": (
        (
            "ExchangeAuthReplicationFailing",
            "ExchangeAuthReplicationStale",
            "ExchangeAuthReplicationNeverSucceeded",
        ),
        None,
    ),
    "spn_missing": (("ExchangeAuthSpnMissing", "ExchangeAuthComputerAccountMissing"), "server"),
    "spn_duplicate": (("ExchangeAuthSpnDuplicate",), "server"),
    "kerberos_ports_blocked": (
        ("ExchangeAuthKerberosPortDown", "ExchangeAuthKerberosAllKdcsUnreachable"),
        None,
    ),
    "receive_connector_auth": (
        (
            "ExchangeAuthExchangeServerAuthNotAdvertised",
            "ExchangeAuthReceiveConnectorExchangeServerAuthDisabled",
        ),
        "server",
    ),
    "kerberos_keys": (("ExchangeAuthKerberosKeysUnusable",), "server"),
    "queue_auth_errors": (("ExchangeAuthQueueAuthErrors",), "server"),
    "log_auth_failures": (("ExchangeAuthSmtpLogAuthFailures",), "server"),
}


def test_the_matrix_and_the_alerts_agree(
    prometheus: PrometheusServer, firing: list[dict[str, Any]]
) -> None:
    """A red cell has an alert of its cause firing, and a cause alert firing has a red cell: the
    exporter's verdicts and the mixin's thresholds (the same: the near-tolerance warning starts
    where the verdict's warning margin does) cannot contradict each other."""
    assert set(CAUSE_ALERTS) == {c.name for c in VERDICT_CAUSES}
    contradictions = _contradictions(_verdicts(prometheus), firing)
    assert not contradictions, "\n".join(contradictions)


def _contradictions(cells: dict[tuple[str, str], float], firing: list[dict[str, Any]]) -> list[str]:
    found = []
    for (server, cause), value in sorted(cells.items()):
        names, label = CAUSE_ALERTS[cause]
        alerts = [
            a["labels"]["alertname"]
            for a in firing
            if a["labels"]["alertname"] in names
            and (label is None or a["labels"].get(label) == server)
        ]
        if (value == 1.0) != bool(alerts):
            state = {1.0: "problem", 0.0: "ok", -1.0: "unknown"}[value]
            found.append(f"{server} {cause}: {state}, alerts firing: {alerts}")
    # No cause alert for a server the matrix does not show.
    for alert in firing:
        for names, label in CAUSE_ALERTS.values():
            if alert["labels"]["alertname"] in names and label is not None:
                server = alert["labels"][label]
                if not any(s == server for s, _ in cells):
                    found.append(f"{alert['labels']} fires for a server not in the matrix")
    return found


# --- the metrics the mixin reads are the ones the exporter emits ---------------------------------


def _scraped(exporter: ExporterProcess) -> dict[str, set[str]]:
    """Metric name -> label names, from one scrape. A family declared (HELP and TYPE) without
    a sample is there with no label names."""
    status, text = exporter.get("/metrics", {"X-Prometheus-Scrape-Timeout-Seconds": "5"})
    assert status == 200
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        if not family.samples and family.type in ("gauge", "unknown"):
            labels.setdefault(family.name, set())
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def _partner_labels(config: Path) -> dict[str, set[str]]:
    """The label names of the replication partner series, from the exporter's own code given a
    reading with one partner: the lab's dc1 replicates with no other DC, so its scrape declares
    those families but has no sample of them."""
    settings = load_text(config.read_text(), base_dir=config.parent)
    dc = Server("dc1.corp.example.test", Role.DOMAIN_CONTROLLER)
    partner = PartnerState("dc3.corp.example.test", "DC=corp", 1, 0.0, 60.0, 1722)
    reading = DcReading("repsFrom", (partner,), 0, 60.0)
    state = ScanState(result=Replication({dc.name: DcOutcome(reading)}))
    labels: dict[str, set[str]] = {}
    for family in replication_metrics(state, settings, Inventory((dc,))):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


@pytest.fixture(scope="module")
def emitted(lab: Lab, exporter: ExporterProcess, work: Path, firing: object) -> dict[str, set[str]]:
    """Metric name -> label names, from the exporter on the lab and from one whose LDAP bind
    fails (the failure series exist only then)."""
    names = _scraped(exporter)
    broken = work / "broken"
    broken.mkdir(exist_ok=True)
    wrong_password = broken / "ldap-password"
    wrong_password.write_text("not the password")
    config = exporter_config(lab, broken, ldap_password_file=wrong_password)
    with exporter_process(config, broken / "exporter.log") as failing:
        deadline = time.monotonic() + 30
        while True:
            failed = _scraped(failing)
            if {"exchange_auth_scan_failure", "exchange_auth_discovery_failure"} <= set(failed):
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no failure series from an exporter with a wrong password: {sorted(failed)}"
                )
            time.sleep(0.5)
    for name, label_names in failed.items():
        names.setdefault(name, set()).update(label_names)
    for name, label_names in _partner_labels(work / "exporter.yml").items():
        if name in names and not names[name]:
            names[name] = label_names
    return names


def test_every_metric_the_mixin_reads_is_emitted(emitted: dict[str, set[str]]) -> None:
    read = exporter_metrics_read(MIXIN)
    unknown = {name: places for name, places in read.items() if name not in emitted}
    assert not unknown, "metrics the exporter does not emit:\n" + "\n".join(
        f"{name}: {places}" for name, places in sorted(unknown.items())
    )


_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^{}]*)\}")
_MATCHER_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")


def test_every_label_matcher_names_a_label_of_its_metric(emitted: dict[str, set[str]]) -> None:
    # A matcher on a misspelt label selects nothing, silently.
    produced = recording_rule_names(MIXIN) | PROMETHEUS_METRICS
    wrong = []
    for expression in expressions(MIXIN):
        for metric, body in _SELECTOR.findall(expression.promql):
            if metric in produced or metric not in emitted:
                continue
            for label in _MATCHER_NAME.findall(body):
                if label not in emitted[metric] | {"job", "instance"}:
                    wrong.append(f"{expression.where}: {metric} has no label {label!r}")
    assert not wrong, "\n".join(sorted(set(wrong)))


# --- replication (KB step 2) breaking for real ---------------------------------------------------


def test_a_dc_that_stops_replicating_is_a_cause_for_every_server(
    lab: Lab, prometheus: PrometheusServer, firing: object
) -> None:
    """Stop the replica's samba: dc1 keeps failing to replicate from it. The exporter's
    replication verdict turns red for every Exchange server, ExchangeAuthReplicationFailing
    fires for dc1 <- dc3, the symptom alerts list it as KB step 2, and none of it contradicts."""
    replica = lab.replica_dc
    assert lab.replica_dc_running, "the session lab runs no replica DC"

    def replication_alerts() -> list[dict[str, Any]]:
        return [
            a
            for a in prometheus.alerts()
            if a["labels"]["alertname"] == "ExchangeAuthReplicationFailing"
        ]

    with lab.samba_stopped(replica):
        _wait(
            lambda: bool(replication_alerts()),
            timeout=120,
            what=lambda: (
                "ExchangeAuthReplicationFailing; firing: "
                + str(sorted(map(str, (_as_key(a) for a in prometheus.alerts()))))
            ),
        )
        # The other alerts of the stopped DC (its ports) have had their `for` by now.
        time.sleep(FOR_SECONDS + 3)
        alerts = prometheus.alerts()
        cells = _verdicts(prometheus)
    failing = [a for a in alerts if a["labels"]["alertname"] == "ExchangeAuthReplicationFailing"]
    assert failing
    for alert in failing:
        labels, description = alert["labels"], alert["annotations"]["description"]
        assert (labels["domain_controller"], labels["partner"]) == (lab.dc.name, replica.name)
        assert "Last result" in description, description
        assert "error expanding template" not in description, description
    assert {v for (_, cause), v in cells.items() if cause == "replication"} == {1.0}
    contradictions = _contradictions(cells, alerts)
    assert not contradictions, "\n".join(contradictions)
    for alert in alerts:
        if alert["labels"]["alertname"] != "ExchangeAuthQueueAuthErrors":
            continue
        server = alert["labels"]["server"]
        own = _section(
            alert["annotations"]["description"],
            f"Causes present now on {server} (the exporter's verdicts):",
        )
        (line,) = [line for line in own if line.startswith("AD replication (KB step 2): ")]
        assert f"{lab.dc.name} <- {replica.name} (" in line, line
        assert "consecutive failures, last result " in line, line
