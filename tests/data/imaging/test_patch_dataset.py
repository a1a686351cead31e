"""Patch datasets: patches drawn lazily from NIfTI and HDF5 volumes, labelled per volume, and a
whole volume never in memory (peak RSS measured in a clean subprocess)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from peak_rss import PEAK_SINCE_RESET

from cordiale.core.errors import ContractViolation
from cordiale.data.imaging.contract import ImagingContract
from cordiale.data.imaging.patch_dataset import PatchDataset, PatchSpec
from cordiale.data.imaging.patches import write_chunked_volume
from cordiale.data.imaging.readers import read_image
from cordiale.data.imaging.synthetic import generate

pytest.importorskip("nibabel")
h5py = pytest.importorskip("h5py")

CONTRACT = ImagingContract(name="vol", ndim=3, shape=[24, 24, 24], min_images=4, min_per_class=1)
SPEC = PatchSpec(size=[8, 8, 8], per_volume=3, eval_per_volume=2)


@pytest.mark.parametrize("fmt", ["nifti", "hdf5"])
def test_patches_are_windows_of_their_volume_labelled_with_its_label(tmp_path, fmt):
    manifest = generate(tmp_path, fmt=fmt, patients=4, images_per_patient=2, shape=(24,) * 3)[
        "oxford"
    ]

    ds = PatchDataset.from_manifest(
        manifest, CONTRACT, SPEC, test_fraction=0.25, seed=3, site="oxford"
    )
    again = PatchDataset.from_manifest(
        manifest, CONTRACT, SPEC, test_fraction=0.25, seed=3, site="oxford"
    )

    assert ds.x_train.shape == (6 * 3, 1, 8, 8, 8) and ds.x_test.shape == (2 * 2, 1, 8, 8, 8)
    assert ds.num_train == 18 and ds.num_test == 2  # test metrics are per volume
    np.testing.assert_array_equal(ds.x_train, again.x_train)  # seeded positions
    np.testing.assert_array_equal(ds.test_volumes, [0, 0, 1, 1])
    assert not set(ds.patients_train) & set(ds.patients_test)
    # every patch is a window of a volume of its label
    rows = list(csv.DictReader(manifest.open()))
    volumes = [(read_image(manifest.parent / r["path"]).array, int(r["label"])) for r in rows]
    for patch, label in zip(ds.x_train[:, 0], ds.y_train, strict=True):
        assert any(lab == label and _contains(vol, patch) for vol, lab in volumes), (
            "a patch is not a window of a volume with its label"
        )
    scores, labels = ds.volume_scores(np.array([0.2, 0.4, 0.9, 0.7]))
    np.testing.assert_allclose(scores, [0.3, 0.8])
    np.testing.assert_array_equal(labels, ds.volume_labels)


def _contains(volume: np.ndarray, patch: np.ndarray) -> bool:
    p = patch.shape[0]
    for o in np.ndindex(*(n - p + 1 for n in volume.shape)):
        if np.array_equal(volume[o[0] : o[0] + p, o[1] : o[1] + p, o[2] : o[2] + p], patch):
            return True
    return False


def test_a_patch_larger_than_a_volume_is_a_contract_problem(tmp_path):
    manifest = generate(tmp_path, fmt="nifti", patients=4, images_per_patient=1, shape=(16,) * 3)[
        "oxford"
    ]
    contract = CONTRACT.model_copy(update={"shape": None})
    with pytest.raises(ContractViolation, match=r"row 2: volume of shape 16×16×16 is smaller"):
        PatchDataset.from_manifest(
            manifest,
            contract,
            PatchSpec(size=[20, 8, 8]),
            test_fraction=0.25,
            seed=0,
            site="oxford",
        )


MiB = 2**20
VOLUME_SIDE, VOLUMES = 256, 4  # four 64 MiB float32 volumes
CHILD = PEAK_SINCE_RESET + textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import h5py  # the libraries load before the measurement: imports are not data
    import psutil
    import sklearn.model_selection

    from cordiale.data.imaging.contract import ImagingContract
    from cordiale.data.imaging.patch_dataset import PatchDataset, PatchSpec

    root, n = Path(sys.argv[1]), int(sys.argv[2])

    contract = ImagingContract(name="big", ndim=3, min_images=n, min_per_class=1)
    peak_since_reset()
    before = psutil.Process().memory_info().rss
    ds = PatchDataset.from_manifest(
        root / "manifest.csv", contract, PatchSpec(size=[32, 32, 32], per_volume=4),
        test_fraction=0.5, seed=0, site="beamline",
    )
    peak = peak_since_reset()
    print(json.dumps({"growth": peak - before, "train": list(ds.x_train.shape),
                      "test": list(ds.x_test.shape), "std": float(ds.x_train.std())}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM: Linux")
def test_building_a_patch_dataset_never_loads_a_volume(tmp_path):
    """Four 64 MiB volumes: validation reads headers, patches are hyperslabs; peak RSS growth
    stays far below one volume."""
    pytest.importorskip("psutil")
    volume_bytes = VOLUME_SIDE**3 * 4
    with (tmp_path / "manifest.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "patient_id"])
        for i in range(VOLUMES):
            side = (VOLUME_SIDE,) * 3
            write_chunked_volume(tmp_path / f"v{i}.h5", "/ct", side, (32, 32, 32), seed=i)
            w.writerow([f"v{i}.h5#/ct", i % 2, f"P{i}"])
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), str(VOLUMES)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"\npeak RSS growth {report['growth'] / MiB:.1f} MiB building a patch dataset from "
        f"{VOLUMES} volumes of {volume_bytes / MiB:.0f} MiB"
    )
    assert report["train"] == [8, 1, 32, 32, 32] and report["test"] == [8, 1, 32, 32, 32]
    assert 0.9 < report["std"] < 1.1  # real voxel values (standard normal)
    assert report["growth"] < volume_bytes / 4
