"""Recording rules: the causes of KB 979174 per Exchange server, ready to be joined.

The exporter reports evidence per probed object (a skew per Exchange server/DC pair, an SPN per
server, a port per DC). These rules turn it into one vocabulary that alerts, their descriptions
and the overview dashboard share:

- ``exchange_auth:exchange_server:info`` — the Exchange servers (Edge servers left out: they
  authenticate with certificates, not Kerberos).
- ``exchange_auth:exchange_server_cause:value{server, kb_step, cause, subject}`` — one series
  per cause present now on an Exchange server; ``subject`` says which DC, SPN, connector or
  port, ``kb_step`` which step of KB 979174 fixes it. The value is the skew in seconds for the
  clock causes, else 1.
- ``exchange_auth:domain_cause:value{domain_controller, kb_step, cause, subject}`` — causes on
  the domain controllers' side, which hit every Exchange server that uses that DC.
- ``exchange_auth:exchange_server_cause:severity{server, cause}`` — the overview matrix: every
  Exchange server against every cause column, 0 (fine), 1 (warning) or 2 (broken); no series
  where nothing was measured, so an unknown cell stays empty rather than green.

Duplicate SPNs are reported per SPN value (``spn`` as the first holder spells it), and SPNs
compare case-insensitively, which PromQL joins cannot. The ``ExchangeAuthSpnDuplicate`` alert
finds the owning Exchange server with a case-insensitive template query and carries it as its
``server`` label; the rules below read that from ``ALERTS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import MixinConfig
from .promql import copy_label, indent, label_replace, selector, set_label

EXCHANGE_SERVERS = "exchange_auth:exchange_server:info"
SERVER_CAUSES = "exchange_auth:exchange_server_cause:value"
DOMAIN_CAUSES = "exchange_auth:domain_cause:value"
CAUSE_SEVERITY = "exchange_auth:exchange_server_cause:severity"

SPN_DUPLICATE_ALERT = "ExchangeAuthSpnDuplicate"

SERVER_CAUSE_LABELS = "job, instance, server, kb_step, cause, subject"
DOMAIN_CAUSE_LABELS = "job, instance, domain_controller, kb_step, cause, subject"


# The step of KB 979174 that deals with each cause, so descriptions list causes in the KB's
# order: time, replication (issue 8, not yet measured), SPNs, duplicates, ports, connectors.
KB_STEP = {
    "clock_skew": "1",
    "clock_skew_near_limit": "1",
    "ntp_unsynchronised": "1",
    "computer_account_missing": "3",
    "spn_missing": "3",
    "spn_duplicate": "4",
    "kerberos_port_down": "5",
    "receive_connector_exchange_auth_disabled": "6",
    "exchange_auth_not_advertised": "6",
}


@dataclass(frozen=True)
class Cause:
    name: str  # the ``cause`` label value
    phrase: str  # Go template text, with ``.Labels.subject`` and ``.Value`` of the series in scope


def server_causes(config: MixinConfig) -> tuple[Cause, ...]:
    """How each server cause reads in an alert description (in the order they are listed)."""
    limit = config.kerberos_tolerance_seconds
    return (
        Cause(
            "clock_skew",
            '{{ printf "%.0f" .Value }}s clock skew against domain controller '
            f"{{{{ .Labels.subject }}}}, beyond the {limit}s Kerberos tolerance",
        ),
        Cause(
            "clock_skew_near_limit",
            '{{ printf "%.0f" .Value }}s clock skew against domain controller '
            f"{{{{ .Labels.subject }}}}, nearing the {limit}s Kerberos tolerance",
        ),
        Cause("ntp_unsynchronised", "time service not synchronised ({{ .Labels.subject }})"),
        Cause("computer_account_missing", "no computer account in Active Directory"),
        Cause("spn_missing", "SPN {{ .Labels.subject }} missing from its computer account"),
        Cause(
            "spn_duplicate",
            "SPN {{ .Labels.subject }} held by more than one account"
            # The owners, from the duplicate scan (sorted: the order of a query result is not).
            '{{ with printf "exchange_auth_spn_duplicate_owner_info{job=%q,spn=%q}" $labels.job '
            '.Labels.subject | query }} ({{ range $i, $o := sortByLabel "account" . }}'
            "{{ if $i }}; {{ end }}{{ $o.Labels.account }}{{ end }}){{ end }}",
        ),
        Cause(
            "receive_connector_exchange_auth_disabled",
            'receive connector "{{ .Labels.subject }}" without ExchangeServer authentication',
        ),
        Cause(
            "exchange_auth_not_advertised",
            "X-EXPS GSSAPI (ExchangeServer authentication) not offered on port {{ .Labels.subject }}",
        ),
    )


def domain_causes() -> tuple[Cause, ...]:
    return (
        Cause("kerberos_port_down", "Kerberos {{ .Labels.subject }}"),
        Cause("ntp_unsynchronised", "time service not synchronised ({{ .Labels.subject }})"),
    )


@dataclass(frozen=True)
class MatrixColumn:
    cause: str  # the ``cause`` label of CAUSE_SEVERITY
    title: str  # the column header on the overview dashboard
    expr: str  # per (job, instance, server): 0, 1 or 2


def _edge_servers(config: MixinConfig) -> str:
    return selector(config, "exchange_auth_server_info", config.edge_server_matcher)


def exchange_servers_expr(config: MixinConfig) -> str:
    sources = [
        selector(config, "exchange_auth_server_info", 'role="exchange"'),
        selector(config, "exchange_auth_check_success", 'check="smtp"'),
        selector(config, "exchange_auth_ntp_up", 'role="exchange"'),
        selector(config, "exchange_auth_computer_account_found"),
        copy_label(
            selector(config, "exchange_auth_clock_skew_seconds"), "server", "exchange_server"
        ),
        selector(config, "exchange_auth_queue_snapshot_age_seconds"),
        selector(config, "exchange_auth_smtp_log_responses_total"),
    ]
    union = "\n  or\n".join(indent(s, 2) for s in sources)
    return (
        f"group by (job, instance, server) (\n{union}\n)\n"
        f"unless on (job, instance, server)\n{indent(_edge_servers(config), 2)}"
    )


def _server_cause(
    expr: str,
    cause: str,
    *,
    subject_label: str | None = None,
    subject: str | None = None,
    server_label: str = "server",
    keep_value: bool = False,
) -> str:
    if not keep_value:
        expr = f"({expr}) * 0 + 1"
    if server_label != "server":
        expr = copy_label(expr, "server", server_label)
    expr = set_label(set_label(expr, "cause", cause), "kb_step", KB_STEP[cause])
    if subject_label is not None:
        expr = label_replace(expr, "subject", "$1", subject_label, "(.*)")
    elif subject is not None:
        expr = set_label(expr, "subject", subject)
    return f"max by ({SERVER_CAUSE_LABELS}) (\n  {expr}\n)"


def unless_edge_pair(config: MixinConfig) -> str:
    """Appended to a skew-pair expression: drops the pairs of Edge servers (skew pairs name the
    Exchange server in ``exchange_server``, not ``server``)."""
    edge = copy_label(_edge_servers(config), "exchange_server", "server")
    return f"unless on (job, instance, exchange_server) {edge}"


def server_causes_expr(config: MixinConfig) -> str:
    tolerance = config.kerberos_tolerance_seconds
    warning = config.skew_warning_seconds
    skew = selector(config, "exchange_auth_clock_skew_seconds")
    leap = selector(config, "exchange_auth_ntp_leap", 'role="exchange"')
    stratum = selector(config, "exchange_auth_ntp_stratum", 'role="exchange"')
    account = selector(config, "exchange_auth_computer_account_found")
    not_edge = unless_edge_pair(config)
    parts = [
        _server_cause(
            f"{skew} > {tolerance} {not_edge}",
            "clock_skew",
            subject_label="domain_controller",
            server_label="exchange_server",
            keep_value=True,
        ),
        _server_cause(
            f"({skew} > {warning}) <= {tolerance} {not_edge}",
            "clock_skew_near_limit",
            subject_label="domain_controller",
            server_label="exchange_server",
            keep_value=True,
        ),
        _server_cause(f"{leap} == 3", "ntp_unsynchronised", subject="leap indicator 3"),
        _server_cause(f"{stratum} == 0", "ntp_unsynchronised", subject="stratum 0"),
        _server_cause(f"{stratum} == 16", "ntp_unsynchronised", subject="stratum 16"),
        _server_cause(f"{account} == 0", "computer_account_missing", subject="computer account"),
        _server_cause(
            f"{selector(config, 'exchange_auth_spn_present')} == 0"
            f" unless on (job, instance, server) ({account} == 0)",
            "spn_missing",
            subject_label="spn",
        ),
        _server_cause(
            selector(config, "ALERTS", f'alertname="{SPN_DUPLICATE_ALERT}"', 'server!=""'),
            "spn_duplicate",
            subject_label="spn",
        ),
        _server_cause(
            selector(
                config,
                "exchange_auth_receive_connector_exchange_auth_enabled",
                f'connector!~"{config.receive_connector_ignore_regex}"',
            )
            + " == 0",
            "receive_connector_exchange_auth_disabled",
            subject_label="connector",
        ),
        _server_cause(
            selector(
                config,
                "exchange_auth_smtp_exchange_auth_advertised",
                f'port=~"{config.intra_org_smtp_ports_regex}"',
            )
            + " == 0",
            "exchange_auth_not_advertised",
            subject_label="port",
        ),
    ]
    return "\nor\n".join(parts)


def _domain_cause(expr: str, cause: str) -> str:
    expr = copy_label(expr, "domain_controller", "server")
    expr = set_label(set_label(expr, "cause", cause), "kb_step", KB_STEP[cause])
    return f"max by ({DOMAIN_CAUSE_LABELS}) (\n  {expr}\n)"


def domain_causes_expr(config: MixinConfig) -> str:
    failure = selector(config, "exchange_auth_kerberos_port_failure", 'reason!="inconclusive"')
    # "88/tcp refused": port and transport joined, then the reason.
    port_down = (
        'label_join(label_join(FAILURE == 1, "subject", "/", "port", "transport"), '
        '"subject", " ", "subject", "reason")'
    ).replace("FAILURE", failure)
    leap = selector(config, "exchange_auth_ntp_leap", 'role="domain_controller"')
    stratum = selector(config, "exchange_auth_ntp_stratum", 'role="domain_controller"')
    parts = [
        _domain_cause(port_down, "kerberos_port_down"),
        _domain_cause(
            set_label(f"({leap} == 3) * 0 + 1", "subject", "leap indicator 3"),
            "ntp_unsynchronised",
        ),
        _domain_cause(
            set_label(f"({stratum} == 0) * 0 + 1", "subject", "stratum 0"), "ntp_unsynchronised"
        ),
        _domain_cause(
            set_label(f"({stratum} == 16) * 0 + 1", "subject", "stratum 16"),
            "ntp_unsynchronised",
        ),
    ]
    return "\nor\n".join(parts)


def matrix_columns(config: MixinConfig) -> tuple[MatrixColumn, ...]:
    tolerance = config.kerberos_tolerance_seconds
    warning = config.skew_warning_seconds
    skew = selector(config, "exchange_auth_clock_skew_seconds")
    leap = selector(config, "exchange_auth_ntp_leap", 'role="exchange"')
    stratum = selector(config, "exchange_auth_ntp_stratum", 'role="exchange"')
    spn_present = selector(config, "exchange_auth_spn_present")
    account = selector(config, "exchange_auth_computer_account_found")
    connector = selector(
        config,
        "exchange_auth_receive_connector_exchange_auth_enabled",
        f'connector!~"{config.receive_connector_ignore_regex}"',
    )
    advertised = selector(
        config,
        "exchange_auth_smtp_exchange_auth_advertised",
        f'port=~"{config.intra_org_smtp_ports_regex}"',
    )
    port_up = selector(config, "exchange_auth_kerberos_port_up")
    kdc_up = selector(config, "exchange_auth_kerberos_port_up", 'port="88"')
    port_failure = selector(config, "exchange_auth_kerberos_port_failure", 'reason!="inconclusive"')
    duplicate = selector(config, "ALERTS", f'alertname="{SPN_DUPLICATE_ALERT}"', 'server!=""')
    queue_errors = selector(config, "exchange_auth_queue_errors", 'class="auth_temporary"')
    responses = selector(config, "exchange_auth_smtp_log_responses_total")
    auth_failures = selector(
        config,
        "exchange_auth_smtp_log_responses_total",
        'smtp_code="454"',
        'enhanced_code="4.7.0"',
    )
    servers = f"group by (job, instance, server) ({EXCHANGE_SERVERS})"
    return (
        MatrixColumn(
            "clock_skew",
            "Clock skew",
            "max by (job, instance, server) (\n  "
            + copy_label(
                f"({skew} > bool {tolerance}) + ({skew} > bool {warning})",
                "server",
                "exchange_server",
            )
            + "\n)",
        ),
        MatrixColumn(
            "ntp_unsynchronised",
            "Time service",
            "max by (job, instance, server) (\n  clamp_max(\n"
            f"    ({leap} == bool 3) + ({stratum} == bool 0) + ({stratum} == bool 16),\n    1\n  )\n)",
        ),
        MatrixColumn(
            "spn_missing",
            "SPN missing",
            f"2 * max by (job, instance, server) (\n  ({spn_present} == bool 0) or ({account} == bool 0)\n)",
        ),
        MatrixColumn(
            "spn_duplicate",
            "SPN duplicate",
            f"2 * (\n  max by (job, instance, server) ({duplicate})\n"
            f"  or on (job, instance, server)\n  0 * group by (job, instance, server) ({spn_present})\n)",
        ),
        MatrixColumn(
            "exchange_server_auth",
            "ExchangeServer auth",
            f"2 * max by (job, instance, server) (\n  ({connector} == bool 0) or ({advertised} == bool 0)\n)",
        ),
        MatrixColumn(
            "kerberos_ports",
            "KDC ports (domain)",
            # Seen from the exporter, the same for every server: 1 when a DC port is down,
            # 2 when no DC answers on 88 at all.
            f"0 * {servers}\n+ on (job, instance) group_left ()\n(\n"
            f"  clamp_max(count by (job, instance) ({port_failure} == 1), 1)\n"
            f"  + (sum by (job, instance) ({kdc_up}) == bool 0)\n"
            f"  or\n  0 * max by (job, instance) ({port_up})\n)",
        ),
        MatrixColumn(
            "queue_auth_errors",
            "Queues 454 4.7.0",
            f"2 * (sum by (job, instance, server) ({queue_errors}) > bool 0)",
        ),
        MatrixColumn(
            "smtp_log_auth_failures",
            "Logs 454 4.7.0",
            f"2 * (\n  sum by (job, instance, server) (increase({auth_failures}[{config.smtp_log_window}]))"
            f" > bool {config.smtp_log_auth_failures_per_window:g}\n"
            f"  or on (job, instance, server)\n  0 * group by (job, instance, server) ({responses})\n)",
        ),
    )


def severity_expr(config: MixinConfig) -> str:
    parts = []
    for column in matrix_columns(config):
        parts.append(
            set_label(
                f"(\n{indent(column.expr, 4)}\n  )\n  and on (job, instance, server) {EXCHANGE_SERVERS}",
                "cause",
                column.cause,
            )
        )
    return "\nor\n".join(parts)


def recording_rule_groups(config: MixinConfig) -> list[dict[str, Any]]:
    return [
        {
            "name": "exchange-auth-causes",
            "rules": [
                {"record": EXCHANGE_SERVERS, "expr": exchange_servers_expr(config)},
                {"record": SERVER_CAUSES, "expr": server_causes_expr(config)},
                {"record": DOMAIN_CAUSES, "expr": domain_causes_expr(config)},
                {"record": CAUSE_SEVERITY, "expr": severity_expr(config)},
            ],
        }
    ]
