"""The check table: one row per check, in the order their metrics are exposed.

Adding a check: a module here with ``async def check_x(ctx, target, settings)``, a settings
model in ``config.py``, a ``SPEC`` row, and a line below.
"""

from __future__ import annotations

from typing import Any

from ..background import Scan
from . import (
    clock,
    kerberos,
    ldap_clock,
    protocol_logs,
    queue_snapshots,
    replication,
    service_tickets,
    smtp,
    spn,
)
from .base import CheckSpec

CHECKS: tuple[CheckSpec[Any, Any], ...] = (
    clock.SPEC.erased(),
    kerberos.SPEC.erased(),
    ldap_clock.SPEC.erased(),
    smtp.SPEC.erased(),
    service_tickets.SPEC.erased(),
)

# Background scans: their results are cached and reported by every scrape.
SCANS: tuple[Scan[Any], ...] = (
    spn.SERVER_SPN_SCAN,
    spn.DUPLICATE_SCAN,
    queue_snapshots.QUEUE_SNAPSHOT_SCAN,
    protocol_logs.PROTOCOL_LOG_SCAN,
    replication.REPLICATION_SCAN,
)

__all__ = ["CHECKS", "SCANS"]
