"""What plan_accuracy.py and plan_vs_baselines.py share: plan a model from a measured host profile, and run any
plan end to end on this host over an emulated link.

The device and the server are both this host. The device may be declared slower (``--device-slowdown F``): the
planner is then given the device spec ``PROFILE.json/F`` (the documented way to scale a measured profile), and
every device-side time measured here (the head, or encoding the input) is multiplied by F. Scaling measured
times instead of sleeping keeps the benchmark short and changes nothing else: the head still runs at that
moment in the sequence (after the previous inference's network wait, with what that does to caches).

One end-to-end run of a plan, timed piece by piece with ``perf_counter`` under ``torch.no_grad``:
  all-device   the whole model (x F);
  split        the head (x F); packing the crossing tensors into one payload, 64-byte frame header per tensor
               (x F); one request through the link carrying that payload, answered with the model's output
               bytes; rebuilding the tensors from the payload (``torch.frombuffer``); the tail;
  all-server   encoding the input picture as 8-bit pixels, PNG or JPEG with PIL (x F; the device starts from
               the 8-bit picture, as from a camera), or the float tensor (a split at position 0); the request;
               decoding it to a float tensor; the whole model.
The tail runs after the response arrives rather than between upload and answer; the echo server answers at
once, so the sum is the same.
"""

from __future__ import annotations

import contextlib
import gc
import io
import math
import os
import socket
import statistics
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgesplit.model import zoo
from edgesplit.model.data import sample_images
from edgesplit.model.graph import TracedModel, trace
from linkemu import PacedSocketLink, link_emulation_unavailable, open_link
from edgesplit.plan import plan_model
from edgesplit.codecs import parse_codec
from edgesplit.plan.schema import PlanEntry, PlanReport
from edgesplit.profile import device_profile, profile_model

RESULTS = Path(__file__).parent / "results"
JPEG_QUALITY = 90  # plan_model's default


@contextlib.contextmanager
def _working_dir(path: Path) -> Iterator[None]:
    # The device spec names the profile by a bare file name, which every version of the spec grammar reads.
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@dataclass
class Prepared:
    """A zoo model traced on a natural-image input, with this host's device profile saved for the planner."""

    name: str
    shape: tuple[int, int, int, int]
    traced: TracedModel
    images: torch.Tensor  # N×C×H×W in [0, 1]: photo crops, the planner's samples and the inputs measured
    profile_file: Path
    model_ms: float
    profile_seconds: float

    @property
    def label(self) -> str:
        return f"{self.name} {'×'.join(map(str, self.shape[1:]))}"


def prepare(name: str, size: int | None, *, host_runs: int, workdir: Path, progress: bool = True) -> Prepared:
    """Build and trace ``name`` at ``size``×``size`` (its zoo shape when None) and profile it on this host."""
    entry = zoo.get_entry(name)
    channels = entry.input_shape[1]
    size = size or entry.input_shape[-1]
    images = sample_images("photos", (channels, size, size))
    torch.manual_seed(0)
    traced = trace(entry.factory(in_channels=channels), images[:1].clone())
    started = time.perf_counter()
    report = profile_model(traced, name=name, runs=host_runs, progress=progress)
    path = workdir / f"{name}-{size}.json"
    path.write_text(device_profile(report, name="host").model_dump_json())
    return Prepared(name, (1, channels, size, size), traced, images, path, report.model_ms,
                    time.perf_counter() - started)


def add_measurement_arguments(parser) -> None:  # noqa: ANN001 - argparse.ArgumentParser
    """The options both planner benchmarks share: the emulated device, torch threads, the kind of link."""
    parser.add_argument("--device-slowdown", type=float, default=4.0,
                        help="the device is this host slowed F× (planner: PROFILE.json/F; measured device times ×F)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: with 2 threads on 2 shared cores, any other busy process stalls "
                             "every op at OpenMP barriers, up to 100x)")
    parser.add_argument("--paced", action="store_true", help="use the paced loopback link instead of netns + tbf")


def device_spec(prepared: Prepared, slowdown: float) -> str:
    return prepared.profile_file.name + (f"/{slowdown:g}" if slowdown != 1 else "")


def plan_at(prepared: Prepared, rate_mbit: float, rtt_ms: float, slowdown: float) -> PlanReport:
    """The planner's report for a symmetric link of ``rate_mbit`` and ``rtt_ms``, with the photo samples."""
    with _working_dir(prepared.profile_file.parent):
        return plan_model(prepared.traced, device=device_spec(prepared, slowdown), server=prepared.profile_file.name,
                          link=link_spec(rate_mbit, rtt_ms), codec="fp32", objective="latency",
                          samples=prepared.images, jpeg_quality=JPEG_QUALITY, name=prepared.name, progress=False)


def link_spec(rate_mbit: float, rtt_ms: float) -> str:
    return f"custom:up={rate_mbit:g},down={rate_mbit:g},rtt={rtt_ms:.4f}"


# --- links ---------------------------------------------------------------------------------------------


