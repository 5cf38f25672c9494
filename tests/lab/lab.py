"""The lab: Samba AD DCs, NTP and SMTP servers standing in for a domain and its Exchange servers.

Address plan (``network`` defaults to 127.0.10; every address gets a /32 alias on ``lo``):

    dc1.corp.example.test    .10  Samba AD DC (LDAP, LDAPS, GC, KDC, kpasswd, DNS) + chronyd
    dc2.corp.example.test    .11  Samba KDC (Kerberos, kpasswd) + chronyd, both under
                                  libfaketime, 420 s (7 min) ahead
    dc9.corp.example.test    .19  dead: TCP 88/464 closed (refused), UDP 88/464/123 dropped
    exch1.corp.example.test  .21  chronyd, true clock
    exch2.corp.example.test  .22  chronyd under libfaketime, 420 s (7 min) ahead
    exch3.corp.example.test  .23  no NTP (as most Exchange servers): SMTP only

Every Exchange address also runs an SMTP stand-in (``tests/lab/smtp_standin.py``, one Python
process each) on 25 (front end) and 2525 (intra-organisation), speaking like Exchange 2016/2019:

    exch1  true clock, banner date in +0000; X-EXPS GSSAPI NTLM on 2525, not on 25
    exch2  under libfaketime +420 s like its chronyd, banner date in -0600; X-EXPS on 2525
    exch3  custom banner "220 mail.corp.example.test ESMTP" (no date); no X-EXPS anywhere

exch3 is in :attr:`Lab.smtp_servers` but not in :attr:`Lab.hosts` or
:attr:`Lab.exchange_servers`, which list the hosts that answer NTP.

A real DC serves NTP through W32Time; Samba does not serve NTP, so chronyd plays that part on
the DC's address.

dc2 is a clone, not a replica: a copy of dc1's provisioned database on its own address, with
its own runtime folders and smb.conf (``netbios name = DC2``, only the ``kdc`` service, all
services in one process). Its KDC serves the same realm and keys, so it answers an AS-REQ just
as dc1 would, stamped with its skewed clock; it has no LDAP or DNS of its own, is not in dc1's
DNS, and nothing written to one DC reaches the other.

Samba's internal DNS on dc1 serves the zone ``corp.example.test`` with the records provisioning
registered: the DC locator ``_ldap._tcp.dc._msdcs``, ``_kerberos._tcp``/``_udp``,
``_kpasswd``, ``_gc`` (all naming dc1) and ``dc1 A``. It forwards nothing: a name outside the
zone gets NXDOMAIN, and no query leaves loopback.

dc1's domain also holds an Exchange organisation (see ``tests/lab/directory.py`` and
:attr:`Lab.exchange_directory`): a schema subset, servers EXCH1-3 and EDGE1 with receive
connectors, computer accounts with keys and SPNs, one missing SPN and two duplicates. It is
written once into the provisioned folder, so it costs nothing per lab. None of the Exchange
servers is in DNS: their addresses are the static ones above (exch3's only in
:attr:`Lab.smtp_servers`), and EDGE1 has none.
"""

from __future__ import annotations

import atexit
import copy
import ipaddress
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import yaml

from tests.lab.chrony import spawn_chronyd, wait_for_chronyd
from tests.lab.directory import ExchangeDirectory, exchange_directory
from tests.lab.errors import LabError
from tests.lab.faketime import FAKETIME_LIBRARY
from tests.lab.net import add_loopback_alias, silent_udp_sockets, tcp_accepts
from tests.lab.procs import (
    ManagedProcess,
    ProcessRecord,
    command_name,
    group_members,
    process_state,
    stop_daemons_in_the_way,
    wait_until,
)
from tests.lab.samba import (
    DC_PORTS,
    DomainControllerSpec,
    SambaDC,
    krb5_conf,
    ports_of,
    provision,
)
from tests.lab.smtp import SmtpServer, spawn_smtp_standin, wait_for_smtp_standin
from tests.lab.state import LabState, clean_up_abandoned_labs, recorded_labs, undo

log = logging.getLogger("tests.lab")

