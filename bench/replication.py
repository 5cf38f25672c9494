"""Benchmark: replication state at forest scale, and one refresh against the lab's DCs.

Always, in memory (no network): 200 DCs x 5 naming contexts x 3 partners of synthetic values,
built from the documented layouts (tests/replication_values.py):

* 3000 REPLICA_LINK values (``repsFrom``, Samba's form) and 3000 DS_REPL_NEIGHBOR XML values
  (``msDS-ReplAllInboundNeighbors``, Windows' form, trailing NUL included) through the parsers:
  values per second each;
* one full refresh of the 200 DCs by the scan's own per-DC code (``read_dc``: rootDSE, the
  CN=Sites directory of 200 DCs, parsing, partner names) against in-memory directories, so
  what is measured is the exporter's CPU, not a network;
* what every scrape then pays: the metric families of that refresh and their exposition.

With ``--lab``: a full refresh (the real scan: LDAPS to each DC) against the lab's replicating
Samba DCs, beside ``samba-tool drs showrepl --json`` run against the same DCs in the same run,
and the two compared partner by partner. That needs a lab with a second DC joined to the first
(see ``_lab_missing``); without it the bench says what is missing and runs the rest.

    python bench/replication.py [--dcs 200] [--ncs 5] [--partners 3] [--rounds 5] [--lab]
                                [--lab-network 127.0.10]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.exposition import generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.background import ScanState
from exporter.checks.replication import (
    DcOutcome,
    Replication,
    read_dc,
    replication_metrics,
    scan_replication,
)
from exporter.config import Settings, load_text
from exporter.inventory import Inventory, build_inventory
from exporter.ldap import LdapClient, LdapEntry, LdapRawEntry, LdapTarget, close_all
from exporter.protocols.replication import parse_neighbor_xml, parse_replica_link
from exporter.servers import Role, Server
from tests.replication_values import neighbor_xml, replica_link

FOREST = "corp.example.test"
DOMAIN_NC = "DC=corp,DC=example,DC=test"
CONFIG_NC = f"CN=Configuration,{DOMAIN_NC}"
NAMING_CONTEXTS = (
    DOMAIN_NC,
    CONFIG_NC,
    f"CN=Schema,{CONFIG_NC}",
    f"DC=DomainDnsZones,{DOMAIN_NC}",
    f"DC=ForestDnsZones,{DOMAIN_NC}",
    f"DC=Extra,{DOMAIN_NC}",
    f"DC=Extra2,{DOMAIN_NC}",
)
NOW = time.time()


@dataclass(frozen=True)
class Forest:
    """Synthetic DCs: names, NTDS Settings GUIDs and DNs, each DC's partners."""

    names: list[str]
    guids: list[uuid.UUID]
    ncs: tuple[str, ...]
    partners: int

    @classmethod
    def make(cls, dcs: int, ncs: int, partners: int) -> Forest:
        guids = [uuid.UUID(int=(i + 1) * 0x9E3779B97F4A7C15) for i in range(dcs)]
        return cls([f"dc{i}.{FOREST}" for i in range(dcs)], guids, NAMING_CONTEXTS[:ncs], partners)

    def site(self, index: int) -> str:
        return f"CN=Site{index % 20},CN=Sites,{CONFIG_NC}"

    def ntds_dn(self, index: int) -> str:
        return f"CN=NTDS Settings,CN=DC{index},CN=Servers,{self.site(index)}"

    def partners_of(self, index: int) -> list[int]:
        return [(index + step) % len(self.names) for step in range(1, self.partners + 1)]

    def state(self, dc: int, nc: int, partner: int) -> dict[str, Any]:
        """Mostly healthy; one pair in ten failing, one in fifty never replicated."""
        key = dc * 131 + nc * 17 + partner
        if key % 50 == 0:
            return {"failures": 4, "last_success": None, "last_attempt": NOW, "result": 8524}
        if key % 10 == 0:
            return {"failures": 12, "last_success": NOW - 7200, "last_attempt": NOW, "result": 1722}
        return {"failures": 0, "last_success": NOW - 30, "last_attempt": NOW - 30, "result": 0}

    def links(self, dc: int) -> dict[str, list[bytes]]:
        return {
            nc: [
                replica_link(
                    self.guids[p],
                    address=f"{self.guids[p]}._msdcs.{FOREST}",
                    **self.state(dc, n, p),
                )
                for p in self.partners_of(dc)
            ]
            for n, nc in enumerate(self.ncs)
        }

    def xml(self, dc: int) -> list[str]:
        return [
            neighbor_xml(nc, self.ntds_dn(p), self.guids[p], **self.state(dc, n, p)) + "\0"
            for n, nc in enumerate(self.ncs)
            for p in self.partners_of(dc)
        ]

    def sites(self) -> list[LdapRawEntry]:
        entries = []
        for index, name in enumerate(self.names):
            server = self.ntds_dn(index).split(",", 1)[1]
            entries.append(
                LdapRawEntry(server, {"objectClass": [b"server"], "dNSHostName": [name.encode()]})
            )
            entries.append(
                LdapRawEntry(
                    self.ntds_dn(index),
                    {"objectClass": [b"nTDSDSA"], "objectGUID": [self.guids[index].bytes_le]},
                )
            )
        return entries


