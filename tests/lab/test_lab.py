"""The lab itself: its servers answer as promised, and nothing outlives it."""

from __future__ import annotations

import asyncio
import calendar
import datetime
import email.utils
import json
import os
import re
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.asyncresolver
import dns.resolver
import ntplib
import pytest
from ldap3 import Connection

from tests.lab import (
    CUSTOM_SMTP_BANNER,
    DEFAULT_NETWORK,
    REALM,
    SKEWED_CLOCK_OFFSET,
    SMTP_FRONTEND_PORT,
    SMTP_HUB_PORT,
    Host,
    HostileSmtpPeer,
    Lab,
    LabError,
    SmtpServer,
    exchange_directory,
    faketime,
    lab_plan,
)
from tests.lab.hostile_smtp import HOSTILE_BANNER
from tests.lab.net import (
    DNS_TYPE_SRV,
    KDC_ERR_C_PRINCIPAL_UNKNOWN,
    dns_answer_count,
    kdc_error,
    kpasswd_answers,
    loopback_addresses,
    ntp_answers,
    root_dse_attribute,
    smtp_banner,
    smtp_session,
    tcp_accepts,
)
from tests.lab.procs import process_state
from tests.lab.samba import rewrite_smb_conf
from tests.lab.smtp_standin import banner_date, default_banner, ehlo_keywords, parse_utc_offset
from tests.lab.state import RUNTIME_DIR

REPO = Path(__file__).resolve().parents[2]
PLAN = lab_plan()
# Labs these tests start themselves, beside the session's lab on the default network.
TEARDOWN_NETWORK = "127.0.11"
CRASH_NETWORK = "127.0.12"


