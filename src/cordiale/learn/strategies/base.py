"""The Strategy interface: a handful of hooks, the round loop written once elsewhere.

A strategy decides which nodes take part in a round and with what configuration, and how the
global model moves given the nodes' updates. Nodes send *updates* (local weights minus the global
weights they started from) and their example counts; :meth:`Strategy.aggregate_fit` turns them into
the next global model. Everything stateful that a checkpoint must keep (server momentum, Adam
moments) is exposed by :meth:`state` / :meth:`load_state` as an ArrayRecord.

Privacy mechanisms (differential privacy, secure aggregation) wrap a strategy rather than subclass
it (STYLE.md #2): they see the same hooks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cordiale.core.errors import ConfigError
from cordiale.core.records import ArrayRecord, ConfigRecord, MetricRecord
from cordiale.learn.aggregate import weighted_mean

__all__ = ["FitResult", "Strategy"]


@dataclass
class FitResult:
    """One node's answer to a training task."""

    node_id: str
    update: ArrayRecord
    num_examples: int
    metrics: MetricRecord = field(default_factory=MetricRecord)


class Strategy(ABC):
    """Base of the server strategies. Subclasses override :meth:`server_update` (and config)."""

    name: str = "strategy"

    def __init__(self, *, fraction_fit: float = 1.0, min_fit_nodes: int = 1) -> None:
        if not 0 < fraction_fit <= 1:
            raise ConfigError(f"fraction_fit must be in (0, 1]; got {fraction_fit}")
        if min_fit_nodes < 1:
            raise ConfigError(f"min_fit_nodes must be at least 1; got {min_fit_nodes}")
        self.fraction_fit = fraction_fit
        self.min_fit_nodes = min_fit_nodes

    # -- hooks -----------------------------------------------------------------------------
    def sample_nodes(self, nodes: Sequence[str], rng: np.random.Generator) -> list[str]:
        """The nodes that train this round (all of them unless ``fraction_fit`` < 1)."""
        k = max(self.min_fit_nodes, round(self.fraction_fit * len(nodes)))
        if k >= len(nodes):
            return list(nodes)
        return sorted(rng.choice(list(nodes), size=k, replace=False).tolist())

    def fit_config(self, server_round: int) -> ConfigRecord:
        """Extra configuration sent to every node that trains in ``server_round``."""
        return ConfigRecord()

    def aggregate_fit(
        self, server_round: int, current: ArrayRecord, results: Sequence[FitResult]
    ) -> ArrayRecord:
        """The next global weights from the current ones and the nodes' updates."""
        mean_update = weighted_mean([r.update for r in results], [r.num_examples for r in results])
        return self.server_update(server_round, current, mean_update)

    @abstractmethod
    def server_update(
        self, server_round: int, current: ArrayRecord, mean_update: ArrayRecord
    ) -> ArrayRecord:
        """Apply the (weighted) mean update to the current weights."""

    def state(self) -> ArrayRecord:
        """Server-side state a checkpoint must keep (empty for stateless strategies)."""
        return ArrayRecord()

    def load_state(self, state: ArrayRecord) -> None:  # noqa: B027 - stateless by default
        """Restore what :meth:`state` returned."""

    def describe(self) -> str:
        return self.name


def apply_update(current: ArrayRecord, step: ArrayRecord) -> ArrayRecord:
    """``current + step`` for the names in ``step``, keeping dtypes; other names unchanged."""
    out = current.copy()
    for k, v in step.items():
        out[k] = (current[k].astype(np.float64) + v).astype(current[k].dtype)
    return out
