"""The local trainer: what a node runs on its own data for one round.

Without differential privacy, training is deterministic for a seed (the shuffling generator and
nothing else is random). Supports SGD (with momentum) and Adam, weight decay, and the FedProx
proximal term ``mu/2 * ||w - w_global||^2`` (Li et al. 2020).

With ``dp_noise_multiplier > 0`` the trainer runs **sample-level DP**: DP-SGD (Abadi et al. 2016)
through Opacus. Every step takes a **Poisson sample** of the rows (each row independently with
probability ``q = batch_size / n``, capped at 1; the batch size is only an expectation and a batch
may be empty), clips each example's gradient to L2 norm ``dp_max_grad_norm``, sums, adds Gaussian
noise of standard deviation ``dp_noise_multiplier * dp_max_grad_norm`` and divides by the expected
batch size. An epoch is ``round(1/q)`` such steps, so one call takes ``epochs * round(1/q)`` steps
(:func:`cordiale.learn.dp.sample_rate_and_steps` accounts for exactly these). The neighbouring
relation is add-or-remove-one-row. Weight decay, momentum, Adam and the proximal term act on the
privatised gradient only: they depend on the weights, not on the rows, so they are post-processing.

The Poisson sampling and the noise draw from the operating system's entropy, **never from the
seed**: the seed comes from the hub, which must not be able to predict (and subtract) the noise or
know which rows were in which batch. DP-SGD runs are therefore not reproducible, by design.
"""

from __future__ import annotations

import copy
import math
import secrets
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn

from cordiale.core.errors import ConfigError, UnknownNameError
from cordiale.core.records import ConfigRecord

if TYPE_CHECKING:
    from opacus.optimizers import DPOptimizer

__all__ = [
    "OPTIMIZERS",
    "TrainConfig",
    "TrainOutcome",
    "dp_sample_rate_and_steps",
    "predict_proba",
    "train_local",
]

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
    #: DP-SGD noise multiplier ``z`` (noise std ``z * dp_max_grad_norm``); 0 means no DP-SGD.
    dp_noise_multiplier: float = 0.0
    #: DP-SGD per-example gradient L2 bound (used only when ``dp_noise_multiplier > 0``).
    dp_max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UnknownNameError("optimizer", self.optimizer, OPTIMIZERS)
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch size must be at least 1")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be positive; got {self.lr}")
        if self.proximal_mu < 0 or not 0 <= self.momentum < 1:
            raise ConfigError("proximal_mu must be >= 0 and momentum in [0, 1)")
        if not (math.isfinite(self.dp_noise_multiplier) and self.dp_noise_multiplier >= 0):
            raise ConfigError(
                f"dp_noise_multiplier must be finite and >= 0 (0: no DP-SGD); "
                f"got {self.dp_noise_multiplier}"
            )
        if not (math.isfinite(self.dp_max_grad_norm) and self.dp_max_grad_norm > 0):
            raise ConfigError(
                f"dp_max_grad_norm must be finite and positive; got {self.dp_max_grad_norm}"
            )

    @property
    def dp_sgd(self) -> bool:
        """Whether training runs DP-SGD (a positive noise multiplier)."""
        return self.dp_noise_multiplier > 0

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
            dp_noise_multiplier=c.get_float("train.dp_noise_multiplier", 0.0),
            dp_max_grad_norm=c.get_float("train.dp_max_grad_norm", 1.0),
        )


@dataclass(frozen=True)
class TrainOutcome:
    """What one call of :func:`train_local` did.

    ``loss`` is the mean training loss over the steps (under DP-SGD: the data loss, without the
    proximal term, over the non-empty batches; computed from the raw rows, it is *not*
    privatised). ``steps`` counts optimizer steps; ``sample_rate`` is DP-SGD's Poisson sampling
    rate ``q`` (0.0 without DP-SGD), which with ``steps`` and the noise multiplier is what a
    privacy accountant needs.
    """

    loss: float
    steps: int
    num_examples: int
    sample_rate: float = 0.0


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


#: Transforms a training batch (random augmentation of images); identity when None.
Augment = Callable[[torch.Tensor], torch.Tensor]


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    *,
    seed: int,
    augment: Augment | None = None,
) -> TrainOutcome:
    """Train ``model`` in place on ``(x, y)``; return the mean training loss and step count.

    ``augment`` transforms each training batch before the forward pass (never the test rows).
    With ``cfg.dp_noise_multiplier > 0`` this is DP-SGD (see the module docstring) and ``seed`` is
    not used: the sampling and the noise come from the operating system's entropy. Raises
    :class:`ConfigError` if the model cannot run DP-SGD (batch normalisation).
    """
    n = len(y)
    if n == 0:
        raise ConfigError("cannot train on zero examples")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))

    def batch(idx: torch.Tensor) -> torch.Tensor:
        return xt[idx] if augment is None or len(idx) == 0 else augment(xt[idx])

    if cfg.dp_sgd:
        return _train_dp_sgd(model, batch, yt, cfg)
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
            if len(idx) < 2 and any(
                isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
            ):
                continue  # batch norm cannot train on a single row
            opt.zero_grad()
            loss = loss_fn(model(batch(idx)), yt[idx])
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


