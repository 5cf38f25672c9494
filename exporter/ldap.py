"""The one place that talks LDAP: connections, TLS, binds, timeouts, paged searches.

ldap3 blocks, so every call runs in a worker thread of a pool of our own, with ldap3's own
connect and receive timeouts set: cancelling the awaiting task does not stop a thread, the
timeout does. Failures become :class:`LdapError` with a bounded ``reason``; no message ever
carries the bind password.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import ldap3
from ldap3.core import exceptions as ldap_errors
from pydantic import SecretStr

from .config import LdapSettings

__all__ = [
    "LdapClient",
    "LdapEntry",
    "LdapError",
    "LdapRawEntry",
    "LdapTarget",
    "client_for",
    "close_all",
    "run_in_ldap_thread",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Blocking LDAP calls get threads of their own, so a slow directory cannot starve the default
# pool that DNS lookups and config reloads use.
_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="ldap")


async def run_in_ldap_thread(call: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(_POOL, call)


class LdapError(Exception):
    """``reason``: bind_failed, tls_failed, timeout, unreachable, search_failed or not_found."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class LdapEntry:
    dn: str
    attributes: dict[str, list[str]]

    def first(self, name: str) -> str | None:
        values = self.attributes.get(name) or []
        return values[0] if values else None


@dataclass(frozen=True)
class LdapRawEntry:
    """An entry with every value as the bytes the server sent: binary attributes (repsFrom,
    objectGUID) do not survive the text decoding of :class:`LdapEntry`."""

    dn: str
    attributes: dict[str, list[bytes]]

    def values(self, name: str) -> list[bytes]:
        """The values of ``name``, whatever letter case the server spelled it in."""
        wanted = name.lower()
        return next((v for k, v in self.attributes.items() if k.lower() == wanted), [])


@dataclass(frozen=True)
class LdapTarget:
    """Where and how to connect. ``user`` None means an anonymous bind (enough for the rootDSE)."""

    host: str
    port: int
    use_ssl: bool
    start_tls: bool
    tls_verify: bool
    ca_file: str | None
    timeout: float
    user: str | None = None
    password: SecretStr | None = None

    @classmethod
    def from_settings(
        cls, settings: LdapSettings, url: str | None = None, *, anonymous: bool = False
    ) -> LdapTarget:
        parts = urlsplit(url or settings.url)
        use_ssl = parts.scheme == "ldaps"
        return cls(
            host=parts.hostname or "",
            port=parts.port or (636 if use_ssl else 389),
            use_ssl=use_ssl,
            start_tls=settings.start_tls and not use_ssl,
            tls_verify=settings.tls_verify,
            ca_file=str(settings.ca_file) if settings.ca_file else None,
            timeout=settings.timeout,
            user=None if anonymous else settings.user,
            password=None if anonymous else settings.password,
        )

    def with_host(self, host: str) -> LdapTarget:
        return dataclasses.replace(self, host=host)

    @property
    def where(self) -> str:
        return f"{'ldaps' if self.use_ssl else 'ldap'}://{self.host}:{self.port}"


# What a connection that was fine when last used raises once the server has dropped it.
_LOST_CONNECTION = (
    ldap_errors.LDAPSessionTerminatedByServerError,
    ldap_errors.LDAPSocketSendError,
    ldap_errors.LDAPSocketReceiveError,
)


def _reason(exc: Exception, password: SecretStr | None) -> LdapError:
    text = str(exc) or type(exc).__name__
    if password is not None and password.get_secret_value():
        text = text.replace(password.get_secret_value(), "<secret>")
    lowered = text.lower()
    if isinstance(exc, ldap_errors.LDAPInvalidCredentialsResult | ldap_errors.LDAPBindError):
        return LdapError("bind_failed", text)
    if isinstance(exc, ldap_errors.LDAPStrongerAuthRequiredResult):
        return LdapError("bind_failed", f"the DC requires TLS for this bind: {text}")
    if (
        isinstance(exc, ldap_errors.LDAPStartTLSError)
        or "ssl" in lowered
        or "certificate" in lowered
    ):
        return LdapError("tls_failed", text)
    if (
        isinstance(exc, ldap_errors.LDAPResponseTimeoutError)
        or "timed out" in lowered
        or "timeout" in lowered
    ):
        return LdapError("timeout", text)
    if isinstance(exc, ldap_errors.LDAPNoSuchObjectResult):
        return LdapError("not_found", text)
    if isinstance(
        exc, ldap_errors.LDAPSocketOpenError | ldap_errors.LDAPSocketReceiveError | OSError
    ):
        return LdapError("unreachable", text)
    return LdapError("search_failed", text)


