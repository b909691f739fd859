"""CoronaFast: CORONA computed I/Q-interleaved, one layer at a time: the same function (issue 15)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engines.imaging.corona import CORONA, frames_relative_mixed_shrinkage, frames_relative_svt
from engines.imaging.corona_fast import CoronaFast, interleave, interleaved_mixed_shrinkage, interleaved_svt


def windows(N=2, T=20, H=12, W=10, seed=0):
    return torch.randn(N, T, 2, H, W, generator=torch.Generator().manual_seed(seed))


def trained_like(net: CORONA, seed: int = 1) -> CORONA:
    """Kernels and thresholds away from their delta initialization (every tap matters)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in net.kernels:
            w.add_(0.05 * torch.randn(w.shape, generator=g))
        net.a.add_(torch.randn(net.a.shape, generator=g))
        net.b.add_(torch.randn(net.b.shape, generator=g))
    return net


def to_interleaved(x):
    return x.permute(0, 1, 3, 4, 2).contiguous()


def test_interleaved_svt_and_shrinkage_equal_coronas_frame_major_ones():
    x, f = windows(), torch.tensor(0.3)
    torch.testing.assert_close(interleaved_svt(to_interleaved(x), f),
                               to_interleaved(frames_relative_svt(x, f)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(interleaved_mixed_shrinkage(to_interleaved(x), f),
                               to_interleaved(frames_relative_mixed_shrinkage(x, f)), atol=1e-6, rtol=1e-5)


def test_interleave_is_a_last_axis_concatenation():
    parts = [windows(seed=s).permute(0, 1, 3, 4, 2) for s in range(3)]
    assert torch.equal(interleave(parts), torch.cat(parts, dim=-1))


def test_corona_fast_with_coronas_weights_is_corona():
    reference = trained_like(CORONA(n_layers=5, large_layers=2)).eval()
    fast = CoronaFast(n_layers=5, large_layers=2)
    fast.load_state_dict(reference.state_dict())
    D = windows()
    with torch.inference_mode():
        for (L, S), (L_ref, S_ref) in zip(fast.eval().iterates(D), reference.iterates(D), strict=True):
            torch.testing.assert_close(L, L_ref, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(S, S_ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fast(D), reference(D), atol=1e-5, rtol=1e-4)
        fast.pair_output = True
        torch.testing.assert_close(fast(D)[:, 1], reference(D), atol=1e-5, rtol=1e-4)


def test_fewer_svt_iterations_change_a_trained_like_corona_little():
    """The student's 12 / 10 / 4 Newton-Schulz iterations against the accurate 40 / 24 / 6."""
    accurate = trained_like(CoronaFast(n_layers=4)).eval()
    cheap = CoronaFast(n_layers=4, sign_iterations=12, inv_sqrt_iterations=10, power_squarings=4).eval()
    cheap.load_state_dict(accurate.state_dict())
    D = windows(H=16, W=16)
    with torch.inference_mode():
        S, S_cheap = accurate(D), cheap(D)
    assert float((S - S_cheap).square().mean() / S.square().mean()) < 0.01


def test_bad_svt_iteration_counts_are_refused():
    with pytest.raises(ValueError, match="iteration counts"):
        CoronaFast(sign_iterations=0)


def test_corona_fast_exports_to_onnx_runtime_with_parity(tmp_path):
    net = trained_like(CoronaFast(n_layers=3, sign_iterations=12, inv_sqrt_iterations=10)).eval()
    D = windows(N=1, H=16, W=16)
    path = tmp_path / "fast.onnx"
    torch.onnx.export(net, (D,), str(path), input_names=["x"], output_names=["y"], opset_version=17,
                      dynamo=False)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": D.numpy()})[0]
    with torch.inference_mode():
        np.testing.assert_allclose(y, net(D).numpy(), atol=1e-5, rtol=1e-4)
