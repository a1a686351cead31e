"""Pure aggregation maths: weighted means of updates. No I/O, no state.

Kept separate so that secure aggregation can replace *how the sum is computed* (masked sums that the
hub can unmask only in total) without touching the strategies that use the mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cordiale.core.errors import ProtocolError
from cordiale.core.records import ArrayRecord

__all__ = ["weighted_mean", "weighted_sum"]


def weighted_sum(updates: Sequence[ArrayRecord], weights: Sequence[float]) -> ArrayRecord:
    """``sum_i w_i * u_i`` for records with identical names and shapes (float64)."""
    if not updates or len(updates) != len(weights):
        raise ProtocolError("weighted_sum needs one weight per update and at least one update")
    names = list(updates[0])
    for u in updates[1:]:
        if list(u) != names or any(u[k].shape != updates[0][k].shape for k in names):
            raise ProtocolError("updates to aggregate have different names or shapes")
    out = ArrayRecord()
    for k in names:
        acc = np.zeros(updates[0][k].shape, np.float64)
        for u, w in zip(updates, weights, strict=True):
            acc += w * u[k].astype(np.float64)
        out[k] = acc
    return out


def weighted_mean(updates: Sequence[ArrayRecord], weights: Sequence[float]) -> ArrayRecord:
    """``sum_i w_i u_i / sum_i w_i``; weights must be non-negative with a positive total."""
    total = float(np.sum(weights))
    if total <= 0 or min(weights) < 0:
        raise ProtocolError(
            f"aggregation weights must be >= 0 with a positive sum; got {list(weights)}"
        )
    s = weighted_sum(updates, weights)
    return ArrayRecord((k, v / total) for k, v in s.items())
