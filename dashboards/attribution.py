"""Go template text for alert descriptions: which KB 979174 causes are present right now.

Prometheus expands alert annotations with ``query``, so a description can ask, at the moment
the alert is evaluated, for the exporter's verdicts and for the evidence the recording rules of
:mod:`dashboards.rules` gather. The symptom alerts (queues and protocol logs holding 454 4.7.0)
use :func:`causes_block` to list:

1. the causes the exporter finds on the alerting server (``exchange_auth_cause == 1``), in the
   KB's order, each with its details: skew against which DC, which SPN missing or duplicated,
   which DC ports blocked or which DC not replicating from which partner, which connector or
   port without ExchangeServer auth; then the causes the exporter could not judge, and why;
2. the server-specific causes on the other Exchange servers: a sender's 454 4.7.0 often comes
   from the receiving server's fault, and the queue names the next hop, not the server (the
   domain-wide causes, ports and replication, are the same for every server and listed once).

Query results come in no fixed order, so every list is sorted on all of its labels (stable
sorts, least significant label first); the output is then the same on every evaluation, which
is what lets ``promtool test rules`` compare it exactly.
"""

from __future__ import annotations

from .config import MixinConfig
from .rules import (
    CAUSE_VERDICT,
    CAUSES,
    DOMAIN_DETAILS,
    SERVER_DETAILS,
    SYMPTOMS,
    Detail,
    domain_details,
    server_details,
)


def _dispatch(details: tuple[Detail, ...]) -> str:
    """``{{ if eq .Labels.detail "a" }}...{{ else if ... }}{{ else }}fallback{{ end }}``."""
    text = ""
    for index, detail in enumerate(details):
        keyword = "if" if index == 0 else "else if"
        text += f'{{{{ {keyword} eq .Labels.detail "{detail.name}" }}}}{detail.phrase}'
    return text + "{{ else }}{{ .Labels.detail }} {{ .Labels.subject }}{{ end }}"


def _sorted(*labels: str) -> str:
    """A pipeline sorting ``.`` by ``labels``, the first one most significant."""
    expr = "."
    for label in reversed(labels):
        expr = f'(sortByLabel "{label}" {expr})'
    return expr


def _name() -> str:
    """How the cause of the series in ``.`` reads."""
    text = ""
    for index, cause in enumerate(CAUSES):
        keyword = "if" if index == 0 else "else if"
        text += f'{{{{ {keyword} eq .Labels.cause "{cause.name}" }}}}{cause.title}'
    return text + "{{ else }}{{ .Labels.cause }}{{ end }}"


def _title() -> str:
    """The name of the verdict series in ``.`` and its KB step (or that it is beyond the KB)."""
    beyond = " ".join(f'"{c.name}"' for c in CAUSES if not c.in_kb)
    return (
        _name()
        + f"{{{{ if eq .Labels.cause {beyond} }}}} (beyond KB 979174)"
        + "{{ else }} (KB step {{ .Labels.kb_step }}){{ end }}"
    )


def _details(config: MixinConfig) -> str:
    """``: detail; detail`` for the verdict series in ``.``, from the detail rules."""
    domain_wide = " ".join(f'"{c.name}"' for c in CAUSES if c.domain_wide)
    server = (
        f"{{{{ with printf `{SERVER_DETAILS}{{job=%q,instance=%q,server=%q,cause=%q}}` "
        ".Labels.job .Labels.instance .Labels.server .Labels.cause | query }}: "
        f"{{{{ range $i, $d := {_sorted('detail', 'subject')} }}}}{{{{ if $i }}}}; {{{{ end }}}}"
        f"{{{{ with $d }}}}{_dispatch(server_details(config))}{{{{ end }}}}{{{{ end }}}}"
        "{{ end }}"
    )
    domain = (
        f"{{{{ with printf `{DOMAIN_DETAILS}{{job=%q,instance=%q,cause=%q}}` "
        ".Labels.job .Labels.instance .Labels.cause | query }}: "
        f"{{{{ range $i, $d := {_sorted('domain_controller', 'detail', 'subject', 'partner', 'naming_context')} }}}}"
        "{{ if $i }}; {{ end }}"
        f"{{{{ with $d }}}}{_dispatch(domain_details())}{{{{ end }}}}{{{{ end }}}}"
        "{{ end }}"
    )
    return f"{{{{ if eq .Labels.cause {domain_wide} }}}}{domain}{{{{ else }}}}{server}{{{{ end }}}}"


def own_causes(config: MixinConfig) -> str:
    """The causes the exporter finds on ``$labels.server``, one per line, or a line saying there
    are none; then the causes it could not judge."""
    symptoms = "|".join(c.name for c in SYMPTOMS)
    return (
        "Causes present now on {{ $labels.server }} (the exporter's verdicts):"
        # The causes only (the symptoms have no KB step), in the KB's order.
        f'{{{{ with printf `{CAUSE_VERDICT}{{job=%q,instance=%q,server=%q,kb_step!=""}} == 1`'
        " $labels.job $labels.instance $labels.server | query }}"
        f'{{{{ range sortByLabel "kb_step" . }}}}\n- {_title()}{_details(config)}{{{{ end }}}}'
        "{{ else }} none of the KB 979174 causes.{{ end }}"
        "{{ with printf `exchange_auth_cause_unknown{job=%q,instance=%q,server=%q,"
        f'cause!~"{symptoms}"}}` $labels.job $labels.instance $labels.server | query }}}}'
        '\nNot judged for lack of evidence: {{ range $i, $u := sortByLabel "cause" . }}'
        f"{{{{ if $i }}}}, {{{{ end }}}}{{{{ with $u }}}}{_name()} ({{{{ .Labels.reason }}}}){{{{ end }}}}"
        "{{ end }}.{{ end }}"
    )


def other_servers_causes(config: MixinConfig) -> str:
    server_causes = "|".join(c.name for c in CAUSES if not c.domain_wide)
    return (
        "Other Exchange servers:"
        f"{{{{ with printf `{CAUSE_VERDICT}{{job=%q,instance=%q,server!=%q,"
        f'cause=~"{server_causes}"}} == 1` $labels.job $labels.instance $labels.server'
        " | query }}"
        f"{{{{ range {_sorted('server', 'kb_step')} }}}}"
        f"\n- {{{{ .Labels.server }}}}: {_title()}{_details(config)}{{{{ end }}}}"
        "{{ else }} no cause found.{{ end }}"
    )


def causes_block(config: MixinConfig) -> str:
    return "\n".join((own_causes(config), other_servers_causes(config)))


# Escapes the regular-expression characters an SPN can hold (only the dot in practice) by
# putting each in a character class, which needs no backslashes through YAML, Go and PromQL.
def _spn_regex(expr: str) -> str:
    return f"(reReplaceAll `([.+*?()|{{}}$])` `[$1]` {expr})"


def spn_owner_query() -> str:
    """A template pipeline: the ``exchange_auth_spn_present`` series of the SPN in
    ``$labels.spn``, compared without letter case as the KDC does (``smtp/EXCH3.corp`` is
    ``SMTP/exch3.corp``); empty when it is no Exchange server's expected SPN."""
    return (
        'printf `exchange_auth_spn_present{job=%q,spn=~"(?i)%s"}` $labels.job '
        f"{_spn_regex('$labels.spn')} | query"
    )


def spn_owner_server() -> str:
    """The Exchange server whose expected SPN ``$labels.spn`` is, or nothing."""
    return f'{{{{ with {spn_owner_query()} }}}}{{{{ . | first | label "server" }}}}{{{{ end }}}}'
