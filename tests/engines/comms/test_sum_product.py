"""The one trellis recursion (engines/comms/sum_product.py) against closed forms and brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import norm

import engines
from drivers.sim.isi import IsiParams, IsiSimulator, exponential_taps
from engines.comms.sum_product import (
    ChannelFactors,
    Trellis,
    forward_backward,
    soft_symbols,
    symbol_error_rate,
)
from engines.errors import EngineInputError

GAMMAS = [round(0.1 * k, 1) for k in range(1, 21)]
# ANCHORS.md: symbol-wise MAP with perfect CSI, the mean over the 20 channels
ANCHOR_MAP = {-6: 0.296, 0: 0.158, 4: 0.055, 6: 0.0196, 8: 4.1e-3, 10: 4.4e-4}
ANCHOR_HALF_UNIT = {-6: 5e-4, 0: 5e-4, 4: 5e-4, 6: 5e-5, 8: 5e-5, 10: 0.15 * 4.4e-4}  # 10 dB: +-15 %


def brute_force(y, h, sigma2, alphabet=(-1.0, 1.0), channel="awgn", snr_db=0.0):
    """Exact P(s_i = a1 | y) and max-log ratios by enumerating every symbol sequence (history included)."""
    L, B = len(h), len(y)
    seqs = np.array(list(itertools.product(alphabet, repeat=L - 1 + B)))
    mu = np.stack([np.convolve(q, h, "valid") for q in seqs])
    if channel == "awgn":
        lp = -((y - mu) ** 2).sum(1) / (2 * sigma2)
    else:
        lam = np.maximum(math.sqrt(10 ** (snr_db / 10)) * mu + 1, 1e-12)
        lp = (y * np.log(lam) - lam).sum(1)
    w = np.exp(lp - lp.max())
    one = seqs[:, L - 1:] == alphabet[1]
    p1 = (w[:, None] * one).sum(0) / w.sum()
    maxlog = np.array([np.log(w[one[:, i]].max()) - np.log(w[~one[:, i]].max()) for i in range(B)])
    return p1, maxlog


@pytest.mark.parametrize("channel", ["awgn", "poisson"])
@pytest.mark.parametrize("chunk", [None, 1, 3, 10])
def test_sum_product_posteriors_and_max_product_max_marginals_equal_brute_force_enumeration(channel, chunk):
    rng = np.random.default_rng(1)
    h, snr_db = exponential_taps(4, 0.4), 3.0
    alphabet = (-1.0, 1.0) if channel == "awgn" else (0.0, 1.0)
    p = IsiParams(gamma=0.4, snr_db=snr_db, channel=channel, block=10, seed=int(rng.integers(100)))
    y, _, _ = IsiSimulator(p).blocks(1)
    trellis = Trellis(4, alphabet)
    log_f = ChannelFactors(trellis, h, snr_db, channel).log_likelihood(y)
    p1, maxlog = brute_force(y[0], h, p.sigma2, alphabet, channel, snr_db)
    llr, _ = forward_backward(log_f, trellis, trellis.uniform_log_transition(), None, "sum", chunk)
    np.testing.assert_allclose(1 / (1 + np.exp(-llr[0])), p1, atol=1e-12)
    llr, _ = forward_backward(log_f, trellis, trellis.uniform_log_transition(), None, "max", chunk)
    np.testing.assert_allclose(llr[0], maxlog, atol=1e-9)


def test_the_forward_message_carried_across_blocks_is_the_long_streams_forward_message():
    trellis = Trellis(4)
    y, _, _ = IsiSimulator(IsiParams(gamma=0.3, snr_db=2.0, block=60, seed=3)).blocks(3)
    log_f = ChannelFactors(trellis, exponential_taps(4, 0.3), 2.0).log_likelihood(y.reshape(1, -1))
    logT = trellis.uniform_log_transition()
    whole, _ = forward_backward(log_f, trellis, logT)
    a = None
    for k in range(3):  # the stream block by block, as a live detector sees it
        llr, a = forward_backward(log_f[:, 60 * k:60 * (k + 1)], trellis, logT, a)
        _, expected = forward_backward(log_f[:, :60 * (k + 1)], trellis, logT)
        np.testing.assert_allclose(a, expected, rtol=1e-10)
        # deep inside a block the later blocks' evidence no longer matters
        np.testing.assert_allclose(llr[0, :25], whole[0, 60 * k:60 * k + 25], atol=1e-5)


def test_without_isi_the_ser_is_q_of_root_snr_within_5_percent_at_0_and_4_db():
    for snr, q in ((0, 0.1587), (4, 0.0565)):
        assert norm.sf(math.sqrt(10 ** (snr / 10))) == pytest.approx(q, abs=1e-4)
        p = IsiParams(taps=(1.0, 0.0, 0.0, 0.0), snr_db=snr, block=500, seed=10 + snr)
        y, s, _ = IsiSimulator(p).blocks(400)  # 200,000 symbols: 1.0 % (4 dB) relative std
        bcjr = engines.load("bcjr", taps=[1.0, 0.0, 0.0, 0.0], snr_db=snr)
        bcjr.reset(len(y))
        assert symbol_error_rate(bcjr.step(y).mean, s, bcjr.alphabet) == pytest.approx(q, rel=0.05)


def test_bcjr_with_perfect_csi_matches_the_anchors_symbol_wise_map_within_monte_carlo_error():
    for snr, anchor in ANCHOR_MAP.items():
        sers, n = [], 0
        for g in GAMMAS:
            p = IsiParams(gamma=g, snr_db=snr, block=500, seed=100 + int(g * 10))
            y, s, _ = IsiSimulator(p).blocks(20)
            bcjr = engines.load("bcjr", gamma=g, snr_db=snr)
            bcjr.reset(len(y))
            sers.append(symbol_error_rate(bcjr.step(y).mean, s, bcjr.alphabet))
            n += s.size
        ser = float(np.mean(sers))  # 10,000 symbols per channel, 200,000 per SNR
        mc = math.sqrt(ser * (1 - ser) / n)
        assert abs(ser - anchor) <= 3 * mc + ANCHOR_HALF_UNIT[snr], (snr, ser, anchor)
        mf_bound = np.mean([norm.sf(np.linalg.norm(exponential_taps(4, g)) / math.sqrt(10 ** (-snr / 10)))
                            for g in GAMMAS])
        assert ser >= mf_bound


def test_viterbi_decisions_are_the_map_sequence_and_bcjr_decisions_the_symbol_wise_map():
    for k in range(5):
        h, sigma2 = exponential_taps(4, 0.2), 1.0
        y, _, _ = IsiSimulator(IsiParams(gamma=0.2, snr_db=0.0, block=9, seed=k)).blocks(1)
        p1, maxlog = brute_force(y[0], h, sigma2)
        for name, expected in (("viterbi", np.sign(maxlog)), ("bcjr", np.sign(p1 - 0.5))):
            d = engines.load(name, gamma=0.2, snr_db=0.0, block=9)
            np.testing.assert_array_equal(np.sign(d.step(y).mean[0]), expected)


def test_csi_uncertainty_draws_new_taps_every_block_and_costs_ser_at_high_snr():
    y, s, _ = IsiSimulator(IsiParams(gamma=0.5, snr_db=8.0, seed=7)).blocks(40)
    perfect = engines.load("bcjr", gamma=0.5, snr_db=8.0)
    uncertain = engines.load("bcjr", gamma=0.5, snr_db=8.0, csi_error=0.1)
    taps = uncertain.factors.block_taps(2)
    assert not np.allclose(taps[0], taps[1]) and not np.allclose(taps[0], exponential_taps(4, 0.5))
    perfect.reset(40)
    uncertain.reset(40)
    worse, best = (symbol_error_rate(d.step(y).mean, s, (-1, 1)) for d in (uncertain, perfect))
    assert worse > 2 * best


def test_soft_outputs_are_posterior_means_in_the_channel_alphabet():
    llr = np.array([-50.0, 0.0, 50.0])
    np.testing.assert_allclose(soft_symbols(llr, (-1.0, 1.0)), [-1, 0, 1], atol=1e-12)
    np.testing.assert_allclose(soft_symbols(llr, (0.0, 1.0)), [0, 0.5, 1], atol=1e-12)
    assert symbol_error_rate(np.array([0.4, 0.6]), np.array([0.0, 0.0]), (0.0, 1.0)) == 0.5


@pytest.mark.parametrize("y, problem", [
    (np.zeros((1, 499)), "expected blocks y of shape (1, 500) (block length 500), got (1, 499)"),
    (np.full((1, 500), np.nan), "input holds 500 non-finite value(s)"),
])
def test_a_wrong_block_length_or_nan_samples_are_a_one_line_error_naming_the_detector(y, problem):
    with pytest.raises(EngineInputError) as e:
        engines.load("bcjr").step(y)
    assert str(e.value).startswith("bcjr: ") and problem in str(e.value) and "\n" not in str(e.value)


def test_the_detectors_state_is_unchanged_by_a_rejected_block():
    d = engines.load("viterbi", block=20)
    y, _, _ = IsiSimulator(IsiParams(block=20, seed=1)).blocks(2)
    d.step(y[:1])
    alpha = d.alpha.copy()
    with pytest.raises(EngineInputError):
        d.step(np.full((1, 20), np.inf))
    np.testing.assert_array_equal(d.alpha, alpha)
