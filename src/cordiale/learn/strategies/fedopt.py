"""Adaptive server optimisers of Reddi et al. 2021 ("Adaptive Federated Optimization").

The mean update is the pseudo-gradient ``Delta``; with ``m <- b1 m + (1-b1) Delta``:

* FedAdagrad: ``v <- v + Delta^2``
* FedAdam:    ``v <- b2 v + (1-b2) Delta^2``
* FedYogi:    ``v <- v - (1-b2) Delta^2 sign(v - Delta^2)``

and ``w <- w + eta * m / (sqrt(v) + tau)``. As in the paper, no bias correction.
"""

from __future__ import annotations

import numpy as np

from cordiale.core.errors import ConfigError
from cordiale.core.records import ArrayRecord
from cordiale.learn.strategies.base import Strategy, apply_update

__all__ = ["FedAdagrad", "FedAdam", "FedOpt", "FedYogi"]


class FedOpt(Strategy):
    """Shared machinery; subclasses define the second-moment rule :meth:`_second_moment`."""

    name = "fedopt"

    def __init__(
        self,
        *,
        eta: float = 0.05,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
        **kw: float,
    ) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        if not eta > 0 or not tau > 0 or not 0 <= beta_1 < 1 or not 0 <= beta_2 < 1:
            raise ConfigError("need eta > 0, tau > 0 and betas in [0, 1)")
        self.eta, self.beta_1, self.beta_2, self.tau = eta, beta_1, beta_2, tau
        self._m = ArrayRecord()
        self._v = ArrayRecord()

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def server_update(
        self, server_round: int, current: ArrayRecord, mean_update: ArrayRecord
    ) -> ArrayRecord:
        step = ArrayRecord()
        for k, delta in mean_update.items():
            m = self.beta_1 * self._m.get(k, np.zeros_like(delta)) + (1 - self.beta_1) * delta
            v = self._second_moment(self._v.get(k, np.full_like(delta, self.tau**2)), delta)
            self._m[k], self._v[k] = m, v
            step[k] = self.eta * m / (np.sqrt(v) + self.tau)
        return apply_update(current, step)

    def state(self) -> ArrayRecord:
        out = ArrayRecord((f"m:{k}", v) for k, v in self._m.items())
        for k, v in self._v.items():
            out[f"v:{k}"] = v
        return out

    def load_state(self, state: ArrayRecord) -> None:
        self._m = ArrayRecord((k[2:], v) for k, v in state.items() if k.startswith("m:"))
        self._v = ArrayRecord((k[2:], v) for k, v in state.items() if k.startswith("v:"))


class FedAdagrad(FedOpt):
    name = "fedadagrad"

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return v + delta * delta


class FedAdam(FedOpt):
    name = "fedadam"

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return self.beta_2 * v + (1 - self.beta_2) * delta * delta


class FedYogi(FedOpt):
    name = "fedyogi"

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        d2 = delta * delta
        return v - (1 - self.beta_2) * d2 * np.sign(v - d2)
