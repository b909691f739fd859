"""Shared pieces of the runtime tests: a private cache dir, a tiny exportable artifact, a tiny tracker."""

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from engines.artifacts import CARD, OPERATOR_KEY, WEIGHTS, sha256_of
from engines.sparse_models import build_sparse_model
from engines.sparse_problem import SparseProblem


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Probes and TensorRT engines go to a fresh folder, not the user's cache."""
    monkeypatch.setenv("MBDL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_tiny_artifact(folder, arch="lista-cpss", name="tiny"):
    """A hand-made sparse-coding artifact, 20 x 40, 4 layers (support selection on for lista-cpss)."""
    folder.mkdir(parents=True)
    H = SparseProblem.standard(seed=3, m=20, n=40, dtype=torch.float32).H
    kwargs = {"n_layers": 4, "rho": 0.4}
    model = build_sparse_model(arch, H, **kwargs)
    save_file(
        {**{k: v.clone().contiguous() for k, v in model.state_dict().items()}, OPERATOR_KEY: H},
        str(folder / WEIGHTS),
    )
    card = {
        "name": name,
        "task": "sparse-coding",
        "family": "unfolded",
        "architecture": {"name": arch, "kwargs": kwargs},
        "metrics": {},
        "input": {"shape": ["N", 20], "dtype": "float32"},
        "output": {"shape": ["N", 40], "dtype": "float32"},
        "files": {WEIGHTS: sha256_of(folder / WEIGHTS)},
    }
    (folder / CARD).write_text(json.dumps(card))
    return folder


class TinyTracker(nn.Module):
    """A KalmanNet-shaped tracker under the runtime contract: a linear predict, a GRU-made gain.

    State (x, h): the posterior mean (N, 2) and the GRU's hidden state (N, 8).
    """

    n, m = 2, 2
    state_names = ("x", "h")
    has_cov = True

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.register_buffer("F", torch.tensor([[1.0, 0.1], [0.0, 0.95]]))
        self.gru = nn.GRUCell(self.m + self.n, 8)
        self.gain = nn.Linear(8, self.n * self.m)

    def init_state(self, n, z0=None):
        x = torch.zeros(n, self.n) if z0 is None else z0.float()
        return x, torch.zeros(n, 8)

    def step_tensors(self, y, x, h):
        x_prior = x @ self.F.mT
        innovation = y - x_prior  # H = I
        h = self.gru(torch.cat([innovation, x_prior], dim=-1), h)
        K = 0.5 * torch.sigmoid(self.gain(h)).reshape(-1, self.n, self.m)
        x_post = x_prior + (K @ innovation.unsqueeze(-1)).squeeze(-1)
        cov = K @ K.mT + 1e-3 * torch.eye(self.n)
        return x_post, cov, x_post, h

    def innovation(self, y, state, next_state):  # the outlier gate's part of the contract
        return y - state[0] @ self.F.mT

    def coast(self, x, h):
        x_prior = x @ self.F.mT
        return x_prior, x_prior, h

    def observation_noise(self):
        return torch.full((self.m,), 0.25)
