"""The service-ticket check's parts that need no KDC: error reasons, principals, krb5.conf,
configuration, metrics, and the worker process against a loopback port where no KDC listens."""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from exporter import kdc_workers
from exporter.checks.base import CheckContext, CheckError, CheckRun, Failure
from exporter.checks.service_tickets import (
    SPEC,
    CredentialsResult,
    ServiceTicketsResult,
    TicketResult,
    _spec_for,
    check_service_tickets,
    principal_for,
)
from exporter.config import ConfigError, ServiceTicketsCheck, Settings, load_file, load_text
from exporter.inventory import Inventory
from exporter.kdc_workers import WorkerGone, WorkerSpec, krb5_conf, worker_for
from exporter.protocols.krb5_errors import REASONS, krb5_code, reason_of
from exporter.scrape import run_scrape
from exporter.servers import ExchangeDetails, Role, Server
from tests.metrics_text import expose, series, value

REALM = "CORP.EXAMPLE.TEST"
EXCH1 = Server("exch1.corp.example.test", Role.EXCHANGE, "127.0.0.21")
PASSWORD = "Unit!secret-4f1c9e"


class StandInKdc:
    """A Kerberos listener on loopback TCP that counts the AS-REQs it gets and answers each with
    a KRB-ERROR (RFC 4120 5.9.1) carrying ``error``, or never answers (``error`` None)."""

    def __init__(self, error: int | None) -> None:
        self.error = error
        self.as_reqs = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self._open.append(conn)
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            head = conn.recv(4, socket.MSG_WAITALL)
            message = conn.recv(int.from_bytes(head, "big"), socket.MSG_WAITALL)
            if message[:1] == b"\x6a":  # [APPLICATION 10] AS-REQ
                self.as_reqs += 1
            if self.error is None:
                return  # a KDC that drops what it gets: the connection stays open, silent
            reply = krb_error(self.error)
            conn.sendall(len(reply).to_bytes(4, "big") + reply)
        except OSError:
            pass

    def close(self) -> None:
        self._server.close()
        for conn in self._open:
            conn.close()


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + content


