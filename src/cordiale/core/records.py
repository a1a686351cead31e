"""Typed records: the only payloads that travel between hub and nodes.

* :class:`ArrayRecord` - an ordered mapping of names to numpy arrays (model weights, updates,
  histograms). Names are checked, arrays are copied to contiguous little-endian buffers of an
  allowed dtype on insert, so that a record always encodes to the wire.
* :class:`MetricRecord` - name to finite float (or int), checked on insert.
* :class:`ConfigRecord` - name to a JSON scalar or a flat list of scalars, checked on insert.

Validation happens on construction and on every insert, and the error says what was expected and
what came (STYLE.md #4).
"""

from __future__ import annotations

import math
import re
from collections.abc import (
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    ValuesView,
)
from typing import Any, TypeAlias, TypeVar

import numpy as np

from cordiale.core.errors import ConfigError

__all__ = [
    "ALLOWED_DTYPES",
    "ArrayRecord",
    "ConfigRecord",
    "ConfigValue",
    "MetricRecord",
    "check_name",
]

#: dtypes that may travel on the wire (the union of what models, updates and masks use).
ALLOWED_DTYPES: frozenset[str] = frozenset(
    {
        "float16",
        "float32",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint32",
        "uint64",
        "bool",
    }
)

#: the same dtypes in little-endian (native) byte order: a set lookup instead of a name check.
_WIRE_DTYPES: frozenset[np.dtype[Any]] = frozenset(
    np.dtype(n).newbyteorder("<") for n in ALLOWED_DTYPES
)

_NAME = re.compile(r"^[A-Za-z0-9_.\-:]{1,200}$")

Scalar: TypeAlias = bool | int | float | str
ConfigValue: TypeAlias = Scalar | list[bool] | list[int] | list[float] | list[str]
V = TypeVar("V")


_VALID_NAMES: set[str] = set()  # names checked before (keys repeat in every message)
_VALID_NAMES_KEPT = 4096


def check_name(name: object, kind: str) -> str:
    """Return ``name`` if it is a valid record key, else raise a ConfigError naming the problem."""
    if type(name) is str and name in _VALID_NAMES:  # only names that passed are ever added
        return name
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"{kind} key must be 1-200 characters of letters, digits and _.-: ; got {name!r}"
        )
    if len(_VALID_NAMES) >= _VALID_NAMES_KEPT:
        _VALID_NAMES.clear()
    _VALID_NAMES.add(name)
    return name


def _as_wire_array(name: str, value: object) -> np.ndarray:
    if type(value) is np.ndarray and value.dtype in _WIRE_DTYPES and value.flags.c_contiguous:
        return value  # the common case: already a little-endian contiguous wire array
    if not isinstance(value, np.ndarray):
        raise ConfigError(
            f"ArrayRecord value {name!r} must be a numpy array; got {type(value).__name__}"
        )
    if value.dtype.name not in ALLOWED_DTYPES:
        raise ConfigError(
            f"ArrayRecord value {name!r} has dtype {value.dtype}; allowed: "
            f"{', '.join(sorted(ALLOWED_DTYPES))}"
        )
    # np.ascontiguousarray would turn a 0-d array (a batch-norm counter) into shape (1,)
    arr = value if value.flags.c_contiguous else np.ascontiguousarray(value)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr


class _Record(MutableMapping[str, V]):
    """Shared mapping behaviour; subclasses validate each value in :meth:`_check`."""

    __slots__ = ("_data",)

    def __init__(self, items: Mapping[str, V] | Iterable[tuple[str, V]] | None = None) -> None:
        self._data: dict[str, V] = {}
        if items is None:
            return
        if type(items) is type(self):  # already validated: copy (lists too, never shared)
            self._data = {
                k: list(v) if type(v) is list else v  # type: ignore[misc]
                for k, v in items._data.items()  # type: ignore[union-attr]
            }
            return
        if type(items) is dict or isinstance(items, Mapping):
            pairs: Iterable[tuple[str, V]] = items.items()
            # names checked before (they repeat in every message): checked at once, in C
            named = type(items) is dict and _VALID_NAMES.issuperset(items)
        else:
            pairs, named = items or (), False
        data, check, kind = self._data, self._check, type(self).__name__
        for k, v in pairs:
            data[k if named else check_name(k, kind)] = check(k, v)

    def _check(self, key: str, value: Any) -> V:
        raise NotImplementedError

    def __setitem__(self, key: str, value: V) -> None:
        self._data[check_name(key, type(self).__name__)] = self._check(key, value)

    def __getitem__(self, key: str) -> V:
        return self._data[key]

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    # the Mapping mixins go through __getitem__ and __iter__ in Python; the dict does it in C
    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def keys(self) -> KeysView[str]:
        return self._data.keys()

    def values(self) -> ValuesView[V]:
        return self._data.values()

    def items(self) -> ItemsView[str, V]:
        return self._data.items()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"

    def to_dict(self) -> dict[str, V]:
        return dict(self._data)


