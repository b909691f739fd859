"""Reproduce KalmanNet's Lorenz tables: the seed's Table 2 (`mbdl reproduce table2`) and the
five settings of ANCHORS "Tracking" (`mbdl reproduce kalmannet`).

Settings (data from drivers/sim/lorenz.py; the filters assume `Case.model`):
  sampling     seed Table 2: truth at dt = 1e-5 (J = 5) decimated 1:2000, q2 = 0, identity
               observation, r2 = 1; the filters assume dt = 0.02, J = 5. T = 3000.
  noisy-state  nu = q2 / r2 = -20 dB, 1/r2 = 0, 10, 20, 30, 40 dB; exact model. T = 2000.
  evolution    data J = 5, filters J = 2; nu = -20 dB, 1/r2 = 10, 20, 30, 40 dB. T = 2000.
  rotation     y = R_z(1 deg) x + v, the filters assume y = x; nu = -20 dB, 1/r2 = 0..30 dB. T = 2000.
  spherical    y = (range, elevation, azimuth) + v, h known; nu = 0 dB, 1/r2 = -10..30 dB. T = 20.

Data: independent validation and test trajectories (the learned trackers train on their
own, in their recipes), each set from its own seed; every trajectory starts at
x0 + 0.1 N(0, I), x0 = (1, 1, 1), and the filters start from the prior N(x0, 0.01 I).

Q grid search (the anchors' reference grid-searched its model-based filters' Q): every
model-based filter runs on the validation set with Q = q2 I for each q2 of the case's grid
and keeps the q2 of the lowest validation MSE for the test set. Grid: the data's q2 times
10^(k/2), k = -2..4 (0.1x to 100x: a mismatched model needs more Q, rarely less); for
sampling mismatch, whose data have no process noise, 10^(k/2), k = -4..0 (0.01 to 1).
The chosen q2 and the whole validation curve are in the JSON.

Figures (as the anchors): per test sequence, the MSE per component (mean over the state's
entries and time); MSE [dB] = 10 log10 of its mean over test sequences; "±" = the std over
test sequences of the per-sequence dB. Run time = wall time to filter the whole test set,
all sequences as one batch, on this machine in this run, and the process CPU time of the
same (steadier on a shared machine). Published run times are the reference's (2.2 GHz
Xeon + P100) and only give the scale.

Sizes of the full run (about 10 minutes on one core): T = 2000 and T = 20 settings, 100
test and 20 validation sequences (the anchors' 100 test sequences); sampling mismatch, 20
test and 4 validation sequences (each T = 3000 truth is 6 M fine integration steps, ~4.5 s).
`quick` (tests, smoke runs): 2 test and 2 validation sequences of T = 60, 100 particles.

Learned trackers enter by artifact name through `engines.load(name)`; an artifact that
does not exist is reported as "not trained".
"""

from __future__ import annotations

import csv
import json
import math
import platform
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import engines
from drivers.sim.lorenz import LorenzParams, LorenzSimulator
from engines.errors import EngineError, UnknownEngineError
from engines.tracking.particle import DEFAULT_PARTICLES

X0_STD = 0.1
NU_DB = -20.0  # q2 / r2 of the noisy-state, evolution and rotation settings
SAMPLING_GRID = tuple(10 ** (k / 2) for k in range(-4, 1))
QUICK_T, QUICK_SEQUENCES, QUICK_PARTICLES = 60, 2, 100
# The model-based RNN's artifact (part of the learned baselines; "not trained" until it exists).
RNN_ARTIFACT = "mbrnn-lorenz"
EXPERIMENTS = ("table2", "kalmannet")
METHODS = {"ekf": "EKF", "ukf": "UKF", "pf": "PF"}


@dataclass(frozen=True)
class Published:
    """A published figure (ANCHORS.md): MSE dB, its ± over test sequences, run time."""

    mse_db: float
    std_db: float | None = None
    run_time_s: float | None = None


