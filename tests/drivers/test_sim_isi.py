"""The ISI channel simulator and live source (drivers/sim/isi.py): seed Fig. 9's channel as data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from drivers import SourceEnded, SourceError, open_source
from drivers.base import Sample
from drivers.sim.isi import IsiParams, IsiSimulator, IsiStream, de_bruijn, exponential_taps, pilot_symbols


def test_the_stream_does_not_depend_on_how_many_blocks_are_asked_for_at_a_time():
    p = IsiParams(seed=4, block=50, vary=True, perturb=0.1, pilots=7)
    a = IsiStream(p)
    parts = [a.advance(2), a.advance(3)]
    whole = IsiStream(p).advance(5)
    for k in range(3):
        np.testing.assert_array_equal(np.concatenate([parts[0][k], parts[1][k]]), whole[k])
    other = IsiStream(IsiParams(seed=5, block=50)).advance(5)
    assert not np.array_equal(other[0], whole[0])


def test_received_samples_are_the_taps_convolved_with_the_symbols_plus_noise_of_variance_sigma2():
    p = IsiParams(gamma=0.5, snr_db=3.0, block=1000, seed=1)
    y, s = IsiSimulator(p).symbols(20_000)
    h = exponential_taps(4, 0.5)
    assert np.allclose(h, [1, math.exp(-0.5), math.exp(-1), math.exp(-1.5)])
    # within the stream (the first 3 need the history before block 0): y_i - sum_l h_l s_{i-l+1}
    w = y[3:] - np.convolve(s, h, mode="valid")
    assert set(np.unique(s)) == {-1.0, 1.0} and abs(s.mean()) < 0.03
    assert np.var(w) == pytest.approx(10 ** (-0.3), rel=0.03) and abs(w.mean()) < 0.01


def test_the_channel_memory_spans_block_boundaries():
    p = IsiParams(gamma=0.1, snr_db=60.0, block=10, seed=2)
    y, s, _ = IsiSimulator(p).blocks(3)
    flat_y, flat_s = y.reshape(-1), s.reshape(-1)
    expected = np.convolve(flat_s, exponential_taps(4, 0.1), mode="valid")
    np.testing.assert_allclose(flat_y[3:], expected, atol=1e-2)  # 60 dB: noise std 1e-3


def test_the_poisson_variant_sends_on_off_keying_and_counts_with_the_stated_mean():
    p = IsiParams(gamma=1.0, snr_db=6.0, channel="poisson", block=2000, seed=3)
    y, s = IsiSimulator(p).symbols(40_000)
    assert set(np.unique(s)) == {0.0, 1.0} and np.all(y == np.round(y)) and y.min() >= 0
    lam = math.sqrt(10 ** 0.6) * np.convolve(s, exponential_taps(4, 1.0), mode="valid") + 1
    assert np.mean(y[3:]) == pytest.approx(np.mean(lam), rel=0.02)
    assert np.var(y[3:] - lam) == pytest.approx(np.mean(lam), rel=0.05)  # Poisson: variance = mean


def test_time_varying_taps_follow_viterbinets_periods_and_perturbed_taps_vary_per_block():
    p = IsiParams(gamma=0.2, vary=True, block=20, seed=1)
    _, _, h = IsiSimulator(p).blocks(52)
    base = exponential_taps(4, 0.2)
    np.testing.assert_allclose(h[0], base)  # 0.8 + 0.2 cos(0)
    np.testing.assert_allclose(h[51, 0], base[0])  # the first tap's period is 51 blocks
    assert h[:, 3].min() == pytest.approx(0.6 * base[3], rel=0.01)
    _, _, hp = IsiSimulator(IsiParams(gamma=0.2, perturb=0.1, block=20, seed=1)).blocks(2000)
    rel = hp / base - 1
    assert np.std(rel) == pytest.approx(math.sqrt(0.1), rel=0.05) and abs(rel.mean()) < 0.02


def test_pilots_open_every_block_and_visit_every_channel_state_equally_often():
    p = IsiParams(pilots=51, block=100, seed=6)
    _, s, _ = IsiSimulator(p).blocks(3)
    pilots = pilot_symbols(51)
    assert p.model()["pilots"] == pilots.tolist()
    for block in s:
        np.testing.assert_array_equal(block[:51], pilots)
    cycle = de_bruijn(4)
    windows = {tuple(np.roll(cycle, -k)[:4]) for k in range(16)}
    assert len(cycle) == 16 and len(windows) == 16


def test_live_source_gives_blocks_with_symbol_truth_and_ends_after_n():
    src = open_source("sim:isi?gamma=0.3&snr=5&block=200&rate=50&n=3&speed=0&seed=2")
    with src:
        info = src.info
        assert info.kind == "samples" and info.shape == (200,) and info.rate_hz == 50
        assert info.truth_shapes == {"symbols": (200,), "taps": (4,)}
        assert info.meta["model"]["snr_db"] == 5 and len(info.meta["model"]["taps"]) == 4
        assert info.meta["symbol_rate_hz"] == 10_000
        items = [src.read(1.0) for _ in range(3)]
        with pytest.raises(SourceEnded):
            src.read(1.0)
    assert all(isinstance(it, Sample) for it in items)
    assert [it.index for it in items] == [0, 1, 2] and items[2].t == pytest.approx(0.04)
    assert items[0].value.shape == (200,) and items[0].value.dtype == np.float64
    y, s, _ = IsiSimulator(IsiParams(gamma=0.3, snr_db=5, block=200, seed=2)).blocks(3)
    np.testing.assert_array_equal(items[1].value, y[1])
    np.testing.assert_array_equal(items[1].truth["symbols"], s[1])


@pytest.mark.parametrize("uri, problem", [
    ("sim:isi?snr=high", "snr='high' is not a valid float"),
    ("sim:isi?taps=1,x", "taps='1,x' is not a comma-separated list"),
    ("sim:isi?taps=1,0.5&memory=4", "taps must be 4 finite numbers"),
    ("sim:isi?pilots=600&block=500", "pilots must be within 0..500"),
    ("sim:isi?channel=rayleigh", "channel must be one of awgn, poisson"),
    ("sim:isi?gama=0.2", "unknown parameter(s) gama"),
    ("sim:isi?rate=0", "rate must be a finite number > 0"),
])
def test_a_malformed_uri_is_a_one_line_error_naming_the_uri_and_the_problem(uri, problem):
    with pytest.raises(SourceError) as e:
        open_source(uri)
    assert uri in str(e.value) and problem in str(e.value) and "\n" not in str(e.value)


def test_explicit_taps_set_the_memory():
    src = open_source("sim:isi?taps=1,0,0&speed=0")
    src.open()
    assert src.info.meta["model"]["taps"] == [1.0, 0.0, 0.0] and src.info.meta["model"]["memory"] == 3
