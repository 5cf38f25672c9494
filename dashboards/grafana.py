"""Grafana dashboards, built with grafana-foundation-sdk's typed builders.

Six dashboards, each with ``datasource``, ``job`` and ``server`` variables:

- overview: every Exchange server against every cause, as the exporter judges it (the matrix of
  ``exchange_auth:exchange_server_cause:verdict``), the evidence behind the causes present now,
  what could not be judged and why, firing alerts and the exporter's own health;
- clocks: offsets per server and source over time, the skew pairs against the tolerance;
- kerberos: each DC x port x transport, with round-trip times and failure reasons;
- spn: expected SPNs, duplicates with their owners, service tickets per DC, encryption types,
  receive connectors and X-EXPS;
- queues: messages, errors by class, protocol-log response rates;
- replication: each domain controller's inbound replication, per partner and naming context
  (KB step 2), and the DCs whose state cannot be read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from .config import MixinConfig, duration
from .rules import (
    CAUSE_VERDICT,
    DOMAIN_DETAILS,
    EXCHANGE_SERVERS,
    REPLICATION_PAIR,
    SERVER_DETAILS,
    VERDICT_CAUSES,
    VerdictCause,
)

PanelBuilder = timeseries.Panel | table.Panel | stat.Panel
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
JOB = 'job=~"$job"'
SERVER = 'server=~"$server"'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str | None = None
    instant: bool = False  # tables: the value now, one row per series

    def builder(self, ref_id: str) -> prometheus.Dataquery:
        query = prometheus.Dataquery().expr(self.expr).ref_id(ref_id).datasource(DATASOURCE)
        if self.legend is not None:
            query = query.legend_format(self.legend)
        # Tables show the value now, one row per series; graphs a range.
        return query.instant().format(PromQueryFormat.TABLE) if self.instant else query.range()


def _refs(queries: Sequence[Query]) -> list[Builder[Dataquery]]:
    return [query.builder(chr(ord("A") + index)) for index, query in enumerate(queries)]


def _thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for value, color in steps])
    )


def _value_map(mapping: dict[str, tuple[str, str]]) -> list[model.ValueMapping]:
    return [
        model.ValueMap(
            options={
                value: model.ValueMappingResult(text=text, color=color, index=index)
                for index, (value, (text, color)) in enumerate(mapping.items())
            }
        )
    ]


_COLOR_CELLS = [
    model.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"})
]
_VERDICT = {"0": ("OK", "green"), "1": ("problem", "red"), "-1": ("unknown", "gray")}
_UP = {"1": ("up", "green"), "0": ("down", "red")}
_PRESENT = {"1": ("present", "green"), "0": ("missing", "red")}
_ON_OFF = {"1": ("on", "green"), "0": ("off", "red")}


def timeseries_panel(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    unit: str = "short",
    span: int = 12,
    height: int = 8,
    thresholds: db.ThresholdsConfig | None = None,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(span)
        .height(height)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
    )
    if thresholds is not None:
        panel = panel.thresholds(thresholds).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(
                common.GraphTresholdsStyleMode.LINE_AND_AREA
            )
        )
    return panel.targets(_refs(queries))


def table_panel(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    span: int = 12,
    height: int = 8,
    mapping: dict[str, tuple[str, str]] | None = None,
    thresholds: db.ThresholdsConfig | None = None,
    unit: str | None = None,
    transformations: Sequence[model.DataTransformerConfig] = (),
    hide: Sequence[str] = ("Time", "job", "instance", "__name__"),
) -> table.Panel:
    panel = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .span(span)
        .height(height)
        .show_header(True)
    )
    if unit is not None:
        panel = panel.unit(unit)
    if mapping is not None:
        panel = panel.mappings(_value_map(mapping))
    if thresholds is not None:
        panel = panel.thresholds(thresholds)
    if mapping is not None or thresholds is not None:
        panel = panel.override_by_field_type("number", _COLOR_CELLS)
    steps = list(transformations)
    if hide:
        steps.append(
            model.DataTransformerConfig(
                id_val="organize", options={"excludeByName": dict.fromkeys(hide, True)}
            )
        )
    panel = panel.transformations(steps)
    return panel.targets(_refs(queries))


def stat_panel(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    unit: str = "short",
    span: int = 6,
    height: int = 4,
    thresholds: db.ThresholdsConfig | None = None,
    mapping: dict[str, tuple[str, str]] | None = None,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(span)
        .height(height)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
    )
    if thresholds is not None:
        panel = panel.thresholds(thresholds)
    if mapping is not None:
        panel = panel.mappings(_value_map(mapping))
    return panel.targets(_refs(queries))


def _matrix(row: str, column: str) -> model.DataTransformerConfig:
    return model.DataTransformerConfig(
        id_val="groupingToMatrix",
        options={
            "rowField": row,
            "columnField": column,
            "valueField": "Value",
            # Nothing measured stays empty, never green.
            "emptyValue": "null",
        },
    )


def _variables(
    config: MixinConfig, server_query: str, server_label: str, label: str = "server"
) -> list[Builder[Any]]:
    datasource = db.DatasourceVariable("datasource").label("Data source").type("prometheus")
    job = (
        db.QueryVariable("job")
        .label("Job")
        .datasource(DATASOURCE)
        .query(f"label_values(exchange_auth_build_info{{{config.job_selector}}}, job)")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".+")
    )
    server = (
        db.QueryVariable("server")
        .label(server_label)
        .datasource(DATASOURCE)
        .query(f"label_values({server_query}, {label})")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".+")
    )
    return [datasource, job, server]


def _board(
    config: MixinConfig,
    slug: str,
    title: str,
    description: str,
    variables: list[Builder[Any]],
    rows: Sequence[tuple[str, Sequence[PanelBuilder]]],
) -> dict[str, Any]:
    board = (
        db.Dashboard(title)
        .uid(f"{config.dashboard_uid_prefix}-{slug}")
        .description(description)
        .tags(list(config.dashboard_tags))
        .refresh(config.dashboard_refresh)
        .time(config.dashboard_time_from, "now")
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .editable()
        .variables(variables)
        .link(
            db.DashboardLink("Exchange auth")
            .type(model.DashboardLinkType.DASHBOARDS)
            .tags([config.dashboard_tags[0]])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )
    panel_id = 0
    for row_title, panels in rows:
        panel_id += 1
        board = board.with_row(db.Row(row_title).id(panel_id))
        for panel in panels:
            panel_id += 1
            board = board.with_panel(panel.id(panel_id))
    encoded: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return encoded


def _exchange_servers(config: MixinConfig) -> str:
    return f"{EXCHANGE_SERVERS}{{{JOB}}}"


def _unless_empty(expr: str, fallback: str) -> str:
    """``expr``, or one 0 series per job (from ``fallback``) when it has no series: a table that
    says "nothing" rather than "no data"."""
    return f"({expr}) or (count by (job) ({fallback}) * 0 unless on (job) ({expr}))"


def overview(config: MixinConfig) -> dict[str, Any]:
    def title(cause: VerdictCause) -> str:
        step = f"{cause.kb_step} " if cause.kb_step and cause.in_kb else ""
        return step + cause.title[0].upper() + cause.title[1:]

    rename = {"server\\cause": "Exchange server"} | {c.name: title(c) for c in VERDICT_CAUSES}
    order = {"server\\cause": 0} | {c.name: i + 1 for i, c in enumerate(VERDICT_CAUSES)}
    matrix = table_panel(
        "Causes by Exchange server",
        "Each Exchange server against each cause of KB 979174 (numbered by its step), the "
        "account's Kerberos keys (beyond the KB: seen in service tickets) and the two "
        "symptoms, as the exporter judges them (exchange_auth_cause, the same verdicts as its "
        "status page and diagnose command): green OK, red problem, grey unknown (the evidence "
        "is missing; why is in the table below). Replication and KDC ports are judged from "
        "the domain controllers and so the same for every server.",
        [Query(f"{CAUSE_VERDICT}{{{JOB}, {SERVER}}}", instant=True)],
        span=24,
        height=9,
        mapping=_VERDICT,
        transformations=[
            _matrix("server", "cause"),
            model.DataTransformerConfig(
                id_val="organize", options={"renameByName": rename, "indexByName": order}
            ),
        ],
        hide=(),
    )
    present = table_panel(
        "Evidence on the Exchange servers",
        "What the causes of each server are made of: which DC its clock is off against, which "
        "SPN is missing or duplicated, which DC refused which service ticket and why, which "
        "connector or port lacks ExchangeServer auth. The value is the skew in seconds for "
        "clock skew.",
        [Query(f"{SERVER_DETAILS}{{{JOB}, {SERVER}}}", instant=True)],
        span=12,
    )
    domain = table_panel(
        "Evidence on the domain controllers",
        "Kerberos ports that do not answer the exporter, KDCs its service-ticket requests cannot "
        "reach, and DCs that do not replicate a naming context from a partner (value: consecutive failures, or seconds since the last "
        "success or attempt).",
        [Query(f"{DOMAIN_DETAILS}{{{JOB}}}", instant=True)],
        span=12,
    )
    unknown = table_panel(
        "Causes without a verdict",
        "The grey cells: the causes the exporter could not judge for a server, and why "
        "(disabled, no_reading, no_dc_reading, no_scan, not_scanned).",
        [
            Query(
                _unless_empty(
                    f"exchange_auth_cause_unknown{{{JOB}, {SERVER}}}",
                    f"exchange_auth_cause{{{JOB}}}",
                ),
                instant=True,
            )
        ],
        span=24,
        height=6,
        hide=("Time", "job", "instance", "__name__", "Value"),
    )
    firing = table_panel(
        "Firing alerts",
        "The mixin's alerts firing now.",
        [Query(f'ALERTS{{alertname=~"ExchangeAuth.*", alertstate="firing", {JOB}}}', instant=True)],
        span=24,
        hide=("Time", "__name__", "alertstate", "Value"),
    )
    up = stat_panel(
        "Exporter up",
        "Prometheus can scrape the exporter.",
        [Query(f"up{{{JOB}}}", legend="{{instance}}")],
        mapping=_UP,
        thresholds=_thresholds((None, "red"), (1, "green")),
    )
    scrape = timeseries_panel(
        "Scrape duration",
        "How long the exporter's scrapes take against their budget (the scrape timeout minus "
        "the offset).",
        [
            Query(
                f"exchange_auth_scrape_duration_seconds{{{JOB}}}", legend="{{instance}} duration"
            ),
            Query(f"exchange_auth_scrape_timeout_seconds{{{JOB}}}", legend="{{instance}} budget"),
        ],
        unit="s",
        span=9,
        height=6,
    )
    checks = table_panel(
        "Checks without a verdict",
        "Servers whose check reached no verdict in the last scrape, per check.",
        [
            Query(
                f"count by (job, instance, check) (exchange_auth_check_success{{{JOB}}} == 0)"
                f" or count by (job, instance, check) (exchange_auth_check_success{{{JOB}}}) * 0",
                instant=True,
            )
        ],
        span=9,
        height=6,
    )
    return _board(
        config,
        "overview",
        "Exchange auth / Overview",
        "Which Exchange server has which cause of server-to-server Kerberos failures "
        "(KB 979174), and the 454 4.7.0 symptom.",
        _variables(config, _exchange_servers(config), "Exchange server"),
        [
            ("Causes", [matrix, present, domain, unknown, firing]),
            ("Exporter", [up, scrape, checks]),
        ],
    )


def clocks(config: MixinConfig) -> dict[str, Any]:
    tolerance = config.kerberos_tolerance_seconds
    skew_steps = _thresholds(
        (None, "green"), (config.skew_warning_seconds, "orange"), (tolerance, "red")
    )
    offsets = timeseries_panel(
        "Clock offset by server and source",
        "Each server's clock minus the exporter's, from every source (ntp, kerberos, smtp, "
        "ldap). Sources of one server should agree; the skew pairs use the most precise.",
        [
            Query(
                f"exchange_auth_clock_offset_seconds{{{JOB}, {SERVER}}}",
                legend="{{server}} {{source}}",
            )
        ],
        unit="s",
        span=24,
    )
    pairs = timeseries_panel(
        "Skew: Exchange server against domain controller",
        f"Kerberos fails beyond {tolerance}s; orange from {config.skew_warning_seconds}s.",
        [
            Query(
                f'exchange_auth_clock_skew_seconds{{{JOB}, exchange_server=~"$server"}}',
                legend="{{exchange_server}} / {{domain_controller}}",
            )
        ],
        unit="s",
        span=14,
        thresholds=skew_steps,
    )
    matrix = table_panel(
        "Skew now",
        "Rows: Exchange servers; columns: domain controllers.",
        [
            Query(
                f'exchange_auth_clock_skew_seconds{{{JOB}, exchange_server=~"$server"}}',
                instant=True,
            )
        ],
        span=10,
        unit="s",
        thresholds=skew_steps,
        transformations=[_matrix("exchange_server", "domain_controller")],
        hide=(),
    )
    ntp = table_panel(
        "NTP stratum and leap indicator",
        "Stratum 0 or 16, or leap indicator 3: the server's time service follows no source.",
        [
            Query(
                f"exchange_auth_ntp_stratum{{{JOB}, {SERVER}}}",
                instant=True,
            ),
            Query(f"exchange_auth_ntp_leap{{{JOB}, {SERVER}}}", instant=True),
        ],
        span=12,
        transformations=[
            model.DataTransformerConfig(id_val="merge", options={}),
            model.DataTransformerConfig(
                id_val="organize",
                options={"renameByName": {"Value #A": "stratum", "Value #B": "leap"}},
            ),
        ],
    )
    uncertainty = timeseries_panel(
        "Reading uncertainty",
        "Half the round trip plus the source's resolution (1 s for ldap and smtp).",
        [
            Query(
                f"exchange_auth_clock_uncertainty_seconds{{{JOB}, {SERVER}}}",
                legend="{{server}} {{source}}",
            )
        ],
        unit="s",
        span=12,
    )
    return _board(
        config,
        "clocks",
        "Exchange auth / Clocks",
        "Clock offsets of Exchange servers and domain controllers and the skew of each pair.",
        _variables(config, f"exchange_auth_clock_offset_seconds{{{JOB}}}", "Server"),
        [("Offsets", [offsets]), ("Skew", [pairs, matrix]), ("Time service", [ntp, uncertainty])],
    )


def kerberos(config: MixinConfig) -> dict[str, Any]:
    port_up = f"exchange_auth_kerberos_port_up{{{JOB}, {SERVER}}}"
    matrix = table_panel(
        "Kerberos ports by domain controller",
        "A parsed Kerberos (88) or kpasswd (464) reply from the exporter; a TCP connect alone "
        "is not enough.",
        [Query(f'label_join({port_up}, "port_transport", "/", "port", "transport")', instant=True)],
        span=12,
        mapping=_UP,
        transformations=[_matrix("server", "port_transport")],
        hide=(),
    )
    failures = table_panel(
        "Why ports do not answer",
        "timeout (dropped), refused (closed), unreachable, dns, protocol_error (something "
        "else answers), inconclusive (464/udp silent while 464/tcp answers: not counted as down).",
        [
            Query(
                f"exchange_auth_kerberos_port_failure{{{JOB}, {SERVER}}} == 1"
                f" or count by (job) (exchange_auth_kerberos_port_up{{{JOB}}}) * 0",
                instant=True,
            )
        ],
        span=12,
    )
    rtt = timeseries_panel(
        "Round trip",
        "Request to parsed reply, per DC, port and transport.",
        [
            Query(
                f"exchange_auth_kerberos_port_rtt_seconds{{{JOB}, {SERVER}}}",
                legend="{{server}} {{port}}/{{transport}}",
            )
        ],
        unit="s",
        span=12,
    )
    ports_up = timeseries_panel(
        "Ports answering",
        "Ports answering per domain controller over time.",
        [
            Query(
                f"sum by (server) ({port_up})",
                legend="{{server}}",
            )
        ],
        span=12,
    )
    codes = table_panel(
        "KRB-ERROR codes",
        "6 (client unknown) is the expected answer to the probe on 88; 68 means a wrong realm.",
        [Query(f"exchange_auth_kerberos_error_code{{{JOB}, {SERVER}}}", instant=True)],
        span=24,
        height=6,
    )
    return _board(
        config,
        "kerberos",
        "Exchange auth / Kerberos ports",
        "Kerberos (88) and kpasswd (464) over UDP and TCP on every domain controller.",
        _variables(config, f"exchange_auth_kerberos_port_up{{{JOB}}}", "Domain controller"),
        [("Ports", [matrix, failures]), ("Latency", [rtt, ports_up, codes])],
    )


def spn(config: MixinConfig) -> dict[str, Any]:
    present = table_panel(
        "Expected SPNs",
        "SMTP/ and SMTPSVC/ with the short name and the FQDN on each Exchange server's computer "
        "account (cached from the spn scan).",
        [Query(f"exchange_auth_spn_present{{{JOB}, {SERVER}}}", instant=True)],
        span=12,
        height=10,
        mapping=_PRESENT,
    )
    missing = table_panel(
        "Missing SPNs",
        "setspn -S <SPN> <computer account> adds one.",
        [
            Query(
                f"exchange_auth_spn_present{{{JOB}, {SERVER}}} == 0"
                f" or count by (job) (exchange_auth_spn_present{{{JOB}}}) * 0",
                instant=True,
            )
        ],
        span=12,
        height=5,
    )
    accounts = table_panel(
        "Computer accounts",
        "Found by dNSHostName, then sAMAccountName.",
        [Query(f"exchange_auth_computer_account_found{{{JOB}, {SERVER}}}", instant=True)],
        span=12,
        height=5,
        mapping=_PRESENT,
    )
    duplicates = table_panel(
        "Duplicate SPNs and their owners",
        "SPN values held by more than one account, forest-wide and case-insensitive like "
        "setspn -X; remove them from every account but the right one with setspn -D.",
        [Query(f"exchange_auth_spn_duplicate_owner_info{{{JOB}}}", instant=True)],
        span=16,
        hide=("Time", "job", "instance", "__name__", "Value"),
    )
    per_class = stat_panel(
        "Duplicate SPN values by class",
        "Cached from the duplicate_spn scan.",
        [Query(f"exchange_auth_spn_duplicates{{{JOB}}}", legend="{{service_class}}")],
        span=8,
        height=8,
        thresholds=_thresholds((None, "green"), (1, "red")),
    )
    connectors = table_panel(
        "Receive connectors: ExchangeServer authentication",
        "Bit 0x10 of msExchSMTPReceiveInboundSecurityFlag; client connectors do without it.",
        [
            Query(
                f"exchange_auth_receive_connector_exchange_auth_enabled{{{JOB}, {SERVER}}}",
                instant=True,
            )
        ],
        span=12,
        mapping=_ON_OFF,
    )
    advertised = table_panel(
        "X-EXPS GSSAPI in EHLO",
        f"Port {config.intra_org_smtp_ports_regex} must offer it; port 25 (the front end) may not.",
        [
            Query(
                f"exchange_auth_smtp_exchange_auth_advertised{{{JOB}, {SERVER}}}",
                instant=True,
            )
        ],
        span=12,
        mapping=_ON_OFF,
    )
    age = stat_panel(
        "Scan age",
        "The SPN and duplicate data are this old.",
        [
            Query(
                f'time() - exchange_auth_last_success_timestamp_seconds{{{JOB}, scan=~"spn|duplicate_spn"}}',
                legend="{{scan}}",
            )
        ],
        unit="s",
        span=24,
    )
    tickets, encryption = _ticket_panels(), _encryption_panels()
    return _board(
        config,
        "spn",
        "Exchange auth / SPNs, tickets and ExchangeServer auth",
        "SMTP and SMTPSVC service principal names, duplicates with their owners, the service "
        "tickets each DC issues for them and the accounts' encryption types, and the receive "
        "connectors' ExchangeServer authentication.",
        _variables(config, _exchange_servers(config), "Exchange server"),
        [
            ("SPNs", [present, missing, accounts]),
            ("Duplicates", [duplicates, per_class]),
            ("Service tickets", tickets),
            ("Encryption types", encryption),
            ("ExchangeServer authentication", [connectors, advertised, age]),
        ],
    )


_ISSUED = {"1": ("issued", "green"), "0": ("refused", "red")}


def _ticket_panels() -> list[PanelBuilder]:
    ok = f"exchange_auth_service_ticket_ok{{{JOB}, {SERVER}}}"
    matrix = table_panel(
        "Service tickets by domain controller",
        "Whether each DC's KDC issues a ticket for each Exchange SPN, as another Exchange server "
        "asks for one before X-EXPS GSSAPI. One DC refusing what the others issue points at "
        "that DC (replication); every DC refusing, at the account or the SPN.",
        [Query(ok, instant=True)],
        span=12,
        height=10,
        mapping=_ISSUED,
        transformations=[_matrix("spn", "domain_controller")],
        hide=(),
    )
    reasons = table_panel(
        "Why tickets are refused",
        "principal_unknown (the SPN is missing or held twice), etype_nosupp (no key of a usable "
        "encryption type), skew, kdc_unreachable, preauth_failed (the exporter's own "
        "credentials), other.",
        [
            Query(
                f"exchange_auth_service_ticket_failure{{{JOB}, {SERVER}}} == 1"
                f" or count by (job) (exchange_auth_service_ticket_ok{{{JOB}}}) * 0",
                instant=True,
            )
        ],
        span=12,
        height=10,
        hide=("Time", "job", "instance", "__name__", "Value"),
    )
    duration = timeseries_panel(
        "Time to a service ticket",
        "From the request to the ticket (or the refusal), per DC.",
        [
            Query(
                f"max by (server, domain_controller) "
                f"(exchange_auth_service_ticket_duration_seconds{{{JOB}, {SERVER}}})",
                legend="{{server}} via {{domain_controller}}",
            )
        ],
        unit="s",
        span=24,
        height=6,
    )
    return [matrix, reasons, duration]


def _encryption_panels() -> list[PanelBuilder]:
    value = f"exchange_auth_account_encryption_types{{{JOB}, {SERVER}}}"
    rc4_only = f"exchange_auth_account_rc4_only{{{JOB}, {SERVER}}}"
    aes_missing = f"exchange_auth_account_aes_missing{{{JOB}, {SERVER}}}"
    types = table_panel(
        "msDS-SupportedEncryptionTypes",
        "Of each Exchange server's computer account, as the KDC uses it: 0x4 RC4-HMAC, 0x8 "
        "AES128, 0x10 AES256, 0x20 AES session keys (0x1, 0x2: DES, off on every current KDC). "
        "Windows writes 0x1c (RC4 + AES) itself; an unset value shows the KDC's default "
        "(checks.spn.default_encryption_types, 0x27 since November 2022).",
        [Query(value, instant=True)],
        span=10,
        height=8,
    )
    weak = table_panel(
        "RC4 only or no usable type",
        "Accounts set to RC4-HMAC alone (their tickets fail once the KDCs refuse RC4: "
        "Set-ADComputer <name> -KerberosEncryptionType AES128,AES256), or to neither RC4 nor AES "
        "(no ticket at all). Unset accounts follow the KDCs' default and are not listed.",
        [
            Query(
                _unless_empty(
                    f'label_replace({rc4_only} == 1, "flag", "rc4_only", "", "")'
                    f" or label_replace(({aes_missing} == 1 unless on (job, instance, server)"
                    f' {rc4_only} == 1), "flag", "no_usable_type", "", "")',
                    value,
                ),
                instant=True,
            )
        ],
        span=10,
        height=8,
        hide=("Time", "job", "instance", "__name__", "Value"),
    )
    krbtgt = stat_panel(
        "krbtgt",
        "msDS-SupportedEncryptionTypes of the realm's krbtgt account; unset shows 0x18 (24): the "
        "KDC encrypts TGTs with krbtgt's AES key from domain functional level 2008 on.",
        [Query(f"exchange_auth_krbtgt_encryption_types{{{JOB}}}", legend="{{instance}}")],
        span=4,
        height=8,
    )
    return [types, weak, krbtgt]


def queues(config: MixinConfig) -> dict[str, Any]:
    messages = f"exchange_auth_queue_messages{{{JOB}, {SERVER}}}"
    errors = f"exchange_auth_queue_errors{{{JOB}, {SERVER}}}"
    responses = f"exchange_auth_smtp_log_responses_total{{{JOB}, {SERVER}}}"
    auth_failures = (
        f'exchange_auth_smtp_log_responses_total{{{JOB}, {SERVER}, smtp_code="454", '
        'enhanced_code="4.7.0"}'
    )
    return _board(
        config,
        "queues",
        "Exchange auth / Queues and protocol logs",
        "The symptom: mail waiting in queues with 451 4.4.0 / 454 4.7.0, and 454 4.7.0 in the "
        "SMTP protocol logs.",
        _variables(config, _exchange_servers(config), "Exchange server"),
        [
            (
                "Queues",
                [
                    timeseries_panel(
                        "Messages by server and status",
                        "MessageCount from each server's queue snapshot.",
                        [Query(f"sum by (server, status) ({messages})", "{{server}} {{status}}")],
                    ),
                    timeseries_panel(
                        "Queues with errors, by class",
                        "auth_temporary is 454 4.7.0: Kerberos between the servers fails.",
                        [Query(f"sum by (server, class) ({errors})", "{{server}} {{class}}")],
                    ),
                    table_panel(
                        "Queue errors now",
                        "Queues by the class and reply codes of their LastError.",
                        [
                            Query(
                                f"{errors} > 0 or count by (job) ({errors}) * 0",
                                instant=True,
                            )
                        ],
                        span=16,
                    ),
                    stat_panel(
                        "Snapshot age",
                        "Snapshots are written every minute; older means the task or the share "
                        "fails.",
                        [
                            Query(
                                f"exchange_auth_queue_snapshot_age_seconds{{{JOB}, {SERVER}}}",
                                "{{server}}",
                            )
                        ],
                        unit="s",
                        span=8,
                        height=8,
                        thresholds=_thresholds(
                            (None, "green"), (config.queue_snapshot_stale_after_seconds, "red")
                        ),
                    ),
                ],
            ),
            (
                "Protocol logs",
                [
                    timeseries_panel(
                        "Responses by code",
                        "send: what the servers it sent to answered; receive: what it answered.",
                        [
                            Query(
                                "sum by (server, direction, smtp_code, enhanced_code) "
                                f"(rate({responses}[$__rate_interval]))",
                                "{{server}} {{direction}} {{smtp_code}} {{enhanced_code}}",
                            )
                        ],
                        unit="reqps",
                    ),
                    timeseries_panel(
                        "454 4.7.0 per server",
                        "Temporary authentication failures: Kerberos between Exchange servers.",
                        [
                            Query(
                                "sum by (server, direction) "
                                f"(rate({auth_failures}[$__rate_interval]))"
                                f" or sum by (server, direction) (rate({responses}[$__rate_interval])) * 0",
                                "{{server}} {{direction}}",
                            )
                        ],
                        unit="reqps",
                    ),
                ],
            ),
        ],
    )


def replication(config: MixinConfig) -> dict[str, Any]:
    dc = 'domain_controller=~"$server"'
    failures = f"exchange_auth_replication_consecutive_failures{{{JOB}, {dc}}}"
    success = f"exchange_auth_replication_last_success_timestamp_seconds{{{JOB}, {dc}}}"
    attempt = f"exchange_auth_replication_last_attempt_timestamp_seconds{{{JOB}, {dc}}}"
    info = f"exchange_auth_replication_last_result_info{{{JOB}, {dc}}}"
    read = f"exchange_auth_replication_dc_success{{{JOB}}}"
    pair = ", ".join(REPLICATION_PAIR)
    stale = config.replication_stale_after_seconds
    age_steps = _thresholds((None, "green"), (stale, "red"))
    partners = table_panel(
        "Inbound replication by DC, partner and naming context",
        "repadmin /showrepl for every DC: consecutive failures, the last result and the time "
        f"since the last success (red beyond {duration(stale)}, the largest delta of repadmin "
        "/replsummary; empty when it never succeeded).",
        [
            Query(
                _unless_empty(f"{failures} * on ({pair}) group_left (result) {info}", read),
                instant=True,
            ),
            Query(f"time() - {success}", instant=True),
        ],
        span=24,
        height=10,
        transformations=[
            model.DataTransformerConfig(id_val="merge", options={}),
            model.DataTransformerConfig(
                id_val="organize",
                options={
                    "renameByName": {
                        "Value #A": "consecutive failures",
                        "Value #B": "since last success",
                        "result": "last result",
                    }
                },
            ),
        ],
    ).override_by_name(
        "since last success",
        [
            model.DynamicConfigValue(id_val="unit", value="s"),
            model.DynamicConfigValue(
                id_val="thresholds",
                value={
                    "mode": "absolute",
                    "steps": [{"color": "green", "value": None}, {"color": "red", "value": stale}],
                },
            ),
            *_COLOR_CELLS,
        ],
    )
    failing = timeseries_panel(
        "Consecutive failures",
        "Failed inbound replication attempts in a row, per DC, partner and naming context.",
        [
            Query(
                _unless_empty(failures, read),
                legend="{{domain_controller}} <- {{partner}} {{naming_context}}",
            )
        ],
        span=12,
    )
    age = timeseries_panel(
        "Time since the last success",
        "Grows by itself while a partner does not replicate; a pair that never succeeded has "
        "none (see the never-replicated table).",
        [
            Query(
                _unless_empty(f"time() - {success}", read),
                legend="{{domain_controller}} <- {{partner}} {{naming_context}}",
            )
        ],
        unit="s",
        span=12,
        thresholds=age_steps,
    )
    never = table_panel(
        "Never replicated",
        "Pairs that were attempted but never succeeded: a new DC that never got the naming "
        "context, or a partner that never answered. Value: seconds since the last attempt.",
        [
            Query(
                _unless_empty(f"time() - {attempt} unless on ({pair}) {success}", read),
                instant=True,
            )
        ],
        span=12,
        unit="s",
    )
    unreadable = table_panel(
        "DCs whose state cannot be read",
        "Why the exporter could not read a DC's inbound replication state over LDAP; its "
        "partners are then shown as they were at its last reading.",
        [
            Query(
                _unless_empty(f"exchange_auth_replication_dc_failure{{{JOB}, {dc}}} == 1", read),
                instant=True,
            )
        ],
        span=12,
        hide=("Time", "job", "instance", "__name__", "Value"),
    )
    dcs = stat_panel(
        "DCs read",
        "1 when the last replication scan read the DC.",
        [
            Query(
                f"exchange_auth_replication_dc_success{{{JOB}, {dc}}}",
                legend="{{domain_controller}}",
            )
        ],
        span=24,
        mapping={"1": ("read", "green"), "0": ("not read", "red")},
        thresholds=_thresholds((None, "red"), (1, "green")),
    )
    return _board(
        config,
        "replication",
        "Exchange auth / AD replication",
        "Each domain controller's inbound replication, per partner and naming context, read "
        "over LDAP (KB 979174 step 2: a change that has not reached every DC breaks Kerberos "
        "on some paths).",
        _variables(config, read, "Domain controller", label="domain_controller"),
        [("Partners", [partners, failing, age]), ("Problems", [never, unreadable, dcs])],
    )


def dashboards(config: MixinConfig) -> dict[str, dict[str, Any]]:
    """Every dashboard by file name (without ``.json``)."""
    return {
        "exchange-auth-overview": overview(config),
        "exchange-auth-clocks": clocks(config),
        "exchange-auth-kerberos": kerberos(config),
        "exchange-auth-spn": spn(config),
        "exchange-auth-queues": queues(config),
        "exchange-auth-replication": replication(config),
    }


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of a generated dashboard."""
    found = []
    for panel in board.get("panels", []):
        for target in panel.get("targets", []) or []:
            if "expr" in target:
                found.append((panel.get("title", ""), target["expr"]))
    return found
