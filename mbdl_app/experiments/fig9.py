"""Reproduce seed Fig. 9 (learned factor graphs for symbol detection): `mbdl reproduce fig9`.

Setup (ANCHORS.md "Digital communications"; Shlezinger et al., IEEE TSP 2022): BPSK through the
L = 4 channel h_l = exp(-gamma (l - 1)) in AWGN, sigma^2 = 10^(-SNR/10), SNR = -6, -4, ..., 10 dB,
every figure the mean over gamma = 0.1, 0.2, ..., 2.0. At each (gamma, SNR) point:

- test: 50,000 symbols (100 blocks of 500 of one stream) of the true channel;
- perfect CSI: the model-based detectors know h; the learned ones train on n_t = 5,000 symbols
  of the true channel (one net per point, as ViterbiNet/BCJRNet train per channel);
- CSI uncertainty (the seed's dashed curves): the model-based detectors use per-block estimates
  h_l (1 + sigma_e n_l), sigma_e^2 = 0.1, redrawn every 500-symbol block; the learned ones
  train on 5,000 symbols whose taps are perturbed that way per 500-symbol block ("trained
  using samples from a set of different channels"), and are tested on the true channel.

Detectors: `bcjr` (model-based sum-product = symbol-wise MAP with perfect CSI), `viterbi`
(max-product), `bcjrnet` / `viterbinet` (the learned factor graph with sum- / max-product;
one classifier per point and CSI, all 2 x 180 trained at once, engines/comms/learned_factor_graph.py),
`sbrnn` (engines/comms/sbrnn.py; one per point and CSI, trained one after the other). The
nets are trained here, on the fly, with the recipes' budgets (mbdl_app/training/recipes/comms.py:
1,500 steps of 256 for the classifiers, 300 of 32 windows for the SBRNNs); the shipped
artifacts are one such point (gamma 0.2, 8 dB).

Checks in the JSON (`targets`): no-ISI sanity SER = Q(sqrt(SNR)) at 0 and 4 dB (taps 1,0,0,0,
200,000 symbols); BCJR with perfect CSI beside the anchors' symbol-wise MAP values; the learned
factor graph's SNR gap to BCJR with perfect CSI (the SNR at which BCJR reaches the learned
graph's SER, interpolated in log SER; target <= 1 dB); BCJRNet vs BCJR with CSI uncertainty at
SNR >= 6 dB; BCJRNet vs SBRNN. Nothing correct may fall below the matched-filter bound
Q(||h|| / sigma) (its mean over gamma is in the JSON).

Timings (same run, this machine): each detector's training time, its detection time on the
test set (batched), and its live-like latency: one block of 500 at batch 1 (median of 20 calls,
torch / numpy on one thread) and the symbols per second that gives. SBRNN points are appended to
`fig9_points.jsonl` as they finish, so an interrupted full run (about an hour on one free core,
most of it the 360 SBRNNs) continues where it stopped.

Writes fig9.json, fig9.csv (SER per detector, CSI and SNR) and fig9.png (SER vs SNR; solid:
perfect CSI, dashed: CSI uncertainty). `quick` (tests): 2 gammas x 2 SNRs, 4 test blocks,
tiny training budgets.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import norm

from drivers.sim.isi import IsiParams, IsiSimulator
from engines.base import EngineInfo
from engines.comms.learned_factor_graph import FitConfig, LearnedFactors, ModuleFactors, fit_factors
from engines.comms.sbrnn import SBRNN, SlidingDetector, fit_sbrnn
from engines.comms.sum_product import (
    Trellis,
    TrellisDetector,
    build_bcjr,
    build_viterbi,
    forward_backward,
    soft_symbols,
    symbol_error_rate,
)
from mbdl_app.training.recipes.comms import SBRNN_KWARGS

GAMMAS = tuple(round(0.1 * k, 1) for k in range(1, 21))
SNRS = tuple(range(-6, 11, 2))
MEMORY, BLOCK, TRAIN_SYMBOLS, CSI_ERROR = 4, 500, 5000, 0.1
# symbol-wise MAP with perfect CSI, mean over the 20 channels (ANCHORS.md; +-15 % at 10 dB)
ANCHOR_MAP = {-6: 0.296, 0: 0.158, 4: 0.055, 6: 0.0196, 8: 4.1e-3, 10: 4.4e-4}
NO_ISI_SNRS = (0, 4)
NO_ISI_BLOCKS = 400  # 200,000 symbols
CSIS = ("perfect", "uncertain")
DETECTORS = ("bcjr", "viterbi", "bcjrnet", "viterbinet", "sbrnn")
LATENCY_CALLS = 20


@dataclass(frozen=True)
class Size:
    gammas: tuple[float, ...]
    snrs: tuple[int, ...]
    test_blocks: int
    lfg_steps: int
    sbrnn_steps: int
    no_isi_blocks: int


FULL = Size(GAMMAS, SNRS, 100, 1500, 300, NO_ISI_BLOCKS)
QUICK = Size((0.5, 1.5), (0, 8), 4, 30, 3, 40)


def seed_of(kind: str, gamma: float, snr: int) -> int:
    """A fixed seed per data set and point (train, train-uncertain, test)."""
    return {"train": 1, "uncertain": 2, "test": 3}[kind] * 100_000 + int(round(gamma * 10)) * 100 + snr + 50


def channel(gamma: float, snr: int, seed: int, perturb: float = 0.0) -> IsiParams:
    return IsiParams(memory=MEMORY, gamma=gamma, snr_db=float(snr), block=BLOCK, seed=seed, perturb=perturb)


@dataclass
class Point:
    """One (gamma, SNR): training sequences (perfect / uncertain CSI) and the test blocks."""

    gamma: float
    snr: int
    train: dict[str, tuple[np.ndarray, np.ndarray]]
    y: np.ndarray
    s: np.ndarray


def points(size: Size) -> list[Point]:
    out = []
    for snr in size.snrs:
        for g in size.gammas:
            perfect = channel(g, snr, seed_of("train", g, snr))
            uncertain = channel(g, snr, seed_of("uncertain", g, snr), CSI_ERROR)
            train = {"perfect": IsiSimulator(perfect).symbols(TRAIN_SYMBOLS),
                     "uncertain": IsiSimulator(uncertain).symbols(TRAIN_SYMBOLS)}
            y, s, _ = IsiSimulator(channel(g, snr, seed_of("test", g, snr))).blocks(size.test_blocks)
            out.append(Point(g, snr, train, y, s))
    return out


def block_latency_ms(detector, y: np.ndarray) -> float:
    """Median ms of one batch-1 block step (live-like), after one warm-up call."""
    detector.reset(1)
    detector.step(y[:1])
    times = []
    for k in range(LATENCY_CALLS):
        start = time.perf_counter()
        detector.step(y[k % len(y):k % len(y) + 1])
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def single_net(factors: LearnedFactors, g: int) -> LearnedFactors:
    """Net g of a batched LearnedFactors as a G = 1 module (what an artifact holds)."""
    one = LearnedFactors(factors.memory, 1, mixture=factors.mixture)
    one.load_state_dict({k: v[g:g + 1].clone() for k, v in factors.state_dict().items()})
    return one.eval()


def trellis_detector(name: str, module: LearnedFactors, semiring: str) -> TrellisDetector:
    info = EngineInfo(name=name, family="dnn-aided", task="symbol-detection", backend="torch", window=1,
                      in_shape=(BLOCK,), out_shape=(BLOCK,))
    trellis = Trellis(MEMORY)
    return TrellisDetector(info, ModuleFactors(module), trellis, module.log_transition[0].double().numpy(),
                           semiring)


def run_model_based(pts: list[Point], ser: dict, timing: dict) -> None:
    for p in pts:
        for name, build in (("bcjr", build_bcjr), ("viterbi", build_viterbi)):
            for csi in CSIS:
                d = build(memory=MEMORY, gamma=p.gamma, snr_db=p.snr, block=BLOCK,
                          csi_error=CSI_ERROR if csi == "uncertain" else 0.0,
                          seed=seed_of("test", p.gamma, p.snr))
                d.reset(len(p.y))
                start = time.process_time()
                ser[(name, csi, p.snr, p.gamma)] = symbol_error_rate(d.step(p.y).mean, p.s, d.alphabet)
                timing[name]["detect_cpu_s"] += time.process_time() - start
    for name, build in (("bcjr", build_bcjr), ("viterbi", build_viterbi)):
        timing[name]["block_latency_ms"] = block_latency_ms(build(block=BLOCK), pts[-1].y)


def run_learned_factor_graphs(pts: list[Point], size: Size, ser: dict, timing: dict, log) -> None:
    trellis = Trellis(MEMORY)
    nets = [(p, csi) for p in pts for csi in CSIS]
    y = torch.from_numpy(np.stack([p.train[csi][0] for p, csi in nets])).float()
    s = torch.from_numpy(np.stack([p.train[csi][1] for p, csi in nets]))
    factors = LearnedFactors(MEMORY, len(nets))
    start = time.process_time()
    fit_factors(factors, y, s, trellis, FitConfig(steps=size.lfg_steps), torch.Generator().manual_seed(9))
    fit_s = time.process_time() - start
    log(f"fig9: {len(nets)} learned factor graphs trained in {fit_s:.0f} s of CPU")
    for name in ("bcjrnet", "viterbinet"):
        timing[name]["train_cpu_s"] = fit_s
        timing[name]["nets"] = len(nets)
    factors.eval()
    for g, (p, csi) in enumerate(nets):
        start = time.process_time()
        with torch.inference_mode():
            x = torch.from_numpy(p.y.reshape(1, -1)).float()
            log_f = single_net(factors, g).log_likelihood(x).double().numpy().reshape(len(p.y), BLOCK, -1)
        shared = time.process_time() - start
        log_T = factors.log_transition[g].double().numpy()
        for name, semiring in (("bcjrnet", "sum"), ("viterbinet", "max")):
            start = time.process_time()
            llr, _ = forward_backward(log_f, trellis, log_T, None, semiring)
            ser[(name, csi, p.snr, p.gamma)] = symbol_error_rate(soft_symbols(llr, trellis.alphabet), p.s,
                                                                 trellis.alphabet)
            timing[name]["detect_cpu_s"] += shared + time.process_time() - start
    for name, semiring in (("bcjrnet", "sum"), ("viterbinet", "max")):
        timing[name]["block_latency_ms"] = block_latency_ms(
            trellis_detector(name, single_net(factors, 0), semiring), pts[-1].y)


def _setup_key(size: Size) -> str:
    text = json.dumps({**asdict(size), "sbrnn": SBRNN_KWARGS, "csi_error": CSI_ERROR, "v": 1}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_sbrnns(pts: list[Point], size: Size, ser: dict, timing: dict, out: Path, log) -> None:
    """One SBRNN per point and CSI, one after the other; each result appended to fig9_points.jsonl."""
    key = _setup_key(size)
    path = out / "fig9_points.jsonl"
    done = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            if r.get("setup") == key:
                done[(r["csi"], r["snr"], r["gamma"])] = r
    info = EngineInfo(name="sbrnn", family="black-box", task="symbol-detection", backend="torch", window=1,
                      in_shape=(BLOCK,), out_shape=(BLOCK,))
    module = None
    for p in pts:
        for csi in CSIS:
            r = done.get((csi, p.snr, p.gamma))
            if r is None:
                torch.manual_seed(seed_of("train", p.gamma, p.snr))
                module = SBRNN(**SBRNN_KWARGS)
                start = time.process_time()
                y, s = p.train[csi]
                fit_sbrnn(module, y, s, (-1.0, 1.0), size.sbrnn_steps,
                          generator=torch.Generator().manual_seed(seed_of("train", p.gamma, p.snr)))
                train_s = time.process_time() - start
                start = time.process_time()
                detector = SlidingDetector(info, module, (-1.0, 1.0))
                detector.reset(len(p.y))
                value = symbol_error_rate(detector.step(p.y).mean, p.s, (-1.0, 1.0))
                r = {"setup": key, "csi": csi, "snr": p.snr, "gamma": p.gamma, "ser": value,
                     "train_cpu_s": round(train_s, 3), "detect_cpu_s": round(time.process_time() - start, 3)}
                with open(path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(r) + "\n")
                log(f"fig9: sbrnn {csi} gamma {p.gamma} snr {p.snr}: SER {value:.4g} ({train_s:.0f} s)")
            ser[("sbrnn", csi, p.snr, p.gamma)] = r["ser"]
            timing["sbrnn"]["train_cpu_s"] += r["train_cpu_s"]
            timing["sbrnn"]["detect_cpu_s"] += r["detect_cpu_s"]
            timing["sbrnn"]["nets"] += 1
    module = module or SBRNN(**SBRNN_KWARGS).eval()
    detector = SlidingDetector(info, module, (-1.0, 1.0))
    timing["sbrnn"]["block_latency_ms"] = block_latency_ms(detector, pts[-1].y)


def no_isi_check(size: Size) -> dict[str, Any]:
    """BCJR on the channel without ISI (taps 1,0,0,0): SER beside Q(sqrt(SNR))."""
    rows = {}
    for snr in NO_ISI_SNRS:
        p = IsiParams(memory=MEMORY, taps=(1.0, 0.0, 0.0, 0.0), snr_db=float(snr), block=BLOCK, seed=77 + snr)
        y, s, _ = IsiSimulator(p).blocks(size.no_isi_blocks)
        d = build_bcjr(taps=[1.0, 0.0, 0.0, 0.0], snr_db=snr, block=BLOCK)
        d.reset(len(y))
        value = symbol_error_rate(d.step(y).mean, s, d.alphabet)
        q = float(norm.sf(math.sqrt(10 ** (snr / 10))))
        rows[str(snr)] = {"ser": value, "q_sqrt_snr": round(q, 5), "relative_error": round(value / q - 1, 4),
                          "symbols": int(s.size), "within_5_percent": abs(value / q - 1) <= 0.05}
    return rows


def snr_gap_db(snrs: list[int], ref: list[float], snr: int, value: float) -> float | None:
    """snr minus the SNR at which the reference curve reaches `value` (linear in log10 SER between
    grid points); None outside the reference's range or for a zero SER."""
    logs = np.log10(np.maximum(ref, 1e-12))
    if value <= 0 or not logs[-1] <= math.log10(value) <= logs[0]:
        return None
    return float(snr - np.interp(math.log10(value), logs[::-1], np.asarray(snrs, dtype=float)[::-1]))


