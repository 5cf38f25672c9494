"""Replication state: result names, REPLICA_LINK and DS_REPL_NEIGHBOR parsing, the scan, metrics."""

from __future__ import annotations

import contextlib
import struct
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ldap3.core import exceptions as ldap_errors

from exporter.background import ScanState
from exporter.checks import SCANS
from exporter.checks import replication as check
from exporter.checks.replication import (
    REPLICATION_SCAN,
    DcOutcome,
    DcReading,
    PartnerState,
    Replication,
    dsa_directory,
    replication_metrics,
    scan_replication,
)
from exporter.config import Settings, load_text
from exporter.inventory import Inventory
from exporter.ldap import LdapEntry, LdapError, LdapRawEntry, LdapTarget, _reason
from exporter.protocols.replication import (
    RESULTS,
    Neighbor,
    ReplicationParseError,
    parse_neighbor_xml,
    parse_replica_link,
    result_name,
    signed_result,
)
from exporter.servers import Role, Server
from tests.metrics_text import expose, samples, series, value
from tests.replication_values import neighbor_xml, replica_link

TESTDATA = Path(__file__).resolve().parent.parent / "testdata" / "replication"
DOMAIN_NC = "DC=corp,DC=example,DC=test"
CONFIG_NC = f"CN=Configuration,{DOMAIN_NC}"
SCHEMA_NC = f"CN=Schema,{CONFIG_NC}"
SITE = f"CN=Default-First-Site-Name,CN=Sites,{CONFIG_NC}"
DC1_GUID = uuid.UUID("6f1b3c2a-8d4e-4f50-9a61-7b8c9d0e1f20")
DC2_GUID = uuid.UUID("3f2504e0-4f89-41d3-9a0c-0305e82c3301")
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC).timestamp()


def at(year: int, month: int, day: int, hour: int, minute: int) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


# --- result codes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (0, "ERROR_SUCCESS"),
        (2, "ERROR_FILE_NOT_FOUND"),
        (5, "ERROR_ACCESS_DENIED"),
        (1256, "ERROR_HOST_DOWN"),
        (1311, "ERROR_NO_LOGON_SERVERS"),
        (1396, "ERROR_WRONG_TARGET_NAME"),
        (1398, "ERROR_TIME_SKEW"),
        (1722, "RPC_S_SERVER_UNAVAILABLE"),
        (1753, "EPT_S_NOT_REGISTERED"),
        (1908, "ERROR_DOMAIN_CONTROLLER_NOT_FOUND"),
        (8453, "ERROR_DS_DRA_ACCESS_DENIED"),
        (8524, "ERROR_DS_DNS_LOOKUP_FAILURE"),
        (8545, "ERROR_DS_DRA_OBJ_NC_MISMATCH"),
        (8589, "ERROR_DS_CANT_DERIVE_SPN_WITHOUT_SERVER_REF"),
        (8606, "ERROR_DS_INSUFFICIENT_ATTR_TO_CREATE_OBJECT"),
        (8614, "ERROR_DS_REPL_LIFETIME_EXCEEDED"),
        (0x80090322, "SEC_E_WRONG_PRINCIPAL"),
        (-2146893022, "SEC_E_WRONG_PRINCIPAL"),  # as repadmin prints it
        (0x80090324, "SEC_E_TIME_SKEW"),
        (8, "other"),
        (123456, "other"),
    ],
)
def test_result_codes_have_their_win32_names(code: int, name: str) -> None:
    assert result_name(code) == name


def test_result_names_are_a_bounded_label_set() -> None:
    names = [r.name for r in RESULTS.values()]
    assert len(names) == len(set(names))
    assert "other" not in names
    assert all(name.isupper() and " " not in name for name in names)


def test_hresults_read_as_repadmin_prints_them() -> None:
    assert signed_result(0x80090322) == -2146893022
    assert signed_result(1722) == 1722
    assert signed_result(0) == 0


# --- REPLICA_LINK ------------------------------------------------------------------------------


