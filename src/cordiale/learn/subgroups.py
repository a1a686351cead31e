"""Per-subgroup evaluation with small-cell suppression: one code path, node and hub.

A study names subgroup columns of the sites' data (``[evaluation] subgroups``); numeric columns
are cut into bands (``bands = { Age = [30, 40, 50] }`` gives ``<30``, ``30-40``, ``40-50``,
``>=50``), other columns group by value (a missing value is the cell ``missing``). A *cell* is one
column and one value at one site.

At the node (:func:`subgroup_reply`), each cell's test rows give a
:class:`~cordiale.learn.metrics.ScoreHistogram`, sent as the array record named by
:func:`cell_name` (``subgroup:<column>:<value>``, both escaped into valid record keys). **Small
cells are suppressed before anything leaves**: a cell with fewer than ``min_cell`` test examples,
or fewer than ``min_cell`` positives or negatives, is not sent at all; the reply only lists its
name under ``subgroup.suppressed`` (no count). So that the suppressed cells cannot be recovered
by subtracting the reported ones from the site's whole histogram, more cells are held back until
the suppressed cells of a column, together, are not small either (secondary suppression).
``min_cell`` is at least :data:`MIN_CELL_FLOOR`, checked again at the node, so a hub cannot ask
for less.

At the hub (:func:`summarise`), reported cells add up across sites into metrics per column and
value (pooled over the sites that reported the cell), per-site metrics where a site reported the
cell, and the values suppressed at one site or more.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cordiale.core.errors import ConfigError, ProtocolError
from cordiale.core.messages import Content
from cordiale.core.records import ArrayRecord, ConfigRecord
from cordiale.learn.metrics import DEFAULT_BINS, ScoreHistogram, compute_metrics

__all__ = [
    "CONFIG_KEY",
    "DEFAULT_MIN_CELL",
    "MIN_CELL_FLOOR",
    "MISSING",
    "SUPPRESSED_KEY",
    "SiteCells",
    "SubgroupSpec",
    "SubgroupSummary",
    "cell_name",
    "parse_cell_name",
    "subgroup_reply",
    "summarise",
]

MIN_CELL_FLOOR = 5  # the smallest min_cell a study may set (and a node accepts)
DEFAULT_MIN_CELL = 10
MISSING = "missing"  # the cell of rows whose value is missing
CONFIG_KEY = "evaluation.subgroups"  # task config: the subgroup spec as JSON
SUPPRESSED_KEY = "subgroup.suppressed"  # reply config: names of the cells not sent
PREFIX = "subgroup:"
_MAX_NAME = 200  # a record key's longest form
_MAX_COLUMN = 80  # longest escaped column name, leaving room for values
_PLAIN = re.compile(r"[A-Za-z0-9_\-]")
_ESCAPE = re.compile(r"\.([0-9A-F]{2})")

Metrics = dict[str, float]


def _escape(text: str) -> str:
    """``text`` as characters a record key allows: letters, digits, ``_`` and ``-`` stay, every
    other UTF-8 byte becomes ``.HH`` (so ``<30`` is ``.3C30``; ``.`` and ``:`` never appear)."""
    return "".join(
        ch if _PLAIN.fullmatch(ch) else "".join(f".{b:02X}" for b in ch.encode()) for ch in text
    )


def _unescape(text: str) -> str:
    if re.fullmatch(r"(?:[A-Za-z0-9_\-]|\.[0-9A-F]{2})*", text) is None:
        raise ProtocolError("malformed subgroup cell name")
    parts = re.split(r"((?:\.[0-9A-F]{2})+)", text)
    out = []
    for part in parts:
        if part.startswith("."):
            raw = bytes(int(h, 16) for h in _ESCAPE.findall(part))
            try:
                out.append(raw.decode())
            except UnicodeDecodeError:
                raise ProtocolError("malformed subgroup cell name") from None
        else:
            out.append(part)
    return "".join(out)


def cell_name(column: str, value: str) -> str:
    """The array record name of a cell: ``subgroup:<column>:<value>``, escaped."""
    name = f"{PREFIX}{_escape(column)}:{_escape(value)}"
    if len(name) > _MAX_NAME:
        raise ConfigError(
            f"subgroup column {column!r}: a value is too long to name its cell "
            f"(at most {_MAX_NAME} characters escaped); group by a shorter column"
        )
    return name


def parse_cell_name(name: str) -> tuple[str, str]:
    """``(column, value)`` of a name made by :func:`cell_name`."""
    if not name.startswith(PREFIX) or name.count(":") != 2:
        raise ProtocolError("malformed subgroup cell name")
    column, value = name[len(PREFIX) :].split(":")
    return _unescape(column), _unescape(value)


def _num(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class SubgroupSpec:
    """Which columns to evaluate by, the bands of numeric ones, and the smallest reportable cell.

    Validated on construction (a study spec, a CLI option, or a task at the node).
    """

    columns: tuple[str, ...]
    bands: Mapping[str, Sequence[float]] = field(default_factory=dict)
    min_cell: int = DEFAULT_MIN_CELL

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(
            self, "bands", {c: tuple(float(e) for e in b) for c, b in self.bands.items()}
        )
        problems = []
        for c in self.columns:
            if not isinstance(c, str) or not c.strip():
                problems.append(f"subgroup column {c!r} must be a non-empty name")
            elif len(_escape(c)) > _MAX_COLUMN:
                problems.append(f"subgroup column {c[:40]!r}... is too long a name")
        if len(set(self.columns)) != len(self.columns):
            problems.append("evaluation.subgroups lists a column more than once")
        for c, edges in self.bands.items():
            if c not in self.columns:
                problems.append(
                    f"evaluation.bands names {c!r}, which is not in evaluation.subgroups"
                )
            if not edges:
                problems.append(f"evaluation.bands.{c} needs at least one edge")
            elif not all(math.isfinite(e) for e in edges):
                problems.append(f"evaluation.bands.{c} must be finite numbers")
            elif any(b <= a for a, b in itertools.pairwise(edges)):
                problems.append(
                    f"evaluation.bands.{c} must increase strictly; got {[_num(e) for e in edges]}"
                )
        if isinstance(self.min_cell, bool) or not isinstance(self.min_cell, int):
            problems.append(f"evaluation.min_cell must be an integer; got {self.min_cell!r}")
        elif self.min_cell < MIN_CELL_FLOOR:
            problems.append(
                f"evaluation.min_cell must be at least {MIN_CELL_FLOOR}; got {self.min_cell}"
            )
        if problems:
            raise ConfigError("; ".join(problems))  # every problem, in one message

    # -- on the wire -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "bands": {c: list(b) for c, b in self.bands.items()},
            "min_cell": self.min_cell,
        }

    def to_config(self) -> dict[str, str]:
        """What every task of the study carries (checked at the node before any work)."""
        return {CONFIG_KEY: json.dumps(self.to_json(), sort_keys=True)}

    @classmethod
    def from_config(cls, cfg: ConfigRecord) -> SubgroupSpec | None:
        raw = cfg.get_str(CONFIG_KEY, "")
        if not raw:
            return None
        try:
            data = json.loads(raw)
            return cls(
                columns=tuple(data["columns"]),
                bands={str(k): tuple(v) for k, v in dict(data.get("bands", {})).items()},
                min_cell=data.get("min_cell", DEFAULT_MIN_CELL),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"the task's subgroup settings are malformed: {e}") from None

    # -- cells -------------------------------------------------------------------------------
    def labels(self, column: str) -> list[str]:
        """The band labels of a banded column, in order (``[]`` for a column grouped by value)."""
        edges = self.bands.get(column)
        if not edges:
            return []
        inner = [f"{_num(a)}-{_num(b)}" for a, b in itertools.pairwise(edges)]
        return [f"<{_num(edges[0])}", *inner, f">={_num(edges[-1])}"]

    def values_of(self, column: str, raw: np.ndarray) -> np.ndarray:
        """Each row's cell value (text): its band, or its value, or :data:`MISSING`."""
        series = pd.Series(np.asarray(raw, dtype=object))
        missing = series.isna() | series.map(lambda v: isinstance(v, str) and not v.strip())
        edges = self.bands.get(column)
        if not edges:
            text = series.map(_text)
            return np.where(missing, MISSING, text).astype(object)
        numbers = pd.to_numeric(series.where(~missing), errors="coerce")
        if bool((numbers.isna() & ~missing).any()):
            raise ConfigError(
                f"subgroup column {column!r} has non-numeric values at this site; "
                "bands need numbers"
            )
        idx = np.searchsorted(np.asarray(edges), numbers.to_numpy(np.float64), side="right")
        labels = np.asarray(self.labels(column), dtype=object)
        return np.where(missing, MISSING, labels[np.minimum(idx, len(labels) - 1)])

    def order(self, column: str, values: Iterable[str]) -> list[str]:
        """``values`` in display order: bands in order, other values sorted, missing last."""
        present = set(values)
        bands = self.labels(column)
        rest = sorted(v for v in present if v not in bands and v != MISSING)
        return [v for v in bands if v in present] + rest + ([MISSING] if MISSING in present else [])

    def check_columns(self, groups: Mapping[str, np.ndarray]) -> None:
        """Refuse, naming them, the subgroup columns this site's data lacks."""
        lacking = [c for c in self.columns if c not in groups]
        if lacking:
            raise ConfigError(
                f"subgroup column(s) {', '.join(map(repr, lacking))} not in this site's data"
            )


