"""The lab itself: its servers answer as promised, and nothing outlives it."""

from __future__ import annotations

import asyncio
import calendar
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dns.asyncresolver
import dns.resolver
import ntplib
import pytest
from ldap3 import NONE, SIMPLE, Connection, Server, Tls

from tests.lab import DEFAULT_NETWORK, SKEWED_CLOCK_OFFSET, Host, Lab, LabError, faketime, lab_plan
from tests.lab.net import (
    KDC_ERR_C_PRINCIPAL_UNKNOWN,
    kdc_error,
    kpasswd_answers,
    loopback_addresses,
    ntp_answers,
)
from tests.lab.samba import rewrite_smb_conf
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
    server = Server(lab.ldaps_url, use_ssl=True, get_info=NONE, tls=Tls(validate=ssl.CERT_NONE))
    conn = Connection(
        server, user=lab.admin_user, password=lab.password_file.read_text(), authentication=SIMPLE
    )
    try:
        assert conn.bind(), conn.result
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
    lab = Lab.start(network=TEARDOWN_NETWORK)
    pids = lab.pids()
    groups = [record.pid for record in lab.process_records()]
    addresses = {host.address for host in (*lab.hosts, lab.dead_dc)}
    state_file = RUNTIME_DIR / f"{lab.directory.name}.json"
    assert len(groups) == 6  # samba dc1 + samba dc2 + four chronyd
    assert len(pids) > 6  # dc1's samba forks a process per service
    assert addresses <= loopback_addresses()
    assert state_file.exists()
    assert lab.dead_dc_running

    lab.stop()

    assert [pid for pid in pids if _running(pid)] == []
    assert [pid for pid in groups if os.path.exists(f"/proc/{pid}")] == []  # reaped, too
    assert [path for pid in groups for path in faketime.shared_memory_files(pid)] == []
    assert not lab.dead_dc_running
    assert addresses & loopback_addresses() == set()
    assert not lab.directory.exists()
    assert not state_file.exists()


_CRASHING_OWNER = f"""
import json, os
from tests.lab import Lab
lab = Lab.start(network={CRASH_NETWORK!r})
print(json.dumps({{
    "dir": str(lab.directory),
    "samba": [p for r in lab.process_records() if r.name.startswith("samba") for p in r.members()],
    "chronyd": [r.pid for r in lab.process_records() if r.name.startswith("chronyd")],
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
    addresses = {f"{CRASH_NETWORK}.{n}" for n in (10, 11, 19, 21, 22)}
    assert len(left["chronyd"]) == 4

    # Samba's stdin was a pipe from the owner: it stops on its own once the owner is gone.
    assert _wait_for(lambda: not any(_running(pid) for pid in left["samba"]))
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
