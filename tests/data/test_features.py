import numpy as np
import pandas as pd

from cordiale.data.contract import DataContract, FieldSpec, TargetSpec
from cordiale.data.features import FeatureEncoder, Standardizer, combine_stats, feature_stats


def test_federated_scaling_equals_pooled_scaling():
    rng = np.random.default_rng(0)
    parts = [rng.normal(loc=i, scale=1 + i, size=(50 + 10 * i, 3)) for i in range(4)]
    parts[1][3, 2] = np.nan
    pooled = np.concatenate(parts)
    fed = Standardizer.from_stats(combine_stats([feature_stats(p) for p in parts]))
    np.testing.assert_allclose(fed.mean, np.nanmean(pooled, axis=0), rtol=1e-12)
    np.testing.assert_allclose(fed.std, np.nanstd(pooled, axis=0), rtol=1e-9)
    z = fed.transform(pooled)
    assert z[50 + 3, 2] == 0.0  # a missing value maps to the mean
    np.testing.assert_allclose(np.nanmean(fed.transform(pooled), axis=0), 0, atol=1e-2)


def test_encoder_one_hot_uses_contract_categories():
    contract = DataContract(
        name="c",
        fields=[
            FieldSpec(name="sex", type="category", categories=["F", "M"], missing="allow"),
            FieldSpec(name="age"),
        ],
        target=TargetSpec(name="y", positive=[1]),
        min_rows=1,
        min_per_class=1,
    )
    frame = contract.validate_frame(
        pd.DataFrame({"sex": ["M", None, "M"], "age": [30, 40, 50], "y": [1, 0, 0]}), dataset="d"
    )
    enc = FeatureEncoder(contract)
    x, y = enc.encode(frame)
    assert enc.feature_names == ["sex=F", "sex=M", "age"]
    np.testing.assert_array_equal(x[0], [0, 1, 30])
    assert np.isnan(x[1, :2]).all() and y.tolist() == [1, 0, 0]
