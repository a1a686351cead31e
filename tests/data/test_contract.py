import numpy as np
import pandas as pd
import pytest

from cordiale.core.errors import ConfigError, ContractViolation, UnknownNameError
from cordiale.data.catalog import get_dataset, list_datasets
from cordiale.data.contract import DataContract, FieldSpec, TargetSpec, infer_contract


def test_every_bundled_dataset_satisfies_its_contract():
    for d in list_datasets():
        frame = d.contract.validate_frame(d.load(), dataset=d.name)
        assert len(frame) >= 400 and not d.synthetic
        assert set(frame[d.contract.target.name].unique()) == {0, 1}
    assert len(get_dataset("pima").load()) == 768
    assert 9000 <= len(get_dataset("thyroid").load()) <= 9200


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="breast-cancer, glaucoma, pima, thyroid"):
        get_dataset("mnist")


def test_pima_zero_codes_become_missing():
    d = get_dataset("pima")
    frame = d.contract.validate_frame(d.load(), dataset="pima")
    assert frame["Insulin"].isna().sum() == 374  # insulin zero means "not recorded"
    assert frame["Pregnancies"].isna().sum() == 0  # zero pregnancies is a real value


def test_every_problem_is_listed_in_one_message():
    raw = get_dataset("pima").load().head(10).copy()
    raw = raw.drop(columns=["Age"])
    raw["Glucose"] = raw["Glucose"].astype(object)
    raw["Pregnancies"] = raw["Pregnancies"].astype(float)
    raw.loc[2, "Glucose"] = "high"
    raw.loc[3, "BMI"] = 300.0
    raw.loc[4, "Pregnancies"] = 1.5
    with pytest.raises(ContractViolation) as info:
        get_dataset("pima").contract.validate_frame(raw, dataset="mine.csv")
    e = info.value
    text = str(e)
    assert len(e.problems) == 5, e.problems
    assert "missing column(s): Age" in text
    assert "'Glucose': 1 non-numeric value(s) (file lines 4)" in text
    assert "'BMI': 1 value(s) outside [15.0, 70.0] kg/m2 (file lines 5)" in text
    assert "'Pregnancies': 1 non-integer" in text
    assert "too few rows: 10" in text
    assert "300" not in text and "high" not in text  # never echo patient values


def test_target_classes_and_missing_forbidden():
    contract = DataContract(
        name="c",
        fields=[FieldSpec(name="x", min=0, max=1)],
        target=TargetSpec(name="y", positive=["yes"]),
        min_rows=1,
    )
    df = pd.DataFrame({"x": [0.1, np.nan, 0.3], "y": ["no", "no", "no"]})
    with pytest.raises(ContractViolation) as info:
        contract.validate_frame(df, dataset="d")
    text = str(info.value)
    assert "0 positive row(s)" in text and "forbids missing values" in text


def test_contract_from_toml_and_invalid_contract(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(
        '[contract]\nname = "x"\n[[contract.fields]]\nname = "age"\ntype = "int"\nmin = 0\n'
        'max = 120\nunit = "years"\n[contract.target]\nname = "y"\npositive = [1]\n'
    )
    c = DataContract.from_toml(p)
    assert c.fields[0].unit == "years"
    p.write_text('[contract]\nname = "x"\nfields = []\n[contract.target]\nname = "y"\n')
    with pytest.raises(ConfigError, match="not a valid data contract"):
        DataContract.from_toml(p)


def test_infer_contract():
    df = pd.DataFrame(
        {
            "a": [1.0, 2.0],
            "sex": ["F", "M"],
            "smoker": ["yes", "no"],
            "out": ["yes", "no"],
            "hospital": ["h1", "h2"],
        }
    )
    c = infer_contract(df, name="t", target="out", exclude=("hospital",))
    assert [(f.name, f.type) for f in c.fields] == [
        ("a", "float"),
        ("sex", "category"),
        ("smoker", "bool"),
    ]
    assert c.target.positive == ["yes"]
    with pytest.raises(ConfigError, match="positive class"):
        infer_contract(df.assign(out=["x", "z"]), name="t", target="out")