@dataclass(frozen=True)
class Case:
    """One data setting at one noise level, and what runs on it.

    `model` holds engines.load parameters of the model-based filters except q2 (grid
    searched); `learned` maps a column to an artifact name (None: none is made for it).
    """

    setting: str
    level: str
    data: LorenzParams
    model: dict[str, Any]
    q2_grid: tuple[float, ...]
    T: int
    n_val: int
    n_test: int
    filters: tuple[str, ...]
    learned: dict[str, str | None] = field(default_factory=dict)
    published: dict[str, Published] = field(default_factory=dict)
    n_particles: int = DEFAULT_PARTICLES

    def seed(self, split: str) -> int:
        """Independent data per case and split."""
        return zlib.crc32(f"{self.setting}/{self.level}/{split}".encode())

    def simulate(self, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """n trajectories: states x (n, T, 3), observations y (n, T, 3)."""
        return LorenzSimulator(replace(self.data, seed=self.seed(split))).trajectories(n, self.T)

    def build(self, method: str, q2: float):
        extra = {"n_particles": self.n_particles} if method == "pf" else {}
        return engines.load(method, **self.model, q2=q2, **extra)


def _nu_grid(q2: float) -> tuple[float, ...]:
    return tuple(q2 * 10 ** (k / 2) for k in range(-2, 5))


def _case(setting: str, level: str, data: LorenzParams, quick: bool, T: int, sizes: tuple[int, int],
          filters: tuple[str, ...], grid: tuple[float, ...], published: dict[str, Published],
          learned: dict[str, str | None], **model: Any) -> Case:
    base = {k: v for k, v in data.model().items() if k != "q2"}
    n_val, n_test = (QUICK_SEQUENCES, QUICK_SEQUENCES) if quick else sizes
    return Case(setting, level, data, {**base, **model}, grid, QUICK_T if quick else T, n_val, n_test,
                filters, learned, published, QUICK_PARTICLES if quick else DEFAULT_PARTICLES)


def _noise(inv_r2_db: float, nu_db: float) -> tuple[float, float]:
    """(q2, r2) from 1/r2 and nu = q2 / r2 in dB."""
    r2 = 10 ** (-inv_r2_db / 10)
    return r2 * 10 ** (nu_db / 10), r2


def sampling_case(quick: bool) -> Case:
    """Seed Table 2 (ANCHORS: EKF, UKF, PF, KalmanNet, model-based RNN; T = 3000)."""
    data = LorenzParams(J=5, dt=0.02, q2=0.0, r2=1.0, decimate=2000, x0_std=X0_STD)
    published = {"EKF": Published(-6.432, 0.093, 5.440), "UKF": Published(-5.683, 0.166, 6.072),
                 "PF": Published(-5.337, 0.190, 62.946), "KalmanNet": Published(-11.284, 0.301, 4.699),
                 "RNN (model-based)": Published(17.355, 0.527, 2.291)}
    return _case("sampling", f"T = {QUICK_T if quick else 3000}", data, quick, 3000, (4, 20),
                 ("ekf", "ukf", "pf"), SAMPLING_GRID, published,
                 {"KalmanNet": "kalmannet-lorenz", "RNN (model-based)": RNN_ARTIFACT})


def kalmannet_cases(quick: bool) -> list[Case]:
    """The five settings of ANCHORS "Tracking", one case per noise level."""
    cases = [sampling_case(quick)]
    sizes = (20, 100)
    for inv, ekf, kn in zip((0, 10, 20, 30, 40), (-10.45, -20.37, -30.40, -40.39, -49.89),
                            (-9.79, -19.75, -29.37, -39.68, -48.99), strict=True):
        q2, r2 = _noise(inv, NU_DB)
        cases.append(_case("noisy-state", f"1/r2 = {inv} dB", LorenzParams(q2=q2, r2=r2, x0_std=X0_STD),
                           quick, 2000, sizes, ("ekf", "ukf"), _nu_grid(q2),
                           {"EKF": Published(ekf), "KalmanNet": Published(kn)}, {"KalmanNet": None}))
    for inv, ekf, kn in zip((10, 20, 30, 40), (-19.47, -23.63, -33.51, -41.15),
                            (-19.71, -27.07, -35.41, -41.74), strict=True):
        q2, r2 = _noise(inv, NU_DB)
        cases.append(_case("evolution", f"1/r2 = {inv} dB", LorenzParams(q2=q2, r2=r2, x0_std=X0_STD),
                           quick, 2000, sizes, ("ekf", "ukf"), _nu_grid(q2),
                           {"EKF": Published(ekf), "KalmanNet": Published(kn)}, {"KalmanNet": None}, J=2))
    for inv, ekf, ukf, kn in zip((0, 10, 20, 30), (-9.80, -16.50, -18.19, -18.57),
                                 (-2.08, -6.92, -7.89, -8.09), (-9.63, -18.17, -27.32, -34.04), strict=True):
        q2, r2 = _noise(inv, NU_DB)
        data = LorenzParams(q2=q2, r2=r2, obs="rotated", angle_deg=1.0, x0_std=X0_STD)
        cases.append(_case("rotation", f"1/r2 = {inv} dB", data, quick, 2000, sizes, ("ekf", "ukf"),
                           _nu_grid(q2),
                           {"EKF": Published(ekf), "UKF": Published(ukf), "KalmanNet": Published(kn)},
                           {"KalmanNet": "kalmannet-lorenz-rot" if inv == 30 else None},
                           obs="identity", angle_deg=0.0))
    for inv, ekf, kn in zip((-10, 0, 10, 20, 30), (26.38, 21.78, 14.50, 4.84, -4.02),
                            (14.55, 6.77, -1.77, -10.57, -15.24), strict=True):
        q2, r2 = _noise(inv, 0.0)
        data = LorenzParams(q2=q2, r2=r2, obs="spherical", x0_std=X0_STD)
        cases.append(_case("spherical", f"1/r2 = {inv} dB", data, quick, 20, sizes, ("ekf", "ukf"),
                           _nu_grid(q2), {"EKF": Published(ekf), "KalmanNet": Published(kn)},
                           {"KalmanNet": None}))
    return cases


def experiment_cases(experiment: str, quick: bool) -> list[Case]:
    if experiment == "table2":
        return [sampling_case(quick)]
    if experiment == "kalmannet":
        return kalmannet_cases(quick)
    raise ValueError(f"unknown experiment {experiment!r}; one of {', '.join(EXPERIMENTS)}")


def filter_all(tracker, y: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Filter y (N, T, m) as one batch of N tracks: means (N, T, n), the wall time and the
    process CPU time (on a shared machine the CPU time is the steadier figure)."""
    start, cpu = time.perf_counter(), time.process_time()
    tracker.reset(y.shape[0])
    means = np.stack([tracker.step(y[:, t]).mean for t in range(y.shape[1])], 1)
    return means.astype(np.float64), time.perf_counter() - start, time.process_time() - cpu


def per_sequence_mse(est: np.ndarray, x: np.ndarray) -> np.ndarray:
    """MSE per component of each sequence (N,) from (N, T, n) arrays."""
    return np.mean((est - x) ** 2, axis=(1, 2))


def summarize(mse: np.ndarray) -> tuple[float, float]:
    """(10 log10 of the mean MSE, std of the per-sequence dB)."""
    return 10 * math.log10(float(mse.mean())), float(np.std(10 * np.log10(mse)))


def grid_search(case: Case, method: str, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[float, float]]:
    """The q2 of the lowest validation MSE, and the validation MSE dB of every grid q2
    (inf where the filter diverged)."""
    curve = {}
    for q2 in case.q2_grid:
        try:
            est = filter_all(case.build(method, q2), y)[0]
            curve[q2] = summarize(per_sequence_mse(est, x))[0]
        except EngineError:
            curve[q2] = math.inf
        if not math.isfinite(curve[q2]):
            curve[q2] = math.inf
    return min(curve, key=curve.get), curve


def _row(case: Case, method: str, **fields: Any) -> dict[str, Any]:
    pub = case.published.get(method)
    row = {"setting": case.setting, "level": case.level, "T": case.T, "n_test": case.n_test,
           "method": method, "artifact": None, "backend": None, "q2": None, "mse_db": None,
           "mse_db_std": None, "run_time_s": None, "cpu_time_s": None, "status": "ok",
           "published_mse_db": pub.mse_db if pub else None,
           "published_std_db": pub.std_db if pub else None,
           "published_run_time_s": pub.run_time_s if pub else None, "delta_db": None}
    row.update(fields)
    if row["mse_db"] is not None and pub is not None:
        row["delta_db"] = row["mse_db"] - pub.mse_db
    return row


def _scored(case: Case, method: str, est: np.ndarray, x: np.ndarray, wall: float, cpu: float,
            **fields: Any) -> dict:
    mse_db, std_db = summarize(per_sequence_mse(est, x))
    return _row(case, method, mse_db=mse_db, mse_db_std=std_db, run_time_s=wall, cpu_time_s=cpu, **fields)


def run_case(case: Case, log=print) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Grid-search and test every method of one case: (the case's JSON record, the first
    test sequence's estimates by method, plus its truth under "truth")."""
    x_val, y_val = case.simulate("val", case.n_val)
    x, y = case.simulate("test", case.n_test)
    rows, curves, first = [], {}, {"truth": x[0]}
    for method in case.filters:
        q2, curves[METHODS[method]] = grid_search(case, method, x_val, y_val)
        est, wall, cpu = filter_all(case.build(method, q2), y)
        rows.append(_scored(case, METHODS[method], est, x, wall, cpu, q2=q2, backend="torch"))
        first[METHODS[method]] = est[0]
    for column, artifact in case.learned.items():
        if artifact is None:
            rows.append(_row(case, column, status="not trained"))
            continue
        try:
            tracker = engines.load(artifact)
        except UnknownEngineError:
            rows.append(_row(case, column, artifact=artifact, status="not trained"))
            continue
        except EngineError as e:
            rows.append(_row(case, column, artifact=artifact, status=f"failed to load: {e}"))
            continue
        est, wall, cpu = filter_all(tracker, y)
        rows.append(_scored(case, column, est, x, wall, cpu, artifact=artifact, backend=tracker.info.backend))
        first[column] = est[0]
    for r in rows:
        log(format_row(r))
    record = {"setting": case.setting, "level": case.level, "T": case.T, "n_val": case.n_val,
              "n_test": case.n_test, "data": asdict(case.data), "model": case.model,
              "n_particles": case.n_particles if "pf" in case.filters else None,
              "q2_grid": list(case.q2_grid),
              "validation_mse_db": {m: {f"{q:.3g}": v for q, v in c.items()} for m, c in curves.items()},
              "results": rows}
    return record, first


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_row(r: dict[str, Any]) -> str:
    """One line: ours (± std, run time, q2) next to the published figure."""
    head = f"{r['setting']:<11} {r['level']:<14} {r['method']:<18}"
    if r["mse_db"] is None:
        ours = f"{r['status']:<30}"
    else:
        ours = (f"{r['mse_db']:8.3f} ±{r['mse_db_std']:.3f} dB {r['run_time_s']:8.3f} s"
                f" (cpu {r['cpu_time_s']:7.3f} s) q2={_fmt(r['q2'], '.3g'):<7}")
    pub = ""
    if r["published_mse_db"] is not None:
        pub = f"published {r['published_mse_db']:8.3f}"
        pub += "" if r["published_std_db"] is None else f" ±{r['published_std_db']:.3f}"
        pub += " dB" + ("" if r["published_run_time_s"] is None else f" {r['published_run_time_s']:.3f} s")
    delta = "" if r["delta_db"] is None else f"  Δ {r['delta_db']:+.2f} dB"
    return f"{head} {ours}  {pub}{delta}"


def plot_trajectory(first: dict[str, np.ndarray], title: str, path: Path, steps: int = 1000) -> Path:
    """Truth, KalmanNet (when trained) and EKF of one test sequence in the three 2-D
    projections (x1-x2, x1-x3, x2-x3), first `steps` samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"truth": ("k", 1.2), "KalmanNet": ("tab:green", 0.8), "EKF": ("tab:red", 0.8)}
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for ax, (i, j) in zip(axes, ((0, 1), (0, 2), (1, 2)), strict=True):
        for name, (color, lw) in styles.items():
            if name in first:
                xy = first[name][:steps]
                ax.plot(xy[:, i], xy[:, j], color=color, lw=lw, label=name)
        ax.set_xlabel(f"x{i + 1}")
        ax.set_ylabel(f"x{j + 1}")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{title}: test sequence 0, first {min(steps, len(first['truth']))} samples")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


CSV_FIELDS = ("setting", "level", "T", "n_test", "method", "artifact", "backend", "q2", "mse_db",
              "mse_db_std", "run_time_s", "cpu_time_s", "status", "published_mse_db", "published_std_db",
              "published_run_time_s", "delta_db")


def run_experiment(experiment: str, out: str | Path, quick: bool = False, log=print) -> dict[str, Any]:
    """Run `experiment` ("table2" or "kalmannet"), print each row next to the published
    figure, write <experiment>.csv, .json and _trajectory.png under `out`; returns the JSON."""
    cases = experiment_cases(experiment, quick)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    records, plotted = [], None
    for case in cases:
        record, first = run_case(case, log)
        records.append(record)
        if plotted is None or ("KalmanNet" in first and "KalmanNet" not in plotted[1]):
            plotted = (case, first)  # the first case, or the first with a trained KalmanNet
    rows = [r for rec in records for r in rec["results"]]
    with open(out / f"{experiment}.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    png = plot_trajectory(plotted[1], f"{plotted[0].setting} ({plotted[0].level})",
                          out / f"{experiment}_trajectory.png")
    report = {
        "experiment": experiment, "quick": quick, "cases": records,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "processor": platform.processor(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads()},
        "wall_time_s": round(time.time() - start, 2),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {"csv": f"{experiment}.csv", "png": png.name},
    }
    (out / f"{experiment}.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    log(f"{experiment}: {len(rows)} rows in {report['wall_time_s']} s -> {out}")
    return report
