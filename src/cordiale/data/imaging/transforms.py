"""MONAI intensity and spatial transforms, declared in a study spec from an allow-list.

A study names its transforms as data, never as code: a list of tables, each a transform's
``name`` and its parameters, in two lists:

- ``data.preprocess``: deterministic intensity transforms (:data:`PREPROCESS`) applied to every
  image (or patch) of a site, training and test alike, when the node builds its dataset;
- ``data.augment``: random transforms (:data:`AUGMENT`) applied by the node to its **training
  batches only**, image by image, drawn from a generator seeded from the task's seed, so that a
  study is reproducible (the same seed gives the same augmented batches) and a networked study
  equals its simulation.

Example::

    [[data.preprocess]]
    name = "ScaleIntensity"       # each image to [0, 1]

    [[data.augment]]
    name = "RandFlip"
    prob = 0.5
    spatial_axis = 0

    [[data.augment]]
    name = "RandAffine"
    prob = 0.5
    rotate_range = 0.3
    padding_mode = "border"

Every table is validated by pydantic against its transform's parameters (unknown parameters are
refused); :func:`parse_transforms` reports every bad transform or parameter, by position and
name, in one message, and an unknown name lists the valid ones. MONAI loads only when a
transform is built (the ``imaging`` extra); images are channel-first arrays ``(C, *spatial)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cordiale.core.errors import ConfigError

__all__ = [
    "AUGMENT",
    "PREPROCESS",
    "Augmenter",
    "TransformSpec",
    "monai_module",
    "parse_transforms",
    "preprocess_images",
    "transforms_from_json",
    "transforms_to_json",
]

Stage = Literal["preprocess", "augment"]
Range = float | list[float]


def monai_module(name: str = "monai") -> ModuleType:
    """``import name`` (a MONAI module), or a :class:`ConfigError` saying how to install it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(
            "MONAI networks and transforms need MONAI; install the imaging extra: "
            "pip install 'cordiale[imaging]'"
        ) from None


class TransformSpec(BaseModel):
    """One transform of the allow-list: its name, its parameters, what it needs of images."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Random transforms go in ``data.augment``, deterministic ones in ``data.preprocess``.
    random: ClassVar[bool] = False
    name: str

    def kwargs(self) -> dict[str, Any]:
        """The MONAI constructor's arguments."""
        return self.model_dump(exclude={"name"})

    def build(self, transforms: ModuleType) -> Callable[[Any], Any]:
        """The MONAI transform (``transforms`` is ``monai.transforms``)."""
        return getattr(transforms, self.name)(**self.kwargs())

    def axes(self) -> list[int]:
        """Spatial axes this transform names (checked against the images' dimensions)."""
        return []


class _Random(TransformSpec):
    random: ClassVar[bool] = True
    prob: float = Field(default=0.5, ge=0, le=1)


class ScaleIntensity(TransformSpec):
    """Each image linearly to ``[minv, maxv]``."""

    name: Literal["ScaleIntensity"] = "ScaleIntensity"
    minv: float = 0.0
    maxv: float = 1.0
    channel_wise: bool = False


class NormalizeIntensity(TransformSpec):
    """Each image to zero mean and unit variance (over its non-zero voxels with ``nonzero``)."""

    name: Literal["NormalizeIntensity"] = "NormalizeIntensity"
    nonzero: bool = False
    channel_wise: bool = False


class ScaleIntensityRange(TransformSpec):
    """A fixed intensity window ``[a_min, a_max]`` to ``[b_min, b_max]`` (CT windows)."""

    name: Literal["ScaleIntensityRange"] = "ScaleIntensityRange"
    a_min: float
    a_max: float
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = False


class RandFlip(_Random):
    name: Literal["RandFlip"] = "RandFlip"
    spatial_axis: int | list[int] | None = None

    def axes(self) -> list[int]:
        axis = self.spatial_axis
        return [] if axis is None else [axis] if isinstance(axis, int) else list(axis)


class RandRotate90(_Random):
    name: Literal["RandRotate90"] = "RandRotate90"
    max_k: int = Field(default=3, ge=1, le=3)
    spatial_axes: tuple[int, int] = (0, 1)

    def axes(self) -> list[int]:
        return list(self.spatial_axes)


class RandGaussianNoise(_Random):
    name: Literal["RandGaussianNoise"] = "RandGaussianNoise"
    mean: float = 0.0
    std: float = Field(default=0.1, ge=0)


class RandScaleIntensity(_Random):
    """Intensity times ``1 + f``, ``f`` uniform in ``[-factors, factors]``."""

    name: Literal["RandScaleIntensity"] = "RandScaleIntensity"
    factors: float = Field(default=0.1, ge=0)


class RandShiftIntensity(_Random):
    name: Literal["RandShiftIntensity"] = "RandShiftIntensity"
    offsets: float = Field(default=0.1, ge=0)


class RandAdjustContrast(_Random):
    """A gamma drawn from ``gamma`` applied to the image rescaled to its own range."""

    name: Literal["RandAdjustContrast"] = "RandAdjustContrast"
    gamma: tuple[float, float] = (0.7, 1.5)


