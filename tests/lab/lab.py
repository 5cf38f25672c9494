"""The lab: a Samba AD DC and NTP servers standing in for a domain and its Exchange servers.

Address plan (``network`` defaults to 127.0.10; every address gets a /32 alias on ``lo``):

    dc1.corp.example.test    .10  Samba AD DC (LDAP, LDAPS, GC, KDC, kpasswd, DNS) + chronyd
    exch1.corp.example.test  .21  chronyd, true clock
    exch2.corp.example.test  .22  chronyd under libfaketime, 420 s (7 min) ahead

A real DC serves NTP through W32Time; Samba does not serve NTP, so chronyd plays that part on
the DC's address.
"""

from __future__ import annotations

import atexit
import copy
import ipaddress
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import yaml

from tests.lab.chrony import FAKETIME_LIBRARY, spawn_chronyd, wait_for_chronyd
from tests.lab.errors import LabError
from tests.lab.net import add_loopback_alias
from tests.lab.procs import ManagedProcess, ProcessRecord, stop_daemons_in_the_way
from tests.lab.samba import DC_PORTS, DomainControllerSpec, SambaDC, krb5_conf, provision
from tests.lab.state import LabState, clean_up_abandoned_labs, recorded_labs, undo

log = logging.getLogger("tests.lab")

REALM = "CORP.EXAMPLE.TEST"
DOMAIN = "corp.example.test"
NETBIOS_DOMAIN = "CORP"
ADMIN_USER = f"Administrator@{DOMAIN}"
DEFAULT_NETWORK = "127.0.10"
SKEWED_CLOCK_OFFSET = 420  # seconds: beyond Kerberos' 5-minute tolerance

Role = Literal["domain_controller", "exchange"]


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    role: Role
    ntp_offset: int  # seconds its NTP server is ahead of the true clock

    @property
    def short_name(self) -> str:
        return self.name.split(".", 1)[0]


def address_plan(network: str = DEFAULT_NETWORK) -> tuple[Host, tuple[Host, ...]]:
    """The DC and the Exchange servers of a lab on ``network`` (three octets inside 127/8)."""
    try:
        inside_loopback = ipaddress.ip_address(f"{network}.10") in ipaddress.ip_network(
            "127.0.0.0/8"
        )
    except ValueError:
        inside_loopback = False
    if not inside_loopback:
        raise LabError(
            f"lab network {network!r} must be three octets inside 127.0.0.0/8, e.g. 127.0.10"
        )
    dc = Host(f"dc1.{DOMAIN}", f"{network}.10", "domain_controller", 0)
    exchange = (
        Host(f"exch1.{DOMAIN}", f"{network}.21", "exchange", 0),
        Host(f"exch2.{DOMAIN}", f"{network}.22", "exchange", SKEWED_CLOCK_OFFSET),
    )
    return dc, exchange


