"""The lab itself: its servers answer as promised, and nothing outlives it."""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import ntplib
import pytest
from ldap3 import NONE, SIMPLE, Connection, Server, Tls  # type: ignore[import-untyped]

from tests.lab import DEFAULT_NETWORK, Host, Lab, LabError, address_plan
from tests.lab.net import loopback_addresses
from tests.lab.samba import rewrite_smb_conf
from tests.lab.state import RUNTIME_DIR

REPO = Path(__file__).resolve().parents[2]
DC, EXCHANGE_SERVERS = address_plan()
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


@pytest.mark.parametrize("planned", [DC, *EXCHANGE_SERVERS], ids=lambda h: h.short_name)
def test_ntp_servers_serve_their_planned_clock(ntp_lab: Lab, planned: Host) -> None:
    host = _host(ntp_lab, planned.name)
    reply = ntplib.NTPClient().request(host.address, version=4, timeout=2)
    tolerance = 0.05 if host.ntp_offset == 0 else 1.0
    assert reply.offset == pytest.approx(host.ntp_offset, abs=tolerance)
    assert (reply.stratum, reply.leap) == (8, 0)


def test_exch2_is_seven_minutes_ahead(ntp_lab: Lab) -> None:
    skewed = [h for h in ntp_lab.exchange_servers if h.ntp_offset]
    assert [(h.name, h.ntp_offset) for h in skewed] == [("exch2.corp.example.test", 420)]


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
        "static": [{"name": "dc1.corp.example.test", "address": "127.0.10.10"}],
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


def test_a_second_lab_on_the_same_addresses_is_refused(lab: Lab) -> None:
    with pytest.raises(LabError, match="another lab"):
        Lab.start(samba=False, network=DEFAULT_NETWORK)


@pytest.mark.lab
def test_teardown_leaves_no_process_alias_or_folder() -> None:
    lab = Lab.start(network=TEARDOWN_NETWORK)
    pids = lab.pids()
    groups = [record.pid for record in lab.process_records()]
    addresses = {host.address for host in lab.hosts}
    state_file = RUNTIME_DIR / f"{lab.directory.name}.json"
    assert len(groups) == 4  # samba + three chronyd
    assert len(pids) > 4  # samba forks a process per service
    assert addresses <= loopback_addresses()
    assert state_file.exists()

    lab.stop()

    assert [pid for pid in pids if _running(pid)] == []
    assert [pid for pid in groups if os.path.exists(f"/proc/{pid}")] == []  # reaped, too
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
    addresses = {f"{CRASH_NETWORK}.{n}" for n in (10, 21, 22)}

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
    assert addresses & loopback_addresses() == set()
    assert not Path(left["dir"]).exists()