def test_replica_link_fields_at_their_documented_offsets() -> None:
    # Written field by field at the offsets of the layout in lab.md, not with the test builder,
    # so an offset wrong in both the parser and the builder still fails here.
    value = bytearray(208)
    value[0:4] = (1).to_bytes(4, "little")  # dwVersion; 4..8 padding
    value[12:16] = (3).to_bytes(4, "little")  # cConsecutiveFailures
    value[16:24] = (13_430_000_000).to_bytes(8, "little")  # timeLastSuccess (DSTIME)
    value[24:32] = (13_430_000_300).to_bytes(8, "little")  # timeLastAttempt
    value[32:36] = (1722).to_bytes(4, "little")  # ulResultLastAttempt
    value[36:40] = (208).to_bytes(4, "little")  # cbOtherDrsOffset
    # uuidDsaObj: Data1..Data3 little-endian, Data4 as is (MS-DTYP GUID packet form).
    value[160:176] = bytes.fromhex("2a3c1b6f4e8d504f9a617b8c9d0e1f20")
    value += (11).to_bytes(4, "little") + b"dc1.x.test\0"
    link = parse_replica_link(bytes(value), DOMAIN_NC)
    assert link == Neighbor(
        naming_context=DOMAIN_NC,
        source_dsa_guid=DC1_GUID,
        source_dsa_dn=None,
        source_address="dc1.x.test",
        consecutive_failures=3,
        last_success=13_430_000_000 - 11_644_473_600,
        last_attempt=13_430_000_300 - 11_644_473_600,
        last_result=1722,
    )


def test_healthy_replica_link_with_its_partner_address() -> None:
    address = f"{DC2_GUID}._msdcs.corp.example.test"
    value = replica_link(DC2_GUID, last_success=NOW, last_attempt=NOW, result=0, address=address)
    link = parse_replica_link(value, CONFIG_NC)
    assert link.naming_context == CONFIG_NC
    assert link.source_dsa_guid == DC2_GUID
    # Samba names the partner by the same GUID in its address: the byte order must agree.
    assert link.source_address == address
    assert str(link.source_dsa_guid) == address.split(".", 1)[0]
    assert (link.consecutive_failures, link.last_result) == (0, 0)
    assert link.last_success == link.last_attempt == NOW


def test_never_succeeded_replica_link_has_no_times() -> None:
    link = parse_replica_link(replica_link(DC2_GUID, address="x"), SCHEMA_NC)
    assert link.last_success is None
    assert link.last_attempt is None
    failing = parse_replica_link(
        replica_link(DC2_GUID, failures=9, last_attempt=NOW, result=1311), SCHEMA_NC
    )
    assert failing.last_success is None
    assert failing.last_attempt == NOW
    assert (failing.consecutive_failures, failing.last_result) == (9, 1311)


def test_failing_replica_link_keeps_its_last_success() -> None:
    link = parse_replica_link(
        replica_link(DC2_GUID, failures=14, last_success=NOW - 3600, last_attempt=NOW, result=2),
        DOMAIN_NC,
    )
    assert link.last_success == NOW - 3600
    assert link.last_attempt == NOW
    assert (link.consecutive_failures, link.last_result) == (14, 2)


def test_windows_replica_link_has_its_address_further_on() -> None:
    link = parse_replica_link(
        replica_link(DC2_GUID, address="dc2.corp.example.test", windows_tail=True), DOMAIN_NC
    )
    assert link.source_address == "dc2.corp.example.test"


@pytest.mark.parametrize("offset", [0, 205, 4000, 0xFFFFFFFF])
def test_replica_link_address_out_of_reach_is_none(offset: int) -> None:
    value = bytearray(replica_link(DC2_GUID, address="dc2.x"))
    struct.pack_into("<I", value, 36, offset)
    assert parse_replica_link(bytes(value), DOMAIN_NC).source_address is None


def test_replica_link_address_longer_than_the_value_is_cut() -> None:
    value = bytearray(replica_link(DC2_GUID, address="dc2.x"))
    struct.pack_into("<I", value, 208, 0xFFFFFFFF)  # an MTX_ADDR length past the end
    assert parse_replica_link(bytes(value), DOMAIN_NC).source_address == "dc2.x"


@pytest.mark.parametrize(
    "value",
    [
        b"",
        replica_link(DC2_GUID)[:207],  # one byte short of uuidTransportObj's end
        replica_link(DC2_GUID, version=2),
        replica_link(DC2_GUID, version=0),
    ],
)
def test_unreadable_replica_links_raise_the_parse_error(value: bytes) -> None:
    with pytest.raises(ReplicationParseError):
        parse_replica_link(value, DOMAIN_NC)


@given(st.binary(max_size=600))
def test_any_bytes_as_replica_link_raise_nothing_else(data: bytes) -> None:
    with contextlib.suppress(ReplicationParseError):
        parse_replica_link(data, DOMAIN_NC)


@given(
    st.binary(min_size=208, max_size=208),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.binary(max_size=64),
)
def test_replica_links_with_any_field_values_parse(
    fixed: bytes, offset: int, length: int, tail: bytes
) -> None:
    value = bytearray(fixed)
    struct.pack_into("<II", value, 0, 1, 0)
    struct.pack_into("<I", value, 36, offset)
    value += struct.pack("<I", length) + tail
    link = parse_replica_link(bytes(value), DOMAIN_NC)
    assert link.naming_context == DOMAIN_NC
    assert link.source_address is None or len(link.source_address) <= 1024