def _running(pid: int) -> bool:
    """True while /proc lists pid as anything but a zombie (an exited process not yet reaped)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat_line[stat_line.rindex(")") + 2] not in "ZX"


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _host(lab: Lab, name: str) -> Host:
    return next(h for h in lab.hosts if h.name == name)


@pytest.mark.parametrize("planned", PLAN.hosts, ids=lambda h: h.short_name)
def test_ntp_servers_serve_their_planned_clock(ntp_lab: Lab, planned: Host) -> None:
    host = _host(ntp_lab, planned.name)
    reply = ntplib.NTPClient().request(host.address, version=4, timeout=2)
    tolerance = 0.05 if host.ntp_offset == 0 else 1.0
    assert reply.offset == pytest.approx(host.ntp_offset, abs=tolerance)
    assert (reply.stratum, reply.leap) == (8, 0)


def test_exch2_and_dc2_are_seven_minutes_ahead(ntp_lab: Lab) -> None:
    skewed = [h for h in ntp_lab.hosts if h.ntp_offset]
    assert [(h.name, h.role, h.ntp_offset) for h in skewed] == [
        ("dc2.corp.example.test", "domain_controller", 420),
        ("exch2.corp.example.test", "exchange", 420),
    ]
    assert ntp_lab.skewed_dc == skewed[0]
    assert ntp_lab.dead_dc not in ntp_lab.hosts


# --- Kerberos: the real DC, the skewed DC, the dead DC ----------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_the_dc_answers_kerberos_and_kpasswd(lab: Lab, transport: str) -> None:
    code, kdc_time = kdc_error(lab.dc.address, lab.realm, transport=transport)
    assert code == KDC_ERR_C_PRINCIPAL_UNKNOWN
    assert kdc_time == pytest.approx(time.time(), abs=1.5)
    assert kpasswd_answers(lab.dc.address, transport=transport)


def test_the_skewed_dc_runs_samba_under_faketime(lab: Lab) -> None:
    assert lab.skewed_samba is not None and lab.skewed_samba.process is not None
    samba = lab.skewed_samba.process
    assert samba.exit_reason() is None
    # Samba overwrites /proc/PID/environ with its process title; the mapped library tells.
    assert faketime.is_preloaded(samba.pid)
    assert faketime.environment(lab.skewed_dc.ntp_offset)["FAKETIME"] == "+420"
    assert lab.skewed_samba.env()["FAKETIME"] == "+420"
    assert not faketime.is_preloaded(lab.samba.process.pid)  # type: ignore[union-attr]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_the_skewed_kdc_answers_seven_minutes_ahead(lab: Lab, transport: str) -> None:
    code, kdc_time = kdc_error(lab.skewed_dc.address, lab.realm, transport=transport)
    assert code == KDC_ERR_C_PRINCIPAL_UNKNOWN  # same realm, same database as dc1
    assert kdc_time - time.time() == pytest.approx(SKEWED_CLOCK_OFFSET, abs=1.5)
    assert kpasswd_answers(lab.skewed_dc.address, transport=transport)


def test_the_skewed_dcs_ntp_and_kerberos_clocks_agree(lab: Lab) -> None:
    ntp = ntplib.NTPClient().request(lab.skewed_dc.address, version=4, timeout=2).offset
    _, kdc_time = kdc_error(lab.skewed_dc.address, lab.realm)
    assert kdc_time - time.time() == pytest.approx(ntp, abs=1.5)


def test_the_skewed_kdc_issues_tickets_from_its_own_clock(lab: Lab, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "KRB5_CONFIG": str(lab.skewed_dc_krb5_conf),
        "KRB5CCNAME": f"FILE:{tmp_path}/cc",
        "LC_ALL": "C",
        "TZ": "UTC",
    }
    kinit = subprocess.run(
        ["kinit", f"Administrator@{lab.realm}"],
        input=lab.admin_password + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    issued = time.time()
    # MIT kinit corrects for the KDC's offset, so it succeeds despite the 7 minutes.
    assert kinit.returncode == 0, kinit.stderr
    klist = subprocess.run(["klist"], capture_output=True, text=True, env=env, timeout=30)
    line = next(
        ln for ln in klist.stdout.splitlines() if ln.endswith(f"krbtgt/{lab.realm}@{lab.realm}")
    )
    # klist prints the ticket's start time, as the KDC set it, in whole seconds (TZ=UTC).
    start = calendar.timegm(time.strptime(" ".join(line.split()[:2]), "%m/%d/%y %H:%M:%S"))
    assert start - issued == pytest.approx(SKEWED_CLOCK_OFFSET, abs=2.0)


@pytest.mark.parametrize("port", [88, 464])
def test_the_dead_dcs_tcp_ports_refuse(ntp_lab: Lab, port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((ntp_lab.dead_dc.address, port), timeout=1.0).close()


@pytest.mark.parametrize("port", [88, 123, 464])
def test_the_dead_dcs_udp_ports_drop(ntp_lab: Lab, port: int) -> None:
    assert ntp_lab.dead_dc_running
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        sock.connect((ntp_lab.dead_dc.address, port))  # connected: ICMP unreachable would show
        sock.send(b"\x23" + bytes(47) if port == 123 else b"anything")
        with pytest.raises(TimeoutError):
            sock.recv(512)
    if port == 88:
        with pytest.raises(TimeoutError):
            kdc_error(ntp_lab.dead_dc.address, ntp_lab.realm, timeout=0.3)
    if port == 123:
        assert not ntp_answers(ntp_lab.dead_dc.address, timeout=0.3)


# --- Samba's internal DNS ---------------------------------------------------------------------


def _resolver(lab: Lab) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [lab.dns_server]
    resolver.lifetime = 2.0
    return resolver


@pytest.mark.parametrize(
    ("name", "port"),
    [
        ("_ldap._tcp.dc._msdcs.corp.example.test", 389),
        ("_kerberos._tcp.corp.example.test", 88),
        ("_kerberos._udp.corp.example.test", 88),
        ("_kpasswd._tcp.corp.example.test", 464),
        ("_gc._tcp.corp.example.test", 3268),
    ],
)
def test_samba_dns_serves_the_dc_locator_records(lab: Lab, name: str, port: int) -> None:
    assert lab.dns_server == "127.0.10.10"
    answer = _resolver(lab).resolve(name, "SRV")
    assert [(r.target.to_text(), r.port) for r in answer] == [(f"{lab.dc.name}.", port)]


def test_samba_dns_resolves_the_dc_and_nothing_outside_its_zone(lab: Lab) -> None:
    resolver = _resolver(lab)
    assert [r.address for r in resolver.resolve(lab.dc.name, "A")] == [lab.dc.address]
    # dc2 is a clone that registers nothing; dc9 was never in the domain.
    for missing in (lab.skewed_dc.name, lab.dead_dc.name):
        with pytest.raises(dns.resolver.NXDOMAIN):
            resolver.resolve(missing, "A")


def test_async_srv_discovery_finds_the_dc(lab: Lab) -> None:
    async def discover() -> list[tuple[str, int]]:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [lab.dns_server]
        answer = await resolver.resolve(f"_kerberos._tcp.{lab.domain}", "SRV")
        hosts = []
        for record in answer:
            a = await resolver.resolve(record.target, "A")
            hosts += [(a_record.address, record.port) for a_record in a]
        return hosts

    assert asyncio.run(discover()) == [(lab.dc.address, 88)]


def test_samba_accepts_an_ldaps_simple_bind_as_administrator(lab: Lab) -> None:
    conn = lab.admin_ldap()
    try:
        conn.search("", "(objectClass=*)", search_scope="BASE", attributes=["dnsHostName"])
        assert conn.entries[0].dnsHostName.value == "dc1.corp.example.test"
    finally:
        conn.unbind()


def test_samba_kdc_issues_a_tgt_with_the_labs_krb5_conf(lab: Lab, tmp_path: Path) -> None:
    env = {**os.environ, "KRB5_CONFIG": str(lab.krb5_conf), "KRB5CCNAME": f"FILE:{tmp_path}/cc"}
    kinit = subprocess.run(
        ["kinit", f"Administrator@{lab.realm}"],
        input=lab.admin_password + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert kinit.returncode == 0, kinit.stderr
    klist = subprocess.run(["klist"], capture_output=True, text=True, env=env, timeout=30)
    assert f"krbtgt/{lab.realm}@{lab.realm}" in klist.stdout


def test_password_file_is_private_and_holds_the_admin_password(lab: Lab) -> None:
    assert stat.S_IMODE(lab.password_file.stat().st_mode) == 0o600
    assert lab.password_file.read_text() == lab.admin_password


def test_exporter_config_describes_the_lab(lab: Lab) -> None:
    config = lab.exporter_config()
    assert config["realm"] == "CORP.EXAMPLE.TEST"
    assert config["ldap"] == {
        "url": "ldaps://127.0.10.10:636",
        "user": "Administrator@corp.example.test",
        "password_file": str(lab.directory / "ldap-password"),
        "tls_verify": False,
        "timeout": "10s",
    }
    assert config["domain_controllers"] == {
        "discover": "none",
        "static": [
            {"name": "dc1.corp.example.test", "address": "127.0.10.10"},
            {"name": "dc2.corp.example.test", "address": "127.0.10.11"},
            {"name": "dc3.corp.example.test", "address": "127.0.10.12"},  # the replica
        ],
    }
    assert config["exchange_servers"]["static"] == [
        {"name": "exch1.corp.example.test", "address": "127.0.10.21"},
        {"name": "exch2.corp.example.test", "address": "127.0.10.22"},
    ]
    assert config["checks"]["clock"] == {
        "enabled": True,
        "sources": ["ntp"],
        "max_skew": "5m",
        "timeout": "3s",
    }


def test_exporter_config_lists_every_host_and_can_add_the_dead_dc(lab: Lab) -> None:
    config = lab.exporter_config()
    listed = {
        (s["name"], s["address"])
        for section in ("domain_controllers", "exchange_servers")
        for s in config[section]["static"]
    }
    assert listed == {(h.name, h.address) for h in lab.hosts}
    dcs = [h.static_entry for h in (*lab.domain_controllers, lab.dead_dc)]
    with_dead = lab.exporter_config(domain_controllers={"static": dcs})["domain_controllers"]
    assert with_dead["discover"] == "none"
    assert with_dead["static"][-1] == {"name": "dc9.corp.example.test", "address": "127.0.10.19"}


def test_exporter_loads_the_labs_config(lab: Lab) -> None:
    from exporter.config import load_file

    settings = load_file(lab.write_exporter_config())
    assert settings.realm == lab.realm


def test_exporter_config_overrides_merge_into_the_defaults(tmp_path: Path) -> None:
    lab = Lab(tmp_path, network=DEFAULT_NETWORK, use_cache=True, timeout=1.0)  # never started
    config = lab.exporter_config(checks={"clock": {"max_skew": "10m"}}, ldap={"tls_verify": None})
    assert config["checks"]["clock"]["max_skew"] == "10m"
    assert config["checks"]["clock"]["sources"] == ["ntp"]
    assert "tls_verify" not in config["ldap"]
    assert lab.exporter_config()["checks"]["clock"]["max_skew"] == "5m"


def test_copied_smb_conf_points_at_its_new_folder_and_forwards_no_dns() -> None:
    provisioned = (
        "# Global parameters\n[global]\n\tdns forwarder = 10.255.255.53\n"
        "\tlock directory = /cache/x/dc\n\tprivate dir = /cache/x/dc/private\n"
        "\tlog file = /var/log/samba/log.%m\n\n[sysvol]\n\tpath = /cache/x/dc/state/sysvol\n"
    )
    text = rewrite_smb_conf(provisioned, "/cache/x/dc", Path("/lab/dc1"))
    assert "/cache/x" not in text
    assert "dns forwarder" not in text
    assert "\tprivate dir = /lab/dc1/private\n" in text
    assert "\tpid directory = /lab/dc1/run\n" in text
    assert "\tlog file = /lab/dc1/log.%m\n" in text
    assert "/var/log/samba" not in text
    assert "\tpath = /lab/dc1/state/sysvol\n" in text


def test_a_clones_smb_conf_takes_its_own_address_name_and_services() -> None:
    provisioned = (
        "[global]\n\tinterfaces = 127.0.10.10\n\tNetBIOS  Name = DC1\n"
        "\tserver services = s3fs, rpc\n\tprivate dir = /cache/x/dc/private\n"
    )
    text = rewrite_smb_conf(
        provisioned,
        "/cache/x/dc",
        Path("/lab/dc2"),
        services=("kdc",),
        overrides={"interfaces": "127.0.10.11", "netbios name": "DC2"},
    )
    assert "127.0.10.10" not in text
    assert "DC1" not in text
    assert "\tinterfaces = 127.0.10.11\n" in text
    assert "\tnetbios name = DC2\n" in text
    assert [ln for ln in text.splitlines() if "server services" in ln] == [
        "\tserver services = kdc"
    ]


def test_a_second_lab_on_the_same_addresses_is_refused(lab: Lab) -> None:
    with pytest.raises(LabError, match="another lab"):
        Lab.start(samba=False, network=DEFAULT_NETWORK)


@pytest.mark.lab
def test_teardown_leaves_no_process_alias_or_folder() -> None:
    machine_names = {path: Path(path).read_text() for path in ("/etc/hosts", "/etc/resolv.conf")}
    lab = Lab.start(network=TEARDOWN_NETWORK, replica_dc=True)
    # The replicating DCs see their names through a mount namespace; the machine's files stay.
    assert {path: Path(path).read_text() for path in machine_names} == machine_names
    pids = lab.pids()
    groups = [record.pid for record in lab.process_records()]
    addresses = set(lab.plan.addresses)
    assert f"{TEARDOWN_NETWORK}.23" in addresses  # exch3: SMTP only
    assert f"{TEARDOWN_NETWORK}.12" in addresses  # dc3, the replica
    state_file = RUNTIME_DIR / f"{lab.directory.name}.json"
    # samba dc1, dc2 and dc3 + five chronyd + three SMTP stand-ins
    assert len(groups) == 11
    assert len(pids) > 6  # dc1's samba forks a process per service
    assert addresses <= loopback_addresses()
    assert state_file.exists()
    assert lab.dead_dc_running
    lab.pause_ldap()  # stopping must not wait on SIGSTOPped processes

    lab.stop()

    assert [pid for pid in pids if _running(pid)] == []
    assert [pid for pid in groups if os.path.exists(f"/proc/{pid}")] == []  # reaped, too
    assert [path for pid in groups for path in faketime.shared_memory_files(pid)] == []
    assert not lab.dead_dc_running
    assert addresses & loopback_addresses() == set()
    assert not lab.directory.exists()
    assert not state_file.exists()
    assert {path: Path(path).read_text() for path in machine_names} == machine_names


_CRASHING_OWNER = f"""
import json, os
from tests.lab import Lab
lab = Lab.start(network={CRASH_NETWORK!r}, replica_dc=True)
print(json.dumps({{
    "dir": str(lab.directory),
    "samba": [p for r in lab.process_records() if r.name.startswith("samba") for p in r.members()],
    "chronyd": [r.pid for r in lab.process_records() if r.name.startswith("chronyd")],
    "smtp": [r.pid for r in lab.process_records() if r.name.startswith("smtp")],
    "groups": [r.pid for r in lab.process_records()],
}}), flush=True)
os._exit(0)  # no atexit, no teardown: as if the test run had been killed
"""


@pytest.mark.lab
def test_down_cleans_up_after_an_owner_that_died() -> None:
    owner = subprocess.run(
        [sys.executable, "-c", _CRASHING_OWNER],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert owner.returncode == 0, owner.stderr
    left = json.loads(owner.stdout)
    addresses = {f"{CRASH_NETWORK}.{n}" for n in (10, 11, 12, 19, 21, 22, 23)}
    assert len(left["chronyd"]) == 5
    assert len(left["smtp"]) == 3

    # Samba's and the SMTP stand-ins' stdin was a pipe from the owner: they stop on their own
    # once the owner is gone.
    assert _wait_for(lambda: not any(_running(pid) for pid in left["samba"] + left["smtp"]))
    # chronyd has no such lifeline: it and the aliases wait for `down`.
    assert all(_running(pid) for pid in left["chronyd"])
    assert addresses <= loopback_addresses()

    down = subprocess.run(
        [sys.executable, "-m", "tests.lab", "down", "--abandoned"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 0, down.stdout + down.stderr
    assert left["dir"] in down.stdout
    assert [pid for pid in left["chronyd"] if _running(pid)] == []
    assert [path for pid in left["groups"] for path in faketime.shared_memory_files(pid)] == []
    assert addresses & loopback_addresses() == set()
    assert not Path(left["dir"]).exists()


# --- the Exchange content in dc1's domain -----------------------------------------------------

EXCHANGE_SERVER_ATTRIBUTES = [
    "cn",
    "networkAddress",
    "msExchCurrentServerRoles",
    "serialNumber",
    "msExchServerSite",
]


def _entries(conn: Connection) -> list[dict[str, Any]]:
    return [e for e in conn.response or [] if e["type"] == "searchResEntry"]


def _all_spns(conn: Connection, base: str) -> dict[str, list[str]]:
    """sAMAccountName -> its servicePrincipalName values, for every holder under ``base``."""
    entries = conn.extend.standard.paged_search(
        base,
        "(servicePrincipalName=*)",
        attributes=["sAMAccountName", "servicePrincipalName"],
        paged_size=3,  # several pages even in the lab
        generator=False,
    )
    return {
        e["attributes"]["sAMAccountName"][0]: list(e["attributes"]["servicePrincipalName"])
        for e in entries
        if e["type"] == "searchResEntry"
    }


def test_the_exchange_directory_plan() -> None:
    directory = exchange_directory("corp.example.test")
    config = "CN=Configuration,DC=corp,DC=example,DC=test"
    assert directory.exchange_dn == f"CN=Microsoft Exchange,CN=Services,{config}"
    assert directory.servers_dn == (
        "CN=Servers,CN=Exchange Administrative Group (FYDIBOHF23SPDLT),"
        f"CN=Administrative Groups,CN=Corp,CN=Microsoft Exchange,CN=Services,{config}"
    )
    assert [
        (s.name, s.fqdn, s.roles, s.version, s.member, s.account) for s in directory.servers
    ] == [
        ("EXCH1", "exch1.corp.example.test", 38, "Version 15.2 (Build 1544.4)", True, "EXCH1$"),
        ("EXCH2", "exch2.corp.example.test", 38, "Version 15.2 (Build 1258.12)", True, "EXCH2$"),
        ("EXCH3", "exch3.corp.example.test", 16439, "Version 15.1 (Build 2507.6)", True, "EXCH3$"),
        ("EDGE1", "edge1.perimeter.example.test", 64, "Version 15.2 (Build 1544.4)", False, None),
    ]
    assert {s.site for s in directory.servers} == {f"CN=Default-First-Site-Name,CN=Sites,{config}"}
    assert {c.name: c.security_flags for c in directory.receive_connectors} == {
        "Default EXCH1": 29,
        "Default Frontend EXCH1": 29,
        "Default EXCH2": 13,  # ExchangeServer (0x10) missing
        "Default Frontend EXCH2": 29,
        "Default EXCH3": 13,  # as its SMTP stand-in: no X-EXPS
        "Default Frontend EXCH3": 29,
    }
    assert [c.name for c in directory.receive_connectors if not c.exchange_server_auth] == [
        "Default EXCH2",
        "Default EXCH3",
    ]
    assert directory.server("exch1").expected_spns == (
        "SMTP/EXCH1",
        "SMTP/exch1.corp.example.test",
        "SMTPSVC/EXCH1",
        "SMTPSVC/exch1.corp.example.test",
    )
    assert directory.server("EDGE1").expected_spns == ()
    assert {s.name: directory.missing_spns(s.name) for s in directory.members} == {
        "EXCH1": (),
        "EXCH2": ("SMTPSVC/exch2.corp.example.test",),
        "EXCH3": (),
    }
    assert [d.owner_dns for d in directory.duplicate_spns] == [
        (
            "CN=EXCH3,CN=Computers,DC=corp,DC=example,DC=test",
            "CN=OLDEXCH,CN=Computers,DC=corp,DC=example,DC=test",
        ),
        (
            "CN=EXCH3,CN=Computers,DC=corp,DC=example,DC=test",
            "CN=svc-legacy,CN=Users,DC=corp,DC=example,DC=test",
        ),
    ]
    assert [(d.spn, d.holders, d.case_only) for d in directory.duplicate_spns] == [
        (
            "smtp/exch3.corp.example.test",
            (
                ("EXCH3$", "SMTP/exch3.corp.example.test"),
                ("OLDEXCH$", "smtp/EXCH3.corp.example.test"),
            ),
            True,
        ),
        (
            "smtpsvc/exch3.corp.example.test",
            (
                ("EXCH3$", "SMTPSVC/exch3.corp.example.test"),
                ("svc-legacy", "SMTPSVC/exch3.corp.example.test"),
            ),
            False,
        ),
    ]


def test_exchange_servers_are_found_under_the_exchange_container(lab: Lab) -> None:
    directory = lab.exchange_directory
    conn = lab.admin_ldap()
    try:
        conn.search(
            directory.exchange_dn,
            "(objectCategory=msExchExchangeServer)",
            attributes=EXCHANGE_SERVER_ATTRIBUTES,
        )
        found = {e["dn"]: e["attributes"] for e in _entries(conn)}
    finally:
        conn.unbind()
    assert set(found) == {s.dn for s in directory.servers}
    for server in directory.servers:
        attributes = found[server.dn]
        assert attributes["networkAddress"] == list(server.network_addresses)
        assert f"ncacn_ip_tcp:{server.fqdn}" in attributes["networkAddress"]
        # Without the schema (get_info=NONE) ldap3 hands back every value as text.
        assert attributes["msExchCurrentServerRoles"] == [str(server.roles)]
        assert attributes["serialNumber"] == [server.version]
        assert attributes["msExchServerSite"] == [server.site]


def test_receive_connectors_carry_their_security_flags(lab: Lab) -> None:
    directory = lab.exchange_directory
    conn = lab.admin_ldap()
    try:
        conn.search(
            directory.exchange_dn,
            "(objectCategory=msExchSmtpReceiveConnector)",
            attributes=["cn", "msExchSMTPReceiveInboundSecurityFlag"],
        )
        found = {
            e["dn"]: int(e["attributes"]["msExchSMTPReceiveInboundSecurityFlag"][0])
            for e in _entries(conn)
        }
    finally:
        conn.unbind()
    assert found == {c.dn: c.security_flags for c in directory.receive_connectors}
    edge = directory.server("EDGE1")
    assert not any(dn.endswith(edge.dn) for dn in found)


def test_each_account_holds_exactly_its_planned_spns(lab: Lab) -> None:
    directory = lab.exchange_directory
    conn = lab.admin_ldap()
    try:
        held = _all_spns(conn, directory.domain_dn)
        conn.search(
            directory.domain_dn,
            "(|"
            + "".join(f"(sAMAccountName={a.sam_account_name})" for a in directory.accounts)
            + ")",
            attributes=[
                "sAMAccountName",
                "dNSHostName",
                "userAccountControl",
                "msDS-SupportedEncryptionTypes",
            ],
        )
        accounts = {e["attributes"]["sAMAccountName"][0]: e for e in _entries(conn)}
    finally:
        conn.unbind()
    for account in directory.accounts:
        name = account.sam_account_name
        assert sorted(held[name]) == sorted(account.spns), name  # exact values, letter case too
        assert accounts[name]["dn"] == account.dn
        attributes = accounts[name]["attributes"]
        assert (attributes.get("dNSHostName") or [None])[0] == account.dns_host_name
        assert int(attributes["userAccountControl"][0]) & 0x2 == 0, f"{name} is disabled"
        enctypes = attributes.get("msDS-SupportedEncryptionTypes") or [None]
        expected = account.supported_encryption_types
        assert enctypes[0] == (None if expected is None else str(expected)), name
    for server in directory.members:
        present = directory.present_spns(server.name)
        assert {spn: spn in held[f"{server.name}$"] for spn in server.expected_spns} == present
    # Provisioning's own accounts (and the replica's) hold SPNs too, none of them Exchange's.
    assert {"DC1$", "DC3$", "krbtgt"} <= set(held)
    assert len(held) == len(directory.accounts) + 3


@pytest.mark.parametrize("where", ["ldaps-636", "gc-3268-starttls", "gc-3269-ldaps"])
def test_duplicate_spns_are_visible_over_ldap_and_the_global_catalog(lab: Lab, where: str) -> None:
    directory = lab.exchange_directory
    if where == "ldaps-636":
        conn, base = lab.admin_ldap(), directory.domain_dn
    elif where == "gc-3268-starttls":
        conn, base = lab.admin_ldap(lab.gc_url, start_tls=True), ""  # "": the whole forest
    else:
        conn, base = lab.admin_ldap(lab.gc_ldaps_url), ""
    try:
        held = _all_spns(conn, base)
    finally:
        conn.unbind()
    # Grouped case-insensitively, as `setspn -X -F` does.
    by_value: dict[str, list[tuple[str, str]]] = {}
    for account, spns in sorted(held.items()):
        for spn in spns:
            by_value.setdefault(spn.lower(), []).append((account, spn))
    duplicates = {key: sorted(owners) for key, owners in by_value.items() if len(owners) > 1}
    assert duplicates == {d.spn: sorted(d.holders) for d in directory.duplicate_spns}


def test_samba_refuses_a_duplicate_spn_over_ldap(lab: Lab) -> None:
    # Why the lab writes its duplicates into the partition file: the DC's own check.
    directory = lab.exchange_directory
    conn = lab.admin_ldap()
    try:
        ok = conn.modify(  # type: ignore[no-untyped-call]
            directory.account("EXCH1$").dn,
            {"servicePrincipalName": [("MODIFY_ADD", ["smtpsvc/EXCH3.corp.example.test"])]},
        )
        assert not ok
        assert conn.result["description"] == "constraintViolation"
    finally:
        conn.unbind()


def _kerberos_env(lab: Lab, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KRB5_CONFIG": str(lab.krb5_conf),
        "KRB5CCNAME": f"FILE:{tmp_path}/cc",
        "LC_ALL": "C",
    }


def _kinit(principal: str, password: str, env: dict[str, str]) -> None:
    kinit = subprocess.run(
        ["kinit", principal],
        input=password + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert kinit.returncode == 0, kinit.stderr


def test_service_tickets_follow_the_spns(lab: Lab, tmp_path: Path) -> None:
    env = _kerberos_env(lab, tmp_path)
    _kinit(f"Administrator@{lab.realm}", lab.admin_password, env)
    directory = lab.exchange_directory
    results: dict[str, bool | str] = {}
    for server in directory.members:
        for spn in server.expected_spns:
            kvno = subprocess.run(
                ["kvno", spn], capture_output=True, text=True, env=env, timeout=30
            )
            results[spn] = kvno.returncode == 0 or kvno.stderr.strip()
    missing = set(directory.missing_spns("EXCH2"))
    # EXCH3's SMTP/<fqdn> and SMTPSVC/<fqdn> are held twice (once only in other letter case):
    # the KDC then finds no single principal, just as for a missing SPN.
    twice = {f"SMTP/{directory.server('EXCH3').fqdn}", f"SMTPSVC/{directory.server('EXCH3').fqdn}"}
    assert {d.spn for d in directory.duplicate_spns} == {spn.lower() for spn in twice}
    for spn, result in results.items():
        if spn in missing | twice:
            assert result == (
                f"kvno: Server not found in Kerberos database while getting credentials for "
                f"{spn}@{lab.realm}"
            ), spn
        else:
            assert result is True, (spn, result)


@pytest.mark.parametrize("account", ["EXCH1$", "OLDEXCH$", "svc-legacy", "RC4ONLY$"])
def test_the_accounts_have_keys_from_their_passwords(
    lab: Lab, tmp_path: Path, account: str
) -> None:
    _kinit(f"{account}@{lab.realm}", lab.account_password(account), _kerberos_env(lab, tmp_path))


def test_the_service_ticket_accounts_plan() -> None:
    directory = exchange_directory("corp.example.test")
    rc4, keyless = directory.account("RC4ONLY$"), directory.account("NOKEYS$")
    assert (rc4.dns_host_name, rc4.has_keys, rc4.supported_encryption_types) == (
        "rc4only.corp.example.test",
        True,
        4,
    )
    assert (keyless.dns_host_name, keyless.has_keys, keyless.supported_encryption_types) == (
        "nokeys.corp.example.test",
        False,
        None,
    )
    for account in (rc4, keyless):
        short = account.sam_account_name.rstrip("$")
        assert {
            f"{c}/{h}" for c in ("SMTP", "SMTPSVC") for h in (short, account.dns_host_name)
        } <= (set(account.spns))
        # Not Exchange servers: the inventory tests assert stays as it was.
        with pytest.raises(KeyError):
            directory.server(short)
    # No keys, no password to hand out.
    assert "NOKEYS$" not in {a.sam_account_name for a in directory.accounts if a.has_keys}


def _klist_enctypes(env: dict[str, str], spn: str) -> tuple[str, str]:
    """(session key, ticket) encryption types of the cached ticket for ``spn``."""
    klist = subprocess.run(["klist", "-e"], capture_output=True, text=True, env=env, timeout=30)
    lines = klist.stdout.splitlines()
    index = next(i for i, line in enumerate(lines) if line.endswith(f" {spn}@{REALM}"))
    etypes = lines[index + 1].split("Etype (skey, tkt):")[1]
    skey, tkt = (part.strip().removeprefix("DEPRECATED:") for part in etypes.split(","))
    return skey, tkt


def test_service_tickets_follow_the_accounts_keys_and_encryption_types(
    lab: Lab, tmp_path: Path
) -> None:
    env = _kerberos_env(lab, tmp_path)
    _kinit(f"Administrator@{lab.realm}", lab.admin_password, env)
    domain = lab.exchange_directory.dns_domain

    def kvno(spn: str, environment: dict[str, str]) -> str:
        result = subprocess.run(
            ["kvno", spn], capture_output=True, text=True, env=environment, timeout=30
        )
        return "ok" if result.returncode == 0 else result.stderr.strip()

    # MIT 1.20 still permits RC4 by default: the RC4-only account gets an RC4 ticket and key.
    assert kvno(f"SMTPSVC/rc4only.{domain}", env) == "ok"
    assert _klist_enctypes(env, f"SMTPSVC/rc4only.{domain}") == ("arcfour-hmac", "arcfour-hmac")
    # An account with SPNs but no keys: the KDC has nothing to encrypt the ticket with.
    assert kvno(f"SMTPSVC/nokeys.{domain}", env) == (
        "kvno: KDC has no support for encryption type while getting credentials for "
        f"SMTPSVC/nokeys.{domain}@{lab.realm}"
    )
    # A client that permits AES only cannot share a session key with the RC4-only account.
    aes_only = tmp_path / "krb5-aes.conf"
    aes_only.write_text(
        lab.krb5_conf.read_text().replace(
            "[libdefaults]\n",
            "[libdefaults]\n\tpermitted_enctypes = aes256-cts-hmac-sha1-96 aes128-cts-hmac-sha1-96\n",
        )
    )
    aes_env = {**env, "KRB5_CONFIG": str(aes_only), "KRB5CCNAME": f"FILE:{tmp_path}/cc-aes"}
    _kinit(f"Administrator@{lab.realm}", lab.admin_password, aes_env)
    assert kvno(f"SMTPSVC/rc4only.{domain}", aes_env) == (
        "kvno: KDC has no support for encryption type while getting credentials for "
        f"SMTPSVC/rc4only.{domain}@{lab.realm}"
    )
    assert kvno(f"SMTPSVC/exch1.{domain}", aes_env) == "ok"
    assert _klist_enctypes(aes_env, f"SMTPSVC/exch1.{domain}")[0] == "aes256-cts-hmac-sha1-96"


def test_pausing_ldap_hangs_ldap_while_kerberos_and_dns_answer(lab: Lab) -> None:
    address = lab.dc.address
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with lab.pause_ldap() as paused:
        assert lab.ldap_paused
        assert len(paused.pids) == 5  # the prefork master and its 4 workers
        assert {process_state(pid) for pid in paused.pids} == {"T"}  # stopped
        # The kernel still completes TCP handshakes (the listen backlog); nobody answers.
        with (
            socket.create_connection((address, 636), timeout=1.0) as sock,
            pytest.raises(TimeoutError),
        ):
            context.wrap_socket(sock)
        with pytest.raises(TimeoutError):
            root_dse_attribute(address, "dnsHostName", timeout=0.5)
        assert kdc_error(address, lab.realm, timeout=1.0)[0] == KDC_ERR_C_PRINCIPAL_UNKNOWN
        assert dns_answer_count(address, f"_ldap._tcp.dc._msdcs.{lab.domain}", DNS_TYPE_SRV)
    assert not lab.ldap_paused
    assert lab.failures() == []
    conn = lab.admin_ldap()
    try:
        conn.search("", "(objectClass=*)", search_scope="BASE", attributes=["dnsHostName"])
        assert _entries(conn)[0]["attributes"]["dnsHostName"] == ["dc1.corp.example.test"]
    finally:
        conn.unbind()


# --- the replica DC ---------------------------------------------------------------------------


def _reps_from(lab: Lab, host: Host) -> dict[str, dict[str, Any]]:
    """showrepl's repsFrom of ``host`` by naming context, each checked to name the other DC."""
    other = lab.replica_dc if host == lab.dc else lab.dc
    reps = lab.replication(host)
    assert {r["NTDS DN"].split(",")[1] for r in reps} == {f"CN={other.short_name.upper()}"}
    return {r["NC dn"]: r for r in reps}


