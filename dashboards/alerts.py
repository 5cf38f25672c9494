"""Alerting rules: one per KB 979174 cause the exporter measures, the symptoms, and the exporter.

Every alert has ``severity``, a ``summary`` and a ``description`` naming the server(s) and the
value, and a ``runbook_url`` pointing at its section of ``docs/runbook.md``. The symptom alerts
(queues and protocol logs with 454 4.7.0) list the causes present right now, see
:mod:`dashboards.attribution`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .attribution import causes_block, spn_owner_query, spn_owner_server
from .config import MixinConfig, duration
from .promql import selector
from .rules import (
    SPN_DUPLICATE_ALERT,
    no_usable_encryption_type_expr,
    replication_failing_expr,
    replication_never_succeeded_expr,
    replication_stale_expr,
    unless_edge_pair,
)

Severity = Literal["critical", "warning", "info"]


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_seconds: int
    severity: Severity
    summary: str
    description: str
    labels: dict[str, str] = field(default_factory=dict)

    def rule(self, config: MixinConfig) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": duration(self.for_seconds),
            "labels": {"severity": self.severity, **self.labels},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": config.runbook(self.name),
            },
        }


def _seconds(value: str = "$value") -> str:
    return f'{{{{ printf "%.0f" {value} }}}}s'


def _offsets(server: str) -> str:
    """Every clock reading of ``server`` (a template expression), e.g. ``ntp +420.0s``."""
    return (
        "{{ with printf `exchange_auth_clock_offset_seconds{job=%q,server=%q}` $labels.job "
        f"{server} | query }}}}"
        '{{ range $i, $s := sortByLabel "source" . }}{{ if $i }}, {{ end }}'
        '{{ $s.Labels.source }} {{ printf "%+.1f" $s.Value }}s{{ end }}'
        "{{ else }}no reading{{ end }}"
    )


def _skew_uncertainty() -> str:
    return (
        "{{ with printf `exchange_auth_clock_skew_uncertainty_seconds{job=%q,exchange_server=%q,"
        "domain_controller=%q}` $labels.job $labels.exchange_server $labels.domain_controller"
        ' | query }} (±{{ . | first | value | printf "%.3f" }}s){{ end }}'
    )


def clock_alerts(config: MixinConfig) -> list[Alert]:
    skew = selector(config, "exchange_auth_clock_skew_seconds")
    tolerance = config.kerberos_tolerance_seconds
    warning = config.skew_warning_seconds
    offsets = (
        "Clock readings against the exporter's clock: {{ $labels.exchange_server }} "
        f"{_offsets('$labels.exchange_server')}; {{{{ $labels.domain_controller }}}} "
        f"{_offsets('$labels.domain_controller')}."
    )
    leap = selector(config, "exchange_auth_ntp_leap")
    stratum = selector(config, "exchange_auth_ntp_stratum")
    return [
        Alert(
            "ExchangeAuthClockSkewNearTolerance",
            f"{skew} > {warning}\n{unless_edge_pair(config)}",
            config.for_.clock_skew_near_limit,
            "warning",
            "Clock of {{ $labels.exchange_server }} is "
            + _seconds()
            + " from {{ $labels.domain_controller }}, near the "
            + f"{tolerance}s Kerberos limit",
            "Exchange server {{ $labels.exchange_server }} and domain controller "
            "{{ $labels.domain_controller }} are " + _seconds() + _skew_uncertainty() + " apart. "
            f"Kerberos rejects tickets between clocks more than {tolerance}s apart, and then "
            "mail queues with 451 4.4.0 / 454 4.7.0; this warns from "
            f"{warning}s on. " + offsets,
        ),
        Alert(
            "ExchangeAuthClockSkewExceedsTolerance",
            f"{skew} > {tolerance}\n{unless_edge_pair(config)}",
            config.for_.clock_skew_over_limit,
            "critical",
            "Clock of {{ $labels.exchange_server }} is "
            + _seconds()
            + " from {{ $labels.domain_controller }}, beyond the "
            + f"{tolerance}s Kerberos limit",
            "Exchange server {{ $labels.exchange_server }} and domain controller "
            "{{ $labels.domain_controller }} are " + _seconds() + _skew_uncertainty() + " apart, "
            f"more than the {tolerance}s Kerberos tolerance: tickets issued by this DC are "
            "rejected (KRB_AP_ERR_SKEW) and server-to-server mail fails with 454 4.7.0. " + offsets,
        ),
        Alert(
            "ExchangeAuthClockUnsynchronised",
            f"{leap} == 3\nor on (job, instance, server, role)\n"
            f"({stratum} == 0 or {stratum} == 16)",
            config.for_.clock_unsynchronised,
            "warning",
            "Time service on {{ $labels.server }} is not synchronised",
            "NTP on {{ $labels.server }} ({{ $labels.role }}) answers with leap indicator "
            "{{ with printf `exchange_auth_ntp_leap{job=%q,server=%q}` $labels.job $labels.server"
            ' | query }}{{ . | first | value | printf "%.0f" }}{{ end }} and stratum '
            "{{ with printf `exchange_auth_ntp_stratum{job=%q,server=%q}` $labels.job "
            '$labels.server | query }}{{ . | first | value | printf "%.0f" }}{{ end }}: it follows '
            "no time source (leap 3 = alarm, stratum 0 or 16 = unsynchronised) and will drift "
            f"until Kerberos' {tolerance}s tolerance is crossed. Its clock readings: "
            + _offsets("$labels.server")
            + ".",
        ),
    ]


def kerberos_alerts(config: MixinConfig) -> list[Alert]:
    port_up = selector(config, "exchange_auth_kerberos_port_up")
    kdc_up = selector(config, "exchange_auth_kerberos_port_up", 'port="88"')
    inconclusive = selector(config, "exchange_auth_kerberos_port_failure", 'reason="inconclusive"')
    return [
        Alert(
            "ExchangeAuthKerberosPortDown",
            f"{port_up} == 0\nunless on (job, instance, server, port, transport)\n{inconclusive}",
            config.for_.kerberos_port_down,
            "warning",
            "{{ $labels.server }} does not answer "
            '{{ if eq $labels.port "88" }}Kerberos{{ else }}kpasswd{{ end }} on '
            "{{ $labels.port }}/{{ $labels.transport }}",
            "Domain controller {{ $labels.server }} gave the exporter no "
            '{{ if eq $labels.port "88" }}Kerberos (AS-REQ){{ else }}kpasswd{{ end }} reply on '
            "port {{ $labels.port }}/{{ $labels.transport }}"
            "{{ with printf `exchange_auth_kerberos_port_failure{job=%q,server=%q,port=%q,"
            "transport=%q} == 1` $labels.job $labels.server $labels.port $labels.transport"
            ' | query }} (reason: {{ . | first | label "reason" }}){{ end }}. '
            "Exchange servers that pick this DC cannot get tickets over this transport; if a "
            "firewall blocks it, they fail with 454 4.7.0.",
        ),
        Alert(
            "ExchangeAuthKerberosAllKdcsUnreachable",
            f"count by (job, instance) (count by (job, instance, server) ({kdc_up}))\n"
            f"unless on (job, instance)\n({kdc_up} == 1)",
            config.for_.kerberos_all_kdcs_down,
            "critical",
            "No domain controller answers Kerberos on port 88",
            "None of the {{ $value }} domain controllers probed by {{ $labels.instance }} "
            "answers Kerberos on port 88 over UDP or TCP. Either every KDC is down or a "
            "firewall between the exporter and the DCs drops Kerberos; Exchange servers behind "
            "the same firewall can get no tickets and all server-to-server mail queues with "
            "454 4.7.0.",
        ),
    ]


def spn_alerts(config: MixinConfig) -> list[Alert]:
    account = selector(config, "exchange_auth_computer_account_found")
    present = selector(config, "exchange_auth_spn_present")
    owners = selector(
        config,
        "exchange_auth_spn_duplicate_owner_info",
        f'spn=~"(?i)({config.spn_service_classes_regex})/.*"',
    )
    return [
        Alert(
            "ExchangeAuthComputerAccountMissing",
            f"{account} == 0",
            config.for_.computer_account_missing,
            "critical",
            "No computer account in AD for {{ $labels.server }}",
            "The exporter found no computer account for Exchange server {{ $labels.server }} "
            "(searched by dNSHostName, then by sAMAccountName). Without it the server holds no "
            "SMTP/SMTPSVC SPNs and no Kerberos keys: other Exchange servers cannot authenticate "
            "to it and their mail to it fails with 454 4.7.0.",
        ),
        Alert(
            "ExchangeAuthSpnMissing",
            f"{present} == 0\nunless on (job, instance, server)\n({account} == 0)",
            config.for_.spn_missing,
            "critical",
            "SPN {{ $labels.spn }} missing on {{ $labels.server }}",
            "The computer account of Exchange server {{ $labels.server }} does not hold the "
            "SPN {{ $labels.spn }}. Other Exchange servers ask the KDC for a ticket to it when "
            "they send mail with X-EXPS GSSAPI; without it the KDC answers 'server not found' "
            "and their mail to {{ $labels.server }} queues with 454 4.7.0.",
        ),
        Alert(
            SPN_DUPLICATE_ALERT,
            f"count by (job, instance, spn) (\n  {owners}\n) > 1",
            config.for_.spn_duplicate,
            "critical",
            "SPN {{ $labels.spn }} is held by {{ $value }} accounts",
            "The SPN {{ $labels.spn }}"
            f"{{{{ with {spn_owner_query()} }}}} of Exchange server "
            '{{ . | first | label "server" }}{{ end }}'
            " is registered on {{ $value }} accounts"
            "{{ with printf `exchange_auth_spn_duplicate_owner_info{job=%q,spn=%q}` "
            "$labels.job $labels.spn | query }}: "
            '{{ range $i, $o := sortByLabel "account" . }}{{ if $i }}; {{ end }}'
            "{{ $o.Labels.account }}{{ end }}{{ end }}. "
            "The KDC cannot tell whose key to encrypt the ticket with, so Kerberos to that "
            "server fails (KRB_AP_ERR_MODIFIED on the receiver, 454 4.7.0 for the sender). "
            "SPNs compare without letter case.",
            # The Exchange server the SPN belongs to, for routing and for the overview matrix.
            labels={"server": spn_owner_server()},
        ),
    ]


# What each refusal of a service ticket means, in a few words (docs/runbook.md explains them).
TICKET_REASONS = {
    "principal_unknown": "the KDC knows no single account with this SPN: it is missing, or held "
    "by more than one account",
    "skew": "the KDC's clock is more than the Kerberos tolerance away",
    "kdc_unreachable": "the KDC did not answer: down, or Kerberos blocked on the way",
}


def _ticket_refusals(spn: str = "$labels.spn") -> str:
    """``dc1 (principal_unknown), dc3 (principal_unknown)`` for the alert's server and SPN."""
    return (
        "{{ with printf `exchange_auth_service_ticket_failure{job=%q,instance=%q,server=%q,"
        f"spn=%q}} == 1` $labels.job $labels.instance $labels.server {spn} | query }}}}"
        '{{ range $i, $f := sortByLabel "domain_controller" . }}{{ if $i }}, {{ end }}'
        "{{ $f.Labels.domain_controller }} ({{ $f.Labels.reason }}){{ end }}"
        "{{ else }}no reason recorded{{ end }}"
    )


