"""SMLM figures of merit: matching, Jaccard, RMSE, the challenge's efficiency, localizations of an
SR image, and image correlation / NMSE against a truth image."""

import math

import numpy as np
import pytest

from engines.imaging.smlm_metrics import (
    efficiency,
    image_correlation,
    image_nmse,
    localize_image,
    match_nm,
    pooled,
    score_localizations,
    stack_truth,
    to_common_grid,
)


def test_perfect_localizations_score_jaccard_one_rmse_zero_and_efficiency_100():
    truth = np.array([[100.0, 200.0], [1500.0, 900.0]])
    s = score_localizations(truth.copy(), truth)
    assert (s.tp, s.fp, s.fn) == (2, 0, 0)
    assert s.jaccard == 1.0 and s.rmse_nm == 0.0 and s.efficiency == 100.0


def test_matching_is_one_to_one_within_250_nm_and_rmse_is_in_nm():
    truth = np.array([[0.0, 0.0], [1000.0, 0.0]])
    found = np.array([[30.0, 40.0], [20.0, 0.0], [1300.0, 0.0]])  # two near the first, one 300 nm off
    s = score_localizations(found, truth)
    assert (s.tp, s.fp, s.fn) == (1, 2, 1)  # the closer one matches; 300 nm is beyond the tolerance
    assert s.rmse_nm == pytest.approx(20.0)
    assert s.jaccard == pytest.approx(1 / 4)
    assert s.precision == pytest.approx(1 / 3) and s.recall == pytest.approx(1 / 2)


def test_efficiency_is_the_challenge_formula_with_one_percent_per_nm():
    assert efficiency(0.8, 30.0) == pytest.approx(100 - math.hypot(20.0, 30.0))
    assert efficiency(1.0, 0.0) == 100.0
    assert efficiency(0.0, float("nan")) == 0.0  # nothing matched


def test_pooled_matchings_add_counts_and_errors():
    a = match_nm(np.array([[0.0, 10.0]]), np.array([[0.0, 0.0]]))
    b = match_nm(np.zeros((0, 2)), np.array([[5.0, 5.0]]))
    m = pooled([a, b])
    assert (m.tp, m.fp, m.fn) == (1, 0, 1) and m.rmse == pytest.approx(10.0)


def test_stack_truth_is_the_distinct_emitters_on_in_any_frame():
    frames = [np.array([[1.0, 2.0], [3.0, 4.0]]), np.zeros((0, 2)), np.array([[3.0, 4.0], [5.0, 6.0]])]
    np.testing.assert_array_equal(stack_truth(frames), [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert stack_truth([]).shape == (0, 2)


def test_localize_image_finds_peaks_above_threshold_at_their_subpixel_position_in_nm():
    img = np.zeros((32, 32))
    img[10, 20] = 1.0
    img[10, 21] = 1.0  # a peak split between two pixels: centroid at column 20.5
    img[25, 5] = 0.3  # below the threshold
    found = localize_image(img, fine_nm=12.5, threshold=0.5)
    assert found.shape == (1, 2)
    np.testing.assert_allclose(found[0], [(20.5 + 0.5) * 12.5, (10 + 0.5) * 12.5])


def test_images_on_grids_4x_and_8x_are_compared_on_the_coarser_one():
    fine = np.arange(64.0).reshape(8, 8)
    a, b, f = to_common_grid(np.ones((4, 4)), fine)
    assert a.shape == b.shape == (4, 4) and f == 2 and b.sum() == fine.sum()
    with pytest.raises(ValueError, match="integer factor"):
        to_common_grid(np.ones((3, 3)), fine)


def test_image_correlation_and_nmse_ignore_the_intensity_scale_and_see_a_wrong_image():
    rng = np.random.default_rng(0)
    truth = np.zeros((64, 64))
    truth[20, :] = 1.0  # a horizontal filament on the 8x grid
    estimate = 7.0 * truth[::2, ::2].repeat(2, 0).repeat(2, 1)[::2, ::2] * 4  # the same on the 4x grid
    assert image_correlation(estimate, truth, truth_fine_nm=12.5) == pytest.approx(1.0, abs=1e-9)
    assert image_nmse(estimate, truth, truth_fine_nm=12.5) == pytest.approx(0.0, abs=1e-9)
    wrong = rng.random((32, 32))
    assert image_correlation(wrong, truth, 12.5) < 0.5
    assert image_nmse(wrong, truth, 12.5) > 0.5
