import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cordiale.core.errors import ConfigError, DataError
from cordiale.data.imaging import majority_labels, split_by_patient


def cohort(sizes: list[int], patient_labels: list[int], shuffle_seed: int):
    """One row per image: patient ``i`` has ``sizes[i]`` images, mostly of its label."""
    pids, labels = [], []
    for i, (n, label) in enumerate(zip(sizes, patient_labels, strict=True)):
        pids += [f"P{i:03d}"] * n
        labels += [label] * (n // 2 + 1) + [1 - label] * (n - n // 2 - 1)
    order = np.random.default_rng(shuffle_seed).permutation(len(pids))
    return np.asarray(pids, dtype=object)[order], np.asarray(labels)[order]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=2, max_size=40),
    data=st.data(),
    seed=st.integers(0, 2**40),
    fraction=st.floats(0.05, 0.95),
)
def test_no_patient_on_both_sides_and_every_image_placed(sizes, data, seed, fraction):
    patient_labels = data.draw(
        st.lists(st.integers(0, 1), min_size=len(sizes), max_size=len(sizes))
    )
    pids, labels = cohort(sizes, patient_labels, shuffle_seed=seed % 97)

    train, test = split_by_patient(pids, labels, test_fraction=fraction, seed=seed)

    assert len(train) and len(test)
    assert sorted([*train, *test]) == list(range(len(pids)))
    assert not set(pids[train]) & set(pids[test])
    again = split_by_patient(pids, labels, test_fraction=fraction, seed=seed)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])


def test_same_split_whatever_the_row_order():
    pids, labels = cohort([3, 1, 4, 1, 5, 9, 2, 6], [0, 1, 0, 1, 0, 1, 0, 1], shuffle_seed=0)
    order = np.random.default_rng(1).permutation(len(pids))

    _, test = split_by_patient(pids, labels, test_fraction=0.25, seed=7)
    _, test_shuffled = split_by_patient(pids[order], labels[order], test_fraction=0.25, seed=7)

    assert set(pids[test]) == set(pids[order][test_shuffled])


def test_stratified_by_majority_label_and_seed_matters():
    sizes = [2] * 40
    patient_labels = [1] * 10 + [0] * 30
    pids, labels = cohort(sizes, patient_labels, shuffle_seed=0)
    majority = majority_labels(pids, labels)

    tests = []
    for seed in range(5):
        _, test = split_by_patient(pids, labels, test_fraction=0.2, seed=seed)
        test_patients = set(pids[test])
        tests.append(frozenset(test_patients))
        assert len(test_patients) == 8
        assert sum(majority[p] for p in test_patients) == 2  # a quarter of patients are label 1

    assert len(set(tests)) > 1


def test_majority_ties_go_to_the_smallest_label():
    assert majority_labels(["a", "a", "b", "b", "b"], [1, 0, 2, 2, 1]) == {"a": 0, "b": 2}


def test_split_errors():
    with pytest.raises(ConfigError, match="test fraction"):
        split_by_patient(["a", "b"], [0, 1], test_fraction=1.0, seed=0)
    with pytest.raises(DataError, match="at least 2 patients"):
        split_by_patient(["a", "a"], [0, 1], test_fraction=0.5, seed=0)
