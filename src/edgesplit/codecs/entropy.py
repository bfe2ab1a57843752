"""Lossless stages: zstd over bytes, and ANS entropy coding of quantized symbols (constriction)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np

__all__ = ["COUNT_MAX", "ans_encode", "ans_symbols", "compact_counts", "histogram", "zstd_compress",
           "zstd_content_size", "zstd_decompress_into"]

COUNT_MAX = 0xFFFF  # frequencies travel as 16-bit counts


def histogram(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    return np.bincount(symbols, minlength=alphabet)[:alphabet].astype(np.int64)


def compact_counts(counts: np.ndarray, keep_all: bool) -> tuple[int, np.ndarray]:
    """(first symbol, counts scaled into 1..COUNT_MAX) over the used range, or the whole alphabet if ``keep_all``.

    Scaling keeps every used symbol at a count of at least 1, so the model can code every symbol it saw.
    """
    used = np.flatnonzero(counts)
    if keep_all or len(used) == 0:
        first, window = 0, counts.astype(np.float64) + 1.0  # calibrated: every symbol stays codable
    else:
        first, last = int(used[0]), int(used[-1])
        if first == last:  # one symbol used: constriction's categorical model needs two, add an unused neighbour
            first, last = (first, last + 1) if last + 1 < len(counts) else (first - 1, last)
        window = counts[first:last + 1].astype(np.float64)
    scale = min(1.0, COUNT_MAX / window.max())
    scaled = np.where(window > 0, np.maximum(1, np.rint(window * scale)), 0).astype(np.uint16)
    return first, scaled


def _model(counts: np.ndarray):
    import constriction

    return constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)


def ans_encode(symbols: np.ndarray, first: int, counts: np.ndarray) -> bytes:
    """ANS-code ``symbols`` (each in [first, first + len(counts))) under the categorical model ``counts``."""
    import constriction

    if len(symbols) == 0:
        return b""
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols.astype(np.int32) - first, _model(counts))
    return coder.get_compressed().astype("<u4").tobytes()


def ans_symbols(data: bytes | memoryview, first: int, counts: np.ndarray, count: int,
                step: int) -> Iterator[np.ndarray]:
    """The ``count`` symbols ``ans_encode`` coded, ``step`` at a time (uint8 arrays), so that no buffer of all the
    symbols is ever held; raises ValueError unless the data decode exactly to them.

    The coder keeps its own copy of ``data`` (4 bytes a word) while it runs: count it among what a decode holds.
    """
    import constriction

    if count == 0:
        if len(data):
            raise ValueError("symbols coded for an empty tensor")
        return
    if len(data) % 4:
        raise ValueError("ANS data is not a whole number of 32-bit words")
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, dtype="<u4"))
    model = _model(counts)
    for start in range(0, count, step):
        symbols = coder.decode(model, min(step, count - start))
        symbols += first  # int32, below 256: first + alphabet is checked when the header is read
        yield symbols.astype(np.uint8)
    if not coder.is_empty():
        raise ValueError("ANS data left over after the last symbol")


def zstd_compress(data: bytes, level: int) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=level).compress(data)


def zstd_content_size(data: bytes | memoryview) -> int:
    """The size a zstd frame's header says it decompresses to; -1 when the header does not say (ValueError if
    ``data`` does not start with a zstd frame header)."""
    import zstandard

    try:
        return zstandard.frame_content_size(data)
    except zstandard.ZstdError as error:
        raise ValueError(f"zstd: {error}") from error


def zstd_decompress_into(data: bytes | memoryview, target: np.ndarray) -> None:
    """Decompress a zstd frame into ``target`` (a uint8 array), which it must fill exactly; ValueError otherwise.

    zstd decodes in a single pass straight into ``target`` when the frame's header declares its content size and
    the whole frame is there; any other frame would need a window buffer of zstd's own, which the smallest window
    limit (1 KiB) refuses, so nothing but ``target`` grows with the data.
    """
    import zstandard

    view, filled = memoryview(target), 0
    decompressor = getattr(_PER_THREAD, "zstd", None)
    if decompressor is None:  # one per thread (they are not thread-safe), kept: making one costs more than a decode
        decompressor = _PER_THREAD.zstd = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MIN_WINDOW)
    try:
        with decompressor.stream_reader(data) as reader:
            while filled < len(view):
                read = reader.readinto(view[filled:])
                if not read:
                    break
                filled += read
            if filled == len(view) and reader.read(1):  # a second frame, decoded with at most a 1 KiB window
                raise ValueError(f"zstd data decompress to more than the {len(view):,} bytes the header declares")
    except zstandard.ZstdError as error:
        raise ValueError(f"zstd: {error}") from error
    if filled != len(view):
        raise ValueError(f"zstd data decompress to {filled:,} bytes, the header declares {len(view):,}")


_ZSTD_MIN_WINDOW = 1 << 10  # ZSTD_WINDOWLOG_ABSOLUTEMIN
_PER_THREAD = threading.local()
