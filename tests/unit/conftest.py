"""Hypothesis without per-example deadlines: a loaded CI machine is slow, not wrong."""

from hypothesis import settings

settings.register_profile("exchange-auth", deadline=None, print_blob=True)
settings.load_profile("exchange-auth")