def _values(attributes: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in attributes.items():
        items = value if isinstance(value, list) else [value]
        out[name] = [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in items
        ]
    return out


class LdapClient:
    """One connection to one directory server, reopened after any failure; thread-safe."""

    def __init__(self, target: LdapTarget) -> None:
        self.target = target
        self._connection: ldap3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> ldap3.Connection:
        target = self.target
        tls = ldap3.Tls(
            validate=ssl.CERT_REQUIRED if target.tls_verify else ssl.CERT_NONE,
            ca_certs_file=target.ca_file,
            version=ssl.PROTOCOL_TLS_CLIENT,
        )
        server = ldap3.Server(
            target.host,
            port=target.port,
            use_ssl=target.use_ssl,
            tls=tls,
            get_info=ldap3.NONE,
            connect_timeout=target.timeout,
        )
        connection = ldap3.Connection(
            server,
            user=target.user,
            password=target.password.get_secret_value() if target.password else None,
            authentication=ldap3.SIMPLE if target.user else ldap3.ANONYMOUS,
            # ldap3 packs this into SO_RCVTIMEO with struct: whole seconds only.
            receive_timeout=max(1, math.ceil(target.timeout)),
            raise_exceptions=True,
            read_only=True,
            auto_referrals=False,
            check_names=False,
        )
        connection.open()
        if target.start_tls:
            connection.start_tls()
        if target.user:
            connection.bind()
        return connection

    def _acquire(self, deadline: float | None) -> None:
        # A call stuck on a hung DC holds the connection; later calls give up at their own
        # deadline instead of piling up in the thread pool behind it.
        wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._lock.acquire(timeout=wait):
            raise LdapError("timeout", f"{self.target.where}: an earlier request is still waiting")

    def _run(self, operation: Callable[[ldap3.Connection], T], deadline: float | None = None) -> T:
        self._acquire(deadline)
        try:
            try:
                reused = self._connection is not None and not self._connection.closed
                if not reused:
                    self._connection = self._connect()
                assert self._connection is not None
                try:
                    return operation(self._connection)
                except _LOST_CONNECTION as exc:
                    if not reused or "timed out" in str(exc).lower():
                        raise
                    # The server closed a connection kept from earlier (a DC restarted, or an
                    # idle timeout): one fresh connection says how the server is now.
                    self._drop()
                    self._connection = self._connect()
                    return operation(self._connection)
            except (TimeoutError, ldap_errors.LDAPException, OSError) as exc:
                self._drop()
                raise _reason(exc, self.target.password) from None
        finally:
            self._lock.release()

    def _drop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):  # it is being thrown away anyway
                self._connection.unbind()
            self._connection = None

    def root_dse(self, attributes: Sequence[str], deadline: float | None = None) -> LdapEntry:
        def read(connection: ldap3.Connection) -> LdapEntry:
            connection.search("", "(objectClass=*)", ldap3.BASE, attributes=list(attributes))
            if not connection.response:
                raise ldap_errors.LDAPNoSuchObjectResult("no rootDSE")
            return LdapEntry("", _values(connection.response[0].get("attributes", {})))

        return self._run(read, deadline)

    def search(
        self,
        base: str,
        search_filter: str,
        attributes: Sequence[str],
        deadline: float | None = None,
    ) -> list[LdapEntry]:
        def find(connection: ldap3.Connection) -> list[LdapEntry]:
            connection.search(base, search_filter, ldap3.SUBTREE, attributes=list(attributes))
            return [
                LdapEntry(item["dn"], _values(item.get("attributes", {})))
                for item in connection.response or ()
                if item.get("type") == "searchResEntry"
            ]

        return self._run(find, deadline)

    def search_raw(
        self,
        base: str,
        search_filter: str,
        attributes: Sequence[str],
        deadline: float | None = None,
        *,
        base_only: bool = False,
    ) -> list[LdapRawEntry]:
        """As :meth:`search`, values as bytes; ``base_only`` reads ``base`` itself (an NC head)
        instead of the subtree below it."""

        def find(connection: ldap3.Connection) -> list[LdapRawEntry]:
            scope = ldap3.BASE if base_only else ldap3.SUBTREE
            connection.search(base, search_filter, scope, attributes=list(attributes))
            return [
                LdapRawEntry(
                    item["dn"],
                    {
                        name: [v if isinstance(v, bytes) else str(v).encode() for v in values]
                        for name, values in (item.get("raw_attributes") or {}).items()
                    },
                )
                for item in connection.response or ()
                if item.get("type") == "searchResEntry"
            ]

        return self._run(find, deadline)

    def paged(
        self, base: str, search_filter: str, attributes: Sequence[str], page_size: int = 1000
    ) -> Iterator[LdapEntry]:
        """A paged search (RFC 2696) as a generator: one page in memory at a time.

        Holds the connection for as long as it is iterated; call it from one worker thread.
        """
        self._acquire(None)
        try:
            try:
                if self._connection is None or self._connection.closed:
                    self._connection = self._connect()
                results = self._connection.extend.standard.paged_search(
                    base,
                    search_filter,
                    ldap3.SUBTREE,
                    attributes=list(attributes),
                    paged_size=page_size,
                    generator=True,
                )
                for item in results:
                    if item.get("type") == "searchResEntry":
                        yield LdapEntry(item["dn"], _values(item.get("attributes", {})))
            except (TimeoutError, ldap_errors.LDAPException, OSError) as exc:
                self._drop()
                raise _reason(exc, self.target.password) from None
        finally:
            self._lock.release()

    def close(self) -> None:
        if self._lock.acquire(timeout=1.0):
            try:
                self._drop()
            finally:
                self._lock.release()


_CLIENTS: dict[LdapTarget, LdapClient] = {}
_CLIENTS_LOCK = threading.Lock()


def client_for(target: LdapTarget) -> LdapClient:
    """One long-lived client per target: a TLS handshake per scrape per DC would be waste."""
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(target)
        if client is None:
            client = _CLIENTS[target] = LdapClient(target)
        return client


def close_all() -> None:
    with _CLIENTS_LOCK:
        clients = list(_CLIENTS.values())
        _CLIENTS.clear()
    for client in clients:
        client.close()
