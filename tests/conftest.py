"""Shared fixtures: the real lab (tests/lab), started at most once per test session.

``lab`` is the full lab (Samba AD DC dc1 and its replica dc3, replicating every 5 s; the skewed
KDC, the dead DC, NTP servers, the Exchange SMTP stand-ins); ``ntp_lab`` only needs the NTP and SMTP servers (and the dead DC; none of them
costs much) and reuses whatever lab is running, so NTP-only and SMTP-only tests never pay for
Samba. A session that first needs ``ntp_lab`` and later ``lab`` adds the Samba DCs to the
running lab. Tests marked ``@pytest.mark.lab`` get the full lab without naming the fixture.

``hostile_smtp_peer`` starts misbehaving SMTP servers (tests/lab/hostile_smtp.py) inside the
test process, each stopped when the test ends; it needs no lab.

When the lab cannot start (not root, a package missing, a port taken) the tests that need it
FAIL with the reason: a lab test that silently skips would count as a pass.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest

from tests.lab import DEFAULT_NETWORK, HostileMode, HostileSmtpPeer, Lab, LabError


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "lab: needs the real lab (Samba AD DC and chronyd on 127.0.10.x); it is started once "
        "per session, as root",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that use the lab fixtures are lab tests too, so `-m "not lab"` leaves them out.
    for item in items:
        if {"lab", "ntp_lab"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)


class _SessionLab:
    def __init__(self) -> None:
        self.lab: Lab | None = None
        self.error: str | None = None
        self._sigterm_installed = False

    def get(self, *, samba: bool) -> Lab:
        if self.error is None:
            try:
                if self.lab is None:
                    self._stop_on_sigterm()
                    self.lab = Lab.start(
                        # Another network lets a second test run go on beside this one.
                        network=os.environ.get("EXCHANGE_AUTH_LAB_NETWORK", DEFAULT_NETWORK),
                        samba=samba,
                        skewed_dc=samba,
                        replica_dc=samba,
                        dead_dc=True,
                        ntp=True,
                        smtp=True,
                    )
                else:
                    self.lab.ensure(
                        samba=samba,
                        skewed_dc=samba,
                        replica_dc=samba,
                        dead_dc=True,
                        ntp=True,
                        smtp=True,
                    )
            except LabError as exc:
                # Kept, so every later test fails at once instead of waiting for the same timeout.
                self.error = f"the lab could not start: {exc}"
        if self.error is not None or self.lab is None:
            pytest.fail(self.error or "the lab could not start", pytrace=False)
        return self.lab

    def _stop_on_sigterm(self) -> None:
        # SIGTERM would end pytest without fixture teardown or atexit; as KeyboardInterrupt,
        # pytest stops the session cleanly and the lab is torn down.
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def interrupt(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, interrupt)
        self._sigterm_installed = True

    def stop(self) -> None:
        if self._sigterm_installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if self.lab is not None:
            self.lab.stop()


@pytest.fixture(scope="session")
def _session_lab() -> Iterator[_SessionLab]:
    holder = _SessionLab()
    yield holder
    holder.stop()


@pytest.fixture(scope="session")
def lab(_session_lab: _SessionLab) -> Lab:
    """The full lab: Samba AD DC on dc1 and its replica dc3 (both replicating every 5 s), Samba
    KDC on dc2 (+420 s), dead dc9, NTP on dc1, dc2 (+420 s), dc3, exch1 and exch2 (+420 s), SMTP
    on exch1, exch2 (+420 s) and exch3."""
    return _session_lab.get(samba=True)


@pytest.fixture(scope="session")
def ntp_lab(_session_lab: _SessionLab) -> Lab:
    """A lab with at least the NTP and SMTP servers and dc9 running (the full lab if it is up)."""
    return _session_lab.get(samba=False)


@pytest.fixture(autouse=True)
def _lab_for_marked_tests(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("lab") is not None:
        request.getfixturevalue("lab")


@pytest.fixture
def hostile_smtp_peer() -> Iterator[Callable[..., HostileSmtpPeer]]:
    """``start(mode, address="127.0.0.1", port=0, **options)`` -> a running HostileSmtpPeer.

    Every peer started through it is stopped when the test ends.
    """
    peers: list[HostileSmtpPeer] = []

    def start(
        mode: HostileMode, address: str = "127.0.0.1", port: int = 0, **options: Any
    ) -> HostileSmtpPeer:
        peer = HostileSmtpPeer(mode, address, port, **options)
        peers.append(peer)
        return peer.start()

    yield start
    for peer in reversed(peers):
        peer.stop()
