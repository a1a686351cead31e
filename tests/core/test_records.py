import numpy as np
import pytest

from cordiale.core.errors import ConfigError
from cordiale.core.records import ArrayRecord, ConfigRecord, MetricRecord


def test_array_record_validates_on_insert():
    rec = ArrayRecord({"w": np.zeros(3, np.float32)})
    with pytest.raises(ConfigError, match="dtype complex128"):
        rec["c"] = np.zeros(2, np.complex128)
    with pytest.raises(ConfigError, match="numpy array"):
        rec["l"] = [1, 2]  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="key must be"):
        rec["bad/name"] = np.zeros(1)
    with pytest.raises(ConfigError, match="dtype object"):
        rec["o"] = np.array([object()])
    assert list(rec) == ["w"]


def test_array_record_big_endian_is_stored_little_endian():
    rec = ArrayRecord({"x": np.arange(4, dtype=">f8")})
    assert rec["x"].dtype.byteorder in ("<", "=")
    np.testing.assert_array_equal(rec["x"], np.arange(4.0))


def test_metric_record_rejects_non_finite_and_non_numbers():
    m = MetricRecord({"auc": 0.8, "n": 3})
    assert m.to_dict() == {"auc": 0.8, "n": 3}
    for bad in (float("nan"), float("inf"), "0.5", True):
        with pytest.raises(ConfigError):
            m["x"] = bad  # type: ignore[assignment]


def test_config_record_values_and_typed_getters():
    c = ConfigRecord({"lr": 0.1, "layers": ["a", "b"], "n": 3, "flag": True})
    assert c.get_float("lr", 0) == 0.1 and c.get_int("n", 0) == 3
    assert c.get_str_list("layers") == ["a", "b"]
    with pytest.raises(ConfigError, match="flat list of one scalar type"):
        c["mixed"] = [1, "a"]
    with pytest.raises(ConfigError, match="must be a bool"):
        c["d"] = {"nested": 1}
    with pytest.raises(ConfigError, match="must be an integer"):
        c.get_int("lr", 0)


def test_names_stay_checked_however_many_were_seen_before():
    """Valid names are remembered (keys repeat in every message); that memory is bounded and
    never lets an invalid name through."""
    for i in range(10_000):  # more than the memory holds: it is cleared and refilled
        ConfigRecord({f"k{i}": i})
    for bad in ("", "a b", "x" * 201, "naïve", 7, ("t",)):
        with pytest.raises(ConfigError, match="key must be 1-200 characters"):
            ConfigRecord({bad: 1})  # type: ignore[dict-item]
    assert list(ConfigRecord({"k9999": 1, "k0": 2})) == ["k9999", "k0"]


def test_integers_must_fit_in_64_bits():
    """Every decoder reads JSON integers as 64-bit: a record refuses more, naming the key."""
    assert ConfigRecord({"seed": 2**63 - 1, "low": -(2**63)})["seed"] == 2**63 - 1
    with pytest.raises(ConfigError, match="'seed' must fit in 64 bits"):
        ConfigRecord({"seed": 2**63})
    with pytest.raises(ConfigError, match="'ids' must hold integers that fit in 64 bits"):
        ConfigRecord({"ids": [1, 2**70]})
    with pytest.raises(ConfigError, match="'n' must fit in 64 bits"):
        MetricRecord({"n": -(2**64)})
