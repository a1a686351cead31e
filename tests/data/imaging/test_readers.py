import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cordiale.core.errors import ConfigError, DataError
from cordiale.data.imaging import (
    DEFAULT_IDENTIFIER_FIELDS,
    ImageReader,
    ImageReadError,
    ImageRef,
    read_image,
)

pydicom = pytest.importorskip("pydicom")
nibabel = pytest.importorskip("nibabel")
h5py = pytest.importorskip("h5py")
PILImage = pytest.importorskip("PIL.Image")


# -- DICOM ------------------------------------------------------------------------------------


def test_ct_small_with_rescale_spacing_and_modality(pydicom_file):
    path = pydicom_file("CT_small.dcm")
    raw = pydicom.dcmread(path)

    img = read_image(path, identifier_fields=DEFAULT_IDENTIFIER_FIELDS)

    assert img.array.dtype == np.float32 and img.array.shape == (128, 128)
    expected = raw.pixel_array.astype(np.float64) * float(raw.RescaleSlope) + float(
        raw.RescaleIntercept
    )
    np.testing.assert_array_equal(img.array, expected.astype(np.float32))
    assert img.meta.modality == "CT" and img.meta.format == "dicom"
    assert img.meta.spacing == pytest.approx((0.661468, 0.661468))
    assert img.meta.identifiers == ("PatientName",)  # pydicom's sample is not de-identified


def test_multiframe_rtdose_is_a_volume_with_frame_spacing(pydicom_file):
    path = pydicom_file("rtdose.dcm")
    raw = pydicom.dcmread(path)

    img = read_image(path)

    assert img.array.shape == (15, 10, 10) and img.meta.shape == (15, 10, 10)
    np.testing.assert_allclose(img.array, raw.pixel_array * float(raw.DoseGridScaling), rtol=1e-6)
    assert img.meta.spacing == pytest.approx(
        (5.0, 10.0, 10.0)
    )  # GridFrameOffsetVector, PixelSpacing
    assert img.meta.modality == "RTDOSE" and img.meta.identifiers == ()


def test_colour_dicom_is_channel_first(pydicom_file):
    img = read_image(pydicom_file("SC_rgb_rle_2frame.dcm"))

    assert img.meta.channels == 3 and img.meta.shape == (2, 100, 100)
    assert img.array.shape == (3, 2, 100, 100)


def test_truncated_and_corrupt_dicom_become_read_errors(pydicom_file, tmp_path):
    bad = tmp_path / "corrupt.dcm"
    bad.write_bytes(b"\x00" * 64 + b"not a dicom file at all" * 10)

    with pytest.raises(ImageReadError) as truncated:
        read_image(pydicom_file("MR_truncated.dcm"))
    with pytest.raises(ImageReadError) as corrupt:
        read_image(bad)

    assert truncated.value.reason == "cannot be read as DICOM (ValueError)"
    assert corrupt.value.reason.startswith("cannot be read as DICOM (")
    assert (
        isinstance(corrupt.value, DataError) and "corrupt.dcm" not in corrupt.value.public_message
    )


def test_series_directory_is_sorted_along_the_slice_normal(dicom_writer, tmp_path):
    rng = np.random.default_rng(0)
    planes = rng.integers(-1000, 1000, size=(4, 6, 5))
    series = tmp_path / "series"
    # file names and instance numbers in a different order than the positions
    for name, z, k in [("a.dcm", 5.0, 2), ("b.dcm", 0.0, 0), ("c.dcm", 7.5, 3), ("d.dcm", 2.5, 1)]:
        dicom_writer(series / name, planes[k], position=(0.0, 0.0, z), instance=10 - k)

    img = read_image(series)

    np.testing.assert_array_equal(img.array, planes.astype(np.float32))
    assert img.meta.format == "dicom-series" and img.meta.shape == (4, 6, 5)
    assert img.meta.spacing == pytest.approx((2.5, 0.5, 0.5))


def test_series_without_positions_is_ordered_by_instance_number(dicom_writer, tmp_path):
    planes = np.arange(3 * 4 * 4).reshape(3, 4, 4)
    for k in range(3):
        dicom_writer(tmp_path / "s" / f"{9 - k}.dcm", planes[k], instance=k + 1, rescale=(2.0, -5))

    img = read_image(tmp_path / "s")

    np.testing.assert_array_equal(img.array, planes * 2.0 - 5)
    assert img.meta.spacing == (2.0, 0.5, 0.5)  # SliceThickness when positions are absent


