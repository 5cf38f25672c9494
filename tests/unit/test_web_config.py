"""--web.config.file: one invalid file per error class mapped to its messages; TLS contexts from
real certificates; the basic-auth check (constant work for unknown users, a secret-safe cache)."""

from __future__ import annotations

import asyncio
import base64
import ssl
import statistics
import time
from pathlib import Path

import pytest
import yaml

from exporter.cli import main
from exporter.config import ConfigError
from exporter.web_config import WebSecurity, load_web_config
from tests.tls_certs import CertificateAuthority, Issued, bcrypt_hash

DATA = Path(__file__).parent.parent / "testdata" / "web-config"
NOT_A_HASH = "not a bcrypt hash (expected $2y$, $2b$ or $2a$, the cost and 53 characters)"

# file -> every problem the error must list, in order (each names the YAML path and line)
INVALID = {
    "invalid-unknown-key.yml": ["tls_server_config.client_auth (line 4): unknown key"],
    "invalid-unknown-top-level-key.yml": ["basic_auth_user (line 2): unknown key"],
    "invalid-missing-key-file.yml": [
        "tls_server_config.key_file (line 2): required with tls_server_config"
    ],
    "invalid-client-auth-type.yml": [
        "tls_server_config.client_auth_type (line 4): invalid value 'RequireClientCert': input "
        "should be 'NoClientCert', 'RequestClientCert', 'RequireAnyClientCert', "
        "'VerifyClientCertIfGiven' or 'RequireAndVerifyClientCert'"
    ],
    "invalid-request-client-cert.yml": [
        "tls_server_config.client_auth_type (line 4): not supported: RequireAnyClientCert (a "
        "client certificate that is not verified); use RequireAndVerifyClientCert or "
        "VerifyClientCertIfGiven with client_ca_file"
    ],
    "invalid-verify-without-ca.yml": [
        "tls_server_config.client_ca_file (line 2): required with client_auth_type "
        "RequireAndVerifyClientCert"
    ],
    "invalid-ca-without-verify.yml": [
        "tls_server_config.client_ca_file (line 4): set, but client_auth_type is NoClientCert: "
        "set client_auth_type to RequireAndVerifyClientCert"
    ],
    "invalid-allowed-sans-without-verify.yml": [
        "tls_server_config.client_allowed_sans (line 6): needs client_auth_type "
        "RequireAndVerifyClientCert"
    ],
    "invalid-min-above-max.yml": [
        "tls_server_config.min_version (line 4): TLS13 is above max_version TLS12"
    ],
    "invalid-tls-version.yml": [
        "tls_server_config.min_version (line 4): invalid value 'TLS1.2': input should be "
        "'TLS10', 'TLS11', 'TLS12' or 'TLS13'"
    ],
    "invalid-cipher-suites.yml": [
        "tls_server_config.cipher_suites (line 4): not supported (these are Go's names): leave "
        "it out, the host's OpenSSL defaults apply; raise min_version to TLS13 to narrow the "
        "ciphers"
    ],
    "invalid-inline-key.yml": [
        "tls_server_config.key (line 3): an inline key is not supported: use key_file",
        "tls_server_config.key_file (line 2): required with tls_server_config",
    ],
    "invalid-rate-limit.yml": [
        "rate_limit (line 2): rate limiting is not supported by this exporter"
    ],
    "invalid-plaintext-password.yml": [
        f"basic_auth_users.prometheus (line 2): {NOT_A_HASH}: make one with "
        "htpasswd -nBC 10 \"\" | tr -d ':\\n'"
    ],
    "invalid-user-with-colon.yml": [
        "basic_auth_users.prom:etheus (line 2): a user name cannot contain ':' (basic "
        "authentication splits on it)"
    ],
    "invalid-users-not-a-mapping.yml": [
        "basic_auth_users (line 2): expected a mapping of user names to bcrypt hashes"
    ],
    "invalid-duplicate-user.yml": ["basic_auth_users.prometheus (line 3): duplicate key"],
    "invalid-header.yml": [
        "http_server_config.headers (line 3): header 'Server' cannot be set: only "
        "Content-Security-Policy, Strict-Transport-Security, X-Content-Type-Options, "
        "X-Frame-Options, X-XSS-Protection"
    ],
    "invalid-header-value.yml": [
        "http_server_config.headers (line 3): invalid value 'allow' for X-Frame-Options: "
        "expected deny or sameorigin"
    ],
    "invalid-yaml-syntax.yml": [
        "line 3, column 1: not valid YAML: expected ',' or ']', but got '<stream end>'"
    ],
    "invalid-not-a-mapping.yml": ["expected a mapping of keys at the top level, got list"],
    "invalid-many-problems.yml": [
        f"basic_auth_users.alice (line 8): {NOT_A_HASH}",
        "tls_server_config.max_version (line 4): invalid value 'TLS14'",
        "http_server_config.http3 (line 6): unknown key",
    ],
    "invalid-cert-file-missing.yml": [
        f"tls_server_config.cert_file (line 2): cannot load the certificate "
        f"'{DATA / 'missing.crt'}' with the key '{DATA / 'missing.key'}': "
        "No such file or directory"
    ],
}


