"""The tabular adapter: CSV and Parquet files into validated frames.

Reading errors (missing file, unreadable or unknown format) become :class:`DataError` with the
reason, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cordiale.core.errors import DataError

__all__ = ["SUPPORTED_SUFFIXES", "read_table"]

SUPPORTED_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".parquet", ".pq")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV/TSV (optionally gzipped) or Parquet table."""
    p = Path(path)
    name = p.name.lower()
    if not p.exists():
        raise DataError(f"table {p} not found")
    try:
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(p)
        if name.endswith((".csv", ".csv.gz")):
            return pd.read_csv(p)
        if name.endswith(".tsv"):
            return pd.read_csv(p, sep="\t")
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DataError(f"cannot read table {p}: {e}") from None
    raise DataError(
        f"unsupported table format {p.suffix!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}"
    )
