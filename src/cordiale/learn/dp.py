"""Differential privacy in a study: the settings, the node's step, and the wrapping strategy.

Two levels, chosen per study (``[privacy] dp = "client" | "sample"``):

* **Client-level** (DP-FedAvg, McMahan et al. 2018). Each node clips its update to L2 norm ``C``;
  Gaussian noise ``N(0, (z C)^2)`` on the *sum* protects any one site's whole contribution. The
  noise is added by the hub (``noise = "central"``: a hub trusted with single updates) or split
  across nodes (``"distributed"``: each adds ``N(0, (z C)^2 / m)``, sized for at least ``m``
  survivors - the mode to use with secure aggregation, where the hub sees only the sum).
  :class:`ClientDP` wraps any strategy: it averages the clipped updates with equal weights (the
  sensitivity argument needs them), adds the central noise when asked, and hands the noised mean to
  the inner strategy's server update.
* **Sample-level** (DP-SGD through Opacus, with Poisson sampling): each node trains with per-example
  clipping and noise (:func:`cordiale.learn.trainer.train_local`).

Either way, the node accounts for itself. From the study's parameters it computes, with the
``dp_accounting`` accountant, the epsilon of everything it has released for the study so far, and
charges the increase to its ledger *before* the reply leaves (:mod:`cordiale.node.privacy`). A
target ``epsilon`` in the study is turned into a noise multiplier by the accountant
(:func:`~cordiale.privacy.accounting.noise_multiplier_for`), never by a formula.

Noise and DP-SGD sampling draw from the operating system's entropy, never from the study's seed:
the hub chooses that seed and must not be able to predict (and subtract) the noise.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from cordiale.core.errors import ConfigError, ProtocolError
from cordiale.core.records import ArrayRecord, ConfigRecord
from cordiale.learn.aggregate import weighted_mean
from cordiale.learn.strategies.base import FitResult, Strategy
from cordiale.privacy import (
    add_gaussian_noise,
    central_noise_std,
    clip_update,
    epsilon,
    global_l2_norm,
    node_noise_std,
    noise_multiplier_for,
)

__all__ = ["ClientDP", "DPSettings", "privatise_update", "release_epsilon"]

DPMode = Literal["client", "sample"]


@dataclass(frozen=True)
class DPSettings:
    """A study's differential privacy. Give ``epsilon`` (a target) or ``noise_multiplier``."""

    mode: DPMode
    delta: float = 1e-5
    epsilon: float | None = None
    noise_multiplier: float | None = None
    clip_norm: float = 1.0  # client: update L2 bound; sample: per-example gradient bound
    noise: Literal["central", "distributed"] = "distributed"
    accountant: Literal["rdp", "pld"] = "rdp"

    def __post_init__(self) -> None:
        if self.mode not in ("client", "sample"):
            raise ConfigError(f"dp must be 'client' or 'sample'; got {self.mode!r}")
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise ConfigError("give exactly one of privacy.epsilon and privacy.noise_multiplier")
        if self.epsilon is not None and not self.epsilon > 0:
            raise ConfigError(f"privacy.epsilon must be positive; got {self.epsilon}")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise ConfigError(
                f"privacy.noise_multiplier must be positive; got {self.noise_multiplier}"
            )
        if not 0 < self.delta < 1:
            raise ConfigError(f"privacy.delta must be in (0, 1); got {self.delta}")
        if not self.clip_norm > 0:
            raise ConfigError(f"privacy.clip_norm must be positive; got {self.clip_norm}")
        if self.noise not in ("central", "distributed"):
            raise ConfigError(f"privacy.noise must be central or distributed; got {self.noise!r}")

    def client_noise_multiplier(self, rounds: int) -> float:
        """``z`` of client-level DP: given, or the smallest meeting the target over ``rounds``.

        Every round is a full release for a site that takes part (no amplification by sampling
        is claimed: a site cannot verify how the hub samples).
        """
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        assert self.epsilon is not None
        return noise_multiplier_for(
            target_epsilon=self.epsilon,
            delta=self.delta,
            sampling_rate=1.0,
            steps=rounds,
            accountant=self.accountant,
        )

    def to_config(self, rounds: int, min_nodes: int) -> ConfigRecord:
        """What every training task carries (the node re-derives what it needs from it)."""
        cfg: dict[str, Any] = {
            "dp.mode": self.mode,
            "dp.delta": self.delta,
            "dp.clip_norm": self.clip_norm,
            "dp.accountant": self.accountant,
            "dp.rounds": rounds,
        }
        if self.mode == "client":
            cfg["dp.noise_multiplier"] = self.client_noise_multiplier(rounds)
            cfg["dp.noise"] = self.noise
            cfg["dp.min_nodes"] = min_nodes
        elif self.noise_multiplier is not None:
            cfg["dp.noise_multiplier"] = self.noise_multiplier
        else:
            cfg["dp.target_epsilon"] = self.epsilon
        return ConfigRecord(cfg)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


