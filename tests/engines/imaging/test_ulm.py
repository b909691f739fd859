"""ULM (seed Fig. 7): the PSF operator on the 8x grid, FISTA and the convolutional LISTA on one
ISTA step, the localizer, the matching metrics, the accumulator and the engines."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

import engines
from drivers.sim.ceus import CeusParams, CeusSimulator
from engines.errors import EngineInputError
from engines.imaging.ista import IstaFamily
from engines.imaging.ulm import (
    FACTOR,
    PSF_SIGMA_PX,
    Accumulator,
    Localizer,
    SuperResolution,
    ULMLista,
    build_network,
    fine_coordinates,
    fine_index,
    localization_positions,
    match,
    psf_operator,
    schur_bound,
    true_positions,
)
from engines.ops.operators import BlurDownsample
from engines.ops.spectral import spectral_norm


def test_separable_psf_operator_is_blur_downsample_with_the_outer_product_kernel():
    H = psf_operator(PSF_SIGMA_PX, (3, 4))
    B = BlurDownsample(H.kernel[0, 0].flip(0, 1), H.in_shape, FACTOR)  # the buffer holds k flipped
    g = torch.Generator().manual_seed(0)
    s, x = torch.randn(2, *H.in_shape, generator=g), torch.randn(2, *H.out_shape, generator=g)
    torch.testing.assert_close(H(s), B(s), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(H.adjoint(x), B.adjoint(x), atol=1e-4, rtol=1e-5)
    assert abs(float((H(s) * x).sum() - (s * H.adjoint(x)).sum())) < 1e-2  # <Hs, x> = <s, H'x>


def test_a_fine_grid_delta_is_seen_as_the_simulators_psf_at_its_coarse_position():
    H = psf_operator(PSF_SIGMA_PX, (16, 16))
    j = np.array([61, 70])  # fine pixel; the vessel-map convention puts it at (j + 0.5) / 8 - 0.5
    p = fine_coordinates(j)
    s = torch.zeros(1, *H.in_shape)
    s[0, j[0], j[1]] = 1.0
    r, c = np.arange(16)[:, None], np.arange(16)[None, :]
    psf = np.exp(-0.5 * ((r - p[0]) / PSF_SIGMA_PX[0]) ** 2 - 0.5 * ((c - p[1]) / PSF_SIGMA_PX[1]) ** 2)
    np.testing.assert_allclose(H(s)[0].numpy(), psf, atol=0.012)  # the kernel ends at 3 sigma: exp(-4.5)
    assert (fine_index(p) == j).all()


def test_schur_bound_is_an_upper_bound_of_the_operator_norm_and_nearly_tight():
    H = psf_operator(PSF_SIGMA_PX, (24, 24))
    L = spectral_norm(H, max_iter=300) ** 2
    assert L <= schur_bound(H.kernel[0, 0]) <= 1.15 * L


def test_ulm_lista_is_the_ista_step_on_any_frame_size():
    net = ULMLista(n_layers=3)
    assert isinstance(net, IstaFamily)
    for shape in ((5, 7), (8, 8)):
        x = torch.rand(2, *shape)
        its = net(x, return_all=True)
        assert len(its) == 4 and its[-1].shape == (2, shape[0] * FACTOR, shape[1] * FACTOR)
        assert (its[-1] >= 0).all()  # the non-negative shrinkage: intensities


def test_localizer_finds_one_peak_per_isolated_bubble_and_separates_two():
    s = torch.zeros(1, 64, 64)
    s[0, 10, 12] = 1.0
    s[0, 40, 30] = 0.8
    s[0, 40, 36] = 0.8  # 6 fine pixels apart: beyond the suppression radius of 4
    loc = Localizer(threshold=0.5, sigma=1.0, radius=4)(s)[0].numpy()
    assert sorted(map(tuple, np.argwhere(loc > 0))) == [(10, 12), (40, 30), (40, 36)]
    assert Localizer(threshold=0.9)(s)[0].sum() == 1  # only the unit bubble clears 0.9


def test_matching_counts_and_rmse():
    truth = np.array([[1.0, 1.0], [5.0, 5.0], [9.0, 2.0]])
    found = np.array([[1.1, 1.0], [5.0, 5.3], [3.0, 3.0]])
    m = match(found, truth, tolerance=0.5)
    assert (m.tp, m.fp, m.fn) == (2, 1, 1)
    assert m.jaccard == pytest.approx(0.5)
    assert m.rmse == pytest.approx(np.sqrt((0.01 + 0.09) / 2))
    empty = match(np.zeros((0, 2)), truth, 0.5)
    assert (empty.tp, empty.fn, empty.rmse == empty.rmse) == (0, 3, False)


def test_accumulator_sums_localization_images():
    acc = Accumulator((4, 4))
    a = np.zeros((4, 4), np.float32)
    a[1, 2] = 1
    acc.add(a)
    acc.add(np.stack([a, a]))
    assert acc.frames == 3 and acc.localizations == 3 and acc.map[1, 2] == 3


def _bubble_frame(seed: int = 4):
    sim = CeusSimulator(CeusParams(height=24, width=24, density=20, noise_std=0.0, seed=seed))
    f = sim.step()
    return f["bubbles"], true_positions(f["positions"], (24, 24))


def test_ulm_fista_engine_localizes_isolated_bubbles():
    engine = engines.load("ulm-fista", n_iter=150, threshold=0.0)
    assert engine.info.task == "super-resolution" and engine.info.family == "model-based"
    S, truth = _bubble_frame()
    assert len(truth) >= 1
    out = engine(S[None, None])
    assert out.shape == (1, 1, 1, 24 * FACTOR, 24 * FACTOR)
    found = localization_positions(out[0, 0, 0])
    # every true bubble has a localization within half a coarse pixel
    d = np.sqrt(((truth[:, None] - found[None]) ** 2).sum(-1)).min(1)
    assert (d < 0.5).all(), d
    with pytest.raises(EngineInputError, match="ulm-fista"):
        engine(np.zeros((1, 2, 2, 8, 8), np.float32))


def test_super_resolution_network_exports_to_onnx_with_the_same_localizations(tmp_path):
    net = build_network({"n_layers": 2}, threshold=0.0)
    with torch.no_grad():
        net.solver.c1.mul_(3.0)  # a livelier untrained net: more peaks to compare
    S, _ = _bubble_frame()
    x = torch.from_numpy(np.stack([S, 0.5 * S])[:, None])
    path = tmp_path / "ulm.onnx"
    torch.onnx.export(net.eval(), (x,), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=17, dynamo=False)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y"], {"x": x.numpy()})[0]
    with torch.no_grad():
        expected = net(x).numpy()
    assert expected.sum() > 0
    assert np.mean(y != expected) < 1e-4  # a peak tie may flip in float rounding


def test_super_resolution_needs_exactly_one_solver():
    with pytest.raises(ValueError, match="exactly one"):
        SuperResolution()
