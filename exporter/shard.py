"""Sharding: n exporters split the inventory by a stable hash of each server's name.

``--inventory.shard=i/n`` (``i`` from 0 to n-1, like a StatefulSet pod ordinal) keeps the
servers whose name hashes to ``i``. The hash is SHA-256 of the lower-case name fed to Jump
Consistent Hash (Lamping and Veach, 2014): the same on every machine, every Python and every
restart (Python's ``hash()`` is salted per process), adding or removing a server moves no other
server, and going from n to n+1 shards moves only the servers that land on the new shard.

Each server belongs to exactly one shard, which probes it and reports its series. The
domain controllers of the other shards are the shard's *clock peers*: their clocks are read
over NTP in every scrape (one datagram each) so that every Exchange server's skew against every
DC is computed where the Exchange server lives. Their readings feed the skew pairs and the
clock verdict only; no series names them. See docs/scale-out.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .servers import Role, Server

if TYPE_CHECKING:
    from .checks.base import CheckSpec

__all__ = [
    "CLOCK_PEERS_CHECK",
    "MAX_SHARDS",
    "WHOLE",
    "Shard",
    "checks_with_clock_peers",
    "shard_of",
]

MAX_SHARDS = 1024
# The pseudo-check under which a scrape keeps its clock peers' NTP runs.
CLOCK_PEERS_CHECK = "clock_peers"
# Labels that name the server a series is about, in the order they are looked for.
_SERVER_LABELS = ("server", "domain_controller", "exchange_server")
_SPEC_RE = re.compile(r"^(\d{1,4})/(\d{1,4})$")
_JUMP_MULTIPLIER = 2862933555777941757
_MASK64 = (1 << 64) - 1


def _jump(key: int, buckets: int) -> int:
    """Jump Consistent Hash: a 64-bit key to a bucket in [0, buckets)."""
    bucket, candidate = -1, 0
    while candidate < buckets:
        bucket = candidate
        key = (key * _JUMP_MULTIPLIER + 1) & _MASK64
        candidate = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def shard_of(name: str, count: int) -> int:
    """The shard (0 .. count-1) that owns the server ``name``; case and a final dot ignored."""
    if count < 1:
        raise ValueError(f"shard count must be at least 1, got {count}")
    canonical = name.strip().rstrip(".").lower().encode("utf-8")
    key = int.from_bytes(hashlib.sha256(canonical).digest()[:8], "big")
    return _jump(key, count)


@dataclass(frozen=True, slots=True)
class Shard:
    """This exporter's part of the inventory: ``index`` of ``count`` (0-based)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ValueError(f"shard count must be from 1 to {MAX_SHARDS}, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(
                f"shard index must be from 0 to {self.count - 1} (0-based, like a StatefulSet "
                f"pod ordinal), got {self.index}"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``i/n`` as given to ``--inventory.shard``; ValueError with the reason otherwise."""
        match = _SPEC_RE.match(text.strip())
        if match is None:
            raise ValueError(f"invalid shard {text!r}: expected i/n, e.g. 0/3 (i from 0 to n-1)")
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def sharded(self) -> bool:
        return self.count > 1

    def owns(self, name: str) -> bool:
        return self.count == 1 or shard_of(name, self.count) == self.index

    def split(self, servers: Iterable[Server]) -> tuple[tuple[Server, ...], tuple[Server, ...]]:
        """(the servers this shard owns, the other shards' domain controllers: clock peers)."""
        owned: list[Server] = []
        peers: list[Server] = []
        for server in servers:
            if self.owns(server.name):
                owned.append(server)
            elif server.role is Role.DOMAIN_CONTROLLER:
                peers.append(server)
        return tuple(owned), tuple(peers)

    def reports(self, labels: Mapping[str, str]) -> bool:
        """Whether a background scan's series belongs in this shard's answer.

        Every shard runs every scan, since its verdicts need the results, but a series is
        reported once across the shards: by the shard owning the server it names, and
        forest-wide series (naming no server: duplicate SPNs, the krbtgt account) by shard 0.
        """
        if self.count == 1:
            return True
        for key in _SERVER_LABELS:
            if key in labels:
                return self.owns(labels[key])
        return self.index == 0

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


WHOLE = Shard()


def checks_with_clock_peers(
    checks: Sequence[CheckSpec[Any, Any]], peers: Iterable[Server]
) -> list[CheckSpec[Any, Any]]:
    """The check table for a scrape over the shard's servers plus its clock peers.

    Every check keeps to the shard's own servers; the NTP clock check also runs on the peers,
    under :data:`CLOCK_PEERS_CHECK`, which no collector emits.
    """
    names = frozenset(server.name for server in peers)
    if not names:
        return list(checks)
    out: list[CheckSpec[Any, Any]] = []
    for spec in checks:
        out.append(dataclasses.replace(spec, applies_to=_owned_only(spec.applies_to, names)))
        if spec.name == "clock":
            out.append(
                dataclasses.replace(
                    spec,
                    name=CLOCK_PEERS_CHECK,
                    applies_to=lambda server, settings: server.name in names,
                )
            )
    return out


def _owned_only(
    applies_to: Callable[[Server, Any], bool], peers: frozenset[str]
) -> Callable[[Server, Any], bool]:
    return lambda server, settings: server.name not in peers and applies_to(server, settings)