def _reason_meaning(reason: str) -> str:
    """What ``reason`` (a template expression) means, from :data:`TICKET_REASONS`."""
    text = "".join(
        f'{{{{ {"if" if i == 0 else "else if"} eq {reason} "{name}" }}}}{meaning}'
        for i, (name, meaning) in enumerate(TICKET_REASONS.items())
    )
    return text + "{{ end }}"


def ticket_alerts(config: MixinConfig) -> list[Alert]:
    ok = selector(config, "exchange_auth_service_ticket_ok")
    # What the SPN or its replication explains. The account's keys (etype_nosupp) have an alert
    # of their own; a DC that is down or off in time (kdc_unreachable, skew) fails every SPN
    # alike, which the port and clock alerts report once; preauth_failed, no_credentials,
    # timeout and other are the exporter's side as often as the server's.
    refused = selector(config, "exchange_auth_service_ticket_failure", 'reason="principal_unknown"')
    per_spn = "job, instance, server, spn"
    etype = selector(config, "exchange_auth_service_ticket_failure", 'reason="etype_nosupp"')
    rc4_only = selector(config, "exchange_auth_account_rc4_only")
    krbtgt_aes_missing = selector(config, "exchange_auth_krbtgt_aes_missing")
    first_reason = (
        "{{ with printf `exchange_auth_service_ticket_failure{job=%q,instance=%q,server=%q,"
        "spn=%q} == 1` $labels.job $labels.instance $labels.server $labels.spn | query }}"
        '{{ $r := . | first | label "reason" }}'
    )
    return [
        Alert(
            "ExchangeAuthServiceTicketFailing",
            f"count by ({per_spn}) ({ok} == 0)\n"
            f"unless on ({per_spn}) ({ok} == 1)\n"
            f"and on ({per_spn}) ({refused} == 1)",
            config.for_.service_ticket_failing,
            "critical",
            "No domain controller issues a ticket for {{ $labels.spn }}",
            "Every domain controller asked ({{ $value }}) refused the exporter a service ticket "
            "for {{ $labels.spn }} of Exchange server {{ $labels.server }}: "
            + _ticket_refusals()
            + "."
            + first_reason
            + " {{ $r }}: "
            + _reason_meaning("$r")
            + ".{{ end }} Other Exchange servers get the same answer when they send mail to "
            "{{ $labels.server }} with X-EXPS GSSAPI, and their mail queues with 454 4.7.0.",
        ),
        Alert(
            "ExchangeAuthServiceTicketFailingOnSomeDcs",
            f"{ok} == 0\n"
            f"and on ({per_spn}) (max by ({per_spn}) ({ok}) == 1)\n"
            f"and on ({per_spn}, domain_controller) ({refused} == 1)",
            config.for_.service_ticket_failing_on_some_dcs,
            "warning",
            "{{ $labels.domain_controller }} refuses a ticket for {{ $labels.spn }} that other "
            "DCs issue",
            "Domain controller {{ $labels.domain_controller }} refused the exporter a service "
            "ticket for {{ $labels.spn }} of Exchange server {{ $labels.server }}"
            "{{ with printf `exchange_auth_service_ticket_failure{job=%q,instance=%q,server=%q,"
            "spn=%q,domain_controller=%q} == 1` $labels.job $labels.instance $labels.server "
            "$labels.spn $labels.domain_controller | query }}"
            '{{ $r := . | first | label "reason" }} ({{ $r }}: '
            + _reason_meaning("$r")
            + "){{ end }}, while "
            "{{ with printf `exchange_auth_service_ticket_ok{job=%q,instance=%q,server=%q,spn=%q} "
            "== 1` $labels.job $labels.instance $labels.server $labels.spn | query }}"
            '{{ range $i, $o := sortByLabel "domain_controller" . }}{{ if $i }}, {{ end }}'
            "{{ $o.Labels.domain_controller }}{{ end }}{{ end }} issued one. Exchange servers "
            "that pick {{ $labels.domain_controller }} fail with 454 4.7.0; a principal_unknown "
            "there usually means the SPN has not replicated to it yet.",
        ),
        Alert(
            "ExchangeAuthKerberosKeysUnusable",
            f"max by (job, instance, server) ({etype} == 1)\n"
            f"or on (job, instance, server)\n"
            f"{no_usable_encryption_type_expr(config)}",
            config.for_.kerberos_keys_unusable,
            "critical",
            "The KDC cannot encrypt a ticket for {{ $labels.server }}",
            "The computer account of Exchange server {{ $labels.server }} has no key of an "
            "encryption type the KDCs will use"
            "{{ with printf `exchange_auth_service_ticket_failure{job=%q,instance=%q,server=%q,"
            'reason="etype_nosupp"} == 1` $labels.job $labels.instance $labels.server | query }}'
            ": tickets refused with KDC_ERR_ETYPE_NOSUPP for "
            '{{ range $i, $f := sortByLabel "domain_controller" (sortByLabel "spn" .) }}'
            "{{ if $i }}, {{ end }}{{ $f.Labels.spn }} by {{ $f.Labels.domain_controller }}"
            "{{ end }}{{ end }}"
            "{{ with printf `exchange_auth_account_encryption_types{job=%q,instance=%q,"
            "server=%q}` $labels.job $labels.instance $labels.server | query }}"
            '; its msDS-SupportedEncryptionTypes is {{ . | first | value | printf "%.0f" }}'
            "{{ end }}"
            "{{ with printf `exchange_auth_account_encryption_types_set{job=%q,instance=%q,"
            "server=%q} == 0` $labels.job $labels.instance $labels.server | query }}"
            " (unset: the KDCs' default){{ end }}. "
            "Allow AES (Set-ADComputer -KerberosEncryptionType AES128,AES256) or give it new "
            "keys (Reset-ComputerMachinePassword); until then mail to {{ $labels.server }} "
            "fails with 454 4.7.0.",
        ),
        Alert(
            "ExchangeAuthAccountRC4Only",
            f"{rc4_only} == 1",
            config.for_.account_rc4_only,
            "warning",
            "The computer account of {{ $labels.server }} allows RC4 only",
            "msDS-SupportedEncryptionTypes of Exchange server {{ $labels.server }}'s computer "
            "account is "
            "{{ with printf `exchange_auth_account_encryption_types{job=%q,instance=%q,"
            "server=%q}` $labels.job $labels.instance $labels.server | query }}"
            '{{ . | first | value | printf "%.0f" }}{{ end }}: RC4-HMAC and no AES. Its tickets '
            "work only while the KDCs still issue RC4 tickets; once they refuse RC4 (a hardened "
            "DefaultDomainSupportedEncTypes, or Microsoft's RC4 removal) every Exchange server "
            "sending to it fails with 454 4.7.0. Set AES128 and AES256 on the account.",
        ),
        Alert(
            "ExchangeAuthKrbtgtAesMissing",
            f"{krbtgt_aes_missing} == 1",
            config.for_.krbtgt_aes_missing,
            "warning",
            "The krbtgt account is set without AES (read by {{ $labels.instance }})",
            "msDS-SupportedEncryptionTypes of the realm's krbtgt account, as read by "
            "{{ $labels.instance }}, is "
            "{{ with printf `exchange_auth_krbtgt_encryption_types{job=%q,instance=%q}` "
            '$labels.job $labels.instance | query }}{{ . | first | value | printf "%.0f" }}'
            "{{ end }}: neither AES128 nor AES256. It is unset unless someone set it by hand. "
            "TGTs are encrypted with krbtgt's own keys: check that it has AES keys (its password "
            "changed since the domain reached functional level 2008), then clear the value.",
        ),
    ]