REALM = "CORP.EXAMPLE.TEST"
DOMAIN = "corp.example.test"
NETBIOS_DOMAIN = "CORP"
ADMIN_USER = f"Administrator@{DOMAIN}"
DEFAULT_NETWORK = "127.0.10"
SKEWED_CLOCK_OFFSET = 420  # seconds: beyond Kerberos' 5-minute tolerance
# The skewed DC runs Samba's KDC only (Kerberos 88 and kpasswd 464, UDP and TCP).
SKEWED_DC_SERVICES = ("kdc",)
# The dead DC: nothing listens on these TCP ports (connections are refused) ...
DEAD_DC_TCP_PORTS = (88, 464)
# ... and these UDP ports are bound by sockets nobody reads (datagrams vanish, clients time out).
DEAD_DC_UDP_PORTS = (88, 123, 464)
# exch3's greeting: an admin replaced Exchange's default banner (Set-ReceiveConnector -Banner).
CUSTOM_SMTP_BANNER = "220 mail.corp.example.test ESMTP"
# exch2 writes its banner date in a zone west of UTC, so a parser has to apply the offset.
SKEWED_SMTP_UTC_OFFSET = "-0600"

Role = Literal["domain_controller", "exchange"]

# Samba's prefork model names its LDAP task "ldap[master]" and its workers "ldap(0)".."ldap(3)"
# (/proc/PID/comm); "cldap[master]" is the UDP netlogon ping, not LDAP.
_LDAP_TASK = re.compile(r"ldap[\[(]")


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    role: Role
    ntp_offset: int  # seconds its NTP server (and KDC, if any) is ahead of the true clock

    @property
    def short_name(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def static_entry(self) -> dict[str, str]:
        """This host as an entry of the exporter's ``static`` server lists."""
        return {"name": self.name, "address": self.address}


@dataclass(frozen=True)
class LabPlan:
    dc: Host  # the Samba AD DC
    skewed_dc: Host  # a KDC (and NTP server) 420 s ahead
    dead_dc: Host  # answers nothing: not in ``hosts``, ntp_offset meaningless
    exchange_servers: tuple[Host, ...]  # the Exchange servers that serve NTP: exch1, exch2
    smtp_servers: tuple[SmtpServer, ...] = ()  # every Exchange address's SMTP: exch1..3

    @property
    def hosts(self) -> tuple[Host, ...]:
        """Every host that serves NTP (and so every host the exporter's config lists)."""
        return (self.dc, self.skewed_dc, *self.exchange_servers)

    @property
    def addresses(self) -> list[str]:
        found = [host.address for host in (*self.hosts, self.dead_dc)]
        return found + [s.address for s in self.smtp_servers if s.address not in found]


def lab_plan(network: str = DEFAULT_NETWORK) -> LabPlan:
    """Every host of a lab on ``network`` (three octets inside 127/8)."""
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
    return LabPlan(
        dc=Host(f"dc1.{DOMAIN}", f"{network}.10", "domain_controller", 0),
        skewed_dc=Host(f"dc2.{DOMAIN}", f"{network}.11", "domain_controller", SKEWED_CLOCK_OFFSET),
        dead_dc=Host(f"dc9.{DOMAIN}", f"{network}.19", "domain_controller", 0),
        exchange_servers=(
            Host(f"exch1.{DOMAIN}", f"{network}.21", "exchange", 0),
            Host(f"exch2.{DOMAIN}", f"{network}.22", "exchange", SKEWED_CLOCK_OFFSET),
        ),
        smtp_servers=(
            SmtpServer(f"exch1.{DOMAIN}", f"{network}.21", serves_ntp=True),
            SmtpServer(
                f"exch2.{DOMAIN}",
                f"{network}.22",
                clock_offset=SKEWED_CLOCK_OFFSET,
                utc_offset=SKEWED_SMTP_UTC_OFFSET,
                serves_ntp=True,
                # As in AD: "Default EXCH2" has ExchangeServer authentication off.
                x_exps_ports=(),
            ),
            SmtpServer(
                f"exch3.{DOMAIN}",
                f"{network}.23",
                custom_banner=CUSTOM_SMTP_BANNER,
                x_exps_ports=(),
            ),
        ),
    )


def address_plan(network: str = DEFAULT_NETWORK) -> tuple[Host, tuple[Host, ...]]:
    """The Samba AD DC and the Exchange servers of a lab on ``network`` (see :func:`lab_plan`)."""
    plan = lab_plan(network)
    return plan.dc, plan.exchange_servers


def preflight(*, samba: bool, ntp: bool, skewed_dc: bool = False, smtp: bool = False) -> list[str]:
    """Why the lab cannot run on this machine; empty when it can."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the lab must run as root (it adds loopback aliases and binds port 123)")
    commands = {"ip": "iproute2"}
    if samba or skewed_dc:
        commands |= {"samba": "samba-ad-dc", "samba-tool": "samba", "openssl": "openssl"}
    if ntp:
        commands |= {"chronyd": "chrony"}
    for command, package in commands.items():
        if shutil.which(command) is None:
            problems.append(f"{command} not found: apt-get install {package}")
    if (ntp or skewed_dc or smtp) and not FAKETIME_LIBRARY.exists():
        problems.append(f"{FAKETIME_LIBRARY} not found: apt-get install faketime")
    return problems


class LdapPause:
    """dc1's LDAP processes stopped by :meth:`Lab.pause_ldap`; leaving a ``with`` resumes them."""

    def __init__(self, lab: Lab, pids: list[int]) -> None:
        self.lab = lab
        self.pids = pids

    def __enter__(self) -> LdapPause:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.lab.resume_ldap()


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
        self.plan = lab_plan(network)
        self.dc = self.plan.dc
        self.skewed_dc = self.plan.skewed_dc
        self.dead_dc = self.plan.dead_dc
        self.exchange_servers = self.plan.exchange_servers
        self.smtp_servers = self.plan.smtp_servers
        self.samba: SambaDC | None = None
        self.skewed_samba: SambaDC | None = None
        self._ntp: dict[str, ManagedProcess] = {}
        self._smtp: dict[str, ManagedProcess] = {}
        self._dead_dc_sockets: list[socket.socket] = []
        self._paused_ldap: list[int] = []
        self._use_cache = use_cache
        self._timeout = timeout
        self._state = LabState(
            lab_dir=directory,
            owner=ProcessRecord.of_current_process("owner"),
            addresses=self.plan.addresses,
        )
        self._stopped = False

    # --- lifecycle ----------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        *,
        samba: bool = True,
        ntp: bool = True,
        skewed_dc: bool | None = None,
        dead_dc: bool = True,
        smtp: bool = True,
        network: str = DEFAULT_NETWORK,
        base_dir: Path | None = None,
        use_cache: bool = True,
        timeout: float = 60.0,
    ) -> Lab:
        """Start the chosen components and return once every one of them answers.

        ``samba``: dc1's Samba AD DC. ``ntp``: chronyd on both DCs and both Exchange servers.
        ``skewed_dc``: dc2's Samba KDC under libfaketime (default: whatever ``samba`` is).
        ``dead_dc``: dc9's silent UDP sockets (held by this process; no daemon).
        ``smtp``: the SMTP stand-ins of exch1, exch2 (+420 s) and exch3 on 25 and 2525.
        ``network``: first three octets of the addresses, so a second lab can run beside one.
        ``timeout``: seconds each daemon may take to answer before LabError.
        """
        if skewed_dc is None:
            skewed_dc = samba
        problems = preflight(samba=samba, ntp=ntp, skewed_dc=skewed_dc, smtp=smtp)
        if problems:
            raise LabError("the lab cannot run here:\n" + "\n".join(f"  - {p}" for p in problems))
        ours = set(lab_plan(network).addresses)
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
            lab.ensure(samba=samba, ntp=ntp, skewed_dc=skewed_dc, dead_dc=dead_dc, smtp=smtp)
        except BaseException:
            lab.stop()
            raise
        return lab

    def ensure(
        self,
        *,
        samba: bool = False,
        ntp: bool = False,
        skewed_dc: bool = False,
        dead_dc: bool = False,
        smtp: bool = False,
    ) -> None:
        """Start the named components if they are not running yet (an NTP-only lab can grow DCs)."""
        start_samba = samba and self.samba is None
        start_ntp = ntp and not self._ntp
        start_skewed = skewed_dc and self.skewed_samba is None
        start_dead = dead_dc and not self._dead_dc_sockets
        start_smtp = smtp and not self._smtp
        components = {
            "samba": start_samba,
            "skewed dc": start_skewed,
            "dead dc": start_dead,
            "ntp": start_ntp,
            "smtp": start_smtp,
        }
        if not any(components.values()):
            return
        if self._stopped:
            raise LabError("this lab has been stopped; start a new one")
        problems = preflight(
            samba=start_samba, ntp=start_ntp, skewed_dc=start_skewed, smtp=start_smtp
        )
        if problems:
            raise LabError("the lab cannot run here:\n" + "\n".join(f"  - {p}" for p in problems))
        started = time.monotonic()

        ntp_hosts = self.hosts if start_ntp else ()
        smtp_servers = self.smtp_servers if start_smtp else ()
        wanted = [("udp", host.address, 123) for host in ntp_hosts]
        wanted += [("tcp", s.address, port) for s in smtp_servers for port in s.ports]
        if start_samba:
            wanted += [(transport, self.dc.address, port) for transport, port in DC_PORTS]
        if start_skewed:
            wanted += [
                (transport, self.skewed_dc.address, port)
                for transport, port in ports_of(SKEWED_DC_SERVICES)
            ]
        if start_dead:
            wanted += [("tcp", self.dead_dc.address, port) for port in DEAD_DC_TCP_PORTS]
            wanted += [("udp", self.dead_dc.address, port) for port in DEAD_DC_UDP_PORTS]
        for address in sorted({address for _, address, _ in wanted}):
            if add_loopback_alias(address):
                self._state.aliases_added.append(address)
                self._state.save()
        stop_daemons_in_the_way(wanted, ours=self._pids_of_running_labs())

        # Samba takes longest to answer: spawn it first and wait for it last.
        if start_samba:
            self._spawn_samba()
        if start_skewed:
            self._spawn_skewed_dc()
        if start_dead:
            self._open_dead_dc()
        for host in ntp_hosts:
            process = spawn_chronyd(
                host.short_name,
                host.address,
                self.directory / f"chrony-{host.short_name}",
                clock_offset=host.ntp_offset,
            )
            self._record(process)
            self._ntp[host.name] = process
        for server in smtp_servers:
            process = spawn_smtp_standin(server, self.directory / f"smtp-{server.short_name}")
            self._record(process)
            self._smtp[server.name] = process
        for host in ntp_hosts:
            wait_for_chronyd(self._ntp[host.name], host.address, timeout=self._timeout)
        for server in smtp_servers:
            wait_for_smtp_standin(self._smtp[server.name], server, timeout=self._timeout)
        if self.skewed_samba is not None and start_skewed:
            self.skewed_samba.wait_ready(timeout=self._timeout)
        if self.samba is not None and start_samba:
            self.samba.wait_ready(timeout=self._timeout)
        self._write_password_file()
        log.info(
            "lab ready in %.2f s (%s) in %s",
            time.monotonic() - started,
            ", ".join(name for name, on in components.items() if on),
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
        for sock in self._dead_dc_sockets:
            sock.close()
        try:
            self.resume_ldap()
        except (LabError, OSError) as exc:
            problems.append(f"resuming dc1's LDAP: {exc}")
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
        spec = self._dc_spec()
        folder = self.directory / self.dc.short_name
        password = provision(spec, folder, use_cache=self._use_cache, scratch=self.directory)
        self.krb5_conf.write_text(krb5_conf(REALM, [self.dc.address]))
        self.samba = SambaDC(spec, folder, password, self.krb5_conf)
        self._write_password_file()
        self._record(self.samba.spawn())

    def _dc_spec(self) -> DomainControllerSpec:
        return DomainControllerSpec(REALM, NETBIOS_DOMAIN, self.dc.short_name, self.dc.address)

    def _spawn_skewed_dc(self) -> None:
        host = self.skewed_dc
        folder = self.directory / host.short_name
        # A copy of dc1's provisioned folder (same cache entry), moved to dc2's address.
        password = provision(
            self._dc_spec(),
            folder,
            use_cache=self._use_cache,
            scratch=self.directory,
            services=SKEWED_DC_SERVICES,
            overrides={"interfaces": host.address, "netbios name": host.short_name.upper()},
        )
        self.skewed_dc_krb5_conf.write_text(krb5_conf(REALM, [host.address]))
        self.skewed_samba = SambaDC(
            DomainControllerSpec(REALM, NETBIOS_DOMAIN, host.short_name, host.address),
            folder,
            password,
            self.skewed_dc_krb5_conf,
            services=SKEWED_DC_SERVICES,
            clock_offset=host.ntp_offset,
            process_model="single",  # one process instead of a prefork master and 4 workers
            clone_of=self.dc.name,
        )
        self._record(self.skewed_samba.spawn())

    def _open_dead_dc(self) -> None:
        address = self.dead_dc.address
        sockets = silent_udp_sockets(address, DEAD_DC_UDP_PORTS)
        try:
            # Nothing of ours listens there; a listener on 0.0.0.0 would, and /proc showed none.
            listening = [port for port in DEAD_DC_TCP_PORTS if tcp_accepts(address, port, 0.2)]
            if listening:
                raise LabError(
                    f"{address} accepts TCP connections on port(s) {listening}: the dead DC's "
                    "ports must be closed; find the listener with `ss -tlnp`"
                )
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        self._dead_dc_sockets = sockets

    def _children(self) -> list[ManagedProcess]:
        """Our daemons in the order they were started."""
        children = [
            dc.process
            for dc in (self.samba, self.skewed_samba)
            if dc is not None and dc.process is not None
        ]
        return children + list(self._ntp.values()) + list(self._smtp.values())

    def _record(self, process: ManagedProcess) -> None:
        # Saved before waiting for readiness: a crash while waiting must still find it.
        self._state.processes.append(process.record)
        self._state.save()

    def _write_password_file(self) -> None:
        # dc2 is a clone of dc1: the same database, so the same password.
        samba = self.samba or self.skewed_samba
        if samba is not None:
            password = samba.admin_password
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
        """dc1, dc2 and the Exchange servers: every host that serves NTP (not the dead dc9)."""
        return self.plan.hosts

    @property
    def domain_controllers(self) -> tuple[Host, ...]:
        """The DCs that answer: dc1 (Samba AD DC) and dc2 (the KDC 420 s ahead)."""
        return (self.dc, self.skewed_dc)

    @property
    def samba_running(self) -> bool:
        return self.samba is not None and not self._stopped

    @property
    def skewed_dc_running(self) -> bool:
        return self.skewed_samba is not None and not self._stopped

    @property
    def dead_dc_running(self) -> bool:
        """True while dc9's UDP ports are held (and so drop what they receive)."""
        return bool(self._dead_dc_sockets) and not self._stopped

    @property
    def dns_server(self) -> str:
        """Samba's internal DNS (dc1, port 53): the zone with the DC locator SRV records."""
        return self.dc.address

    @property
    def skewed_dc_krb5_conf(self) -> Path:
        """A krb5.conf whose only KDC for the realm is dc2 (420 s ahead)."""
        return self.directory / f"krb5-{self.skewed_dc.short_name}.conf"

    @property
    def ntp_running(self) -> bool:
        return bool(self._ntp) and not self._stopped

    @property
    def smtp_running(self) -> bool:
        """True while the SMTP stand-ins of :attr:`smtp_servers` run."""
        return bool(self._smtp) and not self._stopped

    def smtp_server(self, name: str) -> SmtpServer:
        """One of :attr:`smtp_servers` by full or short name ("exch3"), any letter case."""
        for server in self.smtp_servers:
            if name.lower() in (server.name.lower(), server.short_name.lower()):
                return server
        raise KeyError(f"no SMTP server {name!r} in this lab")

    @property
    def password_file(self) -> Path:
        return self.directory / "ldap-password"

    @property
    def admin_password(self) -> str:
        """Administrator's password, on dc1 and its clone dc2 alike."""
        samba = self.samba or self.skewed_samba
        if samba is None:
            raise LabError("this lab runs no Samba DC; start it with samba=True")
        return samba.admin_password

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

    @property
    def gc_url(self) -> str:
        """The Global Catalog (the whole forest): plain LDAP, StartTLS before a simple bind."""
        return f"ldap://{self.dc.address}:3268"

    @property
    def gc_ldaps_url(self) -> str:
        """The Global Catalog over TLS from the first byte (Samba serves 3269 too)."""
        return f"ldaps://{self.dc.address}:3269"

    @property
    def exchange_directory(self) -> ExchangeDirectory:
        """What dc1's domain holds for the Exchange checks, as plain data to assert against.

        Exchange servers EXCH1..3 (members, with receive connectors) and EDGE1 (Edge, no
        account) under :attr:`ExchangeDirectory.exchange_dn`; the accounts and every SPN they
        hold; :attr:`ExchangeDirectory.duplicate_spns`. Available without a running DC.
        """
        return exchange_directory(self.domain)

    def account_password(self, sam_account_name: str) -> str:
        """The password (so the keys) of an account of :attr:`exchange_directory`, e.g. EXCH1$."""
        samba = self.samba or self.skewed_samba
        if samba is None:
            raise LabError("this lab runs no Samba DC; start it with samba=True")
        return samba.account_passwords[
            self.exchange_directory.account(sam_account_name).sam_account_name
        ]

    def ldap_pids(self) -> list[int]:
        """dc1's Samba processes that serve LDAP (389, 636, GC 3268/3269).

        Under the prefork model dc1 uses, the LDAP task's master and its workers: pausing them
        leaves the KDC, DNS and RPC answering. (Under ``process model = single`` everything
        is the one root process, so stopping LDAP would stop the KDC too.)
        """
        if self.samba is None or self.samba.process is None or self._stopped:
            raise LabError("dc1's Samba is not running; start the lab with samba=True")
        pids = [
            pid
            for pid in group_members(self.samba.process.pid)
            if _LDAP_TASK.match(command_name(pid))
        ]
        if not pids:
            raise LabError(
                f"no LDAP process found among samba's (pgid {self.samba.process.pid}); "
                "is it running the prefork process model?"
            )
        return sorted(pids)

    def pause_ldap(self) -> LdapPause:
        """SIGSTOP dc1's LDAP processes: LDAP(S) and GC then accept TCP connections (up to the
        listen backlog of 10; later SYNs go unanswered) and never answer, while Kerberos and DNS
        still do. Returns once every one of them is stopped.

        Use as ``with lab.pause_ldap(): ...`` (resumed on leaving the block), or call
        :meth:`resume_ldap` yourself; stopping the lab resumes them too.
        """
        pids = self.ldap_pids()
        self._paused_ldap = sorted({*self._paused_ldap, *pids})
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        wait_until(
            lambda: all(process_state(pid) in ("T", None) for pid in pids),
            timeout=5.0,
            what="dc1's LDAP processes to stop",
            interval=0.01,
        )
        log.info("paused dc1's LDAP (SIGSTOP to %s)", pids)
        return LdapPause(self, pids)

    def resume_ldap(self) -> None:
        """SIGCONT what :meth:`pause_ldap` stopped. Safe to repeat."""
        pids, self._paused_ldap = self._paused_ldap, []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                continue
        if pids:
            wait_until(
                lambda: all(process_state(pid) != "T" for pid in pids),
                timeout=5.0,
                what="dc1's LDAP processes to continue",
                interval=0.01,
            )
            log.info("resumed dc1's LDAP (SIGCONT to %s)", pids)

    @property
    def ldap_paused(self) -> bool:
        return bool(self._paused_ldap)

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

        Every host in :attr:`hosts` is listed: dc1 and dc2 as domain controllers, exch1 and
        exch2 as Exchange servers. dc9, which answers nothing, is not; add it with
        ``domain_controllers={"static": [h.static_entry for h in (*lab.domain_controllers,
        lab.dead_dc)]}``. Nor is exch3, which serves SMTP but no NTP; list every SMTP server
        with ``exchange_servers={"static": [s.static_entry for s in lab.smtp_servers]}``
        (``checks.smtp`` defaults to ports 25 and 2525, as the lab serves). Mapping
        overrides merge into the defaults (``checks={"clock":
        {"max_skew": "10m"}}`` changes one key); other values (lists too) replace; None removes
        the key.
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
                "static": [h.static_entry for h in self.domain_controllers],
            },
            "exchange_servers": {
                "discover": "none",
                "static": [h.static_entry for h in self.exchange_servers],
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
        names = {h.name for h in (*self.hosts, self.dead_dc)}
        parts = [f"{h.name}={h.address}" for h in (*self.hosts, self.dead_dc)]
        parts += [f"{s.name}={s.address}" for s in self.smtp_servers if s.name not in names]
        return f"<Lab {self.directory} {' '.join(parts)}>"
