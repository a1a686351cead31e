"""Server strategies and their registry (``make_strategy("fedadam", eta=0.05)``)."""

from __future__ import annotations

import inspect
from typing import Any

from cordiale.core.errors import ConfigError, UnknownNameError
from cordiale.learn.strategies.base import FitResult, Strategy, apply_update
from cordiale.learn.strategies.fedavg import FedAvg, FedAvgM, FedProx
from cordiale.learn.strategies.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi

__all__ = [
    "STRATEGIES",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "FitResult",
    "Strategy",
    "apply_update",
    "make_strategy",
]

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad)
}


def _accepted(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            sig = inspect.signature(vars(klass)["__init__"])
            names |= {p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY}
    return names


def make_strategy(name: str, **params: Any) -> Strategy:
    """Build a registered strategy; unknown names or parameters list the valid ones."""
    cls = STRATEGIES.get(name)
    if cls is None:
        raise UnknownNameError("strategy", name, STRATEGIES)
    valid = _accepted(cls)
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ConfigError(
            f"strategy {name!r} does not take {', '.join(unknown)}; "
            f"it takes: {', '.join(sorted(valid))}"
        )
    return cls(**params)
