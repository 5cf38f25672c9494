"""Recording rules: the exporter's verdicts per Exchange server, and the evidence behind them.

The exporter judges every KB 979174 cause for every Exchange server itself
(``exchange_auth_cause{server, cause}``: 1 problem, 0 ok, absent when unknown, with
``exchange_auth_cause_unknown{server, cause, reason}``; see ``exporter/verdicts.py``), the same
verdicts its ``diagnose`` command and status page show. The mixin does not judge again: these
rules put the verdicts in KB order and gather the evidence that says *which* DC, SPN, connector
or port, for the alert descriptions and the overview dashboard:

- ``exchange_auth:exchange_server:info`` — the Exchange servers the exporter judges, Edge
  servers left out (they authenticate with certificates, not Kerberos; the clock alerts leave
  their pairs out too).
- ``exchange_auth:exchange_server_cause:verdict{server, cause, kb_step}`` — the overview
  matrix: 1 problem, 0 ok, -1 unknown (those series carry the ``reason``). ``kb_step`` is the
  step of KB 979174 that fixes the cause; the two symptoms have none.
- ``exchange_auth:exchange_server_cause:detail{server, cause, detail, subject}`` — evidence for
  the causes of one server: the skew against which DC (the value, in seconds), which SPN is
  missing or duplicated, which connector or port lacks ExchangeServer authentication.
- ``exchange_auth:domain_cause:detail{domain_controller, cause, detail, ...}`` — evidence for
  the causes on the domain controllers' side, which are the same for every Exchange server:
  which DC ports do not answer Kerberos (``subject``), which DC does not replicate which
  naming context from which partner (``partner``, ``naming_context``; the value is the number
  of consecutive failures, or the seconds since the last success or attempt).

Details are evidence, not verdicts: a description lists a cause when the exporter's verdict
says it is present, followed by whatever details these rules hold for it.

Duplicate SPNs are reported per SPN value (``spn`` as the first holder spells it), and SPNs
compare case-insensitively, which PromQL joins cannot. The ``ExchangeAuthSpnDuplicate`` alert
finds the owning Exchange server with a case-insensitive template query and carries it as its
``server`` label; the detail rule reads that from ``ALERTS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import MixinConfig
from .promql import by, copy_label, indent, label_replace, selector, set_label

EXCHANGE_SERVERS = "exchange_auth:exchange_server:info"
CAUSE_VERDICT = "exchange_auth:exchange_server_cause:verdict"
SERVER_DETAILS = "exchange_auth:exchange_server_cause:detail"
DOMAIN_DETAILS = "exchange_auth:domain_cause:detail"

SPN_DUPLICATE_ALERT = "ExchangeAuthSpnDuplicate"

SERVER_DETAIL_LABELS = ("job", "instance", "server", "cause", "detail", "subject")
REPLICATION_PAIR = ("job", "instance", "domain_controller", "partner", "naming_context")
DOMAIN_DETAIL_LABELS = (*REPLICATION_PAIR, "cause", "detail", "subject")


@dataclass(frozen=True)
class VerdictCause:
    name: str  # the ``cause`` label of exchange_auth_cause
    title: str  # how descriptions and the matrix name it
    kb_step: str | None  # the KB 979174 step that fixes it; None for the symptoms
    domain_wide: bool = False  # judged from the DCs' side: the same for every Exchange server
    # False for a cause KB 979174 does not name: its kb_step only orders it after the KB's.
    in_kb: bool = True


# The exporter's causes (exporter.verdicts.Cause), in the order of KB 979174's steps, then the
# cause beyond the KB (the account's keys, seen in service tickets), then the two symptoms.
VERDICT_CAUSES = (
    VerdictCause("clock_skew", "clock skew", "1"),
    VerdictCause("replication", "AD replication", "2", domain_wide=True),
    VerdictCause("spn_missing", "SPN missing", "3"),
    VerdictCause("spn_duplicate", "SPN duplicated", "4"),
    VerdictCause("kerberos_ports_blocked", "Kerberos ports blocked", "5", domain_wide=True),
    VerdictCause("receive_connector_auth", "receive connector authentication", "6"),
    VerdictCause("kerberos_keys", "Kerberos keys and encryption types", "7", in_kb=False),
    VerdictCause("queue_auth_errors", "queues with 454 4.7.0", None),
    VerdictCause("log_auth_failures", "454 4.7.0 in the protocol logs", None),
)
CAUSES = tuple(c for c in VERDICT_CAUSES if c.kb_step is not None)
SYMPTOMS = tuple(c for c in VERDICT_CAUSES if c.kb_step is None)


@dataclass(frozen=True)
class Detail:
    name: str  # the ``detail`` label value
    phrase: str  # Go template text, with the detail series in ``.``


def server_details(config: MixinConfig) -> tuple[Detail, ...]:
    """How each detail of a server cause reads in an alert description."""
    limit = config.kerberos_tolerance_seconds
    return (
        Detail(
            "clock_skew_beyond_tolerance",
            '{{ printf "%.0f" .Value }}s against domain controller {{ .Labels.subject }}, '
            f"beyond the {limit}s Kerberos tolerance",
        ),
        Detail(
            "clock_skew_near_tolerance",
            '{{ printf "%.0f" .Value }}s against domain controller {{ .Labels.subject }}, '
            f"nearing the {limit}s Kerberos tolerance",
        ),
        Detail("ntp_unsynchronised", "time service not synchronised ({{ .Labels.subject }})"),
        Detail("computer_account_missing", "no computer account in Active Directory"),
        Detail("spn_missing", "{{ .Labels.subject }} missing from its computer account"),
        Detail(
            "spn_duplicate",
            "{{ .Labels.subject }} held by more than one account"
            # The owners, from the duplicate scan (sorted: the order of a query result is not).
            '{{ with printf "exchange_auth_spn_duplicate_owner_info{job=%q,spn=%q}" $labels.job '
            '.Labels.subject | query }} ({{ range $i, $o := sortByLabel "account" . }}'
            "{{ if $i }}; {{ end }}{{ $o.Labels.account }}{{ end }}){{ end }}",
        ),
        Detail(
            "service_ticket_principal_unknown",
            "service ticket for {{ .Labels.subject }} refused: principal unknown",
        ),
        Detail(
            "service_ticket_etype_nosupp",
            "service ticket for {{ .Labels.subject }} refused: no key of a usable encryption type",
        ),
        Detail(
            "service_ticket_skew",
            "domain controller {{ .Labels.subject }} refused a service ticket for clock skew",
        ),
        Detail(
            "account_no_usable_encryption_type",
            'msDS-SupportedEncryptionTypes {{ printf "%.0f" .Value }} allows neither RC4 nor AES',
        ),
        Detail(
            "exchange_auth_not_advertised",
            "X-EXPS GSSAPI not offered on port {{ .Labels.subject }}",
        ),
        Detail(
            "receive_connector_exchange_auth_disabled",
            'receive connector "{{ .Labels.subject }}" without ExchangeServer authentication',
        ),
    )


def _pair() -> str:
    """``dc1 <- dc3 (DC=corp,...)``, as the exporter's own evidence writes it."""
    return "{{ .Labels.domain_controller }} <- {{ .Labels.partner }} ({{ .Labels.naming_context }})"


