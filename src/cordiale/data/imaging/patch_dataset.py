"""Patch-based datasets: a site's volumes, too large to load, as patches labelled per volume.

A study over large volumes (HDF5/NeXus or NIfTI) sets ``[data.patches]``::

    [data.patches]
    size = [32, 32, 32]     # one side per spatial axis of the contract's ndim
    per_volume = 8          # random patches drawn from each training volume
    eval_per_volume = 16    # random patches scored per test volume (default: per_volume)

:meth:`PatchDataset.from_manifest` validates the manifest from the volumes' headers only
(:func:`~cordiale.data.imaging.validation.validate_manifest` with ``probe=True``), splits the
volumes by patient, then reads each patch as one hyperslab through a
:class:`~cordiale.data.imaging.patches.PatchSampler` (HDF5) or
:class:`~cordiale.data.imaging.patches.NiftiPatchSampler` (NIfTI): the whole volume is never in
memory, only the patches. Each patch carries its volume's label. Patch positions are drawn from
the study's split seed and each row, so the node and its simulation draw the same patches.

Evaluation scores every test patch and averages the probabilities of each volume's patches
(:meth:`PatchDataset.volume_scores`): metrics such as AUC are per volume, not per patch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cordiale.core.errors import ContractViolation
from cordiale.data.imaging.contract import ImagingContract
from cordiale.data.imaging.manifest import Manifest
from cordiale.data.imaging.patches import open_patch_sampler
from cordiale.data.imaging.split import split_by_patient
from cordiale.data.imaging.transforms import TransformSpec, preprocess_images
from cordiale.data.imaging.validation import ImageRecord, validate_manifest

__all__ = ["PatchDataset", "PatchSpec"]


class PatchSpec(BaseModel):
    """How a study cuts volumes into patches (``[data.patches]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: list[int] = Field(min_length=2, max_length=3)
    per_volume: int = Field(default=8, ge=1, le=4096)
    eval_per_volume: int | None = Field(default=None, ge=1, le=4096)

    @model_validator(mode="after")
    def _check(self) -> PatchSpec:
        if min(self.size) < 1:
            raise ValueError("every patch side must be at least 1")
        return self

    @property
    def test_patches(self) -> int:
        return self.eval_per_volume or self.per_volume


@dataclass
class PatchDataset:
    """Training patches and test patches of one site's volumes, each with its volume's label.

    ``y_test`` labels each test patch; ``test_volumes`` says which test volume (an index into
    ``volume_labels``) each came from.
    """

    name: str
    contract: ImagingContract
    patches: PatchSpec
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_volumes: np.ndarray
    volume_labels: np.ndarray
    patients_train: np.ndarray
    patients_test: np.ndarray
    #: subgroup column -> its values (text) for each test volume, in ``volume_labels`` order
    subgroups_test: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_manifest(
        cls,
        manifest_path: str | Path,
        contract: ImagingContract,
        patches: PatchSpec,
        *,
        test_fraction: float,
        seed: int,
        site: str,
        preprocess: Sequence[TransformSpec] = (),
    ) -> PatchDataset:
        """Validate (headers only), split by patient and draw the patches of every volume.

        Raises :class:`~cordiale.core.errors.ContractViolation` listing every problem.
        """
        manifest = Manifest.read(manifest_path)
        records = validate_manifest(manifest, contract, dataset=site, probe=True)
        size = tuple(patches.size)
        problems = [f"row {r.row}: {what}" for r in records for what in _volume_problems(r, size)]
        if problems:
            raise ContractViolation(site, problems)
        patients = np.asarray([r.patient_id for r in records], dtype=object)
        labels = np.asarray([r.label for r in records], dtype=np.int64)
        train, test = split_by_patient(patients, labels, test_fraction=test_fraction, seed=seed)
        x_train = _draw(site, [records[i] for i in train], size, patches.per_volume, seed, 0)
        x_test = _draw(site, [records[i] for i in test], size, patches.test_patches, seed, 1)
        test_volumes = np.repeat(np.arange(len(test)), patches.test_patches)
        return cls(
            name=site,
            contract=contract,
            patches=patches,
            x_train=preprocess_images(preprocess, x_train),
            y_train=np.repeat(labels[train], patches.per_volume),
            x_test=preprocess_images(preprocess, x_test),
            y_test=labels[test][test_volumes],
            test_volumes=test_volumes,
            volume_labels=labels[test],
            patients_train=patients[train],
            patients_test=patients[test],
            subgroups_test={
                c: np.asarray([records[i].subgroups.get(c, "") for i in test], dtype=object)
                for c in manifest.subgroup_columns
            },
        )

    def volume_scores(self, patch_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each test volume's score (the mean probability of its patches) and its label."""
        n = len(self.volume_labels)
        sums = np.bincount(self.test_volumes, weights=patch_probs, minlength=n)
        counts = np.bincount(self.test_volumes, minlength=n)
        return sums / np.maximum(counts, 1), self.volume_labels

    @property
    def num_train(self) -> int:
        """Training examples: patches."""
        return len(self.y_train)

    @property
    def num_test(self) -> int:
        """Test examples: volumes (metrics are per volume)."""
        return len(self.volume_labels)

    @property
    def num_features(self) -> int:
        """What a plan's ``build_model(num_features)`` receives: the channels (1)."""
        return int(self.x_train.shape[1])


def _volume_problems(record: ImageRecord, size: tuple[int, ...]) -> list[str]:
    shape = record.meta.shape
    if record.meta.channels != 1:
        return ["patches are drawn from single-channel volumes"]
    if len(shape) != len(size):
        return [f"{len(shape)}-D volume, the patches are {len(size)}-D"]
    if any(p > n for p, n in zip(size, shape, strict=True)):
        dims = "×".join(map(str, shape))
        return [f"volume of shape {dims} is smaller than the patch size {size}"]
    return []


def _draw(
    site: str,
    records: Sequence[ImageRecord],
    size: tuple[int, ...],
    per_volume: int,
    seed: int,
    part: int,
) -> np.ndarray:
    """``per_volume`` random patches of each record's volume, ``(n * per_volume, 1, *size)``."""
    out = np.empty((len(records) * per_volume, 1, *size), dtype=np.float32)
    bad = []
    for i, r in enumerate(records):
        volume_seed = int(np.random.SeedSequence([seed, part, r.row]).generate_state(1)[0])
        with open_patch_sampler(r.ref.path, r.ref.member, size, seed=volume_seed) as sampler:
            block = out[i * per_volume : (i + 1) * per_volume, 0]
            block[...] = sampler.sample(per_volume)
        if not np.isfinite(block).all():
            bad.append(f"row {r.row}: non-finite voxel values (NaN or infinity) in a patch")
    if bad:
        raise ContractViolation(site, bad)
    return out
