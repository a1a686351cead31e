"""Turning a validated table into a model matrix, and feature scaling without pooling the data.

:class:`FeatureEncoder` maps contract fields to columns (numbers and booleans as one column each,
categories one-hot with the contract's category list, so that every site builds the same columns).
Missing values stay NaN until scaling, which maps them to the mean (0 after standardisation).

Scaling is fitted from *sufficient statistics* (count, sum, sum of squares per column), so it can be
fitted at one site (``site`` scaling) or from the sum of every site's statistics (``federated``
scaling) - never from a pooled table, which no real federation has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cordiale.core.records import ArrayRecord
from cordiale.data.contract import DataContract

__all__ = ["FeatureEncoder", "Standardizer", "combine_stats", "feature_stats"]


class FeatureEncoder:
    """Encode contract-validated frames into float matrices with a fixed column layout."""

    def __init__(self, contract: DataContract) -> None:
        self.contract = contract
        names: list[str] = []
        for f in contract.fields:
            if f.type == "category":
                names.extend(f"{f.name}={c}" for c in f.categories or [])
            else:
                names.append(f.name)
        self.feature_names = names

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    def encode(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(X, y)``: float64 features (NaN where missing) and int64 labels."""
        cols: list[np.ndarray] = []
        for f in self.contract.fields:
            s = frame[f.name]
            if f.type == "category":
                values = s.to_numpy(dtype=object)
                missing = s.isna().to_numpy()
                for c in f.categories or []:
                    col = (values == c).astype(np.float64)
                    col[missing] = np.nan
                    cols.append(col)
            else:
                cols.append(s.to_numpy(dtype=np.float64))
        x = np.column_stack(cols) if cols else np.zeros((len(frame), 0))
        y = frame[self.contract.target.name].to_numpy(dtype=np.int64)
        return x, y


def feature_stats(x: np.ndarray) -> ArrayRecord:
    """Per-column count, sum and sum of squares of the non-missing values."""
    present = ~np.isnan(x)
    z = np.where(present, x, 0.0)
    return ArrayRecord(
        {
            "count": present.sum(axis=0).astype(np.float64),
            "sum": z.sum(axis=0),
            "sumsq": (z * z).sum(axis=0),
        }
    )


def combine_stats(parts: list[ArrayRecord]) -> ArrayRecord:
    """Sum the sufficient statistics of several sites."""
    return ArrayRecord(
        {k: np.sum([p[k] for p in parts], axis=0) for k in ("count", "sum", "sumsq")}
    )


@dataclass(frozen=True)
class Standardizer:
    """``(x - mean) / std`` with missing values mapped to 0 (the mean)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_stats(cls, stats: ArrayRecord) -> Standardizer:
        n = np.maximum(stats["count"], 1.0)
        mean = stats["sum"] / n
        var = np.maximum(stats["sumsq"] / n - mean * mean, 0.0)
        std = np.sqrt(var)
        return cls(mean=mean, std=np.where(std > 1e-12, std, 1.0))

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        return cls.from_stats(feature_stats(x))

    def transform(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.std).astype(np.float32)
        if not np.isfinite(z).all():  # missing values (and overflow): only then the slow path
            z = np.nan_to_num(z, nan=0.0)
        return z

    def to_record(self) -> ArrayRecord:
        return ArrayRecord({"mean": self.mean, "std": self.std})

    @classmethod
    def from_record(cls, record: ArrayRecord) -> Standardizer:
        return cls(
            mean=np.asarray(record["mean"], np.float64), std=np.asarray(record["std"], np.float64)
        )
