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

Logging in costs a bad-password attempt when the secret is wrong, and AD locks the account
(the exporter's LDAP bind account too) after a few. So the workers of one secret (principal
and password hash, or keytab) share one :class:`CredentialGate`: a worker without a usable TGT
logs in only with its permission. One worker tries first; the others wait until it has
succeeded. After the KDC refuses the secret (wrong or expired password, unknown, disabled or
locked account), no worker tries it again for :data:`CREDENTIAL_RETRY_AFTER` seconds or until
the secret changes, and every DC's requests are answered with that refusal without asking any
KDC.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import hashlib
import ipaddress
import json
import logging
import math
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

from .protocols.krb5_errors import CREDENTIAL_ERRORS, CREDENTIAL_RETRY_AFTER, RENEW_AT_REMAINING

__all__ = [
    "IDLE_AFTER",
    "LOGIN_LEASE",
    "CredentialGate",
    "KdcWorker",
    "WorkerSpec",
    "close_all",
    "krb5_conf",
    "worker_for",
]

log = logging.getLogger(__name__)

IDLE_AFTER = 900.0  # seconds without a request before a worker is stopped
_STDERR_LINES = 20  # at most this many lines of a worker's standard error reach the log
# How long one worker's login may take before another worker of the same secret may try: a KDC
# that does not answer must not hold every other DC's requests until the scrape's deadline (5 s
# by default). A KDC answers an AS-REQ in milliseconds; only one slower than this to refuse a
# wrong password lets a second DC's KDC count a second bad attempt.
LOGIN_LEASE = 2.0


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
    request_timeout: float | None = None  # seconds MIT waits for a KDC (krb5.conf), at least 1

    def credential_key(self) -> tuple[object, ...]:
        """Equal for the same account and secret, whichever DC; holds a hash, not the password."""
        secret = (
            hashlib.sha256(self.password.get_secret_value().encode()).hexdigest()
            if self.password is not None
            else None
        )
        return (self.realm, self.principal, secret, self.keytab)

    def key(self) -> tuple[object, ...]:
        """Equal for equal settings, without holding the password itself."""
        secret = self.credential_key()[2]
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
            self.request_timeout,
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
    # MIT 1.19+: the most a KDC exchange may take, so that a KDC dropping packets frees the
    # worker's thread by the check's deadline instead of after MIT's own retries.
    request_timeout = (
        f"\trequest_timeout = {max(1, math.ceil(spec.request_timeout))}s\n"
        if spec.request_timeout is not None
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
        f"{request_timeout}"
        "\n"
        "[realms]\n"
        f"\t{spec.realm} = {{\n"
        f"\t\tkdc = {_kdc_address(spec.address, spec.port)}\n"
        "\t}\n"
    )


class WorkerGone(Exception):
    """The worker process ended (or could not start) before it answered."""


@dataclass(frozen=True)
class _Request:
    worker: KdcWorker
    spn: str
    realm: str
    deadline: float  # monotonic
    future: concurrent.futures.Future[dict[str, Any]]


