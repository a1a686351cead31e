"""L2 clipping of model updates, fixed and adaptive (pure numpy functions).

An update is a mapping of parameter names to numpy arrays (e.g. an ``ArrayRecord``); it is clipped
as *one* vector, so its global L2 norm bounds the sensitivity of a sum of updates.

Adaptive clipping follows Andrew, Thakkar, McMahan and Ramaswamy, "Differentially Private Learning
with Adaptive Clipping" (NeurIPS 2021). Each round, every client reports whether its update norm
was at most the current bound ``C``; the server adds Gaussian noise to the count
(:func:`noised_fraction_below`) and moves ``C`` geometrically towards the target quantile
``gamma`` of the norms (:func:`next_clip_norm`)::

    C <- C * exp(-eta * (b - gamma))         b = noised fraction of clients with norm <= C

The count is a second Gaussian query on the same clients, so its privacy cost comes out of the
updates' noise: :func:`adaptive_clipping_noise_multiplier` gives the multiplier for the updates so
that the pair costs exactly as much as one Gaussian query with the study's noise multiplier.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from cordiale.core.errors import ConfigError, PrivacyError
from cordiale.privacy import _validate as check

__all__ = [
    "adaptive_clipping_noise_multiplier",
    "clip_update",
    "global_l2_norm",
    "next_clip_norm",
    "noised_fraction_below",
]

#: Relative margin by which a clipped update is pulled inside the ball, so that its norm, computed
#: again in float64 after the cast back to the array's dtype, is still <= C despite rounding.
_MARGIN_FLOAT64 = 1e-12


def global_l2_norm(update: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all arrays of ``update`` taken together as one vector (computed in float64).

    Raises :class:`PrivacyError` if any value is NaN or infinite: such an update has no bounded
    sensitivity and must not be clipped, noised or sent.
    """
    norms = [
        float(np.linalg.norm(np.asarray(a, dtype=np.float64).ravel()))
        for a in check.float_update(update).values()
    ]
    total = math.hypot(*norms)  # overflow-safe
    if not math.isfinite(total):
        raise PrivacyError(
            "the update contains NaN or infinite values; its sensitivity cannot be bounded",
            public_message="the update contains non-finite values",
        )
    return total


def clip_update(
    update: Mapping[str, np.ndarray], *, clip_norm: float
) -> tuple[dict[str, np.ndarray], float]:
    """Scale ``update`` down to global L2 norm at most ``clip_norm``.

    Returns ``(clipped, norm)``: new arrays (dtypes kept; the input is not modified) and the norm
    *before* clipping. An update already within the bound is returned unchanged (copied); one
    outside is scaled by ``clip_norm / norm``, less a relative margin of a few units in the last
    place of its dtype, so that the clipped norm never exceeds ``clip_norm`` through rounding.
    """
    c = check.positive("clip_norm", clip_norm)
    arrays = check.float_update(update)
    norm = global_l2_norm(arrays)
    if norm <= c:
        return {name: a.copy() for name, a in arrays.items()}, norm
    eps = max((float(np.finfo(a.dtype).eps) for a in arrays.values()), default=0.0)
    scale = c / norm * (1.0 - max(4.0 * eps, _MARGIN_FLOAT64))
    clipped = {name: (a.astype(np.float64) * scale).astype(a.dtype) for name, a in arrays.items()}
    return clipped, norm


def noised_fraction_below(
    norms: np.ndarray | list[float],
    *,
    clip_norm: float,
    count_noise_std: float,
    rng: np.random.Generator,
    expected_clients: int | None = None,
) -> float:
    """Noised fraction of clients whose update norm is at most ``clip_norm`` (Andrew et al. 2021).

    ``sum(norm <= C) + N(0, count_noise_std**2)``, divided by ``expected_clients`` (the paper
    divides by the expected number of clients per round, which is public; default: ``len(norms)``).
    The paper suggests ``count_noise_std = expected_clients / 20``. In a deployment the count is a
    sum over sites (each reports one bit) and its noise is added like the updates' noise; this
    function is the reference computation and the simulation path.
    """
    values = np.asarray(norms, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise ConfigError("norms must be a non-empty 1-d sequence of finite numbers")
    c = check.positive("clip_norm", clip_norm)
    sigma_b = check.non_negative("count_noise_std", count_noise_std)
    rng = check.generator(rng)
    m = values.size if expected_clients is None else expected_clients
    m = check.integer("expected_clients", m, minimum=1)
    count = float(np.count_nonzero(values <= c))
    noise = float(rng.normal(0.0, sigma_b)) if sigma_b > 0 else 0.0
    return (count + noise) / m


def next_clip_norm(
    *,
    clip_norm: float,
    noised_fraction_below: float,
    target_quantile: float,
    learning_rate: float = 0.2,
) -> float:
    """Geometric update of the clip bound towards the ``target_quantile`` of update norms.

    ``clip_norm * exp(-learning_rate * (noised_fraction_below - target_quantile))``: the bound
    shrinks when more than the target fraction of clients is below it, grows when fewer are.
    ``learning_rate`` is the paper's ``eta_C`` (0.2 there). The fraction may fall outside [0, 1]
    because of its noise; it is used as is (clamping would bias the estimate).
    """
    c = check.positive("clip_norm", clip_norm)
    eta = check.positive("learning_rate", learning_rate)
    gamma = check.probability("target_quantile", target_quantile, low_open=False, high_open=False)
    b = check.real("noised_fraction_below", noised_fraction_below)
    return c * math.exp(-eta * (b - gamma))


def adaptive_clipping_noise_multiplier(*, noise_multiplier: float, count_noise_std: float) -> float:
    """Noise multiplier for the updates when the clipped count is released too (Andrew et al.).

    Each client's bit, centred to ``b - 1/2``, has sensitivity 1/2, so the count is a Gaussian
    query with multiplier ``2 * count_noise_std``. Two Gaussian queries with multipliers ``z1`` and
    ``z2`` compose to one with ``(z1**-2 + z2**-2) ** -1/2``; solving for the updates' multiplier::

        z_updates = (z**-2 - (2 * count_noise_std)**-2) ** -1/2

    so that the accountant may record a single Gaussian query with ``noise_multiplier`` per round.
    Raises :class:`ConfigError` if the count noise alone is too small (``2 * count_noise_std`` must
    exceed ``noise_multiplier``).
    """
    z = check.positive("noise_multiplier", noise_multiplier)
    sigma_b = check.positive("count_noise_std", count_noise_std)
    rest = z**-2 - (2.0 * sigma_b) ** -2
    if rest <= 0:
        raise ConfigError(
            f"count_noise_std={sigma_b} is too small for noise_multiplier={z}: the count alone "
            f"would use the whole budget; it must exceed {z / 2}"
        )
    return rest**-0.5
