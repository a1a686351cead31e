"""Data contracts: what a study needs from a site's table, checked before any work.

A :class:`DataContract` names each field (type, unit, allowed range, categories, missing-value rule
and the codes that mean "missing"), the binary target and the minimum number of rows. ``validate``
collects *every* problem of a table and raises one :class:`ContractViolation` listing them all
(STYLE.md #4). Messages name fields, counts and row numbers, never data values: this is patient
data.

Contracts are pydantic models, so they load from a study spec (TOML) or JSON unchanged.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cordiale.core.errors import ConfigError, ContractViolation
from cordiale.core.tomlfile import ContractModel

__all__ = ["DataContract", "FieldSpec", "TargetSpec", "infer_contract"]

FieldType = Literal["float", "int", "bool", "category"]
_TRUE = {"t", "true", "yes", "y", "1", "1.0"}
_FALSE = {"f", "false", "no", "n", "0", "0.0"}
_MAX_ROWS_NAMED = 5


class FieldSpec(BaseModel):
    """One input field of the contract."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    type: FieldType = "float"
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    missing: Literal["forbid", "allow"] = "forbid"
    #: Values that mean "not recorded" in this source (e.g. 0 for insulin in the Pima table).
    missing_codes: list[float | str] = Field(default_factory=list)
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> FieldSpec:
        if self.type == "category" and not self.categories:
            raise ValueError(f"field {self.name!r}: a category field needs its categories")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"field {self.name!r}: min {self.min} > max {self.max}")
        return self


class TargetSpec(BaseModel):
    """The binary outcome: which values are the positive class (or, instead, the negative one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    positive: list[float | str] | None = None
    negative: list[float | str] | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> TargetSpec:
        if (self.positive is None) == (self.negative is None):
            raise ValueError(f"target {self.name!r}: give exactly one of positive or negative")
        return self


def _norm(v: object) -> str:
    """Canonical string form for comparing table values with contract values (1 == 1.0 == '1')."""
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    return str(v).strip()


class DataContract(ContractModel):
    """What a dataset must look like for a study to run on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    what: ClassVar[str] = "data contract"

    name: str = Field(min_length=1)
    fields: list[FieldSpec] = Field(min_length=1)
    target: TargetSpec
    min_rows: int = Field(default=20, ge=1)
    min_per_class: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _unique(self) -> DataContract:
        names = [f.name for f in self.fields] + [self.target.name]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate field names in contract: {', '.join(dup)}")
        return self

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def validate_frame(self, df: pd.DataFrame, *, dataset: str) -> pd.DataFrame:
        """Check ``df`` against the contract; return a typed copy (missing codes as NaN).

        Raises :class:`ContractViolation` listing every problem found.
        """
        problems: list[str] = []
        out = pd.DataFrame(index=df.index)
        missing_cols = [c for c in [*self.field_names, self.target.name] if c not in df.columns]
        if missing_cols:
            problems.append(f"missing column(s): {', '.join(missing_cols)}")
        for spec in self.fields:
            if spec.name in df.columns:
                col, errs = _check_field(spec, df[spec.name])
                out[spec.name] = col
                problems.extend(errs)
        if self.target.name in df.columns:
            y, errs = self._check_target(df[self.target.name])
            out[self.target.name] = y
            problems.extend(errs)
        if len(df) < self.min_rows:
            problems.append(f"too few rows: {len(df)}, the contract needs at least {self.min_rows}")
        if problems:
            raise ContractViolation(dataset, problems)
        return out.reset_index(drop=True)

    def _check_target(self, col: pd.Series) -> tuple[pd.Series, list[str]]:
        t = self.target
        values = col.map(_norm)
        chosen = {_norm(v) for v in (t.positive if t.positive is not None else t.negative or [])}
        na = col.isna()
        errs: list[str] = []
        if na.any():
            errs.append(f"target {t.name!r}: {int(na.sum())} missing value(s) {_rows(na)}")
        y = values.isin(chosen) if t.positive is not None else ~values.isin(chosen)
        y = y.astype("int64")
        for cls_value, label in ((1, "positive"), (0, "negative")):
            n = int((y[~na] == cls_value).sum())
            if n < self.min_per_class:
                errs.append(
                    f"target {t.name!r}: {n} {label} row(s), the contract needs at least "
                    f"{self.min_per_class}"
                )
        return y, errs


def _rows(mask: pd.Series) -> str:
    idx = [int(i) + 2 for i in np.flatnonzero(mask.to_numpy())[:_MAX_ROWS_NAMED]]
    more = "" if int(mask.sum()) <= _MAX_ROWS_NAMED else ", ..."
    return f"(file lines {', '.join(map(str, idx))}{more})"


