"""The lab: real Samba AD DC and chronyd servers on loopback aliases, for tests and the demo.

from tests.lab import Lab

with Lab.start() as lab:          # or Lab.start(samba=False) for the NTP servers only
    lab.exporter_config()         # the exporter's config dict for this lab
    lab.dc, lab.skewed_dc, lab.dead_dc, lab.exchange_servers, lab.dns_server
    lab.exchange_directory        # Exchange servers, accounts, SPNs, duplicates in dc1's domain
    with lab.pause_ldap(): ...    # dc1's LDAP hangs (SIGSTOP) while Kerberos and DNS answer
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
from tests.lab.lab import (
    ADMIN_USER,
    DEFAULT_NETWORK,
    DOMAIN,
    NETBIOS_DOMAIN,
    REALM,
    SKEWED_CLOCK_OFFSET,
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

__all__ = [
    "ADMIN_USER",
    "AUTH_EXCHANGE_SERVER",
    "DEFAULT_NETWORK",
    "DOMAIN",
    "NETBIOS_DOMAIN",
    "REALM",
    "SKEWED_CLOCK_OFFSET",
    "Account",
    "DuplicateSpn",
    "ExchangeDirectory",
    "ExchangeServer",
    "Host",
    "Lab",
    "LabError",
    "LabPlan",
    "LdapPause",
    "ProcessRecord",
    "ReceiveConnector",
    "Role",
    "SambaDC",
    "address_plan",
    "exchange_directory",
    "lab_plan",
    "preflight",
]