class CredentialGate:
    """When the workers of one secret may log in (AS-REQ); thread-safe.

    ``verified``: the last login with this secret succeeded. A worker whose TGT is still valid
    never waits (it renews when no other worker is logging in); one without a TGT logs in when
    no other worker is trying (or when the secret is verified), else its requests wait for the
    outcome:
    sent on success, answered with the refusal on a refusal, re-admitted on any other failure
    (that DC's KDC unreachable or skewed says nothing about the secret) or after
    :data:`LOGIN_LEASE`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.verified = False
        self.refusal: dict[str, Any] | None = None  # the refused login's credential state
        self.refused_by = ""  # the DC whose KDC refused it
        self.retry_at = 0.0  # monotonic: no login before
        self._holder: KdcWorker | None = None
        self._lease_until = 0.0
        self._waiting: list[_Request] = []
        self._timer: threading.Timer | None = None

    def _refused(self, now: float) -> bool:
        return self.refusal is not None and now < self.retry_at

    def _admit(self, request: _Request, now: float) -> str:
        """``refused``, ``wait``, ``login`` or ``no_login`` (use the TGT held); under the lock."""
        if self._refused(now):
            return "refused"
        valid, due = request.worker.tgt_state()
        if valid and not due:
            # The worker logs in only if the KDC calls its TGT expired (Samba does so for one
            # with under about two minutes left): allowed once this secret has been accepted.
            return "login" if self.verified else "no_login"
        holder = self._holder
        if (
            holder is None
            or holder is request.worker
            or now >= self._lease_until
            or not holder.alive
        ):
            if holder is not request.worker:
                self._holder = request.worker
                self._lease_until = now + LOGIN_LEASE
            return "login"
        if valid:
            return "no_login"  # renew later, when nobody else is trying
        return "login" if self.verified else "wait"

    def submit(self, request: _Request) -> None:
        with self._lock:
            decision = self._admit(request, time.monotonic())
            if decision == "wait":
                self._waiting.append(request)
                self._arm_timer()
        self._act(request, decision)

    def _act(self, request: _Request, decision: str) -> None:
        if decision == "refused":
            request.worker.answer_refused(request.future, self)
        elif decision != "wait":
            request.worker.send(request, login=decision == "login")

    def _arm_timer(self) -> None:
        if self._timer is not None:
            return
        delay = max(0.05, self._lease_until - time.monotonic())
        self._timer = threading.Timer(delay, self._lease_ended)
        self._timer.daemon = True
        self._timer.start()

    def _lease_ended(self) -> None:
        with self._lock:
            self._timer = None
        self._settle()

    def report(self, worker: KdcWorker, answer: dict[str, Any]) -> None:
        """A worker's answer: what it says about the secret, and the end of its turn."""
        state = answer.get("credentials")
        if not isinstance(state, dict):
            return
        tried = answer.get("login_tried") is True
        with self._lock:
            if tried and state.get("ok") is True:
                self.verified = True
                self.refusal = None
            elif tried and state.get("code") in CREDENTIAL_ERRORS:
                self.verified = False
                self.refusal = dict(state)
                self.refused_by = worker.spec.domain_controller
                self.retry_at = time.monotonic() + CREDENTIAL_RETRY_AFTER
                log.warning(
                    "the KDC of %s refused the exporter's credentials for %s (%s); no worker "
                    "logs in with them again for %d minutes or until they change",
                    self.refused_by,
                    worker.spec.principal,
                    state.get("reason"),
                    CREDENTIAL_RETRY_AFTER // 60,
                )
            if self._holder is worker:
                self._holder = None
        self._settle()

    def release(self, worker: KdcWorker) -> None:
        """``worker`` is gone: its turn ends."""
        with self._lock:
            if self._holder is worker:
                self._holder = None
            gone = [r for r in self._waiting if r.worker is worker]
            self._waiting = [r for r in self._waiting if r.worker is not worker]
        for request in gone:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                request.future.set_exception(WorkerGone("the Kerberos worker exited"))
        self._settle()

    def forget(self, future: concurrent.futures.Future[dict[str, Any]]) -> None:
        with self._lock:
            self._waiting = [r for r in self._waiting if r.future is not future]

    def _settle(self) -> None:
        actions = []
        with self._lock:
            now = time.monotonic()
            waiting, self._waiting = self._waiting, []
            for request in waiting:
                if request.future.done() or now >= request.deadline:
                    continue  # the scrape gave up on it
                decision = self._admit(request, now)
                if decision == "wait":
                    self._waiting.append(request)
                else:
                    actions.append((request, decision))
            if self._waiting:
                self._arm_timer()
        for request, decision in actions:
            self._act(request, decision)


