"""Checks of privacy parameters, shared by the modules of this package.

Each returns the value, normalised (``float`` or ``int``), or raises :class:`ConfigError` with a
sentence naming the parameter, what was expected and what came.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np

from cordiale.core.errors import ConfigError


def real(name: str, value: object) -> float:
    """A finite real number (``bool`` is refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise ConfigError(f"{name} must be finite; got {value!r}")
    return x


def positive(name: str, value: object, *, why: str = "") -> float:
    """A finite real number > 0; ``why`` is appended to the message."""
    x = real(name, value)
    if x <= 0:
        raise ConfigError(f"{name} must be > 0{why}; got {x!r}")
    return x


def non_negative(name: str, value: object) -> float:
    """A finite real number >= 0."""
    x = real(name, value)
    if x < 0:
        raise ConfigError(f"{name} must be >= 0; got {x!r}")
    return x


def probability(name: str, value: object, *, low_open: bool, high_open: bool) -> float:
    """A finite real number in the interval from 0 to 1, each end open or closed as asked."""
    x = real(name, value)
    too_low = x <= 0 if low_open else x < 0
    too_high = x >= 1 if high_open else x > 1
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ConfigError(f"{name} must be in {interval}; got {x!r}")
    return x


def integer(name: str, value: object, *, minimum: int) -> int:
    """An ``int`` (``bool`` is refused) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer; got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}; got {value}")
    return int(value)


def float_update(update: object) -> dict[str, np.ndarray]:
    """A model update: a mapping of names to floating-point numpy arrays (not copied)."""
    if not isinstance(update, Mapping):
        raise ConfigError(
            f"an update must be a mapping of names to numpy arrays; got {type(update).__name__}"
        )
    arrays: dict[str, np.ndarray] = {}
    for name, value in update.items():
        if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
            kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
            raise ConfigError(f"update entry {name!r} must be a floating numpy array; got {kind}")
        arrays[str(name)] = value
    return arrays


def generator(rng: object) -> np.random.Generator:
    """A numpy ``Generator`` (the legacy ``RandomState`` and seeds are refused: be explicit)."""
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy.random.Generator; got {type(rng).__name__}")
    return rng


def identifier(name: str, value: object) -> str:
    """A non-empty string of at most 200 printable characters (dataset, study and task ids)."""
    if not isinstance(value, str) or not 0 < len(value) <= 200 or not value.isprintable():
        raise ConfigError(f"{name} must be 1-200 printable characters; got {value!r}")
    return value