def test_every_invalid_file_is_in_the_table() -> None:
    assert {p.name for p in DATA.glob("invalid-*.yml")} == set(INVALID)


@pytest.mark.parametrize(("name", "expected"), sorted(INVALID.items()))
def test_invalid_web_config(name: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_web_config(DATA / name)
    assert caught.value.source == str(DATA / name)
    assert len(caught.value.problems) == len(expected), caught.value.problems
    for problem, fragment in zip(caught.value.problems, expected, strict=True):
        assert problem.startswith(fragment), (problem, fragment)


def test_secrets_typed_in_the_wrong_place_are_not_echoed() -> None:
    for name, secret in [
        ("invalid-plaintext-password.yml", "hunter2"),
        ("invalid-inline-key.yml", "SECRETKEYMATERIAL"),
        ("invalid-many-problems.yml", "not-a-hash"),
    ]:
        with pytest.raises(ConfigError) as caught:
            load_web_config(DATA / name)
        assert secret not in str(caught.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file: No such file or directory"):
        load_web_config(tmp_path / "nope.yml")


def test_an_empty_file_means_no_tls_and_no_users(tmp_path: Path) -> None:
    (tmp_path / "web.yml").write_text("")
    config = load_web_config(tmp_path / "web.yml")
    assert config.ssl_context is None and not config.users
    assert config.describe() == "no TLS, 0 basic auth users"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued | Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder, "main")
    other = CertificateAuthority(folder, "other")
    return {
        "folder": folder,
        "ca": ca.cert,
        "server": ca.issue("server", server=True),
        "other-server": other.issue("other-server", server=True),
    }


def _write(folder: Path, document: dict[str, object]) -> Path:
    path = folder / "web.yml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_tls_files_are_relative_to_the_web_config_file(pki: dict[str, Issued | Path]) -> None:
    folder = pki["folder"]
    assert isinstance(folder, Path)
    path = _write(
        folder,
        {
            "tls_server_config": {
                "cert_file": "server.crt",
                "key_file": "server.key",
                "client_auth_type": "RequireAndVerifyClientCert",
                "client_ca_file": "main-ca.crt",
                "min_version": "TLS13",
            },
            "http_server_config": {"headers": {"X-Frame-Options": "deny"}},
        },
    )
    config = load_web_config(path)
    context = config.ssl_context
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert context.maximum_version == ssl.TLSVersion.TLSv1_3
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "main test CA"),),)]
    assert config.headers == {"X-Frame-Options": "deny"}
    assert config.describe() == "TLS with client certificates, 0 basic auth users"


def test_a_key_that_does_not_match_the_certificate(pki: dict[str, Issued | Path]) -> None:
    folder = pki["folder"]
    assert isinstance(folder, Path)
    path = _write(
        folder, {"tls_server_config": {"cert_file": "server.crt", "key_file": "other-server.key"}}
    )
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    (problem,) = caught.value.problems
    assert problem.startswith(
        f"tls_server_config.cert_file (line 2): cannot load the certificate "
        f"'{folder / 'server.crt'}' with the key '{folder / 'other-server.key'}': "
    )
    assert "KEY_VALUES_MISMATCH" in problem or "key values mismatch" in problem
    assert "PRIVATE KEY" not in problem


def test_a_ca_file_that_is_not_pem(pki: dict[str, Issued | Path]) -> None:
    folder = pki["folder"]
    assert isinstance(folder, Path)
    (folder / "junk.pem").write_text("no certificate here\n")
    path = _write(
        folder,
        {
            "tls_server_config": {
                "cert_file": "server.crt",
                "key_file": "server.key",
                "client_auth_type": "VerifyClientCertIfGiven",
                "client_ca_file": "junk.pem",
            }
        },
    )
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    (problem,) = caught.value.problems
    assert problem.startswith(
        f"tls_server_config.client_ca_file (line 4): cannot load CA certificates from "
        f"'{folder / 'junk.pem'}': "
    )