# The results of repadmin /showrepl met most often, in a few words (docs/runbook.md explains
# them); keyed by the exporter's names for them (exchange_auth_replication_last_result_info).
REPLICATION_RESULTS = {
    "ERROR_NO_LOGON_SERVERS": "no KDC answered to authenticate to the partner",
    "RPC_S_SERVER_UNAVAILABLE": "the partner does not answer RPC: down, a wrong DNS record or "
    "a firewall",
    "ERROR_HOST_DOWN": "the partner is down or unreachable",
    "ERROR_CONNECTION_REFUSED": "the partner refused the connection: its directory service is "
    "stopped, or a firewall rejects",
    "ERROR_DS_DRA_ACCESS_DENIED": "the partner refused replication: rights or the DC's "
    "computer account",
    "ERROR_DS_DNS_LOOKUP_FAILURE": "the partner's <DSA GUID>._msdcs name does not resolve",
    "ERROR_DS_INSUFFICIENT_ATTR_TO_CREATE_OBJECT": "lingering objects",
    "ERROR_DS_REPL_LIFETIME_EXCEEDED": "no replication for longer than the tombstone lifetime: "
    "blocked until lingering objects are removed",
    "SEC_E_WRONG_PRINCIPAL": "a Kerberos ticket for the wrong account: the partner's SPN is "
    "duplicated or its DNS record points elsewhere",
    "ERROR_TIME_SKEW": "the clocks of the two DCs are too far apart",
    "SEC_E_TIME_SKEW": "the clocks of the two DCs are too far apart",
    "ERROR_FILE_NOT_FOUND": "on Samba: the partner could not be reached",
}

