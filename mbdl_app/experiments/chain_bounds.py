"""How well can ANY low-rank clutter filter feed ULM? Bounds for issue 15's chained target.

`python -m mbdl_app.experiments.chain_bounds [OUT.json] [--quick]`: fig7's protocol (threshold on
the 20 frames of seed 22, test on the 120 frames of seed 21, 32 x 32, tolerance 60 um; the shipped
ulm-lista as localizer) on the bubbles that separators with knowledge no real one has leave:

- clean             data - tissue (fig7's ulm-lista row: the perfect clutter filter);
- subspace oracle   the data projected off the TRUE tissue's top-k temporal singular vectors of
                    a sliding window centred on each frame (the best linear temporal filter of the
                    SVD-filter / CORONA-SVT kind: the tissue itself is nearly rank 3);
- ghost only        clean bubbles + noise minus only the bubbles' own projection on that subspace
                    (what such a filter does to the bubbles: slow ones near the walls, alive for
                    several frames of a short window, are partly taken for tissue, and every
                    bubble leaves a -projection "ghost" in the window's other frames);
- masked oracle     the data minus a rank-k fit that ignores every entry where the TRUE bubbles
                    exceed 0.05 (the best a robust PCA can do that knows the bubbles' support;
                    pixels covered in every frame of the window stay unresolvable);
- rpca (real)       entry-wise robust PCA (rank-k SVD / complex soft threshold 0.5, 10 rounds) on
                    the centred window: no oracle, the best non-learned separator measured.

Each is a centred sliding window (frame t from the window of `w` frames around it: what a
session with hop 1, lag w // 2 computes), so the frames after the last test frame are simulated
too. Writes the rows as JSON and prints them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drivers.sim.ceus import CeusParams, CeusSimulator
from engines.imaging.ulm import true_positions
from mbdl_app.experiments.fig7 import (
    FRACTIONS,
    PIXEL_UM,
    TEST_SEED,
    VAL_SEED,
    Localizer,
    intensities,
    load_module,
    localize,
    score,
)

WINDOWS = ((20, 1), (40, 3))  # (window, rank): the tissue's rank at a 20 / 40 frame window
MASK_LEVEL = 0.05  # |true bubbles| above which the masked oracle ignores an entry
RPCA_LAMBDA, RPCA_ROUNDS = 0.5, 10


def _complex(a: np.ndarray) -> np.ndarray:
    return (a[:, 0] + 1j * a[:, 1]).reshape(len(a), -1)


def _lowrank(X: np.ndarray, k: int) -> np.ndarray:
    U, s, Vh = np.linalg.svd(X, full_matrices=False)
    return (U[:, :k] * s[:k]) @ Vh[:k]


def parts(seed: int, n: int, field: int, extra: int) -> dict[str, Any]:
    """Data, bubbles, tissue, noise of n + extra frames of fig7's stream `seed`, as (frames,
    pixels) complex, and the true positions of the first n."""
    g = CeusSimulator(CeusParams(height=field, width=field, seed=seed)).frames(n + extra)
    D, B, T = _complex(g["data"]), _complex(g["bubbles"]), _complex(g["tissue"])
    return {"D": D, "B": B, "T": T, "N": D - B - T,
            "positions": [true_positions(q, (field, field)) for q in g["positions"][:n]]}


def centred(p: dict[str, np.ndarray], n: int, w: int, k: int, how: str) -> torch.Tensor:
    """(n, 1, 2, h, w) float32: frame t of `how`'s output on the window centred on it."""
    side = int(round(np.sqrt(p["D"].shape[1])))
    out = np.empty((n, 1, 2, side, side), np.float32)
    m, lag = len(p["D"]), w // 2
    for t in range(n):
        a = min(max(t - (w - 1 - lag), 0), m - w)
        win = {key: p[key][a:a + w] for key in "DBTN"}
        if how == "clean":
            r = win["B"] + win["N"]
        elif how in ("subspace", "ghost"):
            U = np.linalg.svd(win["T"], full_matrices=False)[0][:, :k]

            def project(X: np.ndarray, U: np.ndarray = U) -> np.ndarray:
                return U @ (U.conj().T @ X)

            r = win["D"] - project(win["D"]) if how == "subspace" else win["B"] + win["N"] - project(win["B"])
        elif how == "masked":
            mask = np.abs(win["B"]) > MASK_LEVEL
            L = _lowrank(win["D"], k)
            for _ in range(20):
                L = _lowrank(np.where(mask, L, win["D"]), k)
            r = win["D"] - L
        elif how == "rpca":
            S = np.zeros_like(win["D"])
            for _ in range(RPCA_ROUNDS):
                R = win["D"] - _lowrank(win["D"] - S, k)
                mag = np.abs(R)
                S = R * np.maximum(mag - RPCA_LAMBDA, 0) / np.maximum(mag, 1e-12)
            r = S
        else:
            raise ValueError(f"unknown bound {how!r}")
        x = r[t - a].reshape(side, side)
        out[t, 0, 0], out[t, 0, 1] = x.real, x.imag
    return torch.from_numpy(out)


