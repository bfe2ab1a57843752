"""`edgesplit infer`: inputs shaped for a plan's model, sent through a :class:`Client`, and the run's summary.

``load_inputs`` gets the images (a folder, a data set's test split, or the bundled digits) or, for a model that
takes token ids (a Hugging Face decoder), the ids (``tokens:FILE``, one sequence per line, or ``tokens:random``,
drawn from the model's vocabulary once the client knows it); ``read_token`` the
bearer token (``auth.token_from``), ``run_inference`` sends them and returns what `edgesplit infer --json`
writes: ``{"summary": InferSummary as written, "records": [one per request]}``. Every error here is a
:class:`ClientError` (a one-line user error).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from edgesplit.errors import DataError
from edgesplit.model.data import load_dataset, load_image_folder, load_token_ids
from edgesplit.progress import progress_bar
from edgesplit.runtime.auth import TokenError, token_from
from edgesplit.runtime.client import Client, Result
from edgesplit.runtime.deployment import Deployment
from edgesplit.runtime.errors import ClientError
from edgesplit.runtime.summary import InferSummary, LatencyMs, SwitchRecord

__all__ = ["RANDOM_TOKEN_SEQUENCES", "Inputs", "load_inputs", "read_token", "run_inference"]

RANDOM_TOKEN_SEQUENCES = 16  # what ``tokens:random`` sends without --limit


@dataclass
class Inputs:
    """Images (or token ids) shaped for a plan's model, with labels where the source has them."""

    images: torch.Tensor  # N×C×H×W float32 in [0, 1], or N×T int64 token ids
    labels: torch.Tensor | None
    names: list[str]  # file names, or "SPEC#i"
    source: str
    random_ids: int = 0  # ``tokens:random``: sequences to draw from the model's vocabulary (``images`` is empty)

    def for_model(self, deployment: Deployment) -> Inputs:
        """These inputs checked against the model they go to (images for an image model, ids in its vocabulary for
        a token model), random ids drawn; a ClientError, before anything is sent, when they do not fit."""
        dtype, vocab = deployment.input_dtype, deployment.vocab_size
        ids = not self.images.is_floating_point()
        if dtype.is_floating_point:
            if ids:
                raise ClientError(f"{self.source} gives token ids, and this plan's model takes "
                                  f"{['N', *deployment.plan.input_shape[1:]]} float inputs; give --images or --data")
            return self
        if not ids:
            raise ClientError(f"this plan's model takes token ids, not images ({self.source}); give --data "
                              "tokens:FILE (one sequence of ids per line) or --data tokens:random")
        if self.random_ids:
            generator = torch.Generator().manual_seed(0)
            shape = (self.random_ids, *self.images.shape[1:])
            drawn = torch.randint(0, vocab or 2, shape, generator=generator, dtype=torch.int64)
            return Inputs(drawn, None, [f"tokens:random#{i}" for i in range(self.random_ids)],
                          f"random token ids (0..{(vocab or 2) - 1})")
        if vocab is not None and self.images.numel():
            bad = ((self.images < 0) | (self.images >= vocab)).any(-1).nonzero()
            if len(bad):
                row = int(bad[0])
                value = next(int(v) for v in self.images[row] if not 0 <= int(v) < vocab)
                raise ClientError(f"{self.names[row]} holds token id {value}, and this plan's model has a vocabulary "
                                  f"of {vocab} (ids 0..{vocab - 1}); send ids from its tokenizer")
        return self


def read_token(token_file: Path | None) -> str | None:
    """The bearer token to send: ``auth.token_from``'s (the file, else $EDGESPLIT_TOKEN, else None), as the server
    reads its own; a ClientError when it cannot be used."""
    try:
        return token_from(token_file)[0]
    except TokenError as error:
        raise ClientError(str(error)) from error