def test_the_replica_is_a_dc_of_its_own_that_replicates_with_dc1(lab: Lab) -> None:
    replica = lab.replica_dc
    assert (replica.name, replica.address, replica.role) == (
        "dc3.corp.example.test",
        "127.0.10.12",
        "domain_controller",
    )
    assert lab.replica_dc_running
    assert lab.domain_controllers == (lab.dc, lab.skewed_dc, replica)
    assert replica in lab.hosts
    assert root_dse_attribute(replica.address, "dnsHostName") == replica.name
    assert kdc_error(replica.address, lab.realm)[0] == KDC_ERR_C_PRINCIPAL_UNKNOWN
    lab.wait_replicated(timeout=30)
    domain = lab.exchange_directory.domain_dn
    expected = {
        domain,
        f"CN=Configuration,{domain}",
        f"CN=Schema,CN=Configuration,{domain}",
        f"DC=DomainDnsZones,{domain}",
        f"DC=ForestDnsZones,{domain}",
    }
    for host in (lab.dc, replica):
        reps = _reps_from(lab, host)
        assert set(reps) == expected, host.name
        for rep in reps.values():
            assert rep["consecutive failures"] == 0
            assert rep["last attempt message"] == "was successful"
    reply = ntplib.NTPClient().request(replica.address, version=4, timeout=2)
    assert reply.offset == pytest.approx(0, abs=0.05)


