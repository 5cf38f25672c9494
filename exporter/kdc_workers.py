"""One Kerberos worker process per domain controller (exporter/krb5_worker.py), kept between scrapes.

Each worker runs with a krb5.conf of its own, written here into a private folder: the realm's
only KDC is that DC, DNS is never asked (``dns_lookup_kdc``, ``dns_canonicalize_hostname``,
``rdns`` off), and ``kdc_timesync = 0`` so that a KDC whose clock is off by more than five
minutes is reported as skew instead of being silently corrected for (MIT's default adjusts to
the KDC's time, which Exchange does not). TCP is preferred (``udp_preference_limit = 1``): AD
tickets carry a PAC and rarely fit a UDP datagram; the Kerberos port check covers UDP.

Workers are plain subprocesses with a reader thread each, not asyncio transports: they outlive
one event loop (``diagnose`` and tests run several) and serve every scrape. The password goes
to the worker on its standard input only. A worker whose settings change (address,
principal, secret, encryption types) is replaced; one unused for :data:`IDLE_AFTER` seconds
(its DC left the inventory) is stopped; all are stopped at exit.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

__all__ = [
    "IDLE_AFTER",
    "KdcWorker",
    "WorkerSpec",
    "close_all",
    "krb5_conf",
    "worker_for",
]

log = logging.getLogger(__name__)

IDLE_AFTER = 900.0  # seconds without a request before a worker is stopped
_STDERR_LINES = 20  # at most this many lines of a worker's standard error reach the log


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker for one DC is started with; a change in any field replaces the worker."""

    domain_controller: str  # the DC's inventory name
    address: str
    port: int
    realm: str
    principal: str
    password: SecretStr | None = field(repr=False)
    keytab: Path | None
    encryption_types: tuple[str, ...]
    ticket_lifetime: float | None  # seconds asked for the TGT; None: the KDC's maximum
    threads: int

    def key(self) -> tuple[object, ...]:
        """Equal for equal settings, without holding the password itself."""
        secret = (
            hashlib.sha256(self.password.get_secret_value().encode()).hexdigest()
            if self.password is not None
            else None
        )
        return (
            self.domain_controller,
            self.address,
            self.port,
            self.realm,
            self.principal,
            secret,
            self.keytab,
            self.encryption_types,
            self.ticket_lifetime,
            self.threads,
        )


def _kdc_address(address: str, port: int) -> str:
    try:
        if ipaddress.ip_address(address).version == 6:
            return f"[{address}]:{port}"
    except ValueError:
        pass
    return f"{address}:{port}"


def krb5_conf(spec: WorkerSpec) -> str:
    """The worker's krb5.conf: one realm, one KDC, no DNS, no clock correction."""
    enctypes = " ".join(spec.encryption_types)
    lifetime = (
        f"\tticket_lifetime = {max(1, round(spec.ticket_lifetime))}s\n"
        if spec.ticket_lifetime is not None
        else ""
    )
    return (
        "[libdefaults]\n"
        f"\tdefault_realm = {spec.realm}\n"
        "\tdns_lookup_realm = false\n"
        "\tdns_lookup_kdc = false\n"
        "\tdns_canonicalize_hostname = false\n"
        "\trdns = false\n"
        "\tkdc_timesync = 0\n"
        "\tudp_preference_limit = 1\n"
        "\tforwardable = false\n"
        "\tproxiable = false\n"
        f"\tpermitted_enctypes = {enctypes}\n"
        f"\tdefault_tkt_enctypes = {enctypes}\n"
        f"\tdefault_tgs_enctypes = {enctypes}\n"
        f"{lifetime}"
        "\n"
        "[realms]\n"
        f"\t{spec.realm} = {{\n"
        f"\t\tkdc = {_kdc_address(spec.address, spec.port)}\n"
        "\t}\n"
    )


class WorkerGone(Exception):
    """The worker process ended (or could not start) before it answered."""


