import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cordiale.core.errors import ConfigError, UnknownNameError
from cordiale.data.partition import PartitionSpec, partition_indices


def _labels(n=1000, seed=0):
    return np.random.default_rng(seed).integers(0, 2, n)


@settings(max_examples=30, deadline=None)
@given(
    spec=st.sampled_from(["iid", "dirichlet:0.5", "dirichlet:5", "quantity:1"]),
    sites=st.integers(1, 12),
    seed=st.integers(0, 1000),
)
def test_partitions_cover_every_row_exactly_once(spec, sites, seed):
    labels = _labels(600, seed)
    parts = partition_indices(
        PartitionSpec.parse(spec),
        labels=labels,
        sites=sites,
        rng=np.random.default_rng(seed),
        min_size=10,
    )
    allidx = np.concatenate(list(parts.values()))
    assert len(parts) == sites
    assert sorted(allidx.tolist()) == list(range(600))
    assert min(len(p) for p in parts.values()) >= 10


def _label_skew(alpha: float) -> float:
    labels = _labels(4000)
    parts = partition_indices(
        PartitionSpec.parse(f"dirichlet:{alpha}"),
        labels=labels,
        sites=8,
        rng=np.random.default_rng(1),
        min_size=5,
    )
    return float(np.std([labels[p].mean() for p in parts.values()]))


def test_smaller_alpha_means_more_label_skew():
    assert _label_skew(0.1) > _label_skew(1.0) > _label_skew(100.0)
    iid = partition_indices(
        PartitionSpec.parse("iid"), labels=_labels(4000), sites=8, rng=np.random.default_rng(1)
    )
    assert np.std([_labels(4000)[p].mean() for p in iid.values()]) < 0.03


def test_natural_partition_groups_by_site_value():
    values = np.array(["b", "a", "b", "c", "a"])
    parts = partition_indices(
        PartitionSpec.parse("natural"),
        labels=np.zeros(5),
        sites=0,
        rng=np.random.default_rng(0),
        site_values=values,
    )
    assert {k: v.tolist() for k, v in parts.items()} == {"a": [1, 4], "b": [0, 2], "c": [3]}


def test_bad_specs_say_what_is_valid():
    with pytest.raises(UnknownNameError, match="dirichlet:ALPHA, iid, natural, quantity:ALPHA"):
        PartitionSpec.parse("powerlaw")
    with pytest.raises(ConfigError, match="alpha > 0"):
        PartitionSpec.parse("dirichlet:0")
    with pytest.raises(ConfigError, match="positive number"):
        PartitionSpec.parse("dirichlet:x")
    with pytest.raises(ConfigError, match="at least 200 rows"):
        partition_indices(
            PartitionSpec.parse("dirichlet:0.5"),
            labels=_labels(100),
            sites=4,
            rng=np.random.default_rng(0),
            min_size=200,
        )
