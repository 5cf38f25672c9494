"""--web.config.file against the real exporter process, with real TLS clients.

Python's ssl module (OpenSSL) and a real Prometheus (Go's crypto/tls) talk to the exporter over
TLS with certificates made here: 401 without or with wrong credentials on every path, 200 with
the right ones; plain HTTP to the TLS port gets no HTTP answer; client certificates enforced;
min_version honoured; a reload swaps users and certificates; slow clients are cut off. The
exporter probes nothing real: one static server on this run's lab network that answers nothing.
"""

from __future__ import annotations

import base64
import http.client
import os
import select
import shutil
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.exporter_process import ExporterProcess, exporter_process
from tests.lab import DEFAULT_NETWORK
from tests.prometheus_server import prometheus_server
from tests.tls_certs import CertificateAuthority, Issued, bcrypt_hash

pytestmark = pytest.mark.timeout(120)

NETWORK = os.environ.get("EXCHANGE_AUTH_LAB_NETWORK", DEFAULT_NETWORK)
PASSWORD = "correct horse battery staple"
WRONG_PASSWORD = "incorrect-donkey-7731"
PATHS = ["/", "/metrics", "/config", "/-/healthy", "/-/ready", "/no-such-page"]


@dataclass(frozen=True)
class Pki:
    folder: Path
    ca: Path
    server: Issued
    client: Issued
    client_prometheus: Issued  # carries the SAN prometheus.corp.example.test
    stranger: Issued  # a client certificate from another CA
    rotated_ca: Path
    rotated_server: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    main = CertificateAuthority(folder, "main")
    other = CertificateAuthority(folder, "other")
    rotated = CertificateAuthority(folder, "rotated")
    return Pki(
        folder=folder,
        ca=main.cert,
        server=main.issue("server", server=True),
        client=main.issue("client", server=False),
        client_prometheus=main.issue(
            "client-prometheus", server=False, sans=("prometheus.corp.example.test",)
        ),
        stranger=other.issue("stranger", server=False),
        rotated_ca=rotated.cert,
        rotated_server=rotated.issue("rotated-server", server=True),
    )


def _exporter_config(folder: Path) -> Path:
    path = folder / "exporter.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "realm": "CORP.EXAMPLE.TEST",
                "exchange_servers": {
                    "static": [{"name": "exch9.corp.example.test", "address": f"{NETWORK}.250"}]
                },
                "checks": {
                    "clock": {"sources": ["ntp"], "timeout": "500ms"},
                    **{
                        name: {"enabled": False}
                        for name in ("kerberos", "smtp", "spn", "duplicate_spn", "replication")
                    },
                },
            }
        )
    )
    return path


def _write_web_config(path: Path, document: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def tls_server(pki: Pki, **extra: Any) -> dict[str, Any]:
    return {"cert_file": pki.server.cert.name, "key_file": pki.server.key.name, **extra}


@dataclass
class Running(ExporterProcess):
    ca: Path

    def context(
        self,
        client: Issued | None = None,
        ca: Path | None = None,
        max_version: ssl.TLSVersion | None = None,
    ) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=ca or self.ca)
        if client is not None:
            context.load_cert_chain(client.cert, client.key)
        if max_version is not None:
            context.maximum_version = max_version
        return context

    def connection(self, context: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
        if context is None:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=context)

    def request(
        self,
        path: str,
        *,
        context: ssl.SSLContext | None = None,
        auth: tuple[str, str] | None = None,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        connection: http.client.HTTPConnection | None = None,
    ) -> tuple[int, http.client.HTTPMessage, str]:
        sent = {"X-Prometheus-Scrape-Timeout-Seconds": "3", **(headers or {})}
        if auth is not None:
            sent["Authorization"] = basic(*auth)
        conn = connection or self.connection(context)
        try:
            conn.request(method, path, headers=sent)
            response = conn.getresponse()
            return response.status, response.headers, response.read().decode()
        finally:
            if connection is None:
                conn.close()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@contextmanager
