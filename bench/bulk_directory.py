"""Bulk data for benchmarks: the lab's dc1 with tens of thousands of computer accounts.

A copy of the lab's own provisioned dc1 folder (its cache entry, Exchange content included)
gets ``accounts`` computer accounts under ``CN=Computers``, 4 SPNs each, written straight into
the domain partition's file with ``ldbadd`` while Samba is stopped. Through ``sam.ldb`` every
object would pass Samba's module stack (SID allocation, an SPN uniqueness search per value):
about 16 minutes of CPU for 20,000 accounts. The partition file alone takes the records as
they are, so each carries what Samba's own adds would have stored and its LDAP layer reads:
objectClass chain, objectCategory, objectGUID (records are keyed by it), objectSid,
nTSecurityDescriptor (copied from a lab computer account, so read ACLs are evaluated as for
any account), instanceType, sAMAccountName/Type, userAccountControl, dNSHostName, USNs and
timestamps. No keys and no replication metadata: nothing logs on with them, nothing replicates.

Indexing is the catch: ldb keeps each index value as one sorted list of GUIDs and copies the
whole list on every add (objectClass=computer, the one-level index of CN=Computers, ...), so
50,000 adds with the indexes on never finished here (5,000 took 60 s of CPU, growing with the
square). Instead the @IDXATTR list and the one-level index are switched off for the load and
switched back on afterwards, which makes ldb rebuild every index once (a few minutes for
50,000 accounts). Samba finds @INDEXLIST exactly as its schema wants it, so it starts at once.

Planted duplicates: ``duplicates`` SPN values of one bulk account also held by another one
(in place of that one's ``RestrictedKrbHost/<fqdn>``, so every account keeps 4 SPNs), the first
``case_only`` of them in other letter case. With the lab's own two duplicates (EXCH3's SMTP SPNs)
that is the exact set a scan must report.

The result is kept under ``BENCH_CACHE/<key>/``, laid out as a lab cache root, so
``Lab.start`` started under :func:`lab_cache_root` copies it like any provisioned folder.

    python bench/bulk_directory.py [--accounts 50000] [--duplicates 25] [--rebuild]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tests.lab.samba as lab_samba
from tests.lab.directory import domain_dn, exchange_directory
from tests.lab.lab import DEFAULT_NETWORK, DOMAIN, NETBIOS_DOMAIN, REALM, lab_plan
from tests.lab.samba import DomainControllerSpec, provisioned_entry

log = logging.getLogger("bench.bulk")

BENCH_CACHE = Path(
    os.environ.get("EXCHANGE_AUTH_BENCH_CACHE", "/var/tmp/exchange-auth-bench-cache")
)
# Bump when the way an entry is built changes, so old entries are not reused.
BULK_FORMAT = 1
BULK_META = "bulk.json"
# 20250101000000.0Z: a fixed creation time, so the data (and the cache key) do not drift.
_CREATED = "20250101000000.0Z"


@dataclass(frozen=True)
class BulkPlan:
    accounts: int = 50_000
    duplicates: int = 25  # SPN values planted on a second account
    case_only: int = 10  # of those, how many differ from the original only in letter case
    seed: int = 4

    def __post_init__(self) -> None:
        if self.accounts < 2 * self.duplicates:
            raise ValueError("each planted duplicate needs two accounts of its own")
        if not 0 <= self.case_only <= self.duplicates:
            raise ValueError("case_only must be between 0 and duplicates")

    @property
    def width(self) -> int:
        return max(5, len(str(self.accounts - 1)))

    def name(self, index: int) -> str:
        return f"BULK{index:0{self.width}d}"


@dataclass(frozen=True)
class PlantedDuplicate:
    key: str  # case-folded, as setspn -X groups them
    holders: tuple[tuple[str, str], ...]  # (sAMAccountName, the value as that account holds it)

    @property
    def case_only(self) -> bool:
        return len({value for _, value in self.holders}) > 1


def own_spns(plan: BulkPlan, index: int, dns_domain: str = DOMAIN) -> list[str]:
    """The 4 SPNs a bulk account registers for itself, as a joined Windows computer does."""
    name = plan.name(index)
    fqdn = f"{name.lower()}.{dns_domain}"
    return [f"{cls}/{host}" for cls in ("HOST", "RestrictedKrbHost") for host in (name, fqdn)]


def _other_case(value: str) -> str:
    lower = value.lower()
    return lower if lower != value else value.upper()


def _plants(plan: BulkPlan) -> list[tuple[int, int, str, str]]:
    """(original holder, second holder, the original's value, the second holder's value)."""
    rng = random.Random(plan.seed)
    chosen = rng.sample(range(plan.accounts), 2 * plan.duplicates)
    plants = []
    for number in range(plan.duplicates):
        original, second = chosen[2 * number], chosen[2 * number + 1]
        value = own_spns(plan, original)[number % 4]
        held = _other_case(value) if number < plan.case_only else value
        plants.append((original, second, value, held))
    return plants


def account_spns(plan: BulkPlan, dns_domain: str = DOMAIN) -> Iterator[tuple[int, list[str]]]:
    """Every bulk account's SPNs, planted duplicates included (always 4 per account)."""
    planted = {second: held for _, second, _, held in _plants(plan)}
    for index in range(plan.accounts):
        spns = own_spns(plan, index, dns_domain)
        if index in planted:
            spns[3] = planted[index]  # its own RestrictedKrbHost/<fqdn> makes room
        yield index, spns


