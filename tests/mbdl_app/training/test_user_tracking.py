"""`mbdl train kalmannet --data FILE` (issue 17, item 6): a user's trajectories (NPZ or HDF5),
validation split, an artifact that loads as an engine, bad files as one-line errors, and a
loss that turns NaN stops training with one line while the last good weights are kept."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import engines
from drivers.sim.lorenz import LorenzParams, LorenzSimulator
from engines.load import load_artifact
from mbdl_app.cli import main
from mbdl_app.training.checkpoint import load_checkpoint
from mbdl_app.training.errors import TrainingError
from mbdl_app.training.user_tracking import load_trajectories, parse_model, train_on_file


@pytest.fixture(scope="module")
def trajectories():
    x, y = LorenzSimulator(LorenzParams(q2=0.0, r2=1.0, x0_std=0.1, seed=3)).trajectories(5, 16)
    return x, y


def test_npz_trains_an_artifact_that_runs_as_an_engine_with_missing_rows(tmp_path, trajectories):
    x, y = trajectories
    y = y.copy()
    y[1, 3] = np.nan  # a missing observation in the data: the tracker coasts through it
    np.savez(tmp_path / "mine.npz", x=x, y=y, x0=np.ones((5, 3)))
    res = train_on_file("kalmannet", tmp_path / "mine.npz", out=tmp_path / "out", epochs=1, batch=4, chunk=8,
                        quiet=True)
    assert res.folder == tmp_path / "out" / "kalmannet-mine" and res.best_epoch == 1
    assert np.isfinite(res.best_val_db)
    assert (tmp_path / "out" / "kalmannet-mine.last_good.pt").is_file()
    engine = load_artifact(res.folder, "torch")
    assert engine.card["metrics"]["val_sequences"] == 1 and "ekf" in engine.card["metrics"]
    engine.reset(1)
    est = engine.step(np.array([[np.nan, np.nan, np.nan]]))
    assert bool(est.gated[0]) and np.isfinite(est.mean).all()


def test_hdf5_through_the_cli_and_model_overrides(tmp_path, trajectories, capsys):
    x, y = trajectories
    with h5py.File(tmp_path / "mine.h5", "w") as f:
        f["x"], f["y"] = x, y
    with pytest.raises(SystemExit) as e:
        main(["train", "kalmannet", "--data", str(tmp_path / "mine.h5"), "--epochs", "1", "--val-frac", "0.4",
              "--model", "lorenz:r2=0.5", "--out", str(tmp_path / "out")])
    assert e.value.code == 0
    assert "best epoch 1" in capsys.readouterr().out
    card = load_artifact(tmp_path / "out" / "kalmannet-mine", "torch").card
    assert card["model"]["r2"] == 0.5 and card["metrics"]["val_sequences"] == 2
    assert parse_model("lorenz-rot")[0]["r2"] == 1e-3


def test_a_loss_that_turns_nan_stops_with_one_line_and_keeps_the_last_good_weights(tmp_path, trajectories):
    x, y = trajectories
    y = y.copy()
    y[:, 10:] = 1e30  # huge readings: the filter overflows, the loss is not finite
    np.savez(tmp_path / "glitch.npz", x=x, y=y)
    with pytest.raises(TrainingError) as e:
        train_on_file("kalmannet", tmp_path / "glitch.npz", out=tmp_path / "out", epochs=2, batch=4, chunk=8,
                      quiet=True)
    msg = str(e.value)
    assert "\n" not in msg and "glitch.npz" in msg and "epoch 1, batch 1" in msg and "last good" in msg
    kept = load_checkpoint(tmp_path / "out" / "kalmannet-glitch.last_good.pt")
    assert kept["epoch"] == 1 and all(torch.isfinite(v).all() for v in kept["model"].values())


@pytest.mark.parametrize("arrays, words", [
    ({"y": np.zeros((4, 5, 3))}, "no array 'x'"),
    ({"x": np.zeros((4, 5, 3)), "y": np.zeros((4, 6, 3))}, "same N, T"),
    ({"x": np.full((4, 5, 3), np.nan), "y": np.zeros((4, 5, 3))}, "non-finite"),
    ({"x": np.zeros((4, 5, 2)), "y": np.zeros((4, 5, 3))}, "n = 2"),
    ({"x": np.zeros((1, 5, 3)), "y": np.zeros((1, 5, 3))}, "cannot be split"),
])
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, arrays, words):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(TrainingError, match=words) as e:
        train_on_file("kalmannet", tmp_path / "bad.npz", out=tmp_path / "out", epochs=1, quiet=True)
    assert str(tmp_path / "bad.npz") in str(e.value) and "\n" not in str(e.value)


def test_unknown_model_and_architecture(tmp_path):
    with pytest.raises(TrainingError, match="unknown model 'vanderpol'"):
        parse_model("vanderpol")
    with pytest.raises(TrainingError, match="key=value"):
        parse_model("lorenz:foo=1")
    np.savez(tmp_path / "ok.npz", x=np.zeros((4, 5, 3)), y=np.zeros((4, 5, 3)))
    with pytest.raises(TrainingError, match="--model 'lorenz:obs=polar'"):
        train_on_file("kalmannet", tmp_path / "ok.npz", model="lorenz:obs=polar", out=tmp_path, quiet=True)
    with pytest.raises(TrainingError, match="tracker architecture"):
        train_on_file("lista-cs", tmp_path / "x.npz", out=tmp_path)
    with pytest.raises(TrainingError, match="no such file"):
        load_trajectories(tmp_path / "absent.npz")
    assert engines  # the artifact above loads through engines.load_artifact
