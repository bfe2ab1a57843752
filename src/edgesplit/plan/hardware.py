"""Devices, servers and links: what the planner knows about the machines at both ends and the network between.

A *machine* (the device or the server) is one of three things, named by a spec string:

- an analytic preset (``rpi4``, ``jetson-nano``, ``phone-npu``, ``mcu``, ``edge-gpu``): a roofline model —
  a node takes ``max(MACs / effective MAC/s, bytes moved / memory bandwidth) + per-node overhead``;
- a measured device profile (``rpi.json``, written by ``edgesplit profile --save-device`` on that device);
- this host, profiled now (``host``).

A measured spec may be scaled (``host/8`` is eight times slower than this machine, ``rpi.json*2`` twice as fast)
and may borrow a preset's power and memory figures (``host/8@rpi4``), which measurements do not contain.

A *link* is a preset (``3g``, ``lte``, ``5g``, ``wifi``, ``ethernet``) with optional overrides
(``lte:up=2,rtt=80``) or ``custom:up=…,down=…,rtt=…,tx=…,rx=…``.

The preset figures are public numbers, cited next to each; they are starting points, not measurements of
your hardware — a device profile measured on the real device replaces the compute part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from edgesplit.errors import EdgesplitError

__all__ = ["LINKS", "PRESETS", "ComputePreset", "HardwareError", "Link", "MachineSpec", "parse_link",
           "parse_machine", "parse_size"]

MB = 1e6  # bytes per megabyte (network and bandwidth figures are decimal)
GiB = 2**30
MiB = 2**20


class HardwareError(EdgesplitError):
    """An unknown preset, a malformed spec, or a figure that makes no sense (zero bandwidth, negative power)."""


# --- analytic machines ----------------------------------------------------------------------------------


class ComputePreset(BaseModel):
    """An analytic machine: peak throughput, the fraction of it DNN layers reach, memory and power."""

    name: str
    role: Literal["device", "server"]
    description: str
    peak_macs_per_s: float
    utilization: float  # fraction of peak that conv/matmul layers reach in practice (assumption, see docs)
    memory_gb_s: float  # sustained memory bandwidth
    memory_bytes: int  # memory available for the head's activations (and its weights, without weight storage)
    weight_storage_bytes: int | None = None  # separate storage for weights (an MCU's flash), if any
    overhead_ms: float  # fixed cost per graph node (framework dispatch, kernel launch)
    active_w: float  # power while computing
    idle_w: float  # power while waiting for the network or the server
    source: str

    @property
    def effective_macs_per_s(self) -> float:
        return self.peak_macs_per_s * self.utilization


PRESETS: dict[str, ComputePreset] = {p.name: p for p in [
    ComputePreset(
        name="rpi4", role="device", description="Raspberry Pi 4 Model B, 4× Cortex-A72 @ 1.5 GHz, fp32 on the CPU",
        peak_macs_per_s=12e9, utilization=0.25, memory_gb_s=4.0, memory_bytes=4 * GiB, overhead_ms=0.03,
        active_w=6.4, idle_w=2.7,
        source="Raspberry Pi 4 product brief (BCM2711, 4× A72 1.5 GHz, LPDDR4-3200, 4 GB): 4 cores × 1.5 GHz × "
               "2 fp32 FMA/cycle (128-bit NEON) = 12 GMAC/s peak; ~4 GB/s sustained copy bandwidth is the "
               "commonly reported STREAM figure; power 2.7 W idle / 6.4 W under full CPU load as measured in "
               "Tom's Hardware's Raspberry Pi 4 review (2019)."),
    ComputePreset(
        name="jetson-nano", role="device", description="NVIDIA Jetson Nano, 128-core Maxwell GPU, fp16, 10 W mode",
        peak_macs_per_s=236e9, utilization=0.3, memory_gb_s=25.6, memory_bytes=4 * GiB, overhead_ms=0.05,
        active_w=10.0, idle_w=1.3,
        source="NVIDIA Jetson Nano module data sheet: 472 GFLOPS fp16 (= 236 GMAC/s), 4 GB 64-bit LPDDR4 at "
               "25.6 GB/s, 5 W / 10 W power modes (10 W used as active); ~1.3 W idle as reported for the "
               "developer kit."),
    ComputePreset(
        name="phone-npu", role="device", description="Phone SoC NPU class (Snapdragon 865 Hexagon 698), int8",
        peak_macs_per_s=7.5e12, utilization=0.1, memory_gb_s=44.0, memory_bytes=1 * GiB, overhead_ms=0.01,
        active_w=3.0, idle_w=0.5,
        source="Qualcomm Snapdragon 865 product brief: 15 TOPS AI engine (= 7.5 TMAC/s int8), LPDDR5 at "
               "2750 MHz (4×16-bit, 44 GB/s); 1 GB assumed available to one app; ~3 W SoC power under NN "
               "load and 0.5 W idle are typical phone figures (assumption; measure your phone)."),
    ComputePreset(
        name="mcu", role="device", description="Microcontroller class: STM32H743, Cortex-M7 @ 480 MHz, int8 CMSIS-NN",
        peak_macs_per_s=0.96e9, utilization=0.5, memory_gb_s=1.9, memory_bytes=1 * MiB,
        weight_storage_bytes=2 * MiB, overhead_ms=0.005, active_w=0.5, idle_w=0.01,
        source="ST STM32H743 data sheet: Cortex-M7 at 480 MHz, 1 MB SRAM, 2 MB flash; CMSIS-NN int8 kernels "
               "issue 2 MACs/cycle with the SMLAD dual-MAC instruction (= 0.96 GMAC/s peak); run-mode current "
               "of ~100 mA at 3.3 V is about 0.3–0.5 W with peripherals; stop mode is milliwatts."),
    ComputePreset(
        name="edge-gpu", role="server", description="Edge GPU server, NVIDIA T4, fp32",
        peak_macs_per_s=4.05e12, utilization=0.4, memory_gb_s=320.0, memory_bytes=16 * GiB, overhead_ms=0.01,
        active_w=70.0, idle_w=10.0,
        source="NVIDIA T4 data sheet: 8.1 TFLOPS fp32 (= 4.05 TMAC/s), 16 GB GDDR6 at 320 GB/s, 70 W board "
               "power."),
]}


# --- links ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """A network link: bandwidths in Mbit/s, round-trip time, and the device radio's power while sending/receiving."""

    name: str
    uplink_mbps: float
    downlink_mbps: float
    rtt_ms: float
    tx_w: float
    rx_w: float
    source: str = ""

    def __post_init__(self) -> None:
        for field, value in (("uplink", self.uplink_mbps), ("downlink", self.downlink_mbps)):
            if not value > 0:
                raise HardwareError(f"link {self.name}: {field} bandwidth must be positive, got {value} Mbit/s")
        for field, value in (("rtt", self.rtt_ms), ("tx", self.tx_w), ("rx", self.rx_w)):
            if not value >= 0:
                raise HardwareError(f"link {self.name}: {field} must be zero or positive, got {value}")

    def uplink_ms(self, nbytes: float) -> float:
        return nbytes * 8 / (self.uplink_mbps * MB) * 1e3

    def downlink_ms(self, nbytes: float) -> float:
        return nbytes * 8 / (self.downlink_mbps * MB) * 1e3

    def at_uplink(self, uplink_mbps: float) -> Link:
        """This link with another uplink bandwidth; the downlink keeps its ratio to the uplink."""
        ratio = self.downlink_mbps / self.uplink_mbps
        return replace(self, name=f"{self.name}@{uplink_mbps:g}Mbps", uplink_mbps=uplink_mbps,
                       downlink_mbps=uplink_mbps * ratio)