def planted_duplicates(plan: BulkPlan) -> tuple[PlantedDuplicate, ...]:
    return tuple(
        PlantedDuplicate(
            value.casefold(), ((f"{plan.name(a)}$", value), (f"{plan.name(b)}$", held))
        )
        for a, b, value, held in _plants(plan)
    )


def expected_duplicates(plan: BulkPlan, dns_domain: str = DOMAIN) -> set[str]:
    """Case-folded: the planted ones and the lab's own (EXCH3's SMTP SPNs)."""
    lab_own = {d.spn.casefold() for d in exchange_directory(dns_domain).duplicate_spns}
    return lab_own | {d.key for d in planted_duplicates(plan)}


# --- the cache -------------------------------------------------------------------------------


def dc_spec(network: str = DEFAULT_NETWORK) -> DomainControllerSpec:
    """dc1's spec as ``Lab`` provisions it on ``network`` (the bulk data is per address)."""
    dc = lab_plan(network).dc
    return DomainControllerSpec(REALM, NETBIOS_DOMAIN, dc.short_name, dc.address)


def cache_root(spec: DomainControllerSpec, plan: BulkPlan) -> Path:
    shape = {"format": BULK_FORMAT, "lab": spec.cache_key(), "plan": asdict(plan)}
    key = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]
    return BENCH_CACHE / key


@dataclass(frozen=True)
class BulkEntry:
    root: Path  # a lab cache root: ``root/<lab cache key>/{dc,admin-password,meta.json}``
    entry: Path
    plan: BulkPlan
    build_seconds: float  # when it was built
    cached: bool  # True: found in the cache, False: built just now
    size_bytes: int


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def ensure_bulk(
    plan: BulkPlan, network: str = DEFAULT_NETWORK, *, rebuild: bool = False
) -> BulkEntry:
    """The cached bulk folder for ``plan`` on ``network``, built first if missing (or asked)."""
    spec = dc_spec(network)
    root = cache_root(spec, plan)
    entry = root / spec.cache_key()
    BENCH_CACHE.mkdir(parents=True, exist_ok=True)
    with _locked(BENCH_CACHE / ".lock"):
        if rebuild:
            shutil.rmtree(root, ignore_errors=True)
        cached = (entry / BULK_META).is_file()
        if not cached:
            _build(spec, plan, root, entry)
            _prune(plan, spec, keep=root)
    meta = json.loads((entry / BULK_META).read_text())
    return BulkEntry(root, entry, plan, meta["build_seconds"], cached, _size(entry / "dc"))


def _prune(plan: BulkPlan, spec: DomainControllerSpec, keep: Path) -> None:
    """Entries of the same plan and address built for an older lab (Samba or its content)."""
    for meta in BENCH_CACHE.glob(f"*/*/{BULK_META}"):
        root = meta.parent.parent
        with contextlib.suppress(OSError, ValueError, KeyError):
            same_plan = json.loads(meta.read_text())["plan"] == asdict(plan)
            lab_meta = json.loads((meta.parent / "meta.json").read_text())
            if root != keep and same_plan and lab_meta["spec"]["address"] == spec.address:
                log.info("removing %s, built for an older lab", root)
                shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def lab_cache_root(root: Path) -> Iterator[None]:
    """While inside, the lab provisions dc1 from ``root`` (a bulk entry) instead of its cache.

    tests.lab has no hook for a prepared DC folder; its cache root is a module global read
    when a DC is provisioned, so pointing it here for the duration of ``Lab.start`` is enough.
    """
    previous = lab_samba.CACHE_ROOT
    lab_samba.CACHE_ROOT = root
    try:
        yield
    finally:
        lab_samba.CACHE_ROOT = previous


