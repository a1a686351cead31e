import numpy as np
import pytest

from cordiale.core.errors import ContractViolation, DataError
from cordiale.data.imaging import ImageDataset, ImagingContract


def medmnist_site(tmp_path, *, colour: bool = False, n_patients: int = 12):
    """A MedMNIST-style archive, two images per patient, and its manifest with a subgroup."""
    rng = np.random.default_rng(5)
    n = 2 * n_patients
    shape = (n, 8, 8, 3) if colour else (n, 8, 8)
    images = rng.integers(0, 256, size=shape, dtype=np.uint8)
    labels = np.repeat(np.arange(n_patients) % 2, 2)
    np.savez_compressed(tmp_path / "organ.npz", train_images=images, train_labels=labels[:, None])
    lines = ["path,label,patient_id,sex"]
    for i in range(n):
        lines.append(f"organ.npz#train_images/{i},{labels[i]},P{i // 2},{'FM'[i % 2]}")
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "manifest.csv", images, labels


def test_from_manifest_splits_by_patient_and_stacks_channel_first(tmp_path):
    manifest, images, labels = medmnist_site(tmp_path)
    contract = ImagingContract(name="organ", shape=[8, 8], min_images=10)

    ds = ImageDataset.from_manifest(manifest, contract, test_fraction=0.25, seed=3, site="site-a")

    assert ds.name == "site-a" and ds.num_train + ds.num_test == 24 and ds.num_test == 6
    assert ds.x_train.shape == (18, 1, 8, 8) and ds.x_train.dtype == np.float32
    assert ds.image_shape == (8, 8) and ds.channels == 1
    assert not set(ds.patients_train) & set(ds.patients_test)
    assert set(ds.y_test) == {0, 1}  # stratified by patient label
    for x, y, p, sex in zip(
        ds.x_test, ds.y_test, ds.patients_test, ds.subgroups_test["sex"], strict=True
    ):
        i = int(np.flatnonzero((images == x[0]).all(axis=(1, 2)))[0])
        assert y == labels[i] and p == f"P{i // 2}" and sex == "FM"[i % 2]
    assert ds.subgroup_columns == ["sex"]
    again = ImageDataset.from_manifest(manifest, contract, test_fraction=0.25, seed=3, site="a")
    assert np.array_equal(again.x_test, ds.x_test)


def test_colour_images_keep_their_channels(tmp_path):
    manifest, images, _ = medmnist_site(tmp_path, colour=True)
    contract = ImagingContract(name="path", shape=[8, 8], channels=3, min_images=10)

    ds = ImageDataset.from_manifest(manifest, contract, test_fraction=0.5, seed=0, site="s")

    assert ds.x_train.shape == (12, 3, 8, 8) and ds.channels == 3
    assert {x.tobytes() for x in ds.x_train} <= {
        np.moveaxis(im, -1, 0).astype(np.float32).tobytes() for im in images
    }


def test_a_failing_manifest_raises_the_contract_violation(tmp_path):
    manifest, _, _ = medmnist_site(tmp_path)
    contract = ImagingContract(name="organ", shape=[16, 16], min_images=10)

    with pytest.raises(ContractViolation) as info:
        ImageDataset.from_manifest(manifest, contract, test_fraction=0.25, seed=0, site="s")

    assert info.value.dataset == "s" and len(info.value.problems) == 21  # 20 listed + summary


def test_dicom_site_and_images_of_different_shapes(tmp_path, dicom_writer):
    lines = ["path,label,patient_id"]
    for i in range(6):
        side = 16 if i < 5 else 12
        dicom_writer(tmp_path / f"s{i}.dcm", np.full((side, side), i))
        lines.append(f"s{i}.dcm,{i % 2},P{i}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    loose = ImagingContract(name="ct", modality="CT", min_images=4)
    fixed = loose.model_copy(update={"shape": [16, 16]})

    with pytest.raises(DataError, match="2 different shapes"):
        ImageDataset.from_manifest(tmp_path / "m.csv", loose, test_fraction=0.3, seed=0, site="s")
    with pytest.raises(ContractViolation, match=r"row 7 \(s5.dcm\): shape 12×12"):
        ImageDataset.from_manifest(tmp_path / "m.csv", fixed, test_fraction=0.3, seed=0, site="s")
