"""Lossless stages: zstd over bytes, and ANS entropy coding of quantized symbols (constriction)."""

from __future__ import annotations

import io

import numpy as np

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


def ans_decode(data: bytes, first: int, counts: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` symbols ``ans_encode`` coded; raises ValueError unless the data decode exactly to them."""
    import constriction

    if count == 0:
        if data:
            raise ValueError("symbols coded for an empty tensor")
        return np.zeros(0, dtype=np.uint8)
    if len(data) % 4:
        raise ValueError("ANS data is not a whole number of 32-bit words")
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
    symbols = coder.decode(_model(counts), count)
    if not coder.is_empty():
        raise ValueError("ANS data left over after the last symbol")
    return (np.asarray(symbols, dtype=np.int64) + first).astype(np.uint8)


def zstd_compress(data: bytes, level: int) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=level).compress(data)


def zstd_decompress(data: bytes, expected_size: int) -> bytes:
    """Decompress to exactly ``expected_size`` bytes, never allocating more (ValueError otherwise)."""
    import zstandard

    try:  # a streamed read: a frame that declares or expands to more than expected is never held whole
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
            chunks, held = [], 0
            while held <= expected_size:
                chunk = reader.read(expected_size + 1 - held)
                if not chunk:
                    break
                chunks.append(chunk)
                held += len(chunk)
            raw = b"".join(chunks)
    except zstandard.ZstdError as error:
        raise ValueError(f"zstd: {error}") from None
    if len(raw) != expected_size:
        raise ValueError(f"zstd data decompress to {len(raw)} bytes, the header declares {expected_size}")
    return raw