class ArrayRecord(_Record[np.ndarray]):
    """Ordered mapping of names to numpy arrays, validated on insert."""

    __slots__ = ()

    _check = staticmethod(_as_wire_array)  # one call per value, not two

    @classmethod
    def of_wire_arrays(cls, pairs: Iterable[tuple[str, np.ndarray]]) -> ArrayRecord:
        """A record of arrays known to be wire arrays already (allowed dtype, little-endian,
        contiguous: the decoder's checked views); only the names are checked."""
        record = cls()
        data = record._data
        for k, v in pairs:
            data[check_name(k, "ArrayRecord")] = v
        return record

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in self._data.items())
        return f"ArrayRecord({shapes})"

    @property
    def num_elements(self) -> int:
        return int(sum(v.size for v in self._data.values()))

    @property
    def nbytes(self) -> int:
        return int(sum(v.nbytes for v in self._data.values()))

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self._data.items()}

    def copy(self) -> ArrayRecord:
        return ArrayRecord((k, v.copy()) for k, v in self._data.items())

    def equals(self, other: ArrayRecord, *, atol: float = 0.0) -> bool:
        """True when both records have the same names, shapes, dtypes and values (within atol)."""
        if list(self) != list(other):
            return False
        for k, v in self._data.items():
            o = other[k]
            if v.shape != o.shape or v.dtype != o.dtype:
                return False
            if not np.allclose(v, o, atol=atol, rtol=0.0, equal_nan=True):
                return False
        return True


class MetricRecord(_Record[float]):
    """Name to finite number (int or float), validated on insert."""

    __slots__ = ()

    def _check(self, key: str, value: Any) -> float:
        if type(value) is float and math.isfinite(value):  # the common case, checked at once
            return value
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise ConfigError(f"metric {key!r} must be a number; got {type(value).__name__}")
        if isinstance(value, int | np.integer):
            if not _fits(int(value)):
                raise ConfigError(f"metric {key!r} must fit in 64 bits; got {value}")
            return int(value)
        f = float(value)
        if not math.isfinite(f):
            raise ConfigError(f"metric {key!r} must be finite; got {f}")
        return f


_LIST_KINDS = frozenset({bool, int, float, str})  # exact types: a subclass is refused
_INT64 = 2**63  # integers travel as JSON numbers that every decoder reads as 64-bit


def _fits(value: int) -> bool:
    return -_INT64 <= value < _INT64


def _check_config_value(key: str, value: Any) -> ConfigValue:
    kind = type(value)
    if kind is str or kind is bool:  # exact types first: all that a decoded header holds
        return value  # type: ignore[no-any-return]
    if kind is int:
        if not _fits(value):
            raise ConfigError(f"config {key!r} must fit in 64 bits; got {value}")
        return value  # type: ignore[no-any-return]
    if kind is float or isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"config {key!r} must be finite; got {value}")
        return value  # type: ignore[no-any-return]
    if kind is list or isinstance(value, list | tuple):
        items = list(value)
        kinds = set(map(type, items))
        if len(kinds) > 1 or not kinds <= _LIST_KINDS:
            raise ConfigError(
                f"config {key!r} must be a flat list of one scalar type; "
                f"got {sorted(map(str, kinds))}"
            )
        # one kind at most: min, max and map run in C, not once per item in Python
        if float in kinds and not all(map(math.isfinite, items)):
            raise ConfigError(f"config {key!r} must hold finite numbers")
        if int in kinds and not (_fits(min(items)) and _fits(max(items))):
            raise ConfigError(f"config {key!r} must hold integers that fit in 64 bits")
        return items
    if isinstance(value, int | str):  # a subclass (an IntEnum, a StrEnum) as it is
        return value  # type: ignore[no-any-return]
    raise ConfigError(
        f"config {key!r} must be a bool, int, float, str or a list of them; got "
        f"{type(value).__name__}"
    )


class ConfigRecord(_Record[ConfigValue]):
    """Name to a JSON scalar or a flat list of scalars, validated on insert."""

    __slots__ = ()

    _check = staticmethod(_check_config_value)  # one call per value, not two

    def get_float(self, key: str, default: float) -> float:
        v = self._data.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"config {key!r} must be a number; got {v!r}")
        return float(v)

    def get_int(self, key: str, default: int) -> int:
        v = self._data.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"config {key!r} must be an integer; got {v!r}")
        return v

    def get_str(self, key: str, default: str) -> str:
        v = self._data.get(key, default)
        if not isinstance(v, str):
            raise ConfigError(f"config {key!r} must be a string; got {v!r}")
        return v

    def get_str_list(self, key: str) -> list[str]:
        v = self._data.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"config {key!r} must be a list of strings; got {v!r}")
        return [str(x) for x in v]
