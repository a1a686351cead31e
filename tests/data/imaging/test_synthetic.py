"""The synthetic multi-site imaging generator: real files, labels that match the images, sites that
differ the way scanners do, determinism, and the manifest."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from cordiale.cli.imaging import data_app, parse_prevalence, parse_shape
from cordiale.core.errors import ConfigError, UnknownNameError
from cordiale.data.imaging.synthetic import (
    DEFAULT_SITES,
    MANIFEST_COLUMNS,
    SiteScanner,
    _gaussian_blur,
    generate,
    generate_site,
)

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
h5py = pytest.importorskip("h5py")

PATIENTS, PER_PATIENT = 4, 3


def read_manifest(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def load(manifest: Path, row: dict[str, str]) -> np.ndarray:
    """Read one manifest row with the library its format calls for."""
    rel = row["path"]
    if "#" in rel:
        file, _, key = rel.partition("#")
        with h5py.File(manifest.parent / file, "r") as f:
            return f[key][()]
    if rel.endswith(".dcm"):
        return pydicom.dcmread(manifest.parent / rel).pixel_array
    return np.asanyarray(nib.load(manifest.parent / rel).dataobj)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("synth")
    return {
        fmt: generate(
            root / fmt, fmt=fmt, patients=PATIENTS, images_per_patient=PER_PATIENT, seed=7
        )
        for fmt in ("dicom", "nifti", "hdf5")
    }


@pytest.fixture(scope="module")
def larger(tmp_path_factory) -> dict[str, Path]:
    """Enough images per site for statistics (HDF5 is the quickest to write)."""
    return generate(
        tmp_path_factory.mktemp("stats"), fmt="hdf5", patients=10, images_per_patient=4, seed=3
    )


# --- real files ----------------------------------------------------------------------------------


def test_dicom_files_are_real_and_carry_no_direct_identifier(sets):
    for site, manifest in sets["dicom"].items():
        scanner = DEFAULT_SITES[site]
        for row in read_manifest(manifest):
            ds = pydicom.dcmread(manifest.parent / row["path"])
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.Modality == "OT"
            assert (ds.Rows, ds.Columns) == (64, 64)
            assert ds.BitsAllocated == 16 and ds.PixelRepresentation == 0
            assert [float(s) for s in ds.PixelSpacing] == list(scanner.pixel_spacing)
            assert ds.pixel_array.shape == (64, 64) and ds.pixel_array.dtype == np.uint16
            assert not ds.get("PatientName")
            assert not ds.get("PatientBirthDate")
            assert ds.PatientID == row["patient_id"]
            assert ds.PatientIdentityRemoved == "YES"
            assert "InstitutionName" not in ds
            assert ds.ManufacturerModelName == row["scanner"] == scanner.model


def test_nifti_files_have_the_shape_and_the_spacing_as_zooms(sets):
    for site, manifest in sets["nifti"].items():
        for row in read_manifest(manifest):
            img = nib.load(manifest.parent / row["path"])
            assert img.shape == (64, 64)
            assert img.header.get_zooms() == pytest.approx(DEFAULT_SITES[site].pixel_spacing)


def test_hdf5_rows_point_to_chunked_datasets(sets):
    for site, manifest in sets["hdf5"].items():
        for row in read_manifest(manifest):
            file, sep, key = row["path"].partition("#")
            assert sep and file == "images.h5" and key.startswith("/images/")
            with h5py.File(manifest.parent / file, "r") as f:
                ds = f[key]
                assert ds.shape == (64, 64) and ds.dtype == np.uint16
                assert ds.chunks is not None
                assert tuple(ds.attrs["spacing"]) == DEFAULT_SITES[site].pixel_spacing
                assert ds.attrs["patient_id"] == row["patient_id"]


def test_the_same_seed_gives_the_same_pixels_in_every_format(sets):
    for site in DEFAULT_SITES:
        rows = {fmt: read_manifest(sets[fmt][site]) for fmt in sets}
        assert [r["label"] for r in rows["dicom"]] == [r["label"] for r in rows["hdf5"]]
        for i in range(len(rows["dicom"])):
            ref = load(sets["dicom"][site], rows["dicom"][i])
            for fmt in ("nifti", "hdf5"):
                np.testing.assert_array_equal(load(sets[fmt][site], rows[fmt][i]), ref)


def test_volumes_in_3d(tmp_path):
    shape = (20, 24, 28)
    scanner = DEFAULT_SITES["pasteur"]
    m_dcm = generate_site(
        tmp_path / "d",
        "pasteur",
        scanner,
        patients=1,
        images_per_patient=2,
        shape=shape,
        fmt="dicom",
    )
    m_nii = generate_site(
        tmp_path / "n",
        "pasteur",
        scanner,
        patients=1,
        images_per_patient=2,
        shape=shape,
        fmt="nifti",
    )
    row = read_manifest(m_dcm)[0]
    ds = pydicom.dcmread(m_dcm.parent / row["path"])
    assert ds.SOPClassUID == pydicom.uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    assert int(ds.NumberOfFrames) == 20 and ds.pixel_array.shape == shape
    assert float(ds.SliceThickness) == scanner.slice_thickness
    img = nib.load(m_nii.parent / read_manifest(m_nii)[0]["path"])
    assert img.shape == shape
    assert img.header.get_zooms() == pytest.approx(scanner.spacing(3))
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), ds.pixel_array)


# --- content -------------------------------------------------------------------------------------


def blob_score(image: np.ndarray) -> float:
    """Brightest smoothed region over the image median: high where a blob is."""
    x = image.astype(np.float64)
    median = float(np.median(x))
    return (float(_gaussian_blur(x, 1.5).max()) - median) / median


def test_labels_match_the_presence_of_a_blob(larger):
    for site, manifest in larger.items():
        rows = read_manifest(manifest)
        labels = np.array([int(r["label"]) for r in rows])
        scores = np.array([blob_score(load(manifest, r)) for r in rows])
        pos, neg = scores[labels == 1], scores[labels == 0]
        auc = float((pos[:, None] > neg[None, :]).mean())
        assert auc > 0.95, (site, auc)
        assert pos.mean() > 1.8 * neg.mean(), (site, pos.mean(), neg.mean())


def test_sites_differ_in_intensity_statistics(larger):
    means, noise = {}, {}
    for site, manifest in larger.items():
        images = [load(manifest, r).astype(np.float64) for r in read_manifest(manifest)]
        means[site] = float(np.mean([x.mean() for x in images]))
        # high-frequency residual relative to the level: the visible noise
        noise[site] = float(
            np.mean([(x - _gaussian_blur(x, 2.0)).std() / x.mean() for x in images])
        )
    assert means["paris-cite"] > 1.5 * means["oxford"] > 2.25 * means["pasteur"], means
    assert noise["pasteur"] > 2 * noise["oxford"], noise


def test_scanner_effects_one_by_one():
    flat = np.full((32, 32), 0.25)
    rng = np.random.default_rng(0)
    clean = SiteScanner(noise=0.0)
    np.testing.assert_array_equal(clean.apply(flat, rng), np.full((32, 32), 250, np.uint16))
    assert SiteScanner(noise=0.0, intensity_scale=2.0).apply(flat, rng).mean() == 500
    assert SiteScanner(noise=0.0, gamma=0.5).apply(flat, rng).mean() == 500  # 0.25 ** 0.5
    noisy = SiteScanner(noise=0.05).apply(flat, rng).astype(float)
    assert noisy.std() == pytest.approx(50, rel=0.2)
    # resolution: noise drawn at half resolution comes back as 2x2 blocks
    low = SiteScanner(noise=0.05, downsample=2).apply(flat, rng)
    assert (low[::2, ::2] == low[1::2, 1::2]).all() and (low[::2, ::2] == low[::2, 1::2]).all()
    # blur: a sharp edge is spread over several pixels
    edge = np.zeros((32, 32))
    edge[:, 16:] = 0.5
    sharp = SiteScanner(noise=0.0).apply(edge, rng)[0]
    soft = SiteScanner(noise=0.0, blur_sigma=2.0).apply(edge, rng)[0]
    assert len(np.unique(sharp)) == 2 and len(np.unique(soft)) > 6
    with pytest.raises(ConfigError, match="gamma"):
        SiteScanner(gamma=0)


# --- determinism and manifest --------------------------------------------------------------------


def files_under(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("fmt", ["dicom", "nifti", "hdf5"])
def test_deterministic_for_a_seed(tmp_path, fmt):
    kw = {"fmt": fmt, "patients": 2, "images_per_patient": 2, "seed": 11}
    generate(tmp_path / "a", **kw)
    generate(tmp_path / "b", **kw)
    assert files_under(tmp_path / "a") == files_under(tmp_path / "b")
    # a site's data do not depend on the other sites generated
    alone = generate_site(
        tmp_path / "alone",
        "pasteur",
        DEFAULT_SITES["pasteur"],
        patients=2,
        images_per_patient=2,
        fmt=fmt,
        seed=11,
    )
    assert files_under(alone.parent) == files_under(tmp_path / "a" / "pasteur")


def test_another_seed_gives_other_images(tmp_path):
    a = generate_site(tmp_path / "a", "oxford", DEFAULT_SITES["oxford"], fmt="hdf5", seed=1)
    b = generate_site(tmp_path / "b", "oxford", DEFAULT_SITES["oxford"], fmt="hdf5", seed=2)
    ra, rb = read_manifest(a)[0], read_manifest(b)[0]
    assert ra["patient_id"] != rb["patient_id"]
    assert not np.array_equal(load(a, ra), load(b, rb))


def test_manifest_columns_relative_paths_and_patients(sets):
    all_ids: list[set[str]] = []
    for fmt, manifests in sets.items():
        for site, manifest in manifests.items():
            assert manifest == manifest.parent / "manifest.csv"
            assert manifest.parent.name == site
            with manifest.open(encoding="utf-8") as fh:
                assert fh.readline().strip() == ",".join(MANIFEST_COLUMNS)
            rows = read_manifest(manifest)
            assert len(rows) == PATIENTS * PER_PATIENT
            for row in rows:
                rel = row["path"].partition("#")[0]
                assert not Path(rel).is_absolute() and ".." not in Path(rel).parts
                assert (manifest.parent / rel).is_file()
                assert row["site"] == site and row["label"] in ("0", "1")
            ids = [r["patient_id"] for r in rows]
            assert len(set(ids)) == PATIENTS
            assert all(ids.count(i) == PER_PATIENT for i in set(ids))
            assert sum(int(r["label"]) for r in rows) == round(0.5 * len(rows))
            if fmt == "dicom":
                all_ids.append(set(ids))
    assert len(set.union(*all_ids)) == PATIENTS * len(DEFAULT_SITES)  # unique across sites too


def test_prevalence_per_site(tmp_path):
    sites = {k: DEFAULT_SITES[k] for k in ("oxford", "pasteur")}
    manifests = generate(
        tmp_path,
        sites=sites,
        fmt="hdf5",
        patients=5,
        images_per_patient=2,
        prevalence={"oxford": 0.2, "pasteur": 1.0},
    )
    positives = {s: sum(int(r["label"]) for r in read_manifest(m)) for s, m in manifests.items()}
    assert positives == {"oxford": 2, "pasteur": 10}
    with pytest.raises(ConfigError, match="unknown site"):
        generate(tmp_path, sites=sites, fmt="hdf5", prevalence={"nowhere": 0.1})


def test_invalid_arguments(tmp_path):
    with pytest.raises(UnknownNameError, match="dicom, hdf5, nifti"):
        generate(tmp_path, fmt="png")
    with pytest.raises(ConfigError, match="shape"):
        generate(tmp_path, shape=(64,))
    with pytest.raises(ConfigError, match="prevalence"):
        generate(tmp_path, prevalence=1.5)
    with pytest.raises(ConfigError, match="site name"):
        generate_site(tmp_path, "../escape", SiteScanner())


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_synth_imaging(tmp_path):
    app = typer.Typer()
    app.add_typer(data_app, name="data")  # as cordiale.cli.app registers it
    result = CliRunner().invoke(
        app,
        [
            "data",
            "synth-imaging",
            "--out",
            str(tmp_path),
            "--format",
            "dicom",
            "--patients",
            "2",
            "--images-per-patient",
            "2",
            "--seed",
            "5",
            "--prevalence",
            "oxford=1",
            "--sites",
            "oxford,pasteur",
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    for text in ("oxford", "pasteur", "gain x0.6", "res 1/2"):
        assert text in result.output
    assert not (tmp_path / "paris-cite").exists()
    assert len(read_manifest(tmp_path / "oxford" / "manifest.csv")) == 4
    assert len(list((tmp_path / "oxford").rglob("*.dcm"))) == 4


def test_cli_parsers():
    assert parse_shape("32x32x16") == (32, 32, 16)
    assert parse_prevalence("0.25") == 0.25
    assert parse_prevalence("oxford=0.1, pasteur=0.9") == {"oxford": 0.1, "pasteur": 0.9}
    with pytest.raises(ConfigError):
        parse_shape("big")
    with pytest.raises(ConfigError):
        parse_prevalence("oxford=lots")
