"""chronyd as an NTP server on one loopback address, optionally with a skewed clock."""

from __future__ import annotations

from pathlib import Path

from tests.lab import faketime
from tests.lab.net import ntp_answers
from tests.lab.procs import ManagedProcess, wait_until


def chrony_conf(address: str, directory: Path) -> str:
    return "\n".join(
        [
            f"bindaddress {address}",
            "port 123",
            # Serve our own clock as a stratum 8 source: there is no upstream to follow.
            "local stratum 8",
            "allow 127.0.0.0/8",
            "cmdport 0",
            # Without this every instance wants /run/chrony/chronyd.sock, one socket for all.
            "bindcmdaddress /",
            f"pidfile {directory / 'chronyd.pid'}",
            f"driftfile {directory / 'chronyd.drift'}",
            "",
        ]
    )


def spawn_chronyd(
    name: str, address: str, directory: Path, *, clock_offset: int = 0
) -> ManagedProcess:
    """Start chronyd serving NTP on address:123 with a clock ``clock_offset`` seconds ahead."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "chrony.conf"
    conf.write_text(chrony_conf(address, directory))

    return ManagedProcess(
        f"chronyd-{name}",
        # -x: never touch the host clock. -4: no [::]:123 socket, which every instance would
        # want. -u root: the default drop to _chrony cannot write the drift and pid files in
        # our root-owned folder ("Could not open ...drift.tmp : Permission denied").
        ["chronyd", "-4", "-x", "-d", "-u", "root", "-f", str(conf)],
        log_path=directory / "chronyd.log",
        env=faketime.environment(clock_offset),
    )


def wait_for_chronyd(process: ManagedProcess, address: str, *, timeout: float = 10.0) -> None:
    """Poll with real NTP client packets until chronyd answers on address:123."""
    wait_until(
        lambda: ntp_answers(address, timeout=0.2),
        timeout=timeout,
        what=f"{process.name} on {address}:123",
        interval=0.05,
        abort=process.exit_reason,
    )