def exporter(folder: Path, web_config: Path | None, ca: Path, *extra: str) -> Iterator[Running]:
    flags = [f"--web.config.file={web_config}"] if web_config is not None else []
    with exporter_process(
        _exporter_config(folder),
        folder / "exporter.log",
        "--log.level=debug",
        *flags,
        *extra,
        # /-/ready may want TLS, a client certificate or a password: wait for the log line.
        ready=lambda started: "listening on" in started.log(),
    ) as started:
        yield Running(started.process, started.url, started.log_file, ca)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not _holds(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _holds(condition: Callable[[], bool]) -> bool:
    try:
        return condition()
    except (OSError, http.client.HTTPException):  # e.g. refused while the slots are full
        return False


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the exposition")


def no_http_answer(running: Running) -> bytes:
    """Send a plain HTTP request to the port; return what came back before it closed."""
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
    return received


def test_basic_auth_over_tls_guards_every_path(pki: Pki, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    _write_web_config(
        web,
        {
            "tls_server_config": tls_server(pki),
            "http_server_config": {"headers": {"X-Content-Type-Options": "nosniff"}},
            "basic_auth_users": {"prometheus": bcrypt_hash(PASSWORD)},
        },
    )
    shutil.copy(pki.server.cert, tmp_path / pki.server.cert.name)
    shutil.copy(pki.server.key, tmp_path / pki.server.key.name)
    with exporter(tmp_path, web, pki.ca) as running:
        tls = running.context()
        for path in PATHS:
            status, headers, _ = running.request(path, context=tls)
            assert status == 401, path
            assert (
                headers["WWW-Authenticate"]
                == 'Basic realm="exchange-auth-exporter", charset="UTF-8"'
            )
            assert running.request(path, context=tls, auth=("prometheus", WRONG_PASSWORD))[0] == 401
            assert running.request(path, context=tls, auth=("grafana", PASSWORD))[0] == 401
        status, _, body = running.request("/-/reload", context=tls, method="POST")
        assert status == 401 and "configuration reloaded" not in body

        auth = ("prometheus", PASSWORD)
        status, headers, body = running.request("/metrics", context=tls, auth=auth)
        assert status == 200, body
        assert "exchange_auth_build_info" in body
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert running.request("/-/healthy", context=tls, auth=auth)[:3:2] == (200, "Healthy\n")
        assert running.request("/no-such-page", context=tls, auth=auth)[0] == 404
        # TLS 1.2 is the default minimum: a TLS 1.2 client is served.
        tls12 = running.context(max_version=ssl.TLSVersion.TLSv1_2)
        assert running.request("/-/ready", context=tls12, auth=auth)[0] == 200
        # A header line above aiohttp's 8190 bytes is refused before any handler runs.
        status, _, _ = running.request(
            "/-/ready", context=tls, auth=auth, headers={"X-Padding": "a" * 9000}
        )
        assert status == 400

        # Plain HTTP to the TLS port: the handshake fails and the connection closes unanswered.
        assert b"HTTP/1." not in no_http_answer(running)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            running.request("/metrics", auth=auth)
        # A client that does not trust the exporter's CA refuses it.
        with pytest.raises(ssl.SSLCertVerificationError):
            running.request("/metrics", context=running.context(ca=pki.rotated_ca), auth=auth)

        log = running.log()
        assert "basic authentication failed" in log  # the failures were seen...
        assert PASSWORD not in log and WRONG_PASSWORD not in log  # ...without their secrets
        assert basic("prometheus", PASSWORD).split()[1] not in log


def _refused(running: Running, context: ssl.SSLContext) -> bool:
    """The TLS handshake or the first read fails (TLS 1.3 checks client certificates late)."""
    try:
        running.request("/metrics", context=context)
    except (ssl.SSLError, ConnectionError, http.client.HTTPException):
        return True
    return False


def test_client_certificates_are_required_and_verified(pki: Pki, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    tls = tls_server(
        pki,
        client_auth_type="RequireAndVerifyClientCert",
        client_ca_file=pki.ca.name,
    )
    for file in (pki.server.cert, pki.server.key, pki.ca):
        shutil.copy(file, tmp_path / file.name)
    _write_web_config(web, {"tls_server_config": tls})
    with exporter(tmp_path, web, pki.ca) as running:
        assert _refused(running, running.context())
        assert _refused(running, running.context(max_version=ssl.TLSVersion.TLSv1_2))
        assert _refused(running, running.context(client=pki.stranger))
        status, _, body = running.request("/metrics", context=running.context(client=pki.client))
        assert status == 200 and "exchange_auth_build_info" in body

        # Only certificates naming an allowed SAN, from the next reload on.
        _write_web_config(
            web,
            {"tls_server_config": {**tls, "client_allowed_sans": ["prometheus.corp.example.test"]}},
        )
        running.process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: (
                running.request("/-/ready", context=running.context(client=pki.client))[0] == 403
            ),
            "client_allowed_sans to apply",
        )
        allowed = running.context(client=pki.client_prometheus)
        assert running.request("/-/ready", context=allowed)[0] == 200


def test_min_version_tls13_refuses_a_tls12_client(pki: Pki, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    for file in (pki.server.cert, pki.server.key):
        shutil.copy(file, tmp_path / file.name)
    _write_web_config(web, {"tls_server_config": tls_server(pki, min_version="TLS13")})
    with exporter(tmp_path, web, pki.ca) as running:
        with pytest.raises(ssl.SSLError):
            running.request("/-/ready", context=running.context(max_version=ssl.TLSVersion.TLSv1_2))
        assert running.request("/-/ready", context=running.context())[0] == 200
        # The exporter refused it for its version (OpenSSL's reason, in the debug log).
        assert "UNSUPPORTED_PROTOCOL" in running.log()


def test_a_reload_swaps_users_and_certificates(pki: Pki, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    for file in (pki.server.cert, pki.server.key, pki.rotated_server.cert, pki.rotated_server.key):
        shutil.copy(file, tmp_path / file.name)
    _write_web_config(
        web,
        {
            "tls_server_config": tls_server(pki),
            "basic_auth_users": {"prometheus": bcrypt_hash("one")},
        },
    )
    with exporter(tmp_path, web, pki.ca) as running:
        tls = running.context()
        assert running.request("/-/ready", context=tls, auth=("prometheus", "one"))[0] == 200
        kept_open = running.connection(tls)
        assert (
            running.request("/-/ready", auth=("prometheus", "one"), connection=kept_open)[0] == 200
        )

        # New users apply at once (SIGHUP).
        _write_web_config(
            web,
            {
                "tls_server_config": tls_server(pki),
                "basic_auth_users": {"scraper": bcrypt_hash("two")},
            },
        )
        running.process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: running.request("/-/ready", context=tls, auth=("scraper", "two"))[0] == 200,
            "the new user to be accepted",
        )
        assert running.request("/-/ready", context=tls, auth=("prometheus", "one"))[0] == 401
        auth = ("scraper", "two")
        _, _, text = running.request("/metrics", context=tls, auth=auth)
        assert metric(text, "exchange_auth_config_last_reload_successful") == 1

        # A broken web config: the reload fails, the one in force stays, the metric says so.
        web.write_text("basic_auth_users:\n  scraper: two\n")
        status, _, body = running.request("/-/reload", context=tls, auth=auth, method="POST")
        assert status == 500
        assert (
            f"{web}: 1 problem" in body
            and "basic_auth_users.scraper (line 2): not a bcrypt hash" in body
        )
        assert "two\n" not in body.split("problem:")[1].replace("line 2", "")
        _, _, text = running.request("/metrics", context=tls, auth=auth)
        assert metric(text, "exchange_auth_config_last_reload_successful") == 0
        assert "reload failed, keeping the previous configuration" in running.log()

        # A new certificate from another CA serves new connections; open ones keep theirs.
        _write_web_config(
            web,
            {
                "tls_server_config": {
                    "cert_file": pki.rotated_server.cert.name,
                    "key_file": pki.rotated_server.key.name,
                },
                "basic_auth_users": {"scraper": bcrypt_hash("two")},
            },
        )
        status, _, body = running.request("/-/reload", context=tls, auth=auth, method="POST")
        assert status == 200, body
        with pytest.raises(ssl.SSLCertVerificationError):
            running.request("/-/ready", context=tls, auth=auth)
        rotated = running.context(ca=pki.rotated_ca)
        _, _, text = running.request("/metrics", context=rotated, auth=auth)
        assert metric(text, "exchange_auth_config_last_reload_successful") == 1
        assert running.request("/-/ready", auth=auth, connection=kept_open)[0] == 200
        kept_open.close()


def _closed_after(sock: socket.socket | ssl.SSLSocket, drip: bytes, interval: float) -> float:
    """Send ``drip`` a byte at a time; return the seconds until the server closed on us."""
    started = time.monotonic()
    for byte in drip:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return time.monotonic() - started
        readable, _, _ = select.select([sock], [], [], interval)
        if readable:
            try:
                if sock.recv(4096) == b"":
                    return time.monotonic() - started
            except (OSError, ssl.SSLError):
                return time.monotonic() - started
    raise AssertionError(f"still open after {time.monotonic() - started:.1f} s")


def test_slow_clients_are_cut_off(pki: Pki, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    for file in (pki.server.cert, pki.server.key):
        shutil.copy(file, tmp_path / file.name)
    _write_web_config(web, {"tls_server_config": tls_server(pki)})
    # A 100-byte request head sent one byte every 0.1 s would take 10 s.
    drip = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 60 + b"\r\n\r\n"
    with exporter(tmp_path, web, pki.ca, "--web.read-timeout=1s") as running:
        # No TLS handshake at all: closed after the handshake timeout.
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            started = time.monotonic()
            assert sock.recv(1) == b""
            assert 0.5 < time.monotonic() - started < 4
        # A handshake, then a request head one byte at a time (slowloris).
        raw = socket.create_connection(("127.0.0.1", running.port), timeout=10)
        with running.context().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert 0.5 < _closed_after(tls, drip, 0.1) < 4
        assert running.request("/-/ready", context=running.context())[0] == 200

    plain = tmp_path / "plain"
    plain.mkdir()
    args = ("--web.read-timeout=2s", "--web.max-connections=3")
    with exporter(plain, None, pki.ca, *args) as running:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            assert 1 < _closed_after(sock, drip, 0.1) < 5
        # At most 3 connections: the 4th is closed at once, then room again.
        held = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(3)]
        try:
            time.sleep(0.2)
            with socket.create_connection(("127.0.0.1", running.port), timeout=10) as fourth:
                started = time.monotonic()
                assert fourth.recv(1) == b""
                assert time.monotonic() - started < 1
        finally:
            for sock in held:
                sock.close()
        wait_for(lambda: running.request("/-/ready")[0] == 200, "a free connection slot", 5)
        assert "refused a connection: 3 are open" in running.log()


def test_prometheus_scrapes_with_client_certificate_and_basic_auth(
    pki: Pki, tmp_path: Path
) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: apt-get install prometheus (or make system-deps)")
    web = tmp_path / "web.yml"
    for file in (pki.server.cert, pki.server.key, pki.ca):
        shutil.copy(file, tmp_path / file.name)
    _write_web_config(
        web,
        {
            "tls_server_config": tls_server(
                pki, client_auth_type="RequireAndVerifyClientCert", client_ca_file=pki.ca.name
            ),
            "basic_auth_users": {"prometheus": bcrypt_hash(PASSWORD)},
        },
    )
    (tmp_path / "password").write_text(PASSWORD + "\n")
    (tmp_path / "wrong-password").write_text(WRONG_PASSWORD + "\n")
    with exporter(tmp_path, web, pki.ca) as running:
        target = f"127.0.0.1:{running.port}"

        def job(name: str, password_file: str) -> dict[str, Any]:
            # The scrape configuration docs/web-config.md shows.
            return {
                "job_name": name,
                "scheme": "https",
                "tls_config": {
                    "ca_file": str(pki.ca),
                    "cert_file": str(pki.client.cert),
                    "key_file": str(pki.client.key),
                },
                "basic_auth": {
                    "username": "prometheus",
                    "password_file": str(tmp_path / password_file),
                },
                "static_configs": [{"targets": [target]}],
            }

        config = tmp_path / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                    "scrape_configs": [
                        job("exchange-auth", "password"),
                        job("wrong-password", "wrong-password"),
                    ],
                }
            )
        )
        with prometheus_server(binary, config, tmp_path) as server:

            def targets() -> dict[str, dict[str, Any]]:
                found = server.targets(state="active")
                return {t["labels"]["job"]: t for t in found if t["health"] != "unknown"}

            wait_for(
                lambda: len(targets()) == 2,
                f"both targets scraped; Prometheus log:\n{server.log()}",
                timeout=40,
            )
            found = targets()
            assert found["exchange-auth"]["health"] == "up", found["exchange-auth"]["lastError"]
            assert found["wrong-password"]["health"] == "down"
            assert "401" in found["wrong-password"]["lastError"]
