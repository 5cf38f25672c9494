"""A Kerberos client for one KDC, in a process of its own: ``python -m exporter.krb5_worker``.

MIT's library reads its configuration (``KRB5_CONFIG``) from the process environment, so a
krb5.conf that names one DC as the realm's only KDC holds for a whole process: one worker per
DC, started by :mod:`exporter.kdc_workers` with that file, asks that DC and no other.

Protocol, one JSON object per line: the first line on standard input is the setup (principal,
password or keytab, threads); it never appears in argv, the environment or any answer. Then
each ``{"id", "spn", "realm", "deadline", "login"}`` line asks for a service ticket
(``deadline`` is ``time.monotonic()``, which Linux shares between processes), and the answer
line carries the same ``id``. End of input (the exporter closing the pipe or dying) ends the
worker.

The worker logs in (AS-REQ with the password or keytab) only when a request's ``login`` is
true: every worker of one secret would otherwise try it at once, and a wrong password would
cost one bad attempt per DC towards the account's lockout threshold. The exporter
(:mod:`exporter.kdc_workers`) lets one worker try first. Without permission, a worker uses the
TGT it holds while still valid, else answers ``no_credentials``. An answer says whether a login
was tried (``login_tried``) and in which phase a failure came (``phase``: ``tgt`` for our own
TGT, ``tgs`` for the service ticket), so the exporter's own login problems are never reported
as the target's.

Credentials live in memory only: the initial TGT in the MEMORY credential cache GSS-API made
for it, and each request copies that TGT into a MEMORY cache of its thread, emptied first.
MIT keeps the service tickets it gets in the cache it used; starting each request from the
TGT alone makes every request a real TGS exchange with the KDC, never an answer from a cache.
The TGT is acquired again at half its lifetime (as MIT itself refreshes keytab credentials),
or when the KDC says it has expired.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import gssapi
import gssapi.raw
from gssapi.raw.misc import GSSError

from .protocols.krb5_errors import (
    CREDENTIAL_ERRORS,
    CREDENTIAL_RETRY_AFTER,
    KRB_AP_ERR_TKT_EXPIRED,
    RENEW_AT_REMAINING,
    krb5_code,
    reason_of,
)

__all__ = ["CredentialState", "Worker", "main"]

# A failure that is not about our own secret (KDC down, clocks apart): try again this soon.
RETRY_AFTER = 5.0
_MAX_DETAIL = 300
_DEADLINE_GRACE = 0.05  # seconds past a request's deadline before it is answered as a timeout


@dataclass(frozen=True, slots=True)
class CredentialState:
    ok: bool
    reason: str = ""
    code: int | None = None
    detail: str = ""
    acquired: float | None = None  # Unix time
    expires: float | None = None  # Unix time the TGT ends


def _detail(exc: GSSError) -> str:
    """The Kerberos mechanism's own message (the minor status), e.g. "Preauthentication failed".

    MIT's messages name principals and realms, never secrets.
    """
    text = exc.gen_message().replace("\n", " ")
    _, found, minor = text.rpartition("Minor (")
    if found:
        text = minor.partition("): ")[2] or text
    return text[:_MAX_DETAIL]


def _failure(exc: GSSError) -> tuple[str, int | None, str]:
    code = krb5_code(exc.min_code)
    return reason_of(code), code, _detail(exc)


class Worker:
    """The credentials of one principal and the requests made with them, thread-safe."""

    def __init__(self, setup: dict[str, Any]) -> None:
        self.principal = gssapi.Name(str(setup["principal"]), gssapi.NameType.kerberos_principal)
        password = setup.get("password")
        self._password = password.encode() if isinstance(password, str) else None
        self._keytab = setup.get("keytab")
        self._lock = threading.Lock()
        self._creds: Any = None
        self._renew_at = 0.0  # monotonic
        self._valid_until = 0.0  # monotonic
        self._next_try = 0.0  # monotonic
        self._state = CredentialState(False, "no_credentials", None, "not acquired yet")
        self._local = threading.local()
        self._acquired = 0  # TGTs acquired from the keytab so far

    # --- credentials ------------------------------------------------------------------

    def _acquire(self) -> tuple[Any, float]:
        if self._password is not None:
            result = gssapi.raw.acquire_cred_with_password(
                self.principal, self._password, usage="initiate"
            )
        else:
            self._acquired += 1
            store: dict[bytes | str, bytes | str] = {
                b"client_keytab": str(self._keytab).encode(),
                # A new cache each time: in the last one MIT would find the old TGT again.
                b"ccache": f"MEMORY:exchange-auth-tgt-{os.getpid()}-{self._acquired}".encode(),
            }
            result = gssapi.raw.acquire_cred_from(store, self.principal, usage="initiate")
        lifetime = float(result.lifetime or 0)
        return result.creds, lifetime

    def credentials(
        self, *, force: bool = False, deadline: float | None = None, login: bool = True
    ) -> tuple[Any, CredentialState, bool]:
        """Valid credentials, acquiring or renewing them first when due (and ``login`` allows);
        None when there are none. The last item says whether a login was tried.

        Another thread may be acquiring them from a KDC that does not answer: wait for it until
        ``deadline`` (monotonic) at most, then give up with ``timeout``.
        """
        wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._lock.acquire(timeout=wait):
            state = CredentialState(
                False, "timeout", None, "still waiting for the KDC to issue our TGT"
            )
            return None, state, False
        tried = False
        try:
            now = time.monotonic()
            due = force or self._creds is None or now >= self._renew_at
            if due and not login:
                if self._creds is not None and now < self._valid_until and not force:
                    return self._creds, self._state, False
                state = CredentialState(
                    False,
                    "no_credentials",
                    None,
                    "no TGT yet: waiting for the exporter's login with this secret at another DC",
                )
                return None, state, False
            if due and now >= self._next_try:
                tried = True
                try:
                    creds, lifetime = self._acquire()
                except GSSError as exc:
                    reason, code, detail = _failure(exc)
                    wait = CREDENTIAL_RETRY_AFTER if code in CREDENTIAL_ERRORS else RETRY_AFTER
                    self._next_try = time.monotonic() + wait
                    if force or now >= self._valid_until:
                        self._creds = None  # nothing usable left
                    # Still valid (a renewal failed): say until when.
                    expires = self._state.expires if self._creds is not None else None
                    self._state = CredentialState(
                        False, reason, code, detail, self._state.acquired, expires
                    )
                else:
                    self._creds = creds
                    self._renew_at = now + lifetime * (1 - RENEW_AT_REMAINING)
                    self._valid_until = now + lifetime
                    self._next_try = 0.0
                    wall = time.time()
                    self._state = CredentialState(True, acquired=wall, expires=wall + lifetime)
            if self._creds is not None and now >= self._valid_until:
                self._creds = None
            return self._creds, self._state, tried
        finally:
            self._lock.release()

    # --- service tickets --------------------------------------------------------------

    def _thread_cache(self) -> bytes:
        name: bytes | None = getattr(self._local, "ccache", None)
        if name is None:
            name = f"MEMORY:exchange-auth-{os.getpid()}-{threading.get_ident()}".encode()
            self._local.ccache = name
        return name

    def _request(self, creds: Any, target: gssapi.Name) -> None:
        ccache = self._thread_cache()
        # Overwrite empties the cache first: only the TGT is in it, so the KDC is asked.
        gssapi.raw.store_cred_into(
            {b"ccache": ccache}, creds, usage="initiate", overwrite=True, set_default=False
        )
        fresh = gssapi.raw.acquire_cred_from({b"ccache": ccache}, self.principal, usage="initiate")
        context = gssapi.SecurityContext(
            name=target,
            creds=gssapi.Credentials(fresh.creds),
            usage="initiate",
            mech=gssapi.MechType.kerberos,
        )
        context.step()  # the TGS exchange, then the AP-REQ Exchange would send in X-EXPS GSSAPI

    def ticket(
        self, request: dict[str, Any], progress: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """The answer to one request; ``progress["phase"]`` says how far it got meanwhile."""
        progress = progress if progress is not None else {}
        progress["phase"] = "tgt"
        answer: dict[str, Any] = {"id": request["id"], "ok": False, "duration": 0.0}
        if time.monotonic() >= float(request["deadline"]):  # waited in the queue too long
            answer.update(reason="timeout", detail="queued until the deadline had passed")
            return answer
        deadline = float(request["deadline"])
        login = bool(request.get("login", True))
        creds, state, tried = self.credentials(deadline=deadline, login=login)
        answer["login_tried"] = tried
        if state.reason != "timeout" and (tried or state.ok or login):
            answer["credentials"] = asdict(state)
        if creds is None:
            # Our own TGT failed: nothing was asked about the target's SPN.
            answer.update(reason=state.reason, code=state.code, detail=state.detail, phase="tgt")
            return answer
        target = gssapi.Name(
            f"{request['spn']}@{request['realm']}", gssapi.NameType.kerberos_principal
        )
        for attempt in (1, 2):
            progress["phase"] = "tgs"
            started = time.perf_counter()
            try:
                self._request(creds, target)
            except GSSError as exc:
                answer["duration"] = time.perf_counter() - started
                reason, code, detail = _failure(exc)
                if code == KRB_AP_ERR_TKT_EXPIRED and attempt == 1:
                    # The KDC thinks our TGT too old: get a new one and ask once more.
                    creds, state, tried = self.credentials(
                        force=True, deadline=deadline, login=login
                    )
                    answer["login_tried"] = tried or bool(answer["login_tried"])
                    if state.reason != "timeout" and (tried or state.ok or login):
                        answer["credentials"] = asdict(state)
                    if creds is not None:
                        continue
                    answer.update(
                        reason=state.reason, code=state.code, detail=state.detail, phase="tgt"
                    )
                    return answer
                answer.update(reason=reason, code=code, detail=detail, phase="tgs")
                return answer
            answer.update(ok=True, duration=time.perf_counter() - started, phase="tgs")
            return answer
        return answer  # not reached: the second attempt returns


def serve(stdin: TextIO, stdout: TextIO) -> None:
    setup = json.loads(stdin.readline() or "{}")
    worker = Worker(setup)
    write_lock = threading.Lock()

    def reply(answer: dict[str, Any]) -> None:
        line = json.dumps(answer) + "\n"
        with write_lock:
            stdout.write(line)
            stdout.flush()

    def handle(request: dict[str, Any]) -> None:
        # The exchange runs in a thread of its own, and the answer is due by the deadline: MIT
        # before 1.22 has no request_timeout and waits about 25 s for a KDC that drops what it
        # gets. Past the deadline, a timeout is answered and this pool thread serves the next
        # request; the late answer still follows (the exporter learns how a login ended).
        progress: dict[str, str] = {}
        done = threading.Event()
        answered = threading.Lock()
        late = [False]

        def run() -> None:
            try:
                answer = worker.ticket(request, progress)
            except Exception as exc:  # never leave the exporter waiting for an answer
                answer = {
                    "id": request.get("id"),
                    "ok": False,
                    "reason": "other",
                    "detail": f"worker error: {type(exc).__name__}",
                    "duration": 0.0,
                }
            with answered:
                done.set()
                if late[0]:
                    answer["late"] = True
            reply(answer)

        threading.Thread(target=run, name="krb5-exchange", daemon=True).start()
        try:
            deadline = float(request.get("deadline", 0.0))
        except (TypeError, ValueError):
            deadline = 0.0
        if done.wait(max(0.0, deadline - time.monotonic()) + _DEADLINE_GRACE):
            return
        with answered:
            if done.is_set():
                return
            late[0] = True
        reply(
            {
                "id": request.get("id"),
                "ok": False,
                "reason": "timeout",
                "detail": "the KDC did not answer by the deadline",
                "duration": 0.0,
                "phase": progress.get("phase", "tgt"),
            }
        )

    threads = max(1, int(setup.get("threads", 4)))
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="krb5") as pool:
        # No login before a request allows it (see the module's docstring).
        for line in stdin:
            if line.strip():
                pool.submit(handle, json.loads(line))
        # End of input: the exporter is gone or closing; requests still running are abandoned.
        stdout.flush()
        os._exit(0)


def main() -> int:
    serve(sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