_PAIR_FORMAT = "{job=%q,instance=%q,domain_controller=%q,partner=%q,naming_context=%q}"
_PAIR_ARGS = (
    "$labels.job $labels.instance $labels.domain_controller $labels.partner $labels.naming_context"
)


def _pair_query(metric: str, prefix: str = "") -> str:
    """``printf `<prefix><metric>{<the alert's pair>}` ... | query``: a template pipeline."""
    return f"printf `{prefix}{metric}{_PAIR_FORMAT}` {_PAIR_ARGS} | query"


def _replication_result() -> str:
    """`` Last result 1722 RPC_S_SERVER_UNAVAILABLE: <what it means>.`` for the alert's pair."""
    meanings = "".join(
        f'{{{{ {"if" if i == 0 else "else if"} eq $r "{name}" }}}}: {meaning}'
        for i, (name, meaning) in enumerate(REPLICATION_RESULTS.items())
    )
    return (
        f"{{{{ with {_pair_query('exchange_auth_replication_last_result')} }}}}"
        ' Last result {{ . | first | value | printf "%.0f" }}'
        f"{{{{ with {_pair_query('exchange_auth_replication_last_result_info')} }}}}"
        '{{ $r := . | first | label "result" }} {{ $r }}'
        f"{meanings}{{{{ end }}}}{{{{ end }}}}.{{{{ end }}}}"
    )


