"""Small DICOM files written by the tests (pydicom), and pydicom's own test files.

Both fixtures skip the test when pydicom (the ``imaging`` extra) is not installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def testdata(name: str) -> Path:
    """A file shipped with pydicom (never downloaded)."""
    get_testdata_file = pytest.importorskip("pydicom.data").get_testdata_file

    path = get_testdata_file(name, read=False, download=False)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is not installed")
    return Path(path)


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    modality: str = "CT",
    patient_name: str = "",
    spacing: tuple[float, float] = (0.5, 0.5),
    position: tuple[float, float, float] | None = None,
    instance: int | None = None,
    series_uid: str = "1.2.826.0.1.3680043.8.498.1",
    rescale: tuple[float, float] | None = None,
) -> Path:
    """A minimal single-frame grayscale DICOM file (int16 pixels, explicit VR little endian)."""
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientName = patient_name
    ds.PatientID = "pseudo-0001"
    ds.PatientBirthDate = ""
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 2.0
    if position is not None:
        ds.ImagePositionPatient = list(position)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    if instance is not None:
        ds.InstanceNumber = instance
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.set_pixel_data(np.asarray(pixels, dtype=np.int16), "MONOCHROME2", 16)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def dicom_writer():
    return write_dicom


@pytest.fixture
def pydicom_file():
    return testdata
