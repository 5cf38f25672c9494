"""Configuration: YAML text -> validated, frozen settings, or one ConfigError listing every problem.

Every problem names its YAML path (``checks.clock.timeout``) and, where the file is known, its
line. Secrets are read from a file or the environment at load time and kept in private
attributes, so they never reach ``model_dump()``, ``/config``, logs or error messages.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "ConfigError",
    "Settings",
    "format_duration",
    "load_file",
    "load_text",
    "parse_duration",
    "parse_yaml_mapping",
    "read_config_text",
    "validate_mapping",
]

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
# fullmatch, not match with "$": "$" also matches before a final newline.
_HOSTNAME_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every reason, one line each."""

    def __init__(self, source: str, problems: Iterable[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        lines = "\n".join(f"  - {p}" for p in self.problems)
        count = len(self.problems)
        return f"{self.source}: {count} problem{'s' if count != 1 else ''}:\n{lines}"


def parse_duration(value: object) -> float:
    """Parse a Prometheus-style duration (``30s``, ``5m``, ``1m30s``, ``250ms``) into seconds."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"expected a duration with a unit such as 30s or 5m, got {value!r}")
    text = value.strip()
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(
            f"invalid duration {value!r}: expected a number and a unit, such as 30s or 5m"
        )
    return total


def format_duration(seconds: float) -> str:
    """The inverse of :func:`parse_duration` for display, e.g. 300.0 -> ``5m``."""
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit in ("w", "d", "h", "m"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"duration {value!r} must be greater than zero")
    return seconds


Duration = Annotated[float, BeforeValidator(_positive_duration)]


def _hostname(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a host name, got {value!r}")
    name = value.strip().rstrip(".").lower()
    if (
        not name
        or len(name) > 253
        or not all(_HOSTNAME_LABEL.fullmatch(p) for p in name.split("."))
    ):
        raise ValueError(f"invalid host name {value!r}")
    return name


def _ip_address(value: object) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise ValueError(f"invalid IP address {value!r}") from None


HostName = Annotated[str, BeforeValidator(_hostname)]
IPAddress = Annotated[str, BeforeValidator(_ip_address)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class LdapSettings(_Model):
    url: Annotated[str, Field(pattern=r"^ldaps?://[^/\s]+/?$")]
    user: str | None = None
    password_file: Path | None = None
    password_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    # A systemd credential (LoadCredential=NAME:PATH): the file NAME in $CREDENTIALS_DIRECTORY.
    password_credential: (
        Annotated[str, Field(pattern=r"^[A-Za-z0-9_@-][A-Za-z0-9_.@-]*$")] | None
    ) = None
    ca_file: Path | None = None
    tls_verify: bool = True
    start_tls: bool = False
    global_catalog_url: Annotated[str, Field(pattern=r"^ldaps?://[^/\s]+/?$")] | None = None
    timeout: Duration = 10.0

    _password: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one_secret_source(self) -> LdapSettings:
        sources = [self.password_file, self.password_env, self.password_credential]
        if sum(source is not None for source in sources) > 1:
            raise ValueError("set only one of password_file, password_env and password_credential")
        if self.user and all(source is None for source in sources):
            raise ValueError(
                f"user {self.user!r} needs a password_file, a password_env or a password_credential"
            )
        return self

    @property
    def password(self) -> SecretStr | None:
        """The bind password, read at load time; ``None`` when no user is configured."""
        return self._password


class ServerEntry(_Model):
    name: HostName
    address: IPAddress | None = None
    ports: dict[Literal["ntp", "kerberos", "kpasswd", "ldap", "smtp"], Port] = Field(
        default_factory=dict
    )


class DomainControllers(_Model):
    discover: Literal["dns", "ldap", "none"] = "none"
    refresh_interval: Duration = 300.0
    static: list[ServerEntry] = Field(default_factory=list)


class ExchangeServers(_Model):
    discover: Literal["ldap", "none"] = "none"
    refresh_interval: Duration = 300.0
    static: list[ServerEntry] = Field(default_factory=list)


class DnsSettings(_Model):
    # Empty: the host's resolver configuration (/etc/resolv.conf).
    nameservers: list[IPAddress] = Field(default_factory=list)
    port: Port = 53
    timeout: Duration = 5.0


ClockSource = Literal["ntp", "kerberos", "smtp", "ldap"]
_ALL_CLOCK_SOURCES: tuple[ClockSource, ...] = ("ntp", "kerberos", "smtp", "ldap")


class ClockCheck(_Model):
    enabled: bool = True
    sources: list[ClockSource] = Field(default_factory=lambda: list(_ALL_CLOCK_SOURCES))
    max_skew: Duration = 300.0
    # A skew this close to max_skew already counts as a problem: clocks drift on.
    warning_margin: Annotated[float, BeforeValidator(parse_duration)] = 60.0
    timeout: Duration = 3.0
    ntp_port: Port = 123


class KerberosCheck(_Model):
    enabled: bool = True
    ports: list[Annotated[str, Field(pattern=r"^(88|464)/(udp|tcp)$")]] = Field(
        default_factory=lambda: ["88/udp", "88/tcp", "464/udp", "464/tcp"]
    )
    timeout: Duration = 3.0


class SmtpCheck(_Model):
    enabled: bool = True
    ports: list[Port] = Field(default_factory=lambda: [25, 2525])
    timeout: Duration = 5.0
    # The name the probe gives in EHLO; default: this host's name (no DNS lookup for it).
    ehlo_name: Annotated[str, BeforeValidator(_hostname)] | None = None


class SpnCheck(_Model):
    enabled: bool = True
    service_classes: list[Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9-]*$")]] = Field(
        default_factory=lambda: ["SMTP", "SMTPSVC"]
    )
    refresh_interval: Duration = 300.0
    # What the KDCs assume for an account whose msDS-SupportedEncryptionTypes is unset: their
    # DefaultDomainSupportedEncTypes registry value (0x27 since the November 2022 updates).
    default_encryption_types: Annotated[int, Field(ge=1, le=0xFFFFFFFF)] = 0x27


class DuplicateSpnCheck(_Model):
    enabled: bool = True
    scope: Literal["forest", "domain"] = "forest"
    refresh_interval: Duration = 1800.0


class ReplicationCheck(_Model):
    enabled: bool = True
    # Each run reads every DC's inbound replication state: a few LDAP reads per DC.
    refresh_interval: Duration = 300.0
    # A partner whose last success is older than this is a problem (repadmin /replsummary's largest delta).
    stale_after: Duration = 3600.0


class QueueSource(_Model):
    server: HostName
    path: Path


class QueuesCheck(_Model):
    # Files written on each Exchange server and read from a share the exporter mounts.
    snapshots: list[QueueSource] = Field(default_factory=list)  # path: the snapshot JSON file
    protocol_logs: list[QueueSource] = Field(default_factory=list)  # path: a ProtocolLog folder
    poll_interval: Duration = 15.0  # how often snapshots and protocol logs are read
    # Where protocol-log read positions survive a restart; None keeps them in memory only.
    state_file: Path | None = None
    max_line_length: Annotated[int, Field(ge=256, le=1_048_576)] = 16384


# Encryption types the service-ticket check may use (MIT names). The default mirrors Windows'
# own (AES and RC4): a KDC that would give Exchange an RC4 ticket gives the exporter one too.
KerberosEnctype = Literal[
    "aes256-cts-hmac-sha1-96",
    "aes128-cts-hmac-sha1-96",
    "aes256-cts-hmac-sha384-192",
    "aes128-cts-hmac-sha256-128",
    "arcfour-hmac",
]
_DEFAULT_ENCTYPES: tuple[KerberosEnctype, ...] = (
    "aes256-cts-hmac-sha1-96",
    "aes128-cts-hmac-sha1-96",
    "arcfour-hmac",
)


class ServiceTicketsCheck(_Model):
    """A service ticket to each Exchange server's SPNs through each DC's KDC, every scrape."""

    # None: on when the exporter has Kerberos credentials (ldap.user with a password, or a
    # keytab); true without them reports reason="no_credentials" for every ticket.
    enabled: bool | None = None
    service_classes: list[Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9-]*$")]] = Field(
        default_factory=lambda: ["SMTPSVC", "SMTP"], min_length=1
    )
    # The exporter's own Kerberos principal; default: ldap.user, in the realm.
    principal: Annotated[str, Field(pattern=r"^[^\s@/\\]+(@[^\s@/\\]+)?$")] | None = None
    # A keytab for the principal (relative: to the configuration file); default: ldap's password.
    keytab_file: Path | None = None
    encryption_types: list[KerberosEnctype] = Field(
        default_factory=lambda: list(_DEFAULT_ENCTYPES), min_length=1
    )
    # The lifetime asked for the exporter's TGT; None: the KDC's maximum (10 h in AD).
    ticket_lifetime: Duration | None = None
    timeout: Duration = 5.0
    # Requests in flight at once per DC (threads of its Kerberos worker process).
    max_concurrency: Annotated[int, Field(ge=1, le=64)] = 4

    _keytab: Path | None = PrivateAttr(default=None)
    _has_credentials: bool = PrivateAttr(default=False)

    @property
    def keytab(self) -> Path | None:
        """``keytab_file`` resolved against the configuration file's folder at load time."""
        return self._keytab

    @property
    def active(self) -> bool:
        """``enabled``, or when unset, whether there are credentials to ask with."""
        return self._has_credentials if self.enabled is None else self.enabled


class Checks(_Model):
    clock: ClockCheck = Field(default_factory=ClockCheck)
    kerberos: KerberosCheck = Field(default_factory=KerberosCheck)
    smtp: SmtpCheck = Field(default_factory=SmtpCheck)
    spn: SpnCheck = Field(default_factory=SpnCheck)
    duplicate_spn: DuplicateSpnCheck = Field(default_factory=DuplicateSpnCheck)
    replication: ReplicationCheck = Field(default_factory=ReplicationCheck)
    queues: QueuesCheck = Field(default_factory=QueuesCheck)
    service_tickets: ServiceTicketsCheck = Field(default_factory=ServiceTicketsCheck)


class ScrapeSettings(_Model):
    # Prometheus' own default scrape_timeout, used when a request has no timeout header.
    default_timeout: Duration = 10.0
    # Subtracted from the scrape timeout so the answer reaches Prometheus in time.
    timeout_offset: Annotated[float, BeforeValidator(parse_duration)] = 0.5
    max_concurrency: Annotated[int, Field(ge=1, le=100_000)] = 256


def _probe_allow_entry(value: object) -> str:
    """A host name, a ``*.suffix`` wildcard, an IP address or a CIDR block (normalised)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a host name, *.domain, an IP address or a CIDR, got {value!r}")
    text = value.strip().lower()
    if "/" in text or ":" in text or text.replace(".", "").isdigit():
        try:
            return str(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            raise ValueError(f"invalid IP address or CIDR {value!r}: {exc}") from None
    if text.startswith("*."):
        return "*." + _hostname(text[2:])
    return _hostname(text)


class ProbeSettings(_Model):
    """``/probe``: always the inventory's servers; others only when ``allow`` admits them."""

    enabled: bool = True
    # Host names (exact), *.suffix (any name below it) and CIDRs (IP literals only: a name is
    # never resolved to decide). Empty: only the inventory's servers.
    allow: list[Annotated[str, BeforeValidator(_probe_allow_entry)]] = Field(default_factory=list)
    max_concurrency: Annotated[int, Field(ge=1, le=10_000)] = 32


class Settings(_Model):
    realm: Annotated[str, Field(min_length=1)]
    ldap: LdapSettings | None = None
    dns: DnsSettings = Field(default_factory=DnsSettings)
    domain_controllers: DomainControllers = Field(default_factory=DomainControllers)
    exchange_servers: ExchangeServers = Field(default_factory=ExchangeServers)
    checks: Checks = Field(default_factory=Checks)
    scrape: ScrapeSettings = Field(default_factory=ScrapeSettings)
    probe: ProbeSettings = Field(default_factory=ProbeSettings)

    @field_validator("realm")
    @classmethod
    def _realm(cls, value: str) -> str:
        realm = value.strip().upper()
        try:
            _hostname(realm.lower())
        except ValueError:
            raise ValueError(
                f"invalid realm {value!r}: expected the AD DNS domain in upper case"
            ) from None
        return realm

    @model_validator(mode="after")
    def _unique_servers(self) -> Settings:
        seen: set[str] = set()
        for entry in (*self.domain_controllers.static, *self.exchange_servers.static):
            if entry.name in seen:
                raise ValueError(f"server {entry.name!r} is listed more than once")
            seen.add(entry.name)
        return self

    @property
    def domain(self) -> str:
        """The AD DNS domain: the realm in lower case."""
        return self.realm.lower()

    def warnings(self) -> list[str]:
        """Settings that work but weaken security, to be logged at every load."""
        found = []
        if self.ldap is not None and not self.ldap.tls_verify:
            found.append("ldap.tls_verify is false: the DC's certificate is not checked")
        if (
            self.ldap is not None
            and self.ldap.user
            and self.ldap.url.startswith("ldap://")
            and not self.ldap.start_tls
        ):
            found.append(
                "ldap.url is ldap:// without start_tls: the bind password would cross the network in clear"
            )
        return found

    def redacted(self) -> dict[str, Any]:
        """The effective configuration for display: durations as text, secrets never included."""
        dumped = self.model_dump(mode="json")
        if self.ldap is not None and self.ldap.password is not None:
            dumped["ldap"]["password"] = "<secret>"
        return _durations_as_text(self, dumped)


def _durations_as_text(model: BaseModel, dumped: dict[str, Any]) -> dict[str, Any]:
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            _durations_as_text(value, dumped[name])
        elif any(
            isinstance(m, BeforeValidator) and m.func in (_positive_duration, parse_duration)
            for m in info.metadata
        ):
            dumped[name] = format_duration(value)
    return dumped


@dataclass(frozen=True)
class _Located:
    """Line numbers of every YAML path, to point problems at the right line."""

    lines: dict[tuple[str | int, ...], int]

    def line_of(self, path: tuple[str | int, ...]) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def where(self, path: tuple[str | int, ...]) -> str:
        """``path`` dotted, with its line: ``ldap.port (line 7)``."""
        line = self.line_of(path)
        return _dotted(path) + (f" (line {line})" if line else "")


def _index_lines(
    node: yaml.Node,
    path: tuple[str | int, ...],
    out: dict[tuple[str | int, ...], int],
    dupes: list[str],
    seen_nodes: set[int] | None = None,
) -> None:
    # An alias points at a node indexed already: following it again would loop (`a: &x [*x]`)
    # or blow up exponentially ("billion laughs").
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                dupes.append(
                    f"{_dotted((*path, key))} (line {key_node.start_mark.line + 1}): duplicate key"
                )
            seen.add(key)
            out[(*path, key)] = key_node.start_mark.line + 1
            _index_lines(value_node, (*path, key), out, dupes, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, (*path, index), out, dupes, seen_nodes)


def _dotted(path: Iterable[str | int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


# Keys whose values may be a secret typed in the wrong place: never echoed in a message.
_SECRET_NEIGHBOURS = frozenset({"password_env", "password_file", "password_credential"})


def _describe(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    message = message[:1].lower() + message[1:]
    if kind in ("string_pattern_mismatch", "literal_error", "enum"):
        if _SECRET_NEIGHBOURS & {str(part) for part in error["loc"]}:
            return f"invalid value (not shown): {message}"
        return f"invalid value {error.get('input')!r}: {message}"
    return message


def _read_secrets(settings: Settings, env: Mapping[str, str], base_dir: Path) -> list[str]:
    ldap = settings.ldap
    if ldap is None:
        return []
    if ldap.password_file is not None:
        # A relative path is relative to the configuration file, not to the working directory.
        try:
            secret = (base_dir / ldap.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            return [f"ldap.password_file: cannot read {str(ldap.password_file)!r}: {exc.strerror}"]
        except UnicodeDecodeError:
            return [f"ldap.password_file: {str(ldap.password_file)!r} is not UTF-8 text"]
        if not secret:
            return [f"ldap.password_file: {str(ldap.password_file)!r} is empty"]
        ldap._password = SecretStr(secret)
    elif ldap.password_env is not None:
        secret = env.get(ldap.password_env, "")
        if not secret:
            # The name is not echoed: a password pasted here by mistake must not reach a log.
            return ["ldap.password_env: the environment variable it names is not set or empty"]
        ldap._password = SecretStr(secret)
    elif ldap.password_credential is not None:
        problem, secret = _read_credential(ldap.password_credential, env)
        if problem:
            return [f"ldap.password_credential: {problem}"]
        ldap._password = SecretStr(secret)
    return []


def _find_keytab(settings: Settings, base_dir: Path) -> list[str]:
    """checks.service_tickets: the keytab's path, and whether there are credentials at all."""
    tickets = settings.checks.service_tickets
    ldap = settings.ldap
    tickets._has_credentials = tickets.keytab_file is not None or (
        ldap is not None and bool(ldap.user) and ldap.password is not None
    )
    if tickets.keytab_file is None:
        return []
    path = base_dir / tickets.keytab_file
    if not path.is_file() or not os.access(path, os.R_OK):
        return [f"checks.service_tickets.keytab_file: cannot read {str(tickets.keytab_file)!r}"]
    tickets._keytab = path.resolve()
    return []


def _read_credential(name: str, env: Mapping[str, str]) -> tuple[str, str]:
    """A systemd credential's text, or a problem that names neither the credential nor its text.

    systemd (LoadCredential=, LoadCredentialEncrypted=, SetCredential=) puts each credential in
    a file of its name in a private folder and names that folder in $CREDENTIALS_DIRECTORY.
    The name is not echoed, for the same reason as password_env's: it might be a pasted password.
    """
    directory = env.get("CREDENTIALS_DIRECTORY", "")
    if not directory:
        return (
            "$CREDENTIALS_DIRECTORY is not set: run the exporter as a systemd service with "
            "LoadCredential=NAME:PATH (see deploy/systemd/), or use password_file",
            "",
        )
    try:
        secret = (Path(directory) / name).read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        return (
            f"no credential of that name in $CREDENTIALS_DIRECTORY ({directory}): the unit "
            "needs a LoadCredential= line of the same name",
            "",
        )
    except OSError as exc:
        return f"cannot read it from $CREDENTIALS_DIRECTORY ({directory}): {exc.strerror}", ""
    except UnicodeDecodeError:
        return "the credential is not UTF-8 text", ""
    if not secret:
        return "the credential is empty", ""
    return "", secret


def parse_yaml_mapping(
    text: str, source: str, *, empty: str | None
) -> tuple[dict[str, Any], _Located, list[str]]:
    """Parse a YAML file whose top level is a mapping of keys.

    Returns the mapping, the line of every YAML path and the duplicate keys as problems. Raises
    :class:`ConfigError` on text that is not YAML or not a mapping, and on an empty file when
    ``empty`` gives the problem to report (``None``: an empty file is an empty mapping).
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{where}not valid YAML: {problem}"]) from None
    if data is None:
        if empty is not None:
            raise ConfigError(source, [empty])
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            source, [f"expected a mapping of keys at the top level, got {type(data).__name__}"]
        )
    lines: dict[tuple[str | int, ...], int] = {}
    problems: list[str] = []
    if root is not None:
        _index_lines(root, (), lines, problems)
    return data, _Located(lines), problems


_Validated = TypeVar("_Validated", bound=BaseModel)


def validate_mapping(
    model: type[_Validated],
    data: dict[str, Any],
    source: str,
    located: _Located,
    problems: list[str],
) -> _Validated:
    """``model`` from ``data``, or :class:`ConfigError` with ``problems`` and every validation
    error, each named by its YAML path and line."""
    try:
        return model.model_validate(data)
    except RecursionError:
        raise ConfigError(source, ["the file nests too deeply (a recursive YAML alias?)"]) from None
    except ValidationError as exc:
        for error in exc.errors():
            problems.append(f"{located.where(tuple(error['loc']))}: {_describe(error)}")
        raise ConfigError(source, problems) from None


def load_text(
    text: str,
    source: str = "<config>",
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> Settings:
    """Validate configuration text; raise :class:`ConfigError` naming every problem."""
    data, located, problems = parse_yaml_mapping(
        text, source, empty="the file is empty: at least 'realm' is required"
    )

    ldap = data.get("ldap")
    if isinstance(ldap, dict) and "password" in ldap:
        # Reported on its own (and dropped) so the rest of the section is still validated.
        line = located.line_of(("ldap", "password"))
        problems.append(
            f"ldap.password (line {line}): inline passwords are not accepted: put the password "
            "in a file (password_file) or an environment variable (password_env)"
        )
        data = {**data, "ldap": {k: v for k, v in ldap.items() if k != "password"}}

    settings = validate_mapping(Settings, data, source, located, problems)
    env = os.environ if env is None else env
    problems.extend(_read_secrets(settings, env, base_dir or Path.cwd()))
    problems.extend(_find_keytab(settings, base_dir or Path.cwd()))
    if problems:
        raise ConfigError(source, problems)
    return settings


def read_config_text(path: str | Path) -> str:
    """A configuration file's text, or :class:`ConfigError` if it cannot be read as UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["the file is not UTF-8 text"]) from None


def load_file(path: str | Path, env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a configuration file."""
    text = read_config_text(path)
    return load_text(text, source=str(path), env=env, base_dir=Path(path).parent)
