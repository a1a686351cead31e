"""Differential-privacy building blocks: clipping, Gaussian noise, accounting, budget ledger.

Depends only on :mod:`cordiale.core` and third-party libraries; nothing here does federation.

* :mod:`~cordiale.privacy.clipping` - global L2 norm and clipping of an update (a mapping of names
  to numpy arrays), adaptive clipping after Andrew et al. 2021. Pure functions.
* :mod:`~cordiale.privacy.noise` - the Gaussian mechanism, central or distributed across nodes
  (each adds its share, sized for a minimum number of survivors). Pure functions of a seeded
  ``numpy.random.Generator``.
* :mod:`~cordiale.privacy.accounting` - epsilon of the (Poisson-subsampled) Gaussian mechanism and
  the noise multiplier for a target epsilon, by Google's ``dp_accounting`` (RDP or PLD); pure
  functions, plus :class:`PrivacyAccountant`, which records the rounds of one study.
* :mod:`~cordiale.privacy.ledger` - :class:`BudgetLedger`, a per-dataset budget in SQLite, charged
  atomically and at most once per task, across studies.

A client-level DP round, as the strategies will wire it::

    clipped, norm = clip_update(update, clip_norm=C)                     # at each node
    std = node_noise_std(noise_multiplier=z, clip_norm=C, num_nodes=n, min_survivors=t)
    share = add_gaussian_noise(clipped, std=std, rng=rng)                # then masked, summed
    accountant.record(noise_multiplier=z, sampling_rate=1.0)              # at the hub
    ledger.charge(dataset, study_id=s, task_id=k, epsilon=eps, delta=d)   # before anything leaves

All privacy parameters are keyword-only. Invalid ones raise
:class:`~cordiale.core.errors.ConfigError`; a refused operation raises
:class:`~cordiale.core.errors.PrivacyError` or :class:`~cordiale.core.errors.BudgetExceeded`.
"""

from cordiale.privacy.accounting import (
    AccountantKind,
    GaussianEvent,
    PrivacyAccountant,
    epsilon,
    epsilon_for_events,
    noise_multiplier_for,
)
from cordiale.privacy.clipping import (
    adaptive_clipping_noise_multiplier,
    clip_update,
    global_l2_norm,
    next_clip_norm,
    noised_fraction_below,
)
from cordiale.privacy.ledger import BudgetLedger, Charge, EpsilonDelta
from cordiale.privacy.noise import (
    add_gaussian_noise,
    central_noise_std,
    node_noise_std,
    realised_noise_multiplier,
)

__all__ = [
    "AccountantKind",
    "BudgetLedger",
    "Charge",
    "EpsilonDelta",
    "GaussianEvent",
    "PrivacyAccountant",
    "adaptive_clipping_noise_multiplier",
    "add_gaussian_noise",
    "central_noise_std",
    "clip_update",
    "epsilon",
    "epsilon_for_events",
    "global_l2_norm",
    "next_clip_norm",
    "node_noise_std",
    "noise_multiplier_for",
    "noised_fraction_below",
    "realised_noise_multiplier",
]
