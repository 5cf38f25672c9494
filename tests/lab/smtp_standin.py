"""An Exchange 2016/2019 SMTP stand-in: Exchange's banner and EHLO, never a message accepted.

    python -m tests.lab.smtp_standin --name exch1.corp.example.test --address 127.0.10.21 \\
        --frontend-port 25 --hub-port 2525 --x-exps-port 2525 [--utc-offset -0600] \\
        [--banner "220 mail.corp.example.test ESMTP"] [--stdin-lifeline]

One process serves every port of one address, with asyncio streams. What it says:

* Banner: Exchange's default ``220 <fqdn> Microsoft ESMTP MAIL Service ready at <date>``,
  the date written as Exchange writes it (``Fri, 5 Aug 2016 16:24:41 -0700``: English names,
  day without a leading zero, the server's UTC offset) from this process's own clock, so
  libfaketime moves it. ``--banner`` replaces the whole line, as ``Set-ReceiveConnector
  -Banner`` does; then there is no date.
* EHLO: the keywords of Exchange's receive connectors (see :func:`ehlo_keywords`): the
  intra-organisation "Default <server>" connector on a hub port (2525), the "Default Frontend
  <server>" connector on a front-end port (25); ``X-ANONYMOUSTLS`` and ``X-EXPS GSSAPI NTLM``
  only where ExchangeServer authentication is on (``--x-exps-port``).
* QUIT: ``221 2.0.0 Service closing transmission channel``, then the connection closes.
* MAIL FROM: ``530 5.7.1 Client was not authenticated``; STARTTLS and AUTH are refused, so no
  session ever gets further. Unknown verbs: ``500 5.3.3 Unrecognized command '<verb>'``.

Only the standard library: the lab starts it with ``python -I <this file>``, which imports
nothing else of the project and so starts fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import re
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

MAX_SIZE = 37748736  # Exchange's default MaxMessageSize, 36 MB
IDLE_TIMEOUT = 300.0  # Exchange's ConnectionInactivityTimeout: 5 minutes
MAX_LINE = 4096
QUIT_REPLY = "221 2.0.0 Service closing transmission channel"

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_UTC_OFFSET = re.compile(r"^([+-])(\d\d)(\d\d)$")


def parse_utc_offset(text: str) -> datetime.timezone:
    """``+0000``, ``-0600``, ``+0530`` -> a fixed-offset zone; ValueError for anything else."""
    match = _UTC_OFFSET.match(text)
    if match is None or int(match[3]) >= 60 or int(match[2]) > 14:
        raise ValueError(f"UTC offset {text!r} is not [+-]HHMM, e.g. +0000 or -0600")
    minutes = int(match[2]) * 60 + int(match[3])
    return datetime.timezone(datetime.timedelta(minutes=-minutes if match[1] == "-" else minutes))


def banner_date(moment: datetime.datetime) -> str:
    """``moment`` (aware) as Exchange's banner writes it: ``Fri, 5 Aug 2016 16:24:41 -0700``.

    RFC 2822's date-time with the day of the month not zero-padded, names in English whatever
    the locale, and the numeric offset of the server's zone.
    """
    offset = moment.utcoffset()
    if offset is None:
        raise ValueError("banner_date needs an aware datetime")
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return (
        f"{_DAYS[moment.weekday()]}, {moment.day} {_MONTHS[moment.month - 1]} {moment.year} "
        f"{moment:%H:%M:%S} {sign}{hours:02d}{minutes:02d}"
    )


def default_banner(fqdn: str, moment: datetime.datetime) -> str:
    """Exchange's default greeting (without CRLF)."""
    return f"220 {fqdn} Microsoft ESMTP MAIL Service ready at {banner_date(moment)}"


