"""The image manifest: one CSV row per image, naming its file, label and patient.

Columns ``path``, ``label`` and ``patient_id`` are required; every other column is a subgroup
(sex, scanner, site of care, ...) kept as text for subgroup analyses. ``path`` is relative to the
manifest's folder (or absolute) and names an image file, a DICOM series directory, an HDF5
dataset as ``volumes.h5#/ct/p1`` or an image of a NumPy archive as ``organ.npz#train_images/17``
(see :mod:`cordiale.data.imaging.readers`).

Rows are numbered as a spreadsheet numbers them: the header is row 1, the first image row 2.
Reading checks only the file and its header; the cells are checked against an
:class:`~cordiale.data.imaging.contract.ImagingContract` by
:func:`~cordiale.data.imaging.validation.validate_manifest`, which reports every problem at once.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from cordiale.core.errors import DataError
from cordiale.data.imaging.readers import ImageRef

__all__ = ["REQUIRED_COLUMNS", "Manifest", "ManifestRow"]

REQUIRED_COLUMNS = ("path", "label", "patient_id")


@dataclass(frozen=True)
class ManifestRow:
    """One image row, its cells as written (stripped of surrounding blanks)."""

    row: int
    path: str
    label: str
    patient_id: str
    subgroups: dict[str, str] = field(default_factory=dict)
    #: Cells beyond the header's columns, a sign of a mis-quoted row.
    extra_cells: int = 0

    def ref(self, root: Path) -> ImageRef:
        return ImageRef.parse(self.path, root)

    @property
    def where(self) -> str:
        """``row 4 (scans/p7.dcm)``: the row and its path as written (local messages only)."""
        return f"row {self.row} ({self.path})" if self.path else f"row {self.row}"


@dataclass(frozen=True)
class Manifest:
    """The rows of a manifest file and the folder its relative paths start from."""

    path: Path
    rows: list[ManifestRow]
    subgroup_columns: list[str]

    @property
    def root(self) -> Path:
        return self.path.parent

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """Read a manifest CSV (UTF-8, a byte-order mark allowed); raises :class:`DataError`."""
        path = Path(path)
        try:
            with path.open(newline="", encoding="utf-8-sig") as f:
                return cls._parse(path, f)
        except FileNotFoundError:
            raise _error(path, "does not exist") from None
        except IsADirectoryError:
            raise _error(path, "is a directory, not a CSV file") from None
        except UnicodeDecodeError:
            raise _error(path, "is not UTF-8 text") from None
        except csv.Error:
            raise _error(path, "is not a valid CSV file") from None

    @classmethod
    def _parse(cls, path: Path, f: TextIO) -> Manifest:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise _error(path, "is empty; it needs a header with path, label, patient_id")
        columns = [c.strip() for c in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise _error(
                path,
                f"lacks column(s) {', '.join(missing)}; a manifest needs "
                f"{', '.join(REQUIRED_COLUMNS)}",
            )
        dup = sorted({c for c in columns if columns.count(c) > 1})
        if dup:
            raise _error(path, f"has duplicate column(s) {', '.join(dup)}")
        subgroups = [c for c in columns if c not in REQUIRED_COLUMNS]
        rows: list[ManifestRow] = []
        start = reader.line_num + 1
        for cells in reader:
            if cells and any(c.strip() for c in cells):
                values = dict(zip(columns, (c.strip() for c in cells), strict=False))
                rows.append(
                    ManifestRow(
                        row=start,
                        path=values.get("path", ""),
                        label=values.get("label", ""),
                        patient_id=values.get("patient_id", ""),
                        subgroups={c: values.get(c, "") for c in subgroups},
                        extra_cells=max(0, len(cells) - len(columns)),
                    )
                )
            start = reader.line_num + 1
        return cls(path=path, rows=rows, subgroup_columns=subgroups)


def _error(path: Path, what: str) -> DataError:
    return DataError(f"manifest {path} {what}", public_message=f"the image manifest {what}")
