"""A Samba AD DC in a folder of its own: provisioned (or copied from a cache), then run as our child.

Provisioning takes about 5 s, so a provisioned folder is kept under ``CACHE_ROOT`` keyed by
everything that shapes it, and each lab gets a copy (tens of milliseconds). Only smb.conf
names the folder, so the copy just needs its paths rewritten. A clone of a DC on another
address is one more copy of the same entry, with its own address, name and services in
smb.conf.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tests.lab import faketime
from tests.lab.directory import ExchangeDirectory, exchange_directory, populate
from tests.lab.errors import LabError
from tests.lab.net import (
    DNS_TYPE_SRV,
    dns_answer_count,
    kdc_error,
    kpasswd_answers,
    root_dse_attribute,
    tcp_accepts,
)
from tests.lab.procs import ManagedProcess, wait_until

log = logging.getLogger("tests.lab")

CACHE_ROOT = Path(os.environ.get("EXCHANGE_AUTH_LAB_CACHE", "/var/tmp/exchange-auth-lab-cache"))
# Bump when the way a cache entry is built changes, so old entries are not reused. (The Exchange
# content written into the domain is in the key through its fingerprint, too.)
CACHE_FORMAT = 2

# Left out: s3fs (smbd, not needed and it died here), nbt and wrepl (NetBIOS broadcasts),
# winbindd, ntp_signd (chrony plays NTP), and dnsupdate, which runs samba_dnsupdate against the
# resolver in /etc/resolv.conf: traffic that would leave loopback.
SERVER_SERVICES = ("rpc", "ldap", "cldap", "kdc", "drepl", "kcc", "dns")

# What each Samba service binds on the DC's address; anything else holding them must go first.
SERVICE_PORTS: dict[str, tuple[tuple[str, int], ...]] = {
    "dns": (("tcp", 53), ("udp", 53)),
    "kdc": (("tcp", 88), ("udp", 88), ("tcp", 464), ("udp", 464)),  # Kerberos and kpasswd
    "rpc": (("tcp", 135),),
    "ldap": (("tcp", 389), ("tcp", 636), ("tcp", 3268), ("tcp", 3269)),
    "cldap": (("udp", 389),),
}


def ports_of(services: Sequence[str]) -> tuple[tuple[str, int], ...]:
    return tuple(port for service in services for port in SERVICE_PORTS.get(service, ()))


DC_PORTS = ports_of(SERVER_SERVICES)


@dataclass(frozen=True)
class DomainControllerSpec:
    """Everything that shapes a provisioned DC folder (and so the cache key)."""

    realm: str
    netbios_domain: str
    host_name: str  # short name, e.g. "dc1"
    address: str

    @property
    def dns_domain(self) -> str:
        return self.realm.lower()

    @property
    def fqdn(self) -> str:
        return f"{self.host_name}.{self.dns_domain}"

    @property
    def exchange_directory(self) -> ExchangeDirectory:
        """The Exchange schema subset, servers, accounts and SPNs written into the domain."""
        return exchange_directory(self.dns_domain)

    def provision_argv(self, targetdir: Path, admin_password: str) -> list[str]:
        return [
            "samba-tool",
            "domain",
            "provision",
            f"--realm={self.realm}",
            f"--domain={self.netbios_domain}",
            "--server-role=dc",
            "--dns-backend=SAMBA_INTERNAL",
            f"--adminpass={admin_password}",
            f"--targetdir={targetdir}",
            f"--host-name={self.host_name}",
            f"--host-ip={self.address}",
            f"--option=netbios name={self.host_name.upper()}",
            f"--option=interfaces={self.address}",
            "--option=bind interfaces only=yes",
            # A later step adds an Exchange schema subset, which Samba refuses without this.
            "--option=dsdb:schema update allowed=true",
        ]

    def cache_key(self) -> str:
        shape = {
            "format": CACHE_FORMAT,
            "samba": samba_version(),
            "argv": self.provision_argv(Path("TARGET"), "PASSWORD"),
            "directory": self.exchange_directory.fingerprint(),
        }
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


@cache
def samba_version() -> str:
    return subprocess.run(
        ["samba", "-V"], capture_output=True, text=True, check=True
    ).stdout.strip()


def generate_password() -> str:
    # Always upper, lower, digit and symbol: Samba's default complexity rule wants three of four.
    return f"Lab!{secrets.token_hex(10)}Zq7"


def _run(argv: Sequence[str], *, what: str, log_path: Path | None = None) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if log_path is not None:
        log_path.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise LabError(f"{what} failed (exit status {result.returncode}):\n{tail}")


def _provision_into(spec: DomainControllerSpec, targetdir: Path, admin_password: str) -> None:
    started = time.monotonic()
    _run(
        spec.provision_argv(targetdir, admin_password),
        what="samba-tool domain provision",
        log_path=targetdir.parent / f"{targetdir.name}-provision.log",
    )
    smb_conf = targetdir / "etc" / "smb.conf"
    # A cached copy may be used long after it was made; the default 42-day maximum password age
    # would then expire Administrator's password under our feet.
    _run(
        [
            "samba-tool",
            "user",
            "setexpiry",
            "Administrator",
            "--noexpiry",
            f"--configfile={smb_conf}",
            "-H",
            str(targetdir / "private" / "sam.ldb"),
        ],
        what="samba-tool user setexpiry",
    )
    _add_exchange_content(spec, targetdir)
    _write_tls_certificate(spec, targetdir / "private" / "tls")
    # Sockets of the provisioning run: useless later, and cp cannot copy them.
    shutil.rmtree(targetdir / "msg.sock", ignore_errors=True)
    log.info("provisioned %s for %s in %.1f s", spec.realm, spec.fqdn, time.monotonic() - started)


# Inside the DC folder, so every copy (dc1, its clone dc2) carries the passwords of its accounts.
ACCOUNT_PASSWORDS_FILE = Path("private") / "lab-account-passwords.json"


def _add_exchange_content(spec: DomainControllerSpec, targetdir: Path) -> None:
    """The Exchange schema subset, organisation, accounts (with keys) and SPNs, duplicates too."""
    started = time.monotonic()
    directory = spec.exchange_directory
    passwords = {
        account.sam_account_name: generate_password()
        for account in directory.accounts
        if account.has_keys
    }
    populate(targetdir, directory, passwords)
    path = targetdir / ACCOUNT_PASSWORDS_FILE
    path.touch(mode=0o600)
    path.write_text(json.dumps(passwords, indent=2, sort_keys=True))
    log.info("added the Exchange content in %.1f s", time.monotonic() - started)


def _write_tls_certificate(spec: DomainControllerSpec, tls_dir: Path) -> None:
    # Samba would generate a 4096-bit key on first start (about 2 s, every lab); doing it once
    # here also gives the certificate the DC's address, so clients may verify it against ca.pem.
    tls_dir.mkdir(parents=True, exist_ok=True)
    key, cert = tls_dir / "key.pem", tls_dir / "cert.pem"
    _run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            f"/CN={spec.fqdn}",
            "-addext",
            f"subjectAltName=DNS:{spec.fqdn},IP:{spec.address}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        what="openssl req (the DC's TLS certificate)",
    )
    key.chmod(0o600)  # Samba refuses a key file others can read
    shutil.copyfile(cert, tls_dir / "ca.pem")


def _runtime_globals(root: Path, services: Sequence[str]) -> dict[str, str]:
    run = root / "run"
    return {
        # Each DC gets its own runtime folders, or a second DC finds the first one's pid file
        # and exits. Samba creates "ntp signd socket directory" itself (0750); it must not exist.
        "pid directory": str(run),
        "ncalrpc dir": str(run / "ncalrpc"),
        "winbindd socket directory": str(run / "winbindd"),
        "ntp signd socket directory": str(run / "ntp_signd"),
        "server services": " ".join(services),
        "log file": str(root / "log.%m"),
    }


# Provisioning copies the host's resolver into "dns forwarder": unknown names would be forwarded
# off the machine. Samba's default (empty) forwards nothing.
_DROPPED_GLOBALS = {"dns forwarder", "logging", "max log size", "panic action"}


def rewrite_smb_conf(
    text: str,
    old_root: str,
    new_root: Path,
    *,
    services: Sequence[str] = SERVER_SERVICES,
    overrides: Mapping[str, str] | None = None,
) -> str:
    """smb.conf moved from ``old_root`` to ``new_root``, with the lab's runtime settings.

    ``overrides`` replace [global] parameters (lower-case names, e.g. ``"interfaces"``).
    """
    runtime = {**_runtime_globals(new_root, services), **(overrides or {})}
    out = []
    section = ""
    for line in text.replace(old_root, str(new_root)).splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped.lower()
            out.append(line)
            if section == "[global]":
                out.extend(f"\t{key} = {value}" for key, value in runtime.items())
            continue
        if section == "[global]" and "=" in stripped:
            key = " ".join(stripped.split("=", 1)[0].split()).lower()
            if key in _DROPPED_GLOBALS or key in runtime:
                continue
        out.append(line)
    return "\n".join(out) + "\n"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_entry(spec: DomainControllerSpec, entry: Path) -> None:
    """Provision into ``entry/dc`` (built aside, then renamed: ``entry`` is complete or absent)."""
    shutil.rmtree(entry, ignore_errors=True)  # an entry without meta.json is half-built
    build = entry.with_name(f".build-{entry.name}-{os.getpid()}")
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True, mode=0o700)
    try:
        password = generate_password()
        _provision_into(spec, build / "dc", password)
        password_file = build / "admin-password"
        password_file.write_text(password)
        password_file.chmod(0o600)
        meta = {"targetdir": str(build / "dc"), "spec": spec.__dict__, "samba": samba_version()}
        (build / "meta.json").write_text(json.dumps(meta, indent=2))
        build.rename(entry)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise


def _cache_entry(spec: DomainControllerSpec) -> Path:
    """A provisioned folder for ``spec`` in the cache, built on first use."""
    entry = CACHE_ROOT / spec.cache_key()
    with _locked(CACHE_ROOT / ".lock"):
        if not (entry / "meta.json").is_file():
            _build_entry(spec, entry)
        return entry


def provisioned_entry(spec: DomainControllerSpec, *, use_cache: bool, scratch: Path) -> Path:
    """A folder holding a pristine provisioned DC for ``spec`` (``dc/``) and its password.

    With ``use_cache`` it is the machine-wide cache entry; otherwise it is provisioned afresh
    under ``scratch`` (once: later calls with the same ``scratch`` reuse it), so a DC and its
    clone start from the same database either way.
    """
    if use_cache:
        return _cache_entry(spec)
    entry = scratch / f"provisioned-{spec.cache_key()}"
    if not (entry / "meta.json").is_file():
        _build_entry(spec, entry)
    return entry


def provision(
    spec: DomainControllerSpec,
    target: Path,
    *,
    use_cache: bool = True,
    scratch: Path | None = None,
    services: Sequence[str] = SERVER_SERVICES,
    overrides: Mapping[str, str] | None = None,
) -> str:
    """Make ``target`` a provisioned DC folder ready to start; returns Administrator's password.

    ``target`` is a copy of the provisioned folder for ``spec`` (from the cache, or made under
    ``scratch``, default ``target``'s parent, when ``use_cache`` is false). ``services`` and
    ``overrides`` go into its smb.conf: a clone of the DC on another address is ``spec`` with
    ``overrides={"interfaces": ADDRESS, ...}``.
    """
    entry = provisioned_entry(spec, use_cache=use_cache, scratch=scratch or target.parent)
    old_root = json.loads((entry / "meta.json").read_text())["targetdir"]
    install_dc(entry / "dc", old_root, target, services=services, overrides=overrides)
    return (entry / "admin-password").read_text()


def install_dc(
    source: Path,
    old_root: str,
    target: Path,
    *,
    services: Sequence[str] = SERVER_SERVICES,
    overrides: Mapping[str, str] | None = None,
) -> None:
    """Copy the stopped DC folder ``source`` (its smb.conf naming ``old_root``) to ``target``."""
    started = time.monotonic()
    # cp -a keeps the NT ACLs Samba stores in extended attributes on sysvol.
    _run(["cp", "-a", str(source), str(target)], what="copying the provisioned DC folder")
    log.info("copied DC folder from %s in %.2f s", source, time.monotonic() - started)
    smb_conf = target / "etc" / "smb.conf"
    smb_conf.write_text(
        rewrite_smb_conf(
            smb_conf.read_text(), old_root, target, services=services, overrides=overrides
        )
    )
    (target / "run").mkdir(exist_ok=True)


def remove_runtime_leftovers(folder: Path) -> None:
    """What a stopped samba leaves that no copy needs (and cp cannot copy): sockets, logs."""
    for name in ("run", "msg.sock"):
        shutil.rmtree(folder / name, ignore_errors=True)
    for path in [*folder.glob("log.*"), folder / "samba.log"]:
        path.unlink(missing_ok=True)
    for path in folder.rglob("*"):
        if path.is_socket():
            path.unlink()


def krb5_conf(realm: str, kdc_addresses: Sequence[str]) -> str:
    # No DNS at all: the host's resolver is off loopback, and the lab's names are not in it.
    kdcs = "".join(f"\t\tkdc = {address}\n" for address in kdc_addresses)
    return (
        "[libdefaults]\n"
        f"\tdefault_realm = {realm}\n"
        "\tdns_lookup_realm = false\n"
        "\tdns_lookup_kdc = false\n"
        "\trdns = false\n"
        "\tdns_canonicalize_hostname = false\n"
        "\n"
        "[realms]\n"
        f"\t{realm} = {{\n"
        f"{kdcs}"
        f"\t\tadmin_server = {kdc_addresses[0]}\n"
        "\t}\n"
        "\n"
        "[domain_realm]\n"
        f"\t.{realm.lower()} = {realm}\n"
        f"\t{realm.lower()} = {realm}\n"
    )


# Runs "$@" with the lab's hosts file and resolv.conf bind-mounted over the machine's, in a
# mount namespace of its own: nothing outside the namespace sees them, and they go with it.
_NAMESPACE_SCRIPT = (
    'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf && shift 2 && exec "$@"'
)


@dataclass(frozen=True)
class NameFiles:
    """A hosts file and a resolv.conf that replace the machine's for a command (and its children).

    Replicating DCs must resolve each other's names and ``<NTDS Settings objectGUID>._msdcs``
    names; the files give them those, and point any other lookup at the lab's own DNS, so no
    query leaves loopback. The machine's /etc/hosts and /etc/resolv.conf are never touched.
    """

    hosts: Path
    resolv_conf: Path

    def write(self, names: Mapping[str, str], nameservers: Sequence[str]) -> None:
        """``names``: name -> address. Written in place: a bind mount holds on to the inode."""
        lines = ["127.0.0.1 localhost"] + [f"{address} {name}" for name, address in names.items()]
        self._write(self.hosts, "\n".join(lines) + "\n")
        servers = "".join(f"nameserver {address}\n" for address in nameservers)
        self._write(self.resolv_conf, f"{servers}options timeout:1 attempts:1\n")

    @staticmethod
    def _write(path: Path, text: str) -> None:
        with path.open("a+") as handle:
            handle.seek(0)
            handle.truncate()
            handle.write(text)

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            _NAMESPACE_SCRIPT,
            "lab-names",
            str(self.hosts),
            str(self.resolv_conf),
            *argv,
        ]


def mount_namespace_problem() -> str | None:
    """Why a command cannot get a mount namespace with bind mounts here; None when it can."""
    try:
        result = subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "mount",
                "--bind",
                "/etc/hosts",
                "/etc/hosts",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare --mount failed: {exc}"
    if result.returncode != 0:
        return f"unshare --mount ... mount --bind failed: {result.stderr.strip()}"
    return None


def ntds_guids(folder: Path, domain_dn: str) -> dict[str, str]:
    """Each DC's NTDS Settings objectGUID as the stopped DC in ``folder`` knows it, by the
    short name of its server object (lower case)."""
    result = subprocess.run(
        [
            "ldbsearch",
            "-H",
            str(folder / "private" / "sam.ldb"),
            "-b",
            f"CN=Sites,CN=Configuration,{domain_dn}",
            "(objectClass=nTDSDSA)",
            "objectGUID",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise LabError(f"ldbsearch of {folder}'s NTDS Settings failed: {result.stderr.strip()}")
    found: dict[str, str] = {}
    server = None
    for line in result.stdout.splitlines():
        if line.startswith("dn: "):
            server = line[4:].split(",")[1].partition("=")[2].lower()
        elif line.startswith("objectGUID: ") and server is not None:
            found[server] = line.split(": ", 1)[1].strip()
    return found


@dataclass
class SambaDC:
    """One provisioned domain controller folder and, once started, its ``samba`` process.

    ``clone_of``: the name of the DC whose database this folder is a copy of (its rootDSE then
    names that DC); ``clock_offset``: seconds its clock runs ahead, under libfaketime;
    ``process_model``: ``samba -M`` (``single`` runs every service in one process);
    ``names``: the hosts file and resolv.conf samba and samba-tool see (a replicating DC's).
    """

    spec: DomainControllerSpec
    directory: Path
    admin_password: str
    krb5_conf: Path
    process: ManagedProcess | None = None
    services: tuple[str, ...] = SERVER_SERVICES
    clock_offset: int = 0
    process_model: str | None = None
    clone_of: str | None = None
    names: NameFiles | None = None

    @property
    def smb_conf(self) -> Path:
        return self.directory / "etc" / "smb.conf"

    @property
    def sam_ldb(self) -> Path:
        return self.directory / "private" / "sam.ldb"

    @property
    def tls_ca_file(self) -> Path:
        return self.directory / "private" / "tls" / "ca.pem"

    @property
    def account_passwords(self) -> dict[str, str]:
        """sAMAccountName -> password of each account in the Exchange directory content."""
        data: dict[str, str] = json.loads((self.directory / ACCOUNT_PASSWORDS_FILE).read_text())
        return data

    @property
    def log_path(self) -> Path:
        return self.directory / "samba.log"

    def env(self) -> dict[str, str]:
        """For samba itself; tools run against this folder drop the faketime settings."""
        return faketime.environment(
            self.clock_offset, {**os.environ, "KRB5_CONFIG": str(self.krb5_conf)}
        )

    def spawn(self) -> ManagedProcess:
        model = ["-M", self.process_model] if self.process_model else []
        self.process = ManagedProcess(
            f"samba-{self.spec.host_name}",
            self._wrapped(["samba", "-i", *model, "-s", str(self.smb_conf), "--debug-stdout"]),
            log_path=self.log_path,
            env=self.env(),
            stdin_lifeline=True,
            runs="samba",
        )
        return self.process

    def _wrapped(self, argv: list[str]) -> list[str]:
        return self.names.wrap(argv) if self.names is not None else argv

    def ready(self) -> bool:
        address = self.spec.address
        if "kdc" in self.services:
            # Kerberos and kpasswd, over UDP and TCP: each must answer its protocol.
            for transport in ("udp", "tcp"):
                try:
                    kdc_error(address, self.spec.realm, transport=transport, timeout=0.5)
                except (OSError, ValueError, IndexError):
                    return False
                if not kpasswd_answers(address, transport=transport, timeout=0.5):
                    return False
        if "ldap" in self.services:
            if not all(tcp_accepts(address, port, timeout=0.2) for port in (389, 636)):
                return False
            try:
                host = root_dse_attribute(address, "dnsHostName", timeout=1.0)
            except (OSError, ValueError, IndexError):
                return False
            expected = self.clone_of or self.spec.fqdn
            if host is None or host.lower() != expected:
                return False
        if "dns" in self.services:
            # Answers last: the locator record a client looks up first must be served.
            srv = dns_answer_count(address, self.dc_locator, DNS_TYPE_SRV, timeout=0.5)
            if not srv:
                return False
        return True

    @property
    def dc_locator(self) -> str:
        """The SRV name clients look up to find a DC of the domain (MS-ADTS 6.3.2.3)."""
        return f"_ldap._tcp.dc._msdcs.{self.spec.dns_domain}"

    def wait_ready(self, *, timeout: float = 60.0) -> None:
        """Poll the DC's services (Kerberos, LDAP(S) and rootDSE, DNS) until they answer."""
        process = self.process
        if process is None:
            raise LabError(f"samba for {self.spec.fqdn} was never started")

        def gone() -> str | None:
            return process.exit_reason()

        try:
            wait_until(
                self.ready,
                timeout=timeout,
                what=f"samba for {self.spec.fqdn}",
                abort=gone,
                interval=0.05,
            )
        except LabError as exc:
            if process.exit_reason() is None:
                raise LabError(
                    f"{exc}; last lines of {self.log_path}:\n{process.log_tail()}"
                ) from None
            raise

    def samba_tool(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``samba-tool ARGS`` against this DC's own configuration (and sam.ldb by default)."""
        result = subprocess.run(
            self._wrapped(["samba-tool", *args, f"--configfile={self.smb_conf}"]),
            capture_output=True,
            text=True,
            env=faketime.environment(0, {**os.environ, "KRB5_CONFIG": str(self.krb5_conf)}),
        )
        if check and result.returncode != 0:
            raise LabError(
                f"samba-tool {' '.join(args)} failed (exit status {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result

    def stop(self) -> None:
        """Stop samba (its whole process group); :meth:`spawn` starts it again."""
        process, self.process = self.process, None
        if process is not None:
            process.stop()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.exit_reason() is None