# --- DS_REPL_NEIGHBOR XML ---------------------------------------------------------------------


def fixture(name: str) -> str:
    return (TESTDATA / name).read_text(encoding="utf-8")


def test_xml_healthy_neighbor() -> None:
    # A real value ends in a NUL after the closing newline.
    n = parse_neighbor_xml(fixture("dc2-domain-healthy.xml") + "\0")
    assert n == Neighbor(
        naming_context=DOMAIN_NC,
        source_dsa_guid=DC2_GUID,
        source_dsa_dn=f"CN=NTDS Settings,CN=DC2,CN=Servers,{SITE}",
        source_address=f"{DC2_GUID}._msdcs.corp.example.test",
        consecutive_failures=0,
        last_success=at(2026, 11, 29, 10, 0),
        last_attempt=at(2026, 11, 29, 10, 0),
        last_result=0,
    )


def test_xml_failing_neighbor() -> None:
    n = parse_neighbor_xml(fixture("dc3-config-rpc-unavailable.xml").encode() + b"\0")
    assert n.naming_context == CONFIG_NC
    assert n.consecutive_failures == 37
    assert n.last_result == 1722
    assert n.last_success == at(2026, 11, 28, 6, 15)
    assert n.last_attempt == at(2026, 11, 29, 9, 55)


def test_xml_never_replicated_neighbor_has_no_last_success() -> None:
    n = parse_neighbor_xml(fixture("dc4-dnszone-never.xml"))
    assert n.last_success is None  # 1601-01-01T00:00:00Z is FILETIME 0
    assert n.last_attempt == at(2026, 11, 29, 9, 58)
    assert (n.consecutive_failures, n.last_result) == (4, 8524)


def test_xml_unknown_elements_and_missing_ones() -> None:
    n = parse_neighbor_xml(
        "<DS_REPL_NEIGHBORW><pszNamingContext> DC=a </pszNamingContext>"
        "<pszSourceDsaDN>CN=NTDS Settings,CN=DC9,CN=Servers,CN=S,CN=Sites,CN=Configuration,DC=a"
        "</pszSourceDsaDN><dwNewField>7</dwNewField><nested><x/></nested>"
        "<dwLastSyncResult>-2146893022</dwLastSyncResult></DS_REPL_NEIGHBORW>\n\0\0"
    )
    assert n.naming_context == "DC=a"
    assert n.last_result == 0x80090322
    assert n.consecutive_failures is None
    assert n.last_success is None
    assert n.last_attempt is None
    assert n.source_dsa_guid is None


@pytest.mark.parametrize(
    ("text", "unix"),
    [
        ("2026-11-29T10:00:00Z", at(2026, 11, 29, 10, 0)),
        ("2026-11-29T10:00:00.250Z", at(2026, 11, 29, 10, 0) + 0.25),
        ("2026-11-29T11:00:00+01:00", at(2026, 11, 29, 10, 0)),
        ("2026-11-29T10:00:00", at(2026, 11, 29, 10, 0)),
        ("134090568000000000", at(2025, 12, 1, 10, 0)),  # FILETIME ticks
        ("1601-01-01T00:00:00Z", None),
        ("0", None),
        ("yesterday", None),
        ("²", None),  # a digit to str.isdigit, not to int()
    ],
)
def test_xml_times(text: str, unix: float | None) -> None:
    n = parse_neighbor_xml(
        f"<DS_REPL_NEIGHBOR><pszNamingContext>DC=a</pszNamingContext>"
        f"<pszSourceDsaAddress>g._msdcs.a</pszSourceDsaAddress>"
        f"<ftimeLastSyncSuccess>{text}</ftimeLastSyncSuccess></DS_REPL_NEIGHBOR>"
    )
    assert n.last_success == unix


@pytest.mark.parametrize(
    "document",
    [
        "",
        "\0",
        "not xml",
        "<DS_REPL_NEIGHBOR><pszSourceDsaDN>CN=x</pszSourceDsaDN></DS_REPL_NEIGHBOR>",
        "<DS_REPL_NEIGHBOR><pszNamingContext>DC=a</pszNamingContext></DS_REPL_NEIGHBOR>",
        '<!DOCTYPE d [<!ENTITY e "DC=a">]><DS_REPL_NEIGHBOR><pszNamingContext>&e;'
        "</pszNamingContext><pszSourceDsaDN>CN=x</pszSourceDsaDN></DS_REPL_NEIGHBOR>",
    ],
)
def test_unreadable_xml_raises_the_parse_error(document: str) -> None:
    with pytest.raises(ReplicationParseError):
        parse_neighbor_xml(document)


