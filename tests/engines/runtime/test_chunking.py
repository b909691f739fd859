"""A batch run in chunks equals the batch run at once; the chunk holds at least one sample."""

from __future__ import annotations

import numpy as np

from engines.runtime.chunking import chunk_size, run_in_chunks


def test_chunks_hold_at_most_max_bytes_and_at_least_one_sample():
    x = np.zeros((10, 256), np.float32)  # 1 KiB per sample
    assert chunk_size(x, 4096) == 4
    assert chunk_size(x, 100) == 1
    assert chunk_size(x, 10**9) == 10


def test_run_in_chunks_equals_one_call():
    x = np.random.default_rng(0).standard_normal((7, 3, 5)).astype(np.float32)
    calls = []

    def fn(c):
        calls.append(len(c))
        return 2 * c[:, :1]

    np.testing.assert_array_equal(run_in_chunks(fn, x, max_bytes=2 * x[:1].nbytes), 2 * x[:, :1])
    assert calls == [2, 2, 2, 1]


def test_a_sample_counts_as_its_larger_output_when_the_input_fits():
    x = np.ones((6, 4), np.float32)  # 16 B per sample in, 1 KiB out
    calls = []

    def fn(c):
        calls.append(len(c))
        return np.repeat(c, 64, axis=1)

    np.testing.assert_array_equal(run_in_chunks(fn, x, max_bytes=2048), np.ones((6, 256), np.float32))
    assert calls == [1, 2, 2, 1]
    calls.clear()
    run_in_chunks(fn, x, max_bytes=64 * x.nbytes)  # small enough for any output: one call
    assert calls == [6]
