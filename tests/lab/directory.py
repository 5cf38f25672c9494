"""What the lab's domain holds for the Exchange checks: schema subset, servers, accounts, SPNs.

The same plain data does two jobs: it is written into dc1's freshly provisioned database (as
LDIF, while Samba is stopped, before the folder goes into the cache), and tests assert against
it (``lab.exchange_directory``). Nothing here talks to a running server.

Written into the domain:

* **Schema subset** (Samba ships no Exchange schema): attributes ``msExchCurrentServerRoles``
  and ``msExchSMTPReceiveInboundSecurityFlag`` (integers), ``msExchServerSite`` (a DN); classes
  ``msExchExchangeServer`` and ``msExchSmtpReceiveConnector``; ``container`` may sit under an
  ``msExchExchangeServer`` (as Exchange's own schema update allows) for ``CN=Protocols``.
  OIDs are the lab's own, under 1.2.840.113556.1.4.7000.102 (Exchange's arc).
* **The Exchange organisation** ``CN=Corp,CN=Microsoft Exchange,CN=Services,<configNC>`` with
  the administrative group and the servers EXCH1, EXCH2, EXCH3 (domain members) and EDGE1 (an
  Edge subscription: not a member, no computer account, no receive connectors in AD).
* **Accounts and SPNs**: EXCH1$ holds all four Exchange SPNs, EXCH2$ lacks
  ``SMTPSVC/exch2.<domain>``, EXCH3$ holds all four but two other accounts hold the same SPNs
  too: ``svc-legacy`` exactly ``SMTPSVC/exch3.<domain>``, ``OLDEXCH$`` ``smtp/EXCH3.<domain>``
  (differs from EXCH3$'s ``SMTP/exch3.<domain>`` only in letter case). Samba refuses both
  duplicates, so they are written straight into the domain partition's file, bypassing the
  uniqueness check (its replication metadata is then not updated; nothing here replicates).
* **Accounts for the service-ticket check** (not Exchange servers, not in the organisation;
  tests point static ``exchange_servers`` entries at them): ``RC4ONLY$`` (``rc4only.<domain>``)
  with keys and ``msDS-SupportedEncryptionTypes: 4`` (RC4-HMAC only), and ``NOKEYS$``
  (``nokeys.<domain>``) with no password, so no Kerberos keys: the KDC cannot encrypt a ticket
  for its SPNs. Both hold ``SMTP/`` and ``SMTPSVC/`` with the short name and the FQDN.

Every account but ``NOKEYS$`` gets a password through ``unicodePwd``, and with it Kerberos keys
(AES and RC4, whatever ``msDS-SupportedEncryptionTypes`` later allows).
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from tests.lab.errors import LabError

# msExchCurrentServerRoles bits (Exchange's ServerRole enum).
ROLE_MAILBOX = 2
ROLE_CLIENT_ACCESS = 4
ROLE_UNIFIED_MESSAGING = 16
ROLE_HUB_TRANSPORT = 32
ROLE_EDGE = 64
# What Exchange 2016/2019 Mailbox servers really report: Mailbox, ClientAccess, UM, Hub
# Transport, plus bits 0x1 and 0x4000 that older role tables do not name.
ROLES_MAILBOX_2019 = 16439

# msExchSMTPReceiveInboundSecurityFlag bits (Exchange's AuthMechanisms enum).
AUTH_TLS = 0x01
AUTH_INTEGRATED = 0x02
AUTH_BASIC = 0x04
AUTH_BASIC_REQUIRE_TLS = 0x08
AUTH_EXCHANGE_SERVER = 0x10  # KB 979174: without it, server-to-server mail is refused
AUTH_EXTERNAL_AUTHORITATIVE = 0x20
# Tls | BasicAuth | BasicAuthRequireTLS | ExchangeServer = 29.
HEALTHY_CONNECTOR_FLAGS = AUTH_TLS | AUTH_BASIC | AUTH_BASIC_REQUIRE_TLS | AUTH_EXCHANGE_SERVER
# The same without ExchangeServer = 13.
BROKEN_CONNECTOR_FLAGS = HEALTHY_CONNECTOR_FLAGS & ~AUTH_EXCHANGE_SERVER

EXCHANGE_SERVICE_CLASSES = ("SMTP", "SMTPSVC")
# msDS-SupportedEncryptionTypes bits (MS-KILE 2.2.7).
ENCTYPE_DES_CBC_CRC = 0x01
ENCTYPE_DES_CBC_MD5 = 0x02
ENCTYPE_RC4_HMAC = 0x04
ENCTYPE_AES128 = 0x08
ENCTYPE_AES256 = 0x10
ADMIN_GROUP = "Exchange Administrative Group (FYDIBOHF23SPDLT)"
ORGANIZATION = "Corp"
DEFAULT_SITE = "Default-First-Site-Name"


def domain_dn(dns_domain: str) -> str:
    return ",".join(f"DC={label}" for label in dns_domain.split("."))


@dataclass(frozen=True)
class ReceiveConnector:
    name: str  # its cn, e.g. "Default EXCH1"
    dn: str
    security_flags: int  # msExchSMTPReceiveInboundSecurityFlag

    @property
    def exchange_server_auth(self) -> bool:
        """The ExchangeServer bit (0x10) is set."""
        return bool(self.security_flags & AUTH_EXCHANGE_SERVER)


@dataclass(frozen=True)
class ExchangeServer:
    name: str  # its cn, the NetBIOS-style short name, e.g. "EXCH1"
    fqdn: str
    dn: str
    roles: int  # msExchCurrentServerRoles
    version: str  # serialNumber, e.g. "Version 15.2 (Build 1544.4)"
    site: str | None  # msExchServerSite: the AD site's DN
    member: bool  # a domain member, with a computer account (False for an Edge server)
    account: str | None  # the computer account's sAMAccountName, e.g. "EXCH1$"
    network_addresses: tuple[str, ...]  # networkAddress, as Exchange writes them
    receive_connectors: tuple[ReceiveConnector, ...] = ()

    @property
    def expected_spns(self) -> tuple[str, ...]:
        """The SPNs KB 979174 wants on its computer account (empty for an Edge server)."""
        if not self.member:
            return ()
        short = self.name
        return tuple(
            f"{service}/{host}"
            for service in EXCHANGE_SERVICE_CLASSES
            for host in (short, self.fqdn)
        )


@dataclass(frozen=True)
class Account:
    sam_account_name: str  # "EXCH1$" or "svc-legacy"
    dn: str
    object_class: Literal["computer", "user"]
    dns_host_name: str | None
    spns: tuple[str, ...]  # every servicePrincipalName it holds, as stored (case kept)
    injected_spns: tuple[str, ...] = ()  # of those, the ones Samba would refuse (duplicates)
    has_keys: bool = True  # a password set, so Kerberos keys; False: none at all
    supported_encryption_types: int | None = None  # msDS-SupportedEncryptionTypes; None: unset

    @property
    def regular_spns(self) -> tuple[str, ...]:
        return tuple(spn for spn in self.spns if spn not in self.injected_spns)


@dataclass(frozen=True)
class DuplicateSpn:
    spn: str  # case-folded (lower case), as ``setspn -X`` groups them
    holders: tuple[tuple[str, str], ...]  # (sAMAccountName, value as that account holds it)
    owner_dns: tuple[str, ...]  # the holders' DNs, in the same order

    @property
    def accounts(self) -> tuple[str, ...]:
        return tuple(account for account, _ in self.holders)

    @property
    def case_only(self) -> bool:
        """The holders' values differ only in letter case."""
        return len({value for _, value in self.holders}) > 1


