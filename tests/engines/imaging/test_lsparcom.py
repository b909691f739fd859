"""LSPARCOM: the radial polyphase convolutions, the percentile threshold, the coincidence with SPARCOM's
ISTA step, the weight count, the exportable graph (no large TopK, ORT = torch) and the shipped artifact."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

import engines
import exported_models
from engines.export import export_module
from engines.imaging.lsparcom import (
    LSPARCOM,
    RadialConvolution,
    StackSR,
    percentiles,
    polyphase_index,
    radial_profile,
    ring_index,
    weight_counts,
)
from engines.imaging.sparcom import SparcomFista, StackEngine

TENSORRT_TOPK_MAX = 3840
SHIPPED = exported_models.ROOT / "lsparcom"


def test_a_radial_kernel_is_its_profile_on_rings_of_equal_radius():
    ring = ring_index(5)
    assert ring[2, 2] == 0 and ring[2, 3] == ring[3, 2] == ring[1, 2] == 1 and ring[0, 0] == ring[4, 4]
    k = torch.exp(-torch.arange(-2, 3.0)[:, None] ** 2 - torch.arange(-2, 3.0)[None, :] ** 2)
    torch.testing.assert_close(radial_profile(k, 5)[ring], k.double())


def test_polyphase_convolution_equals_the_fine_grid_convolution():
    rc = RadialConvolution(2, 29, 4)
    torch.nn.init.normal_(rc.profile, generator=torch.Generator().manual_seed(0))
    s = torch.randn(3, 1, 40, 48, generator=torch.Generator().manual_seed(1))
    direct = F.conv2d(s, rc.kernel(1)[None, None], padding=14)
    poly = F.pixel_shuffle(rc.conv(F.pixel_unshuffle(s, 4), 1), 4)
    torch.testing.assert_close(poly, direct, rtol=1e-5, atol=1e-4)
    index, pad = polyphase_index(29, 4)
    assert index.shape == (16, 16, 9, 9) and pad == 4


def test_weight_count_is_the_published_architectures_9058_with_1166_free():
    assert weight_counts(LSPARCOM()) == {"total": 9058, "free": 1166}


def test_lsparcom_at_sparcoms_values_reproduces_sparcoms_ista_iterates():
    # a PSF whose kernel (13 x 13) and normal kernel (25 x 25) fit the 25 x 25 and 29 x 29 convolutions
    model = SparcomFista((48, 64), sigma_px=1.5, n_iter=11, lam=0.13, momentum=False)
    net = LSPARCOM.from_sparcom(model)
    g = torch.rand(2, 48, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ista = model(g, return_all=True)[1:]
        unfolded = net.iterates(g)
    assert len(unfolded) == len(ista) == 11  # the first step and the 10 folds
    for a, b in zip(unfolded, ista, strict=True):
        assert float((a - b).abs().max()) <= 5e-5 * float(b.abs().max())


def test_percentiles_from_the_small_sample_match_the_exact_ones_of_the_field():
    z = torch.randn(2, 16, 64, 64, generator=torch.Generator().manual_seed(0))  # a 256 x 256 fine field
    p1, p99 = percentiles(z)
    exact = torch.quantile(z[:, 0].flatten(1), torch.tensor([0.01, 0.99]), dim=1)
    torch.testing.assert_close(p1.flatten(), exact[0], atol=0.1, rtol=0)
    torch.testing.assert_close(p99.flatten(), exact[1], atol=0.1, rtol=0)


def test_the_network_is_positively_homogeneous_and_its_output_non_negative():
    net = LSPARCOM().eval()
    g = torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = net(g)
        # a pixel at its threshold moves with the last bit (the sigmoid is steep there): compare norms
        assert float((net(3.0 * g) - 3.0 * y).norm()) <= 1e-4 * float((3.0 * y).norm())
    assert float(y.min()) >= 0 and float(y.max()) > 0


def _topk_sizes(model: onnx.ModelProto) -> list[int]:
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    consts.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t)
                   for n in model.graph.node if n.op_type == "Constant"})
    return [int(np.asarray(consts[n.input[1]]).ravel()[0]) for n in model.graph.node if n.op_type == "TopK"]


def test_exported_graph_has_only_small_topk_and_matches_torch_at_another_size(tmp_path):
    module = StackSR(LSPARCOM()).eval()
    card = {"input": {"shape": ["N", 12, 1, 16, 16]}}
    info = StackEngine("lsparcom", "unfolded", module, 12, 4).info
    path = tmp_path / "model.onnx"
    export_module(module, card, path, tmp_path / "card.json", info)
    graph = onnx.load(str(path))
    sizes = _topk_sizes(graph)
    assert sizes and max(sizes) <= TENSORRT_TOPK_MAX  # TensorRT's TopK limit
    assert not any(n.op_type in ("Sort", "ArgSort") for n in graph.graph.node)
    x = np.random.default_rng(0).normal(100, 10, (2, 12, 1, 24, 20)).astype(np.float32)  # dynamic H, W
    (y,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert y.shape == (2, 1, 1, 96, 80)
    assert np.linalg.norm(y - expected) <= 1e-5 * np.linalg.norm(expected)


@pytest.mark.skipif(not (SHIPPED / "card.json").is_file(), reason="the lsparcom artifact is not trained here")
def test_shipped_artifact_loads_as_an_unfolded_stack_engine_on_torch_and_onnxruntime():
    card_window = engines.load("lsparcom", backend="torch").info.window
    x = np.random.default_rng(1).normal(100, 10, (1, card_window, 1, 16, 16)).astype(np.float32)
    for backend in ("torch", "onnxruntime"):
        e = engines.load("lsparcom", backend=backend)
        assert e.info.family == "unfolded" and e.info.task == "super-resolution"
        y = e(x)
        assert y.shape == (1, 1, 1, 64, 64) and (y >= 0).all()


@pytest.mark.skipif(not (SHIPPED / "card.json").is_file(), reason="the lsparcom artifact is not trained here")
def test_shipped_artifact_sees_the_filaments_better_than_its_diffraction_limited_input():
    from drivers.sim.smlm import SmlmParams, simulate_stack
    from engines.imaging.smlm_metrics import image_correlation
    from engines.imaging.sparcom import correlation_input

    engine = engines.load("lsparcom", backend="torch")
    stack = simulate_stack(SmlmParams(size=32, density=3.0), engine.info.window, seed=777)  # held out
    x = stack.frames[None, :, None].astype(np.float32)
    sr = engine(x)[0, 0, 0]
    variance = correlation_input(torch.from_numpy(x), 4)[0].numpy()
    gain = image_correlation(sr, stack.filament, 12.5) - image_correlation(variance, stack.filament, 12.5)
    assert gain > 0.05
