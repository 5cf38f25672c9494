"""The one place for the mixin's selectors and thresholds; alerts, rules and dashboards read it.

Change a value here, run ``python -m dashboards``, and commit the regenerated files. Tests build
variants with :func:`dataclasses.replace` (the end-to-end test shortens every ``for``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace


def duration(seconds: float) -> str:
    """Seconds as a Prometheus duration (``300`` -> ``5m``, ``90`` -> ``1m30s``)."""
    whole = int(seconds)
    if whole != seconds or whole < 0:
        raise ValueError(f"{seconds!r} is not a whole number of seconds")
    if whole == 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)


@dataclass(frozen=True)
class ForDurations:
    """How long each condition must hold before its alert fires (seconds).

    Long enough to ride out one failed probe or an NTP step; the cached scans (SPNs every 5
    minutes, duplicates every 30) cannot blip faster than they refresh anyway.
    """

    clock_skew_near_limit: int = 900
    clock_skew_over_limit: int = 300
    clock_unsynchronised: int = 900
    kerberos_port_down: int = 300
    kerberos_all_kdcs_down: int = 120
    computer_account_missing: int = 600
    spn_missing: int = 600
    spn_duplicate: int = 600
    # The service tickets are requested at every scrape: one refused request (a DC restarting)
    # is no outage; the encryption types come from the spn scan, every 5 minutes.
    service_ticket_failing: int = 600
    service_ticket_failing_on_some_dcs: int = 900
    kerberos_keys_unusable: int = 600
    account_rc4_only: int = 1800
    krbtgt_aes_missing: int = 1800
    exchange_auth_not_advertised: int = 600
    receive_connector_exchange_auth_disabled: int = 600
    queue_auth_errors: int = 300
    smtp_log_auth_failures: int = 600
    # The replication scan reads every DC every 5 minutes (checks.replication.refresh_interval):
    # a partner down for one scan, or one unread scan, is not yet worth a page.
    replication_failing: int = 1800
    replication_stale: int = 600
    replication_never_succeeded: int = 1800
    replication_dc_unreadable: int = 900
    exporter_down: int = 300
    check_failing_everywhere: int = 600
    scan_stale: int = 300
    queue_snapshot_stale: int = 300
    discovery_failing: int = 900
    config_reload_failed: int = 600

    def all_set_to(self, seconds: int) -> ForDurations:
        """Every duration set to ``seconds`` (for end-to-end tests against a real Prometheus)."""
        return replace(self, **{f.name: seconds for f in fields(self)})


@dataclass(frozen=True)
class MixinConfig:
    # Selects the exporter's scrape job(s); every expression carries it.
    job_selector: str = 'job="exchange-auth"'

    # Kerberos' "maximum tolerance for computer clock synchronization" (AD default 5 minutes):
    # two servers further apart than this cannot authenticate to each other.
    kerberos_tolerance_seconds: int = 300
    # Warn this far below the tolerance: clocks keep drifting in the same direction.
    skew_warning_margin_seconds: int = 60

    # The intra-organisation SMTP port(s) where Exchange 2013+ must offer X-EXPS GSSAPI (the
    # transport service's Default receive connector). Port 25 (the front end) may rightly not.
    intra_org_smtp_ports_regex: str = "2525"
    # Receive connectors that take no ExchangeServer authentication by design (client submission).
    receive_connector_ignore_regex: str = "Client .*"

    # Edge Transport servers are no domain members and authenticate with certificates: the
    # Kerberos causes do not apply to them (exchange_auth_server_info's exchange_roles).
    edge_server_matcher: str = 'exchange_roles=~"(.*,)?Edge(,.*)?"'
    # The SPN classes KB 979174 is about; duplicates of other classes are someone else's.
    spn_service_classes_regex: str = "SMTP|SMTPSVC"

    # 454 4.7.0 responses in the protocol logs: more than this many within the window counts.
    # Exchange servers of one organisation should never answer each other with one. The window
    # is shorter than the alert's `for`, so one burst (a failover) does not fire; failures that
    # keep coming do.
    smtp_log_window: str = "5m"
    smtp_log_auth_failures_per_window: float = 0.0

    # A partner whose last successful inbound replication is older than this is stale (the
    # "largest delta" of repadmin /replsummary). Keep it equal to the exporter's
    # checks.replication.stale_after, which its `replication` verdict uses; raise both where
    # sites replicate on a longer schedule (the inter-site default is every 3 hours).
    replication_stale_after_seconds: int = 3600

    # A background scan older than this is stale (about three refresh intervals).
    scan_stale_after_seconds: dict[str, int] = field(
        default_factory=lambda: {"spn": 900, "duplicate_spn": 5400, "queue_snapshots": 300}
    )
    scan_stale_after_default_seconds: int = 3600
    # Queue snapshots are written every minute by the scheduled task.
    queue_snapshot_stale_after_seconds: int = 600

    for_: ForDurations = field(default_factory=ForDurations)

    # Each alert links to <runbook_url>#<alertname in lower case>: a section of docs/runbook.md.
    runbook_url: str = (
        "https://github.com/exchange-auth-exporter/exchange-auth-exporter/blob/main/docs/runbook.md"
    )

    dashboard_uid_prefix: str = "exchange-auth"
    dashboard_tags: tuple[str, ...] = ("exchange-auth", "kerberos", "exchange")
    dashboard_refresh: str = "1m"
    dashboard_time_from: str = "now-6h"

    @property
    def skew_warning_seconds(self) -> int:
        return self.kerberos_tolerance_seconds - self.skew_warning_margin_seconds

    def runbook(self, alertname: str) -> str:
        return f"{self.runbook_url}#{alertname.lower()}"


CONFIG = MixinConfig()