def domain_details() -> tuple[Detail, ...]:
    return (
        Detail("kerberos_port_down", "{{ .Labels.domain_controller }} {{ .Labels.subject }}"),
        Detail(
            "service_ticket_kdc_unreachable",
            "{{ .Labels.domain_controller }} unreachable for service tickets",
        ),
        Detail(
            "replication_failing",
            _pair() + ': {{ printf "%.0f" .Value }} consecutive failures'
            "{{ with printf `exchange_auth_replication_last_result_info{job=%q,instance=%q,"
            "domain_controller=%q,partner=%q,naming_context=%q}` .Labels.job .Labels.instance "
            ".Labels.domain_controller .Labels.partner .Labels.naming_context | query }}"
            ', last result {{ . | first | label "result" }}{{ end }}'
            "{{ with printf `time() - exchange_auth_replication_last_success_timestamp_seconds{"
            "job=%q,instance=%q,domain_controller=%q,partner=%q,naming_context=%q}` .Labels.job "
            ".Labels.instance .Labels.domain_controller .Labels.partner .Labels.naming_context"
            " | query }}, last success {{ . | first | value | humanizeDuration }} ago{{ end }}",
        ),
        Detail(
            "replication_never_succeeded",
            _pair() + ": never replicated (last attempt {{ humanizeDuration .Value }} ago)",
        ),
        Detail(
            "replication_stale",
            _pair() + ": last success {{ humanizeDuration .Value }} ago",
        ),
    )


def _edge_servers(config: MixinConfig) -> str:
    return selector(config, "exchange_auth_server_info", config.edge_server_matcher)


def exchange_servers_expr(config: MixinConfig) -> str:
    verdicts = selector(config, "exchange_auth_cause")
    unknown = selector(config, "exchange_auth_cause_unknown")
    return (
        f"group by (job, instance, server) (\n  {verdicts}\n  or\n  {unknown}\n)\n"
        f"unless on (job, instance, server)\n{indent(_edge_servers(config), 2)}"
    )