def _build(spec: DomainControllerSpec, plan: BulkPlan, root: Path, entry: Path) -> None:
    started = time.monotonic()
    shutil.rmtree(root, ignore_errors=True)
    build_root = root.with_name(f".build-{root.name}-{os.getpid()}")
    shutil.rmtree(build_root, ignore_errors=True)
    build = build_root / entry.name
    build.mkdir(parents=True, mode=0o700)
    try:
        base = provisioned_entry(spec, use_cache=True, scratch=build_root)
        log.info("copying the lab's provisioned dc1 from %s", base)
        subprocess.run(["cp", "-a", str(base / "dc"), str(build / "dc")], check=True)
        for name in ("admin-password", "meta.json"):
            shutil.copy2(base / name, build / name)
        timings = _load(spec, plan, build / "dc")
        seconds = time.monotonic() - started
        meta = {
            "plan": asdict(plan),
            "lab_entry": str(base),
            "build_seconds": seconds,
            "timings": timings,
            "planted": [asdict(d) for d in planted_duplicates(plan)],
        }
        (build / BULK_META).write_text(json.dumps(meta, indent=2))
        build_root.rename(root)
    except BaseException:
        shutil.rmtree(build_root, ignore_errors=True)
        raise
    log.info("built %d accounts in %.0f s into %s", plan.accounts, seconds, root)


def _partition(dc: Path, spec: DomainControllerSpec) -> Path:
    path = dc / "private" / "sam.ldb.d" / f"{domain_dn(spec.dns_domain).upper()}.ldb"
    if not path.is_file():
        raise RuntimeError(f"the domain partition file {path} is missing")
    return path


