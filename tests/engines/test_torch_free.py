"""The torch-free runtime (issue 18): what runs without torch, and that it computes what torch does.

With torch installed: the numpy Lorenz model and EKF (engines/tracking/lorenz_numpy.py) and the
numpy twins of the tracker modules (engines/tracking/tracker_parts.py) against their torch
originals. With torch blocked (a subprocess whose import system refuses torch, as in a fresh
`pip install mbdl-studio` without the torch extra): the shipped artifacts run on ONNX Runtime
and give what the torch engines give here, torch-only engines and commands say so in one line,
and the edge session (mbdl_app/sessions/edge.toml) runs with every engine producing results.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import engines
import exported_models
from engines.artifacts import read_artifact
from engines.load import load_artifact
from engines.tracking.kalman import build_ekf as build_torch_ekf
from engines.tracking.learned import build_tracker_module
from engines.tracking.lorenz_numpy import LorenzModel, NumpyEKF
from engines.tracking.ssm import LorenzSSM
from engines.tracking.tracker_parts import twin_from_card

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = {d.name: d for d in exported_models.artifact_dirs()}
TRACKERS = ("kalmannet-lorenz", "mbrnn-lorenz")
# the shipped artifacts checked without torch (corona-mc: with its numpy motion compensation)
STATELESS = ("corona-ceus", "corona-mc", "ulm-lista", "lista-cs", "unfolded-admm-cs")
# Python with torch blocked, as an install without the torch extra sees it: `import torch` raises
# ModuleNotFoundError and importlib.util.find_spec("torch") is None
NO_TORCH = textwrap.dedent("""
    import sys

    sys.modules["torch"] = None
