"""A stand-in for bot-bottle's `claude_bottle.manifest`: only what
`ssh_gate` reads, a `Bottle` with its `ssh` entries. Not vendored: the
real module parses a whole bottle manifest; this one is built by hand."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SSHEntry:
    """One `[[ssh]]` entry of a bottle manifest, with its keys' names."""

    Host: str
    Hostname: str
    Port: str = "22"


@dataclass(frozen=True)
class Bottle:
    """A bottle, as far as the SSH gate cares: its `ssh` entries, in
    manifest order."""

    ssh: tuple[SSHEntry, ...] = field(default_factory=tuple)
