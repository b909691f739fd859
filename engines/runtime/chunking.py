"""Running a batch in chunks, so that a runtime's working memory is that of a few samples.

An engine is stateless and batch-first (engines/base.py): its output for a batch is the
concatenation of its outputs for any split of the batch. Imaging engines on live frames hold
tens of window-sized intermediates per sample (CORONA at 128 x 128 x 20: ~150 MiB per window,
measured, in torch and in ONNX Runtime, whose CPU arena also keeps its peak). One call on a batch
of 32 windows peaked at 4.4 GiB (torch) and 5.5 GiB (ONNX Runtime) of process RSS; in chunks of
CHUNK_BYTES of input the peak is that of one chunk, and the time per sample is the same (a
window's convolutions and products are large; the per-call overhead is < 1 %).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CHUNK_BYTES = 4 * 2**20  # input bytes per call: one 128 x 128 x 20 I/Q window (2.5 MiB), 25 of 32 x 32
OUTPUT_GROWTH = 64  # batches this much below CHUNK_BYTES run as one call without learning the output size


def chunk_size(x: np.ndarray, max_bytes: int = CHUNK_BYTES) -> int:
    """How many samples of batch `x` (N, ...) one call takes: at least 1, at most N."""
    per_sample = max(1, x[:1].nbytes)
    return int(min(max(1, x.shape[0]), max(1, max_bytes // per_sample)))


def run_in_chunks(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                  max_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """fn(x) computed as fn of consecutive chunks of x's batch axis, concatenated (one call when
    the whole batch fits in `max_bytes`).

    A sample counts as the larger of its input and its output (a super-resolution engine's output
    is 64x its input: Deep-STORM at batch 8 peaked at 1295 MiB in ONNX Runtime by input size
    alone), so a batch that fits by input runs its first sample alone to learn the output's size,
    unless even a 64x larger output would fit (small models keep one call per batch).
    """
    n = chunk_size(x, max_bytes)
    if n < x.shape[0]:
        return np.concatenate([fn(x[i:i + n]) for i in range(0, x.shape[0], n)])
    if x.shape[0] == 1 or x.nbytes * OUTPUT_GROWTH <= max_bytes:
        return fn(x)
    first = fn(x[:1])
    n = max(1, int(max_bytes // max(first.nbytes, x[:1].nbytes, 1)))
    if n >= x.shape[0]:  # everything fits: one call for the rest
        return np.concatenate([first, fn(x[1:])])
    return np.concatenate([first, *(fn(x[i:i + n]) for i in range(1, x.shape[0], n))])
