"""Uniform quantization to 1–8 bits: clipping ranges (per tensor or per channel), symbols, and bit packing."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

__all__ = ["Dequantizer", "clip_ranges", "pack_bits", "packed_size", "quantize", "unpacked_symbols"]

_PERCENTILE_SAMPLE = 1 << 20  # values drawn per range when a percentile is computed on a large tensor


def channel_view(values: np.ndarray, axis: int | None) -> np.ndarray:
    """``values`` as a (ranges × elements) matrix: one row for the whole tensor, or one per channel of ``axis``."""
    if axis is None:
        return values.reshape(1, -1)
    rows = values.shape[axis]
    return np.moveaxis(values, axis, 0).reshape(rows, values.size // rows if rows else 0)  # -1 fails when rows = 0


def clip_ranges(values: np.ndarray, axis: int | None, percentile: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The [low, high] range of each row: min/max, or the central ``percentile``% of the values."""
    rows = channel_view(values, axis).astype(np.float64, copy=False)
    if rows.shape[1] == 0:
        return np.zeros(rows.shape[0], np.float32), np.zeros(rows.shape[0], np.float32)
    if percentile is None:
        return rows.min(axis=1).astype(np.float32), rows.max(axis=1).astype(np.float32)
    if rows.shape[1] > _PERCENTILE_SAMPLE:
        pick = np.random.default_rng(0).choice(rows.shape[1], _PERCENTILE_SAMPLE, replace=False)
        rows = rows[:, pick]
    tail = (100.0 - percentile) / 2
    low, high = np.percentile(rows, [tail, 100.0 - tail], axis=1)
    return low.astype(np.float32), high.astype(np.float32)


def _broadcast(per_row: np.ndarray, shape: tuple[int, ...], axis: int | None) -> np.ndarray:
    if axis is None:
        return per_row.reshape(())
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return per_row.reshape(view)


def steps(low: np.ndarray, high: np.ndarray, bits: int) -> np.ndarray:
    """The quantization step of each range; a range of zero width gets step 1 (every value maps to ``low``)."""
    width = high.astype(np.float64) - low.astype(np.float64)
    return np.where(width > 0, width / ((1 << bits) - 1), 1.0)


def quantize(values: np.ndarray, low: np.ndarray, high: np.ndarray, bits: int, axis: int | None) -> np.ndarray:
    """Symbols in [0, 2**bits) of ``values`` clipped to their rows' ranges, as a flat uint8 array."""
    lo = _broadcast(low.astype(np.float64), values.shape, axis)
    hi = _broadcast(high.astype(np.float64), values.shape, axis)
    step = _broadcast(steps(low, high, bits), values.shape, axis)
    levels = np.rint((np.clip(values, lo, hi) - lo) / step)
    return np.clip(levels, 0, (1 << bits) - 1).astype(np.uint8).reshape(-1)


class Dequantizer:
    """The values that symbols stand for (the inverse of ``quantize`` up to half a step), computed a run of
    consecutive symbols at a time, so that a decoder never holds more than one run in float64."""

    def __init__(self, low: np.ndarray, high: np.ndarray, bits: int, axis: int | None,
                 shape: tuple[int, ...]) -> None:
        # ``steps`` in place: a frame may carry one range per channel of a long axis, held as little as can be
        self.low = low.astype(np.float64)
        self.step = high.astype(np.float64)
        self.step -= self.low
        np.divide(self.step, (1 << bits) - 1, out=self.step, where=self.step > 0)
        self.step[self.step <= 0] = 1.0
        self.axis = axis
        self.channels = shape[axis] if axis is not None else 1
        self.inner = math.prod(shape[axis + 1:]) if axis is not None else 1

    def values(self, start: int, symbols: np.ndarray) -> np.ndarray:
        """float64 values of ``symbols``, the flat (C-order) elements ``start``, ``start + 1``, … of the tensor."""
        values = symbols.astype(np.float64)
        if self.axis is None:
            values *= self.step[0]
            values += self.low[0]
        else:  # the channel of flat element i is (i // inner) % channels
            channel = np.arange(start, start + len(symbols)) // self.inner % self.channels
            values *= self.step[channel]
            values += self.low[channel]
        return values


def pack_bits(symbols: np.ndarray, bits: int) -> bytes:
    """``bits``-bit symbols packed most significant bit first, the last byte zero-padded."""
    if bits == 8:
        return symbols.astype(np.uint8).tobytes()
    planes = np.unpackbits(symbols.astype(np.uint8)[:, None], axis=1)[:, 8 - bits:]
    return np.packbits(planes.reshape(-1)).tobytes()


def packed_size(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def unpacked_symbols(data: np.ndarray, bits: int, count: int, step: int) -> Iterator[np.ndarray]:
    """The ``count`` symbols that ``pack_bits`` packed into ``data`` (uint8), ``step`` at a time (a multiple of 8).

    Each run is read from ``data`` before it is returned, so ``data`` may lie in memory the caller overwrites
    behind the run it is given (a decoder unpacking in place).
    """
    for start in range(0, count, step):
        n = min(step, count - start)
        if bits == 8:
            yield data[start:start + n].copy()
        else:
            yield _unpack_run(data[start * bits // 8:], bits, n)


def _unpack_run(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first ``count`` symbols of ``data``: every 8 symbols fill ``bits`` bytes, most significant bit first."""
    groups = (count + 7) // 8
    raw = data[:groups * bits]
    if len(raw) < groups * bits:  # the last group of a tensor may be cut short by the padding
        raw = np.concatenate([raw, np.zeros(groups * bits - len(raw), dtype=np.uint8)])
    raw = raw.reshape(groups, bits)
    words = raw[:, 0].astype(np.uint64)  # each group of 8 symbols as one big-endian integer
    for column in range(1, bits):
        words <<= np.uint64(8)
        words |= raw[:, column]
    symbols = words[:, None] >> (np.arange(7, -1, -1, dtype=np.uint64) * np.uint64(bits))
    symbols &= np.uint64((1 << bits) - 1)
    return symbols.astype(np.uint8).reshape(-1)[:count]