def test_a_change_written_on_dc1_reaches_the_replica(lab: Lab) -> None:
    token = f"replicated {time.time_ns()}"
    users = f"CN=Users,{lab.exchange_directory.domain_dn}"
    conn = lab.admin_ldap()
    try:
        changes = {"description": [("MODIFY_REPLACE", [token])]}
        assert conn.modify(users, changes), conn.result  # type: ignore[no-untyped-call]
    finally:
        conn.unbind()
    replica = lab.admin_ldap(f"ldaps://{lab.replica_dc.address}:636")
    try:

        def arrived() -> bool:
            replica.search(
                users, "(objectClass=*)", search_scope="BASE", attributes=["description"]
            )
            found: list[str] = _entries(replica)[0]["attributes"].get("description", [])
            return found == [token]

        assert _wait_for(arrived, timeout=30.0)
    finally:
        replica.unbind()


def test_only_the_dcs_see_the_labs_names(lab: Lab) -> None:
    assert lab.names is not None
    guid_names = {f"{guid}._msdcs.{lab.domain}" for guid in lab.dsa_guids.values()}
    assert len(guid_names) == 2
    machine = Path("/etc/hosts").read_text()
    assert not any(name in machine for name in guid_names)
    for samba in (lab.samba, lab.replica_samba):
        assert samba is not None and samba.process is not None
        # /proc/PID/root is that process's view of the file system: its own mount namespace.
        seen = Path(f"/proc/{samba.process.pid}/root/etc/hosts").read_text()
        assert all(name in seen for name in guid_names)
        resolv = Path(f"/proc/{samba.process.pid}/root/etc/resolv.conf").read_text()
        assert resolv.split() == [
            "nameserver",
            lab.dc.address,
            "nameserver",
            lab.replica_dc.address,
            "options",
            "timeout:1",
            "attempts:1",
        ]
    krb5 = lab.krb5_conf.read_text()
    assert f"kdc = {lab.dc.address}" in krb5
    assert f"kdc = {lab.replica_dc.address}" in krb5


