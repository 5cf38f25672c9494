"""A replica DC joined to dc1 (``samba-tool domain join ... DC``), kept as a pair in the cache.

Joining takes 7-15 s: a running dc1, the join's own replication of every naming context, a
commit. So the pair (dc1's database with the replica in it, and the replica's folder) is built
once, both DCs stopped, and kept under ``CACHE_ROOT`` beside dc1's provisioned folder, keyed by
that folder's key and the replica's name and address. Each lab copies both folders, exactly as it
copies a provisioned one; started together, the two carry on replicating where they stopped.

What replication between two Samba DCs needs here (lab.md, "A second DC and real
replication", and what building this found):

* each samba resolves the other's name and ``<NTDS Settings objectGUID>._msdcs.<domain>``:
  a hosts file of the lab's, bind-mounted over /etc/hosts in a mount namespace of samba's own
  (:class:`tests.lab.samba.NameFiles`), with a resolv.conf naming only the lab's DNS;
* a KDC for each: ``KRB5_CONFIG`` lists both DCs;
* dc1's account holds the DRS SPN ``E3514235-4B06-11D1-AB04-00C04FC2DCD2/<guid>/<domain>``.
  samba_spnupdate adds it on a DC's first start, but it runs from the ``dnsupdate`` service,
  which the lab leaves out (it talks to the machine's resolver). Without it, the replica's pulls
  fail with "Server E3514235-.../<guid>/corp.example.test@CORP.EXAMPLE.TEST unknown" in its log
  and NT_STATUS_INVALID_PARAMETER from the bind; the join adds the replica's own.
* ``dreplsrv:periodic_interval=5``: a pull every 5 s instead of every 5 minutes, and
  ``dreplsrv:periodic_startup_interval=1``: the first one 1 s after samba starts, not 15 s.
* dc1 learns to pull from the replica only when its KCC runs (15 s after samba starts, then
  every 5 minutes): the join leaves the replica with ``repsFrom`` values for dc1 but dc1 with
  none. So the build runs dc1's KCC (``samba-tool drs kcc``) before stopping it, and a lab
  started from the pair has both directions from its first seconds on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.lab.errors import LabError
from tests.lab.procs import ManagedProcess
from tests.lab.samba import (
    ACCOUNT_PASSWORDS_FILE,
    CACHE_ROOT,
    DomainControllerSpec,
    NameFiles,
    SambaDC,
    _locked,
    _run,
    _write_tls_certificate,
    install_dc,
    krb5_conf,
    ntds_guids,
    provisioned_entry,
    remove_runtime_leftovers,
    samba_version,
)

log = logging.getLogger("tests.lab")

# Bump when the way a pair is built changes.
PAIR_FORMAT = 2
# The DRS RPC interface's SPN class (MS-DRSR 2.2.3.2), one per DC: <class>/<NTDS GUID>/<domain>.
DRS_SPN_CLASS = "E3514235-4B06-11D1-AB04-00C04FC2DCD2"
# Both DCs pull from each other every 5 s (Samba's default: 300 s), the first time 1 s after
# samba starts (default: 15 s), so a lab, or a DC started again, replicates within seconds.
REPLICATION_OVERRIDES: Mapping[str, str] = {
    "dreplsrv:periodic_interval": "5",
    "dreplsrv:periodic_startup_interval": "1",
}


def domain_dn(spec: DomainControllerSpec) -> str:
    return ",".join(f"DC={part}" for part in spec.dns_domain.split("."))


@dataclass(frozen=True)
class ReplicaPair:
    """A cache entry: ``dc/`` (dc1 with the replica joined) and ``replica/``, both stopped."""

    entry: Path
    admin_password: str
    dc_root: str  # the folder each one's smb.conf names, to be rewritten on copy
    replica_root: str
    dsa_guids: Mapping[str, str]  # short host name (dc1, dc3) -> NTDS Settings objectGUID

    def install(self, dc_target: Path, replica_target: Path) -> None:
        install_dc(self.entry / "dc", self.dc_root, dc_target, overrides=REPLICATION_OVERRIDES)
        install_dc(
            self.entry / "replica",
            self.replica_root,
            replica_target,
            overrides=REPLICATION_OVERRIDES,
        )

    @classmethod
    def load(cls, entry: Path) -> ReplicaPair:
        meta = json.loads((entry / "meta.json").read_text())
        return cls(
            entry,
            (entry / "admin-password").read_text(),
            meta["dc_root"],
            meta["replica_root"],
            meta["dsa_guids"],
        )


def pair_key(dc: DomainControllerSpec, replica: DomainControllerSpec) -> str:
    shape = {
        "format": PAIR_FORMAT,
        "dc": dc.cache_key(),
        "replica": [replica.host_name, replica.address],
        "samba": samba_version(),
    }
    return "pair-" + hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def lab_names(
    dc: DomainControllerSpec, replica: DomainControllerSpec, dsa_guids: Mapping[str, str]
) -> dict[str, str]:
    """Name -> address for both DCs and their ``<guid>._msdcs`` names."""
    names = {dc.fqdn: dc.address, replica.fqdn: replica.address}
    for spec in (dc, replica):
        guid = dsa_guids.get(spec.host_name)
        if guid:
            names[f"{guid}._msdcs.{spec.dns_domain}"] = spec.address
    return names


def replica_pair(
    dc: DomainControllerSpec,
    replica: DomainControllerSpec,
    *,
    use_cache: bool,
    scratch: Path,
    record: Callable[[ManagedProcess], None],
    forget: Callable[[ManagedProcess], None],
    timeout: float,
) -> ReplicaPair:
    """The pair for ``dc`` and ``replica``, built on first use (which runs dc1 on its address:
    the caller must hold both addresses). ``record``/``forget`` tell the caller about the
    temporary samba, so a crash while building still finds it."""
    pristine = provisioned_entry(dc, use_cache=use_cache, scratch=scratch)
    if not use_cache:
        entry = scratch / pair_key(dc, replica)
        if not (entry / "meta.json").is_file():
            _build_pair(dc, replica, pristine, entry, record, forget, timeout)
        return ReplicaPair.load(entry)
    entry = CACHE_ROOT / pair_key(dc, replica)
    with _locked(CACHE_ROOT / ".lock"):
        if not (entry / "meta.json").is_file():
            _build_pair(dc, replica, pristine, entry, record, forget, timeout)
    return ReplicaPair.load(entry)


def _build_pair(
    dc_spec: DomainControllerSpec,
    replica_spec: DomainControllerSpec,
    pristine: Path,
    entry: Path,
    record: Callable[[ManagedProcess], None],
    forget: Callable[[ManagedProcess], None],
    timeout: float,
) -> None:
    started = time.monotonic()
    shutil.rmtree(entry, ignore_errors=True)  # an entry without meta.json is half-built
    build = entry.with_name(f".build-{entry.name}-{os.getpid()}")
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True, mode=0o700)
    try:
        dc_dir, replica_dir = build / "dc", build / "replica"
        pristine_root = json.loads((pristine / "meta.json").read_text())["targetdir"]
        install_dc(pristine / "dc", pristine_root, dc_dir, overrides=REPLICATION_OVERRIDES)
        password = (pristine / "admin-password").read_text()
        shutil.copyfile(pristine / "admin-password", build / "admin-password")
        (build / "admin-password").chmod(0o600)
        dn = domain_dn(dc_spec)
        dc_guid = ntds_guids(dc_dir, dn)[dc_spec.host_name]
        smb_conf = dc_dir / "etc" / "smb.conf"
        _run(
            [
                "samba-tool",
                "spn",
                "add",
                f"{DRS_SPN_CLASS}/{dc_guid}/{dc_spec.dns_domain}",
                f"{dc_spec.host_name.upper()}$",
                f"--configfile={smb_conf}",
                "-H",
                str(dc_dir / "private" / "sam.ldb"),
            ],
            what=f"samba-tool spn add (the DRS SPN of {dc_spec.fqdn})",
        )
        names = NameFiles(build / "hosts", build / "resolv.conf")
        names.write(
            lab_names(dc_spec, replica_spec, {dc_spec.host_name: dc_guid}),
            [dc_spec.address],
        )
        krb5 = build / "krb5.conf"
        krb5.write_text(krb5_conf(dc_spec.realm, [dc_spec.address, replica_spec.address]))
        dc = SambaDC(dc_spec, dc_dir, password, krb5, names=names)
        process = dc.spawn()
        record(process)
        try:
            dc.wait_ready(timeout=timeout)
            _join(dc, replica_spec, replica_dir, build)
            _run_kcc(dc)
        finally:
            dc.stop()
            forget(process)
        _write_tls_certificate(replica_spec, replica_dir / "private" / "tls")
        shutil.copyfile(dc_dir / ACCOUNT_PASSWORDS_FILE, replica_dir / ACCOUNT_PASSWORDS_FILE)
        (replica_dir / ACCOUNT_PASSWORDS_FILE).chmod(0o600)
        guids = ntds_guids(replica_dir, dn)
        missing = {dc_spec.host_name, replica_spec.host_name} - set(guids)
        if missing:
            raise LabError(f"the joined replica knows no NTDS Settings for {sorted(missing)}")
        for folder in (dc_dir, replica_dir):
            remove_runtime_leftovers(folder)
        for name in ("hosts", "resolv.conf", "krb5.conf"):
            (build / name).unlink()
        meta = {
            "dc_root": str(dc_dir),
            "replica_root": str(replica_dir),
            "dsa_guids": guids,
            "dc": dc_spec.__dict__,
            "replica": replica_spec.__dict__,
            "samba": samba_version(),
        }
        (build / "meta.json").write_text(json.dumps(meta, indent=2))
        build.rename(entry)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    log.info(
        "joined %s to %s and kept the pair in %s in %.1f s",
        replica_spec.fqdn,
        dc_spec.fqdn,
        entry,
        time.monotonic() - started,
    )


def _run_kcc(dc: SambaDC) -> None:
    """Run dc1's KCC now, and wait until dc1 has ``repsFrom`` values (the replica as partner)."""
    credentials = (
        f"--username={dc.spec.netbios_domain}\\Administrator",
        f"--password={dc.admin_password}",
    )
    dc.samba_tool("drs", "kcc", dc.spec.fqdn, *credentials)
    deadline = time.monotonic() + 10
    while True:
        shown = dc.samba_tool("drs", "showrepl", "--json", dc.spec.fqdn, *credentials)
        reps_from = json.loads(shown.stdout).get("repsFrom", [])
        if reps_from:
            log.info("dc1's KCC made %d repsFrom values", len(reps_from))
            return
        if time.monotonic() > deadline:
            raise LabError(f"{dc.spec.fqdn} has no repsFrom after samba-tool drs kcc")
        time.sleep(0.5)


