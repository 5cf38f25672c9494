"""The lab's Exchange SMTP stand-ins: what each one is planned to say, and starting them.

The server itself is :mod:`tests.lab.smtp_standin` (standard library only), one process per
Exchange address serving its front-end port (25) and its intra-organisation port (2525), run
under libfaketime when its clock is planned ahead.

This module imports :mod:`tests.lab.smtp_standin` only inside the functions that need it, so
that ``python -m tests.lab.smtp_standin`` (which imports the package first) does not find the
module it is about to run already imported.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from tests.lab import faketime
from tests.lab.net import smtp_banner
from tests.lab.procs import ManagedProcess, wait_until

SMTP_FRONTEND_PORT = 25  # "Default Frontend <server>": clients and the Internet
SMTP_HUB_PORT = 2525  # "Default <server>": the Transport service, intra-organisation mail
SMTP_STANDIN = Path(__file__).with_name("smtp_standin.py")


@dataclass(frozen=True)
class SmtpServer:
    """An Exchange server as its SMTP stand-in presents it.

    ``clock_offset``: seconds its process's clock is ahead of the true clock (libfaketime), so
    its banner date too. ``utc_offset``: the zone its banner writes the date in. A
    ``custom_banner`` (the whole 220 line) replaces Exchange's default greeting and its date.
    ``x_exps_ports``: the ports whose connector has ExchangeServer authentication on, so whose
    EHLO offers ``X-EXPS GSSAPI NTLM`` (and ``X-ANONYMOUSTLS``). ``serves_ntp``: it is also in
    :attr:`Lab.exchange_servers` and :attr:`Lab.hosts`, with chronyd on the same address.
    """

    name: str
    address: str
    clock_offset: int = 0
    utc_offset: str = "+0000"
    custom_banner: str | None = None
    x_exps_ports: tuple[int, ...] = (SMTP_HUB_PORT,)
    serves_ntp: bool = False
    frontend_port: int = SMTP_FRONTEND_PORT
    hub_port: int = SMTP_HUB_PORT

    @property
    def short_name(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def ports(self) -> tuple[int, int]:
        return (self.frontend_port, self.hub_port)

    @property
    def banner_clock_offset(self) -> int | None:
        """What a banner reading should find: the clock offset, or None for a custom banner."""
        return None if self.custom_banner is not None else self.clock_offset

    def x_exps(self, port: int) -> bool:
        """True when EHLO on ``port`` offers X-EXPS GSSAPI NTLM."""
        self._check_port(port)
        return port in self.x_exps_ports

    def ehlo_keywords(self, port: int) -> list[str]:
        """The EHLO keywords on ``port``, in order, without the hello line."""
        from tests.lab.smtp_standin import ehlo_keywords

        self._check_port(port)
        return ehlo_keywords(
            frontend=port == self.frontend_port, exchange_auth=port in self.x_exps_ports
        )

    def ehlo_reply(self, port: int, client_address: str | None = None) -> list[str]:
        """The whole EHLO reply on ``port``, ``250-<name> Hello [<client>]`` to ``250 <last>``.

        ``client_address`` defaults to the server's own address: a client on this machine
        connects from it, since the kernel takes the /32 alias on ``lo`` as the source.
        """
        from tests.lab.smtp_standin import ehlo_reply

        return ehlo_reply(self.name, client_address or self.address, self.ehlo_keywords(port))

    @property
    def static_entry(self) -> dict[str, str]:
        """This server as an entry of the exporter's ``exchange_servers.static`` list."""
        return {"name": self.name, "address": self.address}

    def argv(self) -> list[str]:
        """The stand-in's command line (``-I``: nothing of the project is imported)."""
        argv = [
            sys.executable,
            "-I",
            str(SMTP_STANDIN),
            f"--name={self.name}",
            f"--address={self.address}",
            f"--frontend-port={self.frontend_port}",
            f"--hub-port={self.hub_port}",
            f"--utc-offset={self.utc_offset}",
            "--stdin-lifeline",
        ]
        argv += [f"--x-exps-port={port}" for port in self.x_exps_ports]
        if self.custom_banner is not None:
            argv.append(f"--banner={self.custom_banner}")
        return argv

    def _check_port(self, port: int) -> None:
        if port not in self.ports:
            raise ValueError(f"{self.name} serves SMTP on {self.ports}, not on {port}")


def spawn_smtp_standin(server: SmtpServer, directory: Path) -> ManagedProcess:
    """Start the stand-in for ``server``; it dies with us (its stdin is a pipe from us)."""
    directory.mkdir(parents=True, exist_ok=True)
    return ManagedProcess(
        f"smtp-{server.short_name}",
        server.argv(),
        log_path=directory / "smtp.log",
        env=faketime.environment(server.clock_offset),
        stdin_lifeline=True,
    )


def wait_for_smtp_standin(
    process: ManagedProcess, server: SmtpServer, *, timeout: float = 10.0
) -> None:
    """Poll until a 220 greeting comes on every port of ``server``."""
    pending = list(server.ports)

    def greeted() -> bool:
        while pending:
            if smtp_banner(server.address, pending[0], timeout=0.5) is None:
                return False
            pending.pop(0)
        return True

    wait_until(
        greeted,
        timeout=timeout,
        what=f"{process.name} on {server.address}:{'/'.join(map(str, server.ports))}",
        interval=0.02,
        abort=process.exit_reason,
    )
