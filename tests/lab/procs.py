"""Child processes the lab owns, and the /proc lookups that find them again after a crash."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.lab.errors import LabError
from tests.lab.net import BoundSocket, sockets_in_the_way

log = logging.getLogger("tests.lab")

# Debian starts these on install; any of them may hold a port the lab needs.
DAEMONS_WE_MAY_STOP = frozenset({"samba", "smbd", "nmbd", "winbindd", "chronyd"})


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    abort: Callable[[], str | None] | None = None,
) -> None:
    """Poll ``ready`` until it returns True; LabError after ``timeout`` or when ``abort`` speaks.

    ``abort`` returns a reason to give up early (the daemon exited), which goes in the error.
    """
    deadline = time.monotonic() + timeout
    while True:
        if abort is not None and (reason := abort()) is not None:
            raise LabError(f"{what}: {reason}")
        if ready():
            return
        if time.monotonic() >= deadline:
            raise LabError(f"{what}: not ready after {timeout:g} s")
        time.sleep(interval)


# --- /proc ------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state, ppid, pgrp, ...), or None when there is no such pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces and parentheses; it ends at the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def _is_live(fields: list[str] | None) -> bool:
    # A zombie has exited; it only waits for its parent (or init, slow here) to reap it.
    return fields is not None and fields[0] not in ("Z", "X")


def process_state(pid: int) -> str | None:
    """The one-letter state in /proc/PID/stat ("S", "R", "T" when stopped, ...); None if gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields is not None else None


def start_time_of(pid: int) -> int | None:
    """Start time in clock ticks since boot: with the pid, it names one process for good."""
    fields = _stat_fields(pid)
    if fields is None or not _is_live(fields):
        return None
    return int(fields[19])


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields is not None else None


def exe_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def live_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _is_live(_stat_fields(int(entry))):
            pids.append(int(entry))
    return pids


def group_members(pgid: int) -> list[int]:
    members = []
    for pid in live_pids():
        fields = _stat_fields(pid)
        if fields is not None and int(fields[2]) == pgid:
            members.append(pid)
    return members


def pids_holding(sockets: Iterable[BoundSocket]) -> dict[int, list[BoundSocket]]:
    """Which processes have these sockets open, found through /proc/PID/fd."""
    by_inode = {f"socket:[{s.inode}]": s for s in sockets}
    holders: dict[int, list[BoundSocket]] = {}
    for pid in live_pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target in by_inode:
                holders.setdefault(pid, []).append(by_inode[target])
    return holders


@dataclass(frozen=True)
class ProcessRecord:
    """A process the lab started, as written to its state file.

    ``pid`` is also the process group, since every child starts in a new session. The start
    time and executable let a later ``down`` tell our process from one that reused the pid.
    """

    name: str
    pid: int
    start_time: int
    exe: str

    def leader_running(self) -> bool:
        return start_time_of(self.pid) == self.start_time

    def members(self) -> list[int]:
        """Live processes of our group: the leader if it is still ours, plus its children.

        A pid stays reserved while it names a live group, so group members found after the
        leader died are still ours; the executable check guards the rare wrap-around.
        """
        return [
            pid
            for pid in group_members(self.pid)
            if (pid == self.pid and self.leader_running())
            or (pid != self.pid and exe_of(pid) == self.exe)
        ]

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "pid": self.pid, "start_time": self.start_time, "exe": self.exe}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ProcessRecord:
        return cls(
            str(data["name"]), int(str(data["pid"])), int(str(data["start_time"])), str(data["exe"])
        )

    @classmethod
    def of_current_process(cls, name: str) -> ProcessRecord:
        pid = os.getpid()
        return cls(name, pid, start_time_of(pid) or 0, exe_of(pid) or "")


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def stop_record(record: ProcessRecord, *, grace: float = 5.0) -> None:
    """SIGTERM the record's process group, SIGKILL what is left after ``grace`` seconds."""
    if not record.members():
        return
    _signal_group(record.pid, signal.SIGTERM)
    # A member stopped with SIGSTOP (Lab.pause_ldap) acts on SIGTERM only once continued.
    _signal_group(record.pid, signal.SIGCONT)
    try:
        wait_until(lambda: not record.members(), timeout=grace, what=record.name, interval=0.05)
        return
    except LabError:
        log.warning(
            "%s (pgid %d) ignored SIGTERM for %g s, sending SIGKILL", record.name, record.pid, grace
        )
    _signal_group(record.pid, signal.SIGKILL)
    wait_until(
        lambda: not record.members(),
        timeout=5.0,
        what=f"{record.name} after SIGKILL",
        interval=0.05,
    )


