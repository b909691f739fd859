"""`mbdl bench sparse`: the LISTA-family benchmark, every method measured in the same run.

For noiseless, SNR 40 dB and SNR 20 dB data on the standard 250 x 500 problem (ANCHORS.md
"Sparse recovery / LISTA family"), on a fresh held-out set (seed BENCH_SEED + setting,
distinct from the recipes' validation and test seeds):

- NMSE dB per layer / iteration 0..16 of ISTA, FISTA, ADMM (model-based) and the learned
  methods (learned ADMM Ex. 14, unfolded ADMM Ex. 15, Ex. 16, LISTA, LISTA-CPSS, ALISTA);
- wall time per 1,000 problems (one call on a batch of 1,000, 16 layers, 1 thread, median
  of `repeats` after a warm-up), all in this run;
- FISTA iterations (up to FISTA_MAX) and time to reach each learned method's 16-layer NMSE.

Model-based tuning, documented: ISTA and FISTA take the lasso weight rho from RHO_GRID, ADMM
(rho, lambda) from RHO_GRID x LAM_GRID, each the best NMSE at 16 iterations on the recipes'
fixed validation set (the anchors' rho = 0.4 leaves FISTA at about -7.6 dB at 16 iterations).
For the FISTA match, FISTA runs FISTA_MAX iterations with each rho of MATCH_RHOS (a small
rho converges to a lower floor, slowly) and the fewest iterations over them is reported
(FISTA at its best); its time is that count times the measured FISTA time per iteration.

Learned models come from exported_models/ (shipped) or the user cache (trained by the same
recipes, not shipped); a missing one is trained into the cache first. The table says which.
Writes sparse_nmse.csv (curves), sparse_summary.csv, sparse_bench.json and sparse_nmse.png.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import engines
import exported_models
from engines.imaging.ista import FISTA
from engines.load import load_artifact
from engines.sparse_problem import SparseProblem, nmse_db
from mbdl_app.training.artifact import CARD, cache_dir
from mbdl_app.training.recipes import get_recipe
from mbdl_app.training.recipes.sparse import (
    ADMM_LAM_GRID,
    ADMM_RHO_GRID,
    FULL,
    H_SEED,
    NOISE,
    QUICK,
    VAL_SEED,
)

BENCH_SEED = 5000
RHO_GRID, LAM_GRID = ADMM_RHO_GRID, ADMM_LAM_GRID  # the grid the learned ADMM recipes start from
MATCH_RHOS = (0.1, 0.05, 0.02, 0.01, 0.005)
FISTA_MAX = 2000
LEARNED = ("learned-admm", "unfolded-admm", "unfolded-admm-weights", "lista", "lista-cpss", "alista")
MODEL_BASED = ("ista", "fista", "admm")
LABEL = {"ista": "ISTA", "fista": "FISTA", "admm": "ADMM", "learned-admm": "learned ADMM (Ex.14)",
         "unfolded-admm": "unfolded ADMM (Ex.15)", "unfolded-admm-weights": "unfolded ADMM W (Ex.16)",
         "lista": "LISTA", "lista-cpss": "LISTA-CPSS", "alista": "ALISTA"}
ANCHOR_NOISELESS = {"ista": "-10..-20", "fista": "-10..-20", "lista": "~-40", "lista-cpss": "-60..-70",
                    "alista": "-60..-70"}


def anchor(method: str, snr_db: float | None) -> str:
    """The published figure to read beside ours (ANCHORS.md, approximate)."""
    if snr_db is None:
        return ANCHOR_NOISELESS.get(method, "-")
    return f"~-{snr_db:g} (levels off)" if method in LEARNED else "-"


@dataclass
class Measured:
    """One method at one noise setting."""

    method: str
    family: str
    curve: list[float]
    time_ms: float
    params: dict[str, Any]
    source: str


def _curve(module: torch.nn.Module, x: torch.Tensor, s: torch.Tensor) -> list[float]:
    with torch.inference_mode():
        return [round(nmse_db(it, s), 3) for it in module(x, return_all=True)]


def _time_ms(engine, x: np.ndarray, repeats: int) -> float:
    """Median wall time (ms) of engine(x) over `repeats` calls after one warm-up."""
    engine(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine(x)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _fista_curve(H: torch.Tensor, x: torch.Tensor, s: torch.Tensor, rho: float, n_iter: int,
                 chunk: int = 200) -> np.ndarray:
    """NMSE dB of FISTA iterates 0..n_iter, accumulated over chunks of problems so that the
    iterates of one chunk fit in memory."""
    solver = FISTA(H, rho=rho, n_iter=n_iter)
    err = torch.zeros(n_iter + 1, dtype=torch.float64)
    with torch.inference_mode():
        for i in range(0, x.shape[0], chunk):
            iterates = solver(x[i:i + chunk], return_all=True)
            target = s[i:i + chunk]
            err += torch.stack([((it - target) ** 2).sum(dtype=torch.float64) for it in iterates])
    return (10 * torch.log10(err / (s.double() ** 2).sum())).numpy()


def _artifact(name: str, quick: bool, models: Path, log) -> tuple[Path, str]:
    """The folder of artifact `name` and where it came from; trains a missing one."""
    if quick:
        return get_recipe(name).run(models, quick=True, quiet=True), "trained now (quick)"
    shipped = exported_models.ROOT / name
    if (shipped / CARD).is_file():
        return shipped, "shipped"
    cached = cache_dir("artifacts") / name
    if (cached / CARD).is_file():
        return cached, "cache (not shipped)"
    log(f"training {name} into {cached.parent} (not shipped) ...")
    return get_recipe(name).run(cached.parent, quiet=True), "cache (trained now, not shipped)"


def _model_based(method: str, size, rho: float, lam: float | None):
    kwargs = {"seed": H_SEED, "m": size.m, "n": size.n, "n_iter": size.layers, "rho": rho}
    if method == "admm":
        kwargs["lam"] = lam
    return engines.load(method, **kwargs)


def _tune(method: str, size, val) -> tuple[Any, dict[str, float]]:
    """The model-based engine with the best validation NMSE at 16 iterations over the grid."""
    best = None
    for rho in RHO_GRID:
        for lam in (LAM_GRID if method == "admm" else (None,)):
            engine = _model_based(method, size, rho, lam)
            with torch.inference_mode():
                score = nmse_db(engine.module(val.x), val.s)
            if best is None or score < best[0]:
                best = (score, engine, {"rho": rho} | ({} if lam is None else {"lam": lam}))
    return best[1], {**best[2], "val_nmse_db": round(best[0], 3)}


def run_sparse_bench(out: str | Path, n: int = 1000, quick: bool = False, repeats: int = 5,
                     log=print) -> dict[str, Any]:
    """Run the benchmark; write CSV, JSON and PNG into `out`; return the JSON report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(out, n, quick, 2 if quick else repeats, log)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, n: int, quick: bool, repeats: int, log) -> dict[str, Any]:
    size = QUICK if quick else FULL
    fista_max = 100 if quick else FISTA_MAX
    started = time.time()
    report: dict[str, Any] = {
        "settings": {"m": size.m, "n": size.n, "layers": size.layers, "test_problems": n,
                     "bench_seed": BENCH_SEED, "val_seed": VAL_SEED, "H_seed": H_SEED, "quick": quick,
                     "threads": 1, "repeats": repeats, "rho_grid": RHO_GRID, "lam_grid": LAM_GRID,
                     "match_rhos": MATCH_RHOS, "fista_max": fista_max,
                     "timing": "one call on a batch of the test set (N = test_problems), float32, "
                               "median of repeats after a warm-up, reported per 1000 problems"},
        "settings_by_noise": {},
    }
    rows: list[dict[str, Any]] = []
    for k, (suffix, snr_db) in enumerate(NOISE.items()):
        noise = "noiseless" if snr_db is None else f"snr{snr_db:g}"
        problem = SparseProblem.standard(seed=H_SEED, snr_db=snr_db, m=size.m, n=size.n, dtype=torch.float32)
        val = problem.sample(size.val, torch.Generator().manual_seed(VAL_SEED))
        test = problem.sample(n, torch.Generator().manual_seed(BENCH_SEED + k))
        x_np = test.x.numpy()
        measured: list[Measured] = []
        for method in MODEL_BASED:
            engine, params = _tune(method, size, val)
            measured.append(Measured(method, "model-based", _curve(engine.module, test.x, test.s),
                                     _time_ms(engine, x_np, repeats) * 1000 / n, params, "engines.load"))
        for method in LEARNED:
            folder, source = _artifact(f"{method}-cs{suffix}", quick, out / "models", log)
            engine = load_artifact(folder, backend="torch")  # the per-layer curves need the module
            if not np.allclose(engine.operator, problem.H.numpy()):
                raise RuntimeError(f"{folder}: its H is not the benchmark's sensing_matrix(seed={H_SEED})")
            measured.append(Measured(method, engine.info.family, _curve(engine.module, test.x, test.s),
                                     _time_ms(engine, x_np, repeats) * 1000 / n,
                                     {"artifact": str(folder), "card_test_nmse_db": engine.card["metrics"]
                                      ["test_nmse_db"], "n_params": engine.info.n_params}, source))
        fista = next(m for m in measured if m.method == "fista")
        ms_per_iter = fista.time_ms / size.layers
        long = {rho: _fista_curve(problem.H, test.x, test.s, rho, fista_max) for rho in MATCH_RHOS}
        report["settings_by_noise"][noise] = {
            "snr_db": snr_db, "fista_ms_per_iteration_per_1000": round(ms_per_iter, 4),
            "fista_long_best_nmse_db": {str(r): round(float(c.min()), 3) for r, c in long.items()},
            "fista_long_curves_every_10": {str(r): [round(float(v), 3) for v in c[::10]]
                                           for r, c in long.items()}}
        for m in measured:
            match = _fista_match(m.curve[-1], long) if m.family != "model-based" else None
            rows.append({
                "noise": noise, "snr_db": snr_db, "method": m.method, "label": LABEL[m.method],
                "family": m.family, "nmse16_db": m.curve[-1], "anchor_db": anchor(m.method, snr_db),
                "time_ms_per_1000": round(m.time_ms, 3),
                "fista_iters_to_match": None if match is None else match[0],
                "fista_rho_to_match": None if match is None else match[1],
                "fista_time_ms_to_match": None if match is None or match[0] is None
                else round(match[0] * ms_per_iter, 2),
                "source": m.source, "params": m.params, "curve": m.curve})
        log(f"{noise}: done ({time.time() - started:.0f} s)")
    report["results"] = rows
    report["wall_time_s"] = round(time.time() - started, 1)
    _write(out, report)
    log(table(rows, fista_max))
    return report


