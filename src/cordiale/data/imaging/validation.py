"""Checking a manifest against an imaging contract: every row read, every problem reported.

:func:`validate_manifest` reads each row's image and collects *every* problem (STYLE.md #4): a
missing or unreadable file, the wrong modality, number of dimensions, shape, channels or voxel
spacing, non-finite voxels, a label outside the label set, a DICOM file that still carries
identifiers, a row listed twice, too few images or too few per class. It raises one
:class:`ManifestViolation`, a :class:`~cordiale.core.errors.ContractViolation` that names each row
(``row 4 (scans/p7.dcm): modality MR, the contract wants CT``) in its local message and leaves
the paths out of the public one that may cross to other sites. No message holds a voxel value or
an identifier's value. A kind of problem that hits many rows is listed for the first
:data:`MAX_ROWS_PER_PROBLEM` and counted for the rest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cordiale.core.errors import ContractViolation, DataError
from cordiale.data.imaging.contract import ImagingContract
from cordiale.data.imaging.manifest import Manifest, ManifestRow
from cordiale.data.imaging.readers import (
    Image,
    ImageMeta,
    ImageReader,
    ImageReadError,
    ImageRef,
)

__all__ = ["MAX_ROWS_PER_PROBLEM", "ImageRecord", "ManifestViolation", "validate_manifest"]

MAX_ROWS_PER_PROBLEM = 20

_KINDS = {
    "cells": "missing or extra cells",
    "unreadable": "a missing or unreadable image",
    "duplicate": "an image listed twice",
    "modality": "the wrong modality",
    "shape": "the wrong dimensions or shape",
    "channels": "the wrong number of channels",
    "spacing": "the wrong voxel spacing",
    "values": "non-finite voxels",
    "label": "a missing or invalid label",
    "identifiers": "identifiers present",
}


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """One validated manifest row with its image loaded (or, probed, its metadata only)."""

    row: int
    ref: ImageRef
    label: int
    patient_id: str
    subgroups: dict[str, str]
    meta: ImageMeta
    #: None when the manifest was validated with ``probe=True`` (volumes read in patches).
    image: Image | None = None

    @property
    def loaded(self) -> Image:
        """The image; raises for a probed record."""
        if self.image is None:
            raise DataError(f"row {self.row}: the image was probed, not loaded")
        return self.image


class ManifestViolation(ContractViolation):
    """A manifest fails its imaging contract; the public message names rows but not paths."""

    def __init__(
        self, dataset: str, problems: Sequence[str], *, public_problems: Sequence[str]
    ) -> None:
        super().__init__(dataset, problems)
        self.public_problems = list(public_problems)

    @property
    def public_message(self) -> str:
        return ContractViolation(self.dataset, self.public_problems).message


@dataclass
class _Problems:
    """Problems in row order, capped per kind; each kept in a local and a public wording."""

    local: list[str] = field(default_factory=list)
    public: list[str] = field(default_factory=list)
    per_kind: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        """Row problems found so far, listed or not."""
        return sum(self.per_kind.values())

    def add(self, kind: str, row: ManifestRow, text: str) -> None:
        self.per_kind[kind] += 1
        if self.per_kind[kind] <= MAX_ROWS_PER_PROBLEM:
            self.local.append(f"{row.where}: {text}")
            self.public.append(f"row {row.row}: {text}")

    def add_general(self, text: str) -> None:
        self.local.append(text)
        self.public.append(text)

    def close(self) -> None:
        for kind, n in self.per_kind.items():
            if n > MAX_ROWS_PER_PROBLEM:
                self.add_general(
                    f"... and {n - MAX_ROWS_PER_PROBLEM} more row(s) with {_KINDS[kind]}"
                )


def validate_manifest(
    manifest: Manifest,
    contract: ImagingContract,
    *,
    dataset: str | None = None,
    reader: ImageReader | None = None,
    probe: bool = False,
) -> list[ImageRecord]:
    """Every row's image, loaded and checked; raises :class:`ManifestViolation` on any problem.

    ``dataset`` names the dataset in the error (the contract's name by default). With ``probe``
    only each image's header is read (NIfTI and HDF5 volumes, which are then read in patches):
    voxel values are not checked here but patch by patch.
    """
    if reader is None:
        with ImageReader(
            identifier_fields=contract.identifier_fields, ndim=contract.ndim
        ) as own_reader:
            return validate_manifest(
                manifest, contract, dataset=dataset, reader=own_reader, probe=probe
            )
    problems = _Problems()
    records: list[ImageRecord] = []
    seen: dict[str, int] = {}
    labels: list[int] = []
    for row in manifest.rows:
        before = problems.total
        if row.extra_cells:
            problems.add("cells", row, f"{row.extra_cells} cell(s) beyond the header's columns")
        if not row.patient_id:
            problems.add("cells", row, "no patient_id")
        label = _label(row, contract, problems)
        if label is not None:
            labels.append(label)
        image: Image | None = None
        meta: ImageMeta | None = None
        ref = row.ref(manifest.root)
        if not row.path:
            problems.add("cells", row, "no path")
        else:
            key = str(ref)
            if key in seen:
                problems.add("duplicate", row, f"the same image as row {seen[key]}")
            else:
                seen[key] = row.row
                try:
                    if probe:
                        meta = reader.probe(ref)
                    else:
                        image = reader.read(ref)
                        meta = image.meta
                except ImageReadError as e:
                    problems.add("unreadable", row, e.reason)
                else:
                    for kind, text in _image_problems(meta, image, contract):
                        problems.add(kind, row, text)
        if problems.total == before and meta is not None and label is not None:
            records.append(
                ImageRecord(row.row, ref, label, row.patient_id, row.subgroups, meta, image)
            )
    problems.close()
    if len(manifest.rows) < contract.min_images:
        problems.add_general(
            f"too few images: {len(manifest.rows)}, the contract needs at least "
            f"{contract.min_images}"
        )
    counts = Counter(labels)
    for value in contract.label_set:
        if counts[value] < contract.min_per_class:
            problems.add_general(
                f"label {value}: {counts[value]} image(s), the contract needs at least "
                f"{contract.min_per_class}"
            )
    if problems.local:
        raise ManifestViolation(
            dataset or contract.name, problems.local, public_problems=problems.public
        )
    return records


def _label(row: ManifestRow, contract: ImagingContract, problems: _Problems) -> int | None:
    """The row's label if it is one of the contract's; otherwise None, its problem recorded."""
    if not row.label:
        problems.add("label", row, "no label")
        return None
    try:
        value = float(row.label)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or not value.is_integer():
        problems.add("label", row, "the label is not an integer")
        return None
    if int(value) not in contract.label_set:
        labels = ", ".join(map(str, contract.label_set))
        problems.add("label", row, f"label outside the contract's label set {{{labels}}}")
        return None
    return int(value)


def _image_problems(
    meta: ImageMeta, image: Image | None, contract: ImagingContract
) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if (
        not contract.any_modality
        and meta.modality is not None
        and meta.modality != contract.modality
    ):
        out.append(
            ("modality", f"modality {meta.modality}, the contract wants {contract.modality}")
        )
    if meta.ndim != contract.ndim:
        out.append(("shape", f"{meta.ndim}-D image, the contract wants {contract.ndim}-D"))
    elif contract.shape is not None and list(meta.shape) != contract.shape:
        out.append(
            ("shape", f"shape {_dims(meta.shape)}, the contract wants {_dims(contract.shape)}")
        )
    if meta.channels != contract.channels:
        out.append(
            ("channels", f"{meta.channels} channel(s), the contract wants {contract.channels}")
        )
    if contract.spacing_mm is not None:
        want = f"{_dims(contract.spacing_mm)} mm (±{contract.spacing_rtol:.0%})"
        if meta.spacing is None:
            out.append(("spacing", f"no voxel spacing recorded, the contract wants {want}"))
        elif not contract.spacing_matches(meta.spacing):
            out.append(
                ("spacing", f"voxel spacing {_dims(meta.spacing)} mm, the contract wants {want}")
            )
    if meta.identifiers:
        out.append(
            (
                "identifiers",
                "not de-identified, identifying attribute(s) present: "
                + ", ".join(meta.identifiers),
            )
        )
    if image is not None and not np.isfinite(image.array).all():
        out.append(("values", "non-finite voxel values (NaN or infinity)"))
    return out


def _dims(values: Sequence[float]) -> str:
    return "×".join(f"{v:.4g}" for v in values)
