"""The lab: real Samba AD DC, chronyd and SMTP servers on loopback aliases, for tests and the demo.

from tests.lab import Lab

with Lab.start() as lab:          # or Lab.start(samba=False) for the NTP and SMTP servers only
    lab.exporter_config()         # the exporter's config dict for this lab
    lab.dc, lab.skewed_dc, lab.dead_dc, lab.exchange_servers, lab.dns_server
    lab.smtp_servers              # Exchange SMTP stand-ins exch1..3 on 25 and 2525
    lab.exchange_directory        # Exchange servers, accounts, SPNs, duplicates in dc1's domain
    with lab.pause_ldap(): ...    # dc1's LDAP hangs (SIGSTOP) while Kerberos and DNS answer

with Lab.start(replica_dc=True) as lab:   # + dc3, a replica of dc1 (both pull every 5 s)
    lab.replica_dc, lab.domain_controllers   # dc3 is listed, and in exporter_config()
    lab.replication(lab.dc)       # samba-tool drs showrepl --json's repsFrom of dc1
    lab.wait_replicated()         # both have pulled everything from each other
    with lab.samba_stopped(lab.replica_dc): ...  # or stop_samba(host) / start_samba(host)
    lab.samba_tool(lab.replica_dc, "drs", "showrepl", ...)  # as that DC, seeing its names
"""

from tests.lab.directory import (
    AUTH_EXCHANGE_SERVER,
    Account,
    DuplicateSpn,
    ExchangeDirectory,
    ExchangeServer,
    ReceiveConnector,
    exchange_directory,
)
from tests.lab.errors import LabError
from tests.lab.hostile_smtp import HOSTILE_MODES, HostileMode, HostileSmtpPeer
from tests.lab.lab import (
    ADMIN_USER,
    CUSTOM_SMTP_BANNER,
    DEFAULT_NETWORK,
    DOMAIN,
    NETBIOS_DOMAIN,
    REALM,
    SKEWED_CLOCK_OFFSET,
    SKEWED_SMTP_UTC_OFFSET,
    Host,
    Lab,
    LabPlan,
    LdapPause,
    Role,
    address_plan,
    lab_plan,
    preflight,
)
from tests.lab.procs import ProcessRecord
from tests.lab.samba import SambaDC
from tests.lab.smtp import SMTP_FRONTEND_PORT, SMTP_HUB_PORT, SmtpServer

__all__ = [
    "ADMIN_USER",
    "AUTH_EXCHANGE_SERVER",
    "CUSTOM_SMTP_BANNER",
    "DEFAULT_NETWORK",
    "DOMAIN",
    "HOSTILE_MODES",
    "NETBIOS_DOMAIN",
    "REALM",
    "SKEWED_CLOCK_OFFSET",
    "SKEWED_SMTP_UTC_OFFSET",
    "SMTP_FRONTEND_PORT",
    "SMTP_HUB_PORT",
    "Account",
    "DuplicateSpn",
    "ExchangeDirectory",
    "ExchangeServer",
    "Host",
    "HostileMode",
    "HostileSmtpPeer",
    "Lab",
    "LabError",
    "LabPlan",
    "LdapPause",
    "ProcessRecord",
    "ReceiveConnector",
    "Role",
    "SambaDC",
    "SmtpServer",
    "address_plan",
    "exchange_directory",
    "lab_plan",
    "preflight",
]