def _fista_match(target: float, long: dict[float, np.ndarray]) -> tuple[int | None, float | None]:
    """Fewest FISTA iterations (over the rhos) whose NMSE is <= target; (None, None) if never."""
    best: tuple[int | None, float | None] = (None, None)
    for rho, curve in long.items():
        hit = np.flatnonzero(curve <= target)
        if hit.size and (best[0] is None or hit[0] < best[0]):
            best = (int(hit[0]), rho)
    return best


def table(rows: list[dict[str, Any]], fista_max: int) -> str:
    """The summary as a fixed-width text table."""
    head = (f"{'noise':<10} {'method':<25} {'NMSE@16 dB':>10} {'anchor dB':>18} {'ms/1000':>9} "
            f"{'FISTA its':>9} {'FISTA ms':>9}  source")
    lines = [head, "-" * len(head)]
    for r in rows:
        its = "-" if r["family"] == "model-based" else (
            f">{fista_max}" if r["fista_iters_to_match"] is None
            else str(r["fista_iters_to_match"]))
        fms = "-" if r["fista_time_ms_to_match"] is None else f"{r['fista_time_ms_to_match']:.1f}"
        lines.append(f"{r['noise']:<10} {r['label']:<25} {r['nmse16_db']:>10.2f} {r['anchor_db']:>18} "
                     f"{r['time_ms_per_1000']:>9.1f} {its:>9} {fms:>9}  {r['source']}")
    return "\n".join(lines)


def _write(out: Path, report: dict[str, Any]) -> None:
    rows = report["results"]
    with open(out / "sparse_nmse.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["noise", "method", "family", "layer", "nmse_db"])
        for r in rows:
            w.writerows([r["noise"], r["method"], r["family"], k, v] for k, v in enumerate(r["curve"]))
    keys = ["noise", "method", "family", "nmse16_db", "anchor_db", "time_ms_per_1000",
            "fista_iters_to_match", "fista_rho_to_match", "fista_time_ms_to_match", "source"]
    with open(out / "sparse_summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (out / "sparse_bench.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _plot(out / "sparse_nmse.png", rows)


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noises = list(dict.fromkeys(r["noise"] for r in rows))
    fig, axes = plt.subplots(1, len(noises), figsize=(5 * len(noises), 4.2), sharey=True)
    for ax, noise in zip(np.atleast_1d(axes), noises, strict=True):
        for r in (r for r in rows if r["noise"] == noise):
            style = "--" if r["family"] == "model-based" else "-"
            ax.plot(range(len(r["curve"])), r["curve"], style, marker=".", label=r["label"])
        ax.set_title(noise)
        ax.set_xlabel("layer / iteration")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("NMSE (dB)")
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
