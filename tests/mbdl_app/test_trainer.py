"""The shared trainer, trained for real on tiny problems (the whole file runs in seconds)."""

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.functional import mse_loss
from torch.optim.optimizer import register_optimizer_step_pre_hook

from engines.errors import ArtifactError
from mbdl_app.training import (
    Constant,
    Cosine,
    Piecewise,
    Stage,
    StepDecay,
    TrainConfig,
    Trainer,
    TrainingError,
    read_artifact,
    seed_everything,
    truncated_bptt,
    write_artifact,
)
from mbdl_app.training.bptt import ChunkRunner
from mbdl_app.training.errors import UnknownRecipeError
from mbdl_app.training.progress import progress_bar
from mbdl_app.training.recipes import available_recipes, get_recipe

torch.set_num_threads(1)
WORKER = Path(__file__).with_name("_ddp_worker.py")


def regression(n=128, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(n, 3, generator=g)
    return x, x @ torch.tensor([[1.0, -2.0, 0.5]]).T + 0.05 * torch.randn(n, 1, generator=g)


def cfg(**kw):
    return TrainConfig(**{"device": "cpu", "batch_size": 16, "eval_every": 5, **kw})


def recorder(store):
    return store.append


# -- loop, early stopping, stages ------------------------------------------------------


def test_loss_decreases_and_early_stopping_restores_the_best_weights():
    # train on y = 2x, validate on y = x: w travels 0 -> 2, the val metric is best near w = 1
    x = torch.linspace(-1, 1, 64)[:, None]
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    snapshots, events = {}, []

    def log(e):
        events.append(e)
        snapshots[e.step] = model.weight.detach().clone()

    trainer = Trainer(model, mse_loss, (x, 2 * x), (x, x), cfg(lr=0.05, max_steps=300, eval_every=1,
                                                                patience=3), log=log, quiet=True)
    r = trainer.fit()
    assert r.stopped_early and r.steps < 300
    assert r.history[-1].train_loss < 0.4 * r.history[1].train_loss  # w -> 1 of 2: about a quarter
    validated = [e for e in events if e.val_metric is not None]
    assert r.best_step == min(validated, key=lambda e: e.val_metric).step
    assert torch.equal(model.weight, snapshots[r.best_step])
    assert abs(model.weight.item() - 1.0) < 0.1 and abs(snapshots[r.steps].item() - 1.0) > 0.1
    assert trainer.evaluate() == r.best_metric
    assert [h.step for h in r.history] == list(range(r.steps + 1))


def test_stage_trains_only_its_parameters_at_its_lr_and_restores_requires_grad():
    x, y = regression()
    model = nn.Linear(3, 1)
    model.weight.requires_grad_(False)  # frozen by the model: stays frozen after the stages
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    events = []
    trainer = Trainer(model, mse_loss, (x, y), None, cfg(lr=1e-3, max_steps=3), log=events.append, quiet=True)
    r = trainer.fit(Stage("bias", params=lambda m: [m.bias], lr=0.1))
    assert r.steps == 3 and r.best_metric is None
    assert torch.equal(model.weight, w0) and not torch.equal(model.bias, b0)
    assert {e.lr for e in events} == {0.1}
    assert model.bias.requires_grad and not model.weight.requires_grad

    events.clear()
    r = trainer.fit(Stage("groups", params=lambda m: [{"params": [m.weight], "lr": 0.01},
                                                      {"params": [m.bias]}], max_steps=2))
    assert not torch.equal(model.weight, w0) and {e.lr for e in events} == {0.01}
    assert not model.weight.requires_grad
    with pytest.raises(TrainingError, match="selects no parameters"):
        trainer.fit(Stage("none", params=lambda m: []))


@pytest.mark.parametrize("schedule, expected", [
    (Constant(), [0.1] * 8),
    (StepDecay(every=3, gamma=0.5), [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025]),
    (Cosine(final=0.1), [0.1 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / 8))) for s in range(8)]),
    (Piecewise(stages=((2, 1.0), (3, 0.1), (1, 0.01))), [0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001, 0.001]),
])
def test_schedules_set_the_lr_of_every_step_as_configured(schedule, expected):
    x, y = regression()
    events = []
    Trainer(nn.Linear(3, 1), mse_loss, (x, y), None, cfg(lr=0.1, max_steps=8, schedule=schedule),
            log=events.append, quiet=True).fit()
    assert [e.lr for e in events] == pytest.approx(expected, rel=1e-12)