def _check_field(spec: FieldSpec, col: pd.Series) -> tuple[pd.Series, list[str]]:
    errs: list[str] = []
    name = spec.name
    codes = {_norm(c) for c in spec.missing_codes}
    raw_na = col.isna()
    if codes:
        raw_na = raw_na | col.map(_norm).isin(codes)
    present = ~raw_na
    if spec.type in ("float", "int"):
        num = pd.to_numeric(col.where(present), errors="coerce")
        bad = present & num.isna()
        if bad.any():
            errs.append(f"field {name!r}: {int(bad.sum())} non-numeric value(s) {_rows(bad)}")
        if spec.type == "int":
            frac = present & ~bad & (num % 1 != 0)
            if frac.any():
                errs.append(f"field {name!r}: {int(frac.sum())} non-integer value(s) {_rows(frac)}")
        ok = present & ~bad
        if spec.min is not None or spec.max is not None:
            lo = spec.min if spec.min is not None else -np.inf
            hi = spec.max if spec.max is not None else np.inf
            out_of_range = ok & ((num < lo) | (num > hi))
            if out_of_range.any():
                unit = f" {spec.unit}" if spec.unit else ""
                errs.append(
                    f"field {name!r}: {int(out_of_range.sum())} value(s) outside "
                    f"[{spec.min}, {spec.max}]{unit} {_rows(out_of_range)}"
                )
        typed = num.where(ok).astype("float64")
    elif spec.type == "bool":
        s = col.where(present).map(lambda v: _norm(v).lower(), na_action="ignore")
        bad = present & ~s.isin(_TRUE | _FALSE)
        if bad.any():
            errs.append(
                f"field {name!r}: {int(bad.sum())} value(s) that are not booleans {_rows(bad)}"
            )
        typed = s.map(lambda v: 1.0 if v in _TRUE else (0.0 if v in _FALSE else np.nan))
        typed = typed.where(present & ~bad).astype("float64")
    else:
        cats = {_norm(c) for c in spec.categories or []}
        s = col.where(present).map(_norm, na_action="ignore")
        bad = present & ~s.isin(cats)
        if bad.any():
            errs.append(
                f"field {name!r}: {int(bad.sum())} value(s) outside the {len(cats)} allowed "
                f"categories {_rows(bad)}"
            )
        typed = s.where(present & ~bad).astype("object")
    if spec.missing == "forbid" and raw_na.any():
        errs.append(
            f"field {name!r}: {int(raw_na.sum())} missing value(s) but the contract forbids "
            f"missing values {_rows(raw_na)}"
        )
    return typed, errs


def infer_contract(
    df: pd.DataFrame,
    *,
    name: str,
    target: str,
    positive: str | None = None,
    exclude: tuple[str, ...] = (),
    max_categories: int = 20,
) -> DataContract:
    """Derive a permissive contract from a table a user brings (``--csv`` without ``--contract``).

    Numeric columns become float fields, columns of few distinct strings become categories; the
    target's positive class is ``positive`` or, for a 0/1 or yes/no column, the obvious one.
    Every column other than the target and ``exclude`` becomes a field, missing values allowed.
    """
    if target not in df.columns:
        raise ConfigError(
            f"target column {target!r} is not in the table; columns: "
            f"{', '.join(map(str, df.columns))}"
        )
    fields: list[FieldSpec] = []
    for col in df.columns:
        if col == target or col in exclude:
            continue
        s = df[col]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            fields.append(FieldSpec(name=str(col), type="float", missing="allow"))
            continue
        values = sorted({_norm(v) for v in s.dropna()})
        if set(v.lower() for v in values) <= _TRUE | _FALSE:
            fields.append(FieldSpec(name=str(col), type="bool", missing="allow"))
        elif len(values) <= max_categories:
            fields.append(
                FieldSpec(name=str(col), type="category", categories=values, missing="allow")
            )
        else:
            raise ConfigError(
                f"column {col!r} has {len(values)} distinct non-numeric values; give a contract "
                f"(--contract) or drop it"
            )
    if positive is None:
        values = {_norm(v).lower() for v in df[target].dropna()}
        for pos in ("1", "yes", "true", "t", "y"):
            if pos in values:
                originals = [v for v in {_norm(x) for x in df[target].dropna()} if v.lower() == pos]
                positive = originals[0]
                break
        else:
            raise ConfigError(
                f"cannot tell the positive class of target {target!r}; pass --positive VALUE"
            )
    return DataContract(
        name=name,
        fields=fields,
        target=TargetSpec(name=target, positive=[positive]),
    )