# -- at the node ---------------------------------------------------------------------------------


def sample_level_noise(
    cfg: ConfigRecord, *, num_examples: int, batch_size: int, epochs: int
) -> float:
    """The DP-SGD noise multiplier of a node: given, or the smallest meeting the target.

    The sampling rate is the node's own (expected batch / its training rows), so the node, which
    alone knows its row count, solves for its multiplier.
    """
    if "dp.noise_multiplier" in cfg:
        return cfg.get_float("dp.noise_multiplier", 0.0)
    q, steps_per_round = sample_rate_and_steps(num_examples, batch_size, epochs)
    return _solve_noise(
        cfg.get_float("dp.target_epsilon", 0.0),
        cfg.get_float("dp.delta", 0.0),
        q,
        steps_per_round * cfg.get_int("dp.rounds", 1),
        cfg.get_str("dp.accountant", "rdp"),
    )


@functools.lru_cache(maxsize=256)
def _solve_noise(target: float, delta: float, q: float, steps: int, accountant: str) -> float:
    """The accountant's search, once per parameter set (a node asks every round)."""
    return noise_multiplier_for(
        target_epsilon=target,
        delta=delta,
        sampling_rate=q,
        steps=steps,
        accountant=accountant,  # type: ignore[arg-type]
    )


def sample_rate_and_steps(num_examples: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """Poisson sampling rate and DP-SGD steps per round (Opacus: round(1/q) steps per epoch)."""
    q = min(1.0, batch_size / max(num_examples, 1))
    return q, epochs * max(1, round(1 / q))


def privatise_update(update: ArrayRecord, cfg: ConfigRecord) -> tuple[ArrayRecord, float]:
    """Client-level DP at a node: clip to ``dp.clip_norm``, add this node's noise share if the
    noise is distributed. Returns the update to send and its norm before clipping (local only)."""
    clip = cfg.get_float("dp.clip_norm", 0.0)
    clipped, norm = clip_update(dict(update), clip_norm=clip)
    out = ArrayRecord(clipped)
    if cfg.get_str("dp.noise", "distributed") == "distributed":
        std = node_noise_std(
            noise_multiplier=cfg.get_float("dp.noise_multiplier", 0.0),
            clip_norm=clip,
            num_nodes=cfg.get_int("dp.min_nodes", 1),
        )
        rng = np.random.default_rng()  # OS entropy: the hub must not know the noise
        out = ArrayRecord(add_gaussian_noise(dict(out), std=std, rng=rng))
    return out, norm


def release_epsilon(cfg: ConfigRecord, releases: int, *, num_examples: int) -> float:
    """Epsilon of ``releases`` training replies of one study by one node (its own accounting)."""
    delta = cfg.get_float("dp.delta", 0.0)
    kind = cfg.get_str("dp.accountant", "rdp")
    if cfg.get_str("dp.mode", "") == "client":
        return epsilon(
            noise_multiplier=cfg.get_float("dp.noise_multiplier", 0.0),
            sampling_rate=1.0,
            steps=releases,
            delta=delta,
            accountant=kind,  # type: ignore[arg-type]
        )
    batch, epochs = cfg.get_int("train.batch_size", 32), cfg.get_int("train.epochs", 1)
    q, steps = sample_rate_and_steps(num_examples, batch, epochs)
    return epsilon(
        noise_multiplier=sample_level_noise(
            cfg, num_examples=num_examples, batch_size=batch, epochs=epochs
        ),
        sampling_rate=q,
        steps=steps * releases,
        delta=delta,
        accountant=kind,  # type: ignore[arg-type]
    )


# -- at the hub ----------------------------------------------------------------------------------


class ClientDP(Strategy):
    """Client-level DP around any strategy: equal-weight mean of clipped updates, plus noise.

    Nodes clip (and, with distributed noise, add their shares); this wrapper checks the bound
    (a node sending a larger update is refused, not silently rescaled), averages with equal
    weights, adds ``N(0, (z C)^2)`` to the sum when the noise is central, and passes the mean to
    the inner strategy's :meth:`~Strategy.server_update`.
    """

    def __init__(self, inner: Strategy, settings: DPSettings, *, rounds: int) -> None:
        super().__init__(fraction_fit=inner.fraction_fit, min_fit_nodes=inner.min_fit_nodes)
        if settings.mode != "client":
            raise ConfigError("ClientDP wraps client-level DP only")
        self.inner = inner
        self.settings = settings
        self.rounds = rounds
        self.noise_multiplier = settings.client_noise_multiplier(rounds)
        self.name = f"dp({inner.name})"

    def sample_nodes(self, nodes: Sequence[str], rng: np.random.Generator) -> list[str]:
        return self.inner.sample_nodes(nodes, rng)

    def fit_config(self, server_round: int) -> ConfigRecord:
        return self.inner.fit_config(server_round)  # the DP keys come with every task's config

    def aggregate_fit(
        self, server_round: int, current: ArrayRecord, results: Sequence[FitResult]
    ) -> ArrayRecord:
        c = self.settings.clip_norm
        if self.settings.noise == "central":
            for r in results:
                norm = global_l2_norm(dict(r.update))
                if norm > c * (1 + 1e-6):
                    raise ProtocolError(
                        f"round {server_round}: {r.node_id} sent an update of norm {norm:.4g} "
                        f"above the study's clip norm {c:g}"
                    )
        mean = weighted_mean([r.update for r in results], [1] * len(results))
        if self.settings.noise == "central":
            std = central_noise_std(noise_multiplier=self.noise_multiplier, clip_norm=c)
            rng = np.random.default_rng()
            mean = ArrayRecord(add_gaussian_noise(dict(mean), std=std / len(results), rng=rng))
        return self.inner.server_update(server_round, current, mean)

    def server_update(
        self, server_round: int, current: ArrayRecord, mean_update: ArrayRecord
    ) -> ArrayRecord:
        """The secure-aggregation path: ``mean_update`` already carries the nodes' noise."""
        if self.settings.noise == "central":
            raise ConfigError(
                "central noise needs a hub trusted with single updates; with secure aggregation "
                "use privacy.noise = 'distributed'"
            )
        return self.inner.server_update(server_round, current, mean_update)

    def state(self) -> ArrayRecord:
        return self.inner.state()

    def load_state(self, state: ArrayRecord) -> None:
        self.inner.load_state(state)

    def describe(self) -> str:
        return (
            f"{self.inner.describe()} with client-level DP (z={self.noise_multiplier:.3g}, "
            f"C={self.settings.clip_norm:g}, {self.settings.noise} noise)"
        )


def expected_epsilon(settings: DPSettings, rounds: int) -> float | None:
    """The study-level epsilon a site that takes part in every round will have spent."""
    if settings.mode != "client":
        return settings.epsilon
    return epsilon(
        noise_multiplier=settings.client_noise_multiplier(rounds),
        sampling_rate=1.0,
        steps=rounds,
        delta=settings.delta,
        accountant=settings.accountant,
    )
