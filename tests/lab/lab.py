"""The lab: Samba AD DCs, NTP and SMTP servers standing in for a domain and its Exchange servers.

Address plan (``network`` defaults to 127.0.10; every address gets a /32 alias on ``lo``):

    dc1.corp.example.test    .10  Samba AD DC (LDAP, LDAPS, GC, KDC, kpasswd, DNS) + chronyd
    dc2.corp.example.test    .11  Samba KDC (Kerberos, kpasswd) + chronyd, both under
                                  libfaketime, 420 s (7 min) ahead
    dc3.corp.example.test    .12  only with ``replica_dc=True``: a second Samba AD DC joined to
                                  dc1, both replicating every 5 s; + chronyd, true clock
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

dc3, the replica (``Lab.start(replica_dc=True)``, see ``tests/lab/replica.py``), is a real
replica: ``samba-tool domain join ... DC`` against dc1, built once and kept as a pair (dc1's
database with dc3 in it, and dc3's folder) in the provision cache. Both DCs then run with
``dreplsrv:periodic_interval=5``, in mount namespaces of their own where a hosts file of the
lab's (both names and both ``<NTDS Settings objectGUID>._msdcs`` names) and a resolv.conf naming
only dc1's and dc3's DNS replace the machine's; the machine's /etc/hosts is never touched.
``KRB5_CONFIG`` lists both KDCs. dc3 is not in DNS (the lab runs no dnsupdate) and is listed in
:attr:`Lab.domain_controllers` and the exporter's config. :meth:`Lab.stop_samba` and
:meth:`Lab.start_samba` stop and start one DC's samba; :meth:`Lab.samba_tool` runs samba-tool
as that DC.

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
import datetime
import ipaddress
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import ldap3
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
from tests.lab.replica import lab_names, replica_pair
from tests.lab.samba import (
    DC_PORTS,
    DomainControllerSpec,
    NameFiles,
    SambaDC,
    krb5_conf,
    mount_namespace_problem,
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
    replica_dc: Host | None = None  # dc3, a replica of dc1: runs only with replica_dc=True

    @property
    def hosts(self) -> tuple[Host, ...]:
        """Every host that serves NTP in a lab without the replica (dc3 is not planned in)."""
        return (self.dc, self.skewed_dc, *self.exchange_servers)

    @property
    def addresses(self) -> list[str]:
        replica = () if self.replica_dc is None else (self.replica_dc,)
        found = [host.address for host in (*self.hosts, *replica, self.dead_dc)]
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
        replica_dc=Host(f"dc3.{DOMAIN}", f"{network}.12", "domain_controller", 0),
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


def preflight(
    *,
    samba: bool,
    ntp: bool,
    skewed_dc: bool = False,
    smtp: bool = False,
    replica_dc: bool = False,
) -> list[str]:
    """Why the lab cannot run on this machine; empty when it can."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the lab must run as root (it adds loopback aliases and binds port 123)")
    commands = {"ip": "iproute2"}
    if samba or skewed_dc or replica_dc:
        commands |= {"samba": "samba-ad-dc", "samba-tool": "samba", "openssl": "openssl"}
    if replica_dc:
        commands |= {"unshare": "util-linux", "mount": "mount", "ldbsearch": "ldb-tools"}
    if ntp:
        commands |= {"chronyd": "chrony"}
    for command, package in commands.items():
        if shutil.which(command) is None:
            problems.append(f"{command} not found: apt-get install {package}")
    if (ntp or skewed_dc or smtp) and not FAKETIME_LIBRARY.exists():
        problems.append(f"{FAKETIME_LIBRARY} not found: apt-get install faketime")
    if replica_dc and not problems and (problem := mount_namespace_problem()) is not None:
        problems.append(
            "the replica DC runs samba in a mount namespace (its own /etc/hosts), which this "
            f"machine refuses: {problem}"
        )
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