class RandAffine(_Random):
    """Random rotation (radians), scaling (fraction), translation (voxels) and shear."""

    name: Literal["RandAffine"] = "RandAffine"
    rotate_range: Range | None = None
    scale_range: Range | None = None
    translate_range: Range | None = None
    shear_range: Range | None = None
    padding_mode: Literal["zeros", "border", "reflection"] = "reflection"


_ALL: tuple[type[TransformSpec], ...] = (
    ScaleIntensity,
    NormalizeIntensity,
    ScaleIntensityRange,
    RandFlip,
    RandRotate90,
    RandGaussianNoise,
    RandScaleIntensity,
    RandShiftIntensity,
    RandAdjustContrast,
    RandAffine,
)
#: Deterministic transforms a study may list in ``data.preprocess``.
PREPROCESS: dict[str, type[TransformSpec]] = {
    t.model_fields["name"].default: t for t in _ALL if not t.random
}
#: Random transforms a study may list in ``data.augment``.
AUGMENT: dict[str, type[TransformSpec]] = {
    t.model_fields["name"].default: t for t in _ALL if t.random
}


def parse_transforms(
    items: object, stage: Stage, *, ndim: int | None = None
) -> list[TransformSpec]:
    """Validate a list of transform tables for ``stage``; one :class:`ConfigError` lists every
    bad entry (``data.augment[1] RandFlip: prob: ...``). ``ndim`` checks the axes they name."""
    allowed = PREPROCESS if stage == "preprocess" else AUGMENT
    other = AUGMENT if stage == "preprocess" else PREPROCESS
    if items is None:
        return []
    if (
        isinstance(items, TransformSpec)
        or not isinstance(items, Sequence)
        or isinstance(items, str)
    ):
        raise ConfigError(f"data.{stage} must be a list of tables, each with a transform name")
    out: list[TransformSpec] = []
    problems: list[str] = []
    for i, item in enumerate(items):
        where = f"data.{stage}[{i}]"
        if isinstance(item, TransformSpec):
            item = item.model_dump()
        name = item.get("name") if isinstance(item, dict) else None
        cls = allowed.get(name) if isinstance(name, str) else None
        if cls is None:
            if isinstance(name, str) and name in other:
                kind = "random" if other[name].random else "deterministic"
                problems.append(
                    f"{where}: {name} is {kind}; it belongs in data."
                    f"{'augment' if other[name].random else 'preprocess'}"
                )
            else:
                problems.append(
                    f"{where}: unknown transform {name!r}; valid {stage} transforms are: "
                    + ", ".join(sorted(allowed))
                )
            continue
        try:
            spec = cls.model_validate(item)
        except ValidationError as e:
            for err in e.errors():
                param = ".".join(str(p) for p in err["loc"]) or "(table)"
                problems.append(f"{where} {name}: {param}: {err['msg']}")
            continue
        if ndim is not None:
            bad = [a for a in spec.axes() if not 0 <= a < ndim]
            if bad:
                problems.append(
                    f"{where} {name}: axis {bad[0]} is not a spatial axis of {ndim}-D images "
                    f"(0 to {ndim - 1})"
                )
                continue
        out.append(spec)
    if problems:
        raise ConfigError("; ".join(problems))
    return out


def transforms_to_json(specs: Sequence[TransformSpec]) -> str:
    """The transforms as JSON text (how a task carries them to a node)."""
    import json

    return json.dumps([s.model_dump(mode="json") for s in specs], sort_keys=True)


def transforms_from_json(text: str, stage: Stage) -> list[TransformSpec]:
    """Inverse of :func:`transforms_to_json`, validated again (the text crossed the wire)."""
    import json

    try:
        items = json.loads(text or "[]")
    except json.JSONDecodeError as e:
        raise ConfigError(f"data.{stage} is not JSON: {e}") from None
    return parse_transforms(items, stage)


def _compose(specs: Sequence[TransformSpec]) -> Any:
    transforms = monai_module("monai.transforms")
    return transforms.Compose([s.build(transforms) for s in specs])


def preprocess_images(specs: Sequence[TransformSpec], images: np.ndarray) -> np.ndarray:
    """``images`` ``(n, C, *spatial)`` through the deterministic transforms, image by image."""
    if not specs or len(images) == 0:
        return images
    compose = _compose(specs)
    utils = monai_module("monai.utils")
    out = [utils.convert_to_numpy(compose(image), dtype=np.float32) for image in images]
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


class Augmenter:
    """Random transforms for training batches, seeded: the same seed, the same augmentations.

    Called on a batch ``(n, C, *spatial)`` (a tensor), it transforms each image in turn with one
    random stream, so a training run draws a reproducible sequence of augmentations.
    """

    def __init__(self, specs: Sequence[TransformSpec], seed: int) -> None:
        if not specs:
            raise ConfigError("an augmenter needs at least one transform")
        self.specs = list(specs)
        self._compose = _compose(specs)
        self._compose.set_random_state(seed=int(seed) % 2**32)
        self._utils = monai_module("monai.utils")

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        out = [
            self._utils.convert_to_tensor(self._compose(image), track_meta=False) for image in batch
        ]
        return torch.stack(out).to(dtype=batch.dtype)
