"""Configuration: one invalid file per error class, each mapped to the message it must produce."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.config import ConfigError, format_duration, load_file, load_text, parse_duration

DATA = Path(__file__).parent.parent / "testdata" / "config"

# file -> fragments that must all appear in the error (path, line and what is wrong)
INVALID = {
    "invalid-unknown-key.yml": ["checks.clock.max_skeww (line 5): unknown key"],
    "invalid-unknown-key-in-list.yml": ["exchange_servers.static[1].adress (line 6): unknown key"],
    "invalid-wrong-type.yml": ["checks.clock.enabled (line 4):", "valid boolean"],
    "invalid-bad-duration.yml": ["checks.clock.max_skew (line 3): invalid duration '5 minutes'"],
    "invalid-duration-without-unit.yml": [
        "ldap.timeout (line 4): expected a duration with a unit such as 30s or 5m, got 10"
    ],
    "invalid-zero-duration.yml": [
        "checks.clock.timeout (line 3): duration '0s' must be greater than zero"
    ],
    "invalid-missing-realm.yml": ["realm: required key is missing"],
    "invalid-bad-choice.yml": [
        "domain_controllers.discover (line 3): invalid value 'netbios'",
        "'dns', 'ldap' or 'none'",
    ],
    "invalid-host-name.yml": ["domain_controllers.static[0].name (line 3): invalid host name"],
    "invalid-ip-address.yml": [
        "exchange_servers.static[0].address (line 3): invalid IP address '10.0.0.300'"
    ],
    "invalid-port.yml": ["checks.smtp.ports[1] (line 3):", "less than or equal to 65535"],
    "invalid-kerberos-port.yml": ["checks.kerberos.ports[1] (line 3): invalid value '749/tcp'"],
    "invalid-encryption-types.yml": [
        "checks.spn.default_encryption_types (line 3): input should be greater than or equal to 1"
    ],
    "invalid-ldap-url.yml": ["ldap.url (line 3): invalid value 'https://dc01.corp.example.com'"],
    "invalid-inline-password.yml": [
        "ldap.password (line 5): inline passwords are not accepted",
        "password_file",
    ],
    "invalid-two-password-sources.yml": [
        "ldap (line 3): set only one of password_file, password_env and password_credential"
    ],
    "invalid-user-without-password.yml": [
        "ldap (line 3): user 'svc-exporter@corp.example.com' needs a password_file, a password_env "
        "or a password_credential"
    ],
    "invalid-password-file-missing.yml": [
        "ldap.password_file: cannot read 'no-such-password-file': No such file or directory"
    ],
    "invalid-password-env-unset.yml": [
        "ldap.password_env: the environment variable it names is not set or empty"
    ],
    "invalid-password-credential-unset.yml": [
        "ldap.password_credential: $CREDENTIALS_DIRECTORY is not set",
        "LoadCredential=NAME:PATH",
    ],
    "invalid-password-credential-name.yml": [
        "ldap.password_credential (line 5): invalid value (not shown)"
    ],
    "invalid-recursive-alias.yml": ["checks.clock.clock (line 3): unknown key"],
    "invalid-duplicate-server.yml": ["server 'dc01.corp.example.com' is listed more than once"],
    "invalid-duplicate-key.yml": ["checks.clock (line 4): duplicate key"],
    "invalid-yaml-syntax.yml": ["line 4, column 7: not valid YAML: expected ',' or '}'"],
    "invalid-empty.yml": ["the file is empty"],
    "invalid-not-a-mapping.yml": ["expected a mapping of keys at the top level, got list"],
    "invalid-realm.yml": ["realm (line 1): invalid realm 'CORP EXAMPLE'"],
    "invalid-many-problems.yml": [
        "4 problems",
        "ldap.timeout (line 4)",
        "domain_controllers.discover (line 6)",
        "checks.clock.max_skew (line 8)",
        "checks.clock.colour (line 8): unknown key",
    ],
}


def test_every_invalid_file_has_an_expectation() -> None:
    assert {p.name for p in DATA.glob("invalid-*.yml")} == set(INVALID)


@pytest.mark.parametrize(("name", "fragments"), sorted(INVALID.items()))
def test_invalid_file_gives_its_message(name: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_file(DATA / name, env={})
    message = str(caught.value)
    assert message.startswith(str(DATA / name))
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_secrets_never_appear_in_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        load_file(DATA / "invalid-inline-password.yml", env={})
    assert "Winter2026!" not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "realm: x.test\nldap: {url: 'ldaps://dc.x.test', user: u, password_env: 'Hunter2!secret'}\n",
        "realm: x.test\nldap: {url: 'ldaps://dc.x.test', user: u, password_env: Hunter2secret}\n",
        "realm: x.test\nldap: {url: 'ldaps://dc.x.test', user: u, password_file: ['Hunter2secret']}\n",
    ],
)
def test_a_password_typed_into_the_wrong_key_is_not_echoed(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(text, env={})
    assert "Hunter2" not in str(caught.value)


def test_security_weakening_settings_are_warned_about() -> None:
    text = "realm: x.test\nldap: {url: 'ldap://dc.x.test', user: u, password_env: PW, tls_verify: false}\n"
    warnings = load_text(text, env={"PW": "pw"}).warnings()
    assert any("tls_verify is false" in w for w in warnings)
    assert any("without start_tls" in w for w in warnings)
    assert load_file(DATA / "valid-full.yml", env={}).warnings() == []


def test_full_example_loads_and_reads_the_password_relative_to_the_file() -> None:
    settings = load_file(DATA / "valid-full.yml", env={})
    assert settings.realm == "CORP.EXAMPLE.COM"
    assert settings.domain == "corp.example.com"
    assert settings.ldap is not None and settings.ldap.password is not None
    assert settings.ldap.password.get_secret_value() == "correct horse battery staple"
    assert settings.checks.clock.max_skew == 300
    assert settings.checks.duplicate_spn.refresh_interval == 1800
    assert [s.name for s in settings.exchange_servers.static] == ["exch01.corp.example.com"]


def test_redacted_config_hides_the_password_and_shows_durations_as_written() -> None:
    settings = load_file(DATA / "valid-full.yml", env={})
    shown = settings.redacted()
    assert "correct horse battery staple" not in repr(shown)
    assert "correct horse battery staple" not in repr(settings)
    assert shown["ldap"]["password"] == "<secret>"
    assert shown["checks"]["clock"]["max_skew"] == "5m"
    assert shown["ldap"]["timeout"] == "10s"


def test_password_from_environment() -> None:
    text = "realm: x.test\nldap: {url: 'ldaps://dc.x.test', user: u, password_env: PW}\n"
    settings = load_text(text, env={"PW": "s3cret"})
    assert settings.ldap is not None and settings.ldap.password is not None
    assert settings.ldap.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings.redacted())


CREDENTIAL_CONFIG = (
    "realm: x.test\nldap: {url: 'ldaps://dc.x.test', user: u, password_credential: ldap-password}\n"
)


def test_password_from_a_systemd_credential(tmp_path: Path) -> None:
    # What systemd's LoadCredential=ldap-password:/etc/... leaves for the service.
    (tmp_path / "ldap-password").write_text("s3cret-from-systemd\n")
    settings = load_text(CREDENTIAL_CONFIG, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert settings.ldap is not None and settings.ldap.password is not None
    assert settings.ldap.password.get_secret_value() == "s3cret-from-systemd"
    shown = settings.redacted()
    assert shown["ldap"]["password"] == "<secret>"
    assert shown["ldap"]["password_credential"] == "ldap-password"
    assert "s3cret-from-systemd" not in repr(shown) + repr(settings)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "no credential of that name in $CREDENTIALS_DIRECTORY ("),
        ("", "the credential is empty"),
        (b"\xff\xfe", "the credential is not UTF-8 text"),
    ],
)
def test_credential_problems_name_the_key_and_never_the_secret(
    tmp_path: Path, content: str | bytes | None, fragment: str
) -> None:
    if isinstance(content, str):
        (tmp_path / "ldap-password").write_text(content)
    elif isinstance(content, bytes):
        (tmp_path / "ldap-password").write_bytes(content)
    (tmp_path / "other").write_text("Hunter2secret")
    with pytest.raises(ConfigError) as caught:
        load_text(CREDENTIAL_CONFIG, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    message = str(caught.value)
    assert f"ldap.password_credential: {fragment}" in message
    assert str(tmp_path) in message or content is not None
    assert "Hunter2" not in message


def test_a_password_typed_into_password_credential_is_not_echoed(tmp_path: Path) -> None:
    text = "realm: x.test\nldap: {url: 'ldaps://dc.x.test', user: u, password_credential: Hunter2secret}\n"
    with pytest.raises(ConfigError) as caught:
        load_text(text, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert "ldap.password_credential: no credential of that name" in str(caught.value)
    assert "Hunter2" not in str(caught.value)


def test_defaults_follow_the_contract() -> None:
    settings = load_file(DATA / "valid-minimal.yml", env={})
    assert settings.realm == "CORP.EXAMPLE.TEST"
    assert settings.checks.clock.sources == ["ntp", "kerberos", "smtp", "ldap"]
    assert settings.checks.kerberos.ports == ["88/udp", "88/tcp", "464/udp", "464/tcp"]
    assert settings.checks.smtp.ports == [25, 2525]
    assert settings.scrape.timeout_offset == 0.5


def test_server_names_are_lower_case_fqdns() -> None:
    settings = load_text("realm: x.test\ndomain_controllers: {static: [{name: DC1.X.Test.}]}\n")
    assert settings.domain_controllers.static[0].name == "dc1.x.test"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1m30s", 90), ("250ms", 0.25), ("2h", 7200), ("1.5s", 1.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "m5", "5 m", "5mm", "-5s", "5s5"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(300, "5m"), (0.5, "500ms"), (90, "90s"), (3600, "1h")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
