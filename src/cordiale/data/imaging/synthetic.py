"""Synthetic multi-site imaging data: real DICOM, NIfTI or HDF5 files with a manifest per site.

For tests, examples and benchmarks (``cordiale data synth-imaging``). Every image is a textured
background; a positive image (label 1) also holds a bright blob (a soft disc, or a ball in 3D) of
random position, radius and contrast. Each site then applies its own **scanner effects**, so that
sites differ the way real hospitals do (a domain shift that federated models must survive):

* ``gamma``: contrast response, ``x ** gamma`` on the canonical [0, 1] image;
* ``blur_sigma``: point-spread function, a Gaussian blur (pixels);
* ``downsample``: acquisition resolution: block-averaged by this factor, noised at that
  resolution, then upsampled back (nearest) to the common grid;
* ``noise``: additive Gaussian noise (canonical units, at acquisition resolution);
* ``intensity_scale``: gain; stored values are ``round(1000 * intensity_scale * x)`` (uint16).

With ``lesions = k`` a positive image holds k blobs: volumes for patch-based training, where a
patch labelled with its volume's label should usually see a lesion.

Images of one patient share their anatomy (a smooth background field), so that a split that
leaks a patient across train and test is rewarded, as it is on real data. Labels are drawn per
image with an exact count per site (``round(prevalence * images)``). Patient ids are pseudonyms
(``P`` and 10 hex digits, unique per site); no file holds a direct identifier.

Layout of ``generate(out, ...)``::

    out/<site>/manifest.csv              path,label,patient_id,site,scanner
    out/<site>/<patient_id>/00.dcm       fmt="dicom"  (path relative to the manifest)
    out/<site>/<patient_id>/00.nii.gz    fmt="nifti"
    out/<site>/images.h5                 fmt="hdf5": rows read images.h5#/images/<patient_id>/00

The same seed gives the same pixel values in every format (and byte-identical DICOM and NIfTI
files). Arrays are written in the order they are generated (rows, columns; or slices, rows,
columns for 3D); spacing follows that order: DICOM ``PixelSpacing`` (and ``SliceThickness``),
NIfTI zooms, the HDF5 dataset attribute ``spacing``.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cordiale.core.errors import ConfigError, UnknownNameError

__all__ = [
    "DEFAULT_SITES",
    "FORMATS",
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "Format",
    "SiteScanner",
    "generate",
    "generate_site",
    "render_image",
]

Format = Literal["dicom", "nifti", "hdf5"]
FORMATS: tuple[str, ...] = ("dicom", "nifti", "hdf5")
MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS: tuple[str, ...] = ("path", "label", "patient_id", "site", "scanner")
HDF5_NAME = "images.h5"
#: Stored counts per canonical unit (before the scanner's gain).
UNIT = 1000.0
_SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_MULTIFRAME_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
_SLICE_LOCATION_VECTOR = 0x00182005


@dataclass(frozen=True)
class SiteScanner:
    """One site's scanner: what it does to the canonical image, and its pixel spacing (mm)."""

    model: str = "generic"
    intensity_scale: float = 1.0
    gamma: float = 1.0
    noise: float = 0.02
    blur_sigma: float = 0.0
    downsample: int = 1
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    slice_thickness: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if not self.intensity_scale > 0:
            problems.append(f"intensity_scale must be > 0, got {self.intensity_scale}")
        if not self.gamma > 0:
            problems.append(f"gamma must be > 0, got {self.gamma}")
        if not self.noise >= 0:
            problems.append(f"noise must be >= 0, got {self.noise}")
        if not self.blur_sigma >= 0:
            problems.append(f"blur_sigma must be >= 0, got {self.blur_sigma}")
        if int(self.downsample) != self.downsample or self.downsample < 1:
            problems.append(f"downsample must be an integer >= 1, got {self.downsample}")
        if len(self.pixel_spacing) != 2 or not all(s > 0 for s in self.pixel_spacing):
            problems.append(f"pixel_spacing must be two positive numbers, {self.pixel_spacing}")
        if not self.slice_thickness > 0:
            problems.append(f"slice_thickness must be > 0, got {self.slice_thickness}")
        if problems:
            raise ConfigError(f"invalid scanner {self.model!r}: " + "; ".join(problems))

    def spacing(self, ndim: int) -> tuple[float, ...]:
        """Spacing in mm along each array axis: (row, col) or (slice, row, col)."""
        if ndim == 2:
            return tuple(self.pixel_spacing)
        return (self.slice_thickness, *self.pixel_spacing)

    def describe(self) -> str:
        """A short human summary of the scanner effects."""
        parts = [f"gain x{self.intensity_scale:g}", f"gamma {self.gamma:g}"]
        parts.append(f"noise {self.noise:g}")
        if self.blur_sigma:
            parts.append(f"blur {self.blur_sigma:g}px")
        if self.downsample > 1:
            parts.append(f"res 1/{self.downsample}")
        return ", ".join(parts)

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The canonical image in [0, 1] as this scanner stores it: uint16 counts."""
        x = np.power(np.clip(image, 0.0, None), self.gamma)
        x = _gaussian_blur(x, self.blur_sigma)
        f = int(self.downsample)
        low = _block_mean(x, f)
        if self.noise:
            low = low + self.noise * rng.standard_normal(low.shape)
        x = _upsample(low, f, image.shape)
        counts = np.rint(UNIT * self.intensity_scale * x)
        return np.clip(counts, 0, np.iinfo(np.uint16).max).astype(np.uint16)


#: Three sites whose scanners differ clearly: gain, contrast, noise, sharpness and resolution.
DEFAULT_SITES: dict[str, SiteScanner] = {
    "oxford": SiteScanner(
        model="OX-HR7 (sharp, low noise)",
        intensity_scale=1.0,
        gamma=1.0,
        noise=0.02,
        blur_sigma=0.0,
        downsample=1,
        pixel_spacing=(0.7, 0.7),
        slice_thickness=1.0,
    ),
    "paris-cite": SiteScanner(
        model="PC-Lumen 3 (bright, soft)",
        intensity_scale=1.8,
        gamma=0.7,
        noise=0.04,
        blur_sigma=1.2,
        downsample=1,
        pixel_spacing=(0.8, 0.8),
        slice_thickness=1.5,
    ),
    "pasteur": SiteScanner(
        model="PA-Legacy 1 (dim, noisy, low-res)",
        intensity_scale=0.6,
        gamma=1.4,
        noise=0.07,
        blur_sigma=0.5,
        downsample=2,
        pixel_spacing=(1.0, 1.0),
        slice_thickness=2.5,
    ),
}


# --- image synthesis ---------------------------------------------------------------------------


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected borders (numpy only)."""
    if sigma <= 0:
        return x.astype(np.float64, copy=False)
    radius = max(1, math.ceil(3 * sigma))
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (k / sigma) ** 2)
    weights /= weights.sum()
    out = x.astype(np.float64, copy=False)
    for axis in range(out.ndim):
        n = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        acc = np.zeros(out.shape, dtype=np.float64)
        for i, w in enumerate(weights):
            index = [slice(None)] * out.ndim
            index[axis] = slice(i, i + n)
            acc += w * padded[tuple(index)]
        out = acc
    return out