def dp_sample_rate_and_steps(num_examples: int, batch_size: int) -> tuple[float, int]:
    """DP-SGD's Poisson sampling rate ``q = batch_size / n`` (at most 1) and steps per epoch,
    ``round(1/q)`` (as :func:`cordiale.learn.dp.sample_rate_and_steps` accounts for)."""
    q = min(1.0, batch_size / max(num_examples, 1))
    return q, max(1, round(1 / q))


def _check_dp_model(model: nn.Module) -> None:
    """Refuse models that per-example gradients cannot handle (Opacus's validator)."""
    from opacus.validators import ModuleValidator

    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ConfigError(
            "DP-SGD does not support batch normalisation; use a model without batchnorm"
        )
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError(f"the model cannot be trained with DP-SGD: {errors}")


def _add_proximal_gradient(mu: float, anchor: list[torch.Tensor]) -> Callable[[DPOptimizer], None]:
    """A DPOptimizer step hook adding ``mu * (w - w_global)`` to the privatised gradient."""

    def hook(opt: DPOptimizer) -> None:
        with torch.no_grad():
            for p, a in zip(opt.params, anchor, strict=True):
                if p.grad is not None:
                    p.grad.add_(p - a, alpha=mu)

    return hook


def _train_dp_sgd(
    model: nn.Module,
    batch: Callable[[torch.Tensor], torch.Tensor],
    yt: torch.Tensor,
    cfg: TrainConfig,
) -> TrainOutcome:
    """DP-SGD with Poisson sampling (Opacus), on a copy of ``model`` whose weights are copied
    back at the end: the caller's model never carries Opacus's hooks or per-sample attributes."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    n = len(yt)
    q, steps_per_epoch = dp_sample_rate_and_steps(n, cfg.batch_size)
    work = copy.deepcopy(model)
    work.train()
    _check_dp_model(work)
    # Operating-system entropy, not the hub's seed: the hub must not be able to predict the noise
    # (and subtract it) or the Poisson samples. Opacus's secure_mode would need torchcsprng, which
    # is not available; a generator seeded with 63 fresh bits from `secrets` is what we use for
    # both the sampling and the noise.
    gen = torch.Generator().manual_seed(secrets.randbits(63))
    sampler = UniformWithReplacementSampler(
        num_samples=n, sample_rate=q, generator=gen, steps=steps_per_epoch
    )
    gsm = GradSampleModule(work, batch_first=True, loss_reduction="mean", strict=True)
    opt = DPOptimizer(
        _optimizer(work, cfg),
        noise_multiplier=cfg.dp_noise_multiplier,
        max_grad_norm=cfg.dp_max_grad_norm,
        expected_batch_size=min(cfg.batch_size, n),  # q * n
        loss_reduction="mean",
        generator=gen,
    )
    if cfg.proximal_mu > 0:
        anchor = [p.detach().clone() for p in opt.params]
        opt.attach_step_hook(_add_proximal_gradient(cfg.proximal_mu, anchor))
    loss_fn = nn.BCEWithLogitsLoss()
    total, steps, counted = 0.0, 0, 0
    with warnings.catch_warnings():
        # Opacus's backward hooks fire with no input requiring a gradient; torch warns about that
        # on every run, harmlessly (per-example gradients need the layers' inputs and outputs only).
        warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
        for _ in range(cfg.epochs):
            for rows in sampler:
                idx = torch.as_tensor(rows, dtype=torch.long)
                opt.zero_grad(set_to_none=True)
                # An empty Poisson sample is still a step (noise only), as the accountant counts
                # it; the forward pass on zero rows gives zero-length per-example gradients.
                logits = gsm(batch(idx))
                loss = loss_fn(logits, yt[idx]) if len(idx) else logits.sum()
                loss.backward()
                opt.step()
                steps += 1
                if len(idx):
                    total += float(loss.detach())
                    counted += 1
    # The copy carries Opacus's hooks and per-example attributes; only its weights come back.
    model.load_state_dict(work.state_dict())
    return TrainOutcome(
        loss=total / max(counted, 1),
        steps=steps,
        num_examples=n,
        sample_rate=q,
    )


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Predicted probability of the positive class for each row (scored in batches)."""
    model.eval()
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if len(xt) == 0:
        return np.zeros(0, dtype=np.float64)
    logits = torch.cat([model(xt[i : i + batch_size]) for i in range(0, len(xt), batch_size)])
    return torch.sigmoid(logits).numpy().astype(np.float64)
