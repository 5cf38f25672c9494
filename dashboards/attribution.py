"""Go template text for alert descriptions: which KB 979174 causes are present right now.

Prometheus expands alert annotations with ``query``, so a description can ask, at the moment
the alert is evaluated, for the recording rules of :mod:`dashboards.rules`. The symptom alerts
(queues and protocol logs holding 454 4.7.0) use :func:`causes_block` to list:

1. the causes on the alerting server itself (skew against which DC, which SPN missing or
   duplicated, which connector or port lacks ExchangeServer auth);
2. the causes on the other Exchange servers: a sender's 454 4.7.0 often comes from the
   receiving server's fault, and the queue names the next hop, not the server;
3. the domain controllers' side: which DC ports do not answer Kerberos, which DC clocks are
   unsynchronised.

Query results come in no fixed order, so every list is sorted on all of its labels (stable
sorts, least significant label first); the output is then the same on every evaluation, which
is what lets ``promtool test rules`` compare it exactly.
"""

from __future__ import annotations

from .config import MixinConfig
from .rules import DOMAIN_CAUSES, SERVER_CAUSES, Cause, domain_causes, server_causes


def _dispatch(causes: tuple[Cause, ...]) -> str:
    """``{{ if eq .Labels.cause "a" }}...{{ else if ... }}{{ else }}fallback{{ end }}``."""
    text = ""
    for index, cause in enumerate(causes):
        keyword = "if" if index == 0 else "else if"
        text += f'{{{{ {keyword} eq .Labels.cause "{cause.name}" }}}}{cause.phrase}'
    return text + "{{ else }}{{ .Labels.cause }} {{ .Labels.subject }}{{ end }}"


def _sorted(*labels: str) -> str:
    """A pipeline sorting ``.`` by ``labels``, the first one most significant."""
    expr = "."
    for label in reversed(labels):
        expr = f'(sortByLabel "{label}" {expr})'
    return expr


def own_causes(config: MixinConfig) -> str:
    """The causes on ``$labels.server``, one per line, or a line saying there are none."""
    phrase = _dispatch(server_causes(config))
    return (
        "Causes present now on {{ $labels.server }}:"
        f'{{{{ with printf "{SERVER_CAUSES}{{job=%q,server=%q}}" $labels.job $labels.server'
        " | query }}"
        f"{{{{ range {_sorted('kb_step', 'cause', 'subject')} }}}}\n- {phrase}{{{{ end }}}}"
        "{{ else }} none of the KB 979174 causes.{{ end }}"
    )


def other_servers_causes(config: MixinConfig) -> str:
    phrase = _dispatch(server_causes(config))
    return (
        "Other Exchange servers:"
        f'{{{{ with printf "{SERVER_CAUSES}{{job=%q,server!=%q}}" $labels.job $labels.server'
        " | query }}"
        f"{{{{ range {_sorted('server', 'kb_step', 'cause', 'subject')} }}}}"
        f"\n- {{{{ .Labels.server }}}}: {phrase}{{{{ end }}}}"
        "{{ else }} no cause found.{{ end }}"
    )


def domain_controller_causes() -> str:
    phrase = _dispatch(domain_causes())
    return (
        "Domain controllers (seen from the exporter):"
        f'{{{{ with printf "{DOMAIN_CAUSES}{{job=%q}}" $labels.job | query }}}}'
        f"{{{{ range {_sorted('domain_controller', 'kb_step', 'cause', 'subject')} }}}}"
        f"\n- {{{{ .Labels.domain_controller }}}}: {phrase}{{{{ end }}}}"
        "{{ else }} every Kerberos port answers and every clock is synchronised.{{ end }}"
    )


def causes_block(config: MixinConfig) -> str:
    return "\n".join((own_causes(config), other_servers_causes(config), domain_controller_causes()))


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