class KdcWorker:
    """A running ``python -m exporter.krb5_worker`` for one DC, and the answers it owes."""

    def __init__(self, spec: WorkerSpec, gate: CredentialGate | None = None) -> None:
        self.spec = spec
        self.key = spec.key()
        self.gate = gate if gate is not None else CredentialGate()
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

    def tgt_state(self) -> tuple[bool, bool]:
        """(the worker holds a valid TGT, its renewal is due), from its last answer."""
        state = self.credentials
        if not state or state.get("ok") is not True:
            return False, True
        acquired, expires = state.get("acquired"), state.get("expires")
        if not isinstance(acquired, int | float) or not isinstance(expires, int | float):
            return False, True
        now = time.time()
        renew_at = acquired + (expires - acquired) * (1 - RENEW_AT_REMAINING)
        return now < expires - 1.0, now >= renew_at

    def request(
        self, spn: str, realm: str, deadline: float
    ) -> concurrent.futures.Future[dict[str, Any]]:
        """Ask for a ticket to ``spn``; ``deadline`` is ``time.monotonic()`` time. The request
        may wait for another worker's login with the same secret (:class:`CredentialGate`)."""
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        with self._lock:
            self.last_used = time.monotonic()
            if not self.alive:
                future.set_exception(WorkerGone("the Kerberos worker is not running"))
                return future
        self.gate.submit(_Request(self, spn, realm, deadline, future))
        return future

    def answer_refused(
        self, future: concurrent.futures.Future[dict[str, Any]], gate: CredentialGate
    ) -> None:
        """Answer without asking the KDC: the secret was refused and waits out its backoff."""
        refusal = dict(gate.refusal or {})
        minutes = max(1, math.ceil((gate.retry_at - time.monotonic()) / 60))
        with self._lock:
            self.credentials = refusal
        answer = {
            "id": None,
            "ok": False,
            "phase": "tgt",
            "duration": 0.0,
            "reason": refusal.get("reason") or "preauth_failed",
            "code": refusal.get("code"),
            "detail": (
                f"not asked: the KDC of {gate.refused_by} refused the exporter's credentials "
                f"({refusal.get('detail') or 'no detail'}); tried again in {minutes} min or when "
                "they change"
            ),
        }
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            future.set_result(answer)

    def send(self, request: _Request, *, login: bool) -> None:
        """Write ``request`` to the worker; ``login``: it may log in first if it needs to."""
        future = request.future
        with self._lock:
            if future.done():
                return
            if not self.alive:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_exception(WorkerGone("the Kerberos worker is not running"))
                return
            self._next_id += 1
            number = self._next_id
            self._pending[number] = future
            line = json.dumps(
                {
                    "id": number,
                    "spn": request.spn,
                    "realm": request.realm,
                    "deadline": request.deadline,
                    "login": login,
                }
            )
            try:
                assert self._process.stdin is not None
                self._process.stdin.write(line + "\n")
                self._process.stdin.flush()
            except (OSError, ValueError):
                self._pending.pop(number, None)
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_exception(WorkerGone("the Kerberos worker stopped reading"))

    def forget(self, future: concurrent.futures.Future[dict[str, Any]]) -> None:
        """Drop a request whose answer nobody waits for any more."""
        self.gate.forget(future)
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
                self.gate.report(self, answer)
                if future is not None:
                    # The scrape may have given up on it (cancelled) a moment ago.
                    with contextlib.suppress(concurrent.futures.InvalidStateError):
                        future.set_result(answer)
        except (OSError, ValueError):
            pass
        self.gate.release(self)
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
_GATES: dict[tuple[object, ...], CredentialGate] = {}  # by WorkerSpec.credential_key()
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
            gate = _GATES.setdefault(spec.credential_key(), CredentialGate())
            worker = _WORKERS[spec.domain_controller] = KdcWorker(spec, gate)
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
        _GATES.clear()
    for worker in workers:
        worker.close()


atexit.register(close_all)