def _huang_power(alpha_mw_per_mbps: float, beta_mw: float, mbps: float) -> float:
    """Radio power in watts from Huang et al.'s linear model P = α·throughput + β (MobiSys 2012, Table 4)."""
    return round((alpha_mw_per_mbps * mbps + beta_mw) / 1e3, 3)


_HUANG = ("Huang et al., 'A Close Examination of Performance and Power Characteristics of 4G LTE Networks', "
          "MobiSys 2012: radio power P = α·Mbps + β")
_NEUROSURGEON = "Kang et al., 'Neurosurgeon', ASPLOS 2017: measured average uplink"

LINKS: dict[str, Link] = {link.name: link for link in [
    Link("3g", uplink_mbps=1.1, downlink_mbps=2.0, rtt_ms=150.0,
         tx_w=_huang_power(868.98, 817.88, 1.1), rx_w=_huang_power(122.12, 817.88, 2.0),
         source=f"{_NEUROSURGEON} 1.1 Mbit/s; {_HUANG} (3G: α_u 868.98, α_d 122.12, β 817.88 mW); "
                "downlink and RTT typical of HSPA (assumption)"),
    Link("lte", uplink_mbps=5.85, downlink_mbps=12.74, rtt_ms=70.0,
         tx_w=_huang_power(438.39, 1288.04, 5.85), rx_w=_huang_power(51.97, 1288.04, 12.74),
         source=f"{_NEUROSURGEON} 5.85 Mbit/s; downlink 12.74 Mbit/s median and ~70 ms RTT from Huang et al.; "
                f"{_HUANG} (LTE: α_u 438.39, α_d 51.97, β 1288.04 mW)"),
    Link("5g", uplink_mbps=50.0, downlink_mbps=400.0, rtt_ms=25.0, tx_w=2.5, rx_w=2.0,
         source="Narayanan et al., 'A Variegated Look at 5G in the Wild', SIGCOMM 2021: mid-band 5G uplink "
                "tens of Mbit/s, downlink hundreds, RTT ~20–30 ms; 5G radio draws ~2–2.5 W under load "
                "(approximate figures from that study)"),
    Link("wifi", uplink_mbps=18.88, downlink_mbps=54.0, rtt_ms=10.0,
         tx_w=_huang_power(283.17, 132.86, 18.88), rx_w=_huang_power(137.01, 132.86, 54.0),
         source=f"{_NEUROSURGEON} 18.88 Mbit/s; {_HUANG} (Wi-Fi: α_u 283.17, α_d 137.01, β 132.86 mW); "
                "downlink 54 Mbit/s (802.11g nominal) and 10 ms RTT assumed"),
    Link("ethernet", uplink_mbps=1000.0, downlink_mbps=1000.0, rtt_ms=0.5, tx_w=0.5, rx_w=0.5,
         source="1000BASE-T nominal rate; sub-millisecond LAN RTT; ~0.5 W for a gigabit PHY (typical data "
                "sheet figure)"),
]}

