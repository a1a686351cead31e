"""A site's local dataset, as the node holds it: validated, split by the site, encoded.

The split into training and test rows happens at the site, seeded, stratified by the label where
both classes allow it. Nothing here leaves the node; tasks derive aggregates from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from cordiale.core.errors import ConfigError, ContractViolation
from cordiale.data.contract import DataContract
from cordiale.data.features import FeatureEncoder

__all__ = ["LocalDataset", "SiteDataset", "build_site_dataset", "split_frame", "split_site"]


class SiteDataset(Protocol):
    """What node tasks need of a site's data: tabular (:class:`LocalDataset`) or images
    (:class:`cordiale.data.imaging.ImageDataset`)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    #: column -> its values for each test example (subgroup evaluation); may be empty
    subgroups_test: dict[str, np.ndarray]

    @property
    def num_train(self) -> int: ...

    @property
    def num_test(self) -> int: ...

    @property
    def num_features(self) -> int: ...


def split_frame(
    frame: pd.DataFrame, *, target: str, test_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded train/test split of a validated frame, stratified when every class has 2+ rows."""
    train, test = _split_positions(frame[target], test_fraction=test_fraction, seed=seed)
    return frame.iloc[train].reset_index(drop=True), frame.iloc[test].reset_index(drop=True)


def _split_positions(
    labels: pd.Series, *, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of the training and test rows (what :func:`split_frame` takes)."""
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test fraction must be in (0, 1); got {test_fraction}")
    counts = labels.value_counts()
    stratify = labels if len(counts) > 1 and counts.min() >= 2 else None
    train, test = train_test_split(
        np.arange(len(labels)),
        test_size=test_fraction,
        random_state=seed % 2**32,
        stratify=stratify,
    )
    return train, test


def split_site(
    site: str,
    contract: DataContract,
    valid: pd.DataFrame,
    raw: pd.DataFrame,
    *,
    test_fraction: float,
    seed: int,
) -> LocalDataset:
    """Split a site's validated rows (seeded) and encode them, keeping the test rows' columns
    for subgroup evaluation: the contract's fields as validated (missing codes are missing),
    every other column of ``raw`` (the same rows, in the same order) as read."""
    train, test = _split_positions(
        valid[contract.target.name], test_fraction=test_fraction, seed=seed
    )
    raw_test = raw.reset_index(drop=True).iloc[test].reset_index(drop=True)
    return LocalDataset.from_frames(
        site,
        contract,
        valid.iloc[train].reset_index(drop=True),
        valid.iloc[test].reset_index(drop=True),
        raw_test=raw_test,
    )


@dataclass
class LocalDataset:
    """Encoded training and test matrices of one site (features NaN where missing)."""

    name: str
    contract: DataContract
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    feature_names: list[str] = field(default_factory=list)
    #: column -> its values for each test row (subgroup evaluation; never leaves the site)
    subgroups_test: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_frames(
        cls,
        name: str,
        contract: DataContract,
        train: pd.DataFrame,
        test: pd.DataFrame,
        *,
        raw_test: pd.DataFrame | None = None,
    ) -> LocalDataset:
        """Build from frames already validated by ``contract``; ``raw_test`` (the test rows as
        read, every column) adds the columns outside the contract to ``subgroups_test``."""
        enc = FeatureEncoder(contract)
        x_tr, y_tr = enc.encode(train)
        x_te, y_te = enc.encode(test)
        columns = {} if raw_test is None else {str(c): raw_test[c] for c in raw_test.columns}
        columns.update({str(c): test[c] for c in test.columns})
        groups = {c: v.to_numpy(dtype=object) for c, v in columns.items()}
        return cls(name, contract, x_tr, y_tr, x_te, y_te, enc.feature_names, groups)

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_train(self) -> int:
        return len(self.y_train)

    @property
    def num_test(self) -> int:
        return len(self.y_test)


def build_site_dataset(
    frame: pd.DataFrame,
    contract: DataContract,
    *,
    site: str,
    test_fraction: float,
    seed: int,
) -> LocalDataset:
    """What a site holds for a study: its rows validated, split (seeded) and encoded.

    The node runs this on the rows of its own file; simulation runs it on each virtual site's
    share, so that the same seed and rows give the same training and test sets in both.
    Raises :class:`~cordiale.core.errors.ContractViolation` listing every problem.
    """
    valid = contract.validate_frame(frame, dataset=site)
    y = valid[contract.target.name].to_numpy()
    problems = [
        f"{int((y == value).sum())} {label} row(s), the contract needs at least "
        f"{contract.min_per_class}"
        for value, label in ((1, "positive"), (0, "negative"))
        if int((y == value).sum()) < contract.min_per_class
    ]
    if problems:
        raise ContractViolation(site, problems)
    return split_site(site, contract, valid, frame, test_fraction=test_fraction, seed=seed)
