"""Deep generative prior vs Lasso (seed Example 21): `mbdl reproduce csgm`.

Signals: scikit-learn's 8 x 8 handwritten digits (n = 64 pixels on [0, 1], shipped inside the
package), split once by a seeded permutation into train / validation / test
(mbdl_app.training.shipped_data.digits_split); the
VAE of `mbdl train vae-digits` never sees the validation or test digits.

Measurements: x = H s + w with H (m, n) Gaussian, entries N(0, 1/m) (one matrix per m, seeded by
m), w ~ N(0, NOISE^2 I) with NOISE = 0.01, for m = 4, 8, 12, 16, 24, 32, 48, 64. Recovery (both in
mbdl_app.training.recipes.vae_digits.compare):
- CSGM: engines.imaging.csgm.csgm with the shipped decoder, eq. (28) with lam = 0.1, 5 restarts of
  300 Adam steps;
- Lasso: min_s 1/(2m) ||x - H s||^2 + alpha ||s||_1 in the pixel basis (scikit-learn's Lasso,
  coordinate descent), alpha picked per m from ALPHAS (1e-4 .. 0.3) by the mean error on 20 validation
  digits (the Lasso gets its best tuning; at m <= 16 the best is near the zero estimate).
Error: the mean over 100 test digits of the per-pixel squared error ||s_hat - s||^2 / n.

Writes csgm.csv (m, method, mse, its standard error), csgm.json (the curve, the target
"CSGM below Lasso for every m <= n/4", timing, setup) and csgm.png (error vs m). `quick`: 3 values of
m, few digits, few steps.
"""

from __future__ import annotations

import csv
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from engines.imaging.csgm import LAMBDA
from mbdl_app.training.recipes.vae_digits import ALPHAS, FULL, NOISE, QUICK, compare
from mbdl_app.training.shipped_data import digits_split


def run_csgm(out: Path, quick: bool = False, artifact: str | Path | None = None) -> dict[str, Any]:
    """Run the experiment into folder `out` (created); returns what csgm.json holds. `artifact`: the
    VAE folder (default: the shipped exported_models/vae-digits)."""
    import exported_models
    from engines.artifacts import read_artifact
    from engines.imaging.csgm import VAE

    torch.set_num_threads(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = QUICK if quick else FULL
    art = read_artifact(Path(artifact) if artifact else exported_models.ROOT / "vae-digits")
    kwargs = art.card["architecture"]["kwargs"]
    vae = art.build_module(lambda: VAE(**kwargs), "VAE").eval()
    digits = digits_split()
    n = digits["test"].shape[1]
    start = time.time()
    rows = [compare(vae.decoder, int(kwargs["latent"]), digits, m, size) for m in size.ms]
    with open(out / "csgm.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["m", "method", "mse", "se"])
        for r in rows:
            writer.writerow([r["m"], "csgm", r["csgm_mse"], r["csgm_se"]])
            writer.writerow([r["m"], "lasso", r["lasso_mse"], r["lasso_se"]])
    small = [r for r in rows if r["m"] <= n // 4]
    result = {
        "experiment": "csgm", "quick": quick, "curve": rows,
        "targets": {"csgm_below_lasso_for_m_le_n_over_4": {
            "met": all(r["csgm_mse"] < r["lasso_mse"] for r in small),
            "ms": [r["m"] for r in small]}},
        "setup": {"n": n, "noise_std": NOISE, "lambda": LAMBDA, "restarts": size.restarts,
                  "adam_steps": size.steps,
                  "test_digits": size.test, "val_digits_for_lasso_alpha": size.val, "alphas": list(ALPHAS),
                  "vae": {"artifact": art.card.get("name"), "sha256": art.sha256, "kwargs": kwargs},
                  "error": "mean over test digits of ||s_hat - s||^2 / n, pixels on [0, 1]"},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": 1},
        "wall_time_s": round(time.time() - start, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "csgm.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    _plot(out / "csgm.png", rows, n)
    return result


def _plot(path: Path, rows: list[dict[str, Any]], n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    ms = [r["m"] for r in rows]
    for key, label in (("csgm", "CSGM (VAE prior)"), ("lasso", "Lasso (pixel basis)")):
        ax.errorbar(ms, [r[f"{key}_mse"] for r in rows], yerr=[r[f"{key}_se"] for r in rows], marker="o",
                    capsize=3, label=label)
    ax.axvline(n / 4, color="gray", lw=0.8, ls="--")
    ax.set_xlabel(f"measurements m (n = {n})")
    ax.set_ylabel("per-pixel MSE")
    ax.set_yscale("log")
    ax.set_title("Seed Ex. 21: CSGM vs Lasso on held-out digits")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