def _showrepl_time(text: object) -> float | None:
    """A time as ``samba-tool drs showrepl --json`` writes it ("Sun Nov 29 12:00:58 2026 UTC");
    None for "" (never) or anything else."""
    # By hand: strptime's %a and %b follow the locale, samba-tool's English names do not.
    fields = text.split() if isinstance(text, str) else []
    if len(fields) != 6 or fields[5] != "UTC" or fields[1] not in _MONTHS:
        return None
    try:
        hour, minute, second = (int(part) for part in fields[3].split(":"))
        moment = datetime.datetime(
            int(fields[4]),
            _MONTHS.index(fields[1]) + 1,
            int(fields[2]),
            hour,
            minute,
            second,
            tzinfo=datetime.UTC,
        )
    except ValueError:
        return None
    return moment.timestamp()


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


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
        assert self.plan.replica_dc is not None
        self.replica_dc: Host = self.plan.replica_dc
        self.dead_dc = self.plan.dead_dc
        self.exchange_servers = self.plan.exchange_servers
        self.smtp_servers = self.plan.smtp_servers
        self.samba: SambaDC | None = None
        self.skewed_samba: SambaDC | None = None
        self.replica_samba: SambaDC | None = None
        self._replica = False  # dc3 is part of this lab (even while stop_samba holds it)
        self.names: NameFiles | None = None  # the replicating DCs' hosts file and resolv.conf
        self.dsa_guids: dict[str, str] = {}  # dc1/dc3 -> NTDS Settings objectGUID (replica lab)
        self._samba_started_at = 0.0  # Unix time of the latest start of dc1's or dc3's samba
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
        replica_dc: bool = False,
        network: str = DEFAULT_NETWORK,
        base_dir: Path | None = None,
        use_cache: bool = True,
        timeout: float = 60.0,
    ) -> Lab:
        """Start the chosen components and return once every one of them answers.

        ``samba``: dc1's Samba AD DC. ``ntp``: chronyd on the DCs and both Exchange servers.
        ``skewed_dc``: dc2's Samba KDC under libfaketime (default: whatever ``samba`` is).
        ``replica_dc``: dc3, a second Samba AD DC joined to dc1, both replicating every 5 s
        (needs ``samba``; the joined pair comes from the provision cache, built on first use).
        ``dead_dc``: dc9's silent UDP sockets (held by this process; no daemon).
        ``smtp``: the SMTP stand-ins of exch1, exch2 (+420 s) and exch3 on 25 and 2525.
        ``network``: first three octets of the addresses, so a second lab can run beside one.
        ``timeout``: seconds each daemon may take to answer before LabError.
        """
        if skewed_dc is None:
            skewed_dc = samba
        if replica_dc and not samba:
            raise LabError("the replica DC replicates with dc1: start it with samba=True too")
        problems = preflight(
            samba=samba, ntp=ntp, skewed_dc=skewed_dc, smtp=smtp, replica_dc=replica_dc
        )
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
            lab.ensure(
                samba=samba,
                ntp=ntp,
                skewed_dc=skewed_dc,
                dead_dc=dead_dc,
                smtp=smtp,
                replica_dc=replica_dc,
            )
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
        replica_dc: bool = False,
    ) -> None:
        """Start the named components if they are not running yet (an NTP-only lab can grow DCs).

        The replica DC can only start together with dc1 (``samba=True`` on a lab without it):
        the two start from one snapshot of the joined pair.
        """
        start_samba = samba and self.samba is None
        start_ntp = ntp and not self._ntp
        start_skewed = skewed_dc and self.skewed_samba is None
        start_dead = dead_dc and not self._dead_dc_sockets
        start_smtp = smtp and not self._smtp
        start_replica = replica_dc and not self._replica
        components = {
            "samba": start_samba,
            "skewed dc": start_skewed,
            "replica dc": start_replica,
            "dead dc": start_dead,
            "ntp": start_ntp,
            "smtp": start_smtp,
        }
        if not any(components.values()):
            return
        if self._stopped:
            raise LabError("this lab has been stopped; start a new one")
        if start_replica and not start_samba:
            raise LabError(
                "the replica DC starts only together with dc1 (both from the cached joined pair); "
                "dc1 already runs"
                if self.samba is not None
                else "the replica DC replicates with dc1: ask for samba=True too"
            )
        problems = preflight(
            samba=start_samba,
            ntp=start_ntp,
            skewed_dc=start_skewed,
            smtp=start_smtp,
            replica_dc=start_replica,
        )
        if problems:
            raise LabError("the lab cannot run here:\n" + "\n".join(f"  - {p}" for p in problems))
        started = time.monotonic()
        if start_replica:
            self._replica = True

        # chronyd for every host that serves NTP: all of them when NTP starts now, only the
        # replica when NTP already runs.
        ntp_hosts: tuple[Host, ...] = ()
        if start_ntp:
            ntp_hosts = self._ntp_hosts()
        elif start_replica and self._ntp:
            ntp_hosts = (self.replica_dc,)
        smtp_servers = self.smtp_servers if start_smtp else ()
        wanted = [("udp", host.address, 123) for host in ntp_hosts]
        wanted += [("tcp", s.address, port) for s in smtp_servers for port in s.ports]
        if start_samba:
            wanted += [(transport, self.dc.address, port) for transport, port in DC_PORTS]
        if start_replica:
            wanted += [(transport, self.replica_dc.address, port) for transport, port in DC_PORTS]
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
            self._spawn_samba(replica=start_replica)
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
        if self.replica_samba is not None and start_replica:
            self.replica_samba.wait_ready(timeout=self._timeout)
            # Up is not enough: a partner "never replicated" yet reads as a problem.
            self.wait_replicated()
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

    def _spawn_samba(self, *, replica: bool = False) -> None:
        if replica:
            self._spawn_replicating_pair()
            return
        spec = self._dc_spec()
        folder = self.directory / self.dc.short_name
        password = provision(spec, folder, use_cache=self._use_cache, scratch=self.directory)
        self.krb5_conf.write_text(krb5_conf(REALM, [self.dc.address]))
        self.samba = SambaDC(spec, folder, password, self.krb5_conf)
        self._write_password_file()
        self._record(self.samba.spawn())

    def _spawn_replicating_pair(self) -> None:
        """dc1 and dc3 from the cached joined pair, each in its mount namespace with our names."""
        spec, replica_spec = self._dc_spec(), self._replica_spec()
        pair = replica_pair(
            spec,
            replica_spec,
            use_cache=self._use_cache,
            scratch=self.directory,
            record=self._record,
            forget=self._forget,
            timeout=self._timeout,
        )
        dc_folder = self.directory / self.dc.short_name
        replica_folder = self.directory / self.replica_dc.short_name
        pair.install(dc_folder, replica_folder)
        self.dsa_guids = dict(pair.dsa_guids)
        self.names = NameFiles(self.directory / "hosts", self.directory / "resolv.conf")
        names = lab_names(spec, replica_spec, pair.dsa_guids)
        for host in (*self.plan.hosts, self.dead_dc):
            names.setdefault(host.name, host.address)
        for smtp in self.smtp_servers:
            names.setdefault(smtp.name, smtp.address)
        self.names.write(names, [self.dc.address, self.replica_dc.address])
        self.krb5_conf.write_text(krb5_conf(REALM, [self.dc.address, self.replica_dc.address]))
        self.samba = SambaDC(spec, dc_folder, pair.admin_password, self.krb5_conf, names=self.names)
        self.replica_samba = SambaDC(
            replica_spec, replica_folder, pair.admin_password, self.krb5_conf, names=self.names
        )
        self._write_password_file()
        self._samba_started_at = time.time()
        self._record(self.samba.spawn())
        self._record(self.replica_samba.spawn())

    def _dc_spec(self) -> DomainControllerSpec:
        return DomainControllerSpec(REALM, NETBIOS_DOMAIN, self.dc.short_name, self.dc.address)

    def _replica_spec(self) -> DomainControllerSpec:
        host = self.replica_dc
        return DomainControllerSpec(REALM, NETBIOS_DOMAIN, host.short_name, host.address)

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
            for dc in (self.samba, self.skewed_samba, self.replica_samba)
            if dc is not None and dc.process is not None
        ]
        return children + list(self._ntp.values()) + list(self._smtp.values())

    def _record(self, process: ManagedProcess) -> None:
        # Saved before waiting for readiness: a crash while waiting must still find it.
        self._state.processes.append(process.record)
        self._state.save()

    def _forget(self, process: ManagedProcess) -> None:
        """Drop a process we stopped ourselves from the state file."""
        self._state.processes = [r for r in self._state.processes if r != process.record]
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
        """Every host the exporter's config lists: :attr:`domain_controllers` and the Exchange
        servers that serve NTP (exch1, exch2). Not the dead dc9, not exch3 (SMTP only)."""
        return (*self.domain_controllers, *self.exchange_servers)

    @property
    def domain_controllers(self) -> tuple[Host, ...]:
        """The DCs that answer: dc1 (Samba AD DC), dc2 (the KDC 420 s ahead) unless this lab runs
        neither its KDC nor its NTP server, and dc3 (the replica) when the lab has it, also
        while :meth:`stop_samba` holds it stopped."""
        found = [self.dc]
        if self.skewed_samba is not None or self.skewed_dc.name in self._ntp or not self._started:
            found.append(self.skewed_dc)
        if self._replica:
            found.append(self.replica_dc)
        return tuple(found)

    @property
    def _started(self) -> bool:
        return bool(self.samba or self.skewed_samba or self._ntp or self._smtp)

    def _ntp_hosts(self) -> tuple[Host, ...]:
        replica = (self.replica_dc,) if self._replica else ()
        return (*self.plan.hosts[:2], *replica, *self.exchange_servers)

    @property
    def replica_dc_running(self) -> bool:
        """True while dc3's samba runs (a replica lab, and not stopped with :meth:`stop_samba`)."""
        return (
            self.replica_samba is not None
            and self.replica_samba.process is not None
            and not self._stopped
        )

    @property
    def samba_running(self) -> bool:
        """True while dc1's samba runs (not stopped with :meth:`stop_samba`)."""
        return self.samba is not None and self.samba.process is not None and not self._stopped

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

    def admin_ldap(self, url: str | None = None, *, start_tls: bool = False) -> ldap3.Connection:
        """A bound simple-bind connection as Administrator (dc1's LDAPS unless ``url`` says
        otherwise); ``get_info=NONE``, so ldap3 reads attributes its schema lacks. Unbind it."""
        url = url or self.ldaps_url
        tls = ldap3.Tls(validate=ssl.CERT_NONE)
        server = ldap3.Server(url, use_ssl=url.startswith("ldaps:"), get_info=ldap3.NONE, tls=tls)
        conn = ldap3.Connection(
            server,
            user=self.admin_user,
            password=self.password_file.read_text(),
            authentication=ldap3.SIMPLE,
            receive_timeout=10,
        )
        conn.open()
        if start_tls and not conn.start_tls():
            raise LabError(f"StartTLS refused by {url}: {conn.result}")
        if not conn.bind():
            raise LabError(f"simple bind as {self.admin_user} refused by {url}: {conn.result}")
        return conn

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

    # --- one DC's samba: stop, start, samba-tool ------------------------------------------------

    def samba_of(self, host: Host | str) -> SambaDC:
        """The Samba DC of dc1, dc2 or dc3 (by :class:`Host` or name, e.g. "dc3")."""
        for candidate, samba in (
            (self.dc, self.samba),
            (self.skewed_dc, self.skewed_samba),
            (self.replica_dc, self.replica_samba),
        ):
            if host in (candidate, candidate.name, candidate.short_name):
                if samba is None:
                    raise LabError(f"this lab runs no samba for {candidate.name}")
                return samba
        raise LabError(f"{host} is not one of this lab's Samba DCs")

    def stop_samba(self, host: Host | str) -> None:
        """Stop one DC's samba (its whole process group): its LDAP, KDC, DNS and RPC go away,
        as for a DC that is switched off. The lab keeps listing it; :meth:`start_samba` starts
        it again, on the same database. Safe to repeat."""
        samba = self.samba_of(host)
        process = samba.process
        if process is None:
            return
        if samba is self.samba:
            self.resume_ldap()
        started = time.monotonic()
        samba.stop()
        self._forget(process)
        log.info("stopped samba of %s in %.2f s", samba.spec.fqdn, time.monotonic() - started)

    def start_samba(self, host: Host | str) -> None:
        """Start a DC stopped with :meth:`stop_samba` again; returns once it answers."""
        if self._stopped:
            raise LabError("this lab has been stopped; start a new one")
        samba = self.samba_of(host)
        if samba.process is not None:
            return
        started = time.monotonic()
        self._record(samba.spawn())
        self._samba_started_at = time.time()
        samba.wait_ready(timeout=self._timeout)
        log.info("started samba of %s in %.2f s", samba.spec.fqdn, time.monotonic() - started)

    def replication(self, host: Host | str) -> list[dict[str, Any]]:
        """``samba-tool drs showrepl --json``'s ``repsFrom`` of one DC: one dict per (partner,
        naming context) with "NC dn", "NTDS DN", "consecutive failures", "last success" ("" or
        a date), "last attempt message", ..."""
        samba = self.samba_of(host)
        shown = samba.samba_tool(
            "drs",
            "showrepl",
            "--json",
            samba.spec.fqdn,
            f"--username={self.admin_user}",
            f"--password={samba.admin_password}",
        )
        reps_from: list[dict[str, Any]] = json.loads(shown.stdout).get("repsFrom", [])
        return reps_from

    def wait_replicated(self, timeout: float | None = None, *, since: float | None = None) -> None:
        """Until dc1 and dc3 have each pulled every naming context from the other with success
        after ``since`` (Unix time; default: when the later of the two samba processes started),
        and count no failures, as ``samba-tool drs showrepl`` says.

        After a DC restarts, its partner's next pull from it fails once on the connection it
        still holds (result 64, WERR_NETNAME_DELETED) and the one after succeeds: a success
        from before the restart proves nothing, hence ``since``.
        """
        if self.replica_samba is None:
            raise LabError("this lab has no replica DC; start it with replica_dc=True")
        hosts = (self.dc, self.replica_dc)
        pending: dict[str, list[str]] = {}
        # showrepl's times are whole seconds: a success in the second of ``since`` may be older.
        after = math.floor(self._samba_started_at if since is None else since) + 1

        def replicated() -> bool:
            pending.clear()
            # Both at once: each samba-tool run costs most of a second in Python start-up.
            with ThreadPoolExecutor(len(hosts)) as pool:
                shown = list(pool.map(self.replication, hosts))
            for host, reps in zip(hosts, shown, strict=True):
                waiting = [
                    r["NC dn"]
                    for r in reps
                    if (_showrepl_time(r.get("last success")) or 0) < after
                    or r.get("consecutive failures")
                ]
                if waiting or not reps:
                    pending[host.name] = waiting or ["(no repsFrom yet)"]
            return not pending

        started = time.monotonic()
        try:
            wait_until(
                replicated,
                timeout=self._timeout if timeout is None else timeout,
                what="dc1 and dc3 to replicate from each other",
                interval=0.5,
            )
        except LabError as exc:
            raise LabError(f"{exc}; still waiting: {pending}") from None
        log.info("dc1 and dc3 replicate (checked in %.2f s)", time.monotonic() - started)

    @contextmanager
    def samba_stopped(self, host: Host | str) -> Iterator[None]:
        """``with lab.samba_stopped(lab.replica_dc): ...``: stopped inside, started on leaving."""
        self.stop_samba(host)
        try:
            yield
        finally:
            if not self._stopped:
                self.start_samba(host)

    def samba_tool(
        self, host: Host | str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``samba-tool ARGS --configfile=<that DC's smb.conf>``, seeing the names and KDCs that
        DC sees (a replica lab's hosts file, ``KRB5_CONFIG``); LabError on a non-zero exit
        unless ``check`` is false. E.g. ``lab.samba_tool(lab.replica_dc, "drs", "showrepl",
        "--json", lab.replica_dc.name, f"--username={lab.admin_user}",
        f"--password={lab.admin_password}")``."""
        return self.samba_of(host).samba_tool(*args, check=check)

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

        Every host in :attr:`hosts` is listed: dc1 and dc2 (and dc3 in a replica lab) as domain
        controllers, exch1 and exch2 as Exchange servers. dc9, which answers nothing, is not; add it with
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

    def directory_exporter_config(self, **overrides: Any) -> dict[str, Any]:
        """:meth:`exporter_config` plus everything the directory gives: Exchange servers
        discovered from AD (resolved through the lab's DNS, never the host's), the Global
        Catalog for duplicates, and the Kerberos and LDAP clocks. ``overrides`` merge last."""
        config = self.exporter_config(
            dns={"nameservers": [self.dns_server], "timeout": "1s"},
            exchange_servers={"discover": "ldap"},
            ldap={"global_catalog_url": self.gc_ldaps_url},
            checks={"clock": {"sources": ["ntp", "kerberos", "ldap"]}},
        )
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