@given(st.one_of(st.binary(max_size=400), st.text(max_size=400)))
def test_any_input_as_xml_raises_nothing_else(document: str | bytes) -> None:
    with contextlib.suppress(ReplicationParseError):
        parse_neighbor_xml(document)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text.strip())
    except ValueError:
        return False
    return True


_ELEMENTS = [
    "pszNamingContext",
    "pszSourceDsaDN",
    "uuidSourceDsaObjGuid",
    "ftimeLastSyncSuccess",
    "ftimeLastSyncAttempt",
    "dwLastSyncResult",
    "cNumConsecutiveSyncFailures",
]
_XML_SAFE = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="<&>"), max_size=40
)


@given(st.dictionaries(st.sampled_from(_ELEMENTS), _XML_SAFE))
def test_well_formed_neighbors_with_any_contents_parse_or_raise_the_parse_error(
    fields: dict[str, str],
) -> None:
    body = "".join(f"<{k}>{v}</{k}>" for k, v in fields.items())
    try:
        n = parse_neighbor_xml(f"<DS_REPL_NEIGHBOR>{body}</DS_REPL_NEIGHBOR>")
    except ReplicationParseError:
        names_source = bool(fields.get("pszSourceDsaDN", "").strip()) or _is_uuid(
            fields.get("uuidSourceDsaObjGuid", "")
        )
        assert not fields.get("pszNamingContext", "").strip() or not names_source
    else:
        assert n.naming_context == fields["pszNamingContext"].strip()


# --- who is who -------------------------------------------------------------------------------


def raw(dn: str, **attributes: list[bytes]) -> LdapRawEntry:
    return LdapRawEntry(dn, dict(attributes))


def sites(*dcs: tuple[str, uuid.UUID, str], site: str = SITE) -> list[LdapRawEntry]:
    """Server and NTDS Settings objects as a subtree search of CN=Sites returns them."""
    entries = []
    for cn, guid, host in dcs:
        server = f"CN={cn},CN=Servers,{site}"
        entries.append(raw(server, objectClass=[b"top", b"server"], dNSHostName=[host.encode()]))
        entries.append(
            raw(
                f"CN=NTDS Settings,{server}",
                objectClass=[b"top", b"applicationSettings", b"nTDSDSA"],
                objectGUID=[guid.bytes_le],
            )
        )
    return entries


def test_partners_are_named_by_their_server_objects() -> None:
    directory = dsa_directory(
        sites(
            ("DC1", DC1_GUID, "dc1.corp.example.test"), ("DC2", DC2_GUID, "DC2.Corp.Example.Test.")
        )
    )
    by_guid = Neighbor(DOMAIN_NC, DC2_GUID, None, "whatever", 0, None, None, 0)
    assert directory.partner_name(by_guid) == "dc2.corp.example.test"
    # The DN as a DC writes it in XML may differ in spacing and case from the search's.
    by_dn = Neighbor(
        DOMAIN_NC,
        None,
        f"cn=NTDS Settings, CN=DC1,CN=Servers, {SITE.upper()}",
        None,
        0,
        None,
        None,
        0,
    )
    assert directory.partner_name(by_dn) == "dc1.corp.example.test"
    gone = Neighbor(
        DOMAIN_NC,
        uuid.uuid4(),
        f"CN=NTDS Settings,CN=OLDDC,CN=Servers,{SITE}",
        None,
        0,
        None,
        None,
        0,
    )
    assert directory.partner_name(gone) == "olddc"
    unknown_guid = uuid.UUID(int=7)
    by_address = Neighbor(DOMAIN_NC, unknown_guid, None, "G._msdcs.X", 0, None, None, 0)
    assert directory.partner_name(by_address) == "g._msdcs.x"
    bare = Neighbor(DOMAIN_NC, unknown_guid, None, None, 0, None, None, 0)
    assert directory.partner_name(bare) == str(unknown_guid)
    assert directory.other_dsas(f"CN=NTDS Settings,CN=DC1,CN=Servers,{SITE}") == 1


def test_guid_byte_order_matters_for_the_mapping() -> None:
    # objectGUID read in network order instead of MS-DTYP order would map nothing.
    entries = sites(("DC2", DC2_GUID, "dc2.corp.example.test"))
    swapped = [
        raw(e.dn, objectClass=e.values("objectClass"), objectGUID=[DC2_GUID.bytes])
        if e.values("objectGUID")
        else e
        for e in entries
    ]
    link = parse_replica_link(replica_link(DC2_GUID), DOMAIN_NC)
    assert dsa_directory(entries).partner_name(link) == "dc2.corp.example.test"
    assert dsa_directory(swapped).partner_name(link) != "dc2.corp.example.test"