def fig7_score(localizer: torch.nn.Module, val_x: torch.Tensor, val_pos, test_x: torch.Tensor,
               test_pos) -> dict[str, Any]:
    """fig7's rule: threshold fraction with the best validation Jaccard, then the test scores."""
    radius = Localizer().radius
    g_val, _ = intensities(localizer, val_x)
    scale = float(torch.quantile(g_val.flatten()[::7], 0.999)) or 1.0
    curve = {f: score(localize(g_val, f * scale, radius), val_pos).jaccard for f in FRACTIONS}
    best = max(curve, key=curve.get)
    g, _ = intensities(localizer, test_x)
    m = score(localize(g, best * scale, radius), test_pos)
    return {"jaccard": round(m.jaccard, 4), "rmse_um": round(m.rmse * PIXEL_UM, 2) if m.tp else None,
            "precision": round(m.tp / max(m.tp + m.fp, 1), 4), "recall": round(m.tp / max(m.tp + m.fn, 1), 4),
            "threshold_fraction": best}


def run(out: Path | None = None, quick: bool = False, log: Callable[[str], None] = print) -> list[dict]:
    torch.set_num_threads(1)
    field, n_test, n_val = (16, 20, 20) if quick else (32, 120, 20)
    localizer = load_module("ulm-lista")
    if localizer is None:
        raise SystemExit("chain_bounds: the ulm-lista artifact is missing")
    extra = max(w for w, _ in WINDOWS)
    test, val = parts(TEST_SEED, n_test, field, extra), parts(VAL_SEED, n_val, field, extra)
    rows = []
    cases = [("clean", 20, 1)] + [(how, w, k) for how in ("subspace", "ghost", "masked", "rpca")
                                  for w, k in WINDOWS]
    for how, w, k in cases:
        start = time.time()
        result = fig7_score(localizer, centred(val, n_val, w, k, how), val["positions"],
                            centred(test, n_test, w, k, how), test["positions"])
        row = {"bound": how, "window": w, "rank": k, **result, "seconds": round(time.time() - start, 1)}
        rows.append(row)
        log(f"chain bound {how:9s} w{w:<3d} k{k}: Jaccard {row['jaccard']:.3f}, RMSE {row['rmse_um']} um, "
            f"precision {row['precision']:.2f}, recall {row['recall']:.2f}")
    if out is not None:
        Path(out).write_text(json.dumps({"experiment": "chain_bounds", "quick": quick, "field": field,
                                         "test_frames": n_test, "val_frames": n_val, "rows": rows},
                                        indent=2) + "\n", encoding="utf-8")
    return rows


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--quick"]
    run(Path(args[0]) if args else None, quick="--quick" in sys.argv)