def test_schedule_and_config_validate_from_plain_data():
    c = TrainConfig.model_validate({"max_steps": 5, "schedule": {"kind": "step", "every": 2}})
    assert c.schedule == StepDecay(every=2, gamma=0.1)
    with pytest.raises(ValueError, match="exactly one of max_steps and epochs"):
        TrainConfig(max_steps=5, epochs=2)
    with pytest.raises(ValueError):
        TrainConfig.model_validate({"max_steps": 5, "schedule": {"kind": "linear"}})


def test_epochs_count_full_batches_of_the_fixed_dataset():
    x, y = regression(n=70)  # 4 full batches of 16 per epoch; the last 6 samples are dropped
    r = Trainer(nn.Linear(3, 1), mse_loss, (x, y), None, cfg(epochs=3), quiet=True).fit()
    assert r.steps == 12


def test_grad_clip_bounds_the_gradient_norm_of_every_update():
    x, y = regression(scale=100.0)
    seen = []

    def before_step(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))))

    events = []
    handle = register_optimizer_step_pre_hook(before_step)
    try:
        Trainer(nn.Linear(3, 1), mse_loss, (x, y), None, cfg(max_steps=5, grad_clip=0.5),
                log=events.append, quiet=True).fit()
    finally:
        handle.remove()
    assert len(seen) == 5 and max(seen) <= 0.5 * (1 + 1e-5)
    assert min(e.grad_norm for e in events) > 10.0  # the raw gradients were far larger


def test_non_finite_loss_is_an_error_naming_the_stage():
    x, y = regression()
    y[0] = float("nan")
    with pytest.raises(TrainingError, match="stage 'train'.*loss is nan"):
        Trainer(nn.Linear(3, 1), mse_loss, (x, y), None, cfg(epochs=1), quiet=True).fit()


# -- truncated BPTT --------------------------------------------------------------------