def test_stopping_a_dc_stops_its_samba_until_it_is_started_again(lab: Lab) -> None:
    replica = lab.replica_dc
    before = {record.name for record in lab.process_records()}
    with lab.samba_stopped(replica):
        assert not lab.replica_dc_running
        assert not tcp_accepts(replica.address, 636)
        assert "samba-dc3" not in {record.name for record in lab.process_records()}
        assert lab.failures() == []  # stopped on purpose, not a failure
        assert replica in lab.domain_controllers  # still part of the lab
        lab.stop_samba(replica)  # again: nothing to do
        # dc1 keeps trying, and counts its failures (Samba, like Windows, per attempt).
        assert _wait_for(
            lambda: all(r["consecutive failures"] > 0 for r in lab.replication(lab.dc)),
            timeout=30.0,
        )
    assert lab.replica_dc_running
    assert {record.name for record in lab.process_records()} == before
    assert root_dse_attribute(replica.address, "dnsHostName") == replica.name
    lab.wait_replicated(timeout=30)


def test_samba_tool_runs_as_the_chosen_dc(lab: Lab) -> None:
    for host in (lab.dc, lab.replica_dc):
        shown = lab.samba_tool(
            host, "testparm", "--suppress-prompt", "--parameter-name=netbios name"
        )
        assert shown.stdout.strip() == host.short_name.upper()
    with pytest.raises(LabError, match="samba-tool no-such-command failed"):
        lab.samba_tool(lab.dc, "no-such-command")
    assert lab.samba_tool(lab.dc, "no-such-command", check=False).returncode != 0
    with pytest.raises(LabError, match="not one of this lab's Samba DCs"):
        lab.samba_tool(lab.dead_dc, "testparm")