def _int(number: int) -> bytes:
    return _der(0x02, number.to_bytes(number.bit_length() // 8 + 1, "big", signed=True))


def _field(number: int, inner: bytes) -> bytes:
    return _der(0xA0 + number, inner)


def krb_error(code: int) -> bytes:
    """KRB-ERROR ::= [APPLICATION 30] SEQUENCE {pvno, msg-type, stime, susec, error-code, realm,
    sname}, DER-encoded."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d%H%M%SZ").encode()
    realm = _der(0x1B, REALM.encode())
    sname = _der(0x30, _field(0, _int(2)) + _field(1, _der(0x30, _der(0x1B, b"krbtgt") + realm)))
    body = (
        _field(0, _int(5))
        + _field(1, _int(30))
        + _field(4, _der(0x18, now))
        + _field(5, _int(0))
        + _field(6, _int(code))
        + _field(9, realm)
        + _field(10, sname)
    )
    return _der(0x7E, _der(0x30, body))


@pytest.fixture
def kdcs() -> Iterator[list[StandInKdc]]:
    """Start stand-in KDCs with ``kdcs.append(StandInKdc(...))``; closed after the test."""
    started: list[StandInKdc] = []
    yield started
    kdc_workers.close_all()
    for kdc in started:
        kdc.close()


def closed_port() -> int:
    """A loopback port nobody listens on (TCP refused, UDP answered with port unreachable)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spec(port: int, password: str = PASSWORD, **changes: object) -> WorkerSpec:
    fields: dict[str, object] = {
        "domain_controller": "dc1.corp.example.test",
        "address": "127.0.0.1",
        "port": port,
        "realm": REALM,
        "principal": f"svc-exporter@{REALM}",
        "password": SecretStr(password),
        "keytab": None,
        "encryption_types": ("aes256-cts-hmac-sha1-96", "aes128-cts-hmac-sha1-96", "arcfour-hmac"),
        "ticket_lifetime": None,
        "threads": 2,
    }
    fields.update(changes)
    return WorkerSpec(**fields)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def no_workers_left() -> Iterator[None]:
    yield
    kdc_workers.close_all()


# --- reasons ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minor", "code", "reason"),
    [
        (2529638919, 7, "principal_unknown"),  # unsigned, as python-gssapi reports it
        (-1765328377, 7, "principal_unknown"),  # signed, as com_err defines it
        (2529638920, 8, "principal_unknown"),  # PRINCIPAL_NOT_UNIQUE
        (2529638926, 14, "etype_nosupp"),
        (2529638949, 37, "skew"),
        (2529639068, 156, "kdc_unreachable"),
        (2529638936, 24, "preauth_failed"),
        (2529638918, 6, "preauth_failed"),  # our own principal unknown
        (2529638930, 18, "preauth_failed"),  # our own account disabled or locked out
        (2529638980, 68, "other"),  # wrong realm
    ],
)
def test_reasons_come_from_the_krb5_error_number(minor: int, code: int, reason: str) -> None:
    assert krb5_code(minor) == code
    assert reason_of(krb5_code(minor)) == reason
    assert reason in REASONS


@pytest.mark.parametrize("minor", [0, 2, 111, 39756044, 2529638912 - 1, 2529638912 + 256])
def test_codes_outside_the_krb5_table_are_other(minor: int) -> None:
    assert krb5_code(minor) is None
    assert reason_of(None) == "other"


# --- principal and krb5.conf ------------------------------------------------------------


def settings_with(ldap_user: str | None, **check: object) -> Settings:
    text = f"realm: {REALM.lower()}\n"
    if ldap_user is not None:
        text += f"ldap:\n  url: ldaps://dc1.corp.example.test\n  user: '{ldap_user}'\n"
        text += "  password_env: LDAP_PASSWORD\n"
    settings = load_text(text, env={"LDAP_PASSWORD": PASSWORD})
    if check:
        tickets = settings.checks.service_tickets.model_copy(update=check)
        checks = settings.checks.model_copy(update={"service_tickets": tickets})
        settings = settings.model_copy(update={"checks": checks})
    return settings


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("svc-exporter@corp.example.test", f"svc-exporter@{REALM}"),
        ("svc-exporter@mail.example.com", f"svc-exporter@{REALM}"),  # a UPN suffix of its own
        ("CORP\\svc-exporter", f"svc-exporter@{REALM}"),
        ("svc-exporter", f"svc-exporter@{REALM}"),
        ("CN=svc-exporter,CN=Users,DC=corp,DC=example,DC=test", None),  # a DN names no principal
        (None, None),
    ],
)
def test_the_principal_comes_from_the_ldap_user(user: str | None, expected: str | None) -> None:
    settings = settings_with(user)
    assert principal_for(settings, settings.checks.service_tickets) == expected


def test_an_explicit_principal_wins_and_gets_the_realm() -> None:
    settings = settings_with("svc-exporter@corp.example.test", principal="EXPORTER$")
    assert principal_for(settings, settings.checks.service_tickets) == f"EXPORTER$@{REALM}"
    settings = settings_with(None, principal="other@CORP.EXAMPLE.TEST")
    assert principal_for(settings, settings.checks.service_tickets) == "other@CORP.EXAMPLE.TEST"


def test_the_workers_krb5_conf_names_one_kdc_and_asks_no_dns() -> None:
    text = krb5_conf(spec(88, address="10.0.0.10", ticket_lifetime=130.0))
    lines = [line.strip() for line in text.splitlines()]
    assert [line for line in lines if line.startswith("kdc")] == [
        "kdc_timesync = 0",  # a skewed KDC is reported, not compensated for
        "kdc = 10.0.0.10:88",
    ]
    for setting in (
        "dns_lookup_kdc = false",
        "dns_lookup_realm = false",
        "dns_canonicalize_hostname = false",
        "rdns = false",
        "udp_preference_limit = 1",
        "ticket_lifetime = 130s",
        "permitted_enctypes = aes256-cts-hmac-sha1-96 aes128-cts-hmac-sha1-96 arcfour-hmac",
        "default_tgs_enctypes = aes256-cts-hmac-sha1-96 aes128-cts-hmac-sha1-96 arcfour-hmac",
    ):
        assert setting in lines
    assert "kdc = [2001:db8::10]:8888" in krb5_conf(spec(8888, address="2001:db8::10"))
    assert "ticket_lifetime" not in krb5_conf(spec(88))


