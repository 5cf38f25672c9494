"""The one exception the lab raises for anything a person has to fix or look at."""

from __future__ import annotations


class LabError(RuntimeError):
    """The lab could not start, stop or clean up; the message says what to do."""