# --- the Exchange SMTP stand-ins --------------------------------------------------------------

SMTP_CASES = [(server, port) for server in PLAN.smtp_servers for port in server.ports]
_DEFAULT_BANNER = re.compile(
    r"^220 (?P<name>\S+) Microsoft ESMTP MAIL Service ready at (?P<date>.+ (?P<zone>[+-]\d{4}))$"
)


SMTP_CASE_IDS = [f"{server.short_name}-{port}" for server, port in SMTP_CASES]


def test_the_smtp_plan() -> None:
    assert [
        (s.name, s.address, s.ports, s.clock_offset, s.utc_offset, s.custom_banner, s.serves_ntp)
        for s in PLAN.smtp_servers
    ] == [
        ("exch1.corp.example.test", "127.0.10.21", (25, 2525), 0, "+0000", None, True),
        ("exch2.corp.example.test", "127.0.10.22", (25, 2525), 420, "-0600", None, True),
        (
            "exch3.corp.example.test",
            "127.0.10.23",
            (25, 2525),
            0,
            "+0000",
            "220 mail.corp.example.test ESMTP",
            False,
        ),
    ]
    assert {(s.short_name, port): s.x_exps(port) for s, port in SMTP_CASES} == {
        ("exch1", 25): False,
        ("exch1", 2525): True,
        ("exch2", 25): False,
        ("exch2", 2525): False,
        ("exch3", 25): False,
        ("exch3", 2525): False,
    }
    assert [s.banner_clock_offset for s in PLAN.smtp_servers] == [0, 420, None]
    # exch3 serves no NTP, so it is not among the hosts the NTP checks (and the config) list.
    assert [s.name for s in PLAN.smtp_servers if s.serves_ntp] == [
        h.name for h in PLAN.exchange_servers
    ]
    assert "127.0.10.23" in PLAN.addresses
    assert "127.0.10.23" not in {h.address for h in PLAN.hosts}