def test_a_worker_spec_never_shows_its_password_but_notices_a_new_one() -> None:
    first = spec(88)
    assert PASSWORD not in repr(first)
    assert PASSWORD not in repr(first.key())
    assert first.key() == spec(88).key()
    assert first.key() != spec(88, password="another one").key()
    assert first.key() != spec(88, encryption_types=("aes256-cts-hmac-sha1-96",)).key()


# --- configuration ------------------------------------------------------------------------


def test_the_defaults() -> None:
    check = load_text("realm: corp.example.test\n").checks.service_tickets
    assert check.enabled is None
    assert check.service_classes == ["SMTPSVC", "SMTP"]
    assert check.encryption_types == [
        "aes256-cts-hmac-sha1-96",
        "aes128-cts-hmac-sha1-96",
        "arcfour-hmac",
    ]
    assert check.principal is None and check.keytab is None and check.ticket_lifetime is None
    assert (check.timeout, check.max_concurrency) == (5.0, 4)


def test_on_by_default_only_with_credentials_to_ask_with(tmp_path: Path) -> None:
    assert not settings_with(None).checks.service_tickets.active
    assert settings_with("svc-exporter@corp.example.test").checks.service_tickets.active
    # Explicitly on without credentials: it runs, and every ticket says no_credentials.
    forced = load_text("realm: x.test\nchecks: {service_tickets: {enabled: true}}\n")
    assert forced.checks.service_tickets.active
    off = load_text(
        "realm: x.test\nldap: {url: 'ldaps://dc.x.test', user: u, password_env: PW}\n"
        "checks: {service_tickets: {enabled: false}}\n",
        env={"PW": "pw"},
    )
    assert not off.checks.service_tickets.active
    (tmp_path / "k.keytab").write_bytes(b"\x05\x02")
    (tmp_path / "c.yml").write_text(
        "realm: x.test\nchecks: {service_tickets: {keytab_file: k.keytab, principal: svc}}\n"
    )
    assert load_file(tmp_path / "c.yml").checks.service_tickets.active


def test_a_relative_keytab_is_found_beside_the_configuration(tmp_path: Path) -> None:
    (tmp_path / "exporter.keytab").write_bytes(b"\x05\x02")
    config = tmp_path / "exporter.yml"
    config.write_text(
        "realm: corp.example.test\n"
        "checks:\n  service_tickets:\n    keytab_file: exporter.keytab\n    ticket_lifetime: 2m\n"
    )
    check = load_file(config).checks.service_tickets
    assert check.keytab == (tmp_path / "exporter.keytab").resolve()
    assert check.ticket_lifetime == 120.0