""")


def run_without_torch(code: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH + textwrap.dedent(code), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# ---- the numpy parts against torch --------------------------------------------------------------
@pytest.mark.parametrize("obs,angle", [("identity", 0.0), ("rotated", 10.0), ("spherical", 0.0)])
def test_numpy_lorenz_model_computes_what_lorenz_ssm_computes(obs, angle):
    ssm, model = LorenzSSM(q2=0.1, r2=0.5, obs=obs, angle_deg=angle), LorenzModel(q2=0.1, r2=0.5, obs=obs,
                                                                                 angle_deg=angle)
    x = np.random.default_rng(0).normal(0, 8, (16, 3))
    y = np.random.default_rng(1).normal(0, 8, (16, 3))
    xt = torch.from_numpy(x)
    fx, F = ssm.linearize_f(xt)
    np.testing.assert_allclose(model.f(x), ssm.f(xt).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.linearize_f(x)[0], fx.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.linearize_f(x)[1], F.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.h(x), ssm.h(xt).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.H_jacobian(x), ssm.H_jacobian(xt).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.innovation(y, model.h(x)),
                               ssm.innovation(torch.from_numpy(y), ssm.h(xt)).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(model.R, ssm.R.numpy())
    np.testing.assert_array_equal(model.Q, ssm.Q.numpy())


def lorenz_track(steps: int, n: int, r2: float = 1.0) -> np.ndarray:
    """Observations y (steps, n, 3) of the Lorenz model from x0 = 1, with process noise."""
    rng, model = np.random.default_rng(3), LorenzModel()
    x, ys = np.ones((n, 3)), []
    for _ in range(steps):
        x = model.f(x) + 0.1 * rng.standard_normal(x.shape)
        ys.append(x + r2**0.5 * rng.standard_normal(x.shape))
    return np.stack(ys)


def test_numpy_ekf_matches_the_torch_ekf_with_missing_and_outlying_observations():
    ys = lorenz_track(300, 2)
    ys[50, 0] = np.nan  # a missing reading: predicted through
    ys[120, 1] = 1e6  # a glitch: gated
    torch_ekf = build_torch_ekf(p0=0.5)
    numpy_ekf = engines.load("ekf", backend="numpy", p0=0.5)
    assert isinstance(numpy_ekf, NumpyEKF) and numpy_ekf.info.backend == "numpy"
    z0 = np.array([[1.0, 1.0, 1.0], [2.0, 0.0, 20.0]])
    torch_ekf.reset(2, z0)
    numpy_ekf.reset(2, z0)
    for y in ys:
        a, b = torch_ekf.step(y), numpy_ekf.step(y)
        np.testing.assert_array_equal(a.gated, b.gated)
        np.testing.assert_allclose(b.mean, a.mean, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(b.cov, a.cov, rtol=1e-9, atol=1e-9)
    assert b.gated is not None


def test_ekf_auto_is_the_torch_ekf_when_torch_is_installed():
    assert engines.load("ekf").info.backend == "torch"


def twin_cases():
    cases = {name: read_artifact(ARTIFACTS[name]).card for name in (*TRACKERS, "kalmannet-lorenz-rot")}
    cases["kalmannet-arch1-rotated"] = {"architecture": {"name": "kalmannet", "kwargs": {"arch": "arch1"}},
                                        "model": {"obs": "rotated", "angle_deg": 10.0}, "x0": [0.5, 1, 2]}
    cases["kalmannet-spherical"] = {"architecture": {"name": "kalmannet", "kwargs": {}},
                                    "model": {"obs": "spherical"}, "x0": [1, 1, 1]}
    return cases


@pytest.mark.parametrize("case", list(twin_cases()))
def test_tracker_twins_give_their_torch_modules_state_innovation_and_coast(case):
    card = twin_cases()[case]
    spec = card["architecture"]
    module = build_tracker_module(spec["name"], card["model"], card["x0"], **spec.get("kwargs", {})).eval()
    if case in ARTIFACTS:
        module.load_state_dict(read_artifact(ARTIFACTS[case]).weights)
    twin = twin_from_card(card)
    assert tuple(twin.state_names) == tuple(module.state_names)
    assert twin.has_cov == bool(module.has_cov)
    np.testing.assert_allclose(twin.observation_noise(), module.observation_noise().numpy(), rtol=0)
    z0 = np.random.default_rng(4).normal(0, 5, (3, 3))
    with torch.inference_mode():
        for start in (None, z0):
            ours = twin.init_state(3, start)
            theirs = module.init_state(3, None if start is None else torch.from_numpy(start))
            for a, b in zip(ours, theirs, strict=True):
                assert a.dtype == np.float32
                np.testing.assert_allclose(a, b.numpy(), rtol=1e-6, atol=1e-6)
        state = module.init_state(3, torch.from_numpy(z0))
        y = torch.from_numpy(np.random.default_rng(5).normal(0, 5, (3, 3)).astype(np.float32))
        for _ in range(3):  # a state the filter reached, not only the prior
            mean, cov, *nxt = module.step_tensors(y, *state)
            dy = module.innovation(y, state, nxt).numpy()
            np.testing.assert_allclose(twin.innovation(y.numpy(), [s.numpy() for s in state],
                                                       [s.numpy() for s in nxt]), dy, rtol=1e-6, atol=1e-5)
            for a, b in zip(twin.coast(*(s.numpy() for s in state)), module.coast(*state), strict=True):
                np.testing.assert_allclose(a, b.numpy(), rtol=1e-6, atol=1e-5)
            state = tuple(nxt)


def test_onnxruntime_tracker_gates_missing_and_outlying_observations_as_torch_does():
    ys = lorenz_track(120, 2)
    ys[30, 0] = np.nan
    ys[60, 1] = 1e6
    torch_engine = load_artifact(ARTIFACTS["kalmannet-lorenz"], "torch")
    ort_engine = load_artifact(ARTIFACTS["kalmannet-lorenz"], "onnxruntime")
    z0 = np.array([[1.0, 1.0, 1.0], [-3.0, 2.0, 25.0]])
    torch_engine.reset(2, z0)
    ort_engine.reset(2, z0)
    gated = 0
    for y in ys:
        a, b = torch_engine.step(y), ort_engine.step(y)
        np.testing.assert_array_equal(a.gated, b.gated)
        np.testing.assert_allclose(b.mean, a.mean, rtol=1e-4, atol=1e-4)
        gated += int(a.gated.sum())
    assert gated >= 2


def test_artifact_arrays_are_its_torch_weights():
    art = read_artifact(ARTIFACTS["kalmannet-lorenz"])
    assert set(art.arrays) == set(art.weights)
    for k, v in art.arrays.items():
        assert isinstance(v, np.ndarray)
        np.testing.assert_array_equal(v, art.weights[k].numpy())


# ---- without torch ------------------------------------------------------------------------------
def reference_inputs() -> dict[str, np.ndarray]:
    """Inputs of each checked artifact: random at its card's size (32 where any size goes), a
    sparse coder's x = H s (what it was trained on), Lorenz observations for the trackers."""
    rng = np.random.default_rng(11)
    out = {}
    for name in STATELESS:
        art = read_artifact(ARTIFACTS[name])
        if "operator" in art.arrays:
            H = art.arrays["operator"]
            s = rng.standard_normal((4, H.shape[1])) * (rng.random((4, H.shape[1])) < 0.1)
            out[name] = (s @ H.T).astype(np.float32)
        else:
            shape = [d if isinstance(d, int) else 32 for d in art.card["onnx"]["inputs"][0]["shape"][1:]]
            out[name] = (0.3 * rng.standard_normal((2, *shape))).astype(np.float32)
    ys = lorenz_track(40, 2)
    ys[20, 1] = np.nan
    for name in TRACKERS:
        out[name] = ys
    return out