def _block_mean(x: np.ndarray, f: int) -> np.ndarray:
    """Average over f**ndim blocks (edges padded by replication): the low-resolution image."""
    if f <= 1:
        return x
    padded = np.pad(x, [(0, -n % f) for n in x.shape], mode="edge")
    shape: list[int] = []
    for n in padded.shape:
        shape += [n // f, f]
    return padded.reshape(shape).mean(axis=tuple(range(1, 2 * x.ndim, 2)))


def _upsample(x: np.ndarray, f: int, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour upsampling by f, cropped to ``shape``."""
    if f <= 1:
        return x
    for axis in range(x.ndim):
        x = np.repeat(x, f, axis=axis)
    return x[tuple(slice(0, n) for n in shape)]


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Smooth random texture with zero mean and unit standard deviation."""
    field = _gaussian_blur(rng.standard_normal(shape), sigma)
    return (field - field.mean()) / (field.std() + 1e-12)


def _blob(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A soft disc (ball in 3D) of random centre, radius and contrast, fully inside the image."""
    size = min(shape)
    radius = rng.uniform(0.07, 0.14) * size
    amplitude = rng.uniform(0.4, 0.6)
    margin = radius + 2
    centre = [rng.uniform(margin, n - 1 - margin) for n in shape]
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)))
    edge = 0.8  # pixels: the width of the soft border
    return amplitude / (1.0 + np.exp((r - radius) / edge))


def render_image(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    *,
    lesion: bool,
    anatomy: np.ndarray | None = None,
    lesions: int = 1,
) -> np.ndarray:
    """One canonical image in [0, 1] (before scanner effects).

    ``anatomy`` is the patient's smooth background field (zero mean, unit variance); a fresh one
    is drawn when it is None. A positive image holds ``lesions`` blobs (several spread over a
    volume, so that most patches of it see one).
    """
    sigma = max(1.0, min(shape) / 16)
    if anatomy is None:
        anatomy = _smooth_field(rng, shape, sigma)
    image = 0.30 + 0.06 * anatomy + 0.025 * _smooth_field(rng, shape, sigma / 3)
    if lesion:
        for _ in range(lesions):
            image = image + _blob(rng, shape)
    return np.clip(image, 0.0, 1.0)


# --- writers -----------------------------------------------------------------------------------


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["cordiale-synth", *map(str, parts)]))


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    spacing: tuple[float, ...],
    patient_id: str,
    site: str,
    scanner: SiteScanner,
    seed: int,
    image_index: int,
) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    multiframe = pixels.ndim == 3
    sop_class = _MULTIFRAME_WORD_SC if multiframe else _SECONDARY_CAPTURE
    sop_uid = _uid(seed, site, patient_id, image_index, "image")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    # Patient module: type 2 attributes present but empty; the id is a pseudonym.
    ds.PatientName = ""
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic image (cordiale); no real patient"
    # General study / series: one study and one series per patient.
    ds.StudyInstanceUID = _uid(seed, site, patient_id, "study")
    ds.SeriesInstanceUID = _uid(seed, site, patient_id, "series")
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.Modality = "OT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = image_index + 1
    # Equipment: the scanner, not the institution.
    ds.ConversionType = "SYN"
    ds.Manufacturer = "Cordiale synthetic"
    ds.ManufacturerModelName = scanner.model
    ds.ImageType = ["DERIVED", "SECONDARY"]
    # Image pixel module.
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape[-2:])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [f"{s:g}" for s in spacing[-2:]]
    if multiframe:
        ds.NumberOfFrames = int(pixels.shape[0])
        ds.SliceThickness = f"{spacing[0]:g}"
        ds.FrameIncrementPointer = _SLICE_LOCATION_VECTOR
        ds.SliceLocationVector = [f"{i * spacing[0]:g}" for i in range(pixels.shape[0])]
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _write_nifti(path: Path, pixels: np.ndarray, *, spacing: tuple[float, ...]) -> None:
    import nibabel as nib

    affine = np.eye(4)
    for axis, s in enumerate(spacing):
        affine[axis, axis] = s
    img = nib.Nifti1Image(pixels, affine)
    img.header.set_zooms(spacing)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"cordiale synthetic image"
    nib.save(img, path)


# --- sites -------------------------------------------------------------------------------------


def _site_rng_seed(seed: int, site: str) -> np.random.SeedSequence:
    site_key = int.from_bytes(hashlib.sha256(site.encode()).digest()[:8], "little")
    return np.random.SeedSequence([int(seed), site_key])


def _pseudonyms(seed: int, site: str, n: int) -> list[str]:
    out: list[str] = []
    counter = 0
    while len(out) < n:
        digest = hashlib.sha256(f"cordiale-synth:{seed}:{site}:{counter}".encode()).hexdigest()
        pid = "P" + digest[:10].upper()
        if pid not in out:
            out.append(pid)
        counter += 1
    return out


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(n) for n in shape)
    if len(out) not in (2, 3) or any(n < 16 for n in out):
        raise ConfigError(
            f"image shape must be 2D or 3D with every side >= 16 pixels; got {tuple(shape)}"
        )
    return out


def _check_format(fmt: str) -> Format:
    if fmt not in FORMATS:
        raise UnknownNameError("format", fmt, FORMATS)
    return fmt  # type: ignore[return-value]


def generate_site(
    out_dir: str | Path,
    site: str,
    scanner: SiteScanner,
    *,
    patients: int = 20,
    images_per_patient: int = 4,
    prevalence: float = 0.5,
    shape: Sequence[int] = (64, 64),
    fmt: Format | str = "nifti",
    seed: int = 0,
    lesions: int = 1,
) -> Path:
    """Write one site's images under ``out_dir`` (the site's own folder) and its manifest.

    Returns the manifest's path, ``out_dir/manifest.csv``. Files already there are overwritten;
    the manifest lists exactly the images of this call.
    """
    if not _SITE_NAME.match(site):
        raise ConfigError(
            f"site name must be lower-case letters, digits, '.', '_' or '-'; got {site!r}"
        )
    fmt = _check_format(fmt)
    shape_t = _check_shape(shape)
    if patients < 1 or images_per_patient < 1:
        raise ConfigError(
            f"need at least one patient and one image per patient; got {patients} patients, "
            f"{images_per_patient} images per patient"
        )
    if not 1 <= lesions <= 32:
        raise ConfigError(f"lesions per positive image must be within [1, 32]; got {lesions}")
    if not 0.0 <= prevalence <= 1.0:
        raise ConfigError(f"prevalence must be within [0, 1]; got {prevalence} for {site!r}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_images = patients * images_per_patient
    seq = _site_rng_seed(seed, site)
    label_seq, *patient_seqs = seq.spawn(patients + 1)
    n_pos = round(prevalence * n_images)
    labels = np.zeros(n_images, dtype=np.int64)
    labels[np.random.default_rng(label_seq).permutation(n_images)[:n_pos]] = 1
    spacing = scanner.spacing(len(shape_t))
    pids = _pseudonyms(seed, site, patients)
    sigma = max(1.0, min(shape_t) / 16)

    h5file: Any = None
    if fmt == "hdf5":
        import h5py

        h5file = h5py.File(out / HDF5_NAME, "w", track_order=True)
        h5file.attrs["site"] = site
        h5file.attrs["scanner"] = scanner.model
        h5file.attrs["generator"] = "cordiale.data.imaging.synthetic"
    rows: list[dict[str, object]] = []
    try:
        for p, (pid, pseq) in enumerate(zip(pids, patient_seqs, strict=True)):
            rng = np.random.default_rng(pseq)
            anatomy = _smooth_field(rng, shape_t, sigma)
            for k in range(images_per_patient):
                label = int(labels[p * images_per_patient + k])
                canonical = render_image(
                    rng, shape_t, lesion=bool(label), anatomy=anatomy, lesions=lesions
                )
                pixels = scanner.apply(canonical, rng)
                name = f"{k:02d}"
                if fmt == "dicom":
                    rel = f"{pid}/{name}.dcm"
                    (out / pid).mkdir(exist_ok=True)
                    _write_dicom(
                        out / rel,
                        pixels,
                        spacing=spacing,
                        patient_id=pid,
                        site=site,
                        scanner=scanner,
                        seed=seed,
                        image_index=k,
                    )
                elif fmt == "nifti":
                    rel = f"{pid}/{name}.nii.gz"
                    (out / pid).mkdir(exist_ok=True)
                    _write_nifti(out / rel, pixels, spacing=spacing)
                else:
                    key = f"/images/{pid}/{name}"
                    dset = h5file.create_dataset(
                        key,
                        data=pixels,
                        chunks=pixels.shape,
                        compression="gzip",
                        compression_opts=4,
                        shuffle=True,
                        track_times=False,
                    )
                    dset.attrs["spacing"] = np.asarray(spacing, dtype=np.float64)
                    dset.attrs["patient_id"] = pid
                    rel = f"{HDF5_NAME}#{key}"
                rows.append(
                    {
                        "path": rel,
                        "label": label,
                        "patient_id": pid,
                        "site": site,
                        "scanner": scanner.model,
                    }
                )
    finally:
        if h5file is not None:
            h5file.close()

    manifest = out / MANIFEST_NAME
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def generate(
    out_dir: str | Path,
    *,
    sites: Mapping[str, SiteScanner] | None = None,
    fmt: Format | str = "nifti",
    patients: int = 20,
    images_per_patient: int = 4,
    prevalence: float | Mapping[str, float] = 0.5,
    shape: Sequence[int] = (64, 64),
    seed: int = 0,
    lesions: int = 1,
) -> dict[str, Path]:
    """Write every site under ``out_dir/<site>/``; returns each site's manifest path.

    ``sites`` defaults to :data:`DEFAULT_SITES`. ``prevalence`` is one fraction for all sites or
    a mapping site to fraction (sites it does not name get 0.5). Each site's data depend only on
    ``seed`` and the site's name, not on which other sites are generated.
    """
    chosen = dict(DEFAULT_SITES if sites is None else sites)
    if not chosen:
        raise ConfigError("no site to generate")
    if isinstance(prevalence, Mapping):
        unknown = sorted(set(prevalence) - set(chosen))
        if unknown:
            raise ConfigError(
                f"prevalence given for unknown site(s) {', '.join(unknown)}; "
                f"sites are: {', '.join(chosen)}"
            )
    root = Path(out_dir)
    manifests: dict[str, Path] = {}
    for site, scanner in chosen.items():
        p = prevalence.get(site, 0.5) if isinstance(prevalence, Mapping) else prevalence
        manifests[site] = generate_site(
            root / site,
            site,
            scanner,
            patients=patients,
            images_per_patient=images_per_patient,
            prevalence=float(p),
            shape=shape,
            fmt=fmt,
            seed=seed,
            lesions=lesions,
        )
    return manifests