class LinearRecurrence(nn.Module):
    """h_t = a h_{t-1} + b x_t, y_t = h_t, from a learned h_0: the `step` contract."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(0.9)), nn.Parameter(torch.tensor(0.3))
        self.h0 = nn.Parameter(torch.tensor([0.5]))

    def init_state(self, x):
        return self.h0.expand(x.shape[0], 1)

    def step(self, h, x_t):
        h = self.a * h + self.b * x_t
        return h, h


class TinyGRU(nn.Module):
    """A GRU with a linear head: the chunk-forward contract `forward(x, h) -> (y, h)`."""

    def __init__(self):
        super().__init__()
        self.gru, self.head = nn.GRU(1, 8, batch_first=True), nn.Linear(8, 1)

    def init_state(self, x):
        return torch.zeros(1, x.shape[0], 8)

    def forward(self, x, h):
        out, h = self.gru(x, h)
        return self.head(out), h


def leaky_sums(n, T, seed):
    """y_t = 0.5 y_{t-1} + x_t: the target needs memory across chunk boundaries."""
    x = torch.randn(n, T, 1, generator=torch.Generator().manual_seed(seed))
    y = torch.zeros_like(x)
    for t in range(T):
        y[:, t] = x[:, t] + (0.5 * y[:, t - 1] if t else 0)
    return x, y


def test_truncated_bptt_detaches_the_state_between_chunks():
    x, y = leaky_sums(4, 6, seed=0)
    model = LinearRecurrence()
    truncated_bptt(ChunkRunner(model), x, y, mse_loss, 3, update=lambda loss: loss.backward())
    got = {k: p.grad.clone() for k, p in model.named_parameters()}

    # the same two chunks by hand: the second starts from the first's final state, detached
    h = model.init_state(x)
    y1, h = ChunkRunner(model)(x[:, :3], h)
    loss1 = mse_loss(y1, y[:, :3])
    y2, _ = ChunkRunner(model)(x[:, 3:], h.detach())
    loss2 = mse_loss(y2, y[:, 3:])
    g1 = torch.autograd.grad(loss1, [model.a, model.b, model.h0], retain_graph=True)
    g2 = torch.autograd.grad(loss2, [model.a, model.b])
    # h0 only reaches the second chunk through the state: its gradient is the first chunk's alone
    assert torch.allclose(got["h0"], g1[2])
    assert torch.allclose(got["a"], g1[0] + g2[0]) and torch.allclose(got["b"], g1[1] + g2[1])
    # ... whereas full BPTT would have sent the second chunk's loss back into h0
    y_full, _ = ChunkRunner(model)(x, None)
    g_full = torch.autograd.grad(mse_loss(y_full[:, :3], y[:, :3]) + mse_loss(y_full[:, 3:], y[:, 3:]),
                                 model.h0)[0]
    assert not torch.allclose(g_full, g1[2], rtol=1e-2)


@pytest.mark.parametrize("make, lr, factor", [(LinearRecurrence, 0.05, 0.01), (TinyGRU, 0.02, 0.3)])
def test_truncated_bptt_trains_a_tiny_recurrent_model(make, lr, factor):
    seed_everything(0)
    model = make()
    events = []
    trainer = Trainer(model, mse_loss, leaky_sums(64, 20, seed=1), leaky_sums(32, 20, seed=2),
                      cfg(lr=lr, max_steps=120, eval_every=40, bptt_chunk=5), log=events.append, quiet=True)
    r = trainer.fit()
    assert r.best_metric < factor * r.history[0].val_metric
    assert len(events) == 120  # a step is a batch (4 chunk updates each)


def test_bptt_chunk_needs_a_recurrent_model():
    with pytest.raises(TrainingError, match="no init_state"):
        Trainer(nn.Linear(3, 1), mse_loss, regression(), None, cfg(max_steps=1, bptt_chunk=4))


# -- reproducibility: seeds, checkpoints -----------------------------------------------


class DropoutMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)


def train_mlp(seed, config, data=None, log=None, init_seed=None):
    seed_everything(seed if init_seed is None else init_seed)
    model = DropoutMLP()
    x, y = regression(96, seed=3)
    trainer = Trainer(model, mse_loss, data or (x, y), (x[:32], y[:32]), config, log=log, quiet=True)
    return model, trainer.fit(Stage("mlp"))


def test_same_seed_gives_identical_weights_and_another_seed_does_not():
    c = cfg(max_steps=12, seed=7)
    a, _ = train_mlp(7, c)
    b, _ = train_mlp(7, c)
    other, _ = train_mlp(8, c.model_copy(update={"seed": 8}))
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs)
    assert not torch.equal(a.net[0].weight, other.net[0].weight)


def generated(step, g):
    x = torch.randn(16, 3, generator=g)
    return x, x.sum(dim=1, keepdim=True)


def test_each_stage_draws_its_own_batches_and_a_rerun_of_a_stage_the_same():
    seen: dict[str, list[torch.Tensor]] = {}
    current = ["a"]

    def recording(step, g):
        x, y = generated(step, g)
        seen.setdefault(current[0], []).append(x)
        return x, y

    trainer = Trainer(nn.Linear(3, 1), mse_loss, recording, None, cfg(max_steps=3), quiet=True)
    for name in ("a", "b"):
        current[0] = name
        trainer.fit(Stage(name))
    first_a = seen.pop("a")
    current[0] = "a"
    trainer.fit(Stage("a"))
    assert all(not torch.equal(p, q) for p, q in zip(first_a, seen["b"], strict=True))
    assert all(torch.equal(p, q) for p, q in zip(first_a, seen["a"], strict=True))


class Crash(Exception):
    pass


def same_history(a, b):
    """Equal histories, bit for bit (the first point's train loss is NaN: no steps yet)."""
    return [(h.step, repr(h.train_loss), h.val_metric) for h in a] == [
        (h.step, repr(h.train_loss), h.val_metric) for h in b]


@pytest.mark.parametrize("data", [None, generated], ids=["fixed", "generated"])
def test_resume_after_a_crash_continues_bit_exactly(tmp_path, data):
    c = cfg(max_steps=30, eval_every=5, checkpoint_dir=tmp_path, checkpoint_every=10, optimizer="adamw",
            weight_decay=1e-2, schedule=Cosine(final=0.1), grad_clip=1.0, seed=3)
    straight, r_straight = train_mlp(3, c.model_copy(update={"checkpoint_dir": None}), data)

    def crash_at_10(e):
        if e.step == 10:
            raise Crash

    with pytest.raises(Crash):
        train_mlp(3, c, data, log=crash_at_10)
    resumed, r_resumed = train_mlp(3, c.model_copy(update={"resume": True}), data, init_seed=99)

    for (k, p), q in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p, q), k
    assert r_resumed.steps == r_straight.steps == 30
    assert same_history(r_resumed.history, r_straight.history)

    # a finished stage is not trained again: its weights and result come from the checkpoint
    again, r_again = train_mlp(3, c.model_copy(update={"resume": True}), data, init_seed=5)
    assert torch.equal(again.net[0].weight, straight.net[0].weight)
    assert same_history(r_again.history, r_straight.history)