def preflight(*, samba: bool, ntp: bool) -> list[str]:
    """Why the lab cannot run on this machine; empty when it can."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the lab must run as root (it adds loopback aliases and binds port 123)")
    commands = {"ip": "iproute2"}
    if samba:
        commands |= {"samba": "samba-ad-dc", "samba-tool": "samba", "openssl": "openssl"}
    if ntp:
        commands |= {"chronyd": "chrony"}
    for command, package in commands.items():
        if shutil.which(command) is None:
            problems.append(f"{command} not found: apt-get install {package}")
    if ntp and not FAKETIME_LIBRARY.exists():
        problems.append(f"{FAKETIME_LIBRARY} not found: apt-get install faketime")
    return problems


def _merged(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(base.get(key), dict):
            base[key] = _merged(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


class Lab:
    """A running lab. Start it with :meth:`start`, preferably as a context manager.

    Teardown happens on :meth:`stop`, on leaving the ``with`` block, at interpreter exit, and
    otherwise through ``python -m tests.lab down`` (or the next :meth:`start`), which read the
    state file the lab keeps up to date.
    """

    realm = REALM
    domain = DOMAIN
    admin_user = ADMIN_USER

    def __init__(self, directory: Path, *, network: str, use_cache: bool, timeout: float) -> None:
        self.directory = directory
        self.network = network
        self.dc, self.exchange_servers = address_plan(network)
        self.samba: SambaDC | None = None
        self._ntp: dict[str, ManagedProcess] = {}
        self._use_cache = use_cache
        self._timeout = timeout
        self._state = LabState(
            lab_dir=directory,
            owner=ProcessRecord.of_current_process("owner"),
            addresses=[host.address for host in self.hosts],
        )
        self._stopped = False

    # --- lifecycle ----------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        *,
        samba: bool = True,
        ntp: bool = True,
        network: str = DEFAULT_NETWORK,
        base_dir: Path | None = None,
        use_cache: bool = True,
        timeout: float = 60.0,
    ) -> Lab:
        """Start the chosen components and return once every one of them answers.

        ``samba``: the DC's Samba AD DC. ``ntp``: chronyd on the DC and both Exchange servers.
        ``network``: first three octets of the addresses, so a second lab can run beside one.
        ``timeout``: seconds each daemon may take to answer before LabError.
        """
        problems = preflight(samba=samba, ntp=ntp)
        if problems:
            raise LabError("the lab cannot run here:\n" + "\n".join(f"  - {p}" for p in problems))
        dc, exchange = address_plan(network)
        ours = {dc.address, *(host.address for host in exchange)}
        clean_up_abandoned_labs()
        for other in recorded_labs():
            if ours & set(other.addresses):
                raise LabError(
                    f"another lab (owner pid {other.owner.pid}, folder {other.lab_dir}) uses "
                    f"{', '.join(sorted(ours & set(other.addresses)))}; stop it first, e.g. with "
                    "`python -m tests.lab down`, or start this one on another network"
                )
        directory = Path(tempfile.mkdtemp(prefix="exchange-auth-lab-", dir=base_dir))
        lab = cls(directory, network=network, use_cache=use_cache, timeout=timeout)
        lab._state.save()
        atexit.register(lab.stop)
        try:
            lab.ensure(samba=samba, ntp=ntp)
        except BaseException:
            lab.stop()
            raise
        return lab

    def ensure(self, *, samba: bool = False, ntp: bool = False) -> None:
        """Start the named components if they are not running yet (an NTP-only lab can grow a DC)."""
        start_samba = samba and self.samba is None
        start_ntp = ntp and not self._ntp
        if not (start_samba or start_ntp):
            return
        if self._stopped:
            raise LabError("this lab has been stopped; start a new one")
        problems = preflight(samba=start_samba, ntp=start_ntp)
        if problems:
            raise LabError("the lab cannot run here:\n" + "\n".join(f"  - {p}" for p in problems))
        started = time.monotonic()

        ntp_hosts = self.hosts if start_ntp else ()
        wanted = [("udp", host.address, 123) for host in ntp_hosts]
        if start_samba:
            wanted += [(transport, self.dc.address, port) for transport, port in DC_PORTS]
        for address in sorted({address for _, address, _ in wanted}):
            if add_loopback_alias(address):
                self._state.aliases_added.append(address)
                self._state.save()
        stop_daemons_in_the_way(wanted, ours=self._pids_of_running_labs())

        # Samba takes longest to answer: spawn it first and wait for it last.
        if start_samba:
            self._spawn_samba()
        for host in ntp_hosts:
            process = spawn_chronyd(
                host.short_name,
                host.address,
                self.directory / f"chrony-{host.short_name}",
                clock_offset=host.ntp_offset,
            )
            self._record(process)
            self._ntp[host.name] = process
        for host in ntp_hosts:
            wait_for_chronyd(self._ntp[host.name], host.address, timeout=self._timeout)
        if self.samba is not None and start_samba:
            self.samba.wait_ready(timeout=self._timeout)
        self._write_password_file()
        log.info(
            "lab ready in %.2f s (%s) in %s",
            time.monotonic() - started,
            ", ".join(name for name, on in (("samba", start_samba), ("ntp", start_ntp)) if on),
            self.directory,
        )

    def stop(self) -> None:
        """Stop every process, remove the aliases we added and the lab folder. Safe to repeat."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        started = time.monotonic()
        problems = []
        for process in reversed(self._children()):
            try:
                process.stop()
            except (LabError, OSError) as exc:
                problems.append(f"{process.name}: {exc}")
        # The state file drives the rest, exactly as for a lab left by a crashed run.
        problems += undo(self._state)
        log.info("lab stopped in %.2f s", time.monotonic() - started)
        if problems:
            raise LabError("lab teardown was incomplete: " + "; ".join(problems))

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn_samba(self) -> None:
        spec = DomainControllerSpec(REALM, NETBIOS_DOMAIN, self.dc.short_name, self.dc.address)
        folder = self.directory / self.dc.short_name
        password = provision(spec, folder, use_cache=self._use_cache)
        self.krb5_conf.write_text(krb5_conf(REALM, [self.dc.address]))
        self.samba = SambaDC(spec, folder, password, self.krb5_conf)
        self._write_password_file()
        self._record(self.samba.spawn())

    def _children(self) -> list[ManagedProcess]:
        """Our daemons in the order they were started."""
        children = list(self._ntp.values())
        if self.samba is not None and self.samba.process is not None:
            children.insert(0, self.samba.process)
        return children

    def _record(self, process: ManagedProcess) -> None:
        # Saved before waiting for readiness: a crash while waiting must still find it.
        self._state.processes.append(process.record)
        self._state.save()

    def _write_password_file(self) -> None:
        if self.samba is not None:
            password = self.samba.admin_password
        elif self.password_file.exists():
            return
        else:
            # No DC yet, but the exporter's config loader wants the file to exist; nothing
            # accepts this password, and a DC started later overwrites it.
            password = os.urandom(12).hex()
        self.password_file.touch(mode=0o600)
        self.password_file.chmod(0o600)
        self.password_file.write_text(password)

    def _pids_of_running_labs(self) -> set[int]:
        pids = {pid for record in self._state.processes for pid in record.members()}
        for other in recorded_labs():
            pids |= other.live_pids()
        return pids

    # --- what tests and the exporter need -----------------------------------------------------

    @property
    def hosts(self) -> tuple[Host, ...]:
        return (self.dc, *self.exchange_servers)

    @property
    def samba_running(self) -> bool:
        return self.samba is not None and not self._stopped

    @property
    def ntp_running(self) -> bool:
        return bool(self._ntp) and not self._stopped

    @property
    def password_file(self) -> Path:
        return self.directory / "ldap-password"

    @property
    def admin_password(self) -> str:
        if self.samba is None:
            raise LabError("this lab runs no Samba DC; start it with samba=True")
        return self.samba.admin_password

    @property
    def krb5_conf(self) -> Path:
        return self.directory / "krb5.conf"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://{self.dc.address}:636"

    @property
    def ldap_url(self) -> str:
        return f"ldap://{self.dc.address}:389"

    @property
    def tls_ca_file(self) -> Path:
        """The DC's self-signed certificate (valid for its name and address)."""
        if self.samba is None:
            raise LabError("this lab runs no Samba DC; start it with samba=True")
        return self.samba.tls_ca_file

    def failures(self) -> list[str]:
        """One line (plus log tail) per lab daemon that has exited since it started."""
        return [
            f"{p.name} {reason}"
            for p in self._children()
            if (reason := p.exit_reason()) is not None
        ]

    def process_records(self) -> list[ProcessRecord]:
        return list(self._state.processes)

    def pids(self) -> set[int]:
        """Every live process of the lab, daemon children included."""
        return {pid for record in self._state.processes for pid in record.members()}

    def exporter_config(self, **overrides: Any) -> dict[str, Any]:
        """The exporter's configuration for this lab, as a YAML-ready dict.

        Mapping overrides merge into the defaults (``checks={"clock": {"max_skew": "10m"}}``
        changes one key); other values replace; None removes the key.
        """
        config: dict[str, Any] = {
            "realm": self.realm,
            "ldap": {
                "url": self.ldaps_url,
                "user": self.admin_user,
                "password_file": str(self.password_file),
                "tls_verify": False,
                "timeout": "10s",
            },
            "domain_controllers": {
                "discover": "none",
                "static": [{"name": self.dc.name, "address": self.dc.address}],
            },
            "exchange_servers": {
                "discover": "none",
                "static": [{"name": h.name, "address": h.address} for h in self.exchange_servers],
            },
            "checks": {
                "clock": {"enabled": True, "sources": ["ntp"], "max_skew": "5m", "timeout": "3s"},
            },
        }
        return _merged(config, overrides)

    def write_exporter_config(self, path: Path | None = None, **overrides: Any) -> Path:
        """Write :meth:`exporter_config` as YAML (default ``<lab dir>/exporter.yml``)."""
        path = path or self.directory / "exporter.yml"
        path.write_text(yaml.safe_dump(self.exporter_config(**overrides), sort_keys=False))
        return path

    def __repr__(self) -> str:
        parts = [f"{h.name}={h.address}" for h in self.hosts]
        return f"<Lab {self.directory} {' '.join(parts)}>"
