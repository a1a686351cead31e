"""Tabular models (logistic regression, MLP) and the bridge between torch and ArrayRecords.

Weights cross the wire as an :class:`ArrayRecord` of the model's ``state_dict`` (float32, plus
normalisation buffers), never as torch bytes. Loading weights checks every name, shape and dtype
against the local model first: a mismatching message is refused, never half-applied.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from cordiale.core.errors import ConfigError, ProtocolError
from cordiale.core.records import ArrayRecord, ConfigRecord

__all__ = [
    "MODEL_KINDS",
    "ModelSpec",
    "build_model",
    "build_with",
    "get_weights",
    "keep_state",
    "set_weights",
]

MODEL_KINDS = ("logreg", "mlp")


@dataclass(frozen=True)
class ModelSpec:
    """What model to build: ``logreg`` or an ``mlp`` with hidden widths, optionally batch-normed."""

    kind: Literal["logreg", "mlp"] = "mlp"
    hidden: tuple[int, ...] = (32,)
    batchnorm: bool = False

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            from cordiale.core.errors import UnknownNameError

            raise UnknownNameError("model", self.kind, MODEL_KINDS)
        if self.kind == "mlp" and (not self.hidden or min(self.hidden) < 1):
            raise ConfigError(f"an mlp needs positive hidden widths; got {self.hidden}")

    def to_config(self) -> ConfigRecord:
        return ConfigRecord(
            {
                "model.kind": self.kind,
                "model.hidden": list(self.hidden),
                "model.batchnorm": self.batchnorm,
            }
        )

    @classmethod
    def from_config(cls, config: ConfigRecord) -> ModelSpec:
        kind = config.get_str("model.kind", "mlp")
        hidden = config.get("model.hidden", [32])
        if not isinstance(hidden, list) or not all(isinstance(h, int) for h in hidden):
            raise ConfigError(f"model.hidden must be a list of integers; got {hidden!r}")
        bn = config.get("model.batchnorm", False)
        if kind not in MODEL_KINDS:
            from cordiale.core.errors import UnknownNameError

            raise UnknownNameError("model", kind, MODEL_KINDS)
        return cls(kind=kind, hidden=tuple(int(h) for h in hidden), batchnorm=bool(bn))  # type: ignore[arg-type]

    def describe(self, num_features: int) -> str:
        if self.kind == "logreg":
            return f"logistic regression {num_features}-1"
        widths = "-".join(str(w) for w in (num_features, *self.hidden, 1))
        return f"MLP {widths}{' with batch norm' if self.batchnorm else ''}"


class TabularNet(nn.Module):
    """A feed-forward network that outputs one logit per row."""

    def __init__(self, spec: ModelSpec, num_features: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = num_features
        if spec.kind == "mlp":
            for h in spec.hidden:
                layers.append(nn.Linear(width, h))
                if spec.batchnorm:
                    layers.append(nn.BatchNorm1d(h))
                layers.append(nn.ReLU())
                width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def build_model(spec: ModelSpec, num_features: int, *, seed: int) -> TabularNet:
    """Build the model with weights initialised deterministically from ``seed``."""
    return build_with(lambda n: TabularNet(spec, n), num_features, seed=seed)


def build_with(builder: Callable[[int], nn.Module], num_features: int, *, seed: int) -> Any:
    """``builder(num_features)`` with torch's CPU generator seeded, then restored.

    Used for the built-in models and for a custom plan's ``build_model``.
    """
    if num_features < 1:
        raise ConfigError("the model needs at least one input feature")
    # Seed only the CPU generator and restore it afterwards (torch.manual_seed and fork_rng also
    # touch every accelerator backend, which costs milliseconds per call).
    gen = torch.default_generator
    saved = gen.get_state()
    gen.manual_seed(seed % 2**63)
    try:
        model = builder(num_features)
    finally:
        gen.set_state(saved)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"build_model returned {type(model).__name__}, not a torch.nn.Module")
    return model


#: state mappings of models kept between tasks whose tensors are only ever updated in place
_KEPT_STATE: weakref.WeakKeyDictionary[nn.Module, dict[str, torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)


def keep_state(model: nn.Module) -> None:
    """Let :func:`get_weights` and :func:`set_weights` reuse ``model``'s ``state_dict`` mapping.

    Only for models whose parameters and buffers are updated in place and never re-assigned (the
    built-in ones: optimisers, batch norm and loading all write in place), so that the mapping's
    tensors stay the model's own.
    """
    _KEPT_STATE[model] = model.state_dict()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    kept = _KEPT_STATE.get(model)
    return kept if kept is not None else model.state_dict()


def get_weights(model: nn.Module) -> ArrayRecord:
    """The model's state as an ArrayRecord of numpy arrays (a copy)."""
    return ArrayRecord((k, v.detach().cpu().numpy().copy()) for k, v in _state(model).items())


@functools.cache
def _numpy_dtype(dtype: torch.dtype) -> np.dtype[Any]:
    return torch.empty(0, dtype=dtype).numpy().dtype


def set_weights(model: nn.Module, weights: ArrayRecord, *, keep: tuple[str, ...] = ()) -> None:
    """Load ``weights`` into ``model`` after checking names, shapes and dtypes.

    Names starting with a prefix in ``keep`` (personalised local layers) may be absent from
    ``weights``: those absent are left as they are, those present are loaded.
    """
    state = _state(model)
    expected = {k for k in state if not k.startswith(keep)} if keep else set(state)
    got = set(weights)
    if not expected <= got or not got <= set(state):
        missing = sorted(expected - got)
        extra = sorted(got - set(state))
        raise ProtocolError(
            f"weights do not match the model: missing {missing}, unexpected {extra}"
        )
    sources = {}
    for k, t in state.items():
        if k not in expected and k not in got:  # a local layer this node has no values for yet
            continue
        arr = weights[k]
        if arr.shape != tuple(t.shape) or arr.dtype != _numpy_dtype(t.dtype):
            raise ProtocolError(
                f"weight {k!r}: expected {_numpy_dtype(t.dtype)}{list(t.shape)}, got "
                f"{arr.dtype}{list(arr.shape)}"
            )
        sources[k] = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    # state_dict() tensors share storage with the model's parameters and buffers: copying into
    # them is what load_state_dict does, without its per-module traversal (every names checked).
    with torch.no_grad():
        for k, src in sources.items():
            state[k].copy_(src)
