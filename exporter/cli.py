"""Command line: Prometheus-style flags, then serve until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import resource
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from . import __version__
from .app import Runtime, make_app
from .config import ConfigError, load_file, parse_duration
from .diagnose import diagnose_main
from .log import setup_logging
from .shard import WHOLE, Shard
from .web_config import WebSecurity, load_web_config
from .web_listener import Listener, WebLimits

__all__ = ["main", "parse_listen_address"]

log = logging.getLogger("exporter")

DEFAULT_LISTEN = ":9817"


def parse_listen_address(value: str) -> tuple[str | None, int]:
    """``:9817`` (all interfaces), ``127.0.0.1:9817`` or ``[::1]:9817``."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise argparse.ArgumentTypeError(f"invalid listen address {value!r}: expected [host]:port")
    host = host.strip("[]")
    return (host or None), int(port_text)


def parse_shard(value: str) -> Shard:
    """``--inventory.shard=i/n``: this exporter's part of the inventory, i from 0 to n-1."""
    try:
        return Shard.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _flag_duration(value: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration {value!r} must be greater than zero")
    return seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exchange-auth-exporter",
        description="Prometheus exporter for the causes of Exchange server-to-server "
        "Kerberos failures (454 4.7.0 Temporary authentication failure). "
        "`exchange-auth-exporter diagnose --help` for a one-off report.",
    )
    parser.add_argument(
        "--config.file", dest="config_file", type=Path, default=Path("exchange-auth-exporter.yml")
    )
    parser.add_argument(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the configuration file and exit 0 (valid) or 1 (with the problems)",
    )
    parser.add_argument(
        "--web.listen-address",
        dest="listen",
        type=parse_listen_address,
        default=parse_listen_address(DEFAULT_LISTEN),
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        type=Path,
        default=None,
        help="TLS and basic authentication for every path, in the Prometheus exporter-toolkit "
        "format (docs/web-config.md); reloads with the configuration",
    )
    parser.add_argument(
        "--web.read-timeout",
        dest="read_timeout",
        type=_flag_duration,
        default=WebLimits.read_timeout,
        metavar="DURATION",
        help="a client gets this long for the TLS handshake and for each request's headers; "
        "idle connections are closed after it too (default 30s)",
    )
    parser.add_argument(
        "--web.max-connections",
        dest="max_connections",
        type=int,
        default=WebLimits.max_connections,
        help="connections open at once; more are closed at once (default 512)",
    )
    parser.add_argument(
        "--log.level", dest="log_level", choices=["debug", "info", "warn", "error"], default="info"
    )
    parser.add_argument(
        "--log.format", dest="log_format", choices=["logfmt", "json"], default="logfmt"
    )
    parser.add_argument(
        "--inventory.shard",
        dest="shard",
        type=parse_shard,
        default=WHOLE,
        metavar="I/N",
        help="probe only the servers whose name hashes to shard I of N (0-based, e.g. the "
        "StatefulSet pod ordinal); see docs/scale-out.md",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


async def _serve(
    runtime: Runtime, host: str | None, port: int, limits: WebLimits | None = None
) -> None:
    limits = limits or WebLimits()
    app = make_app(runtime)
    security = runtime.web_security
    if security is not None:
        security.install(app)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=5.0, **limits.runner_args()
    )
    await runner.setup()
    assert runner.server is not None
    listener = Listener(
        runner.server, host, port, security.ssl_context if security else lambda: None, limits
    )
    try:
        await listener.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info(
        "listening on %s://%s:%d with %d servers (shard %s)",
        "https" if security is not None and security.ssl_context() else "http",
        host or "*",
        port,
        len(runtime.inventory.servers),
        runtime.shard,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def on_sighup() -> None:
        # Keep a reference until done, or the task may be collected while it runs.
        task = loop.create_task(runtime.reload_logged())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        await listener.stop()
        await runner.cleanup()
        if security is not None:
            security.close()


def _raise_file_limit() -> None:
    # Every TCP probe holds a descriptor; the usual soft limit of 1024 is below what a few
    # hundred concurrent DC checks need, and the hard limit is there to be used (as Go does).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard)
            )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["diagnose"]:
        setup_logging("error", "logfmt")
        return diagnose_main(argv[1:])
    args = _parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    _raise_file_limit()
    if args.config_check:
        try:
            settings = load_file(args.config_file)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        count = len(settings.domain_controllers.static) + len(settings.exchange_servers.static)
        print(f"{args.config_file}: valid ({count} static servers)")
        if args.web_config_file is not None:
            try:
                web_config = load_web_config(args.web_config_file)
            except ConfigError as exc:
                print(exc, file=sys.stderr)
                return 1
            print(f"{args.web_config_file}: valid ({web_config.describe()})")
        return 0

    async def run() -> None:
        web_security = None
        if args.web_config_file is not None:
            web_security = WebSecurity.load(args.web_config_file)
        runtime = await Runtime.load(args.config_file, args.shard)
        runtime.web_security = web_security
        limits = WebLimits(read_timeout=args.read_timeout, max_connections=args.max_connections)
        host, port = args.listen
        await _serve(runtime, host, port, limits)

    try:
        asyncio.run(run())
    except ConfigError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
