"""Shrinkage (proximal) operators, linear operators with adjoints, the spectral norm (engines/ops)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from engines.ops import (
    Adjoint,
    BlurDownsample,
    Convolution2d,
    MatrixOperator,
    mixed_l12_shrinkage,
    soft_threshold,
    spectral_norm,
    support_selection,
    svt,
)

torch.set_num_threads(1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian_psf(size: int, sigma: float, dtype=torch.float64) -> torch.Tensor:
    r = torch.arange(size, dtype=dtype) - (size - 1) / 2
    k = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return k / k.sum()


def operators(dtype):
    g = gen(1)
    return {
        "dense": MatrixOperator(torch.randn(30, 45, generator=g, dtype=dtype)),
        "blur-psf": Convolution2d(gaussian_psf(5, 1.2, dtype), (17, 20)),
        "conv-even-kernel": Convolution2d(torch.randn(4, 6, generator=g, dtype=dtype), (12, 9)),
        "blur-downsample-2": BlurDownsample(gaussian_psf(7, 1.5, dtype), (16, 16), factor=2),
        "blur-downsample-3-uneven": BlurDownsample(torch.randn(4, 5, generator=g, dtype=dtype), (13, 17), 3),
    }


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.conj() * b).sum()


# --- adjoints -------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(operators(torch.float64)))
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_adjoint_satisfies_inner_product_identity(name, dtype, rtol):
    A = operators(dtype)[name]
    g = gen(2)
    s = torch.randn((3, *A.in_shape), generator=g, dtype=dtype)
    x = torch.randn((3, *A.out_shape), generator=g, dtype=dtype)
    lhs, rhs = inner(A(s), x), inner(s, A.T(x))  # <A s, x> = <s, A' x>
    scale = A(s).norm() * x.norm()
    assert abs(float(lhs - rhs)) <= rtol * float(scale)
    assert A(s).shape == (3, *A.out_shape) and A.adjoint(x).shape == (3, *A.in_shape)


def test_complex_dense_adjoint_is_the_conjugate_transpose():
    g = gen(3)
    H = torch.randn(8, 11, generator=g, dtype=torch.complex128)
    A = MatrixOperator(H)
    s = torch.randn(4, 11, generator=g, dtype=torch.complex128)
    x = torch.randn(4, 8, generator=g, dtype=torch.complex128)
    torch.testing.assert_close(inner(A(s), x), inner(s, A.T(x)), rtol=1e-12, atol=0)
    torch.testing.assert_close(A.T.matrix(), H.conj().mT, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", list(operators(torch.float64)))
def test_adjoint_operator_is_the_transposed_matrix(name):
    A = operators(torch.float64)[name]
    assert isinstance(A.T, Adjoint) and A.T.T is A
    assert A.T.in_shape == A.out_shape and A.T.out_shape == A.in_shape
    torch.testing.assert_close(A.T.matrix(), A.matrix().mT, rtol=0, atol=1e-13)


def test_convolution_matches_scipy_convolve2d_same():
    g = gen(4)
    k = torch.randn(5, 3, generator=g, dtype=torch.float64)
    s = torch.randn(2, 14, 11, generator=g, dtype=torch.float64)
    out = Convolution2d(k, (14, 11))(s).numpy()
    for i in range(2):
        ref = scipy.signal.convolve2d(s[i].numpy(), k.numpy(), mode="same", boundary="fill")
        np.testing.assert_allclose(out[i], ref, rtol=0, atol=1e-12)


def test_blur_downsample_is_the_blur_sampled_every_factor_pixels():
    k = gaussian_psf(5, 1.0)
    s = torch.randn(3, 13, 10, generator=gen(5), dtype=torch.float64)
    blurred = Convolution2d(k, (13, 10))(s)
    A = BlurDownsample(k, (13, 10), factor=3)
    assert A.out_shape == (5, 4)
    torch.testing.assert_close(A(s), blurred[:, ::3, ::3], rtol=0, atol=1e-14)


def test_operators_follow_dtype_conversion_of_the_module():
    A = Convolution2d(gaussian_psf(3, 1.0, torch.float32), (6, 6)).double()
    assert A.dtype == torch.float64
    assert A(torch.zeros(1, 6, 6, dtype=torch.float64)).dtype == torch.float64


# --- spectral norm --------------------------------------------------------------------

def test_power_iteration_matches_matrix_norm_ord2_for_a_dense_matrix():
    H = torch.randn(40, 70, generator=gen(6), dtype=torch.float64)
    exact = float(torch.linalg.matrix_norm(H, ord=2))
    assert spectral_norm(H) == pytest.approx(exact, rel=1e-7)
    assert spectral_norm(MatrixOperator(H)) <= exact * (1 + 1e-12)  # approaches from below


def test_power_iteration_is_deterministic():
    H = torch.randn(20, 30, generator=gen(7), dtype=torch.float64)
    assert spectral_norm(H) == spectral_norm(H)


@pytest.mark.parametrize("name, rel", [
    ("blur-psf", 1e-8), ("blur-downsample-2", 1e-8), ("blur-downsample-3-uneven", 1e-8),
    ("conv-even-kernel", 1e-4),  # sigma_2 / sigma_1 = 0.99992: any estimate between them is within 1e-4
])
def test_power_iteration_matches_the_svd_of_a_convolution_operator(name, rel):
    A = operators(torch.float64)[name]
    exact = float(torch.linalg.svdvals(A.matrix())[0])
    assert spectral_norm(A) == pytest.approx(exact, rel=rel)


# --- shrinkage operators are proximal maps --------------------------------------------

def prox_objective_gap(y, p, z, tau, g):
    """f(y) - f(p) - 0.5 ||y - p||^2 for f = tau g + 0.5 ||. - z||^2: >= 0 for all y iff p = prox(z)."""
    def f(w):
        return tau * g(w) + 0.5 * (w - z).abs().pow(2).sum()
    return f(y) - f(p) - 0.5 * (y - p).abs().pow(2).sum()


def assert_is_prox(p, z, tau, g, seed=0):
    g_ = gen(seed)
    for scale in (1e-3, 1e-1, 1.0):
        for _ in range(50):
            d = scale * torch.randn(z.shape, generator=g_, dtype=z.dtype)
            assert float(prox_objective_gap(p + d, p, z, tau, g)) >= -1e-10


def test_soft_threshold_is_the_prox_of_the_l1_norm_by_brute_force():
    grid = torch.linspace(-4, 4, 80001, dtype=torch.float64)  # step 1e-4
    for z in (-3.1, -0.7, -0.2, 0.0, 0.15, 0.5, 2.4):
        for theta in (0.0, 0.3, 1.0):
            brute = grid[torch.argmin(theta * grid.abs() + 0.5 * (grid - z) ** 2)]
            out = soft_threshold(torch.tensor(z, dtype=torch.float64), theta)
            assert float(out) == pytest.approx(float(brute), abs=1e-4)


def test_soft_threshold_matches_its_closed_form_with_per_entry_thresholds():
    z = torch.tensor([[-2.0, -0.5, 0.0, 0.5, 2.0]])
    theta = torch.tensor([1.0, 1.0, 1.0, 0.1, 0.1])
    torch.testing.assert_close(soft_threshold(z, theta), torch.tensor([[-1.0, 0.0, 0.0, 0.4, 1.9]]))


def test_complex_soft_threshold_is_the_prox_of_the_l1_norm_of_moduli():
    z = torch.randn(6, 9, generator=gen(8), dtype=torch.complex128)
    p = soft_threshold(z, 0.8)
    assert_is_prox(p, z, 0.8, lambda w: w.abs().sum())
    torch.testing.assert_close(p.angle()[p != 0], z.angle()[p != 0])


def test_svt_is_the_prox_of_the_nuclear_norm():
    Z = torch.randn(3, 12, 7, generator=gen(9), dtype=torch.float64)
    tau = 1.5
    P = svt(Z, tau)
    for i in range(3):
        assert_is_prox(P[i], Z[i], tau, lambda W: torch.linalg.svdvals(W).sum(), seed=i)
        U, sig, Vh = np.linalg.svd(Z[i].numpy(), full_matrices=False)
        np.testing.assert_allclose(P[i].numpy(), (U * np.maximum(sig - tau, 0)) @ Vh, atol=1e-12)
    assert torch.linalg.matrix_rank(P[0]) < torch.linalg.matrix_rank(Z[0])


def test_svt_of_complex_casorati_matrices_thresholds_singular_values():
    Z = torch.randn(2, 30, 6, generator=gen(10), dtype=torch.complex128)
    sig = torch.linalg.svdvals(Z)
    tau = sig[:, 2:3]  # per-matrix threshold at the third singular value
    out = torch.linalg.svdvals(svt(Z, tau))
    torch.testing.assert_close(out, torch.relu(sig - tau), rtol=0, atol=1e-12)


def test_mixed_l12_shrinkage_is_the_prox_of_the_sum_of_row_norms():
    Z = torch.randn(2, 10, 5, generator=gen(11), dtype=torch.float64)
    tau = 1.8
    P = mixed_l12_shrinkage(Z, tau)
    for i in range(2):
        assert_is_prox(P[i], Z[i], tau, lambda W: torch.linalg.vector_norm(W, dim=-1).sum(), seed=i)
    norms = torch.linalg.vector_norm(Z, dim=-1)
    assert torch.equal(P.abs().sum(-1) == 0, norms <= tau)  # whole rows vanish, or none of them


def test_mixed_l12_shrinkage_keeps_a_zero_row_zero_with_finite_gradient():
    Z = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    out = mixed_l12_shrinkage(Z, 0.5)
    out.sum().backward()
    assert torch.equal(out, torch.zeros(3, 4, dtype=torch.float64)) and torch.isfinite(Z.grad).all()


def test_support_selection_passes_the_largest_entries_and_thresholds_the_rest():
    z = torch.tensor([[5.0, -4.0, 3.0, -0.5, 0.2, 0.1, 2.0, -1.0, 0.05, 0.3]])
    out = support_selection(z, 0.4, q=0.2)  # round(0.2 * 10) = 2 entries skip the shrinkage
    expected = soft_threshold(z, 0.4)
    expected[0, :2] = z[0, :2]
    torch.testing.assert_close(out, expected)


def test_support_selection_with_q_zero_is_the_soft_threshold_and_never_passes_small_entries():
    z = torch.randn(4, 50, generator=gen(12))
    torch.testing.assert_close(support_selection(z, 0.3, q=0.0), soft_threshold(z, 0.3))
    out = support_selection(z, 10.0, q=0.5)  # nothing exceeds the threshold: all zero
    assert torch.count_nonzero(out) == 0


def test_thresholds_receive_gradients():
    z = torch.randn(4, 50, generator=gen(13))
    for f in (soft_threshold, lambda z, t: support_selection(z, t, q=0.1)):
        theta = torch.tensor(0.5, requires_grad=True)
        f(z, theta).pow(2).sum().backward()
        assert theta.grad is not None and theta.grad != 0