def test_configuration_problems_are_named(tmp_path: Path) -> None:
    config = tmp_path / "exporter.yml"
    config.write_text(
        "realm: corp.example.test\nchecks:\n  service_tickets:\n    keytab_file: missing.keytab\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_file(config)
    assert "checks.service_tickets.keytab_file: cannot read 'missing.keytab'" in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        load_text(
            "realm: corp.example.test\nchecks:\n  service_tickets:\n"
            "    encryption_types: [des-cbc-crc]\n    principal: a/b\n    service_classes: []\n"
        )
    text = str(raised.value)
    assert "checks.service_tickets.encryption_types[0] (line 4)" in text
    assert "checks.service_tickets.principal (line 5)" in text
    assert "checks.service_tickets.service_classes (line 6)" in text


# --- the check without a KDC ---------------------------------------------------------------


def context(settings: Settings, servers: tuple[Server, ...], seconds: float = 3.0) -> CheckContext:
    loop = asyncio.get_running_loop()
    return CheckContext(loop.time() + seconds, settings, servers=servers)


def dc_at(port: int, name: str = "dc1.corp.example.test") -> Server:
    return Server(name, Role.DOMAIN_CONTROLLER, "127.0.0.1", {"kerberos": port})


async def test_without_domain_controllers_there_is_nothing_to_ask() -> None:
    settings = settings_with("svc-exporter@corp.example.test")
    with pytest.raises(CheckError) as raised:
        await check_service_tickets(
            context(settings, (EXCH1,)), EXCH1, settings.checks.service_tickets
        )
    assert raised.value.reason == "no_domain_controllers"


async def test_without_credentials_every_ticket_says_so_and_no_worker_starts() -> None:
    settings = settings_with(None)
    dcs = (dc_at(closed_port()), dc_at(closed_port(), "dc2.corp.example.test"))
    result = await check_service_tickets(
        context(settings, (EXCH1, *dcs)), EXCH1, settings.checks.service_tickets
    )
    assert {(t.domain_controller, t.spn, t.reason) for t in result.tickets} == {
        (dc.name, f"{service}/exch1.corp.example.test", "no_credentials")
        for dc in dcs
        for service in ("SMTPSVC", "SMTP")
    }
    assert all("ldap.user" in t.detail for t in result.tickets)
    assert {c.reason for c in result.credentials} == {"no_credentials"}
    assert kdc_workers.running_workers() == []


async def test_a_probe_of_one_server_asks_through_the_inventorys_dcs() -> None:
    settings = load_text("realm: corp.example.test\nchecks: {service_tickets: {enabled: true}}\n")
    dcs = (dc_at(closed_port()), dc_at(closed_port(), "dc2.corp.example.test"))
    result = await run_scrape(settings, Inventory((EXCH1,)), 3.0, [SPEC], context=(EXCH1, *dcs))
    (run,) = result.runs["service_tickets"]
    assert isinstance(run.outcome, ServiceTicketsResult)
    assert {t.domain_controller for t in run.outcome.tickets} == {dc.name for dc in dcs}
    assert {t.reason for t in run.outcome.tickets} == {"no_credentials"}


def test_edge_servers_are_not_asked_about() -> None:
    edge = Server(
        "edge1.perimeter.example.test",
        Role.EXCHANGE,
        exchange=ExchangeDetails(roles=64, version="Version 15.2", site="x"),
    )
    check = ServiceTicketsCheck()
    assert SPEC.applies_to(EXCH1, check)
    assert not SPEC.applies_to(edge, check)
    assert not SPEC.applies_to(dc_at(88), check)


# --- the worker process, with the real MIT library and no KDC -------------------------------


async def test_no_kdc_on_the_port_is_kdc_unreachable_at_once() -> None:
    settings = settings_with("svc-exporter@corp.example.test")
    dc = dc_at(closed_port())
    started = time.monotonic()
    result = await check_service_tickets(
        context(settings, (EXCH1, dc)), EXCH1, settings.checks.service_tickets
    )
    assert time.monotonic() - started < 2.5
    assert [(t.spn, t.ok, t.reason, t.code) for t in result.tickets] == [
        ("SMTPSVC/exch1.corp.example.test", False, "kdc_unreachable", 156),
        ("SMTP/exch1.corp.example.test", False, "kdc_unreachable", 156),
    ]
    (credentials,) = result.credentials
    assert (credentials.ok, credentials.reason, credentials.code) == (False, "kdc_unreachable", 156)
    assert "Cannot contact any KDC" in credentials.detail


def test_the_password_reaches_the_worker_on_stdin_only() -> None:
    worker = worker_for(spec(closed_port()))
    pid = worker._process.pid
    argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert PASSWORD.encode() not in argv + environ
    assert b"exporter.krb5_worker" in argv
    assert b"KRB5CCNAME=MEMORY:" in environ
    conf = Path(environ.split(b"KRB5_CONFIG=")[1].split(b"\0")[0].decode())
    assert conf.parent.stat().st_mode & 0o077 == 0  # a private folder of its own
    assert PASSWORD not in conf.read_text()
    answer = worker.request("SMTPSVC/x.corp.example.test", REALM, time.monotonic() + 5).result(5)
    assert PASSWORD not in repr(answer)


def test_a_request_queued_past_its_deadline_is_a_timeout() -> None:
    worker = worker_for(spec(closed_port()))
    answer = worker.request("SMTPSVC/x.corp.example.test", REALM, time.monotonic() - 1).result(5)
    assert (answer["ok"], answer["reason"]) == (False, "timeout")


def test_an_answer_nobody_waits_for_any_more_does_not_stop_the_worker() -> None:
    worker = worker_for(spec(closed_port()))
    given_up = worker.request("SMTPSVC/x.corp.example.test", REALM, time.monotonic() + 5)
    assert given_up.cancel()  # the scrape's deadline passed while the worker was still asking
    later = worker.request("SMTP/x.corp.example.test", REALM, time.monotonic() + 5).result(5)
    assert later["reason"] == "kdc_unreachable"
    assert worker.alive


def test_a_worker_is_replaced_when_its_settings_change_and_stopped_at_the_end() -> None:
    port = closed_port()
    first = worker_for(spec(port))
    assert worker_for(spec(port)) is first
    second = worker_for(spec(port, password="rotated"))
    assert second is not first and not first.alive
    assert first._process.poll() is not None  # the old process is gone, not left behind
    kdc_workers.close_all()
    assert not second.alive and second._process.poll() is not None
    assert not second._folder.exists()  # its krb5.conf went with it


def test_a_dead_worker_fails_its_requests_and_is_started_again() -> None:
    port = closed_port()
    worker = worker_for(spec(port))
    os.kill(worker._process.pid, signal.SIGKILL)
    worker._process.wait(5)
    with pytest.raises(WorkerGone):
        worker.request("SMTPSVC/x.corp.example.test", REALM, time.monotonic() + 5).result(5)
    again = worker_for(spec(port))
    assert again is not worker and again.alive


# --- metrics --------------------------------------------------------------------------------


def test_metrics_follow_the_projects_failure_convention() -> None:
    dc1, dc2 = "dc1.corp.example.test", "dc2.corp.example.test"
    exch2 = Server("exch2.corp.example.test", Role.EXCHANGE)
    good = ServiceTicketsResult(
        (
            TicketResult(dc1, "SMTPSVC/exch1.corp.example.test", True, duration=0.012),
            TicketResult(
                dc2, "SMTPSVC/exch1.corp.example.test", False, "skew", 37, "Clock skew", 0.003
            ),
            TicketResult(dc2, "SMTP/exch1.corp.example.test", False, "skew", 37),
        ),
        (
            CredentialsResult(dc1, True, expires=1_900_000_000.0),
            CredentialsResult(dc2, False, "skew", 37, "Clock skew too great"),
        ),
    )
    runs = [
        CheckRun("service_tickets", EXCH1, good, 0.02),
        CheckRun("service_tickets", exch2, Failure("timeout", "not done"), 5.0),
    ]
    text = expose(SPEC.emit(runs, ServiceTicketsCheck()))
    one = {"server": EXCH1.name, "spn": "SMTPSVC/exch1.corp.example.test"}
    assert value(text, "exchange_auth_service_ticket_ok", **one, domain_controller=dc1) == 1
    assert value(text, "exchange_auth_service_ticket_ok", **one, domain_controller=dc2) == 0
    assert series(text, "exchange_auth_service_ticket_failure")[0] == {
        **one,
        "domain_controller": dc2,
        "reason": "skew",
    }
    assert value(
        text, "exchange_auth_service_ticket_duration_seconds", **one, domain_controller=dc1
    ) == pytest.approx(0.012)
    assert (
        value(text, "exchange_auth_service_ticket_error_code", **one, domain_controller=dc2) == 37
    )
    # Never sent: no duration.
    assert (
        value(
            text,
            "exchange_auth_service_ticket_duration_seconds",
            server=EXCH1.name,
            spn="SMTP/exch1.corp.example.test",
            domain_controller=dc2,
        )
        is None
    )
    # A server whose run failed still has its series, through every DC the scrape knew.
    for dc in (dc1, dc2):
        for service in ("SMTPSVC", "SMTP"):
            labels = {
                "server": exch2.name,
                "spn": f"{service}/{exch2.name}",
                "domain_controller": dc,
            }
            assert value(text, "exchange_auth_service_ticket_ok", **labels) == 0
            assert (
                value(text, "exchange_auth_service_ticket_failure", **labels, reason="timeout") == 1
            )
    assert value(text, "exchange_auth_kerberos_credentials_ok", domain_controller=dc1) == 1
    assert value(text, "exchange_auth_kerberos_credentials_ok", domain_controller=dc2) == 0
    assert (
        value(
            text, "exchange_auth_kerberos_credentials_failure", domain_controller=dc2, reason="skew"
        )
        == 1
    )
    assert (
        value(
            text,
            "exchange_auth_kerberos_credentials_expiry_timestamp_seconds",
            domain_controller=dc1,
        )
        == 1_900_000_000.0
    )
    assert series(text, "exchange_auth_kerberos_credentials_failure") == [
        {"domain_controller": dc2, "reason": "skew"}
    ]


# --- one login per secret, whatever the number of DCs (stand-in KDCs that refuse) ----------

KDC_ERR_ETYPE_NOSUPP = 14
# The password has expired: one AS-REQ per login (to KDC_ERR_KEY_EXPIRED, MIT's client asks
# a second time, with pre-authentication; the lab's test counts that case with Samba).
KDC_ERR_KEY_EXPIRED = 23


async def scrape_tickets(
    settings: Settings, dcs: tuple[Server, ...], seconds: float = 3.0
) -> list[ServiceTicketsResult]:
    """Both Exchange servers at once through every DC, as one scrape asks."""
    exch2 = Server("exch2.corp.example.test", Role.EXCHANGE, "127.0.0.22")
    servers = (EXCH1, exch2, *dcs)
    return list(
        await asyncio.gather(
            *(
                check_service_tickets(
                    context(settings, servers, seconds), target, settings.checks.service_tickets
                )
                for target in (EXCH1, exch2)
            )
        )
    )


async def test_a_refused_password_costs_one_attempt_not_one_per_dc(
    kdcs: list[StandInKdc],
) -> None:
    settings = settings_with("svc-exporter@corp.example.test")
    kdcs += [StandInKdc(KDC_ERR_KEY_EXPIRED) for _ in range(3)]
    dcs = tuple(dc_at(k.port, f"dc{n}.corp.example.test") for n, k in enumerate(kdcs, 1))
    # A started worker asks nothing until a request lets it.
    worker_for(_spec_for_dc(settings, dcs[2]))
    await asyncio.sleep(0.5)
    assert sum(k.as_reqs for k in kdcs) == 0
    for _ in range(3):  # three scrapes
        for result in await scrape_tickets(settings, dcs):
            assert {(t.ok, t.reason, t.code, t.phase) for t in result.tickets} == {
                (False, "preauth_failed", KDC_ERR_KEY_EXPIRED, "tgt")
            }
            assert {(c.domain_controller, c.reason) for c in result.credentials} == {
                (dc.name, "preauth_failed") for dc in dcs
            }
            not_asked = [t for t in result.tickets if t.detail.startswith("not asked")]
            assert (
                len(not_asked) >= 4 and "refused the exporter's credentials" in not_asked[0].detail
            )
    assert sum(k.as_reqs for k in kdcs) == 1
    assert PASSWORD not in repr(kdc_workers._GATES)
    # The backoff over: one try again, at one DC.
    (gate,) = {worker.gate for worker in kdc_workers.running_workers()}
    gate.retry_at = time.monotonic()
    await scrape_tickets(settings, dcs)
    assert sum(k.as_reqs for k in kdcs) == 2
    await scrape_tickets(settings, dcs)
    assert sum(k.as_reqs for k in kdcs) == 2
    # A new secret is tried at once, again at one DC only.
    rotated = load_text(
        f"realm: {REALM.lower()}\nldap:\n  url: ldaps://dc1.corp.example.test\n"
        "  user: svc-exporter@corp.example.test\n  password_env: LDAP_PASSWORD\n",
        env={"LDAP_PASSWORD": "Rotated!secret-77"},
    )
    for result in await scrape_tickets(rotated, dcs):
        assert {t.reason for t in result.tickets} == {"preauth_failed"}
    assert sum(k.as_reqs for k in kdcs) == 3


def _spec_for_dc(settings: Settings, dc: Server) -> WorkerSpec:
    return _spec_for(settings, settings.checks.service_tickets, dc, "127.0.0.1")


async def test_a_dc_that_cannot_be_reached_does_not_hold_the_others_back(
    kdcs: list[StandInKdc],
) -> None:
    settings = settings_with("svc-exporter@corp.example.test")
    kdcs.append(StandInKdc(KDC_ERR_KEY_EXPIRED))
    dcs = (dc_at(closed_port()), dc_at(kdcs[0].port, "dc2.corp.example.test"))
    for result in await scrape_tickets(settings, dcs):
        reasons = {(t.domain_controller, t.reason, t.phase) for t in result.tickets}
        assert reasons == {
            (dcs[0].name, "kdc_unreachable", "tgt"),
            (dcs[1].name, "preauth_failed", "tgt"),
        }
    assert kdcs[0].as_reqs == 1


async def test_a_kdc_that_drops_the_first_login_holds_the_others_only_briefly(
    kdcs: list[StandInKdc],
) -> None:
    settings = settings_with("svc-exporter@corp.example.test", timeout=4.0)
    kdcs += [StandInKdc(None), StandInKdc(KDC_ERR_KEY_EXPIRED)]
    dcs = tuple(dc_at(k.port, f"dc{n}.corp.example.test") for n, k in enumerate(kdcs, 1))
    started = time.monotonic()
    result = (await scrape_tickets(settings, dcs, 4.0))[0]
    assert time.monotonic() - started < 4.5
    by_dc = {t.domain_controller: t.reason for t in result.tickets}
    assert by_dc[dcs[0].name] in ("timeout", "kdc_unreachable")
    assert by_dc[dcs[1].name] == "preauth_failed"
    assert kdcs[1].as_reqs == 1


async def test_the_exporters_own_tgt_failing_is_not_the_targets_failure(
    kdcs: list[StandInKdc],
) -> None:
    """Our account without a key for the configured encryption types: KDC_ERR_ETYPE_NOSUPP to
    our AS-REQ. No SPN was asked about: the tickets say no_credentials, the code stays."""
    settings = settings_with("svc-exporter@corp.example.test")
    kdcs.append(StandInKdc(KDC_ERR_ETYPE_NOSUPP))
    (result, _) = await scrape_tickets(settings, (dc_at(kdcs[0].port),))
    assert {(t.reason, t.code, t.phase) for t in result.tickets} == {
        ("no_credentials", KDC_ERR_ETYPE_NOSUPP, "tgt")
    }
    (credentials,) = result.credentials
    assert (credentials.reason, credentials.code) == ("etype_nosupp", KDC_ERR_ETYPE_NOSUPP)
    text = expose(
        SPEC.emit([CheckRun("service_tickets", EXCH1, result, 0.1)], ServiceTicketsCheck())
    )
    assert {s["reason"] for s in series(text, "exchange_auth_service_ticket_failure")} == {
        "no_credentials"
    }
    assert (
        value(
            text,
            "exchange_auth_kerberos_credentials_failure",
            domain_controller=credentials.domain_controller,
            reason="etype_nosupp",
        )
        == 1
    )


def test_the_krb5_conf_bounds_each_kdc_exchange_by_the_checks_timeout() -> None:
    assert "\trequest_timeout = 3s\n" in krb5_conf(spec(88, request_timeout=2.5))
    assert "\trequest_timeout = 1s\n" in krb5_conf(spec(88, request_timeout=0.2))
    assert "request_timeout" not in krb5_conf(spec(88))
    settings = settings_with("svc-exporter@corp.example.test", timeout=7.0)
    dc = dc_at(88)
    assert "\trequest_timeout = 7s\n" in krb5_conf(_spec_for_dc(settings, dc))


def test_a_kdc_that_drops_requests_frees_the_workers_thread_in_time(
    kdcs: list[StandInKdc],
) -> None:
    """Debian 12's MIT 1.20 ignores request_timeout and waits about 25 s for a silent KDC: the
    worker answers by the deadline anyway, and its only thread takes the next request."""
    kdcs.append(StandInKdc(None))
    worker = worker_for(spec(kdcs[0].port, threads=1, request_timeout=1.0))
    for spn in ("SMTPSVC/x.corp.example.test", "SMTP/x.corp.example.test"):
        started = time.monotonic()
        answer = worker.request(spn, REALM, started + 1.5).result(20)
        assert time.monotonic() - started < 2.5, spn
        assert (answer["ok"], answer["reason"], answer["phase"]) == (False, "timeout", "tgt")
    assert kdcs[0].as_reqs == 1  # the second request waited for the first login, no second one
