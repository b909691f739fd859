"""The exportable SVT (matrix products only) against torch.linalg.svd, and in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from engines.ops.shrinkage import svt
from engines.ops.svt_exportable import (
    gram_embedding,
    inverse_sqrt,
    matrix_sign,
    svt_from_gram,
    top_eigenvalue,
)


def clutter_like(N: int = 4, M: int = 256, T: int = 20, seed: int = 0) -> torch.Tensor:
    """Complex (N, M, T): a strong rank-3 part (singular values ~ 100, 30, 10) plus white noise,
    the spectrum of a CEUS Casorati matrix (tissue, then bubbles and noise)."""
    g = torch.Generator().manual_seed(seed)

    def cn(*shape):
        re, im = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
        return torch.complex(re, im).to(torch.complex128)

    U, _ = torch.linalg.qr(cn(N, M, 3))
    V, _ = torch.linalg.qr(cn(N, T, 3))
    s = torch.tensor([100.0, 30.0, 10.0], dtype=torch.float64)
    return (U * s) @ V.mH + 0.1 * cn(N, M, T)


def relative_error(Z: torch.Tensor, tau: torch.Tensor) -> float:
    """max over the batch of ||SVT_exportable - SVT_svd||_F / ||SVT_svd||_F, float32 inputs."""
    ref = svt(Z, tau[:, None])
    r, i = svt_from_gram(Z.real.float(), Z.imag.float(), tau.float())
    out = torch.complex(r.double(), i.double())
    return float(((out - ref).abs().square().sum((1, 2)) / ref.abs().square().sum((1, 2))).sqrt().max())


@pytest.mark.parametrize("fraction", [0.005, 0.02, 0.1, 0.4, 0.9])
def test_svt_from_gram_matches_torch_svd_to_float32_rounding(fraction):
    Z = clutter_like()
    sigma_max = torch.linalg.svdvals(Z)[:, 0]
    assert relative_error(Z, fraction * sigma_max) < 1e-4  # measured: ~1e-6


def test_a_threshold_at_a_singular_value_still_matches():
    # sign(G - tau^2 I) is unconverged at that eigenvalue, but there g(lambda) = 0
    Z = clutter_like(seed=1)
    sigma = torch.linalg.svdvals(Z)
    assert relative_error(Z, sigma[:, 1] * (1 + 1e-6)) < 1e-3
    assert relative_error(Z, sigma[:, 2]) < 1e-3


def test_threshold_above_every_singular_value_gives_zero():
    Z = clutter_like(N=2)
    r, i = svt_from_gram(Z.real.float(), Z.imag.float(), 2 * torch.linalg.svdvals(Z)[:, 0].float())
    assert r.abs().max() < 1e-3 and i.abs().max() < 1e-3


def test_gram_embedding_is_the_real_form_of_Z_hermitian_Z():
    Z = clutter_like(N=2, M=30, T=5)
    G = Z.mH @ Z
    E = gram_embedding(Z.real, Z.imag)
    torch.testing.assert_close(E[:, :5, :5], G.real)
    torch.testing.assert_close(E[:, 5:, :5], G.imag)
    torch.testing.assert_close(E[:, :5, 5:], -G.imag)


def test_matrix_sign_and_inverse_sqrt_match_eigh():
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(3, 8, 8, generator=g, dtype=torch.float64))
    lam = torch.tensor([5.0, 2.0, 1.0, 0.5, -0.3, -1.0, -2.0, -4.0], dtype=torch.float64)
    A = (Q * lam) @ Q.mT
    torch.testing.assert_close(matrix_sign(A), (Q * lam.sign()) @ Q.mT, atol=1e-6, rtol=0)
    pos = lam.abs() + 0.1
    M = (Q * pos) @ Q.mT
    torch.testing.assert_close(inverse_sqrt(M), (Q * pos.rsqrt()) @ Q.mT, atol=1e-6, rtol=0)


def test_top_eigenvalue_of_the_gram_embedding_is_the_squared_top_singular_value():
    Z = clutter_like()
    estimate = top_eigenvalue(gram_embedding(Z.real, Z.imag))
    torch.testing.assert_close(estimate.sqrt(), torch.linalg.svdvals(Z)[:, 0], rtol=1e-6, atol=0)


class _Svt(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, M, 2T): [real | imag]
        T = x.shape[-1] // 2
        Zr, Zi = x[..., :T], x[..., T:]
        tau = 0.05 * top_eigenvalue(gram_embedding(Zr, Zi)).sqrt()
        r, i = svt_from_gram(Zr, Zi, tau)
        return torch.cat([r, i], dim=-1)


def test_exports_to_onnx_and_runs_in_onnxruntime_with_parity(tmp_path):
    Z = clutter_like(N=3, M=64)
    x = torch.cat([Z.real, Z.imag], dim=-1).float()
    path = tmp_path / "svt.onnx"
    torch.onnx.export(_Svt(), (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = session.run(["y"], {"x": x[:2].numpy()})[0]
    expected = _Svt()(x[:2]).numpy()
    assert np.abs(y - expected).max() <= 1e-4 * np.abs(expected).max()