def ehlo_keywords(*, frontend: bool, exchange_auth: bool) -> list[str]:
    """The EHLO keywords (after the hello line) of an Exchange 2016/2019 receive connector.

    ``frontend``: the "Default Frontend" connector on 25 (ends with SMTPUTF8), else the
    intra-organisation "Default" connector of the Transport service on 2525 (ends with XRDST).
    ``exchange_auth``: ExchangeServer authentication on, which adds ``X-ANONYMOUSTLS`` and
    ``X-EXPS GSSAPI NTLM`` in the places Exchange puts them.
    """
    keywords = [f"SIZE {MAX_SIZE}", "PIPELINING", "DSN", "ENHANCEDSTATUSCODES", "STARTTLS"]
    if exchange_auth:
        keywords.append("X-ANONYMOUSTLS")
    keywords.append("AUTH NTLM")
    if exchange_auth:
        keywords.append("X-EXPS GSSAPI NTLM")
    keywords += ["8BITMIME", "BINARYMIME", "CHUNKING", "SMTPUTF8" if frontend else "XRDST"]
    return keywords


def ehlo_reply(fqdn: str, client_address: str, keywords: Sequence[str]) -> list[str]:
    """The EHLO reply lines (without CRLF): ``250-<fqdn> Hello [<ip>]``, ..., ``250 <last>``."""
    texts = [f"{fqdn} Hello [{client_address}]", *keywords]
    return [f"250{'-' if i < len(texts) - 1 else ' '}{text}" for i, text in enumerate(texts)]


@dataclass(frozen=True)
class Listener:
    port: int
    frontend: bool
    exchange_auth: bool

    @property
    def keywords(self) -> list[str]:
        return ehlo_keywords(frontend=self.frontend, exchange_auth=self.exchange_auth)


class StandIn:
    def __init__(
        self,
        fqdn: str,
        address: str,
        listeners: Sequence[Listener],
        *,
        zone: datetime.timezone,
        banner: str | None = None,
    ) -> None:
        self.fqdn = fqdn
        self.address = address
        self.listeners = list(listeners)
        self.zone = zone
        self.banner = banner

    def greeting(self) -> str:
        if self.banner is not None:
            return self.banner
        # time.time(): CLOCK_REALTIME, which libfaketime shifts.
        return default_banner(self.fqdn, datetime.datetime.fromtimestamp(time.time(), self.zone))

    async def serve(self, stop: asyncio.Event) -> None:
        servers = []
        try:
            for listener in self.listeners:
                servers.append(
                    await asyncio.start_server(
                        functools.partial(self.session, listener=listener),
                        host=self.address,
                        port=listener.port,
                        reuse_address=True,
                        limit=MAX_LINE,
                    )
                )
            ports = ", ".join(str(listener.port) for listener in self.listeners)
            _log(f"{self.fqdn} listening on {self.address} port(s) {ports}")
            await stop.wait()
        finally:
            for server in servers:
                server.close()
            for server in servers:
                # Connections still open are aborted: close_clients() arrives only in 3.13.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 0.1)

    async def session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener: Listener
    ) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        client = str(peer[0])
        where = f"{client}:{peer[1]} -> :{listener.port}"
        greeted = False
        try:
            await self._send(writer, [self.greeting()])
            while True:
                try:
                    line = await asyncio.wait_for(reader.readuntil(b"\n"), IDLE_TIMEOUT)
                except TimeoutError:
                    await self._send(writer, ["421 4.4.1 Connection timed out"])
                    return
                except asyncio.LimitOverrunError:
                    await self._send(writer, ["500 5.3.3 Unrecognized command"])
                    return
                except asyncio.IncompleteReadError:
                    return  # the client closed (or sent half a line and closed)
                command = line.rstrip(b"\r\n").decode("ascii", "replace")
                verb, _, argument = command.strip().partition(" ")
                verb = verb.upper()
                if verb == "QUIT":
                    await self._send(writer, [QUIT_REPLY])
                    return
                if verb == "EHLO":
                    if argument.strip():
                        greeted = True
                        reply = ehlo_reply(self.fqdn, client, listener.keywords)
                    else:
                        reply = ["501 5.5.4 Invalid domain name"]
                elif verb == "HELO":
                    greeted = bool(argument.strip())
                    reply = [
                        f"250 {self.fqdn} Hello [{client}]"
                        if greeted
                        else "501 5.5.4 Invalid domain name"
                    ]
                elif verb == "NOOP":
                    reply = ["250 2.0.0 OK"]
                elif verb == "RSET":
                    reply = ["250 2.0.0 Resetting"]
                elif verb == "HELP":
                    reply = [
                        "214-This server supports the following commands:",
                        "214 HELO EHLO STARTTLS RCPT DATA RSET MAIL QUIT HELP AUTH BDAT",
                    ]
                elif not greeted and verb in ("MAIL", "RCPT", "DATA", "BDAT", "STARTTLS", "AUTH"):
                    reply = ["503 5.5.2 Send hello first"]
                elif verb == "MAIL":
                    reply = ["530 5.7.1 Client was not authenticated"]
                elif verb == "RCPT":
                    reply = ["503 5.5.2 Need mail command"]
                elif verb in ("DATA", "BDAT"):
                    reply = ["503 5.5.2 Need rcpt command"]
                elif verb in ("STARTTLS", "X-ANONYMOUSTLS"):
                    reply = ["454 4.7.0 TLS not available due to local problem"]
                elif verb in ("AUTH", "X-EXPS"):
                    reply = ["504 5.7.4 Unrecognized authentication type"]
                else:
                    reply = [f"500 5.3.3 Unrecognized command '{command.strip().split(' ')[0]}'"]
                await self._send(writer, reply)
        except (ConnectionError, OSError) as exc:
            _log(f"{where}: {exc}")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, lines: Sequence[str]) -> None:
        writer.write("".join(f"{line}\r\n" for line in lines).encode("ascii", "replace"))
        await writer.drain()


