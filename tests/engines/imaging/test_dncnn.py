"""The plug-and-play denoiser (seed Example 20): a residual network with a noise-level input, its engine's
contract, and the shipped artifact (its ONNX graph matches torch; it denoises the held-out image)."""

import numpy as np
import pytest
import torch

import engines
import exported_models
from engines.errors import EngineInputError
from engines.imaging.dncnn import DnCNN

SHIPPED = exported_models.ROOT / "dncnn"


def test_network_is_residual_and_takes_any_size_and_noise_level():
    net = DnCNN(depth=3, width=4)
    for p in net.residual[-1].parameters():
        torch.nn.init.zeros_(p)  # a zero residual: h(z; alpha) = z
    z = torch.rand(2, 1, 7, 9)
    torch.testing.assert_close(net.denoise(z, torch.tensor([0.1, 0.2])), z)
    assert net(torch.rand(3, 1, 2, 5, 6)).shape == (3, 1, 1, 5, 6)


def test_bad_sizes_are_an_error():
    with pytest.raises(ValueError, match="depth"):
        DnCNN(depth=1)


def test_shipped_denoiser_engine_rejects_a_frame_without_its_noise_level():
    engine = engines.load("dncnn", backend="torch")
    with pytest.raises(EngineInputError, match="dncnn.*noise level"):
        engine(np.zeros((1, 1, 1, 8, 8), np.float32))


def test_shipped_denoiser_onnx_graph_matches_torch():
    pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.random((2, 1, 1, 40, 48)), np.full((2, 1, 1, 40, 48), 0.1)], axis=2)
    x = x.astype(np.float32)
    ref = engines.load("dncnn", backend="torch")(x)
    out = engines.load("dncnn", backend="onnxruntime")(x)
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_shipped_denoiser_beats_the_noisy_held_out_image_by_its_card():
    import json

    card = json.loads((SHIPPED / "card.json").read_text(encoding="utf-8"))
    for s in ("15", "25", "50"):
        m = card["metrics"][f"sigma_{s}"]
        assert m["denoised_psnr_db"] > m["noisy_psnr_db"] + 5