class KdcWorker:
    """A running ``python -m exporter.krb5_worker`` for one DC, and the answers it owes."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.key = spec.key()
        self.last_used = time.monotonic()
        # The latest credential state any answer reported (None until the first answer).
        self.credentials: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._pending: dict[int, concurrent.futures.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._closed = False
        self._folder = Path(tempfile.mkdtemp(prefix="exchange-auth-krb5-"))  # 0700
        conf = self._folder / "krb5.conf"
        conf.write_text(krb5_conf(spec))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
            "KRB5_CONFIG": str(conf),
            # Nothing on disk: no file cache, and no default keytab tried behind our back.
            "KRB5CCNAME": "MEMORY:exchange-auth-default",
            "KRB5_KTNAME": "FILE:/dev/null",
            "KRB5_CLIENT_KTNAME": f"FILE:{spec.keytab}" if spec.keytab else "FILE:/dev/null",
        }
        if "PYTHONPATH" in os.environ:
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "exporter.krb5_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                text=True,
                bufsize=1,
            )
        except OSError:
            shutil.rmtree(self._folder, ignore_errors=True)
            raise
        setup = {
            "principal": spec.principal,
            "password": spec.password.get_secret_value() if spec.password else None,
            "keytab": str(spec.keytab) if spec.keytab else None,
            "threads": spec.threads,
        }
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(json.dumps(setup) + "\n")
            self._process.stdin.flush()
        except OSError:
            pass  # it died at once; the reader reports it
        self._reader = threading.Thread(
            target=self._read, name=f"krb5-{spec.domain_controller}", daemon=True
        )
        self._reader.start()
        self._stderr = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr.start()

    @property
    def alive(self) -> bool:
        return not self._closed and self._process.poll() is None

    def request(
        self, spn: str, realm: str, deadline: float
    ) -> concurrent.futures.Future[dict[str, Any]]:
        """Ask for a ticket to ``spn``; ``deadline`` is ``time.monotonic()`` time."""
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        with self._lock:
            self.last_used = time.monotonic()
            if not self.alive:
                future.set_exception(WorkerGone("the Kerberos worker is not running"))
                return future
            self._next_id += 1
            number = self._next_id
            self._pending[number] = future
            line = json.dumps({"id": number, "spn": spn, "realm": realm, "deadline": deadline})
            try:
                assert self._process.stdin is not None
                self._process.stdin.write(line + "\n")
                self._process.stdin.flush()
            except (OSError, ValueError):
                self._pending.pop(number, None)
                future.set_exception(WorkerGone("the Kerberos worker stopped reading"))
        return future

    def forget(self, future: concurrent.futures.Future[dict[str, Any]]) -> None:
        """Drop a request whose answer nobody waits for any more."""
        with self._lock:
            for number, pending in list(self._pending.items()):
                if pending is future:
                    del self._pending[number]

    def _read(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        try:
            for line in stdout:
                try:
                    answer = json.loads(line)
                except ValueError:
                    log.warning(
                        "Kerberos worker for %s wrote a line that is not JSON",
                        self.spec.domain_controller,
                    )
                    continue
                if not isinstance(answer, dict):
                    continue
                with self._lock:
                    if isinstance(answer.get("credentials"), dict):
                        self.credentials = answer["credentials"]
                    future = self._pending.pop(answer.get("id"), None)  # type: ignore[arg-type]
                if future is not None:
                    # The scrape may have given up on it (cancelled) a moment ago.
                    with contextlib.suppress(concurrent.futures.InvalidStateError):
                        future.set_result(answer)
        except (OSError, ValueError):
            pass
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(WorkerGone("the Kerberos worker exited"))

    def _read_stderr(self) -> None:
        stderr = self._process.stderr
        assert stderr is not None
        shown = 0
        with contextlib.suppress(OSError, ValueError):
            for line in stderr:
                if shown < _STDERR_LINES and line.strip():
                    shown += 1
                    log.warning(
                        "Kerberos worker for %s: %s",
                        self.spec.domain_controller,
                        line.rstrip()[:500],
                    )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(OSError, ValueError):
            if self._process.stdin is not None:
                self._process.stdin.close()
        try:
            self._process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            self._process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5.0)
        self._reader.join(timeout=1.0)
        shutil.rmtree(self._folder, ignore_errors=True)


_WORKERS: dict[str, KdcWorker] = {}
_WORKERS_LOCK = threading.Lock()


def worker_for(spec: WorkerSpec) -> KdcWorker:
    """The running worker for ``spec``'s DC, started (or replaced) when needed. Blocking: a thread."""
    stale: list[KdcWorker] = []
    with _WORKERS_LOCK:
        now = time.monotonic()
        for name, idle in list(_WORKERS.items()):
            if name != spec.domain_controller and now - idle.last_used > IDLE_AFTER:
                stale.append(_WORKERS.pop(name))
        worker = _WORKERS.get(spec.domain_controller)
        if worker is None or worker.key != spec.key() or not worker.alive:
            if worker is not None:
                stale.append(worker)
            worker = _WORKERS[spec.domain_controller] = KdcWorker(spec)
            log.debug("started a Kerberos worker for %s", spec.domain_controller)
    for old in stale:
        old.close()
    return worker


def running_workers() -> Sequence[KdcWorker]:
    with _WORKERS_LOCK:
        return list(_WORKERS.values())


def close_all() -> None:
    with _WORKERS_LOCK:
        workers = list(_WORKERS.values())
        _WORKERS.clear()
    for worker in workers:
        worker.close()


atexit.register(close_all)