# --- the scan, against fake DCs ---------------------------------------------------------------


class FakeDc:
    """What one DC's LDAP answers: rootDSE attributes, CN=Sites, repsFrom per NC head."""

    def __init__(
        self,
        root: dict[str, list[str]],
        site_entries: Sequence[LdapRawEntry] = (),
        reps_from: dict[str, list[bytes]] | None = None,
        error: LdapError | None = None,
        ranges: Sequence[tuple[str, list[str]]] = (),
    ) -> None:
        self.root = root
        self.site_entries = list(site_entries)
        self.reps_from = reps_from or {}
        self.error = error
        self.ranges = list(ranges)
        self.requests: list[tuple[str, ...]] = []
        self.target = LdapTarget("fake", 636, True, False, False, None, 1.0)

    def root_dse(self, attributes: Sequence[str], deadline: float | None = None) -> LdapEntry:
        self.requests.append(("rootDSE", *attributes))
        if self.error is not None:
            raise self.error
        if attributes and ";range=" in attributes[0]:
            key, values = self.ranges.pop(0)
            return LdapEntry("", {key: values})
        return LdapEntry("", dict(self.root))

    def search_raw(
        self,
        base: str,
        search_filter: str,
        attributes: Sequence[str],
        deadline: float | None = None,
        *,
        base_only: bool = False,
    ) -> list[LdapRawEntry]:
        self.requests.append((base, search_filter, *attributes))
        if base.startswith("CN=Sites,"):
            assert not base_only
            return self.site_entries
        assert base_only, "an NC head is read by itself, never its subtree"
        values = self.reps_from.get(base)
        return [raw(base, repsFrom=values)] if values is not None else [raw(base)]


def settings_for(*dcs: Server, extra: str = "") -> tuple[Settings, Inventory]:
    settings = load_text(
        "realm: corp.example.test\n"
        "ldap: {url: 'ldaps://dc1.corp.example.test', user: 'mon@corp.example.test', "
        "password_env: LDAP_PASSWORD, tls_verify: false, timeout: 2s}\n" + extra,
        env={"LDAP_PASSWORD": "pw"},
    )
    return settings, Inventory(dcs)


def dc(name: str, address: str | None = None, **ports: int) -> Server:
    return Server(f"{name}.corp.example.test", Role.DOMAIN_CONTROLLER, address, ports)


