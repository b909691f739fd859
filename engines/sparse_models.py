"""The trained sparse-coding networks by architecture name, and their artifacts as engines.

One table (`ARCHITECTURES`) says which module each architecture name builds and which
point of the spectrum it is; the training recipes build their models with
`build_sparse_model` and write the same name and kwargs into the artifact card, so
`engine_from_artifact` rebuilds exactly the trained module.

    lista                   LISTA (seed Ex. 17)                         unfolded
    lista-cpss              LISTA-CP with support selection              unfolded
    alista                  ALISTA (analytic W, 2K parameters, SS)       unfolded
    learned-admm            ADMM with learned tied lambda, mu (Ex. 14)   learned-optimizer
    unfolded-admm           per-layer lambda_k, mu_k (Ex. 15)            unfolded
    unfolded-admm-weights   per-layer W1_k, W2_k, lambda_k, mu_k (Ex. 16) unfolded

Artifact layout (task "sparse-coding"): weights.safetensors holds the module's state dict
plus `operator`, the sensing matrix H (m, n) the model was trained for (float32);
card.json has `architecture` = {"name", "kwargs"} and `problem` (m, n, seed, p, snr_db).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from engines.base import Family
from engines.errors import ArtifactError, BackendUnavailable
from engines.imaging.admm import L1Prox, LearnedADMM, UnfoldedADMM, UnfoldedADMMWeights
from engines.imaging.ista import ALISTA, LISTA, LISTACP, SupportSelection
from engines.sparse_problem import SparseCodingEngine

OPERATOR_KEY = "operator"


@dataclass(frozen=True)
class Architecture:
    """How to build one architecture from H and JSON kwargs, and its family."""

    build: Callable[..., nn.Module]
    family: Family


def _support(value: dict[str, float] | None) -> SupportSelection | None:
    return None if value is None else SupportSelection(**value)


def _lista(H: Tensor, n_layers: int = 16, rho: float = 0.4) -> nn.Module:
    return LISTA(H, n_layers=n_layers, rho=rho)


def _lista_cpss(H: Tensor, n_layers: int = 16, rho: float = 0.4,
                support: dict[str, float] | None = None) -> nn.Module:
    return LISTACP(H, n_layers=n_layers, rho=rho, support=_support(support or {}))


def _alista(H: Tensor, n_layers: int = 16, rho: float = 0.4,
            support: dict[str, float] | None = None) -> nn.Module:
    return ALISTA(H, n_layers=n_layers, rho=rho, support=_support(support or {}))


def _learned_admm(H: Tensor, n_iter: int = 16, rho: float = 0.4, lam: float = 0.5,
                  mu: float = 1.0) -> nn.Module:
    return LearnedADMM(H, prox=L1Prox(rho), lam=lam, mu=mu, n_iter=n_iter)


def _unfolded_admm(H: Tensor, n_layers: int = 16, rho: float = 0.4, lam: float = 0.5,
                   mu: float = 1.0) -> nn.Module:
    return UnfoldedADMM(H, n_layers=n_layers, prox=L1Prox(rho), lam=lam, mu=mu)


def _unfolded_admm_weights(H: Tensor, n_layers: int = 16, rho: float = 0.4, lam: float = 0.5,
                           mu: float = 1.0) -> nn.Module:
    return UnfoldedADMMWeights(H, n_layers=n_layers, prox=L1Prox(rho), lam=lam, mu=mu)


ARCHITECTURES: dict[str, Architecture] = {
    "lista": Architecture(_lista, "unfolded"),
    "lista-cpss": Architecture(_lista_cpss, "unfolded"),
    "alista": Architecture(_alista, "unfolded"),
    "learned-admm": Architecture(_learned_admm, "learned-optimizer"),
    "unfolded-admm": Architecture(_unfolded_admm, "unfolded"),
    "unfolded-admm-weights": Architecture(_unfolded_admm_weights, "unfolded"),
}


def build_sparse_model(name: str, H: Tensor, **kwargs: Any) -> nn.Module:
    """The untrained module of architecture `name` for H (m, n), initialized at its model-based
    values; kwargs as in the card (JSON types: support selection is {"q_step", "q_max"})."""
    arch = ARCHITECTURES.get(name)
    if arch is None:
        raise ValueError(f"unknown sparse-coding architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return arch.build(H, **kwargs)


def engine_from_artifact(art, *, backend: str = "auto") -> SparseCodingEngine:
    """The SparseCodingEngine of a verified sparse-coding artifact (engines.artifacts.Artifact).

    Rebuilds the card's architecture on the stored H, loads the state dict (strictly: a
    missing or extra tensor is an ArtifactError) and exposes H as `engine.operator` (numpy).
    """
    where = art.path / "card.json"
    if backend not in ("auto", "torch"):
        raise BackendUnavailable(f"{art.card.get('name')}: runs on torch only, not {backend!r}")
    spec = art.card.get("architecture") or {}
    if OPERATOR_KEY not in art.weights:
        raise ArtifactError(f"{art.path / 'weights.safetensors'}: holds no {OPERATOR_KEY!r} "
                            "(the sensing matrix)")
    H = art.weights[OPERATOR_KEY]
    try:
        module = build_sparse_model(spec.get("name"), H, **spec.get("kwargs", {}))
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"{where}: architecture {spec} cannot be built: {e}") from None
    state = {k: v for k, v in art.weights.items() if k != OPERATOR_KEY}
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise ArtifactError(f"{art.path / 'weights.safetensors'}: does not fit {spec.get('name')}: "
                            f"{str(e).splitlines()[0]}") from None
    family = ARCHITECTURES[spec["name"]].family
    engine = SparseCodingEngine(art.card.get("name", art.path.name), family, module,
                                operator=H.to(torch.float32).numpy())
    engine.card = art.card
    return engine