def load_inputs(input_shape: Sequence[int], *, images: Path | None = None, data: str | None = None,
                limit: int | None = None) -> Inputs:
    """The images to send: a folder of PNG/JPEG files (class subfolders give labels) or a data set's test split.

    Without either, the bundled digits for a 1×8×8 model. Images are resized to the model's H×W and converted
    to its channels (gray or RGB).
    """
    shape = [int(s) for s in input_shape]
    if data is not None and data.strip().lower().startswith("tokens:"):
        return _token_inputs(shape, data.strip(), images, limit)
    if len(shape) != 4:
        tokens = " or token ids (N×T: --data tokens:FILE or tokens:random)" if len(shape) == 2 else ""
        raise ClientError(f"this plan's model takes {shape} inputs; `edgesplit infer` sends images "
                          f"(N×C×H×W){tokens}")
    channels, height, width = shape[1:]
    if images is not None and data is not None:
        raise ClientError("give --images DIR or --data SPEC, not both")
    if images is None and data is None:
        if shape[1:] != [1, 8, 8]:
            raise ClientError(f"this plan's model takes {channels}×{height}×{width} images; give them with "
                              "--images DIR or --data SPEC (digits | mnist:DIR | fashion-mnist:DIR)")
        data = "digits"
    if channels not in (1, 3):
        raise ClientError(f"this plan's model takes {channels}-channel inputs; images are gray or RGB, so "
                          "send its inputs through the Python API (edgesplit.Client) instead")
    if images is not None:
        folder = Path(images)
        if not folder.is_dir():
            raise ClientError(f"--images {folder} is not a folder; give a folder of PNG/JPEG images")
        try:
            pictures, labels, names = load_image_folder(folder, channels, height, width, limit)
        except DataError as error:
            raise ClientError(str(error)) from error
        return Inputs(pictures, labels, names, str(folder))
    try:
        dataset = load_dataset(data, image_size=height if height == width else None, limit=limit)
    except DataError as error:
        raise ClientError(str(error)) from error
    pictures = dataset.test_images[:limit]
    if tuple(pictures.shape[2:]) != (height, width):
        raise ClientError(f"data set '{data}' has {pictures.shape[2]}×{pictures.shape[3]} images and this plan's "
                          f"model takes {height}×{width}; use --images with a folder of pictures")
    pictures = _match_channels(pictures, channels)
    return Inputs(pictures.contiguous(), dataset.test_labels[:limit].clone(),
                  [f"{data}#{i}" for i in range(len(pictures))], f"{data} (test split)")


def _token_inputs(shape: list[int], data: str, images: Path | None, limit: int | None) -> Inputs:
    """``tokens:FILE`` (one sequence of T ids per line) or ``tokens:random`` for a model taking N×T token ids."""
    if images is not None:
        raise ClientError("give --images DIR or --data SPEC, not both")
    if len(shape) != 2:
        raise ClientError(f"--data {data} gives token ids (N×T), and this plan's model takes {shape} inputs; "
                          "give --images DIR or an image data set")
    source = data.split(":", 1)[1].strip()
    length = shape[1]
    if source.lower() == "random":
        return Inputs(torch.empty((0, length), dtype=torch.int64), None, [], "random token ids",
                      random_ids=limit or RANDOM_TOKEN_SEQUENCES)
    if not source:
        raise ClientError("--data tokens: needs a file (tokens:FILE, one sequence of ids per line) or tokens:random")
    try:
        ids = load_token_ids(source, length, limit=limit)
    except DataError as error:
        raise ClientError(str(error)) from error
    return Inputs(ids, None, [f"{source}#{i}" for i in range(len(ids))], source)


def _match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    if images.shape[1] == channels:
        return images
    if channels == 1:
        return images.mean(1, keepdim=True)
    return images.expand(-1, channels, -1, -1) if images.shape[1] == 1 else images[:, :channels]