def mean_over_gammas(ser: dict, size: Size, names: tuple[str, ...]) -> dict[str, dict[str, list[float]]]:
    return {name: {csi: [float(np.mean([ser[(name, csi, x, g)] for g in size.gammas])) for x in size.snrs]
                   for csi in CSIS} for name in names}


def targets(curves: dict, size: Size, no_isi: dict) -> dict[str, Any]:
    snrs = list(size.snrs)
    bcjr, lfg = curves["bcjr"]["perfect"], curves["bcjrnet"]["perfect"]
    gaps = {str(x): snr_gap_db(snrs, bcjr, x, v) for x, v in zip(snrs, lfg, strict=True)}
    known = [g for g in gaps.values() if g is not None]
    high = [i for i, x in enumerate(snrs) if x >= 6]
    return {
        "no_isi_ser_equals_q_sqrt_snr_within_5_percent": all(r["within_5_percent"] for r in no_isi.values()),
        "bcjr_vs_anchor_map": {str(x): {"ours": round(bcjr[i], 6), "anchor": ANCHOR_MAP[x],
                                        "relative": round(bcjr[i] / ANCHOR_MAP[x] - 1, 4)}
                               for i, x in enumerate(snrs) if x in ANCHOR_MAP},
        "bcjrnet_gap_to_bcjr_perfect_csi_db": gaps,
        "bcjrnet_within_1_db_of_bcjr_perfect_csi": bool(known) and max(known) <= 1.0,
        "bcjrnet_beats_bcjr_uncertain_csi_at_6_db_and_above": {
            str(snrs[i]): curves["bcjrnet"]["uncertain"][i] < curves["bcjr"]["uncertain"][i] for i in high},
        "bcjrnet_beats_sbrnn": {csi: {str(x): curves["bcjrnet"][csi][i] < curves["sbrnn"][csi][i]
                                      for i, x in enumerate(snrs)} for csi in CSIS} if "sbrnn" in curves
        else "pending (the SBRNNs are still training)",
    }