def test_checkpoint_holds_only_plain_data_and_refuses_another_config(tmp_path):
    c = cfg(max_steps=4, checkpoint_dir=tmp_path, checkpoint_every=2)
    train_mlp(0, c)
    ckpt = torch.load(tmp_path / "mlp.pt", weights_only=True)  # would raise on any pickled object
    assert ckpt["done"] and ckpt["step"] == 4 and set(ckpt["ranks"][0]) >= {"torch", "numpy", "python"}
    with pytest.raises(TrainingError, match=r"mlp\.pt: written by a run with different lr"):
        train_mlp(0, c.model_copy(update={"resume": True, "lr": 0.5}))


# -- data parallelism ------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_match_one_process_on_the_whole_batch(tmp_path):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    ddp.mkdir()
    single.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
         str(WORKER), str(ddp)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]

    spec = importlib.util.spec_from_file_location("_ddp_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    worker.main(single)

    info = [json.loads((ddp / f"info-{r}.json").read_text()) for r in (0, 1)]
    assert [i["world"] for i in info] == [2, 2]
    assert info[0]["events"] == 10 and info[1]["events"] == 0  # only rank 0 logs
    assert all(i["group_kept_by_inner_trainer"] and i["group_left"] for i in info)
    assert info[0]["drawn"] != info[1]["drawn"]  # generated batches are seeded per rank
    assert sorted(p.name for p in (ddp / "ckpt").iterdir()) == ["all.pt", "bias.pt"]
    ckpt = torch.load(ddp / "ckpt" / "all.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2  # every rank's RNG state, one writer

    for name in ("params", "recurrent"):  # recurrent: truncated BPTT through DDP
        p0, p1 = (load_file(ddp / f"{name}-{r}.safetensors") for r in (0, 1))
        ref = load_file(single / f"{name}-0.safetensors")
        for k in ref:
            assert torch.equal(p0[k], p1[k]), (name, k)
            assert torch.allclose(p0[k], ref[k], rtol=0, atol=1e-6), (name, k)
    assert float(ref["h0"]) != 0.5 and float(ref["a"]) != 0.9  # the recurrence trained, h0 included
    g0, g1 = (load_file(ddp / f"generated-{r}.safetensors") for r in (0, 1))
    assert all(torch.equal(g0[k], g1[k]) for k in g0)


# -- artifacts and recipes -------------------------------------------------------------


def card():
    return {"name": "tiny", "task": "regression", "family": "black-box",
            "architecture": {"in_features": 3, "out_features": 1},
            "input": {"shape": ["N", 3]}, "output": {"shape": ["N", 1]},
            "training": {"recipe": "none", "seed": 0}, "metrics": {"test_mse": 0.01}}


def test_artifact_round_trip_verifies_every_file(tmp_path):
    model = nn.Linear(3, 1)
    folder = write_artifact(tmp_path / "tiny", model, card())
    art = read_artifact(folder)
    assert all(torch.equal(art.weights[k], v) for k, v in model.state_dict().items())
    written = json.loads((folder / "card.json").read_text())
    assert written["metrics"] == {"test_mse": 0.01} and set(written["versions"]) >= {"torch", "numpy", "app"}
    assert art.sha256 == written["files"]["weights.safetensors"]


def test_corrupt_or_missing_artifact_file_is_an_error_naming_it(tmp_path):
    folder = write_artifact(tmp_path / "tiny", nn.Linear(3, 1), card())
    weights = folder / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"weights\.safetensors: sha256 .* does not match"):
        read_artifact(folder)
    weights.unlink()
    with pytest.raises(ArtifactError, match=r"weights\.safetensors: missing"):
        read_artifact(folder)
    with pytest.raises(ArtifactError, match=r"card\.json: cannot read"):
        read_artifact(tmp_path / "nowhere")
    with pytest.raises(TrainingError, match="lacks metrics"):
        write_artifact(tmp_path / "bad", nn.Linear(3, 1), {k: v for k, v in card().items() if k != "metrics"})


def test_demo_linear_recipe_runs_end_to_end(tmp_path):
    assert "demo-linear" in available_recipes()
    recipe = get_recipe("demo-linear")
    folder = recipe.run(tmp_path, quick=True, quiet=True)
    assert folder == tmp_path / "demo-linear"
    art = read_artifact(folder)
    assert art.card["training"]["recipe"] == "demo-linear" and art.card["training"]["quick"]
    assert art.card["metrics"]["test_mse"] < 0.01
    model = nn.Linear(4, 2)
    model.load_state_dict(art.weights)
    with pytest.raises(UnknownRecipeError, match="demo-linear"):
        get_recipe("nope")


def test_progress_bar_shows_only_on_a_terminal_when_not_quiet():
    assert progress_bar(False).disable
    assert progress_bar(True).disable  # pytest captures stderr: not a terminal
