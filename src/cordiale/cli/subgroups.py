"""Subgroup options and the subgroup table, shared by ``simulate`` and ``study status/fetch``."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

from cordiale.core.errors import ConfigError
from cordiale.learn.subgroups import MISSING, SubgroupSpec

__all__ = ["parse_subgroups", "subgroup_table"]


def parse_subgroups(options: Sequence[str], min_cell: int) -> SubgroupSpec | None:
    """``["Age:30,40,50", "sex"]`` (``COL[:EDGE,EDGE,...]``) as a subgroup spec."""
    if not options:
        return None
    columns, bands = [], {}
    for option in options:
        column, sep, edges = option.partition(":")
        columns.append(column.strip())
        if sep:
            try:
                bands[column.strip()] = [float(e) for e in edges.split(",") if e.strip()]
            except ValueError:
                raise ConfigError(
                    f"--subgroup {option!r}: bands must be numbers, as in Age:30,40,50"
                ) from None
    return SubgroupSpec(tuple(columns), bands, min_cell)


_BAND = re.compile(r"^(<|>=)?(-?[0-9.e+]+)(?:-(-?[0-9.e+]+))?$")


def _order(value: str) -> tuple[int, float, int, str]:
    """Bands in numeric order (``<30``, ``30-40``, ``>=50``), then text, then ``missing``."""
    if value == MISSING:
        return (2, 0.0, 0, value)
    m = _BAND.match(value)
    try:
        if m is not None:
            rank = {"<": 0, None: 1, ">=": 2}[m.group(1)]
            return (0, float(m.group(2)), rank, value)
    except ValueError:
        pass
    return (1, 0.0, 0, value)


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def subgroup_table(
    subgroups: Mapping[str, Mapping[str, Mapping[str, Any]]],
    suppressed: Mapping[str, Sequence[str]],
    *,
    title: str = "subgroups (all sites; cells of fewer than min_cell examples suppressed)",
) -> Table | None:
    """AUC, accuracy and n per subgroup value; values suppressed at every site say so, those
    suppressed at some sites are marked (their metrics are over the sites that reported them)."""
    if not subgroups and not suppressed:
        return None
    table = Table("subgroup", "value", "n", "AUC", "accuracy", "note", title=title)
    for column in [*subgroups, *(c for c in suppressed if c not in subgroups)]:
        hidden = set(suppressed.get(column, ()))
        reported = subgroups.get(column, {})
        for value in sorted({*reported, *hidden}, key=_order):
            m = reported.get(value)
            if m is None:
                table.add_row(column, value, "-", "-", "-", "[yellow]suppressed[/]")
                continue
            n = m.get("n")
            table.add_row(
                column,
                value,
                "-" if n is None else str(int(n)),
                _fmt(m.get("auc")),
                _fmt(m.get("accuracy")),
                "suppressed at some site(s)" if value in hidden else "",
            )
        table.add_section()
    return table