def matched_filter_bound(size: Size) -> list[float]:
    """Q(||h|| / sigma), the mean over gamma, per SNR: no detector can do better."""
    norms = [np.linalg.norm(np.exp(-g * np.arange(MEMORY))) for g in size.gammas]
    return [float(np.mean([norm.sf(n / math.sqrt(10 ** (-x / 10))) for n in norms])) for x in size.snrs]


def _plot(path: Path, size: Size, curves: dict, bound: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"bcjr": "k", "viterbi": "0.5", "bcjrnet": "tab:blue", "viterbinet": "tab:cyan",
               "sbrnn": "tab:red"}
    labels = {"bcjr": "SP (BCJR), model-based", "viterbi": "Viterbi, model-based",
              "bcjrnet": "learned FG (BCJRNet)", "viterbinet": "learned FG (ViterbiNet)", "sbrnn": "SBRNN"}
    fig, ax = plt.subplots(figsize=(7, 5))
    x = list(size.snrs)
    for name in curves:
        for csi, style in (("perfect", "-o"), ("uncertain", "--s")):
            ax.semilogy(x, np.maximum(curves[name][csi], 1e-6), style, color=colours[name], ms=4,
                        label=f"{labels[name]}, {'perfect CSI' if csi == 'perfect' else 'CSI uncertainty'}")
    ax.semilogy(x, bound, ":", color="0.7", label="matched-filter bound")
    pts = [(k, v) for k, v in ANCHOR_MAP.items() if k in x]
    if pts:
        ax.semilogy(*zip(*pts, strict=True), "x", color="tab:orange", ms=8, label="anchors: symbol-wise MAP")
    ax.set_xlabel("SNR [dB]")
    ax.set_ylabel(f"SER (mean over {len(size.gammas)} channels)")
    ax.set_title("Seed Fig. 9: learned factor graphs, L = 4, 5,000 training symbols")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_fig9(out: str | Path, quick: bool = False, log=print) -> dict[str, Any]:
    """Run the experiment into folder `out` (created); returns what fig9.json holds. fig9.json and
    fig9.csv are first written without the SBRNN (marked pending), then with it and the PNG."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = QUICK if quick else FULL
    torch.set_num_threads(1)
    wall = time.time()
    pts = points(size)
    ser: dict[tuple, float] = {}
    timing = {name: {"train_cpu_s": 0.0, "detect_cpu_s": 0.0, "nets": 0} for name in DETECTORS}
    run_model_based(pts, ser, timing)
    log("fig9: model-based detectors done")
    run_learned_factor_graphs(pts, size, ser, timing, log)
    no_isi = no_isi_check(size)
    write_outputs(out, size, pts, ser, timing, no_isi, DETECTORS[:-1], wall, quick)
    run_sbrnns(pts, size, ser, timing, out, log)
    return write_outputs(out, size, pts, ser, timing, no_isi, DETECTORS, wall, quick)


def write_outputs(out: Path, size: Size, pts: list[Point], ser: dict, timing: dict, no_isi: dict,
                  names: tuple[str, ...], wall: float, quick: bool) -> dict[str, Any]:
    """fig9.json, fig9.csv (and fig9.png when complete) for the detectors `names` (those done so far)."""
    symbols = len(pts) * pts[0].s.size * len(CSIS)
    timing = {name: dict(timing[name]) for name in names}
    for t in timing.values():
        t["detect_us_per_symbol"] = round(1e6 * t["detect_cpu_s"] / symbols, 3)
        t["live_symbols_per_s"] = round(BLOCK / (t["block_latency_ms"] / 1e3))
        for k in ("train_cpu_s", "detect_cpu_s", "block_latency_ms"):
            t[k] = round(t[k], 3)
    curves = mean_over_gammas(ser, size, names)
    bound = matched_filter_bound(size)
    rows = [{"detector": name, "csi": csi, "snr_db": x, "ser": curves[name][csi][i]}
            for name in names for csi in CSIS for i, x in enumerate(size.snrs)]
    with open(out / "fig9.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = {
        "experiment": "fig9", "quick": quick, "complete": names == DETECTORS,
        "ser": {name: {csi: dict(zip(map(str, size.snrs), v, strict=True)) for csi, v in c.items()}
                for name, c in curves.items()},
        "ser_per_gamma": {f"{name}/{csi}/{x}": {str(g): ser[(name, csi, x, g)] for g in size.gammas}
                          for name in names for csi in CSIS for x in size.snrs},
        "matched_filter_bound": dict(zip(map(str, size.snrs), bound, strict=True)),
        "no_isi": no_isi,
        "targets": targets(curves, size, no_isi),
        "timing": timing,
        "setup": {"gammas": list(size.gammas), "snrs_db": list(size.snrs), "memory": MEMORY, "block": BLOCK,
                  "train_symbols": TRAIN_SYMBOLS, "test_symbols_per_point": int(pts[0].s.size),
                  "csi_error": CSI_ERROR, "lfg_steps": size.lfg_steps, "sbrnn_steps": size.sbrnn_steps,
                  "sbrnn": SBRNN_KWARGS, "nets_trained_on_the_fly": True,
                  "timing": "CPU seconds of this process (time.process_time), one torch thread; "
                            "block_latency_ms: median of 20 batch-1 blocks of 500"},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "processor": platform.processor() or platform.machine()},
        "wall_time_s": round(time.time() - wall, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "fig9.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if result["complete"]:
        _plot(out / "fig9.png", size, curves, bound)
    return result
