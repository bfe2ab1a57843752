"""A chain of machines joined by links: device → gateway → cloud, or a pipeline of peer devices.

Written on the command line as machines and links alternating, separated by ``>``, each in the spec grammar of
:mod:`edgesplit.plan.hardware`::

    rpi4 > wifi > host/4 > ethernet:rtt=2 > edge-gpu

or as a YAML file (``--topology chain.yaml``), which may also give each machine a memory limit::

    chain: [rpi4, wifi, host/4, "ethernet:rtt=2", edge-gpu]
    memory: [512MB, null, null]   # optional, one per machine: activations + weights its segment may hold
    hop_ms: 1.0                   # optional: fixed framework cost per hop and message (default 1 ms)

Tier 0 is the device that holds the input and wants the answer; the last tier is the farthest machine. The
two-tier ``--device/--link/--server`` options are the chain ``DEVICE > LINK > SERVER``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from edgesplit.plan.hardware import HardwareError, parse_link, parse_machine, parse_size

__all__ = ["DEFAULT_HOP_MS", "MAX_TIERS", "Topology", "load_topology", "parse_topology"]

DEFAULT_HOP_MS = 1.0  # framework cost per message per hop: HTTP framing, a frame header, a thread hop (measured
# ~0.6–1.5 ms on loopback by bench/runtime.py); RTT is the link's own figure
MAX_TIERS = 16  # PipeEdge's largest pipeline; the brute force and the report stay readable
_MAX_TOPOLOGY_FILE = 1 << 16


@dataclass(frozen=True)
class Topology:
    """Machine specs (tier 0 first), the link specs between consecutive machines, limits and per-hop overhead."""

    machines: tuple[str, ...]
    links: tuple[str, ...]
    memory_bytes: tuple[int | None, ...] = ()  # per machine; () = the machines' own figures
    hop_ms: float = DEFAULT_HOP_MS

    def __post_init__(self) -> None:
        if len(self.machines) < 2:
            raise HardwareError("a topology needs at least two machines joined by a link, e.g. 'rpi4 > wifi > host'")
        if len(self.machines) > MAX_TIERS:
            raise HardwareError(f"a topology of {len(self.machines)} machines is more than {MAX_TIERS}; "
                                "plan a shorter chain")
        if len(self.links) != len(self.machines) - 1:
            raise HardwareError(f"a topology of {len(self.machines)} machines needs {len(self.machines) - 1} links "
                                f"between them, not {len(self.links)}; alternate machines and links with '>'")
        if self.memory_bytes and len(self.memory_bytes) != len(self.machines):
            raise HardwareError(f"the topology gives {len(self.memory_bytes)} memory limits for "
                                f"{len(self.machines)} machines; give one per machine (null for none)")
        if not (math.isfinite(self.hop_ms) and self.hop_ms >= 0):
            raise HardwareError(f"hop_ms must be zero or a positive number of milliseconds, not {self.hop_ms}")
        for spec in self.machines:
            parse_machine(spec)  # raises a one-line HardwareError for a bad spec
        for spec in self.links:
            parse_link(spec)

    @property
    def tiers(self) -> int:
        return len(self.machines)

    @property
    def text(self) -> str:
        """The chain in the command-line grammar."""
        parts = [self.machines[0]]
        for link, machine in zip(self.links, self.machines[1:]):
            parts += [link, machine]
        return " > ".join(parts)

    def memory_limit(self, tier: int) -> int | None:
        return self.memory_bytes[tier] if self.memory_bytes else None


def parse_topology(text: str, hop_ms: float = DEFAULT_HOP_MS) -> Topology:
    """``M0 > L0 > M1 > … > MK`` (machines and links alternating), or the path of a topology YAML file."""
    stripped = text.strip()
    if ">" not in stripped and stripped.endswith((".yaml", ".yml")):
        return load_topology(stripped)
    parts = [part.strip() for part in stripped.split(">")]
    if any(not part for part in parts):
        raise HardwareError(f"topology '{text}' has an empty part; write machines and links alternating, separated "
                            "by '>', e.g. 'rpi4 > wifi > host/4 > ethernet > edge-gpu'")
    if len(parts) % 2 == 0:
        raise HardwareError(f"topology '{text}' has {len(parts)} parts; it must start and end with a machine, "
                            "with a link between each two (M0 > L0 > M1 > … > MK)")
    return Topology(machines=tuple(parts[0::2]), links=tuple(parts[1::2]), hop_ms=hop_ms)


def load_topology(path: str | Path) -> Topology:
    """A topology YAML file: ``chain`` (alternating), optional ``memory`` per machine and ``hop_ms``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > _MAX_TOPOLOGY_FILE:
            raise HardwareError(f"topology file {path} is {size:,} bytes; a topology is a few lines of YAML")
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise HardwareError(f"cannot read topology file {path}: {error.strerror or error}; give an existing "
                            "YAML file or a chain such as 'rpi4 > wifi > edge-gpu'") from error
    except yaml.YAMLError as error:
        raise HardwareError(f"topology file {path} is not valid YAML ({type(error).__name__}); see "
                            "`edgesplit plan --help` for its format") from error
    if not isinstance(data, dict) or not isinstance(data.get("chain"), list):
        raise HardwareError(f"topology file {path} needs a 'chain' list of machines and links alternating, e.g. "
                            "chain: [rpi4, wifi, edge-gpu]")
    unknown = set(data) - {"chain", "memory", "hop_ms"}
    if unknown:
        raise HardwareError(f"topology file {path}: unknown key '{sorted(unknown)[0]}'; use chain, memory, hop_ms")
    chain = data["chain"]
    if not all(isinstance(item, str) for item in chain):
        raise HardwareError(f"topology file {path}: every entry of 'chain' is a machine or link spec string")
    topology = parse_topology(" > ".join(chain)) if chain else parse_topology("")
    memory: tuple[int | None, ...] = ()
    if data.get("memory") is not None:
        if not isinstance(data["memory"], list):
            raise HardwareError(f"topology file {path}: 'memory' is a list, one size per machine (null for none)")
        memory = tuple(None if item is None else parse_size(str(item)) for item in data["memory"])
    hop_ms = data.get("hop_ms", DEFAULT_HOP_MS)
    if isinstance(hop_ms, bool) or not isinstance(hop_ms, (int, float)):
        raise HardwareError(f"topology file {path}: hop_ms is a number of milliseconds")
    return Topology(topology.machines, topology.links, memory, float(hop_ms))