def _log(message: str) -> None:
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%dT%H:%M:%S.%fZ} {message}", flush=True)


async def _main(stand_in: StandIn, *, stdin_lifeline: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # A normal exit, so libfaketime's exit handler removes its /dev/shm files.
        loop.add_signal_handler(signum, stop.set)
    if stdin_lifeline:
        # Our stdin is a pipe from the lab's owner, which never writes: EOF means it is gone.
        async def watch_stdin() -> None:
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer
            )
            while await reader.read(4096):
                pass
            _log("stdin closed: the lab's owner is gone, stopping")
            stop.set()

        watcher = asyncio.create_task(watch_stdin())
    await stand_in.serve(stop)
    if stdin_lifeline:
        watcher.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.lab.smtp_standin", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--name", required=True, help="the server's FQDN (banner and EHLO)")
    parser.add_argument("--address", required=True, help="IPv4 address to listen on")
    parser.add_argument(
        "--frontend-port",
        type=int,
        action="append",
        default=[],
        help="a port of the Default Frontend connector (e.g. 25); repeatable",
    )
    parser.add_argument(
        "--hub-port",
        type=int,
        action="append",
        default=[],
        help="a port of the intra-organisation Default connector (e.g. 2525); repeatable",
    )
    parser.add_argument(
        "--x-exps-port",
        type=int,
        action="append",
        default=[],
        help="a port whose connector has ExchangeServer auth (X-EXPS GSSAPI NTLM); repeatable",
    )
    parser.add_argument(
        "--utc-offset", default="+0000", help="the zone of the banner date (default %(default)s)"
    )
    parser.add_argument(
        "--banner", help="a custom greeting line replacing the default, e.g. '220 mail ESMTP'"
    )
    parser.add_argument(
        "--stdin-lifeline", action="store_true", help="exit when stdin reaches end of file"
    )
    args = parser.parse_args(argv)
    try:
        zone = parse_utc_offset(args.utc_offset)
    except ValueError as exc:
        parser.error(str(exc))
    if args.banner is not None and not args.banner.startswith("220 "):
        parser.error("--banner must start with '220 ', as Exchange's -Banner must")
    unknown = set(args.x_exps_port) - set(args.frontend_port) - set(args.hub_port)
    if unknown:
        parser.error(f"--x-exps-port {sorted(unknown)} is not a --frontend-port or --hub-port")
    listeners = [
        Listener(port, frontend, port in args.x_exps_port)
        for ports, frontend in ((args.frontend_port, True), (args.hub_port, False))
        for port in ports
    ]
    if not listeners:
        parser.error("give at least one --frontend-port or --hub-port")
    stand_in = StandIn(args.name, args.address, listeners, zone=zone, banner=args.banner)
    try:
        asyncio.run(_main(stand_in, stdin_lifeline=args.stdin_lifeline))
    except OSError as exc:
        _log(f"cannot serve: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