def run_inference(client: Client, inputs: Inputs, *, batch: int = 1, check: bool = True,
                  progress: bool = True) -> dict:
    """Send every input (``batch`` per request) through ``client``; ``{"summary": ..., "records": [...]}`` as
    `edgesplit infer --json` writes it (the summary is an :class:`InferSummary` as written). The inputs are
    checked against the client's model first (``Inputs.for_model``)."""
    inputs = inputs.for_model(client.deployment)
    count = len(inputs.images)
    records: list[dict] = []
    predictions: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    client.connect()
    started = time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task("infer", total=count)
        for first in range(0, count, batch):
            chunk = inputs.images[first:first + batch]
            result = client.infer(chunk)
            predicted = _predictions(result, client.top_k)
            if predicted is not None:
                predictions.append(predicted)
            outputs.append(result.logits)
            mbps = result.mbps
            records.append({
                "index": first, "images": len(chunk), "request_id": result.request_id, "route": result.label,
                "where": result.where, "mode": result.mode, "ms": round(result.latency_ms, 3),
                "server_ms": round(result.server_ms, 3), "bytes": result.bytes_sent, "attempts": result.attempts,
                "mbps": None if mbps is None else round(mbps, 4),
                "predictions": None if predicted is None else predicted.tolist(),
                "labels": None if inputs.labels is None else inputs.labels[first:first + batch].tolist(),
                "names": inputs.names[first:first + batch]})
            status = f"{result.label} · {mbps:.3g} Mbit/s" if mbps is not None else result.label
            bar.update(task, advance=len(chunk), status=status + (" · fallback" if result.mode == "fallback" else ""))
    seconds = time.perf_counter() - started
    accuracy = agreement = max_abs_diff = None
    if predictions and inputs.labels is not None:
        accuracy = round(float((torch.cat(predictions) == inputs.labels[:count]).float().mean()), 4)
    if check and count:
        local = [client.run_locally(inputs.images[i:i + 64]) for i in range(0, count, 64)]
        first = torch.cat([o[0] for o in local])
        max_abs_diff = float((torch.cat(outputs).float() - first.float()).abs().max())
        if predictions:
            mine = torch.cat([o[1][:, 0] for o in local]) if client.top_k else first.argmax(-1)
            agreement = round(float((torch.cat(predictions) == mine).float().mean()), 4)
    stats = client.stats
    fixed_ms = None if client.fixed_cost_s is None else round(float(client.fixed_cost_s * 1e3), 3)
    summary = InferSummary(
        model=client.deployment.plan.model, model_id=client.deployment.model_id, server=client.url,
        source=inputs.source, images=count, requests=len(records), batch=batch, seconds=round(seconds, 4),
        throughput_ips=round(count / seconds, 3) if seconds > 0 else None,
        latency_ms=LatencyMs.of([r["ms"] for r in records]),
        bytes_sent=stats.bytes_sent, bytes_per_image=round(stats.bytes_sent / count, 1) if count else 0,
        switch_count=len(stats.switches),
        switches=[SwitchRecord(request=s.request, from_label=s.from_label, to_label=s.to_label,
                               mbps=round(s.mbps, 4)) for s in stats.switches],
        routes=_counts(r["route"] for r in records),
        server_results=stats.server_results, device_results=stats.device_results, fallbacks=stats.fallbacks,
        outages=stats.outages, recoveries=stats.recoveries, retries=stats.retries, probes=stats.probes,
        final_route=client.label, final_mbps=None if client.mbps is None else round(float(client.mbps), 4),
        final_mbps_is_lower_bound=client.estimator.censored, fixed_cost_ms=fixed_ms, rtt_floor_ms=fixed_ms,
        accuracy=accuracy, agreement=agreement, max_abs_diff=max_abs_diff)
    return {"summary": summary.to_json(), "records": records}


def _predictions(result: Result, top_k: int) -> torch.Tensor | None:
    """The predicted class of each row, when the output is a batch of class scores."""
    if top_k:
        return result.outputs[1][:, 0] if len(result.outputs) > 1 and result.outputs[1].dim() == 2 else None
    return result.logits.argmax(-1) if result.logits.dim() == 2 else None


def _counts(labels: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return counts
