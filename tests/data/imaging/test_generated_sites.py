"""The generator's files go through the site adapters as a hospital's would, in every format."""

from __future__ import annotations

import numpy as np
import pytest

from cordiale.data.imaging.contract import ImagingContract
from cordiale.data.imaging.dataset import ImageDataset
from cordiale.data.imaging.synthetic import generate


@pytest.mark.parametrize("fmt", ["dicom", "nifti", "hdf5"])
def test_generated_sites_validate_and_split_by_patient(tmp_path, fmt):
    manifests = generate(tmp_path, fmt=fmt, patients=6, images_per_patient=3, seed=1)
    contract = ImagingContract(
        name="synthetic-lesions",
        modality="OT" if fmt == "dicom" else "any",
        ndim=2,
        shape=[64, 64],
        min_images=10,
    )
    means = {}
    for site, manifest in manifests.items():
        ds = ImageDataset.from_manifest(manifest, contract, test_fraction=0.34, seed=0, site=site)
        assert ds.num_train + ds.num_test == 18
        assert not set(ds.patients_train) & set(ds.patients_test)  # no patient on both sides
        means[site] = float(np.mean(ds.x_train))
    # the scanners differ: the same anatomy comes out at clearly different intensities
    assert max(means.values()) > 2 * min(means.values())
