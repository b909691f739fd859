"""CORONA: the RPCA step with per-layer convolutions; starts as RPCA-ISTA; exports to ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from engines.imaging.corona import CORONA, complex_block, relative_mixed_shrinkage, relative_svt
from engines.imaging.rpca import LIPSCHITZ, RpcaFamily, RpcaLayer, linear_mix


def windows(N=2, T=20, H=12, W=10, seed=0):
    return torch.randn(N, T, 2, H, W, generator=torch.Generator().manual_seed(seed))


class RelativeRpcaIsta(RpcaFamily):
    """Model-based RPCA-ISTA (H1 = H2 = I, mu = 1/2) with CORONA's relative thresholds."""

    def __init__(self, n_layers: int, svt_fraction: torch.Tensor, shrink_fraction: torch.Tensor) -> None:
        super().__init__(n_layers)
        self.fractions = (svt_fraction, shrink_fraction)

    def layer(self, k: int) -> RpcaLayer:
        mu = 1.0 / LIPSCHITZ
        mix = linear_mix(lambda x: mu * x, lambda x: mu * x, lambda x: -mu * x, lambda x: (1 - mu) * x,
                         lambda x: (1 - mu) * x, lambda x: -mu * x)
        a, b = self.fractions
        return RpcaLayer(mix, prox_L=lambda x: relative_svt(x, a),
                         prox_S=lambda x: relative_mixed_shrinkage(x, b))


def test_the_anchors_architecture_about_1700_parameters():
    net = CORONA()
    assert net.kernel_sizes == [5, 5, 5, 3, 3, 3, 3, 3, 3, 3]
    assert sum(p.numel() for p in net.parameters()) == 3 * 6 * 2 * 25 + 7 * 6 * 2 * 9 + 2 * 10  # 1,676


def test_corona_initialized_at_model_based_values_reproduces_rpca_ista():
    net = CORONA(n_layers=4)
    reference = RelativeRpcaIsta(4, torch.sigmoid(net.a[0]), torch.sigmoid(net.b[0]))
    D = windows()
    with torch.no_grad():
        for (L, S), (L_ref, S_ref) in zip(net.iterates(D), reference.iterates(D), strict=True):
            torch.testing.assert_close(L, L_ref, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(S, S_ref, atol=1e-4, rtol=1e-4)


def test_complex_block_multiplies_complex_numbers():
    w = torch.tensor([[[2.0]], [[3.0]]])  # 2 + 3i as a 1 x 1 kernel
    x = torch.tensor([1.0, -4.0])  # 1 - 4i
    y = complex_block(w)[:, :, 0, 0] @ x
    z = complex(2, 3) * complex(1, -4)
    assert y.tolist() == [z.real, z.imag]


def test_corona_is_scale_equivariant_and_returns_every_layer():
    net = CORONA()
    D = windows(N=1)
    with torch.no_grad():
        its = net.iterates(D)
        torch.testing.assert_close(net(5.0 * D), 5.0 * its[-1][1], atol=1e-4, rtol=1e-4)
    assert len(its) == 10 and its[0][0].shape == D.shape


def test_every_parameter_gets_a_gradient_through_the_pair_output():
    net = CORONA(n_layers=3)
    net.pair_output = True
    out = net(windows(N=2, H=8, W=8))
    assert out.shape == (2, 2, 20, 2, 8, 8)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_exports_to_onnx_and_runs_any_size_in_onnxruntime(tmp_path):
    net = CORONA(n_layers=4).eval()  # 5 x 5 and 3 x 3 layers; 10 layers export alike, only slower
    with torch.no_grad():  # leave the delta initialization: trained kernels are not deltas
        for w in net.kernels:
            w.add_(0.01 * torch.randn(w.shape, generator=torch.Generator().manual_seed(1)))
    path = tmp_path / "corona.onnx"
    axes = {0: "N", 3: "H", 4: "W"}
    torch.onnx.export(net, (windows(N=1, H=16, W=16),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": axes, "y": axes})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    D = windows(N=2, H=24, W=20, seed=2)
    y = session.run(["y"], {"x": D.numpy()})[0]
    with torch.no_grad():
        expected = net(D).numpy()
    assert y.shape == expected.shape
    assert np.abs(y - expected).max() <= 1e-3 * np.abs(expected).max()


def test_the_fast_layers_compute_the_generic_rpca_steps():
    """`CORONA.iterates` (data terms of all layers in one convolution per kernel size, no
    Casorati transposes) against the generic RpcaFamily loop over `layer(k)`, with random
    (trained-like) kernels and thresholds so every term counts."""
    torch.manual_seed(3)
    net = CORONA(n_layers=5, large_layers=2)
    with torch.no_grad():
        for k in net.kernels:
            k.add_(0.1 * torch.randn_like(k))
        net.a.add_(torch.randn(5))
        net.b.add_(torch.randn(5))
    D = windows(N=3, H=9, W=11, seed=4)
    with torch.no_grad():
        fast, generic = net.iterates(D), RpcaFamily.iterates(net, D)
    assert len(fast) == 5
    for (L1, S1), (L2, S2) in zip(fast, generic, strict=True):
        assert torch.allclose(L1, L2, rtol=1e-4, atol=1e-5 * float(L2.abs().max()))
        assert torch.allclose(S1, S2, rtol=1e-4, atol=1e-5 * float(S2.abs().max()))
        assert float(S2.abs().max()) > 0  # the shrinkage keeps something: the check is not vacuous
    assert len(net.iterates(D, n_layers=2)) == 2