def _text(v: object) -> str:
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    return str(v).strip()


# -- node side ---------------------------------------------------------------------------------
def subgroup_reply(
    cfg: ConfigRecord,
    groups: Mapping[str, np.ndarray],
    probs: np.ndarray,
    labels: np.ndarray,
    bins: int = DEFAULT_BINS,
) -> tuple[dict[str, ArrayRecord], ConfigRecord]:
    """The subgroup part of an evaluation reply: a histogram record per reportable cell and the
    names of the suppressed ones. Empty when the task asks for no subgroups.

    ``groups`` holds each column's raw values for the scored rows, in the order of ``probs``.
    """
    spec = SubgroupSpec.from_config(cfg)
    if spec is None:
        return {}, ConfigRecord()
    spec.check_columns(groups)
    y = np.asarray(labels).astype(bool)
    cells: dict[tuple[str, str], np.ndarray] = {}
    for column in spec.columns:
        if len(groups[column]) != len(y):
            raise ProtocolError(f"subgroup column {column!r} does not match the scored rows")
        values = spec.values_of(column, groups[column])
        for v in spec.order(column, [*spec.labels(column), *values]):
            cells[(column, v)] = values == v
    hidden = suppressed_cells(cells, y, spec.min_cell)
    arrays: dict[str, ArrayRecord] = {}
    suppressed: list[str] = []
    for (column, value), rows in cells.items():
        name = cell_name(column, value)
        if (column, value) in hidden:  # not sent at all: only its name says it was held back
            suppressed.append(name)
        else:
            arrays[name] = ScoreHistogram.from_scores(probs[rows], y[rows], bins).to_record()
    return arrays, ConfigRecord({SUPPRESSED_KEY: suppressed})