def make_link(rate_mbit: float, paced: bool):  # noqa: ANN201 - RateLimitedLink | PacedSocketLink
    """The netns + tbf link, or the paced loopback link when asked for or when netns cannot be used."""
    return PacedSocketLink(rate_mbit) if paced else open_link(rate_mbit)


def link_note(paced: bool) -> str:
    if paced:
        return "paced loopback (--paced): no TCP/IP header cost, no TCP dynamics"
    reason = link_emulation_unavailable()
    return (f"paced loopback, because netns + tbf is unavailable: {reason}" if reason else
            "network namespace + veth + tc tbf both ways (the kernel's TCP over a token bucket)")


def bucket_bytes(link) -> int:  # noqa: ANN001
    """Bytes a tbf link lets through at line speed after an idle moment (0 for the paced link, which has none, and
    for tbf links below 24 Mbit/s, whose filler keeps the bucket empty)."""
    if link.kind != "netns-tbf":
        return 0
    from linkemu import free_bytes

    return int(free_bytes(link.rate_mbit))


def tcp_retransmits(link) -> int | None:  # noqa: ANN001
    """Segments the client's TCP socket has retransmitted so far (Linux TCP_INFO), or None where unreadable."""
    sock = getattr(link.client, "_sock", None)  # a diagnostic only: EchoClient keeps its socket private
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        return struct.unpack_from("I", info, 100)[0]  # tcpi_total_retrans
    except (AttributeError, OSError, struct.error):
        return None


def measure_rtt_ms(link, repeats: int = 30) -> float:  # noqa: ANN001
    """Median time of an empty request and an empty answer (each still a 16- or 8-byte frame header)."""
    link.client.request(b"", 0)
    return statistics.median(link.client.request(b"", 0) for _ in range(repeats)) * 1e3


# --- running a plan ------------------------------------------------------------------------------------


@dataclass
class Sample:
    device_ms: float
    encode_ms: float
    network_ms: float
    decode_ms: float
    server_ms: float
    uplink_bytes: int  # the payload as sent, frame headers for each tensor included (not the 24 echo bytes)
    retransmits: int = 0  # TCP segments the device retransmitted during this request

    @property
    def total_ms(self) -> float:
        return self.device_ms + self.encode_ms + self.network_ms + self.decode_ms + self.server_ms


PARTS = ("device_ms", "encode_ms", "network_ms", "decode_ms", "server_ms", "total_ms")


def predicted_parts(entry: PlanEntry) -> dict[str, float]:
    c = entry.costs
    return {"device_ms": c.device_ms, "encode_ms": c.encode_ms, "network_ms": c.uplink_ms + c.rtt_ms + c.downlink_ms,
            "decode_ms": c.decode_ms, "server_ms": c.server_ms, "total_ms": c.latency_ms}


_FP32 = parse_codec("fp32")


