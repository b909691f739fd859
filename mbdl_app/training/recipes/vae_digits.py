"""Recipe `vae-digits`: the deep generative prior of seed Example 21 (engines/imaging/csgm.py).

Data: scikit-learn's 8 x 8 handwritten digits (shipped inside the package), pixels / 16 on [0, 1],
split by mbdl_app.training.shipped_data.digits_split (seed 0): 300 test and 200 validation digits held
out, 1,297 for training. Model: VAE(n=64, latent=8, hidden=128); loss: the negative ELBO
(Bernoulli cross-entropy + KL); Adam at 2e-3, cosine decay to 5 %, batch 64, one thread.

Held-out figures (card `metrics`): the negative ELBO (nats per digit) and the per-pixel MSE of
the reconstruction G(mu(s)) on the test digits, and CSGM vs the tuned Lasso at m = n/8 = 8 and
m = n/4 = 16 Gaussian measurements on the first 50 test digits (`compare`, which `mbdl reproduce csgm`
runs over m).

Shipped run (2026-12-06, one thread at load ~15): 8,000 steps in 251 s; test negative ELBO 22.18 nats,
reconstruction MSE 0.0218 per pixel; CSGM / Lasso MSE 0.036 / 0.240 at m = 8, 0.027 / 0.234 at m = 16.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engines.imaging.csgm import ARCH, LAMBDA, VAE, csgm, vae_loss
from mbdl_app.training.recipes import Plan, Recipe
from mbdl_app.training.schedules import Cosine
from mbdl_app.training.shipped_data import digits_split
from mbdl_app.training.trainer import TrainConfig, Trainer

NOISE = 0.01
ALPHAS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3)


def sensing(m: int, n: int) -> np.ndarray:
    """H (m, n) with N(0, 1/m) entries, seeded by m."""
    return (np.random.default_rng(1000 + m).standard_normal((m, n)) / np.sqrt(m)).astype(np.float32)


def measure(H: np.ndarray, s: np.ndarray, seed: int) -> np.ndarray:
    """x = H s + w for each row of s (N, n), w ~ N(0, NOISE^2), seeded."""
    w = NOISE * np.random.default_rng(seed).standard_normal((len(s), H.shape[0]))
    return (s @ H.T + w).astype(np.float32)


def lasso(H: np.ndarray, x: np.ndarray, alpha: float) -> np.ndarray:
    """Lasso estimates (N, n) of each row of x (N, m): scikit-learn's coordinate descent, no intercept."""
    from sklearn.linear_model import Lasso

    model = Lasso(alpha=alpha, fit_intercept=False, max_iter=5000)
    return np.stack([model.fit(H, xi).coef_.copy() for xi in x]).astype(np.float32)


def mse(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-signal ||s_hat - s||^2 / n."""
    return ((estimate - truth) ** 2).mean(-1)


@dataclass(frozen=True)
class Size:
    ms: tuple[int, ...]
    test: int
    val: int
    restarts: int
    steps: int


FULL = Size(ms=(4, 8, 12, 16, 24, 32, 48, 64), test=100, val=20, restarts=5, steps=300)
QUICK = Size(ms=(8, 16, 32), test=6, val=4, restarts=2, steps=40)


def compare(decoder: torch.nn.Module, latent: int, digits: dict[str, np.ndarray], m: int, size: Size
            ) -> dict[str, Any]:
    """CSGM and the tuned Lasso at m measurements on the first size.test test digits."""
    test, val = digits["test"][:size.test], digits["val"][:size.val]
    n = test.shape[1]
    H = sensing(m, n)
    xv = measure(H, val, seed=2 * m)
    val_err = {a: float(mse(lasso(H, xv, a), val).mean()) for a in ALPHAS}
    alpha = min(val_err, key=val_err.get)
    xt = measure(H, test, seed=2 * m + 1)
    t0 = time.process_time()
    e_lasso = mse(lasso(H, xt, alpha), test)
    t1 = time.process_time()
    s_hat = csgm(decoder, torch.from_numpy(H), torch.from_numpy(xt), latent=latent, lam=LAMBDA,
                 restarts=size.restarts, steps=size.steps, seed=m)
    t2 = time.process_time()
    e_csgm = mse(s_hat.numpy(), test)
    se = lambda e: float(e.std(ddof=1) / np.sqrt(len(e))) if len(e) > 1 else 0.0  # noqa: E731
    return {"m": m, "csgm_mse": float(e_csgm.mean()), "csgm_se": se(e_csgm),
            "lasso_mse": float(e_lasso.mean()),
            "lasso_se": se(e_lasso), "lasso_alpha": alpha, "csgm_cpu_s": round(t2 - t1, 3),
            "lasso_cpu_s": round(t1 - t0, 3)}


STEPS, QUICK_STEPS, BATCH = 8000, 5, 64
CARD_CHECK = Size(ms=(8, 16), test=50, val=20, restarts=5, steps=300)


class VaeDigitsRecipe(Recipe):
    """vae-digits (see the module docstring)."""

    name = "vae-digits"
    description = ("VAE (MLP 64-128-2x8 / 8-128-128-64, sigmoid) on scikit-learn's 8 x 8 digits: the decoder "
                   "is the generative prior of CSGM (seed Example 21, eq. (28))")
    seed = 0

    def build(self, quick: bool) -> Plan:
        torch.set_num_threads(1)  # a shared machine: one core per training run
        digits = digits_split()
        train, val, test = (torch.from_numpy(digits[k]) for k in ("train", "val", "test"))
        if quick:
            train = train[:256]
        steps = QUICK_STEPS if quick else STEPS
        model = VAE(**ARCH)

        def evaluate(trainer: Trainer) -> dict[str, Any]:
            vae = trainer.model.eval()
            with torch.no_grad():
                out = vae(test)
                recon = float(((out[0] - test) ** 2).mean())
            check = QUICK if quick else CARD_CHECK
            rows = [compare(vae.decoder, ARCH["latent"], digits, m, check) for m in check.ms[:2]]
            return {"test_neg_elbo_nats": round(float(vae_loss(out, test)), 4),
                    "test_reconstruction_mse": round(recon, 6),
                    "validation_neg_elbo_nats": round(float(trainer.evaluate((val, val))), 4),
                    "csgm_vs_lasso": {f"m_{r['m']}": {"csgm_mse": round(r["csgm_mse"], 5),
                                                      "lasso_mse": round(r["lasso_mse"], 5),
                                                      "lasso_alpha": r["lasso_alpha"]} for r in rows},
                    "csgm_vs_lasso_setup": f"first {check.test} test digits, {check.restarts} restarts x "
                                           f"{check.steps} Adam steps, lam 0.1, noise std 0.01"}

        card = {
            "task": "generation",
            "family": "black-box",
            "description": self.description,
            "architecture": {"name": "vae", "kwargs": ARCH},
            "input": {"shape": ["N", ARCH["latent"]], "window": 1, "dtype": "float32",
                      "meaning": "latent z (prior N(0, I))"},
            "output": {"shape": ["N", ARCH["n"]], "dtype": "float32",
                       "meaning": "G(z): an 8 x 8 digit, row-major, pixels on [0, 1] (scikit-learn's / 16)"},
            "training": {
                "data": (f"sklearn.datasets.load_digits / 16, split by seed 0: {len(train)} training digits, "
                         f"{len(val)} validation, {len(test)} test (held out)"),
                "loss": "negative ELBO: Bernoulli cross-entropy summed over pixels + KL(q(z|s) || N(0, I))",
                "validation_metric": "the loss (z = mu)",
                "budget": f"{steps} steps of batch {BATCH} on one CPU thread",
            },
        }
        return Plan(model=model, loss_fn=vae_loss, train_data=(train, train), val_data=(val, val),
                    config=TrainConfig(lr=2e-3, max_steps=steps, batch_size=BATCH,
                                       schedule=Cosine(final=0.05), eval_every=max(1, steps // 10),
                                       device="cpu"),
                    evaluate=evaluate, card=card)


RECIPE = VaeDigitsRecipe()