def _small(rows: np.ndarray, y: np.ndarray, min_cell: int) -> bool:
    """Fewer than ``min_cell`` examples, positives or negatives."""
    n, pos = int(rows.sum()), int((rows & y).sum())
    return min(n, pos, n - pos) < min_cell


def _revealing(rows: np.ndarray, y: np.ndarray, min_cell: int) -> bool:
    """Whether the histogram of ``rows`` would show a few examples of a class: some, but fewer
    than ``min_cell``, positives or negatives (a class with none shows nothing)."""
    pos = int((rows & y).sum())
    neg = int(rows.sum()) - pos
    return 0 < pos < min_cell or 0 < neg < min_cell


def suppressed_cells(
    cells: Mapping[tuple[str, str], np.ndarray], y: np.ndarray, min_cell: int
) -> set[tuple[str, str]]:
    """The ``(column, value)`` cells held back, so that nothing the hub can compute from what is
    sent describes fewer than ``min_cell`` examples of a class.

    * Primary: every cell with fewer than ``min_cell`` examples, positives or negatives.
    * Secondary, per column: a column's cells partition the test rows, whose whole histogram the
      site sends anyway, so the hub can subtract the reported cells and obtain the held-back cells
      *together*; while that union is itself too small, the smallest reported cell of the column
      is held back too. (A union with no row at all is left: it says only that those cells are
      empty, e.g. a band nobody at the site falls in.)
    * Differencing, across columns: two reported cells of different columns (``Age < 35`` and
      ``Pregnancies = 0``, say) may hold almost the same rows; the difference of their histograms
      would then describe the few rows in one and not the other. When it would reveal a few of a
      class, the smaller cell is held back. The whole test set counts as a reported cell.

    The three rules are applied again until none holds anything more back.
    """
    everything = np.ones(len(y), bool)
    hidden = {key for key, rows in cells.items() if _small(rows, y, min_cell)}
    columns = list(dict.fromkeys(column for column, _ in cells))
    changed = True
    while changed:
        changed = False
        for column in columns:  # secondary
            mine = [key for key in cells if key[0] == column]
            union = np.zeros(len(y), bool)
            for key in mine:
                if key in hidden:
                    union |= cells[key]
            shown = sorted((k for k in mine if k not in hidden), key=lambda k: int(cells[k].sum()))
            while shown and union.any() and _small(union, y, min_cell):
                key = shown.pop(0)
                hidden.add(key)
                union |= cells[key]
                changed = True
        shown_all = [(k, cells[k]) for k in cells if k not in hidden]
        pairs = [(a, b) for a in shown_all for b in [(None, everything), *shown_all]]
        for (key_a, rows_a), (key_b, rows_b) in pairs:  # differencing
            other_column = key_b is None or key_a[0] < key_b[0]  # each pair once
            if other_column and _revealing(rows_a ^ rows_b, y, min_cell):
                smaller = key_a if key_b is None or rows_a.sum() <= rows_b.sum() else key_b
                hidden.add(smaller)
                changed = True
                break
    return hidden