def _join(dc: SambaDC, replica: DomainControllerSpec, target: Path, build: Path) -> None:
    # A configuration of its own: without --configfile the join starts from the machine's
    # /etc/samba/smb.conf and copies its [global] settings and shares into the new DC's.
    base = build / "join.conf"
    base.write_text(
        "[global]\n"
        f"\tnetbios name = {replica.host_name.upper()}\n"
        f"\tworkgroup = {replica.netbios_domain}\n"
        f"\trealm = {replica.realm}\n"
        f"\tinterfaces = {replica.address}\n"
        "\tbind interfaces only = yes\n"
    )
    started = time.monotonic()
    argv = [
        "samba-tool",
        "domain",
        "join",
        replica.dns_domain,
        "DC",
        f"--configfile={base}",
        f"--username={replica.netbios_domain}\\Administrator",
        f"--password={dc.admin_password}",
        f"--server={dc.spec.fqdn}",
        f"--targetdir={target}",
        f"--option=netbios name={replica.host_name.upper()}",
        f"--option=interfaces={replica.address}",
        "--option=bind interfaces only=yes",
        "--dns-backend=SAMBA_INTERNAL",
    ]
    wrapped = dc.names.wrap(argv) if dc.names is not None else argv
    env = {**os.environ, "KRB5_CONFIG": str(dc.krb5_conf)}
    env.pop("LD_PRELOAD", None)
    result = subprocess.run(wrapped, capture_output=True, text=True, env=env)
    (build / "join.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise LabError(f"samba-tool domain join failed (exit status {result.returncode}):\n{tail}")
    base.unlink()
    log.info("samba-tool domain join of %s took %.1f s", replica.fqdn, time.monotonic() - started)