def _replication_failures(before: str, after: str = "") -> str:
    """``<before>N consecutive failures<after>`` for the alert's pair, or nothing."""
    return (
        f"{{{{ with {_pair_query('exchange_auth_replication_consecutive_failures')} }}}}"
        f'{before}{{{{ . | first | value | printf "%.0f" }}}} consecutive failures{after}'
        "{{ end }}"
    )


def replication_alerts(config: MixinConfig) -> list[Alert]:
    stale_after = duration(config.replication_stale_after_seconds)
    pair = "{{ $labels.naming_context }} from {{ $labels.partner }}"
    why = (
        " Until it replicates, changes made on {{ $labels.partner }} (an SPN added or removed, "
        "a computer account's new password) do not reach {{ $labels.domain_controller }}, and "
        "Kerberos through it fails for the servers concerned (KB 979174 step 2)."
    )
    success = selector(config, "exchange_auth_replication_dc_success")
    return [
        Alert(
            "ExchangeAuthReplicationFailing",
            replication_failing_expr(config),
            config.for_.replication_failing,
            "warning",
            "{{ $labels.domain_controller }} fails to replicate " + pair,
            "Domain controller {{ $labels.domain_controller }} failed "
            '{{ printf "%.0f" $value }} consecutive times to replicate ' + pair + " (inbound, "
            "as repadmin /showrepl shows it)"
            f"{{{{ with {_pair_query('exchange_auth_replication_last_success_timestamp_seconds', 'time() - ')} }}}}"
            "; its last success was {{ . | first | value | humanizeDuration }} ago{{ end }}."
            + _replication_result()
            + why,
        ),
        Alert(
            "ExchangeAuthReplicationStale",
            replication_stale_expr(config),
            config.for_.replication_stale,
            "warning",
            "{{ $labels.domain_controller }} last replicated " + pair + " "
            "{{ humanizeDuration $value }} ago",
            "Domain controller {{ $labels.domain_controller }} last replicated " + pair + " "
            "successfully {{ humanizeDuration $value }} ago, more than "
            f"{stale_after} (the largest delta of repadmin /replsummary)"
            + _replication_failures(", with ", " since")
            + "."
            + _replication_result()
            + why,
        ),
        Alert(
            "ExchangeAuthReplicationNeverSucceeded",
            replication_never_succeeded_expr(config),
            config.for_.replication_never_succeeded,
            "warning",
            "{{ $labels.domain_controller }} has never replicated " + pair,
            "Domain controller {{ $labels.domain_controller }} has tried to replicate "
            + pair
            + " but never succeeded: last attempt {{ humanizeDuration $value }} ago"
            + _replication_failures(", ")
            + "."
            + _replication_result()
            + " Whatever that naming context holds (SPNs, computer accounts and their keys) "
            "{{ $labels.domain_controller }} knows only from before, or not at all.",
        ),
        Alert(
            "ExchangeAuthReplicationDcUnreadable",
            f"{success} == 0",
            config.for_.replication_dc_unreadable,
            "warning",
            "The replication state of {{ $labels.domain_controller }} cannot be read",
            "The exporter {{ $labels.instance }} cannot read the inbound replication state of "
            "domain controller {{ $labels.domain_controller }} over LDAP"
            "{{ with printf `exchange_auth_replication_dc_failure{job=%q,instance=%q,"
            "domain_controller=%q} == 1` $labels.job $labels.instance $labels.domain_controller"
            ' | query }} (reason: {{ . | first | label "reason" }}){{ end }}. '
            "{{ with printf `time() - exchange_auth_replication_dc_read_timestamp_seconds{job=%q,"
            "instance=%q,domain_controller=%q}` $labels.job $labels.instance "
            "$labels.domain_controller | query }}Its partners are shown as they were at its last "
            "reading, {{ . | first | value | humanizeDuration }} ago{{ else }}It has never been "
            "read, so none of its partners is shown{{ end }}: replication trouble on it goes "
            "unseen until it can be read again.",
        ),
    ]