# -- hub side ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SiteCells:
    """One site's subgroup reply: the histograms of its reported cells, the cells it suppressed."""

    cells: dict[tuple[str, str], ScoreHistogram]
    suppressed: frozenset[tuple[str, str]]

    @classmethod
    def from_reply(cls, content: Content, spec: SubgroupSpec) -> SiteCells:
        """Read and check a reply: cells of the asked columns only, none below ``min_cell``."""
        cells = {}
        for name, record in content.arrays.items():
            if not name.startswith(PREFIX):
                continue
            column, value = parse_cell_name(name)
            if column not in spec.columns:
                raise ProtocolError(f"a site reported subgroup column {column!r}, not asked for")
            hist = ScoreHistogram.from_record(record)
            pos, neg = int(hist.pos.sum()), int(hist.neg.sum())
            if min(pos, neg) < spec.min_cell:
                raise ProtocolError(f"a site reported a subgroup cell of {column!r} below min_cell")
            cells[column, value] = hist
        suppressed = frozenset(
            parse_cell_name(n) for n in content.config.get_str_list(SUPPRESSED_KEY)
        )
        return cls(cells, suppressed)


@dataclass
class SubgroupSummary:
    """Metrics per column and value (pooled over the sites that reported the cell), the values
    suppressed at one site or more, and per-site metrics where the site reported the cell."""

    subgroups: dict[str, dict[str, Metrics]] = field(default_factory=dict)
    suppressed: dict[str, list[str]] = field(default_factory=dict)
    per_site: dict[str, dict[str, dict[str, Metrics]]] = field(default_factory=dict)


def summarise(spec: SubgroupSpec, sites: Mapping[str, SiteCells]) -> SubgroupSummary:
    """Add the reported cells up across sites (see :class:`SubgroupSummary`)."""
    totals: dict[tuple[str, str], ScoreHistogram] = {}
    for site in sorted(sites):
        for key, hist in sites[site].cells.items():
            totals[key] = totals[key] + hist if key in totals else hist
    out = SubgroupSummary()
    for column in spec.columns:
        reported = spec.order(column, [v for c, v in totals if c == column])
        out.subgroups[column] = {v: compute_metrics(totals[column, v]) for v in reported}
        hidden = [v for s in sites.values() for c, v in s.suppressed if c == column]
        if hidden:
            out.suppressed[column] = spec.order(column, hidden)
    for site in sorted(sites):
        cells = sites[site].cells
        out.per_site[site] = {
            column: {
                v: compute_metrics(cells[column, v])
                for v in spec.order(column, [v for c, v in cells if c == column])
            }
            for column in spec.columns
        }
    return out