_LINK_KEYS = {"up": "uplink_mbps", "down": "downlink_mbps", "rtt": "rtt_ms", "tx": "tx_w", "rx": "rx_w"}


def parse_link(spec: str) -> Link:
    """A link from a preset name with optional overrides (``lte:up=2,rtt=80``) or ``custom:up=…,down=…,rtt=…``."""
    name, _, overrides_text = spec.strip().partition(":")
    name = name.lower()
    if name == "custom":
        base = Link("custom", uplink_mbps=1.0, downlink_mbps=1.0, rtt_ms=0.0, tx_w=0.0, rx_w=0.0,
                    source="user-given figures")
    elif name in LINKS:
        base = LINKS[name]
    else:
        raise HardwareError(f"unknown link '{name}'; use one of {', '.join(LINKS)} or "
                            "custom:up=MBPS,down=MBPS,rtt=MS,tx=W,rx=W")
    values: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in overrides_text.split(","))):
        key, _, value = item.partition("=")
        if key not in _LINK_KEYS:
            raise HardwareError(f"link spec '{spec}': unknown key '{key}'; use {', '.join(_LINK_KEYS)}")
        try:
            values[_LINK_KEYS[key]] = float(value)
        except ValueError as error:
            raise HardwareError(f"link spec '{spec}': '{item}' needs a number, e.g. {key}=10") from error
    if name == "custom" and "uplink_mbps" in values and "downlink_mbps" not in values:
        values["downlink_mbps"] = values["uplink_mbps"]
    label = spec.strip() if values else base.name
    return replace(base, name=label, **values)


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
               "t": 10**12, "tb": 10**12, "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30,
               "gib": 2**30, "ti": 2**40, "tib": 2**40}


def parse_size(text: str) -> int:
    """Bytes from ``4096``, ``64KB``, ``1.5MiB``, ``2G`` (decimal units, and binary with ``i``)."""
    match = _SIZE.match(text)
    unit = (match.group(2) or "").lower() if match else ""
    if not match or unit not in _SIZE_UNITS or float(match.group(1)) <= 0:
        raise HardwareError(f"cannot read size '{text}'; write a positive number of bytes with an optional unit, "
                            "e.g. 512KB, 64MiB or 1.5GB")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


# --- machine specs --------------------------------------------------------------------------------------


_MACHINE_SPEC = re.compile(r"^(?P<base>[^@]+?)(?:(?P<op>[*/])(?P<factor>[0-9.]+(?:e-?[0-9]+)?))?"
                           r"(?:@(?P<borrow>[A-Za-z0-9_-]+))?$")


@dataclass(frozen=True)
class MachineSpec:
    """A parsed machine spec: a preset, ``host`` or a profile path, a speed factor, and a preset to borrow from."""

    kind: Literal["preset", "host", "profile"]
    base: str
    speed: float = 1.0  # >1 faster than measured, <1 slower
    borrow: str | None = None

    @property
    def preset(self) -> ComputePreset | None:
        return PRESETS[self.base] if self.kind == "preset" else PRESETS.get(self.borrow or "")


def parse_machine(spec: str) -> MachineSpec:
    """Parse ``PRESET``, ``host``, ``PATH.json``, with an optional ``*F``/``/F`` speed factor and ``@PRESET``."""
    match = _MACHINE_SPEC.match(spec.strip())
    if not match:
        raise HardwareError(f"cannot read machine spec '{spec}'; write a preset ({', '.join(PRESETS)}), "
                            "'host', or a device profile PATH.json, optionally with /FACTOR or *FACTOR and @PRESET")
    base, op, factor_text, borrow = match.group("base", "op", "factor", "borrow")
    speed = 1.0
    if op:
        factor = float(factor_text)
        if not factor > 0:
            raise HardwareError(f"machine spec '{spec}': the speed factor must be positive")
        speed = factor if op == "*" else 1 / factor
    if borrow is not None and borrow not in PRESETS:
        raise HardwareError(f"machine spec '{spec}': unknown preset '{borrow}' after @; use one of {', '.join(PRESETS)}")
    if base.lower() in PRESETS:
        if op or borrow:
            raise HardwareError(f"machine spec '{spec}': a preset takes no factor or @; scale a measured "
                                "profile instead (host/8@rpi4)")
        return MachineSpec("preset", base.lower())
    if base == "host":
        return MachineSpec("host", "host", speed, borrow)
    if base.endswith(".json") or Path(base).exists():
        return MachineSpec("profile", base, speed, borrow)
    raise HardwareError(f"unknown machine '{base}'; use a preset ({', '.join(PRESETS)}), 'host', or a device "
                        "profile made by `edgesplit profile MODEL --save-device NAME.json`")