@dataclass(frozen=True)
class ExchangeDirectory:
    dns_domain: str
    servers: tuple[ExchangeServer, ...]
    accounts: tuple[Account, ...]
    # The exporter's search bases.
    domain_dn: str = field(init=False)
    configuration_dn: str = field(init=False)
    schema_dn: str = field(init=False)
    exchange_dn: str = field(init=False)  # CN=Microsoft Exchange,CN=Services,<configNC>
    organization_dn: str = field(init=False)
    servers_dn: str = field(init=False)  # CN=Servers of the administrative group
    site_dn: str = field(init=False)

    def __post_init__(self) -> None:
        base = domain_dn(self.dns_domain)
        config = f"CN=Configuration,{base}"
        exchange = f"CN=Microsoft Exchange,CN=Services,{config}"
        organization = f"CN={ORGANIZATION},{exchange}"
        values = {
            "domain_dn": base,
            "configuration_dn": config,
            "schema_dn": f"CN=Schema,{config}",
            "exchange_dn": exchange,
            "organization_dn": organization,
            "servers_dn": f"CN=Servers,CN={ADMIN_GROUP},CN=Administrative Groups,{organization}",
            "site_dn": f"CN={DEFAULT_SITE},CN=Sites,{config}",
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def server(self, name: str) -> ExchangeServer:
        """By short name or FQDN, any case."""
        for server in self.servers:
            if name.lower() in (server.name.lower(), server.fqdn.lower()):
                return server
        raise KeyError(name)

    def account(self, sam_account_name: str) -> Account:
        for account in self.accounts:
            if account.sam_account_name.lower() == sam_account_name.lower():
                return account
        raise KeyError(sam_account_name)

    @property
    def members(self) -> tuple[ExchangeServer, ...]:
        return tuple(server for server in self.servers if server.member)

    def spns_of(self, sam_account_name: str) -> tuple[str, ...]:
        return self.account(sam_account_name).spns

    def present_spns(self, server: str) -> dict[str, bool]:
        """Each SPN KB 979174 wants for ``server`` -> whether its own account holds it."""
        found = self.server(server)
        if found.account is None:
            return {}
        held = {spn.lower() for spn in self.account(found.account).spns}
        return {spn: spn.lower() in held for spn in found.expected_spns}

    def missing_spns(self, server: str) -> tuple[str, ...]:
        return tuple(spn for spn, held in self.present_spns(server).items() if not held)

    @property
    def duplicate_spns(self) -> tuple[DuplicateSpn, ...]:
        """Every SPN more than one planned account holds, grouped case-insensitively.

        Only the planned accounts: provisioning's own (dc1$, krbtgt) hold no duplicates.
        """
        by_key: dict[str, list[Account]] = {}
        for account in self.accounts:
            for spn in account.spns:
                by_key.setdefault(spn.lower(), []).append(account)
        return tuple(
            DuplicateSpn(
                key,
                tuple(
                    (a.sam_account_name, next(v for v in a.spns if v.lower() == key))
                    for a in holders
                ),
                tuple(a.dn for a in holders),
            )
            for key, holders in sorted(by_key.items())
            if len(holders) > 1
        )

    @property
    def receive_connectors(self) -> tuple[ReceiveConnector, ...]:
        return tuple(c for server in self.servers for c in server.receive_connectors)

    def fingerprint(self) -> str:
        """Changes whenever anything written into the domain would change (for the cache key)."""
        text = json.dumps(asdict(self), sort_keys=True) + "".join(schema_ldif_steps(self))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _network_addresses(name: str, fqdn: str) -> tuple[str, ...]:
    # What Exchange Setup writes (Get-ExchangeServer | fl NetworkAddress).
    return (
        f"ncacn_vns_spp:{name}",
        f"netbios:{name}",
        f"ncacn_np:{name}",
        f"ncacn_spx:{name}",
        f"ncacn_ip_tcp:{fqdn}",
        f"ncalrpc:{name}",
    )


def exchange_directory(dns_domain: str) -> ExchangeDirectory:
    """The lab's Exchange organisation and accounts in the domain ``dns_domain``."""
    base = domain_dn(dns_domain)
    config = f"CN=Configuration,{base}"
    site = f"CN={DEFAULT_SITE},CN=Sites,{config}"
    servers_dn = (
        f"CN=Servers,CN={ADMIN_GROUP},CN=Administrative Groups,CN={ORGANIZATION},"
        f"CN=Microsoft Exchange,CN=Services,{config}"
    )
    # (name, roles, build, flags of "Default <name>"); every member also has a healthy
    # "Default Frontend <name>".
    members = (
        (
            "EXCH1",
            ROLE_MAILBOX | ROLE_CLIENT_ACCESS | ROLE_HUB_TRANSPORT,
            "15.2 (Build 1544.4)",
            29,
        ),
        (
            "EXCH2",
            ROLE_MAILBOX | ROLE_CLIENT_ACCESS | ROLE_HUB_TRANSPORT,
            "15.2 (Build 1258.12)",
            13,
        ),
        # Off here too, matching its SMTP stand-in, which offers no X-EXPS.
        ("EXCH3", ROLES_MAILBOX_2019, "15.1 (Build 2507.6)", 13),
    )
    servers = []
    for name, roles, build, default_flags in members:
        fqdn = f"{name.lower()}.{dns_domain}"
        dn = f"CN={name},{servers_dn}"
        connectors_dn = f"CN=SMTP Receive Connectors,CN=Protocols,{dn}"
        connectors = tuple(
            ReceiveConnector(cn, f"CN={cn},{connectors_dn}", flags)
            for cn, flags in (
                (f"Default {name}", default_flags),
                (f"Default Frontend {name}", HEALTHY_CONNECTOR_FLAGS),
            )
        )
        servers.append(
            ExchangeServer(
                name=name,
                fqdn=fqdn,
                dn=dn,
                roles=roles,
                version=f"Version {build}",
                site=site,
                member=True,
                account=f"{name}$",
                network_addresses=_network_addresses(name, fqdn),
                receive_connectors=connectors,
            )
        )
    # An Edge Transport server subscribed to the site: in AD, but in a perimeter network,
    # outside the domain, with its receive connectors in its own AD LDS.
    edge_fqdn = "edge1.perimeter.example.test"
    servers.append(
        ExchangeServer(
            name="EDGE1",
            fqdn=edge_fqdn,
            dn=f"CN=EDGE1,{servers_dn}",
            roles=ROLE_EDGE,
            version="Version 15.2 (Build 1544.4)",
            site=site,
            member=False,
            account=None,
            network_addresses=(f"ncacn_ip_tcp:{edge_fqdn}",),
        )
    )

    def host_spns(short: str) -> tuple[str, ...]:
        return (f"HOST/{short}", f"HOST/{short.lower()}.{dns_domain}")

    computers = f"CN=Computers,{base}"
    accounts = [
        Account(
            f"{server.name}$",
            f"CN={server.name},{computers}",
            "computer",
            server.fqdn,
            host_spns(server.name)
            + tuple(
                spn
                for spn in server.expected_spns
                # EXCH2 is the one missing an SPN.
                if not (server.name == "EXCH2" and spn == f"SMTPSVC/{server.fqdn}")
            ),
        )
        for server in servers
        if server.member
    ]
    exch3_fqdn = f"exch3.{dns_domain}"
    # A retired server's account that still holds EXCH3's SMTP SPN, in other letter case.
    case_only = f"smtp/EXCH3.{dns_domain}"
    accounts.append(
        Account(
            "OLDEXCH$",
            f"CN=OLDEXCH,{computers}",
            "computer",
            f"oldexch.{dns_domain}",
            (*host_spns("OLDEXCH"), case_only),
            injected_spns=(case_only,),
        )
    )
    # A service account someone once ran `setspn -A SMTPSVC/exch3...` on.
    exact = f"SMTPSVC/{exch3_fqdn}"
    accounts.append(
        Account(
            "svc-legacy",
            f"CN=svc-legacy,CN=Users,{base}",
            "user",
            None,
            (exact,),
            injected_spns=(exact,),
        )
    )

    def exchange_spns(short: str) -> tuple[str, ...]:
        fqdn = f"{short.lower()}.{dns_domain}"
        return tuple(
            f"{service}/{host}" for service in ("SMTP", "SMTPSVC") for host in (short, fqdn)
        )

    # Two accounts for the service-ticket check, outside the Exchange organisation: one that
    # allows RC4 only (an old server's setting), one with SPNs but no keys at all.
    accounts.append(
        Account(
            "RC4ONLY$",
            f"CN=RC4ONLY,{computers}",
            "computer",
            f"rc4only.{dns_domain}",
            (*host_spns("RC4ONLY"), *exchange_spns("RC4ONLY")),
            supported_encryption_types=ENCTYPE_RC4_HMAC,
        )
    )
    accounts.append(
        Account(
            "NOKEYS$",
            f"CN=NOKEYS,{computers}",
            "computer",
            f"nokeys.{dns_domain}",
            exchange_spns("NOKEYS"),
            has_keys=False,
        )
    )
    return ExchangeDirectory(dns_domain, tuple(servers), tuple(accounts))


# --- LDIF -------------------------------------------------------------------------------------

# Lab OIDs in Exchange's arc, none of which Samba's own schema uses.
_OID_ARC = "1.2.840.113556.1.4.7000.102"
# BER of OID 1.3.12.2.1011.28.0.714, the oMObjectClass of DN-syntax attributes.
_OM_OBJECT_CLASS_DN = base64.b64encode(bytes.fromhex("2b0c0287731c00854a")).decode()
# Authenticated users may read, as on Samba's msExchConfigurationContainer.
_DEFAULT_SD = (
    "D:(A;;RPWPCRCCDCLCLORCWOWDSDDTSW;;;DA)(A;;RPWPCRCCDCLCLORCWOWDSDDTSW;;;SY)(A;;RPLCLORC;;;AU)"
)

_SCHEMA_UPDATE_NOW = "dn:\nchangetype: modify\nadd: schemaUpdateNow\nschemaUpdateNow: 1\n-\n\n"


def _record(dn: str, attributes: Iterable[tuple[str, str]], changetype: str = "add") -> str:
    lines = [f"dn: {dn}", f"changetype: {changetype}"]
    # A name ending in ":" marks a base64 value ("unicodePwd:" -> "unicodePwd:: ...").
    lines += [f"{name}: {value}" for name, value in attributes]
    return "\n".join(lines) + "\n\n"  # a blank line ends each record


def _attribute_schema(
    schema_dn: str, cn: str, ldap_name: str, oid: str, syntax: str, om_syntax: int
) -> str:
    attributes = [
        ("objectClass", "top"),
        ("objectClass", "attributeSchema"),
        ("cn", cn),
        ("lDAPDisplayName", ldap_name),
        ("adminDisplayName", cn),
        ("attributeID", oid),
        ("attributeSyntax", syntax),
        ("oMSyntax", str(om_syntax)),
        ("isSingleValued", "TRUE"),
        ("searchFlags", "0"),
    ]
    if om_syntax == 127:
        attributes.append(("oMObjectClass:", _OM_OBJECT_CLASS_DN))
    return _record(f"CN={cn},{schema_dn}", attributes)


def _class_schema(
    schema_dn: str,
    cn: str,
    ldap_name: str,
    oid: str,
    superiors: Iterable[str],
    may_contain: Iterable[str],
) -> str:
    attributes = [
        ("objectClass", "top"),
        ("objectClass", "classSchema"),
        ("cn", cn),
        ("lDAPDisplayName", ldap_name),
        ("adminDisplayName", cn),
        ("governsID", oid),
        ("subClassOf", "top"),
        ("objectClassCategory", "1"),
        ("rDNAttID", "cn"),
        ("systemOnly", "FALSE"),
        ("defaultHidingValue", "TRUE"),
        ("defaultSecurityDescriptor", _DEFAULT_SD),
        *(("possSuperiors", s) for s in superiors),
        *(("mayContain", a) for a in may_contain),
    ]
    return _record(f"CN={cn},{schema_dn}", attributes)


def schema_ldif_steps(directory: ExchangeDirectory) -> list[str]:
    """The schema subset, in an order Samba accepts: attributes, then each class.

    Each step ends with ``schemaUpdateNow`` and must run as an ldbmodify of its own: within one
    run (one transaction) the reloaded schema does not yet know the new names, and the class
    is refused with "attribute 'mayContain' ... contains at least one invalid value".
    """
    schema = directory.schema_dn
    steps = [
        _attribute_schema(
            schema,
            "ms-Exch-Current-Server-Roles",
            "msExchCurrentServerRoles",
            f"{_OID_ARC}.90001",
            "2.5.5.9",
            2,
        )
        + _attribute_schema(
            schema,
            "ms-Exch-SMTP-Receive-Inbound-Security-Flag",
            "msExchSMTPReceiveInboundSecurityFlag",
            f"{_OID_ARC}.90002",
            "2.5.5.9",
            2,
        )
        + _attribute_schema(
            schema, "ms-Exch-Server-Site", "msExchServerSite", f"{_OID_ARC}.90003", "2.5.5.1", 127
        ),
        _class_schema(
            schema,
            "ms-Exch-Exchange-Server",
            "msExchExchangeServer",
            f"{_OID_ARC}.90101",
            ["container"],
            ["msExchCurrentServerRoles", "msExchServerSite", "networkAddress", "serialNumber"],
        ),
        _class_schema(
            schema,
            "ms-Exch-Smtp-Receive-Connector",
            "msExchSmtpReceiveConnector",
            f"{_OID_ARC}.90102",
            ["container", "msExchExchangeServer"],
            ["msExchSMTPReceiveInboundSecurityFlag"],
        )
        # CN=Protocols (a container) sits under the server object, as in Exchange.
        + f"dn: CN=Container,{schema}\nchangetype: modify\nadd: possSuperiors\n"
        "possSuperiors: msExchExchangeServer\n-\n\n",
    ]
    return [step + _SCHEMA_UPDATE_NOW for step in steps]


def _unicode_pwd(password: str) -> str:
    return base64.b64encode(f'"{password}"'.encode("utf-16-le")).decode()


def content_ldif(directory: ExchangeDirectory, passwords: Mapping[str, str]) -> str:
    """Containers, servers, connectors and accounts (with every SPN Samba accepts)."""
    records = []

    def container(dn: str, object_class: str = "container") -> None:
        records.append(_record(dn, [("objectClass", object_class)]))

    container(directory.exchange_dn, "msExchConfigurationContainer")
    container(directory.organization_dn)
    groups = f"CN=Administrative Groups,{directory.organization_dn}"
    container(groups)
    container(f"CN={ADMIN_GROUP},{groups}")
    container(directory.servers_dn)
    for server in directory.servers:
        attributes = [
            ("objectClass", "msExchExchangeServer"),
            ("msExchCurrentServerRoles", str(server.roles)),
            ("serialNumber", server.version),
            *(("networkAddress", address) for address in server.network_addresses),
        ]
        if server.site is not None:
            attributes.append(("msExchServerSite", server.site))
        records.append(_record(server.dn, attributes))
        if server.receive_connectors:
            container(f"CN=Protocols,{server.dn}")
            container(f"CN=SMTP Receive Connectors,CN=Protocols,{server.dn}")
        for connector in server.receive_connectors:
            records.append(
                _record(
                    connector.dn,
                    [
                        ("objectClass", "msExchSmtpReceiveConnector"),
                        ("msExchSMTPReceiveInboundSecurityFlag", str(connector.security_flags)),
                    ],
                )
            )
    for account in directory.accounts:
        attributes = [
            ("objectClass", account.object_class),
            ("sAMAccountName", account.sam_account_name),
            # An enabled workstation trust account, as a joined member server has; a normal
            # user account that never expires.
            ("userAccountControl", "4096" if account.object_class == "computer" else "66048"),
            *(
                [("unicodePwd:", _unicode_pwd(passwords[account.sam_account_name]))]
                if account.has_keys
                else []
            ),
            *(("servicePrincipalName", spn) for spn in account.regular_spns),
        ]
        if account.supported_encryption_types is not None:
            attributes.append(
                ("msDS-SupportedEncryptionTypes", str(account.supported_encryption_types))
            )
        if account.dns_host_name is not None:
            attributes.append(("dNSHostName", account.dns_host_name))
        records.append(_record(account.dn, attributes))
    return "".join(records)


def duplicates_ldif(directory: ExchangeDirectory) -> str:
    """The SPNs Samba refuses, for the domain partition's own file (no uniqueness check there)."""
    records = []
    for account in directory.accounts:
        if account.injected_spns:
            records.append(
                f"dn: {account.dn}\nchangetype: modify\nadd: servicePrincipalName\n"
                + "".join(f"servicePrincipalName: {spn}\n" for spn in account.injected_spns)
                + "-\n\n"
            )
    return "".join(records)


# --- writing it into a provisioned folder -----------------------------------------------------


def _ldbmodify(url: str, ldif: str, *, smb_conf: Path, work: Path, what: str) -> None:
    path = work / f"{what}.ldif"
    path.write_text(ldif)
    path.chmod(0o600)  # it holds account passwords
    try:
        result = subprocess.run(
            [
                "ldbmodify",
                f"--configfile={smb_conf}",
                "--option=dsdb:schema update allowed=true",
                "-H",
                url,
                str(path),
            ],
            capture_output=True,
            text=True,
        )
    finally:
        path.unlink(missing_ok=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise LabError(
            f"ldbmodify of the {what} LDIF failed (exit status {result.returncode}):\n{tail}"
        )


def populate(targetdir: Path, directory: ExchangeDirectory, passwords: Mapping[str, str]) -> None:
    """Write ``directory`` into the provisioned (and stopped) DC in ``targetdir``."""
    smb_conf = targetdir / "etc" / "smb.conf"
    private = targetdir / "private"
    sam = str(private / "sam.ldb")
    for number, step in enumerate(schema_ldif_steps(directory), 1):
        _ldbmodify(sam, step, smb_conf=smb_conf, work=private, what=f"schema-{number}")
    _ldbmodify(
        sam, content_ldif(directory, passwords), smb_conf=smb_conf, work=private, what="exchange"
    )
    partition = private / "sam.ldb.d" / f"{directory.domain_dn.upper()}.ldb"
    if not partition.is_file():
        raise LabError(f"the domain partition file {partition} is missing")
    _ldbmodify(
        str(partition),
        duplicates_ldif(directory),
        smb_conf=smb_conf,
        work=private,
        what="duplicate-spn",
    )
