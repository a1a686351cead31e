"""The local trainer: what a node runs on its own data for one round.

Deterministic for a seed (the shuffling generator and nothing else is random). Supports SGD (with
momentum) and Adam, and the FedProx proximal term ``mu/2 * ||w - w_global||^2`` (Li et al. 2020).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from cordiale.core.errors import ConfigError, UnknownNameError
from cordiale.core.records import ConfigRecord

__all__ = ["OPTIMIZERS", "TrainConfig", "TrainOutcome", "predict_proba", "train_local"]

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UnknownNameError("optimizer", self.optimizer, OPTIMIZERS)
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch size must be at least 1")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be positive; got {self.lr}")
        if self.proximal_mu < 0 or not 0 <= self.momentum < 1:
            raise ConfigError("proximal_mu must be >= 0 and momentum in [0, 1)")

    def to_config(self) -> ConfigRecord:
        return ConfigRecord({f"train.{k}": v for k, v in self.__dict__.items()})

    @classmethod
    def from_config(cls, c: ConfigRecord) -> TrainConfig:
        return cls(
            epochs=c.get_int("train.epochs", 1),
            batch_size=c.get_int("train.batch_size", 32),
            lr=c.get_float("train.lr", 0.05),
            optimizer=c.get_str("train.optimizer", "sgd"),  # type: ignore[arg-type]
            momentum=c.get_float("train.momentum", 0.0),
            weight_decay=c.get_float("train.weight_decay", 0.0),
            proximal_mu=c.get_float("train.proximal_mu", 0.0),
        )


@dataclass(frozen=True)
class TrainOutcome:
    loss: float
    steps: int
    num_examples: int


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def train_local(
    model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, *, seed: int
) -> TrainOutcome:
    """Train ``model`` in place on ``(x, y)``; return the mean training loss and step count."""
    n = len(y)
    if n == 0:
        raise ConfigError("cannot train on zero examples")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    gen = torch.Generator().manual_seed(seed)
    anchor = [p.detach().clone() for p in model.parameters()] if cfg.proximal_mu > 0 else None
    opt = _optimizer(model, cfg)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    total, steps = 0.0, 0
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            if len(idx) < 2 and any(isinstance(m, nn.BatchNorm1d) for m in model.modules()):
                continue  # batch norm cannot train on a single row
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            if anchor is not None:
                prox = sum(
                    ((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
                )
                loss = loss + 0.5 * cfg.proximal_mu * prox
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
    return TrainOutcome(loss=total / max(steps, 1), steps=steps, num_examples=n)


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Predicted probability of the positive class for each row."""
    model.eval()
    logits = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return torch.sigmoid(logits).numpy().astype(np.float64)
