"""Imaging datasets: DICOM, NIfTI, HDF5, NumPy and picture files behind one imaging contract.

Modules, one concept each:

- :mod:`~cordiale.data.imaging.contract`: :class:`ImagingContract`, what a study needs from a
  site's images (modality, dimensions, shape, spacing, labels, de-identification, counts).
- :mod:`~cordiale.data.imaging.manifest`: :class:`Manifest`, the CSV that lists each image with
  its label, patient and subgroups.
- :mod:`~cordiale.data.imaging.readers`: :func:`read_image` and :class:`ImageReader`, one file or
  DICOM series in, a float32 array and its metadata out, dispatched by suffix.
- :mod:`~cordiale.data.imaging.deid`: which identifying DICOM attributes a header still carries.
- :mod:`~cordiale.data.imaging.validation`: :func:`validate_manifest`, every row read and
  checked, every problem reported in one :class:`ManifestViolation`.
- :mod:`~cordiale.data.imaging.split`: :func:`split_by_patient`, a seeded, stratified split that
  keeps each patient's images on one side.
- :mod:`~cordiale.data.imaging.dataset`: :class:`ImageDataset`, a site's validated images split
  and stacked in memory.
- :mod:`~cordiale.data.imaging.synthetic`: synthetic image sets for tests and demonstrations.
- :mod:`~cordiale.data.imaging.patches`: lazy patch sampling from volumes too large to load.

pydicom, nibabel, h5py and pillow (the ``imaging`` extra) load on first use, so importing this
package needs none of them.
"""

from cordiale.data.imaging.contract import ANY_MODALITY, ImagingContract
from cordiale.data.imaging.dataset import ImageDataset
from cordiale.data.imaging.deid import DEFAULT_IDENTIFIER_FIELDS, find_identifiers
from cordiale.data.imaging.manifest import Manifest, ManifestRow
from cordiale.data.imaging.readers import (
    Image,
    ImageMeta,
    ImageReader,
    ImageReadError,
    ImageRef,
    read_image,
)
from cordiale.data.imaging.split import majority_labels, split_by_patient
from cordiale.data.imaging.validation import ImageRecord, ManifestViolation, validate_manifest

__all__ = [
    "ANY_MODALITY",
    "DEFAULT_IDENTIFIER_FIELDS",
    "Image",
    "ImageDataset",
    "ImageMeta",
    "ImageReadError",
    "ImageReader",
    "ImageRecord",
    "ImageRef",
    "ImagingContract",
    "Manifest",
    "ManifestRow",
    "ManifestViolation",
    "find_identifiers",
    "majority_labels",
    "read_image",
    "split_by_patient",
    "validate_manifest",
]
