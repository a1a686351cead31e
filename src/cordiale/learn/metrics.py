"""Binary-classification metrics computed from aggregates that may leave a site.

A site never sends its scores: it sends a :class:`ScoreHistogram` (counts of positives and
negatives in ``bins`` equal-width probability bins, plus the sums needed for the Brier score and
the log loss). Histograms of several sites add up, so per-site and pooled metrics come from the same
code. AUC is the Mann-Whitney statistic on the binned scores (pairs in one bin count one half):
with 2,000 bins it differs from the exact AUC only by the share of positive-negative pairs whose
scores fall within 1/2000 of each other. Accuracy, sensitivity and specificity at the threshold 0.5
are exact (0.5 is a bin edge). The expected calibration error uses 10 bins and the fine bins'
centres as confidences (error at most 1/(2*bins)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cordiale.core.errors import ProtocolError
from cordiale.core.records import ArrayRecord

__all__ = ["DEFAULT_BINS", "METRIC_NAMES", "ScoreHistogram", "compute_metrics"]

DEFAULT_BINS = 2000
METRIC_NAMES = (
    "auc",
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "brier",
    "ece",
    "log_loss",
)
_EPS = 1e-7


@dataclass(frozen=True)
class ScoreHistogram:
    pos: np.ndarray  # int64[bins]: positives per probability bin
    neg: np.ndarray  # int64[bins]: negatives per probability bin
    brier_sum: float
    log_loss_sum: float

    @classmethod
    def from_scores(
        cls, probs: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS
    ) -> ScoreHistogram:
        p = np.clip(np.asarray(probs, np.float64), 0.0, 1.0)
        y = np.asarray(labels).astype(bool)
        idx = np.minimum((p * bins).astype(np.int64), bins - 1)
        pos = np.bincount(idx[y], minlength=bins).astype(np.int64)
        neg = np.bincount(idx[~y], minlength=bins).astype(np.int64)
        brier = float(np.sum((p - y) ** 2))
        pc = np.clip(p, _EPS, 1 - _EPS)
        ll = float(-np.sum(np.where(y, np.log(pc), np.log(1 - pc))))
        return cls(pos, neg, brier, ll)

    @property
    def n(self) -> int:
        return int(self.pos.sum() + self.neg.sum())

    def __add__(self, other: ScoreHistogram) -> ScoreHistogram:
        if self.pos.shape != other.pos.shape:
            raise ProtocolError("cannot add score histograms with different bin counts")
        return ScoreHistogram(
            self.pos + other.pos,
            self.neg + other.neg,
            self.brier_sum + other.brier_sum,
            self.log_loss_sum + other.log_loss_sum,
        )

    def to_record(self) -> ArrayRecord:
        return ArrayRecord(
            {
                "pos": self.pos,
                "neg": self.neg,
                "sums": np.array([self.brier_sum, self.log_loss_sum], np.float64),
            }
        )

    @classmethod
    def from_record(cls, r: ArrayRecord, bins: int = DEFAULT_BINS) -> ScoreHistogram:
        try:
            pos, neg, sums = r["pos"], r["neg"], r["sums"]
        except KeyError as e:
            raise ProtocolError(f"evaluation reply lacks the histogram part {e}") from None
        for name, a, shape in (("pos", pos, (bins,)), ("neg", neg, (bins,)), ("sums", sums, (2,))):
            if a.shape != shape:
                raise ProtocolError(
                    f"evaluation histogram {name!r} has shape {a.shape}, not {shape}"
                )
        if pos.dtype != np.int64 or neg.dtype != np.int64 or (pos < 0).any() or (neg < 0).any():
            raise ProtocolError("evaluation histogram counts must be non-negative int64")
        return cls(pos, neg, float(sums[0]), float(sums[1]))


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg  # negatives in strictly lower bins
    wins = float(np.sum(pos * neg_below) + 0.5 * np.sum(pos * neg))
    return wins / float(n_pos * n_neg)


def _ece(h: ScoreHistogram, n_bins: int = 10) -> float:
    bins = len(h.pos)
    centres = (np.arange(bins) + 0.5) / bins
    group = np.minimum((centres * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(group, weights=h.pos + h.neg, minlength=n_bins)
    conf = np.bincount(group, weights=centres * (h.pos + h.neg), minlength=n_bins)
    hits = np.bincount(group, weights=h.pos, minlength=n_bins)
    mask = count > 0
    return float(np.sum(np.abs(conf[mask] - hits[mask])) / max(count.sum(), 1))


def compute_metrics(h: ScoreHistogram) -> dict[str, float]:
    """The metrics of :data:`METRIC_NAMES` (NaN where undefined, e.g. AUC of one class), and n."""
    n = h.n
    half = len(h.pos) // 2
    tp, fn = float(h.pos[half:].sum()), float(h.pos[:half].sum())
    tn, fp = float(h.neg[:half].sum()), float(h.neg[half:].sum())
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    return {
        "auc": _auc(h.pos, h.neg),
        "accuracy": (tp + tn) / n if n else float("nan"),
        "balanced_accuracy": (sens + spec) / 2,
        "sensitivity": sens,
        "specificity": spec,
        "brier": h.brier_sum / n if n else float("nan"),
        "ece": _ece(h) if n else float("nan"),
        "log_loss": h.log_loss_sum / n if n else float("nan"),
        "n": float(n),
    }
