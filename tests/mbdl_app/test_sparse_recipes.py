"""The sparse-coding recipes (LISTA family, learned/unfolded ADMM), `mbdl train` and `mbdl bench sparse`."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from engines.load import load_artifact
from engines.sparse_models import build_sparse_model
from engines.sparse_problem import SparseProblem
from mbdl_app.bench.sparse_bench import run_sparse_bench
from mbdl_app.training.artifact import CARD_FIELDS, read_artifact
from mbdl_app.training.recipes import available_recipes, get_recipe
from mbdl_app.training.recipes.sparse import (
    ADMM_LAM_GRID,
    ADMM_RHO_GRID,
    METHODS,
    NOISE,
    QUICK,
    TEST_SEED,
    VAL_SEED,
    FreshBatches,
    copy_previous_layer,
    only_layer,
    tune_admm,
)

NAMES = [f"{m}-cs{s}" for s in NOISE for m in METHODS]


def test_every_method_has_a_recipe_per_noise_setting():
    assert set(NAMES) <= set(available_recipes()) and len(NAMES) == 18


@pytest.mark.parametrize("name", NAMES)
def test_recipe_runs_quick_and_its_card_holds_held_out_metrics(tmp_path, name):
    folder = get_recipe(name).run(tmp_path, quick=True, quiet=True)
    art = read_artifact(folder)
    card = art.card
    assert set(CARD_FIELDS) <= set(card) and card["task"] == "sparse-coding"
    assert card["family"] == ("learned-optimizer" if name.startswith("learned-admm") else "unfolded")
    assert card["training"]["quick"] and card["training"]["seed"] == 0 and card["training"]["wall_time_s"] > 0
    assert card["training"]["stages"] and all(st["steps"] > 0 for st in card["training"]["stages"])
    assert card["input"]["shape"] == ["N", QUICK.m] and card["output"]["shape"] == ["N", QUICK.n]
    metrics = card["metrics"]
    curve = metrics["test_nmse_db_per_layer"]
    assert len(curve) == QUICK.layers + 1 and curve[0] == 0.0  # s_0 = 0
    assert metrics["test_nmse_db"] == curve[-1] < -1.0 and metrics["test_seed"] == TEST_SEED
    assert card["problem"]["snr_db"] == NOISE[name[name.index("-cs") + len("-cs"):]]
    # the artifact is an engine whose output is its torch module's, on its own stored H
    engine = load_artifact(folder, backend="torch")
    H = SparseProblem.standard(seed=card["problem"]["H_seed"], m=QUICK.m, n=QUICK.n, dtype=torch.float32).H
    np.testing.assert_array_equal(engine.operator, H.numpy())
    x = torch.randn(4, QUICK.m, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = engine.module(x).numpy()
    np.testing.assert_array_equal(engine(x.numpy()), expected)


@pytest.mark.parametrize("name", ["lista-cs", "lista-cpss-cs-snr40"])
def test_matrix_methods_start_from_a_trained_alista_with_their_support_selection(tmp_path, name):
    card = read_artifact(get_recipe(name).run(tmp_path, quick=True, quiet=True)).card
    stages = [st["name"] for st in card["training"]["stages"]]
    pre = [st for st in stages if st.startswith("pretrain-")]
    assert pre and stages[:len(pre)] == pre and len(stages) > len(pre)  # ALISTA first, then the method
    assert "ALISTA" in card["training"]["init"]
    assert card["training"]["total_steps"] == sum(st["steps"] for st in card["training"]["stages"])


def test_admm_tuning_picks_the_grid_point_with_the_best_validation_nmse():
    from engines.imaging.admm import ADMM, L1Prox
    from engines.sparse_problem import nmse_db

    problem = SparseProblem.standard(m=QUICK.m, n=QUICK.n, dtype=torch.float32)
    val = problem.sample(50, torch.Generator().manual_seed(VAL_SEED))
    best = tune_admm(problem.H, val, 3)
    scores = {(r, lam): nmse_db(ADMM(problem.H, prox=L1Prox(r), lam=lam, n_iter=3)(val.x), val.s)
              for r in ADMM_RHO_GRID for lam in ADMM_LAM_GRID}
    assert (best["rho"], best["lam"]) == min(scores, key=scores.get)
    assert best["val_nmse_db"] == pytest.approx(min(scores.values()), abs=1e-3)


def test_tuned_admm_recipes_store_the_tuned_point_in_the_architecture(tmp_path):
    card = read_artifact(get_recipe("unfolded-admm-cs").run(tmp_path, quick=True, quiet=True)).card
    chosen = card["training"]["tuning"]["chosen"]
    kwargs = card["architecture"]["kwargs"]
    assert (kwargs["rho"], kwargs["lam"]) == (chosen["rho"], chosen["lam"])


def test_new_layer_stage_trains_that_layer_only():
    H = SparseProblem.standard(m=10, n=20, dtype=torch.float32).H
    model = build_sparse_model("lista", H, n_layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with only_layer(model, 1, 3):
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(8, 10)).square().sum().backward()
            opt.step()
    for name in ("W1", "W2", "theta"):
        new, old = model.state_dict()[name], before[name]
        assert torch.equal(new[0], old[0]) and torch.equal(new[2], old[2]) and not torch.equal(new[1], old[1])


def test_a_warm_new_layer_starts_from_the_previous_one():
    H = SparseProblem.standard(m=10, n=20, dtype=torch.float32).H
    model = build_sparse_model("alista", H, n_layers=3)
    with torch.no_grad():
        model.gamma[0], model.theta[0] = 0.3, 0.05
    copy_previous_layer(model, 1, 3)
    gamma, theta = model.gamma.tolist(), model.theta.tolist()
    assert gamma[:2] == pytest.approx([0.3, 0.3]) and theta[1] == pytest.approx(0.05)
    assert gamma[2] != pytest.approx(0.3)


def test_every_stage_draws_fresh_training_batches_reproducibly():
    # the trainer restarts its step count in every stage: batches must not repeat across stages
    data = FreshBatches(SparseProblem.standard(m=10, n=20))
    first = data(0, torch.Generator().manual_seed(123))[0]
    data.stage = 1
    second = data(0, torch.Generator().manual_seed(123))[0]
    data.stage = 0
    assert not torch.equal(first, second)
    assert torch.equal(first, data(0, torch.Generator().manual_seed(123))[0])


def test_mbdl_train_quick_writes_the_artifact_and_errors_are_one_line(tmp_path):
    cli = [sys.executable, "-m", "mbdl_app.cli"]
    proc = subprocess.run([*cli, "train", "alista-cs", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "alista-cs" / "card.json").is_file() and "test_nmse_db" in proc.stdout
    proc = subprocess.run([*cli, "train", "lista-nope"], capture_output=True, text=True, timeout=60)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "unknown recipe 'lista-nope'" in lines[0]


def test_bench_sparse_quick_writes_csv_json_png(tmp_path):
    report = run_sparse_bench(tmp_path, n=100, quick=True, log=lambda *_: None)
    rows = report["results"]
    methods = {r["method"] for r in rows}
    assert methods == {"ista", "fista", "admm", *METHODS} and len(rows) == 3 * len(methods)
    assert all(len(r["curve"]) == QUICK.layers + 1 and r["time_ms_per_1000"] > 0 for r in rows)
    learned = [r for r in rows if r["family"] != "model-based"]
    assert all(r["fista_iters_to_match"] is None or r["fista_time_ms_to_match"] >= 0 for r in learned)
    with open(tmp_path / "sparse_nmse.csv") as f:
        assert len(list(csv.DictReader(f))) == sum(len(r["curve"]) for r in rows)
    assert json.loads((tmp_path / "sparse_bench.json").read_text())["settings"]["quick"]
    assert (tmp_path / "sparse_summary.csv").is_file()
    assert (tmp_path / "sparse_nmse.png").read_bytes()[:4] == b"\x89PNG"