@dataclass
class PlanRun:
    """One plan of a prepared model, runnable end to end; ``samples`` collects the timed runs."""

    prepared: Prepared
    entry: PlanEntry
    slowdown: float
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        p, entry = self.prepared, self.entry
        self.inputs = [p.images[i:i + 1].clone() for i in range(len(p.images))]
        self.response_bytes = entry.costs.downlink_bytes
        self.format = entry.input_format if entry.kind == "all-server" else None
        if self.format == "tensor":
            self.format = None  # the float tensor: a split at position 0
        if entry.kind == "split" or (entry.kind == "all-server" and self.format is None):
            traced = p.traced
            cut = traced.head_cut(entry.head_nodes) if entry.head_nodes is not None else traced.cuts[entry.cut_index]
            if entry.head_nodes is None and cut.position != entry.position:
                raise RuntimeError(f"{entry.label}: cut {entry.cut_index} is at position {cut.position}, "
                                   f"the plan says {entry.position}")
            self.split = traced.split(cut)
            planned = sum(t.payload_bytes for t in entry.crossing) if entry.crossing else (
                entry.costs.uplink_bytes)
            # The fp32 codec's frame header (its size depends on the tensor's rank), taken from a real encode.
            example = [t.detach() for t in self.split.head(self.inputs[0])]
            self.headers = [len(_FP32.encode(t)) - t.numel() * t.element_size() for t in example]
            sent = sum(t.nbytes + header for t, header in zip(cut.crossing, self.headers))
            if sent != planned:
                raise RuntimeError(f"{entry.label}: the split sends {sent} B, the plan says {planned} B")
        elif self.format is not None:
            pixels = (p.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            self.pixels = [np.ascontiguousarray(x[..., 0] if x.shape[-1] == 1 else x) for x in pixels]
            from PIL import Image

            self.pictures = [Image.fromarray(x) for x in self.pixels]

    @property
    def kind(self) -> str:
        if self.entry.kind == "all-device":
            return "all-device"
        return "split" if self.format is None else f"input:{self.format}"

    def sample(self, index: int, link) -> Sample:  # noqa: ANN001
        """One timed inference over ``link``, after one untimed local run of the same plan (compute only).

        The untimed run is what the profiler's samplers do: both then time the steady state of a stream of frames,
        even when other plans ran just before (here every round runs every plan in turn). Garbage collection is
        off during the timed run, as timeit turns it off for the profiler.
        """
        self.run(index)
        before = tcp_retransmits(link)
        gc.disable()  # as timeit does for the profiler's samples
        try:
            sample = self.run(index, link)
        finally:
            gc.enable()
        after = tcp_retransmits(link)
        if before is not None and after is not None:
            sample.retransmits = after - before
        self.samples.append(sample)
        return sample

    def run(self, index: int, link=None) -> Sample:  # noqa: ANN001
        """One inference on input ``index`` (mod the sample count); without ``link``, a local warm-up."""
        x = self.inputs[index % len(self.inputs)]
        with torch.no_grad():
            if self.entry.kind == "all-device":
                start = time.perf_counter()
                self.prepared.traced.graph_module(x)
                return Sample((time.perf_counter() - start) * 1e3 * self.slowdown, 0.0, 0.0, 0.0, 0.0, 0)
            if self.format is None:
                return self._run_split(x, link)
            return self._run_image(index % len(self.inputs), link)

    def _run_split(self, x: torch.Tensor, link) -> Sample:  # noqa: ANN001
        t0 = time.perf_counter()
        crossing = self.split.head(x)
        t1 = time.perf_counter()
        arrays = [t.detach().contiguous().numpy().reshape(-1).view(np.uint8) for t in crossing]
        payload = bytearray(sum(header + a.nbytes for header, a in zip(self.headers, arrays)))
        view, offset, places = memoryview(payload), 0, []
        for a, header in zip(arrays, self.headers):
            offset += header  # shape, dtype and codec fields: their size, not their content, matters
            view[offset:offset + a.nbytes] = a
            places.append(offset)
            offset += a.nbytes
        t2 = time.perf_counter()
        network = link.client.request(payload, self.response_bytes) if link is not None else 0.0
        t3 = time.perf_counter()
        rebuilt = [torch.frombuffer(payload, dtype=t.dtype, count=t.numel(), offset=place).view(t.shape)
                   for t, place in zip(crossing, places)]
        t4 = time.perf_counter()
        self.split.tail(*rebuilt)
        t5 = time.perf_counter()
        view.release()
        return Sample((t1 - t0) * 1e3 * self.slowdown, (t2 - t1) * 1e3 * self.slowdown, network * 1e3,
                      (t4 - t3) * 1e3, (t5 - t4) * 1e3, len(payload))

    def _run_image(self, index: int, link) -> Sample:  # noqa: ANN001
        from PIL import Image

        picture, shape = self.pictures[index], self.pixels[index].shape
        t0 = time.perf_counter()
        if self.format == "uint8":
            payload = self.pixels[index].tobytes()
        else:
            buffer = io.BytesIO()
            options = {"format": "PNG", "optimize": False} if self.format == "png" else {
                "format": "JPEG", "quality": JPEG_QUALITY}
            picture.save(buffer, **options)
            payload = buffer.getvalue()
        t1 = time.perf_counter()
        network = link.client.request(payload, self.response_bytes) if link is not None else 0.0
        t2 = time.perf_counter()
        if self.format == "uint8":
            array = np.frombuffer(payload, dtype=np.uint8).reshape(shape)
        else:
            with Image.open(io.BytesIO(payload)) as decoded:
                array = np.asarray(decoded)
        image = torch.from_numpy(array.copy())
        x = (image[None, None] if image.dim() == 2 else image.permute(2, 0, 1)[None]).float().div(255)
        t3 = time.perf_counter()
        self.prepared.traced.graph_module(x)
        t4 = time.perf_counter()
        return Sample(0.0, (t1 - t0) * 1e3 * self.slowdown, network * 1e3, (t3 - t2) * 1e3,
                      (t4 - t3) * 1e3, len(payload))

    def warm_up(self, runs: int = 2) -> None:
        for i in range(runs):
            self.run(i)

    def measured(self) -> dict[str, float]:
        """Median of each part, and the median end-to-end time (not the sum of the medians)."""
        out = {part: statistics.median(getattr(s, part) for s in self.samples) for part in PARTS}
        out["uplink_bytes_mean"] = statistics.fmean(s.uplink_bytes for s in self.samples)
        out["retransmits"] = sum(s.retransmits for s in self.samples)
        return out


def relative(predicted: float, measured: float) -> float:
    return (predicted - measured) / measured if measured > 0 else math.nan


def short_label(entry: PlanEntry) -> str:
    """A compact name for a plan in tables and legends."""
    if entry.kind == "all-device":
        return "all-device"
    if entry.kind == "all-server":
        return f"all-server {entry.input_format if entry.input_format != 'tensor' else 'fp32 tensor'}"
    if entry.head_nodes is not None:
        return f"min-cut head ({len(entry.head_nodes)} nodes)"
    return f"cut {entry.cut_index} after {entry.after}"


def shapes_text(entry: PlanEntry) -> str:
    return " + ".join("×".join(map(str, t.shape)) for t in entry.crossing) if entry.crossing else ""
