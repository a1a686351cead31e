"""Imaging data contracts: what a study needs from a site's images, checked before any work.

An :class:`ImagingContract` names the modality, the number of spatial dimensions, the exact image
shape and voxel spacing (optional), the channels, the allowed labels, the DICOM attributes that
must be blank for de-identification and the minimum counts. It is the imaging counterpart of the
tabular :class:`~cordiale.data.contract.DataContract` and loads from TOML or JSON the same way;
:func:`~cordiale.data.imaging.validation.validate_manifest` checks a manifest against it.

Modality is checked where the file records one (DICOM, or an HDF5 dataset's ``modality``
attribute); NIfTI, PNG/JPEG and NumPy files record none and pass that check unverified. Spacing is
stricter: when the contract sets ``spacing_mm``, a file that records no spacing fails.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from cordiale.core.tomlfile import ContractModel
from cordiale.data.imaging.deid import DEFAULT_IDENTIFIER_FIELDS, unknown_keywords

__all__ = ["ANY_MODALITY", "ImagingContract"]

#: The modality value that accepts every modality.
ANY_MODALITY = "any"
_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")


class ImagingContract(ContractModel):
    """What a site's images must look like for a study to run on them."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    what: ClassVar[str] = "imaging contract"

    name: str = Field(min_length=1)
    #: DICOM modality code ("CT", "MR", "XR", "OT", ...) or "any".
    modality: str = ANY_MODALITY
    #: Spatial dimensions of each image: 2 (slices, radiographs) or 3 (volumes).
    ndim: Literal[2, 3] = 2
    #: Exact spatial shape, in the reader's axis order; None accepts any shape.
    shape: list[int] | None = None
    #: Channels per image (1 for grayscale, 3 for colour).
    channels: int = Field(default=1, ge=1, le=4)
    #: Expected voxel spacing in millimetres, per spatial axis; None accepts any spacing.
    spacing_mm: list[float] | None = None
    #: Relative tolerance on ``spacing_mm`` (0.05 accepts 5 % either way).
    spacing_rtol: float = Field(default=0.05, ge=0, le=1)
    #: The labels an image may carry (integers, e.g. [0, 1]).
    label_set: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)
    #: DICOM keywords that must be absent or empty in every file (de-identification).
    identifier_fields: list[str] = Field(default_factory=lambda: list(DEFAULT_IDENTIFIER_FIELDS))
    min_images: int = Field(default=20, ge=1)
    min_per_class: int = Field(default=2, ge=1)

    @field_validator("modality")
    @classmethod
    def _modality(cls, v: str) -> str:
        v = v.strip()
        if v.lower() == ANY_MODALITY:
            return ANY_MODALITY
        if not _MODALITY.match(v.upper()):
            raise ValueError(f"modality {v!r} is not a DICOM modality code (e.g. CT, MR) or 'any'")
        return v.upper()

    @model_validator(mode="after")
    def _check(self) -> ImagingContract:
        if self.shape is not None:
            if len(self.shape) != self.ndim:
                raise ValueError(f"shape has {len(self.shape)} axes but ndim is {self.ndim}")
            if min(self.shape) < 1:
                raise ValueError("every shape axis must be at least 1")
        if self.spacing_mm is not None:
            if len(self.spacing_mm) != self.ndim:
                raise ValueError(
                    f"spacing_mm has {len(self.spacing_mm)} axes but ndim is {self.ndim}"
                )
            if min(self.spacing_mm) <= 0:
                raise ValueError("every spacing_mm value must be positive")
        if len(set(self.label_set)) != len(self.label_set):
            raise ValueError("label_set has duplicate labels")
        bad = unknown_keywords(self.identifier_fields)
        if bad:
            raise ValueError(f"identifier_fields has unknown DICOM keyword(s): {', '.join(bad)}")
        return self

    @property
    def any_modality(self) -> bool:
        return self.modality == ANY_MODALITY

    def spacing_matches(self, spacing: tuple[float, ...]) -> bool:
        """Whether ``spacing`` (one value per axis) is within tolerance of ``spacing_mm``."""
        if self.spacing_mm is None:
            return True
        if len(spacing) != len(self.spacing_mm):
            return False
        return all(
            abs(got - want) <= self.spacing_rtol * want
            for got, want in zip(spacing, self.spacing_mm, strict=True)
        )
