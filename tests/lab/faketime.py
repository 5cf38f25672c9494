"""libfaketime (Debian ``faketime``): run a daemon with its clock a fixed number of seconds off.

The library is preloaded into the child; ``FAKETIME="+420"`` shifts every clock it reads.
libfaketime 0.9.10 keeps a shared-memory segment and a semaphore named after the pid of the
first process that loaded it (``/dev/shm/faketime_shm_PID``, ``/dev/shm/sem.faketime_sem_PID``)
and removes them only when that process exits normally; ``FAKETIME_DISABLE_SHM`` arrived in
0.9.11. Samba killed by SIGTERM leaves them behind, so the lab removes them after stopping.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def _library() -> Path:
    # The multiarch folder differs per architecture; MT is the thread-safe build.
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))
    return found[0] if found else Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")


FAKETIME_LIBRARY = _library()
SHM_DIR = Path("/dev/shm")


def environment(clock_offset: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: ours) without any faketime settings, plus ``clock_offset`` if not 0."""
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if k != "LD_PRELOAD" and not k.startswith("FAKETIME")
    }
    if clock_offset:
        env["LD_PRELOAD"] = str(FAKETIME_LIBRARY)
        env["FAKETIME"] = f"{clock_offset:+d}"
    return env


def shared_memory_files(pid: int) -> list[Path]:
    """The /dev/shm files libfaketime made for a process started with ``pid`` (if any left)."""
    names = (f"faketime_shm_{pid}", f"sem.faketime_sem_{pid}")
    return [SHM_DIR / name for name in names if (SHM_DIR / name).exists()]


def remove_shared_memory(pid: int) -> None:
    """Remove what libfaketime left for ``pid``; call only once that process is gone."""
    for path in shared_memory_files(pid):
        path.unlink(missing_ok=True)


def is_preloaded(pid: int) -> bool:
    """True when libfaketime is mapped into ``pid``.

    /proc/PID/environ does not tell: Samba overwrites its environment block with its process
    title ("samba: root process"), so the kernel's copy reads as NUL bytes.
    """
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return FAKETIME_LIBRARY.name in maps