class InMemoryDc:
    """One DC's directory as the scan reads it, answered from memory."""

    def __init__(
        self, forest: Forest, index: int, windows: bool, sites: list[LdapRawEntry]
    ) -> None:
        self.target = LdapTarget(forest.names[index], 636, True, False, False, None, 10.0)
        self.root: dict[str, list[str]] = {
            "msDS-ReplAllInboundNeighbors": forest.xml(index) if windows else [],
            "namingContexts": list(forest.ncs),
            "configurationNamingContext": [CONFIG_NC],
            "dsServiceName": [forest.ntds_dn(index)],
        }
        self.reps_from = {} if windows else forest.links(index)
        self.sites = sites

    def root_dse(self, attributes: Sequence[str], deadline: float | None = None) -> LdapEntry:
        return LdapEntry("", self.root)

    def search_raw(
        self,
        base: str,
        search_filter: str,
        attributes: Sequence[str],
        deadline: float | None = None,
        *,
        base_only: bool = False,
    ) -> list[LdapRawEntry]:
        if base.startswith("CN=Sites,"):
            return self.sites
        return [LdapRawEntry(base, {"repsFrom": self.reps_from.get(base, [])})]


def _timed(work: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``rounds`` runs, after one warm-up."""
    work()
    walls, cpus = [], []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def _parsers(forest: Forest, rounds: int) -> None:
    dcs = len(forest.names)
    links = [(v, nc) for i in range(dcs) for nc, values in forest.links(i).items() for v in values]
    documents = [v for i in range(dcs) for v in forest.xml(i)]
    print(
        f"{dcs} DCs x {len(forest.ncs)} naming contexts x {forest.partners} partners: "
        f"{len(links)} REPLICA_LINK and {len(documents)} DS_REPL_NEIGHBOR values"
    )

    def parse_links() -> None:
        for value, nc in links:
            parse_replica_link(value, nc)

    def parse_documents() -> None:
        for document in documents:
            parse_neighbor_xml(document)

    for what, work, count in (
        ("REPLICA_LINK (repsFrom)", parse_links, len(links)),
        ("DS_REPL_NEIGHBOR XML", parse_documents, len(documents)),
    ):
        wall, cpu = _timed(work, rounds)
        print(
            f"  {what:<24} {count / wall:>10,.0f} values/s   {wall / count * 1e6:6.1f} µs/value "
            f"(cpu {cpu / count * 1e6:.1f} µs)"
        )


def _refresh_in_memory(forest: Forest, rounds: int) -> None:
    sites = forest.sites()
    dcs = len(forest.names)
    result = Replication({})
    for windows in (False, True):
        clients = [InMemoryDc(forest, i, windows, sites) for i in range(dcs)]

        def refresh(clients: list[InMemoryDc] = clients) -> Replication:
            deadline = time.monotonic() + 60
            return Replication(
                {
                    forest.names[i]: DcOutcome(read_dc(_as_client(c), deadline))
                    for i, c in enumerate(clients)
                }
            )

        result = refresh()  # the Windows one, last, is what the scrape measurement below reports
        partners = sum(len(o.reading.partners) for o in result.dcs.values() if o.reading)
        wall, cpu = _timed(refresh, rounds)
        source = "msDS-ReplAllInboundNeighbors" if windows else "repsFrom"
        print(
            f"  one refresh of {dcs} DCs via {source:<28} {wall * 1000:7.1f} ms "
            f"(cpu {cpu * 1000:.1f} ms, {partners} partner series sets, each DC's CN=Sites "
            f"directory of {dcs} DCs included)"
        )

    settings = load_text(f"realm: {FOREST}\n")
    inventory = Inventory(tuple(Server(n, Role.DOMAIN_CONTROLLER) for n in forest.names))
    state = ScanState(result=result, success=True)

    class Collector:
        def collect(self) -> Any:
            return replication_metrics(state, settings, inventory)

    body = generate_latest(Collector())
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    wall, cpu = _timed(lambda: generate_latest(Collector()), rounds)
    print(
        f"  per scrape: metric families + exposition of {series:,} series, "
        f"{len(body) / 1e6:.1f} MB: {wall * 1000:.1f} ms (cpu {cpu * 1000:.1f} ms)"
    )


def _as_client(dc: InMemoryDc) -> LdapClient:
    return dc  # type: ignore[return-value]  # read_dc uses only what InMemoryDc answers


# --- the lab --------------------------------------------------------------------------------

# What bench --lab expects of tests/lab beyond what it has today (see the module docstring).
_LAB_START_OPTION = "replica_dc"


def _lab_missing() -> str | None:
    try:
        from tests.lab import Lab
    except ImportError as exc:
        return f"tests.lab cannot be imported: {exc}"
    if _LAB_START_OPTION not in inspect.signature(Lab.start).parameters:
        return (
            f"Lab.start has no {_LAB_START_OPTION}= option yet: the lab needs a second Samba DC "
            "joined to dc1 (samba-tool domain join), both replicating every 5 s "
            "(dreplsrv:periodic_interval=5), /etc/hosts lines for both DC names and their "
            "<NTDS Settings GUID>._msdcs names, KRB5_CONFIG listing both KDCs for each samba, "
            "lab.domain_controllers listing both, lab.exporter_config() with both as static "
            "DCs, and lab.samba_tool(host, *args) running samba-tool with that DC's smb.conf"
        )
    return None


def _showrepl(lab: Any, host: Any) -> tuple[float, list[dict[str, Any]]]:
    started = time.perf_counter()
    done: subprocess.CompletedProcess[str] = lab.samba_tool(
        host,
        "drs",
        "showrepl",
        "--json",
        host.name,
        f"--username={lab.admin_user}",
        f"--password={lab.admin_password}",
    )
    elapsed = time.perf_counter() - started
    data = json.loads(done.stdout)
    return elapsed, list(data.get("repsFrom", []))


def _their_pairs(reps_from: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    pairs = {}
    for rep in reps_from:
        ntds = str(rep.get("NTDS DN", ""))
        server = ntds.split(",")[1].partition("=")[2].lower() if ntds.count(",") > 1 else "?"
        pairs[(server, str(rep.get("NC dn", "")).lower())] = int(
            rep.get("consecutive failures", -1)
        )
    return pairs


def _our_pairs(result: Replication, name: str) -> dict[tuple[str, str], int]:
    outcome = result.dcs[name]
    if outcome.reading is None:
        return {}
    return {
        (p.partner.split(".", 1)[0], p.naming_context.lower()): p.consecutive_failures or 0
        for p in outcome.reading.partners
    }


async def _wait_replicating(
    settings: Settings, inventory: Inventory, patience: float
) -> Replication:
    deadline = time.monotonic() + patience
    while True:
        result = await scan_replication(settings, inventory)
        settled = all(
            o.reading is not None
            and o.reading.partners
            and all(p.last_success is not None for p in o.reading.partners)
            for o in result.dcs.values()
        )
        if settled or time.monotonic() > deadline:
            return result
        await asyncio.sleep(1.0)


def _lab_part(rounds: int, network: str | None) -> None:
    missing = _lab_missing()
    if missing is not None:
        print(f"\nlab part skipped: {missing}")
        return
    from tests.lab import Lab, LabError

    start: Callable[..., Any] = Lab.start
    try:
        lab_context = start(
            samba=True,
            skewed_dc=False,
            dead_dc=False,
            ntp=False,
            smtp=False,
            **{_LAB_START_OPTION: True},
            **({} if network is None else {"network": network}),
        )
    except LabError as exc:  # e.g. a test run's lab on the same addresses
        print(f"\nlab part failed: {exc}")
        return
    with lab_context as lab:
        config = lab.exporter_config(checks={"replication": {"refresh_interval": "5s"}})
        settings = load_text(yaml.safe_dump(config))
        inventory = asyncio.run(build_inventory(settings))
        hosts = list(lab.domain_controllers)
        print(f"\nlab: {len(hosts)} DCs ({', '.join(h.name for h in hosts)})")
        result = asyncio.run(_wait_replicating(settings, inventory, 60.0))
        cold, warm, theirs = [], [], []
        for _ in range(rounds):
            close_all()  # a refresh after the exporter starts: TLS handshakes and binds included
            started = time.perf_counter()
            asyncio.run(scan_replication(settings, inventory))
            cold.append(time.perf_counter() - started)
            started = time.perf_counter()
            result = asyncio.run(scan_replication(settings, inventory))
            warm.append(time.perf_counter() - started)
            theirs.append(sum(_showrepl(lab, host)[0] for host in hosts))
        print(
            f"  one refresh of {len(hosts)} DCs: exporter {statistics.median(cold) * 1000:.0f} ms "
            f"cold (connect, TLS, bind), {statistics.median(warm) * 1000:.0f} ms on open "
            f"connections; samba-tool drs showrepl --json, once per DC: "
            f"{statistics.median(theirs) * 1000:.0f} ms (medians of {rounds})"
        )
        for host in hosts:
            _, reps = _showrepl(lab, host)
            ours, them = _our_pairs(result, host.name), _their_pairs(reps)
            agree = "agree" if ours == them else f"DIFFER: exporter {ours} vs showrepl {them}"
            print(f"  {host.name}: {len(ours)} (partner, NC) pairs, consecutive failures {agree}")
        close_all()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dcs", type=int, default=200)
    parser.add_argument("--ncs", type=int, default=5, choices=range(1, len(NAMING_CONTEXTS) + 1))
    parser.add_argument("--partners", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5, help="median of this many (default 5)")
    parser.add_argument("--lab", action="store_true", help="also a refresh against the lab's DCs")
    parser.add_argument(
        "--lab-network",
        help="first three octets of the lab's addresses (default: the lab's, 127.0.10)",
    )
    args = parser.parse_args()
    forest = Forest.make(args.dcs, args.ncs, min(args.partners, args.dcs - 1))
    _parsers(forest, args.rounds)
    _refresh_in_memory(forest, args.rounds)
    print(
        "medians; wall and this process's CPU; values are parsed as the scan gets them (bytes for "
        "repsFrom, text with a trailing NUL for the XML)."
    )
    if args.lab:
        _lab_part(args.rounds, args.lab_network)


if __name__ == "__main__":
    main()
