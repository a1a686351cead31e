"""The Gaussian mechanism: central noise and noise distributed across nodes.

For a sum of updates each clipped to L2 norm ``C``, the Gaussian mechanism adds ``N(0, (z C)^2)``
to every coordinate, ``z`` being the noise multiplier the accountant is told about.

**Central** (a trusted aggregator): one party adds noise of std :func:`central_noise_std`.

**Distributed** (with secure aggregation, nobody sees a single update): each of ``n`` nodes adds
``N(0, (z C)^2 / n)`` to its own update, so that the sum of ``n`` shares has variance ``(z C)^2``
(:func:`node_noise_std`).

*Dropouts* reduce the noise: if only ``s < n`` nodes survive the round, the sum carries only
``s / n`` of the variance, so the round is *less* private than accounted. The compensation is to
size each share for a guaranteed minimum number of survivors ``t`` (the secure-aggregation
threshold, below which the round aborts anyway): each node adds variance ``(z C)^2 / t``, and any
``s >= t`` survivors give variance ``(s / t) (z C)^2 >= (z C)^2``. The price is utility, at most a
factor ``sqrt(n / t)`` more noise when everyone survives; the accountant keeps recording ``z``
(conservative), or :func:`realised_noise_multiplier` once ``s`` is known. The same reasoning covers
collusion: a node knows its own share, so if up to ``k`` nodes may collude with the aggregator, size
``t`` for the number of *honest* survivors.

Randomness comes from an explicit ``numpy.random.Generator`` so that simulations are reproducible
(seed it, or spawn one per node from a ``SeedSequence``). In a deployment, create it without a seed
(``numpy.random.default_rng()`` draws its seed from the operating system). Floating-point Gaussian
samplers have known side channels in theory (Mironov 2012 for the Laplace case); that is a concern
for a later, discrete mechanism, not one these helpers claim to address.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from cordiale.core.errors import ConfigError, PrivacyError
from cordiale.privacy import _validate as check

__all__ = [
    "add_gaussian_noise",
    "central_noise_std",
    "node_noise_std",
    "realised_noise_multiplier",
]


def central_noise_std(*, noise_multiplier: float, clip_norm: float) -> float:
    """Std ``z * C`` of the central Gaussian mechanism on a sum of updates clipped to ``C``."""
    z = check.positive("noise_multiplier", noise_multiplier)
    c = check.positive("clip_norm", clip_norm)
    return z * c


def node_noise_std(
    *,
    noise_multiplier: float,
    clip_norm: float,
    num_nodes: int,
    min_survivors: int | None = None,
) -> float:
    """Standard deviation of one node's share of the distributed Gaussian noise.

    ``z * C / sqrt(t)`` with ``t = min_survivors`` (default ``num_nodes``: no dropout tolerated), so
    that the sum over any ``t`` or more surviving nodes has std at least ``z * C``.
    """
    n = check.integer("num_nodes", num_nodes, minimum=1)
    t = n if min_survivors is None else check.integer("min_survivors", min_survivors, minimum=1)
    if t > n:
        raise ConfigError(f"min_survivors must be at most num_nodes={n}; got {t}")
    return central_noise_std(noise_multiplier=noise_multiplier, clip_norm=clip_norm) / math.sqrt(t)


def realised_noise_multiplier(
    *, noise_multiplier: float, min_survivors: int, survivors: int
) -> float:
    """The noise multiplier the sum actually carries when ``survivors`` nodes' shares are in it.

    ``z * sqrt(survivors / min_survivors)``: at least ``z`` when ``survivors >= min_survivors``.
    Raises :class:`PrivacyError` when fewer survive: that sum is under-noised and must not be
    released.
    """
    z = check.positive("noise_multiplier", noise_multiplier)
    t = check.integer("min_survivors", min_survivors, minimum=1)
    s = check.integer("survivors", survivors, minimum=0)
    if s < t:
        raise PrivacyError(
            f"only {s} node(s) contributed noise but shares were sized for at least {t}: the "
            f"sum carries noise multiplier {z * math.sqrt(s / t):.4g} < {z:.4g} and must not "
            "be released",
            public_message="too few nodes contributed noise for the privacy guarantee",
        )
    return z * math.sqrt(s / t)


def add_gaussian_noise(
    update: Mapping[str, np.ndarray], *, std: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """A copy of ``update`` with independent ``N(0, std^2)`` noise added to every coordinate.

    Noise is drawn in float64 and the result cast back to each array's dtype; arrays are visited in
    the mapping's order, so a seeded ``rng`` gives reproducible noise. ``std`` is
    :func:`central_noise_std` or :func:`node_noise_std`.
    """
    sigma = check.non_negative("std", std)
    rng = check.generator(rng)
    noised: dict[str, np.ndarray] = {}
    for name, value in check.float_update(update).items():
        noise = rng.normal(0.0, sigma, size=value.shape)
        noised[name] = (value.astype(np.float64) + noise).astype(value.dtype)
    return noised
