"""Strict JSON out of results: NaN and infinities become ``null``."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["finite"]


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (recursively through dicts/lists)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj
