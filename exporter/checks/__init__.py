"""The check table: one row per check, in the order their metrics are exposed.

Adding a check: a module here with ``async def check_x(ctx, target, settings)``, a settings
model in ``config.py``, a ``SPEC`` row, and a line below.
"""

from __future__ import annotations

from typing import Any

from . import clock, kerberos
from .base import CheckSpec

CHECKS: tuple[CheckSpec[Any, Any], ...] = (clock.SPEC.erased(), kerberos.SPEC.erased())

__all__ = ["CHECKS"]