def smtp_alerts(config: MixinConfig) -> list[Alert]:
    advertised = selector(
        config,
        "exchange_auth_smtp_exchange_auth_advertised",
        f'port=~"{config.intra_org_smtp_ports_regex}"',
    )
    connector = selector(
        config,
        "exchange_auth_receive_connector_exchange_auth_enabled",
        f'connector!~"{config.receive_connector_ignore_regex}"',
    )
    return [
        Alert(
            "ExchangeAuthExchangeServerAuthNotAdvertised",
            f"{advertised} == 0",
            config.for_.exchange_auth_not_advertised,
            "critical",
            "{{ $labels.server }} does not offer X-EXPS GSSAPI on port {{ $labels.port }}",
            "EHLO on {{ $labels.server }} port {{ $labels.port }} lists no X-EXPS GSSAPI: the "
            "receive connector behind that port does not take ExchangeServer (Kerberos) "
            "authentication, so other Exchange servers cannot authenticate and their mail to it "
            "is refused or treated as anonymous. Receive connectors of {{ $labels.server }} in "
            "AD:"
            "{{ with printf `exchange_auth_receive_connector_exchange_auth_enabled{job=%q,"
            "server=%q}` $labels.job $labels.server | query }}"
            '{{ range sortByLabel "connector" . }} "{{ .Labels.connector }}" '
            "ExchangeServer auth {{ if eq .Value 1.0 }}on{{ else }}off{{ end }};{{ end }}"
            "{{ else }} none known;{{ end }} an 'on' connector that is not advertised means "
            "another connector answers on this port, or the transport service has not reloaded.",
        ),
        Alert(
            "ExchangeAuthReceiveConnectorExchangeServerAuthDisabled",
            f"{connector} == 0",
            config.for_.receive_connector_exchange_auth_disabled,
            "warning",
            'Receive connector "{{ $labels.connector }}" on {{ $labels.server }} has '
            "ExchangeServer authentication off",
            'Receive connector "{{ $labels.connector }}" of Exchange server {{ $labels.server }} '
            "does not allow ExchangeServer authentication (bit 0x10 of "
            "msExchSMTPReceiveInboundSecurityFlag is clear). Exchange servers sending to it "
            "cannot use X-EXPS GSSAPI and their mail is refused or arrives as anonymous.",
        ),
    ]