def test_http2_true_warns_that_only_http1_is_served(tmp_path: Path) -> None:
    path = _write(tmp_path, {"http_server_config": {"http2": True}})
    assert load_web_config(path).warnings == (
        f"{path}: http_server_config.http2 is true but this exporter serves HTTP/1.1 only",
    )
    path = _write(tmp_path, {"http_server_config": {"http2": False}})
    assert load_web_config(path).warnings == ()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _security(tmp_path: Path, users: dict[str, str]) -> WebSecurity:
    path = _write(tmp_path, {"basic_auth_users": users})
    return WebSecurity.load(path)


async def test_basic_auth_accepts_only_the_right_password(tmp_path: Path) -> None:
    # bob's hash as htpasswd writes it ($2y$), alice's as Python's bcrypt does ($2b$).
    bob = bcrypt_hash("b").replace("$2b$", "$2y$", 1)
    security = _security(tmp_path, {"alice": bcrypt_hash("wonder:land"), "bob": bob})
    try:
        assert await security.authenticated(_basic("alice", "wonder:land"))
        assert await security.authenticated(_basic("bob", "b"))
        for header in [
            None,
            "",
            _basic("alice", "wonder"),
            _basic("alice", "b"),
            _basic("carol", "wonder:land"),
            _basic("ALICE", "wonder:land"),
            "Bearer abc",
            "Basic !!!not-base64",
            "Basic " + base64.b64encode(b"no-colon").decode(),
            _basic("alice", "x" * 100),  # over bcrypt's 72 bytes
        ]:
            assert not await security.authenticated(header), header
    finally:
        security.close()


async def test_no_users_means_no_authentication(tmp_path: Path) -> None:
    security = _security(tmp_path, {})
    try:
        assert await security.authenticated(None)
    finally:
        security.close()


async def test_the_cache_keeps_no_password_and_ends_with_a_reload(tmp_path: Path) -> None:
    security = _security(tmp_path, {"alice": bcrypt_hash("first-password")})
    try:
        assert await security.authenticated(_basic("alice", "first-password"))
        cache = security._cache
        assert len(cache) == 1
        assert all(b"first-password" not in key + value for key, value in cache.items())
        # The users change: the cached success must not outlive the hash it was checked against.
        security.apply(
            load_web_config(
                _write(tmp_path, {"basic_auth_users": {"alice": bcrypt_hash("second")}})
            )
        )
        assert not await security.authenticated(_basic("alice", "first-password"))
        assert await security.authenticated(_basic("alice", "second"))
    finally:
        security.close()


async def _median_seconds(security: WebSecurity, header: str) -> float:
    times = []
    for _ in range(5):
        started = time.perf_counter()
        assert not await security.authenticated(header)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def test_an_unknown_user_costs_a_bcrypt_round_like_a_wrong_password(tmp_path: Path) -> None:
    # Cost 8 (~15 ms) against a dict lookup (~1 µs): the gap shows even on a busy machine.
    security = _security(tmp_path, {"alice": bcrypt_hash("right", cost=8)})
    try:
        wrong_password = await _median_seconds(security, _basic("alice", "wrong"))
        unknown_user = await _median_seconds(security, _basic("mallory", "wrong"))
        assert wrong_password > 0.002
        assert unknown_user > wrong_password / 3, (unknown_user, wrong_password)
    finally:
        security.close()


async def test_checks_run_off_the_event_loop(tmp_path: Path) -> None:
    security = _security(tmp_path, {"alice": bcrypt_hash("right", cost=10)})
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        started = time.perf_counter()
        assert not await security.authenticated(_basic("alice", "wrong"))
        elapsed = time.perf_counter() - started
    finally:
        task.cancel()
        security.close()
    # The loop kept turning while bcrypt ran (a blocking check would leave ticks at 0 or 1).
    assert elapsed > 0.02 and ticks >= 2, (elapsed, ticks)


def test_config_check_validates_the_web_config_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = Path(__file__).parent.parent / "testdata" / "config" / "valid-minimal.yml"
    broken = DATA / "invalid-plaintext-password.yml"
    args = ["--config.check", f"--config.file={config}"]
    assert main([*args, f"--web.config.file={broken}"]) == 1
    err = capsys.readouterr().err
    assert f"{broken}: 1 problem" in err and "basic_auth_users.prometheus (line 2)" in err
    assert "hunter2" not in err
    good = _write(tmp_path, {"basic_auth_users": {"prometheus": bcrypt_hash("x")}})
    assert main([*args, f"--web.config.file={good}"]) == 0
    assert f"{good}: valid (no TLS, 1 basic auth user)" in capsys.readouterr().out