class ManagedProcess:
    """A daemon started in the foreground as our child, in its own session and process group.

    Its output goes to ``log_path``. With ``stdin_lifeline`` its stdin is a pipe we never write
    to: ``samba -i`` exits when that pipe closes, so Samba dies with us even on SIGKILL.

    ``runs``: the program the process ends up running when ``argv[0]`` is a wrapper that execs
    it (``unshare ... samba``): its children run that program, and a later ``down`` must know
    them by it.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        stdin_lifeline: bool = False,
        runs: str | None = None,
    ) -> None:
        executable = shutil.which(argv[0])
        final = shutil.which(runs) if runs is not None else executable
        for command, found in ((argv[0], executable), (runs, final)):
            if found is None:
                raise LabError(
                    f"{command} not found in PATH; install the Debian package that provides it"
                )
        assert executable is not None and final is not None
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        try:
            self.popen = subprocess.Popen(
                [executable, *argv[1:]],
                stdin=subprocess.PIPE if stdin_lifeline else subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        except OSError as exc:
            self._log.close()
            raise LabError(f"cannot start {name}: {exc}") from exc
        self.record = ProcessRecord(
            name, self.popen.pid, start_time_of(self.popen.pid) or 0, os.path.realpath(final)
        )
        log.info("started %s (pid %d): %s", name, self.popen.pid, " ".join(argv))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exit_reason(self) -> str | None:
        """Why the process is gone, with the end of its log; None while it runs."""
        code = self.popen.poll()
        if code is None:
            return None
        return f"exited with status {code}; last lines of {self.log_path}:\n{self.log_tail()}"

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(cannot read log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, *, grace: float = 5.0) -> None:
        try:
            stop_record(self.record, grace=grace)
        finally:
            try:
                self.popen.wait(timeout=5.0)  # reap it, so no zombie of ours is left behind
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not exit", self.name, self.pid)
            if self.popen.stdin is not None:
                self.popen.stdin.close()
            self._log.close()


# --- daemons in the way -----------------------------------------------------------------------


def _daemon_root(pid: int) -> int:
    """The topmost ancestor running the same executable: the one that owns the workers."""
    exe = exe_of(pid)
    while True:
        parent = parent_of(pid)
        if parent is None or parent <= 1 or exe_of(parent) != exe:
            return pid
        pid = parent


def _stop_daemon(pid: int) -> None:
    record = ProcessRecord(command_name(pid), pid, start_time_of(pid) or 0, exe_of(pid) or "")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    try:
        wait_until(lambda: not record.leader_running(), timeout=10.0, what=record.name)
    except LabError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stop_daemons_in_the_way(wanted: Iterable[tuple[str, str, int]], *, ours: set[int]) -> None:
    """Stop stray samba/smbd/nmbd/winbindd/chronyd bound to a (transport, address, port) we need.

    Anything else in the way is an error: the lab never kills a process it cannot account for.
    ``ours`` are pids of labs still running, which must be stopped through their own owner.
    """
    wanted = list(wanted)
    blocking = sockets_in_the_way(wanted)
    if not blocking:
        return
    holders = pids_holding(blocking)
    to_stop: dict[int, list[BoundSocket]] = {}
    problems = []
    for pid, sockets in sorted(holders.items()):
        where = ", ".join(sorted({str(s) for s in sockets}))
        name = command_name(pid)
        if pid in ours:
            problems.append(f"{name} (pid {pid}) of another running lab holds {where}")
        elif name in DAEMONS_WE_MAY_STOP:
            to_stop.setdefault(_daemon_root(pid), []).extend(sockets)
        else:
            problems.append(f"{name} (pid {pid}) holds {where}")
    unowned = [s for s in blocking if not any(s in found for found in holders.values())]
    if unowned:
        problems.append(f"no process found for {', '.join(str(s) for s in unowned)}")
    if problems:
        raise LabError(
            "the lab needs these ports, which are in use: " + "; ".join(problems) + ". Stop those"
            " processes, or run `python -m tests.lab down` if they belong to an earlier lab."
        )
    for root, sockets in to_stop.items():
        where = ", ".join(sorted({str(s) for s in sockets}))
        log.warning(
            "stopping %s (pid %d): it holds %s, which the lab needs",
            command_name(root),
            root,
            where,
        )
        _stop_daemon(root)
    wait_until(
        lambda: not sockets_in_the_way(wanted),
        timeout=10.0,
        what="ports held by the stopped daemons",
        interval=0.05,
    )