def symptom_alerts(config: MixinConfig) -> list[Alert]:
    queue_errors = selector(config, "exchange_auth_queue_errors", 'class="auth_temporary"')
    responses = selector(
        config,
        "exchange_auth_smtp_log_responses_total",
        'smtp_code="454"',
        'enhanced_code="4.7.0"',
    )
    window = config.smtp_log_window
    causes = causes_block(config)
    return [
        Alert(
            "ExchangeAuthQueueAuthErrors",
            f"sum by (job, instance, server) ({queue_errors}) > 0",
            config.for_.queue_auth_errors,
            "critical",
            '{{ printf "%.0f" $value }} queue(s) on {{ $labels.server }} fail with 454 4.7.0',
            '{{ printf "%.0f" $value }} queue(s) on {{ $labels.server }} have the LastError '
            "454 4.7.0 Temporary authentication failure"
            "{{ with printf `sum(exchange_auth_queue_messages{job=%q,server=%q} and on (job, "
            'instance, server, queue) exchange_auth_queue_info{error_class="auth_temporary"})` '
            '$labels.job $labels.server | query }}, holding {{ . | first | value | printf "%.0f" }}'
            " messages{{ end }}"
            "{{ with printf `exchange_auth_queue_info{job=%q,server=%q,"
            'error_class="auth_temporary"}` $labels.job $labels.server | query }}'
            ' (queues: {{ range $i, $q := sortByLabel "queue" . }}{{ if $i }}, {{ end }}'
            "{{ $q.Labels.queue }} to {{ $q.Labels.next_hop_domain }}{{ end }}){{ end }}: "
            "Kerberos between this server and its next hop fails.\n" + causes,
        ),
        Alert(
            "ExchangeAuthSmtpLogAuthFailures",
            f"sum by (job, instance, server, direction) (\n  increase({responses}[{window}])\n)"
            f" > {config.smtp_log_auth_failures_per_window:g}",
            config.for_.smtp_log_auth_failures,
            "warning",
            "{{ $labels.server }} logs 454 4.7.0 when "
            '{{ if eq $labels.direction "send" }}sending{{ else }}receiving{{ end }}',
            '{{ if eq $labels.direction "send" }}The servers {{ $labels.server }} sends to '
            "answered it{{ else }}{{ $labels.server }} answered servers sending to it{{ end }} "
            '{{ printf "%.0f" $value }} times with 454 4.7.0 Temporary authentication failure in '
            f"the last {window} ({{{{ $labels.direction }}}} protocol log): "
            '{{ if eq $labels.direction "send" }}it could get or present no valid Kerberos '
            "ticket{{ else }}it could not validate the senders' Kerberos tickets{{ end }}.\n"
            + causes,
        ),
    ]


