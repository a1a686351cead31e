"""Patient-level train/test split: all of a patient's images fall on one side.

Images of one patient are correlated (same anatomy, scanner, day); splitting images rather than
patients leaks the test set into training and overstates performance. :func:`split_by_patient`
splits the *patients*, seeded, stratified by each patient's majority label when every class has
at least two patients and the test side can hold one of each; ``test_fraction`` is a fraction of
patients, not of images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cordiale.core.errors import ConfigError, DataError

__all__ = ["majority_labels", "split_by_patient"]


def majority_labels(patient_ids: Sequence[object], labels: Sequence[int]) -> dict[str, int]:
    """Each patient's most frequent label (ties go to the smallest label)."""
    by_patient: dict[str, list[int]] = {}
    for pid, label in zip(patient_ids, labels, strict=True):
        by_patient.setdefault(str(pid), []).append(int(label))
    out = {}
    for pid, values in by_patient.items():
        uniq, counts = np.unique(values, return_counts=True)
        out[pid] = int(uniq[np.argmax(counts)])
    return out


def split_by_patient(
    patient_ids: Sequence[object] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    test_fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` into the images, sorted; no patient is on both sides.

    Deterministic for a seed and the same (patient, label) pairs, whatever the row order.
    Raises :class:`ConfigError` for a fraction outside (0, 1) and :class:`DataError` for fewer
    than two patients.
    """
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test fraction must be in (0, 1); got {test_fraction}")
    pids = np.asarray([str(p) for p in patient_ids], dtype=object)
    if len(pids) != len(labels):
        raise ValueError(f"{len(pids)} patient ids but {len(labels)} labels")
    majority = majority_labels(list(pids), list(labels))
    patients = np.asarray(sorted(majority), dtype=object)
    if len(patients) < 2:
        raise DataError(
            f"a patient-level split needs at least 2 patients; the dataset has {len(patients)}"
        )
    from sklearn.model_selection import train_test_split  # heavy: only when a split is made

    strata = np.asarray([majority[p] for p in patients])
    _, per_class = np.unique(strata, return_counts=True)
    n_test = min(max(math.ceil(test_fraction * len(patients)), 1), len(patients) - 1)
    state = seed % 2**32
    split: list[np.ndarray] | None = None
    if len(per_class) > 1 and per_class.min() >= 2:
        try:
            split = train_test_split(
                patients, test_size=n_test, random_state=state, stratify=strata
            )
        except ValueError:  # a side is too small to hold every class
            split = None
    if split is None:
        split = train_test_split(patients, test_size=n_test, random_state=state)
    test_set = set(split[1])
    test_mask = np.fromiter((p in test_set for p in pids), dtype=bool, count=len(pids))
    return np.flatnonzero(~test_mask), np.flatnonzero(test_mask)
