"""FedAvg (McMahan et al. 2017), FedProx (Li et al. 2020) and FedAvgM (Hsu et al. 2019)."""

from __future__ import annotations

import numpy as np

from cordiale.core.errors import ConfigError
from cordiale.core.records import ArrayRecord, ConfigRecord
from cordiale.learn.strategies.base import Strategy, apply_update

__all__ = ["FedAvg", "FedAvgM", "FedProx"]


class FedAvg(Strategy):
    """``w <- w + server_lr * mean_update`` (server_lr = 1 is plain FedAvg)."""

    name = "fedavg"

    def __init__(self, *, server_lr: float = 1.0, **kw: float) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        if not server_lr > 0:
            raise ConfigError(f"server_lr must be positive; got {server_lr}")
        self.server_lr = server_lr

    def server_update(
        self, server_round: int, current: ArrayRecord, mean_update: ArrayRecord
    ) -> ArrayRecord:
        step = ArrayRecord((k, self.server_lr * v) for k, v in mean_update.items())
        return apply_update(current, step)


class FedProx(FedAvg):
    """FedAvg on the server; nodes add the proximal term ``mu/2 ||w - w_global||^2``."""

    name = "fedprox"

    def __init__(self, *, proximal_mu: float = 0.01, **kw: float) -> None:
        super().__init__(**kw)
        if proximal_mu < 0:
            raise ConfigError(f"proximal_mu must be >= 0; got {proximal_mu}")
        self.proximal_mu = proximal_mu

    def fit_config(self, server_round: int) -> ConfigRecord:
        return ConfigRecord({"train.proximal_mu": self.proximal_mu})


class FedAvgM(FedAvg):
    """FedAvg with server momentum: ``v <- beta v + mean_update; w <- w + server_lr v``."""

    name = "fedavgm"

    def __init__(self, *, server_momentum: float = 0.9, **kw: float) -> None:
        super().__init__(**kw)
        if not 0 <= server_momentum < 1:
            raise ConfigError(f"server_momentum must be in [0, 1); got {server_momentum}")
        self.server_momentum = server_momentum
        self._velocity = ArrayRecord()

    def server_update(
        self, server_round: int, current: ArrayRecord, mean_update: ArrayRecord
    ) -> ArrayRecord:
        for k, v in mean_update.items():
            prev = self._velocity.get(k, np.zeros_like(v))
            self._velocity[k] = self.server_momentum * prev + v
        step = ArrayRecord((k, self.server_lr * self._velocity[k]) for k in mean_update)
        return apply_update(current, step)

    def state(self) -> ArrayRecord:
        return self._velocity.copy()

    def load_state(self, state: ArrayRecord) -> None:
        self._velocity = state.copy()