def exporter_alerts(config: MixinConfig) -> list[Alert]:
    up = selector(config, "up")
    success = selector(config, "exchange_auth_check_success")
    last_success = "exchange_auth_last_success_timestamp_seconds"
    named = config.scan_stale_after_seconds
    stale = []
    for scan, seconds in named.items():
        scan_selector = selector(config, last_success, 'scan="' + scan + '"')
        stale.append(f"(time() - {scan_selector}) > {seconds}")
    others = selector(config, last_success, 'scan!~"' + "|".join(named) + '"')
    stale.append(f"(time() - {others}) > {config.scan_stale_after_default_seconds}")
    return [
        Alert(
            "ExchangeAuthExporterDown",
            f"{up} == 0",
            config.for_.exporter_down,
            "critical",
            "The exchange-auth exporter {{ $labels.instance }} is down",
            "Prometheus cannot scrape the exchange-auth exporter at {{ $labels.instance }} "
            "(job {{ $labels.job }}): no cause of Exchange server-to-server authentication "
            "failures is being watched until it is back.",
        ),
        Alert(
            "ExchangeAuthCheckFailingEverywhere",
            f"count by (job, instance, check) ({success})\n"
            f"unless on (job, instance, check)\n({success} == 1)",
            config.for_.check_failing_everywhere,
            "warning",
            "The {{ $labels.check }} check fails for every server",
            "The {{ $labels.check }} check of {{ $labels.instance }} reached no verdict for any "
            'of its {{ printf "%.0f" $value }} server(s). One failure everywhere points at the '
            "exporter's side (its network, DNS, credentials or configuration), not at the "
            "servers; until it is fixed this cause is not watched.",
        ),
        Alert(
            "ExchangeAuthScanStale",
            "\nor\n".join(stale),
            config.for_.scan_stale,
            "warning",
            "The {{ $labels.scan }} scan of {{ $labels.instance }} is stale",
            "The background scan {{ $labels.scan }} of {{ $labels.instance }} "
            "{{ with printf `exchange_auth_last_success_timestamp_seconds{job=%q,instance=%q,"
            "scan=%q} == 0` $labels.job $labels.instance $labels.scan | query }}has never "
            "succeeded{{ else }}last succeeded {{ humanizeDuration $value }} ago{{ end }}"
            "{{ with printf `exchange_auth_scan_failure{job=%q,instance=%q,scan=%q} == 1` "
            "$labels.job $labels.instance $labels.scan | query }} (last failure: "
            '{{ . | first | label "reason" }}){{ end }}. The metrics it feeds (SPNs, '
            "duplicates, queues) are that old: neither a fix nor a new fault shows.",
        ),
        Alert(
            "ExchangeAuthQueueSnapshotStale",
            f"{selector(config, 'exchange_auth_queue_snapshot_age_seconds')}"
            f" > {config.queue_snapshot_stale_after_seconds}",
            config.for_.queue_snapshot_stale,
            "warning",
            "The queue snapshot of {{ $labels.server }} is {{ humanizeDuration $value }} old",
            "The newest readable queue snapshot of {{ $labels.server }} was taken "
            "{{ humanizeDuration $value }} ago: the scheduled task writing it "
            "(Export-QueueSnapshot.ps1) has stopped, or the exporter cannot read the share. "
            "Queue alerts for this server see old data.",
        ),
        Alert(
            "ExchangeAuthDiscoveryFailing",
            f"{selector(config, 'exchange_auth_discovery_success')} == 0",
            config.for_.discovery_failing,
            "warning",
            "Discovery of {{ $labels.role }} servers by {{ $labels.method }} fails",
            "The exporter {{ $labels.instance }} cannot discover {{ $labels.role }} servers by "
            "{{ $labels.method }}"
            "{{ with printf `exchange_auth_discovery_failure{job=%q,instance=%q,role=%q,"
            "method=%q} == 1` $labels.job $labels.instance $labels.role $labels.method"
            ' | query }} (reason: {{ . | first | label "reason" }}){{ end }}. It keeps probing '
            "the servers it found before; new or renamed servers are not watched.",
        ),
        Alert(
            "ExchangeAuthConfigReloadFailed",
            f"{selector(config, 'exchange_auth_config_last_reload_successful')} == 0",
            config.for_.config_reload_failed,
            "warning",
            "The configuration of {{ $labels.instance }} failed to reload",
            "The last configuration reload of the exporter {{ $labels.instance }} failed; it "
            "runs with the previous configuration. Its log names every problem.",
        ),
    ]


def alerts(config: MixinConfig) -> dict[str, list[Alert]]:
    """Alerts by rule group."""
    return {
        "exchange-auth-clock": clock_alerts(config),
        "exchange-auth-replication": replication_alerts(config),
        "exchange-auth-kerberos": kerberos_alerts(config),
        "exchange-auth-spn": spn_alerts(config),
        "exchange-auth-tickets": ticket_alerts(config),
        "exchange-auth-smtp": smtp_alerts(config),
        "exchange-auth-symptoms": symptom_alerts(config),
        "exchange-auth-exporter": exporter_alerts(config),
    }


def alert_rule_groups(config: MixinConfig) -> list[dict[str, Any]]:
    return [
        {"name": group, "rules": [a.rule(config) for a in group_alerts]}
        for group, group_alerts in alerts(config).items()
    ]