@pytest.mark.parametrize(
    ("layout", "reason"),
    [
        ([(0.0, "1"), (2.5, "1"), (9.0, "1")], "unevenly spaced"),
        ([(0.0, "1"), (0.0, "1")], "share a position"),
        ([(0.0, "1"), (2.5, "2")], "holds 2 series"),
    ],
)
def test_broken_series_are_refused(dicom_writer, tmp_path, layout, reason):
    for i, (z, uid) in enumerate(layout):
        dicom_writer(
            tmp_path / "s" / f"{i}.dcm", np.zeros((4, 4)), position=(0, 0, z), series_uid=uid
        )

    with pytest.raises(ImageReadError, match=reason):
        read_image(tmp_path / "s")


# -- NIfTI, HDF5, NumPy, pictures -------------------------------------------------------------


@pytest.mark.parametrize("name", ["vol.nii", "vol.nii.gz"])
def test_nifti_round_trip_with_zooms(tmp_path, name):
    data = np.random.default_rng(1).normal(size=(4, 5, 6)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(data, np.diag([0.5, 0.7, 1.2, 1.0])), tmp_path / name)

    img = read_image(tmp_path / name)

    np.testing.assert_array_equal(img.array, data)
    assert img.meta.spacing == pytest.approx((0.5, 0.7, 1.2)) and img.meta.modality is None


def test_nifti_slice_drops_its_trailing_axis_for_a_2d_contract(tmp_path):
    data = np.arange(12, dtype=np.int16).reshape(3, 4, 1)
    nibabel.save(nibabel.Nifti1Image(data, np.diag([0.8, 0.9, 3.0, 1.0])), tmp_path / "s.nii.gz")

    img = ImageReader(ndim=2).read(tmp_path / "s.nii.gz")

    np.testing.assert_array_equal(img.array, data[..., 0])
    assert img.meta.shape == (3, 4) and img.meta.spacing == pytest.approx((0.8, 0.9))


def test_hdf5_dataset_by_path_with_spacing_and_modality(tmp_path):
    vol = np.random.default_rng(2).integers(0, 4000, size=(3, 4, 5)).astype(np.uint16)
    with h5py.File(tmp_path / "v.h5", "w") as f:
        ds = f.create_dataset("ct/p1", data=vol)
        ds.attrs["spacing_mm"] = [2.0, 0.7, 0.7]
        ds.attrs["modality"] = "ct"
        f.create_dataset("ct/p2", data=vol[:1])
        f.create_dataset("names", data=np.array([b"x"]))

    img = read_image(f"{tmp_path}/v.h5#/ct/p1")

    np.testing.assert_array_equal(img.array, vol.astype(np.float32))
    assert img.meta.spacing == (2.0, 0.7, 0.7) and img.meta.modality == "CT"
    for member, reason in [
        ("/ct/p9", "no dataset at that path"),
        ("/ct", "names a group"),
        ("/names", "not a numeric array"),
    ]:
        with pytest.raises(ImageReadError, match=reason):
            read_image(f"{tmp_path}/v.h5#{member}")
    with pytest.raises(ImageReadError, match="holds 3 datasets"):
        read_image(tmp_path / "v.h5")


def test_hdf5_too_large_to_read_whole_points_to_patches(tmp_path):
    with h5py.File(tmp_path / "big.h5", "w") as f:
        f.create_dataset("v", shape=(64, 64, 64), dtype="u2")  # never written: no disk used

    with pytest.raises(ImageReadError, match="sample patches"):
        ImageReader(max_bytes=2**19).read(f"{tmp_path}/big.h5#v")


def test_npz_medmnist_layout_gray_and_colour(tmp_path):
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, size=(5, 8, 8), dtype=np.uint8)
    colour = rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    np.savez_compressed(tmp_path / "m.npz", train_images=gray, train_labels=np.arange(5)[:, None])
    np.savez(tmp_path / "c.npz", test_images=colour)
    reader = ImageReader(ndim=2)

    img = reader.read(ImageRef.parse("m.npz#train_images/3", tmp_path))
    rgb = reader.read(ImageRef.parse("c.npz#test_images/1", tmp_path))

    np.testing.assert_array_equal(img.array, gray[3].astype(np.float32))
    assert img.meta.format == "npz" and img.meta.channels == 1
    np.testing.assert_array_equal(rgb.array, np.moveaxis(colour[1], -1, 0))
    assert rgb.meta.channels == 3 and rgb.meta.shape == (8, 8)
    with pytest.raises(ImageReadError, match="index 5 is outside"):
        reader.read(ImageRef.parse("m.npz#train_images/5", tmp_path))
    with pytest.raises(ImageReadError, match="no array of that name"):
        reader.read(ImageRef.parse("m.npz#val_images/0", tmp_path))
    with pytest.raises(ImageReadError, match="holds 2 arrays"):
        reader.read(tmp_path / "m.npz")


