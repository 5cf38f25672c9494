"""The lab: real Samba AD DC and chronyd servers on loopback aliases, for tests and the demo.

from tests.lab import Lab

with Lab.start() as lab:          # or Lab.start(samba=False) for the NTP servers only
    lab.exporter_config()         # the exporter's config dict for this lab
    lab.dc, lab.skewed_dc, lab.dead_dc, lab.exchange_servers, lab.dns_server
"""

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
    Role,
    address_plan,
    lab_plan,
    preflight,
)
from tests.lab.procs import ProcessRecord
from tests.lab.samba import SambaDC

__all__ = [
    "ADMIN_USER",
    "DEFAULT_NETWORK",
    "DOMAIN",
    "NETBIOS_DOMAIN",
    "REALM",
    "SKEWED_CLOCK_OFFSET",
    "Host",
    "Lab",
    "LabError",
    "LabPlan",
    "ProcessRecord",
    "Role",
    "SambaDC",
    "address_plan",
    "lab_plan",
    "preflight",
]
