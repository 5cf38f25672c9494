"""Endpoint security: ``--web.config.file`` in the Prometheus exporter-toolkit format.

The file turns on TLS (with optional client certificates) and HTTP basic authentication for
every path the exporter serves, like the Go exporters built on the exporter-toolkit:

```yaml
tls_server_config: {cert_file: server.crt, key_file: server.key, min_version: TLS12}
basic_auth_users: {prometheus: $2b$10$...}   # bcrypt hashes
```

Problems are reported like the exporter's own configuration (exporter/config.py): every one at
once, with its YAML path and line; unknown keys are errors; relative file names are relative to
the web configuration file. The file reloads with the exporter's configuration (SIGHUP,
``POST /-/reload``): new users apply at once, new TLS files to new connections; a broken file
keeps the one in force. Neither passwords nor their hashes reach logs or error messages.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import bcrypt
from aiohttp import hdrs, web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .config import (
    ConfigError,
    _Located,
    parse_yaml_mapping,
    read_config_text,
    validate_mapping,
)

__all__ = ["WebConfig", "WebSecurity", "load_web_config"]

log = logging.getLogger(__name__)

REALM = "exchange-auth-exporter"
_BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
TlsVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
ClientAuthType = Literal[
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
]
# The headers the exporter-toolkit lets a file set, and the values it accepts (None: any).
_HEADERS: dict[str, frozenset[str] | None] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": frozenset({"deny", "sameorigin"}),
    "X-Content-Type-Options": frozenset({"nosniff"}),
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}
# Keys of the exporter-toolkit format this exporter does not implement: an error each, so a
# setting an admin relies on is never silently ignored.
_UNSUPPORTED: dict[tuple[str, ...], str] = {
    ("tls_server_config", "cert"): "an inline certificate is not supported: use cert_file",
    ("tls_server_config", "key"): "an inline key is not supported: use key_file",
    ("tls_server_config", "client_ca"): "an inline client CA is not supported: use client_ca_file",
    ("rate_limit",): "rate limiting is not supported by this exporter",
}
_DUMMY_PASSWORD = b"not a password anyone sends"
_AUTH_CACHE_SIZE = 256


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class TlsServerConfig(_Model):
    cert_file: Path | None = None
    key_file: Path | None = None
    client_auth_type: ClientAuthType = "NoClientCert"
    client_ca_file: Path | None = None
    client_allowed_sans: list[str] = Field(default_factory=list)
    min_version: TlsVersionName = "TLS12"
    max_version: TlsVersionName = "TLS13"
    cipher_suites: list[str] = Field(default_factory=list)
    curve_preferences: list[str] = Field(default_factory=list)
    prefer_server_cipher_suites: bool = True

    @field_validator("client_auth_type")
    @classmethod
    def _supported_client_auth(cls, value: str) -> str:
        if value in ("RequestClientCert", "RequireAnyClientCert"):
            # Python's ssl module verifies every client certificate it asks for.
            raise ValueError(
                f"not supported: {value} (a client certificate that is not verified); "
                "use RequireAndVerifyClientCert or VerifyClientCertIfGiven with client_ca_file"
            )
        return value

    @field_validator("cipher_suites", "curve_preferences")
    @classmethod
    def _go_names_unsupported(cls, value: list[str]) -> list[str]:
        if value:
            raise ValueError(
                "not supported (these are Go's names): leave it out, the host's OpenSSL "
                "defaults apply; raise min_version to TLS13 to narrow the ciphers"
            )
        return value

    def problems(self) -> list[tuple[str, str]]:
        """Settings that contradict each other, as (key, message)."""
        found = []
        for key in ("cert_file", "key_file"):
            if getattr(self, key) is None:
                found.append((key, "required with tls_server_config"))
        verifying = self.client_auth_type in (
            "VerifyClientCertIfGiven",
            "RequireAndVerifyClientCert",
        )
        if verifying and self.client_ca_file is None:
            found.append(
                ("client_ca_file", f"required with client_auth_type {self.client_auth_type}")
            )
        if not verifying and self.client_ca_file is not None:
            found.append(
                (
                    "client_ca_file",
                    "set, but client_auth_type is NoClientCert: "
                    "set client_auth_type to RequireAndVerifyClientCert",
                )
            )
        if self.client_allowed_sans and self.client_auth_type != "RequireAndVerifyClientCert":
            found.append(
                ("client_allowed_sans", "needs client_auth_type RequireAndVerifyClientCert")
            )
        if _TLS_VERSIONS[self.min_version] > _TLS_VERSIONS[self.max_version]:
            found.append(
                ("min_version", f"{self.min_version} is above max_version {self.max_version}")
            )
        return found


class HttpServerConfig(_Model):
    # The toolkit's default; aiohttp speaks HTTP/1.1 only (a warning when set to true).
    http2: bool = True
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _known_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if name not in _HEADERS:
                raise ValueError(
                    f"header {name!r} cannot be set: only {', '.join(sorted(_HEADERS))}"
                )
            allowed = _HEADERS[name]
            if allowed is not None and text.lower() not in allowed:
                raise ValueError(
                    f"invalid value {text!r} for {name}: expected {' or '.join(sorted(allowed))}"
                )
        return {name: text for name, text in value.items() if text}


def _username(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("a user name must be a non-empty string")
    if ":" in value:
        raise ValueError("a user name cannot contain ':' (basic authentication splits on it)")
    return value


def _bcrypt_hash(value: object) -> str:
    # Never echo the value: a plaintext password pasted here must not reach a log.
    if not isinstance(value, str) or not _BCRYPT_HASH.match(value):
        raise ValueError(
            "not a bcrypt hash (expected $2y$, $2b$ or $2a$, the cost and 53 characters): "
            "make one with htpasswd -nBC 10 \"\" | tr -d ':\\n'"
        )
    return value


class WebConfigModel(_Model):
    tls_server_config: TlsServerConfig | None = None
    http_server_config: HttpServerConfig = Field(default_factory=HttpServerConfig)
    # Each entry is checked by _check_users first, so a problem names its own line.
    basic_auth_users: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True)
class WebConfig:
    """A validated web configuration, ready to serve with."""

    source: str
    ssl_context: ssl.SSLContext | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    allowed_sans: frozenset[str] = frozenset()
    # Checked against when the user is unknown, so that costs as long as a wrong password.
    dummy_hash: bytes = b""
    warnings: tuple[str, ...] = ()

    def describe(self) -> str:
        tls = "TLS" if self.ssl_context is not None else "no TLS"
        if self.ssl_context is not None and self.ssl_context.verify_mode == ssl.CERT_REQUIRED:
            tls += " with client certificates"
        users = len(self.users)
        return f"{tls}, {users} basic auth user{'s' if users != 1 else ''}"


def _build_ssl_context(
    tls: TlsServerConfig, base_dir: Path, located: _Located
) -> tuple[ssl.SSLContext | None, list[str]]:
    def where(key: str) -> str:
        return located.where(("tls_server_config", key))

    assert tls.cert_file is not None and tls.key_file is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    problems = []
    cert, key = base_dir / tls.cert_file, base_dir / tls.key_file
    try:
        context.load_cert_chain(cert, key)
    except OSError as exc:
        # ssl.SSLError is an OSError; its text names the OpenSSL reason, never key material.
        problems.append(
            f"{where('cert_file')}: cannot load the certificate {str(cert)!r} with the key "
            f"{str(key)!r}: {exc.strerror or exc}"
        )
    try:
        context.minimum_version = _TLS_VERSIONS[tls.min_version]
        context.maximum_version = _TLS_VERSIONS[tls.max_version]
    except ValueError as exc:
        problems.append(f"{where('min_version')}: not available here: {exc}")
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.client_ca_file is not None:
        ca = base_dir / tls.client_ca_file
        try:
            context.load_verify_locations(cafile=ca)
        except OSError as exc:
            problems.append(
                f"{where('client_ca_file')}: cannot load CA certificates from {str(ca)!r}: "
                f"{exc.strerror or exc}"
            )
        context.verify_mode = (
            ssl.CERT_REQUIRED
            if tls.client_auth_type == "RequireAndVerifyClientCert"
            else ssl.CERT_OPTIONAL
        )
    return (None if problems else context), problems


def load_web_config_text(text: str, source: str, base_dir: Path) -> WebConfig:
    """Validate web configuration text; raise :class:`ConfigError` naming every problem."""
    # An empty file: plain HTTP, no authentication, as in the exporter-toolkit.
    data, located, problems = parse_yaml_mapping(text, source, empty=None)
    where = located.where

    for key_path, message in _UNSUPPORTED.items():
        parent: Any = data
        for part in key_path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and key_path[-1] in parent:
            problems.append(f"{where(key_path)}: {message}")
            # Dropped (without a copy of the secret anywhere) so the rest is still validated.
            del parent[key_path[-1]]
    users = data.get("basic_auth_users")
    if users is None:
        data.pop("basic_auth_users", None)
    elif not isinstance(users, dict):
        problems.append(
            f"{where(('basic_auth_users',))}: expected a mapping of user names to bcrypt hashes"
        )
        del data["basic_auth_users"]
    else:
        for name in list(users):
            try:
                _username(name)
                _bcrypt_hash(users[name])
            except ValueError as exc:
                problems.append(f"{where(('basic_auth_users', str(name)))}: {exc}")
                del users[name]

    model = validate_mapping(WebConfigModel, data, source, located, problems)

    context = None
    tls = model.tls_server_config
    if tls is not None:
        for key, message in tls.problems():
            problems.append(f"{where(('tls_server_config', key))}: {message}")
    if tls is not None and not problems:
        context, tls_problems = _build_ssl_context(tls, base_dir, located)
        problems.extend(tls_problems)
    if problems:
        raise ConfigError(source, problems)

    warnings = []
    if "http2" in model.http_server_config.model_fields_set and model.http_server_config.http2:
        warnings.append(
            f"{source}: http_server_config.http2 is true but this exporter serves HTTP/1.1 only"
        )
    if model.basic_auth_users and context is None:
        warnings.append(
            f"{source}: basic_auth_users without tls_server_config: "
            "passwords cross the network in clear"
        )
    users = {name: hashed.encode() for name, hashed in model.basic_auth_users.items()}
    return WebConfig(
        source=source,
        ssl_context=context,
        users=users,
        headers=dict(model.http_server_config.headers),
        allowed_sans=frozenset(
            model.tls_server_config.client_allowed_sans if model.tls_server_config else ()
        ),
        dummy_hash=_dummy_hash(users.values()),
        warnings=tuple(warnings),
    )


def _dummy_hash(hashes: Iterable[bytes]) -> bytes:
    costs = [int(h.split(b"$")[2]) for h in hashes]
    if not costs:
        return b""
    return bcrypt.hashpw(_DUMMY_PASSWORD, bcrypt.gensalt(rounds=max(costs)))


def load_web_config(path: str | Path) -> WebConfig:
    """Read and validate a web configuration file (exporter-toolkit format)."""
    text = read_config_text(path)
    return load_web_config_text(text, str(path), Path(path).parent)


def _parse_basic(header: str | None) -> tuple[bytes, bytes] | None:
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    return (user, password) if sep else None


def _san_values(peercert: Mapping[str, Any] | None) -> set[str]:
    if not peercert:
        return set()
    return {str(value) for _kind, value in peercert.get("subjectAltName", ())}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebSecurity:
    """The web configuration in force, its TLS context, and the basic-auth middleware."""

    def __init__(self, path: Path, config: WebConfig) -> None:
        self.path = path
        self.config = config
        # bcrypt is slow on purpose: it runs off the event loop, two at a time at most, so a
        # flood of wrong passwords cannot starve the threads the scrapes use.
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bcrypt")
        # Successful checks, keyed by an HMAC of user and password under a random key that
        # never leaves this process's memory: no password is kept, and without the key the
        # cache's keys cannot be tested against guesses.
        self._cache_key = os.urandom(32)
        self._cache: dict[bytes, bytes] = {}
        for warning in config.warnings:
            log.warning("%s", warning)

    @classmethod
    def load(cls, path: Path) -> WebSecurity:
        return cls(path, load_web_config(path))

    async def load_again(self) -> WebConfig:
        """Read the file again without applying it (see :meth:`apply`)."""
        return await asyncio.to_thread(load_web_config, self.path)

    def apply(self, config: WebConfig) -> None:
        tls_before = self.config.ssl_context is not None
        self.config = config
        self._cache.clear()
        for warning in config.warnings:
            log.warning("%s", warning)
        if tls_before != (config.ssl_context is not None):
            log.warning("web configuration: TLS is now %s", "off" if tls_before else "on")
        log.info("web configuration reloaded from %s: %s", self.path, config.describe())

    def ssl_context(self) -> ssl.SSLContext | None:
        """The context for the next connection: the newest file's certificates and CAs."""
        return self.config.ssl_context

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def authenticated(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries a configured user and its password."""
        config = self.config
        if not config.users:
            return True
        credentials = _parse_basic(header)
        if credentials is None:
            return False
        user, password = credentials
        stored: bytes | None = None
        for name, hashed in config.users.items():  # every name compared, in constant time
            if hmac.compare_digest(name.encode(), user):
                stored = hashed
        key = hmac.new(
            self._cache_key, len(user).to_bytes(4, "big") + user + password, hashlib.sha256
        ).digest()
        if stored is not None and hmac.compare_digest(self._cache.get(key, b""), stored):
            return True
        loop = asyncio.get_running_loop()
        # An unknown user costs the same bcrypt round as a wrong password.
        ok = await loop.run_in_executor(
            self._executor, _check_password, password, stored or config.dummy_hash
        )
        if config is not self.config:  # reloaded meanwhile: check against the new users
            return await self.authenticated(header)
        if not ok or stored is None:
            return False
        if len(self._cache) >= _AUTH_CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = stored
        return True

    def _client_allowed(self, request: web.Request) -> bool:
        allowed = self.config.allowed_sans
        if not allowed or self.config.ssl_context is None:
            return True
        transport = request.transport
        peercert = transport.get_extra_info("peercert") if transport is not None else None
        return bool(_san_values(peercert) & allowed)

    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every path needs the credentials, as with the exporter-toolkit."""
        if not self._client_allowed(request):
            log.info("client certificate not allowed (client_allowed_sans) from %s", request.remote)
            raise web.HTTPForbidden(text="client certificate not allowed\n")
        if not await self.authenticated(request.headers.get(hdrs.AUTHORIZATION)):
            log.debug("basic authentication failed for %s from %s", request.path, request.remote)
            raise web.HTTPUnauthorized(
                text="Unauthorized\n",
                headers={hdrs.WWW_AUTHENTICATE: f'Basic realm="{REALM}", charset="UTF-8"'},
            )
        return await handler(request)

    async def add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        for name, value in self.config.headers.items():
            response.headers[name] = value

    def install(self, app: web.Application) -> None:
        """Add the middleware and the response headers to an application not yet started."""

        @web.middleware
        async def web_security(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await self.guard(request, handler)

        app.middlewares.append(web_security)
        app.on_response_prepare.append(self.add_headers)


def _check_password(password: bytes, hashed: bytes) -> bool:
    try:
        return bool(bcrypt.checkpw(password, hashed))
    except ValueError:  # e.g. a password longer than bcrypt's 72 bytes (bcrypt >= 5)
        return False
