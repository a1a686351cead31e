"""MONAI transforms declared in a study: allow-listed, validated with clear errors, reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cordiale.core.errors import ConfigError
from cordiale.data.imaging.transforms import (
    AUGMENT,
    PREPROCESS,
    Augmenter,
    parse_transforms,
    preprocess_images,
    transforms_from_json,
    transforms_to_json,
)

pytest.importorskip("monai")

AUGMENTATIONS = [
    {"name": "RandFlip", "prob": 0.5, "spatial_axis": 1},
    {"name": "RandRotate90", "prob": 0.5},
    {"name": "RandAffine", "prob": 0.8, "rotate_range": 0.4, "padding_mode": "border"},
    {"name": "RandGaussianNoise", "prob": 0.5, "std": 0.05},
    {"name": "RandScaleIntensity", "prob": 0.5, "factors": 0.2},
]


def test_unknown_and_misplaced_transforms_and_bad_parameters_are_all_named():
    with pytest.raises(ConfigError) as e:
        parse_transforms(
            [
                {"name": "RandFlip", "prob": 1.5},
                {"name": "RandSharpen"},
                {"name": "ScaleIntensity"},
                {"name": "RandAffine", "rotat_range": 0.1},
                {"name": "RandRotate90", "spatial_axes": [0, 2]},
            ],
            "augment",
            ndim=2,
        )
    msg = str(e.value)
    assert "data.augment[0] RandFlip: prob: Input should be less than or equal to 1" in msg
    assert "data.augment[1]: unknown transform 'RandSharpen'; valid augment transforms are: " in msg
    assert ", ".join(sorted(AUGMENT)) in msg
    assert "data.augment[2]: ScaleIntensity is deterministic; it belongs in data.preprocess" in msg
    assert "data.augment[3] RandAffine: rotat_range: Extra inputs are not permitted" in msg
    assert "data.augment[4] RandRotate90: axis 2 is not a spatial axis of 2-D images" in msg
    with pytest.raises(ConfigError, match=r"RandFlip is random; it belongs in data\.augment"):
        parse_transforms([{"name": "RandFlip"}], "preprocess")
    with pytest.raises(ConfigError, match=", ".join(sorted(PREPROCESS))):
        parse_transforms([{}], "preprocess")


def test_transforms_round_trip_through_json_as_a_task_carries_them():
    specs = parse_transforms(AUGMENTATIONS, "augment", ndim=2)
    assert transforms_from_json(transforms_to_json(specs), "augment") == specs


def test_augmentation_is_reproducible_for_a_seed_and_changes_the_inputs():
    specs = parse_transforms(AUGMENTATIONS, "augment", ndim=2)
    batch = torch.from_numpy(np.random.default_rng(0).normal(size=(16, 1, 24, 24)).astype("f4"))

    first = Augmenter(specs, seed=7)(batch)
    again = Augmenter(specs, seed=7)(batch)
    other = Augmenter(specs, seed=8)(batch)

    assert first.shape == batch.shape and first.dtype == torch.float32
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)
    changed = [not torch.allclose(a, b) for a, b in zip(first, batch, strict=True)]
    assert sum(changed) >= 12  # most images of the batch were transformed


def test_augmentation_works_on_volumes():
    specs = parse_transforms(
        [{"name": "RandFlip", "prob": 1.0, "spatial_axis": 2}], "augment", ndim=3
    )
    vol = torch.arange(2 * 4 * 5 * 6, dtype=torch.float32).reshape(2, 1, 4, 5, 6)
    torch.testing.assert_close(Augmenter(specs, seed=0)(vol), vol.flip(-1))


def test_preprocessing_scales_each_image_and_normalises():
    rng = np.random.default_rng(1)
    images = (rng.random((5, 1, 8, 8)) * rng.uniform(10, 1000, (5, 1, 1, 1))).astype("f4")

    scaled = preprocess_images(parse_transforms([{"name": "ScaleIntensity"}], "preprocess"), images)
    normal = preprocess_images(
        parse_transforms([{"name": "NormalizeIntensity"}], "preprocess"), images
    )

    assert scaled.shape == images.shape and scaled.dtype == np.float32
    np.testing.assert_allclose(scaled.min(axis=(1, 2, 3)), 0.0, atol=1e-6)
    np.testing.assert_allclose(scaled.max(axis=(1, 2, 3)), 1.0, atol=1e-6)
    np.testing.assert_allclose(normal.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(normal.std(axis=(1, 2, 3)), 1.0, atol=1e-3)