def _ldb(tool: str, dc: Path, partition: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [tool, f"--configfile={dc / 'etc' / 'smb.conf'}", "-H", str(partition), *args],
        input=stdin,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{tool} {' '.join(args)} failed ({result.returncode}):\n{tail}")
    return result.stdout


def _attributes(ldif: str) -> dict[str, list[str]]:
    """ldbsearch's LDIF of one record: continuation lines joined, ``::`` kept in the name."""
    out: dict[str, list[str]] = {}
    for line in re.sub(r"\n ", "", ldif).splitlines():
        if not line or line.startswith("#") or ": " not in line:
            continue
        name, value = line.split(": ", 1)
        out.setdefault(name, []).append(value)
    return out


@dataclass(frozen=True)
class _Template:
    security_descriptor: str  # SDDL, as ldbsearch prints it and ldbadd reads it back
    object_category: str  # <GUID=...>;CN=Computer,CN=Schema,...
    domain_sid: str
    first_usn: int


def _template(dc: Path, partition: Path, spec: DomainControllerSpec) -> _Template:
    account = next(
        a.sam_account_name for a in spec.exchange_directory.accounts if a.object_class == "computer"
    )
    found = _attributes(
        _ldb(
            "ldbsearch",
            dc,
            partition,
            f"(sAMAccountName={account})",
            "nTSecurityDescriptor",
            "objectCategory",
            "objectSid",
        )
    )
    base = _attributes(_ldb("ldbsearch", dc, partition, "-b", "@BASEINFO", "-s", "base"))
    try:
        return _Template(
            security_descriptor=found["nTSecurityDescriptor"][0],
            object_category=found["objectCategory"][0],
            domain_sid=found["objectSid"][0].rsplit("-", 1)[0],
            first_usn=int(base["sequenceNumber"][0]) + 1,
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise RuntimeError(f"cannot read {account} as a template from {partition}: {exc}") from None


def _records(plan: BulkPlan, spec: DomainControllerSpec, template: _Template) -> Iterator[str]:
    rng = random.Random(plan.seed)
    computers = f"CN=Computers,{domain_dn(spec.dns_domain)}"
    for index, spns in account_spns(plan, spec.dns_domain):
        name = plan.name(index)
        # Increasing GUIDs (random tail): each sorted index list grows at its end.
        guid = uuid.UUID(bytes=index.to_bytes(4, "big") + rng.randbytes(12))
        usn = template.first_usn + index
        lines = [
            f"dn: CN={name},{computers}",
            *(f"objectClass: {c}" for c in ("top", "person", "organizationalPerson", "user")),
            "objectClass: computer",
            f"cn: {name}",
            f"name: {name}",
            "instanceType: 4",
            f"whenCreated: {_CREATED}",
            f"whenChanged: {_CREATED}",
            f"uSNCreated: {usn}",
            f"uSNChanged: {usn}",
            f"nTSecurityDescriptor: {template.security_descriptor}",
            f"objectGUID: {guid}",
            f"objectSid: {template.domain_sid}-{100_000 + index}",
            "userAccountControl: 4096",
            "primaryGroupID: 515",
            "accountExpires: 9223372036854775807",
            f"sAMAccountName: {name}$",
            "sAMAccountType: 805306369",
            f"dNSHostName: {name.lower()}.{spec.dns_domain}",
            *(f"servicePrincipalName: {spn}" for spn in spns),
            f"objectCategory: {template.object_category}",
            "isCriticalSystemObject: FALSE",
        ]
        yield "\n".join(lines) + "\n\n"


def _load(spec: DomainControllerSpec, plan: BulkPlan, dc: Path) -> dict[str, float]:
    partition = _partition(dc, spec)
    template = _template(dc, partition, spec)
    index_list = _attributes(_ldb("ldbsearch", dc, partition, "-b", "@INDEXLIST", "-s", "base"))
    indexed = index_list.get("@IDXATTR", [])
    if not indexed or "@IDXGUID" not in index_list:
        raise RuntimeError(f"{partition} has no GUID-keyed @INDEXLIST; unknown layout")
    one_level = "@IDXONE" in index_list
    # Replaced in place (the element keeps its position); "objectGUID" is unique per object.
    off = "dn: @INDEXLIST\nchangetype: modify\nreplace: @IDXATTR\n@IDXATTR: objectGUID\n-\n"
    on = "dn: @INDEXLIST\nchangetype: modify\nreplace: @IDXATTR\n"
    on += "".join(f"@IDXATTR: {name}\n" for name in indexed) + "-\n"
    if one_level:
        off += "delete: @IDXONE\n-\n"
        on += "add: @IDXONE\n@IDXONE: 1\n-\n"
    timings = {}

    started = time.monotonic()
    _ldb("ldbmodify", dc, partition, stdin=off)
    log.info("adding %d accounts to %s (indexes off)", plan.accounts, partition.name)
    adder = subprocess.Popen(
        ["ldbadd", f"--configfile={dc / 'etc' / 'smb.conf'}", "-H", str(partition)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert adder.stdin is not None and adder.stdout is not None
    try:
        batch: list[str] = []
        for record in _records(plan, spec, template):
            batch.append(record)
            if len(batch) >= 1000:
                adder.stdin.write("".join(batch))
                batch.clear()
        adder.stdin.write("".join(batch))
        adder.stdin.close()
    except BrokenPipeError:
        pass  # ldbadd stopped early: its output says why
    output = adder.stdout.read()
    if adder.wait() != 0:
        raise RuntimeError(f"ldbadd of the bulk accounts failed:\n{output.strip()[-2000:]}")
    timings["add"] = time.monotonic() - started

    started = time.monotonic()
    log.info("rebuilding every index of %s (a few minutes for 50,000 accounts)", partition.name)
    _ldb("ldbmodify", dc, partition, stdin=on)
    timings["reindex"] = time.monotonic() - started
    after = _attributes(_ldb("ldbsearch", dc, partition, "-b", "@INDEXLIST", "-s", "base"))
    if sorted(after.items()) != sorted(index_list.items()):
        raise RuntimeError(f"@INDEXLIST of {partition} did not come back as it was")
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=BulkPlan.accounts)
    parser.add_argument("--duplicates", type=int, default=BulkPlan.duplicates)
    parser.add_argument("--case-only", type=int, default=BulkPlan.case_only)
    parser.add_argument("--network", default=DEFAULT_NETWORK, help="the lab's (dc1 is .10)")
    parser.add_argument("--rebuild", action="store_true", help="build again even if cached")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    plan = BulkPlan(args.accounts, args.duplicates, args.case_only)
    bulk = ensure_bulk(plan, args.network, rebuild=args.rebuild)
    state = "cached" if bulk.cached else "built"
    print(
        f"{state}: {plan.accounts} accounts, {plan.duplicates} planted duplicates "
        f"({plan.case_only} case-only), {bulk.size_bytes / 1e6:.0f} MB in {bulk.entry} "
        f"(built in {bulk.build_seconds:.0f} s)"
    )


if __name__ == "__main__":
    main()