def verdict_expr(config: MixinConfig) -> str:
    expr = (
        f"{selector(config, 'exchange_auth_cause')}\n"
        f"or\n-1 * {selector(config, 'exchange_auth_cause_unknown')}"
    )
    for cause in CAUSES:
        expr = label_replace(
            f"\n{indent(expr)}\n", "kb_step", str(cause.kb_step), "cause", cause.name
        )
    return f"{expr}\nand on (job, instance, server)\n{EXCHANGE_SERVERS}"


def unless_edge_pair(config: MixinConfig) -> str:
    """Appended to a skew-pair expression: drops the pairs of Edge servers (skew pairs name the
    Exchange server in ``exchange_server``, not ``server``)."""
    edge = copy_label(_edge_servers(config), "exchange_server", "server")
    return f"unless on (job, instance, exchange_server) {edge}"


def _server_detail(
    expr: str,
    cause: str,
    detail: str,
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
    expr = set_label(set_label(expr, "cause", cause), "detail", detail)
    if subject_label is not None:
        expr = label_replace(expr, "subject", "$1", subject_label, "(.*)")
    elif subject is not None:
        expr = set_label(expr, "subject", subject)
    return f"max by ({by(SERVER_DETAIL_LABELS)}) (\n  {expr}\n)"


def _ticket_refusals(config: MixinConfig, reason: str) -> str:
    """The ticket failures for ``reason``, with ``subject`` = ``<SPN> at <DC>``."""
    failure = selector(config, "exchange_auth_service_ticket_failure", f'reason="{reason}"')
    return f'label_join({failure} == 1, "subject", " at ", "spn", "domain_controller")'


def no_usable_encryption_type_expr(config: MixinConfig) -> str:
    """Accounts whose own msDS-SupportedEncryptionTypes allows neither AES nor RC4 (DES at most):
    no current KDC issues a ticket for them. The flags are 0 for an unset value."""
    aes_missing = selector(config, "exchange_auth_account_aes_missing")
    rc4_only = selector(config, "exchange_auth_account_rc4_only")
    return f"({aes_missing} == 1 unless on (job, instance, server) {rc4_only} == 1)"


def server_details_expr(config: MixinConfig) -> str:
    tolerance = config.kerberos_tolerance_seconds
    warning = config.skew_warning_seconds
    skew = selector(config, "exchange_auth_clock_skew_seconds")
    leap = selector(config, "exchange_auth_ntp_leap", 'role="exchange"')
    stratum = selector(config, "exchange_auth_ntp_stratum", 'role="exchange"')
    account = selector(config, "exchange_auth_computer_account_found")
    not_edge = unless_edge_pair(config)
    parts = [
        _server_detail(
            f"{skew} > {tolerance} {not_edge}",
            "clock_skew",
            "clock_skew_beyond_tolerance",
            subject_label="domain_controller",
            server_label="exchange_server",
            keep_value=True,
        ),
        _server_detail(
            f"({skew} > {warning}) <= {tolerance} {not_edge}",
            "clock_skew",
            "clock_skew_near_tolerance",
            subject_label="domain_controller",
            server_label="exchange_server",
            keep_value=True,
        ),
        _server_detail(
            f"{leap} == 3", "clock_skew", "ntp_unsynchronised", subject="leap indicator 3"
        ),
        _server_detail(f"{stratum} == 0", "clock_skew", "ntp_unsynchronised", subject="stratum 0"),
        _server_detail(
            f"{stratum} == 16", "clock_skew", "ntp_unsynchronised", subject="stratum 16"
        ),
        _server_detail(
            f"{account} == 0", "spn_missing", "computer_account_missing", subject="computer account"
        ),
        _server_detail(
            f"{selector(config, 'exchange_auth_spn_present')} == 0"
            f" unless on (job, instance, server) ({account} == 0)",
            "spn_missing",
            "spn_missing",
            subject_label="spn",
        ),
        _server_detail(
            selector(config, "ALERTS", f'alertname="{SPN_DUPLICATE_ALERT}"', 'server!=""'),
            "spn_duplicate",
            "spn_duplicate",
            subject_label="spn",
        ),
        _server_detail(
            _ticket_refusals(config, "principal_unknown"),
            "spn_missing",
            "service_ticket_principal_unknown",
            subject_label="subject",
        ),
        _server_detail(
            _ticket_refusals(config, "etype_nosupp"),
            "kerberos_keys",
            "service_ticket_etype_nosupp",
            subject_label="subject",
        ),
        _server_detail(
            selector(config, "exchange_auth_service_ticket_failure", 'reason="skew"') + " == 1",
            "clock_skew",
            "service_ticket_skew",
            subject_label="domain_controller",
        ),
        _server_detail(
            f"{no_usable_encryption_type_expr(config)}\n"
            f"* on (job, instance, server) {selector(config, 'exchange_auth_account_encryption_types')}",
            "kerberos_keys",
            "account_no_usable_encryption_type",
            subject="msDS-SupportedEncryptionTypes",
            keep_value=True,
        ),
        _server_detail(
            selector(
                config,
                "exchange_auth_smtp_exchange_auth_advertised",
                f'port=~"{config.intra_org_smtp_ports_regex}"',
            )
            + " == 0",
            "receive_connector_auth",
            "exchange_auth_not_advertised",
            subject_label="port",
        ),
        _server_detail(
            selector(
                config,
                "exchange_auth_receive_connector_exchange_auth_enabled",
                f'connector!~"{config.receive_connector_ignore_regex}"',
            )
            + " == 0",
            "receive_connector_auth",
            "receive_connector_exchange_auth_disabled",
            subject_label="connector",
        ),
    ]
    return "\nor\n".join(parts)


# --- replication (KB step 2): shared by the alerts and the domain details ----------------------


def _replication(config: MixinConfig, metric: str) -> str:
    return selector(config, f"exchange_auth_replication_{metric}")


def replication_never_succeeded_expr(config: MixinConfig) -> str:
    """Seconds since the last attempt of each pair that was attempted but never succeeded."""
    return (
        f"time() - {_replication(config, 'last_attempt_timestamp_seconds')}\n"
        f"unless on ({by(REPLICATION_PAIR)})\n"
        f"{_replication(config, 'last_success_timestamp_seconds')}"
    )


def replication_failing_expr(config: MixinConfig) -> str:
    """Consecutive failures of each failing pair that has succeeded before (a pair that never
    has is :func:`replication_never_succeeded_expr`'s)."""
    attempt = _replication(config, "last_attempt_timestamp_seconds")
    success = _replication(config, "last_success_timestamp_seconds")
    return (
        f"{_replication(config, 'consecutive_failures')} > 0\n"
        f"unless on ({by(REPLICATION_PAIR)})\n"
        f"({attempt} unless on ({by(REPLICATION_PAIR)}) {success})"
    )


def replication_stale_expr(config: MixinConfig) -> str:
    """Seconds since the last success of each pair whose last success is too old."""
    return (
        f"time() - {_replication(config, 'last_success_timestamp_seconds')}"
        f" > {config.replication_stale_after_seconds}"
    )


def _domain_detail(expr: str, cause: str, detail: str) -> str:
    expr = set_label(set_label(expr, "cause", cause), "detail", detail)
    return f"max by ({by(DOMAIN_DETAIL_LABELS)}) (\n  {expr}\n)"


def domain_details_expr(config: MixinConfig) -> str:
    failure = selector(config, "exchange_auth_kerberos_port_failure", 'reason!="inconclusive"')
    # "88/tcp refused": port and transport joined, then the reason.
    port_down = (
        'label_join(label_join(FAILURE == 1, "subject", "/", "port", "transport"), '
        '"subject", " ", "subject", "reason")'
    ).replace("FAILURE", failure)
    parts = [
        _domain_detail(
            copy_label(port_down, "domain_controller", "server"),
            "kerberos_ports_blocked",
            "kerberos_port_down",
        ),
        _domain_detail(
            selector(config, "exchange_auth_service_ticket_failure", 'reason="kdc_unreachable"')
            + " == 1",
            "kerberos_ports_blocked",
            "service_ticket_kdc_unreachable",
        ),
        _domain_detail(
            f"(\n{indent(replication_failing_expr(config), 4)}\n  )",
            "replication",
            "replication_failing",
        ),
        _domain_detail(
            f"(\n{indent(replication_never_succeeded_expr(config), 4)}\n  )",
            "replication",
            "replication_never_succeeded",
        ),
        # A failing pair's detail already says when it last succeeded.
        _domain_detail(
            f"(\n{indent(replication_stale_expr(config), 4)}\n"
            f"    unless on ({by(REPLICATION_PAIR)})\n"
            f"    {_replication(config, 'consecutive_failures')} > 0\n  )",
            "replication",
            "replication_stale",
        ),
    ]
    return "\nor\n".join(parts)


def recording_rule_groups(config: MixinConfig) -> list[dict[str, Any]]:
    return [
        {
            "name": "exchange-auth-causes",
            "rules": [
                {"record": EXCHANGE_SERVERS, "expr": exchange_servers_expr(config)},
                {"record": CAUSE_VERDICT, "expr": verdict_expr(config)},
                {"record": SERVER_DETAILS, "expr": server_details_expr(config)},
                {"record": DOMAIN_DETAILS, "expr": domain_details_expr(config)},
            ],
        }
    ]