def test_the_stand_ins_ehlo_keywords_follow_exchanges_connectors() -> None:
    exch1 = PLAN.smtp_servers[0]
    assert exch1.ehlo_reply(2525) == [
        "250-exch1.corp.example.test Hello [127.0.10.21]",
        "250-SIZE 37748736",
        "250-PIPELINING",
        "250-DSN",
        "250-ENHANCEDSTATUSCODES",
        "250-STARTTLS",
        "250-X-ANONYMOUSTLS",
        "250-AUTH NTLM",
        "250-X-EXPS GSSAPI NTLM",
        "250-8BITMIME",
        "250-BINARYMIME",
        "250-CHUNKING",
        "250 XRDST",
    ]
    assert exch1.ehlo_reply(25) == [
        "250-exch1.corp.example.test Hello [127.0.10.21]",
        "250-SIZE 37748736",
        "250-PIPELINING",
        "250-DSN",
        "250-ENHANCEDSTATUSCODES",
        "250-STARTTLS",
        "250-AUTH NTLM",
        "250-8BITMIME",
        "250-BINARYMIME",
        "250-CHUNKING",
        "250 SMTPUTF8",
    ]
    assert ehlo_keywords(frontend=False, exchange_auth=False)[-4:] == [
        "8BITMIME",
        "BINARYMIME",
        "CHUNKING",
        "XRDST",
    ]
    with pytest.raises(ValueError, match="not on 587"):
        exch1.ehlo_keywords(587)


def test_banner_dates_are_written_as_exchange_writes_them() -> None:
    pacific = datetime.timezone(datetime.timedelta(hours=-7))
    moment = datetime.datetime(2016, 8, 5, 16, 24, 41, tzinfo=pacific)
    assert banner_date(moment) == "Fri, 5 Aug 2016 16:24:41 -0700"  # day not zero-padded
    assert default_banner("mail1.fabrikam.com", moment) == (
        "220 mail1.fabrikam.com Microsoft ESMTP MAIL Service ready at Fri, 5 Aug 2016 16:24:41 -0700"
    )
    india = parse_utc_offset("+0530")
    assert banner_date(datetime.datetime(2026, 11, 29, 17, 10, 5, tzinfo=india)) == (
        "Sun, 29 Nov 2026 17:10:05 +0530"
    )
    assert email.utils.parsedate_to_datetime(banner_date(moment)) == moment
    for bad in ("0000", "+000", "-0660", "+1500", "UTC"):
        with pytest.raises(ValueError, match="not \\[\\+-\\]HHMM"):
            parse_utc_offset(bad)


@pytest.mark.parametrize(("planned", "port"), SMTP_CASES, ids=SMTP_CASE_IDS)
def test_smtp_banners_carry_the_servers_clock(ntp_lab: Lab, planned: SmtpServer, port: int) -> None:
    server = ntp_lab.smtp_server(planned.name)
    before = time.time()
    banner = smtp_banner(server.address, port, timeout=2.0)
    after = time.time()
    assert banner is not None
    if server.custom_banner is not None:
        assert banner == server.custom_banner == CUSTOM_SMTP_BANNER
        assert server.banner_clock_offset is None
        return
    match = _DEFAULT_BANNER.match(banner)
    assert match is not None, banner
    assert match["name"] == server.name
    assert match["zone"] == server.utc_offset
    stamp = email.utils.parsedate_to_datetime(match["date"]).timestamp()
    # Whole seconds: the stamp is up to 1 s behind the instant it was written.
    assert stamp - (before + after) / 2 == pytest.approx(server.clock_offset, abs=2.0)


def test_exch2s_banner_is_seven_minutes_ahead_in_a_zone_west_of_utc(ntp_lab: Lab) -> None:
    exch2 = ntp_lab.smtp_server("exch2")
    banner = smtp_banner(exch2.address, SMTP_HUB_PORT, timeout=2.0)
    match = _DEFAULT_BANNER.match(banner or "")
    assert match is not None, banner
    written = email.utils.parsedate_to_datetime(match["date"])
    assert written.utcoffset() == datetime.timedelta(hours=-6)
    assert written.timestamp() - time.time() == pytest.approx(SKEWED_CLOCK_OFFSET, abs=2.0)
    # The same clock as exch2's chronyd.
    ntp = ntplib.NTPClient().request(exch2.address, version=4, timeout=2).offset
    assert written.timestamp() - time.time() == pytest.approx(ntp, abs=2.0)


@pytest.mark.parametrize(("planned", "port"), SMTP_CASES, ids=SMTP_CASE_IDS)
def test_smtp_ehlo_offers_x_exps_as_planned(ntp_lab: Lab, planned: SmtpServer, port: int) -> None:
    server = ntp_lab.smtp_server(planned.name)
    transcript = smtp_session(server.address, port, ["EHLO probe.corp.example.test", "QUIT"])
    ehlo, quit_reply = transcript.replies
    assert ehlo == server.ehlo_reply(port, transcript.client_address)
    # The lab's /32 alias is the source towards its own address, so Exchange would say so too.
    assert ehlo[0] == f"250-{server.name} Hello [{server.address}]"
    assert ("250-X-EXPS GSSAPI NTLM" in ehlo) is server.x_exps(port)
    assert ("250-X-ANONYMOUSTLS" in ehlo) is server.x_exps(port)
    assert "250-STARTTLS" in ehlo
    assert ehlo[-1] == ("250 SMTPUTF8" if port == SMTP_FRONTEND_PORT else "250 XRDST")
    assert quit_reply == ["221 2.0.0 Service closing transmission channel"]


@pytest.mark.parametrize("planned", PLAN.smtp_servers, ids=lambda s: s.short_name)
def test_smtp_stand_ins_accept_no_mail_and_close_on_quit(ntp_lab: Lab, planned: SmtpServer) -> None:
    server = ntp_lab.smtp_server(planned.name)
    with socket.create_connection((server.address, SMTP_HUB_PORT), timeout=2.0) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        # Pipelined, as PIPELINING promises: the replies come back in order.
        sock.sendall(
            b"MAIL FROM:<a@corp.example.test>\r\nEHLO probe\r\nMAIL FROM:<a@corp.example.test>\r\n"
            b"RCPT TO:<b@corp.example.test>\r\nDATA\r\nSTARTTLS\r\nAUTH NTLM\r\nXYZZY now\r\n"
            b"NOOP\r\nQUIT\r\n"
        )
        lines = [line.decode().rstrip("\r\n") for line in reader]  # to the end: QUIT closes
    replies = [line for line in lines if not line.startswith("250-")]
    assert replies == [
        "503 5.5.2 Send hello first",
        "250 XRDST",
        "530 5.7.1 Client was not authenticated",
        "503 5.5.2 Need mail command",
        "503 5.5.2 Need rcpt command",
        "454 4.7.0 TLS not available due to local problem",
        "504 5.7.4 Unrecognized authentication type",
        "500 5.3.3 Unrecognized command 'XYZZY'",
        "250 2.0.0 OK",
        "221 2.0.0 Service closing transmission channel",
    ]