WITHOUT_TORCH = """
    import json, sys
    import numpy as np

    out = {}
    try:
        import torch  # noqa: F401
        out["torch"] = "importable"
    except ImportError:
        out["torch"] = "missing"
    import engines
    from engines.errors import TorchMissing

    inputs = np.load(sys.argv[1])
    results = {}
    for name in inputs.files:
        e = engines.load(name)  # auto: ONNX Runtime without probing torch
        out[f"backend:{name}"] = e.info.backend
        x = inputs[name]
        if hasattr(e, "step"):
            e.reset(x.shape[1])
            results[name] = np.stack([e.step(y).mean for y in x])
        else:
            results[name] = e(x)
    np.savez(sys.argv[2], **results)
    for name in ("ekf",):
        out[f"backend:{name}"] = engines.load(name).info.backend
    for name, backend in (("lista-cs", "torch"), ("ista", "auto"), ("ukf", "auto")):
        try:
            engines.load(name, backend=backend)
            out[f"error:{name}"] = ""
        except TorchMissing as err:
            out[f"error:{name}"] = str(err)
    from mbdl_app.catalog import catalog

    entries = catalog()
    out["catalog"] = {e.name: e.error for e in entries}
    out["torch_loaded"] = sys.modules.get("torch") is not None
    print(json.dumps(out))
"""


def test_shipped_artifacts_run_on_onnxruntime_without_torch_and_give_what_torch_gives(tmp_path):
    inputs = reference_inputs()
    np.savez(tmp_path / "in.npz", **inputs)
    proc = run_without_torch(WITHOUT_TORCH, str(tmp_path / "in.npz"), str(tmp_path / "out.npz"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["torch"] == "missing" and out["torch_loaded"] is False
    results = np.load(tmp_path / "out.npz")
    for name, x in inputs.items():
        assert out[f"backend:{name}"] == "onnxruntime", name
        engine = load_artifact(ARTIFACTS[name], "torch")
        if name in TRACKERS:
            engine.reset(x.shape[1])
            expected = np.stack([engine.step(y).mean for y in x])
        else:
            expected = engine(x)
        diff, ref = np.linalg.norm(results[name] - expected), np.linalg.norm(expected)
        assert (diff / ref if ref > 0 else diff) <= 1e-4, (name, diff, ref)
    assert out["backend:ekf"] == "numpy"
    fix = "pip install 'mbdl-studio[torch]'"
    for name in ("lista-cs", "ista", "ukf"):
        assert "needs torch" in out[f"error:{name}"] and fix in out[f"error:{name}"], out[f"error:{name}"]
        assert "\n" not in out[f"error:{name}"]
    catalog = out["catalog"]
    assert set(catalog) == set(engines.available())  # the menu lists everything, and does not crash
    assert not any(catalog[name] for name in (*STATELESS, *TRACKERS, "ekf", "svd-filter")), catalog
    assert "needs torch" in catalog["ukf"]


EDGE_SESSION = """
    import json, sys, time
    from mbdl_app.config import EngineConfig, load_config
    from mbdl_app.session.session import Session

    cfg = load_config("edge")
    # and one engine written in torch, with one chained to it: both skipped, the rest runs
    extra = [EngineConfig(name="ukf", source="lorenz"),
             EngineConfig(name="rpca-fista", source="ceus", id="rpca"),
             EngineConfig(name="ulm-lista", input="rpca", id="ulm-on-rpca")]
    cfg = cfg.model_copy(update={"engines": [*cfg.engines, *extra]})
    session = Session(cfg)
    session.start()
    time.sleep(float(sys.argv[1]))
    session.stop()
    stats = {k: v["results"] for k, v in session.bus.snapshot().items()}
    print(json.dumps({"results": stats, "skipped": session.skipped,
                      "backends": {k: e.info.backend for k, e in session.engines.items()},
                      "torch_loaded": sys.modules.get("torch") is not None}))
"""


@pytest.mark.slow
def test_the_edge_session_runs_without_torch_every_engine_producing_results():
    proc = run_without_torch(EDGE_SESSION, "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["torch_loaded"] is False
    assert set(out["skipped"]) == {"ukf", "rpca", "ulm-on-rpca"}
    assert all("needs torch" in why for why in out["skipped"].values()), out["skipped"]
    assert out["backends"] == {"svd-filter": "numpy", "corona-ceus": "onnxruntime",
                               "ulm-lista": "onnxruntime", "ekf": "numpy", "kalmannet-lorenz": "onnxruntime",
                               "lista-cs": "onnxruntime"}
    assert all(n > 0 for n in out["results"].values()), out["results"]
    assert set(out["backends"]) <= set(out["results"])


@pytest.mark.parametrize("argv,command", [(["train", "lista-cs", "--quick"], "train"),
                                          (["export", "lista-cs"], "export")])
def test_commands_that_need_torch_say_so_in_one_line_and_exit_2(argv, command):
    proc = run_without_torch("""
        from mbdl_app.cli import main

        main(sys.argv[1:])
    """, *argv, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"mbdl {command} needs torch: pip install 'mbdl-studio[torch]'"


def test_a_tracker_card_without_a_numpy_twin_falls_back_to_its_torch_module():
    card = read_artifact(ARTIFACTS["kalmannet-lorenz"]).card
    assert twin_from_card({**card, "architecture": {"name": "gru-tracker", "kwargs": {}}}) is None
    assert twin_from_card({**card, "model": {**card["model"], "a_new_parameter": 1}}) is None
    assert twin_from_card(card) is not None