class _Trap:
    """Unpickling this creates the file it names: proof that something was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_pickled_arrays_are_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    np.savez(tmp_path / "evil.npz", images=np.array([_Trap(marker)], dtype=object))
    np.save(tmp_path / "evil.npy", np.array([_Trap(marker)], dtype=object), allow_pickle=True)

    for name in ("evil.npz#images/0", "evil.npy"):
        with pytest.raises(ImageReadError, match=r"cannot be read as NumPy"):
            read_image(ImageRef.parse(name, tmp_path))

    assert not marker.exists()


def test_npy_round_trip(tmp_path):
    data = np.linspace(-1, 1, 24, dtype=np.float64).reshape(4, 6)
    np.save(tmp_path / "a.npy", data)

    np.testing.assert_array_equal(read_image(tmp_path / "a.npy").array, data.astype(np.float32))


def test_pictures_are_read_as_grayscale(tmp_path):
    rng = np.random.default_rng(4)
    gray = rng.integers(0, 256, size=(7, 9), dtype=np.uint8)
    deep = rng.integers(0, 65536, size=(5, 6), dtype=np.uint16)
    rgb = rng.integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    PILImage.fromarray(gray).save(tmp_path / "g.png")
    PILImage.fromarray(deep).save(tmp_path / "d.png")
    PILImage.fromarray(rgb).save(tmp_path / "c.png")
    PILImage.fromarray(gray).save(tmp_path / "g.jpg", quality=95)

    np.testing.assert_array_equal(read_image(tmp_path / "g.png").array, gray)
    np.testing.assert_array_equal(read_image(tmp_path / "d.png").array, deep)
    expected = np.asarray(PILImage.fromarray(rgb).convert("L"), dtype=np.float32)
    np.testing.assert_array_equal(read_image(tmp_path / "c.png").array, expected)
    jpg = read_image(tmp_path / "g.jpg")
    assert jpg.array.shape == (7, 9) and np.abs(jpg.array - gray).mean() < 8
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ImageReadError, match=r"cannot be read as picture \(\w+\)"):
        read_image(tmp_path / "bad.png")


# -- references and dispatch ------------------------------------------------------------------


def test_refs_split_members_only_after_container_names(tmp_path):
    assert ImageRef.parse("v.h5#/a/b", tmp_path) == ImageRef(tmp_path / "v.h5", "/a/b")
    assert ImageRef.parse("x#1/v.npz#imgs/2", tmp_path) == ImageRef(
        tmp_path / "x#1/v.npz", "imgs/2"
    )
    assert ImageRef.parse("scan#3.dcm", tmp_path) == ImageRef(tmp_path / "scan#3.dcm", None)
    assert ImageRef.parse("/abs/a.png", tmp_path).path == Path("/abs/a.png")


def test_dispatch_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "a.png").write_bytes(b"")

    with pytest.raises(ImageReadError, match="file not found"):
        read_image(tmp_path / "missing.dcm")
    with pytest.raises(ImageReadError, match=r"unsupported file type '\.txt'"):
        read_image(tmp_path / "notes.txt")
    with pytest.raises(ImageReadError, match="holds no named members"):
        read_image(ImageRef(tmp_path / "a.png", "x"))


def test_package_imports_and_reads_numpy_without_the_imaging_extra(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((2, 3)))
    (tmp_path / "a.dcm").write_bytes(b"")
    code = textwrap.dedent(
        f"""
        import sys
        for name in ("pydicom", "nibabel", "h5py", "PIL"):
            sys.modules[name] = None  # importing them now fails
        from cordiale.core.errors import ConfigError
        from cordiale.data.imaging import ImagingContract, read_image
        ImagingContract(name="c", modality="CT")
        assert read_image({str(tmp_path / "a.npy")!r}).array.shape == (2, 3)
        try:
            read_image({str(tmp_path / "a.dcm")!r})
        except ConfigError as e:
            assert "cordiale[imaging]" in str(e), e
        else:
            raise AssertionError("no ConfigError")
        """
    )

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert ConfigError  # the same class the child process raised