def test_the_stand_ins_run_like_the_labs_other_daemons(ntp_lab: Lab) -> None:
    assert ntp_lab.smtp_running
    records = {r.name: r for r in ntp_lab.process_records() if r.name.startswith("smtp-")}
    assert sorted(records) == ["smtp-exch1", "smtp-exch2", "smtp-exch3"]
    for name, record in records.items():
        assert record.leader_running(), name
        # exch2 under libfaketime, as its chronyd; the others on the true clock.
        assert faketime.is_preloaded(record.pid) is (name == "smtp-exch2"), name
    assert ntp_lab.failures() == []
    assert ntp_lab.smtp_server("EXCH3") is ntp_lab.smtp_servers[2]
    with pytest.raises(KeyError):
        ntp_lab.smtp_server("exch9")


def test_exporter_config_can_list_every_smtp_server(ntp_lab: Lab, tmp_path: Path) -> None:
    from exporter.config import load_file

    entries = [s.static_entry for s in ntp_lab.smtp_servers]
    config = ntp_lab.exporter_config(exchange_servers={"static": entries})
    assert config["exchange_servers"] == {"discover": "none", "static": entries}
    assert entries[-1] == {"name": "exch3.corp.example.test", "address": "127.0.10.23"}
    path = ntp_lab.write_exporter_config(
        tmp_path / "exporter.yml", exchange_servers={"static": entries}
    )
    settings = load_file(path)
    assert [e.name for e in settings.exchange_servers.static] == [
        s.name for s in ntp_lab.smtp_servers
    ]
    assert settings.checks.smtp.ports == [SMTP_FRONTEND_PORT, SMTP_HUB_PORT]


# --- the hostile SMTP peer --------------------------------------------------------------------


def _recv_all(sock: socket.socket, limit: int) -> bytes:
    """Read until ``limit`` bytes or the end; TimeoutError passes."""
    data = bytearray()
    while len(data) < limit:
        chunk = sock.recv(min(1 << 20, limit - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def test_a_silent_peer_sends_nothing_and_notices_the_hang_up() -> None:
    with HostileSmtpPeer("silent") as peer:
        with socket.create_connection(peer.endpoint, timeout=0.3) as sock:
            assert peer.wait_for(lambda p: p.open_connections == 1, timeout=2.0)
            sock.sendall(b"EHLO probe\r\n")
            with pytest.raises(TimeoutError):
                sock.recv(1024)
        assert peer.wait_for_disconnect(timeout=2.0)
        assert (peer.accepted, peer.bytes_sent) == (1, 0)


def test_a_flooding_peer_sends_ten_mebibytes_without_a_newline() -> None:
    with HostileSmtpPeer("flood") as peer:
        with socket.create_connection(peer.endpoint, timeout=2.0) as sock:
            data = _recv_all(sock, 10 * 1024 * 1024)
            assert len(data) == 10 * 1024 * 1024
            assert data.startswith(b"220 x")
            assert b"\n" not in data and b"\r" not in data
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):  # nothing more, and the connection stays open
                sock.recv(1)
        assert peer.wait_for_disconnect(timeout=2.0)
        assert peer.bytes_sent == 10 * 1024 * 1024


def test_a_flooding_peer_stops_when_the_client_gives_up() -> None:
    with HostileSmtpPeer("flood") as peer:
        with socket.create_connection(peer.endpoint, timeout=2.0) as sock:
            assert sock.recv(4096).startswith(b"220 ")
        assert peer.wait_for_disconnect(timeout=5.0)
        assert peer.bytes_sent < 10 * 1024 * 1024


def test_a_peer_that_resets_at_ehlo() -> None:
    with HostileSmtpPeer("reset_at_ehlo") as peer:
        with socket.create_connection(peer.endpoint, timeout=2.0) as sock:
            reader = sock.makefile("rb")
            assert reader.readline() == f"{HOSTILE_BANNER}\r\n".encode()
            sock.sendall(b"EHLO probe.corp.example.test\r\n")
            with pytest.raises(ConnectionResetError):
                sock.recv(1024)
        assert peer.received == [b"EHLO probe.corp.example.test\r\n"]
        assert peer.wait_for_disconnect(timeout=2.0)


def test_a_peer_whose_ehlo_reply_never_ends() -> None:
    with HostileSmtpPeer("endless_ehlo") as peer:
        with socket.create_connection(peer.endpoint, timeout=2.0) as sock:
            reader = sock.makefile("rb")
            assert reader.readline().startswith(b"220 hostile.corp.example.test Microsoft ESMTP")
            sock.sendall(b"EHLO probe\r\n")
            lines = [reader.readline() for _ in range(200_000)]  # about 4 MB
            reader.close()
        assert all(line.startswith(b"250-") and line.endswith(b"\r\n") for line in lines)
        assert peer.wait_for_disconnect(timeout=5.0)


def test_a_peer_that_stalls_after_its_banner() -> None:
    with (
        HostileSmtpPeer("stall_at_ehlo") as peer,
        socket.create_connection(peer.endpoint, timeout=2.0) as sock,
    ):
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        sock.sendall(b"EHLO probe\r\n")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1024)
        reader.close()
        assert peer.received == [b"EHLO probe\r\n"]


def test_stopping_a_hostile_peer_closes_its_connections_and_its_port() -> None:
    peer = HostileSmtpPeer("silent", "127.0.0.77")
    with peer, socket.create_connection(peer.endpoint, timeout=2.0) as sock:
        assert peer.wait_for(lambda p: p.open_connections == 1, timeout=2.0)
        peer.stop()
        assert sock.recv(1024) == b""  # closed by the peer
    assert peer.open_connections == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(peer.endpoint, timeout=1.0).close()
    with pytest.raises(ValueError, match="unknown mode"):
        HostileSmtpPeer("rude")  # type: ignore[arg-type]


def test_the_hostile_peer_fixture(
    hostile_smtp_peer: Callable[..., HostileSmtpPeer],
) -> None:
    peer = hostile_smtp_peer("flood", flood_bytes=1000)
    with socket.create_connection(peer.endpoint, timeout=2.0) as sock:
        assert _recv_all(sock, 1000) == b"220 " + b"x" * 996
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):  # all of it, and the connection stays open
            sock.recv(1)
    assert peer.port != 0


def test_showrepl_times_are_read_whatever_the_locale() -> None:
    from tests.lab.lab import _showrepl_time

    assert _showrepl_time("Sun Nov 29 12:00:58 2026 UTC") == calendar.timegm(
        (2026, 11, 29, 12, 0, 58)
    )
    assert _showrepl_time("Mon Nov  9 02:00:58 2026 UTC") == calendar.timegm(
        (2026, 11, 9, 2, 0, 58)
    )
    assert _showrepl_time("") is None  # never
    assert _showrepl_time(None) is None
