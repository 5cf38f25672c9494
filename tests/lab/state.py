"""What a running lab has done to the machine, on disk, so another process can undo it.

Each lab writes ``state.json`` into its own folder and the same content to
``RUNTIME_DIR/<folder name>.json``; the copy in the well-known folder is how ``python -m
tests.lab down`` finds labs whose owner crashed, even if their temp folder was removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab import faketime
from tests.lab.errors import LabError
from tests.lab.net import remove_loopback_alias
from tests.lab.procs import ProcessRecord, stop_record, wait_until

log = logging.getLogger("tests.lab")

RUNTIME_DIR = Path(os.environ.get("EXCHANGE_AUTH_LAB_RUNTIME_DIR", "/run/exchange-auth-lab"))
STATE_FILE_NAME = "state.json"


@dataclass
class LabState:
    lab_dir: Path
    owner: ProcessRecord
    addresses: list[str] = field(default_factory=list)
    aliases_added: list[str] = field(default_factory=list)
    processes: list[ProcessRecord] = field(default_factory=list)

    @property
    def runtime_file(self) -> Path:
        return RUNTIME_DIR / f"{self.lab_dir.name}.json"

    def save(self) -> None:
        text = json.dumps(
            {
                "lab_dir": str(self.lab_dir),
                "owner": self.owner.to_json(),
                "addresses": self.addresses,
                "aliases_added": self.aliases_added,
                "processes": [p.to_json() for p in self.processes],
            },
            indent=2,
        )
        RUNTIME_DIR.mkdir(parents=True, exist_ok=True)
        for path in (self.lab_dir / STATE_FILE_NAME, self.runtime_file):
            if path.parent.is_dir():
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text(text)
                tmp.replace(path)  # a reader never sees half a file

    def forget(self) -> None:
        self.runtime_file.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path) -> LabState:
        data = json.loads(path.read_text())
        return cls(
            lab_dir=Path(data["lab_dir"]),
            owner=ProcessRecord.from_json(data["owner"]),
            addresses=list(data["addresses"]),
            aliases_added=list(data["aliases_added"]),
            processes=[ProcessRecord.from_json(p) for p in data["processes"]],
        )

    def owner_alive(self) -> bool:
        return self.owner.leader_running()

    def live_pids(self) -> set[int]:
        return {pid for p in self.processes for pid in p.members()}


def recorded_labs() -> list[LabState]:
    if not RUNTIME_DIR.is_dir():
        return []
    labs = []
    for path in sorted(RUNTIME_DIR.glob("*.json")):
        try:
            labs.append(LabState.load(path))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable lab state %s: %s", path, exc)
    return labs


def undo(state: LabState) -> list[str]:
    """Stop the lab's processes, drop the aliases it added, delete its folder and state.

    Sockets the owner held itself (the dead DC's) went with the owner, or go with ``stop``.

    Every step runs even when an earlier one fails; the failures come back as messages.
    """
    problems = []
    for record in reversed(state.processes):
        try:
            stop_record(record)
        except (LabError, OSError) as exc:
            problems.append(f"{record.name} (pgid {record.pid}): {exc}")
        else:
            # What libfaketime leaves in /dev/shm when a process under it is killed.
            faketime.remove_shared_memory(record.pid)
    for address in state.aliases_added:
        try:
            remove_loopback_alias(address)
        except (LabError, OSError) as exc:
            problems.append(str(exc))
    shutil.rmtree(state.lab_dir, ignore_errors=True)
    if state.lab_dir.exists():
        problems.append(f"could not remove {state.lab_dir}")
    state.forget()
    return problems


def clean_up_abandoned_labs() -> None:
    """Undo labs whose owner process is gone (a crashed or killed test run)."""
    for state in recorded_labs():
        if state.owner_alive():
            continue
        log.warning(
            "cleaning up the lab in %s left by pid %d, which is gone",
            state.lab_dir,
            state.owner.pid,
        )
        problems = undo(state)
        if problems:
            raise LabError(f"could not clean up the lab in {state.lab_dir}: " + "; ".join(problems))


def bring_down(state: LabState, *, owner_grace: float = 20.0) -> list[str]:
    """Stop a recorded lab: ask a live owner to tear it down first, then undo what remains."""
    if state.owner_alive() and state.owner.pid != os.getpid():
        log.info("asking the lab's owner, pid %d, to stop (SIGTERM)", state.owner.pid)
        try:
            os.kill(state.owner.pid, signal.SIGTERM)
            wait_until(
                lambda: not state.owner_alive() or not state.runtime_file.exists(),
                timeout=owner_grace,
                what=f"owner pid {state.owner.pid}",
            )
        except ProcessLookupError:
            pass
        except LabError:
            log.warning("pid %d still runs; stopping its lab processes directly", state.owner.pid)
    if not state.runtime_file.exists():
        return []
    # Re-read: the owner may have started more processes since the caller loaded the state.
    return undo(LabState.load(state.runtime_file))
