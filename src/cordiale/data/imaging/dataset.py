"""A site's imaging dataset, as the node holds it: validated, split by patient, in memory.

:meth:`ImageDataset.from_manifest` reads a manifest, validates every row against the
:class:`~cordiale.data.imaging.contract.ImagingContract` (one error listing every problem), splits
the images by patient (seeded, stratified) and stacks them into float32 arrays
``(n, C, *shape)``: channel-first, with ``C = 1`` for grayscale, ready for a convolutional network.
Every image must have the same shape (the contract's, when it fixes one); volumes too large to
hold in memory are sampled in patches instead (:mod:`cordiale.data.imaging.patches`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cordiale.core.errors import DataError
from cordiale.data.imaging.contract import ImagingContract
from cordiale.data.imaging.manifest import Manifest
from cordiale.data.imaging.split import split_by_patient
from cordiale.data.imaging.transforms import TransformSpec, preprocess_images
from cordiale.data.imaging.validation import ImageRecord, validate_manifest

__all__ = ["ImageDataset"]


@dataclass
class ImageDataset:
    """Training and test images of one site, with labels, patients and subgroup columns."""

    name: str
    contract: ImagingContract
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    patients_train: np.ndarray
    patients_test: np.ndarray
    #: Subgroup column -> its values (text) for the training / test images, in the same order.
    subgroups_train: dict[str, np.ndarray] = field(default_factory=dict)
    subgroups_test: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_manifest(
        cls,
        manifest_path: str | Path,
        contract: ImagingContract,
        *,
        test_fraction: float,
        seed: int,
        site: str,
        preprocess: Sequence[TransformSpec] = (),
    ) -> ImageDataset:
        """Read, validate, split and stack the images a manifest lists, each then put through
        the ``preprocess`` transforms (:mod:`cordiale.data.imaging.transforms`).

        Raises :class:`~cordiale.core.errors.ContractViolation` listing every problem of the
        manifest, :class:`~cordiale.core.errors.DataError` when it cannot be read or split.
        """
        manifest = Manifest.read(manifest_path)
        records = validate_manifest(manifest, contract, dataset=site)
        return cls.from_records(
            site,
            contract,
            records,
            manifest.subgroup_columns,
            test_fraction=test_fraction,
            seed=seed,
            preprocess=preprocess,
        )

    @classmethod
    def from_records(
        cls,
        name: str,
        contract: ImagingContract,
        records: Sequence[ImageRecord],
        subgroup_columns: Sequence[str] = (),
        *,
        test_fraction: float,
        seed: int,
        preprocess: Sequence[TransformSpec] = (),
    ) -> ImageDataset:
        """Split validated records by patient and stack their images (then preprocess them)."""
        shapes = {r.loaded.array.shape for r in records}
        if len(shapes) > 1:
            raise DataError(
                f"dataset {name!r}: images come in {len(shapes)} different shapes; fix the "
                "contract's shape (and resample the images to it) to stack them"
            )
        patients = np.asarray([r.patient_id for r in records], dtype=object)
        labels = np.asarray([r.label for r in records], dtype=np.int64)
        train, test = split_by_patient(patients, labels, test_fraction=test_fraction, seed=seed)
        x = preprocess_images(preprocess, np.stack([_channel_first(r) for r in records]))
        groups = {
            c: np.asarray([r.subgroups.get(c, "") for r in records], dtype=object)
            for c in subgroup_columns
        }
        return cls(
            name=name,
            contract=contract,
            x_train=x[train],
            y_train=labels[train],
            x_test=x[test],
            y_test=labels[test],
            patients_train=patients[train],
            patients_test=patients[test],
            subgroups_train={c: v[train] for c, v in groups.items()},
            subgroups_test={c: v[test] for c, v in groups.items()},
        )

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Spatial shape of every image."""
        return tuple(int(s) for s in self.x_train.shape[2:])

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_features(self) -> int:
        """What a plan's ``build_model(num_features)`` receives for images: the channels."""
        return self.channels

    @property
    def subgroup_columns(self) -> list[str]:
        return list(self.subgroups_train)

    @property
    def num_train(self) -> int:
        return len(self.y_train)

    @property
    def num_test(self) -> int:
        return len(self.y_test)


def _channel_first(record: ImageRecord) -> np.ndarray:
    arr = record.loaded.array
    return arr if record.meta.channels > 1 else arr[np.newaxis]