def samba_root(*ncs: str) -> dict[str, list[str]]:
    return {
        # Samba names the attribute in its answer but gives it no value.
        "msDS-ReplAllInboundNeighbors": [],
        "namingContexts": list(ncs),
        "configurationNamingContext": [CONFIG_NC],
        "dsServiceName": [f"CN=NTDS Settings,CN=DC1,CN=Servers,{SITE}"],
    }


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Fake DCs by host (or address), and the targets the scan asked for."""
    table: dict[str, Any] = {"targets": []}

    def client_for(target: LdapTarget) -> FakeDc:
        table["targets"].append(target)
        return table[target.host]  # type: ignore[no-any-return]

    monkeypatch.setattr(check, "client_for", client_for)
    return table


async def test_samba_dc_is_read_through_repsfrom_of_each_nc_head(fakes: dict[str, Any]) -> None:
    two_dcs = sites(
        ("DC1", DC1_GUID, "dc1.corp.example.test"), ("DC2", DC2_GUID, "dc2.corp.example.test")
    )
    stray = uuid.UUID(int=99)
    fakes["127.0.10.10"] = FakeDc(
        samba_root(DOMAIN_NC, CONFIG_NC, SCHEMA_NC),
        two_dcs,
        {
            DOMAIN_NC: [replica_link(DC2_GUID, last_success=NOW, last_attempt=NOW)],
            CONFIG_NC: [
                replica_link(
                    DC2_GUID, failures=6, last_success=NOW - 600, last_attempt=NOW, result=2
                ),
                replica_link(
                    stray,
                    address=f"{stray}._msdcs.corp.example.test",
                    last_attempt=NOW,
                    result=1311,
                ),
                b"\x01\x00\x00\x00 truncated",
            ],
        },
    )
    settings, inventory = settings_for(dc("dc1", "127.0.10.10"))
    result = await scan_replication(settings, inventory)
    outcome = result.dcs["dc1.corp.example.test"]
    assert outcome.reason == ""
    assert outcome.reading is not None
    assert outcome.reading.source == "repsFrom"
    assert outcome.reading.unparsed == 1
    assert {(p.partner, p.naming_context): p for p in outcome.reading.partners} == {
        ("dc2.corp.example.test", DOMAIN_NC): PartnerState(
            "dc2.corp.example.test", DOMAIN_NC, 0, NOW, NOW, 0
        ),
        ("dc2.corp.example.test", CONFIG_NC): PartnerState(
            "dc2.corp.example.test", CONFIG_NC, 6, NOW - 600, NOW, 2
        ),
        (f"{stray}._msdcs.corp.example.test", CONFIG_NC): PartnerState(
            f"{stray}._msdcs.corp.example.test", CONFIG_NC, 0, None, NOW, 1311
        ),
    }
    # The constructed attribute is asked for by name, with what the fallback needs, at once.
    assert fakes["127.0.10.10"].requests[0][:2] == ("rootDSE", "msDS-ReplAllInboundNeighbors")
    assert len([r for r in fakes["127.0.10.10"].requests if r[0] == "rootDSE"]) == 1


async def test_windows_dc_is_read_through_its_neighbor_xml(fakes: dict[str, Any]) -> None:
    site_entries = sites(
        ("DC2", DC2_GUID, "dc2.corp.example.test"), ("DC4", uuid.uuid4(), "dc4.corp.example.test")
    ) + sites(
        ("DC3", uuid.uuid4(), "dc3.corp.example.test"),
        site=f"CN=Branch-Office,CN=Sites,{CONFIG_NC}",
    )
    values = [
        fixture(name) + "\0"
        for name in (
            "dc2-domain-healthy.xml",
            "dc3-config-rpc-unavailable.xml",
            "dc4-dnszone-never.xml",
        )
    ]
    fakes["dc1.corp.example.test"] = FakeDc(
        {
            "msDS-ReplAllInboundNeighbors": values,
            "namingContexts": [DOMAIN_NC],
            "configurationNamingContext": [CONFIG_NC],
        },
        site_entries,
    )
    settings, inventory = settings_for(dc("dc1"))
    reading = (await scan_replication(settings, inventory)).dcs["dc1.corp.example.test"].reading
    assert reading is not None
    assert reading.source == "msDS-ReplAllInboundNeighbors"
    assert sorted(
        (p.partner, p.naming_context, p.consecutive_failures) for p in reading.partners
    ) == [
        ("dc2.corp.example.test", DOMAIN_NC, 0),
        ("dc3.corp.example.test", CONFIG_NC, 37),
        ("dc4.corp.example.test", f"DC=DomainDnsZones,{DOMAIN_NC}", 4),
    ]
    # Windows answered: no NC head was read for repsFrom.
    assert not any(r[1:2] == ("(objectClass=*)",) for r in fakes["dc1.corp.example.test"].requests)


async def test_neighbor_values_sent_in_ranges_are_all_read(fakes: dict[str, Any]) -> None:
    def value(nc: str) -> str:
        return neighbor_xml(nc, f"CN=NTDS Settings,CN=DC2,CN=Servers,{SITE}", DC2_GUID)

    fake = FakeDc(
        {
            "msDS-ReplAllInboundNeighbors;range=0-1": [value("DC=a"), value("DC=b")],
            "configurationNamingContext": [CONFIG_NC],
        },
        sites(("DC2", DC2_GUID, "dc2.corp.example.test")),
        ranges=[
            ("msDS-ReplAllInboundNeighbors;range=2-3", [value("DC=c"), value("DC=d")]),
            ("msDS-ReplAllInboundNeighbors;range=4-*", [value("DC=e")]),
        ],
    )
    fakes["dc1.corp.example.test"] = fake
    settings, inventory = settings_for(dc("dc1"))
    reading = (await scan_replication(settings, inventory)).dcs["dc1.corp.example.test"].reading
    assert reading is not None
    assert sorted(p.naming_context for p in reading.partners) == [f"DC={c}" for c in "abcde"]
    asked = [r[1] for r in fake.requests if r[0] == "rootDSE"][1:]
    assert asked == [
        "msDS-ReplAllInboundNeighbors;range=2-*",
        "msDS-ReplAllInboundNeighbors;range=4-*",
    ]


async def test_each_dc_is_read_at_its_own_address_and_port(fakes: dict[str, Any]) -> None:
    for host in ("127.0.10.10", "dc2.corp.example.test"):
        fakes[host] = FakeDc(
            samba_root(DOMAIN_NC), sites(("DC1", DC1_GUID, "dc1.corp.example.test"))
        )
    settings, inventory = settings_for(dc("dc1", "127.0.10.10", ldap=1636), dc("dc2"))
    await scan_replication(settings, inventory)
    targets = {t.host: t for t in fakes["targets"]}
    assert targets["127.0.10.10"].port == 1636
    assert targets["dc2.corp.example.test"].port == 636
    # The main URL's credentials and TLS settings, at every DC.
    assert all(t.user == "mon@corp.example.test" and t.use_ssl for t in targets.values())


async def test_a_failing_dc_keeps_its_last_reading_and_the_others_are_reported(
    fakes: dict[str, Any],
) -> None:
    good = FakeDc(
        samba_root(DOMAIN_NC),
        sites(
            ("DC1", DC1_GUID, "dc1.corp.example.test"), ("DC2", DC2_GUID, "dc2.corp.example.test")
        ),
        {DOMAIN_NC: [replica_link(DC1_GUID, last_success=NOW, last_attempt=NOW)]},
    )
    fakes["dc1.corp.example.test"] = good
    fakes["dc2.corp.example.test"] = good
    settings, inventory = settings_for(dc("dc1"), dc("dc2"))
    first = await scan_replication(settings, inventory)
    assert all(o.reason == "" for o in first.dcs.values())

    fakes["dc2.corp.example.test"] = FakeDc(
        {}, error=LdapError("bind_failed", "invalidCredentials")
    )
    second = await scan_replication(settings, inventory, first)
    assert second.dcs["dc1.corp.example.test"].reason == ""
    failed = second.dcs["dc2.corp.example.test"]
    assert failed.reason == "bind_failed"
    assert failed.reading == first.dcs["dc2.corp.example.test"].reading
    assert REPLICATION_SCAN.count(second) == 1  # only what this run read

    # A DC never read before has nothing to keep.
    fakes["dc3.corp.example.test"] = FakeDc({}, error=LdapError("unreachable", "refused"))
    settings, inventory = settings_for(dc("dc1"), dc("dc2"), dc("dc3"))
    third = await scan_replication(settings, inventory, second)
    assert third.dcs["dc3.corp.example.test"] == DcOutcome(None, "unreachable", "refused")


async def test_a_dc_that_shows_nothing_while_others_exist_is_no_rights(
    fakes: dict[str, Any],
) -> None:
    two_dcs = sites(
        ("DC1", DC1_GUID, "dc1.corp.example.test"), ("DC2", DC2_GUID, "dc2.corp.example.test")
    )
    fakes["dc1.corp.example.test"] = FakeDc(samba_root(DOMAIN_NC, CONFIG_NC), two_dcs)
    refused = _reason(
        ldap_errors.LDAPInsufficientAccessRightsResult(
            result=50,
            description="insufficientAccessRights",
            message="00002098: SecErr: DSID-03150F94, problem 4003 (INSUFF_ACCESS_RIGHTS)",
            response_type="searchResDone",
        ),
        None,
    )
    fakes["dc2.corp.example.test"] = FakeDc({}, error=refused)
    # A lone DC has no partner to replicate from: nothing to show is right there.
    fakes["dc3.corp.example.test"] = FakeDc(
        samba_root(DOMAIN_NC), sites(("DC1", DC1_GUID, "dc1.corp.example.test"))
    )
    settings, inventory = settings_for(dc("dc1"), dc("dc2"), dc("dc3"))
    result = await scan_replication(settings, inventory)
    assert result.dcs["dc1.corp.example.test"].reason == "no_rights"
    assert result.dcs["dc2.corp.example.test"].reason == "no_rights"
    lone = result.dcs["dc3.corp.example.test"]
    assert lone.reason == ""
    assert lone.reading is not None and lone.reading.partners == ()


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (LdapError("unreachable", "invalid server address"), "dns"),  # ldap3, unresolvable name
        (LdapError("unreachable", "[Errno 111] Connection refused"), "unreachable"),
        (LdapError("search_failed", "LDAPInsufficientAccessRightsResult - 50 - ..."), "no_rights"),
        (LdapError("search_failed", "LDAPOperationsErrorResult - 1"), "search_failed"),
        (LdapError("bind_failed", "invalidCredentials"), "bind_failed"),
        (LdapError("something_new", "?"), "error"),
    ],
)
def test_dc_failure_reasons_are_bounded(error: LdapError, reason: str) -> None:
    assert check._reason(error) == reason
    assert reason in check.REASONS


def test_the_scan_is_registered_and_needs_an_account() -> None:
    assert REPLICATION_SCAN in SCANS
    settings, _ = settings_for()
    assert REPLICATION_SCAN.interval(settings) == 300.0
    faster, _ = settings_for(extra="checks: {replication: {refresh_interval: 1m}}\n")
    assert REPLICATION_SCAN.interval(faster) == 60.0
    off, _ = settings_for(extra="checks: {replication: {enabled: false}}\n")
    assert REPLICATION_SCAN.interval(off) is None
    anonymous = load_text("realm: corp.example.test\nldap: {url: 'ldaps://dc1.x'}\n")
    assert REPLICATION_SCAN.interval(anonymous) is None


# --- metrics ------------------------------------------------------------------------------------


def test_metrics_per_dc_and_partner() -> None:
    dc1, dc2, dc3, new = dc("dc1"), dc("dc2"), dc("dc3"), dc("dc4")
    settings, inventory = settings_for(dc1, dc2, dc3, new)
    reading = DcReading(
        "repsFrom",
        (
            PartnerState("dc2.corp.example.test", DOMAIN_NC, 0, NOW, NOW, 0),
            PartnerState("dc3.corp.example.test", DOMAIN_NC, 12, NOW - 7200, NOW, 1722),
            PartnerState("dc3.corp.example.test", CONFIG_NC, 3, None, NOW, 0x80090322),
            PartnerState("dc9.corp.example.test", SCHEMA_NC, 1, None, None, 99999),
        ),
        unparsed=2,
        read_at=NOW + 5,
    )
    kept = DcReading(
        "msDS-ReplAllInboundNeighbors",
        (PartnerState("dc1.corp.example.test", DOMAIN_NC, 0, NOW - 900, NOW - 900, 0),),
        0,
        NOW - 900,
    )
    state = ScanState(
        result=Replication(
            {
                dc1.name: DcOutcome(reading),
                dc2.name: DcOutcome(kept, "timeout", "timed out"),
                dc3.name: DcOutcome(None, "bind_failed", "invalidCredentials"),
            }
        )
    )
    text = expose(replication_metrics(state, settings, inventory))

    def get(name: str, partner: str, nc: str, **more: str) -> float | None:
        return value(
            text,
            f"exchange_auth_replication_{name}",
            domain_controller=dc1.name,
            partner=partner,
            naming_context=nc,
            **more,
        )

    dc3_name = "dc3.corp.example.test"
    assert get("consecutive_failures", dc3_name, DOMAIN_NC) == 12
    assert get("last_success_timestamp_seconds", dc3_name, DOMAIN_NC) == NOW - 7200
    assert get("last_attempt_timestamp_seconds", dc3_name, DOMAIN_NC) == NOW
    assert get("last_result", dc3_name, DOMAIN_NC) == 1722
    assert get("last_result_info", dc3_name, DOMAIN_NC, result="RPC_S_SERVER_UNAVAILABLE") == 1
    # Never succeeded: no last-success sample at all (a 0 would read as 1970).
    assert get("last_success_timestamp_seconds", dc3_name, CONFIG_NC) is None
    assert get("last_result", dc3_name, CONFIG_NC) == -2146893022
    assert get("last_result_info", dc3_name, CONFIG_NC, result="SEC_E_WRONG_PRINCIPAL") == 1
    assert get("last_attempt_timestamp_seconds", "dc9.corp.example.test", SCHEMA_NC) is None
    assert get("last_result_info", "dc9.corp.example.test", SCHEMA_NC, result="other") == 1
    assert value(text, "exchange_auth_replication_unparsed_values", domain_controller=dc1.name) == 2
    assert (
        value(
            text, "exchange_auth_replication_dc_read_timestamp_seconds", domain_controller=dc1.name
        )
        == NOW + 5
    )

    success = {
        dict(labels)["domain_controller"]: v
        for (name, labels), v in samples(text).items()
        if name == "exchange_auth_replication_dc_success"
    }
    assert success == {dc1.name: 1, dc2.name: 0, dc3.name: 0}  # dc4: not read yet, no claim
    failures = series(text, "exchange_auth_replication_dc_failure")
    assert sorted((f["domain_controller"], f["reason"]) for f in failures) == [
        (dc2.name, "timeout"),
        (dc3.name, "bind_failed"),
    ]
    # dc2's last good reading is still reported, stamped with when it was read.
    assert (
        value(
            text,
            "exchange_auth_replication_consecutive_failures",
            domain_controller=dc2.name,
            partner="dc1.corp.example.test",
            naming_context=DOMAIN_NC,
        )
        == 0
    )
    assert (
        value(
            text, "exchange_auth_replication_dc_read_timestamp_seconds", domain_controller=dc2.name
        )
        == NOW - 900
    )
    assert not [s for s in samples(text) if ("domain_controller", new.name) in s[1]]
    assert (
        "Cached"
        in text.split("exchange_auth_replication_consecutive_failures ", 1)[1].split("\n", 1)[0]
    )


def test_metrics_before_the_first_run_are_empty_families() -> None:
    settings, inventory = settings_for(dc("dc1"))
    text = expose(replication_metrics(ScanState(), settings, inventory))
    assert "# HELP exchange_auth_replication_last_result " in text
    assert not samples(text)
