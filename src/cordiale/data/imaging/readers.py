"""Image readers: one file (or DICOM series directory) in, a float32 array and its metadata out.

Supported, dispatched by suffix:

========================  ===============================================================
``.dcm`` ``.dicom``       DICOM, single- or multi-frame (pydicom); a file with no suffix is
``.ima`` (or none)        read as DICOM too
a directory               a DICOM series: its slices ordered along the slice normal
                          (ImagePositionPatient) or by InstanceNumber, stacked into a volume
``.nii`` ``.nii.gz``      NIfTI (nibabel); the header's zooms are the spacing
``.h5`` ``.hdf5``         one HDF5 dataset (h5py), named as ``file.h5#/group/dataset``; its
                          ``spacing_mm`` (or ilastik's ``element_size_um``) and ``modality``
                          attributes are read when present
``.npz`` ``.npy``         NumPy arrays, loaded with ``allow_pickle=False``; ``file.npz#key/17``
                          is image 17 of array ``key`` (the MedMNIST layout)
``.png`` ``.jpg`` ...     pictures (pillow), as grayscale (16-bit pictures keep their range)
========================  ===============================================================

Arrays come back as float32: DICOM values with the modality LUT (rescale slope and intercept)
applied, single-channel images with their spatial axes only, multi-channel ones channel-first
``(C, ...)``. Spacing is in millimetres, one value per spatial axis in array order.

Every failure of a library on a damaged or unexpected file becomes an :class:`ImageReadError`
whose :attr:`~ImageReadError.reason` names neither the file nor any value read from it; only the
exception's type is kept. Nothing is ever unpickled. The heavy libraries load on first use.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from cordiale.core.errors import ConfigError, DataError
from cordiale.data.imaging.deid import find_identifiers

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SUFFIXES",
    "Image",
    "ImageMeta",
    "ImageReadError",
    "ImageReader",
    "ImageRef",
    "read_image",
]

#: Largest array (as float32) a reader loads whole; bigger volumes need patch sampling.
DEFAULT_MAX_BYTES = 1 << 30

#: File-name endings and the format each is read as.
SUFFIXES: dict[str, str] = {
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".ima": "dicom",
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".hdf": "hdf5",
    ".npz": "npz",
    ".npy": "npy",
    ".png": "picture",
    ".jpg": "picture",
    ".jpeg": "picture",
    ".tif": "picture",
    ".tiff": "picture",
    ".bmp": "picture",
}
_CONTAINERS = ("hdf5", "npz")  # formats whose files hold several images: ``file#member``
_FORMAT_NAMES = {
    "dicom": "DICOM",
    "dicom-series": "DICOM series",
    "nifti": "NIfTI",
    "hdf5": "HDF5",
    "npz": "NumPy archive",
    "npy": "NumPy array",
    "picture": "picture",
}
_LIBRARIES = {
    "dicom": "pydicom",
    "nifti": "nibabel",
    "hdf5": "h5py",
    "picture": "PIL.Image",
}
_NUMERIC = "biuf"
_T = TypeVar("_T")


def _format_of(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return SUFFIXES[suffix]
    if not path.suffix:
        return "dicom"
    raise _Unsupported(path.suffix.lower())


class _Unsupported(Exception):
    def __init__(self, suffix: str) -> None:
        super().__init__(suffix)
        self.suffix = suffix


@dataclass(frozen=True)
class ImageRef:
    """Where one image lives: a file or directory, and for containers the member inside it."""

    path: Path
    member: str | None = None

    @classmethod
    def parse(cls, text: str, root: str | Path | None = None) -> ImageRef:
        """``scans/a.dcm``, ``vols.h5#/ct/p1`` or ``organ.npz#train_images/17``, under ``root``.

        ``#`` starts a member only after an HDF5 or ``.npz`` file name; elsewhere it is part of
        the name.
        """
        path_text, member = text, None
        head, sep, tail = text.partition("#")
        while sep:
            try:
                is_container = _format_of(Path(head)) in _CONTAINERS
            except _Unsupported:
                is_container = False
            if is_container:
                path_text, member = head, tail
                break
            more_head, sep, tail = tail.partition("#")
            head = f"{head}#{more_head}"
        path = Path(path_text).expanduser()
        if root is not None and not path.is_absolute():
            path = Path(root) / path
        return cls(path, member or None)

    def __str__(self) -> str:
        return str(self.path) if self.member is None else f"{self.path}#{self.member}"


@dataclass(frozen=True)
class ImageMeta:
    """What a reader learnt besides the pixels. ``shape`` and ``spacing`` are spatial only."""

    format: str
    shape: tuple[int, ...]
    channels: int = 1
    #: DICOM modality code, or None where the format records none.
    modality: str | None = None
    #: Millimetres per voxel along each spatial axis, or None where the file records none.
    spacing: tuple[float, ...] | None = None
    #: Identifying DICOM keywords (of those asked for) that hold a value; never the values.
    identifiers: tuple[str, ...] = ()

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass(frozen=True, eq=False)
class Image:
    """A float32 array, ``meta.shape`` or ``(meta.channels, *meta.shape)``, and its metadata."""

    array: np.ndarray
    meta: ImageMeta


class ImageReadError(DataError):
    """An image that cannot be read. ``reason`` names no path and no value from the file."""

    def __init__(self, ref: ImageRef | str, reason: str) -> None:
        super().__init__(f"{ref}: {reason}")
        self.reason = reason


def _library(fmt: str) -> ModuleType:
    name = _LIBRARIES[fmt]
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(
            f"reading {_FORMAT_NAMES[fmt]} files needs {name.split('.')[0]}; install the imaging "
            "extra: pip install 'cordiale[imaging]'"
        ) from None


class ImageReader:
    """Reads images one by one, keeping the last few NumPy archive arrays in memory.

    ``identifier_fields`` are the DICOM keywords to look for (:mod:`.deid`). ``ndim``, when
    known, lets containers of plain arrays drop trailing axes of length 1 and read a last axis of
    3 or 4 as colour channels (MedMNIST stores colour images ``(H, W, 3)``).
    """

    def __init__(
        self,
        *,
        identifier_fields: tuple[str, ...] | list[str] = (),
        ndim: int | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        cached_arrays: int = 2,
    ) -> None:
        self.identifier_fields = tuple(identifier_fields)
        self.ndim = ndim
        self.max_bytes = max_bytes
        self._cached_arrays = cached_arrays
        self._arrays: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        # open HDF5 files, by path: a manifest's rows often name datasets of one shared file
        self._h5files: OrderedDict[str, Any] = OrderedDict()

    def close(self) -> None:
        """Close the HDF5 files this reader keeps open."""
        while self._h5files:
            self._h5files.popitem(last=False)[1].close()

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def probe(self, ref: ImageRef | str | Path) -> ImageMeta:
        """The metadata of a NIfTI or HDF5 volume, read from its header: never its voxels.

        For volumes read in patches (:mod:`cordiale.data.imaging.patches`); other formats raise
        :class:`ImageReadError`.
        """
        ref = ref if isinstance(ref, ImageRef) else ImageRef.parse(str(ref))
        fmt = self._format(ref)
        if fmt not in ("nifti", "hdf5"):
            raise ImageReadError(
                ref, f"patches are read from NIfTI or HDF5 volumes, not from {_FORMAT_NAMES[fmt]}"
            )
        probe = self._probe_nifti if fmt == "nifti" else self._probe_hdf5
        return self._guarded(ref, fmt, lambda: probe(ref))

    def read(self, ref: ImageRef | str | Path) -> Image:
        """The image at ``ref``; raises :class:`ImageReadError` for a missing or damaged one."""
        if not isinstance(ref, ImageRef):
            ref = ImageRef.parse(str(ref))
        fmt = self._format(ref)
        read = {
            "dicom": self._read_dicom,
            "dicom-series": self._read_dicom_series,
            "nifti": self._read_nifti,
            "hdf5": self._read_hdf5,
            "npz": self._read_npz,
            "npy": self._read_npy,
            "picture": self._read_picture,
        }[fmt]
        return self._guarded(ref, fmt, lambda: read(ref))

    def _format(self, ref: ImageRef) -> str:
        path = ref.path
        if not path.exists():
            raise ImageReadError(ref, "file not found")
        if path.is_dir():
            fmt = "dicom-series"
        else:
            try:
                fmt = _format_of(path)
            except _Unsupported as e:
                raise ImageReadError(ref, f"unsupported file type {e.suffix!r}") from None
        if ref.member is not None and fmt not in _CONTAINERS:
            raise ImageReadError(ref, f"a {_FORMAT_NAMES[fmt]} file holds no named members")
        return fmt

    def _guarded(self, ref: ImageRef, fmt: str, work: Callable[[], _T]) -> _T:
        try:
            with _silenced():
                return work()
        except (ImageReadError, ConfigError, MemoryError):
            raise
        except Exception as e:  # a library's error on a damaged file: keep its type, not its text
            raise ImageReadError(
                ref, f"cannot be read as {_FORMAT_NAMES[fmt]} ({type(e).__name__})"
            ) from None

    # -- DICOM ------------------------------------------------------------------------------

    def _read_dicom(self, ref: ImageRef) -> Image:
        pydicom = _library("dicom")
        ds = pydicom.dcmread(ref.path)
        if not _has_pixels(ds):
            raise ImageReadError(ref, "DICOM file holds no pixel data")
        frames = _int(ds.get("NumberOfFrames")) or 1
        samples = _int(ds.get("SamplesPerPixel")) or 1
        arr = _dicom_pixels(ds, samples)
        channels = 1
        if samples > 1:
            arr = np.moveaxis(arr, -1, 0)
            channels = samples
        spatial = arr.shape[1:] if channels > 1 else arr.shape
        in_plane = _pixel_spacing(ds)
        spacing: tuple[float, ...] | None = in_plane
        if frames > 1 and in_plane is not None:
            z = _slice_spacing(ds, frames)
            spacing = None if z is None else (z, *in_plane)
        return Image(
            _float32(arr),
            ImageMeta(
                format="dicom",
                shape=tuple(int(s) for s in spatial),
                channels=channels,
                modality=_modality(ds),
                spacing=spacing,
                identifiers=tuple(find_identifiers(ds, self.identifier_fields)),
            ),
        )

    def _read_dicom_series(self, ref: ImageRef) -> Image:
        pydicom = _library("dicom")
        files = sorted(
            f
            for f in ref.path.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.name.upper() != "DICOMDIR"
        )
        if not files:
            raise ImageReadError(ref, "series directory holds no files")
        slices: list[Dataset] = []
        for i, f in enumerate(files, 1):
            try:
                ds = pydicom.dcmread(f)
            except Exception as e:
                raise ImageReadError(
                    ref, f"file {i} of {len(files)} in the series is not DICOM ({type(e).__name__})"
                ) from None
            if not _has_pixels(ds):
                raise ImageReadError(ref, f"file {i} of {len(files)} in the series has no pixels")
            if (_int(ds.get("NumberOfFrames")) or 1) > 1 or (
                _int(ds.get("SamplesPerPixel")) or 1
            ) > 1:
                raise ImageReadError(
                    ref, "a series directory must hold single-frame grayscale slices"
                )
            slices.append(ds)
        series = {str(ds.get("SeriesInstanceUID", "")) for ds in slices} - {""}
        if len(series) > 1:
            raise ImageReadError(ref, f"directory holds {len(series)} series; give one per row")
        modalities = {_modality(ds) for ds in slices}
        if len(modalities) > 1:
            raise ImageReadError(ref, "slices of the series differ in modality")
        keys, positional = _slice_keys(slices)
        if keys is None:
            raise ImageReadError(
                ref, "slices carry neither ImagePositionPatient nor InstanceNumber to order them"
            )
        if len(set(keys)) != len(keys):
            what = "position" if positional else "InstanceNumber"
            raise ImageReadError(ref, f"two slices of the series share a {what}")
        order = np.argsort(keys, kind="stable")
        planes = [_dicom_pixels(slices[i], 1) for i in order]
        if len({p.shape for p in planes}) > 1:
            raise ImageReadError(ref, "slices of the series differ in shape")
        volume = np.stack(planes)
        in_plane = _pixel_spacing(slices[0])
        z: float | None
        if positional and len(keys) > 1:
            gaps = np.diff(np.sort(np.asarray(keys, dtype=np.float64)))
            z = float(np.median(gaps))
            if float(gaps.max() - gaps.min()) > 0.1 * z:
                raise ImageReadError(ref, "slices are unevenly spaced (a slice missing?)")
        else:
            z = _slice_spacing(slices[0], 1)
        found = sorted({k for ds in slices for k in find_identifiers(ds, self.identifier_fields)})
        return Image(
            _float32(volume),
            ImageMeta(
                format="dicom-series",
                shape=tuple(int(s) for s in volume.shape),
                modality=modalities.pop(),
                spacing=None if in_plane is None or z is None else (z, *in_plane),
                identifiers=tuple(found),
            ),
        )

    # -- NIfTI, HDF5, NumPy, pictures -------------------------------------------------------

    def _read_nifti(self, ref: ImageRef) -> Image:
        nibabel = _library("nifti")
        img = nibabel.load(ref.path)
        shape = tuple(int(s) for s in img.shape)
        self._check_size(ref, int(np.prod(shape)) * 4)
        arr = np.asarray(img.get_fdata(dtype=np.float32))
        arr, channels = self._layout(arr)
        n_spatial = arr.ndim - (1 if channels > 1 else 0)
        return self._image("nifti", arr, channels, spacing=_nifti_spacing(img, n_spatial))

    def _probe_nifti(self, ref: ImageRef) -> ImageMeta:
        img = _library("nifti").load(ref.path)  # the header only: voxels load on access
        shape = tuple(int(s) for s in img.shape)
        while self.ndim is not None and len(shape) > self.ndim and shape[-1] == 1:
            shape = shape[:-1]
        return ImageMeta("nifti", shape, spacing=_nifti_spacing(img, len(shape)))

    def _hdf5_dataset(self, ref: ImageRef) -> Any:
        """The numeric dataset ``ref`` names, in a file this reader keeps open."""
        h5py = _library("hdf5")
        key = str(ref.path.resolve())
        f = self._h5files.get(key)
        if f is None:
            f = h5py.File(ref.path, "r")
            self._h5files[key] = f
            while len(self._h5files) > 2:
                self._h5files.popitem(last=False)[1].close()
        else:
            self._h5files.move_to_end(key)
        if ref.member is None:
            found: list[Any] = []
            f.visititems(
                lambda _, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None
            )
            if len(found) != 1:
                raise ImageReadError(
                    ref, f"HDF5 file holds {len(found)} datasets; name one as file.h5#/path"
                )
            obj = found[0]
        else:
            obj = f.get(ref.member)
            if obj is None:
                raise ImageReadError(ref, "HDF5 file has no dataset at that path")
            if not isinstance(obj, h5py.Dataset):
                raise ImageReadError(ref, "the HDF5 path names a group, not a dataset")
        if obj.dtype.kind not in _NUMERIC:
            raise ImageReadError(ref, "HDF5 dataset is not a numeric array")
        return obj

    def _read_hdf5(self, ref: ImageRef) -> Image:
        obj = self._hdf5_dataset(ref)
        self._check_size(ref, int(obj.size) * 4)
        arr, channels = self._layout(np.asarray(obj[()]))
        modality, spacing = _hdf5_attrs(obj)
        return self._image("hdf5", arr, channels, modality=modality, spacing=spacing)

    def _probe_hdf5(self, ref: ImageRef) -> ImageMeta:
        obj = self._hdf5_dataset(ref)
        shape = tuple(int(s) for s in obj.shape)
        while self.ndim is not None and len(shape) > self.ndim and shape[-1] == 1:
            shape = shape[:-1]
        modality, spacing = _hdf5_attrs(obj)
        return ImageMeta("hdf5", shape, modality=modality, spacing=spacing)

    def _read_npz(self, ref: ImageRef) -> Image:
        with np.load(ref.path, allow_pickle=False) as archive:
            names = list(archive.files)
            key, index = _npz_member(ref.member, names)
            if key is None:
                if len(names) != 1:
                    raise ImageReadError(
                        ref, f"archive holds {len(names)} arrays; name one as file.npz#name/index"
                    )
                key = names[0]
            if key not in names:
                raise ImageReadError(ref, "archive has no array of that name")
            cache_key = (str(ref.path.resolve()), key)
            arr = self._arrays.get(cache_key)
            if arr is None:
                arr = np.asarray(archive[key])
                self._remember(cache_key, arr)
            else:
                self._arrays.move_to_end(cache_key)
        return self._from_array(ref, "npz", arr, index)

    def _read_npy(self, ref: ImageRef) -> Image:
        arr = np.load(ref.path, allow_pickle=False, mmap_mode="r")
        return self._from_array(ref, "npy", arr, None)

    def _read_picture(self, ref: ImageRef) -> Image:
        pil_image = _library("picture")
        with pil_image.open(ref.path) as img:
            img.load()
            if img.mode in ("I", "F") or img.mode.startswith("I;16"):
                arr = np.asarray(img)
            else:
                arr = np.asarray(img.convert("L"))
        return self._image("picture", arr, 1)

    # -- helpers ----------------------------------------------------------------------------

    def _from_array(self, ref: ImageRef, fmt: str, arr: np.ndarray, index: int | None) -> Image:
        if arr.dtype.kind not in _NUMERIC:
            raise ImageReadError(ref, "array is not numeric")
        if index is not None:
            if arr.ndim < 2 or not 0 <= index < arr.shape[0]:
                raise ImageReadError(ref, f"index {index} is outside the array's images")
            arr = arr[index]
        self._check_size(ref, int(arr.size) * 4)
        arr, channels = self._layout(np.asarray(arr))
        return self._image(fmt, arr, channels)

    def _layout(self, arr: np.ndarray) -> tuple[np.ndarray, int]:
        """Drop trailing length-1 axes beyond ``ndim``; move a colour axis first."""
        if self.ndim is None:
            return arr, 1
        while arr.ndim > self.ndim and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim == self.ndim + 1 and arr.shape[-1] in (3, 4):
            return np.moveaxis(arr, -1, 0), int(arr.shape[-1])
        return arr, 1

    def _image(
        self,
        fmt: str,
        arr: np.ndarray,
        channels: int,
        *,
        modality: str | None = None,
        spacing: tuple[float, ...] | None = None,
    ) -> Image:
        spatial = arr.shape[1:] if channels > 1 else arr.shape
        meta = ImageMeta(
            format=fmt,
            shape=tuple(int(s) for s in spatial),
            channels=channels,
            modality=modality or None,
            spacing=spacing,
        )
        return Image(_float32(arr), meta)

    def _check_size(self, ref: ImageRef, nbytes: int) -> None:
        if nbytes > self.max_bytes:
            raise ImageReadError(
                ref,
                f"image of {nbytes / 2**20:.0f} MiB is larger than the {self.max_bytes / 2**20:.0f}"
                " MiB read whole; sample patches from it instead",
            )

    def _remember(self, key: tuple[str, str], arr: np.ndarray) -> None:
        if self._cached_arrays <= 0:
            return
        self._arrays[key] = arr
        while len(self._arrays) > self._cached_arrays:
            self._arrays.popitem(last=False)


def read_image(
    ref: ImageRef | str | Path,
    *,
    identifier_fields: tuple[str, ...] | list[str] = (),
    ndim: int | None = None,
) -> Image:
    """Read one image (see the module docstring for the formats); raises :class:`ImageReadError`."""
    with ImageReader(identifier_fields=identifier_fields, ndim=ndim, cached_arrays=0) as reader:
        return reader.read(ref)


def _nifti_spacing(img: Any, n_spatial: int) -> tuple[float, ...] | None:
    zooms = [float(z) for z in img.header.get_zooms()[:n_spatial]]
    unit = img.header.get_xyzt_units()[0]
    scale = {"meter": 1000.0, "micron": 0.001}.get(unit, 1.0)
    return tuple(z * scale for z in zooms) if len(zooms) == n_spatial else None


def _hdf5_attrs(obj: Any) -> tuple[str | None, tuple[float, ...] | None]:
    """An HDF5 dataset's modality (upper case) and spacing in mm, where its attributes say."""
    modality = _attr_str(obj.attrs.get("modality"))
    spacing = _floats(obj.attrs.get("spacing_mm", obj.attrs.get("spacing")))
    if spacing is None:
        um = _floats(obj.attrs.get("element_size_um"))
        spacing = None if um is None else tuple(v / 1000.0 for v in um)
    return (modality.upper() if modality else None), spacing


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextmanager
def _silenced() -> Iterator[None]:
    """Mute the libraries' warnings and logs while reading: pydicom's quote header values."""
    drop = _DropAll()
    loggers = [logging.getLogger(name) for name in ("pydicom", "nibabel", "h5py", "PIL")]
    for lg in loggers:
        lg.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg in loggers:
            lg.removeFilter(drop)


def _npz_member(member: str | None, names: list[str]) -> tuple[str | None, int | None]:
    if member is None or member in names:
        return member, None
    key, sep, index = member.rpartition("/")
    if sep and index.isdigit():
        return key, int(index)
    return member, None


def _float32(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr, dtype=np.float32)


def _has_pixels(ds: Dataset) -> bool:
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _dicom_pixels(ds: Dataset, samples: int) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    arr = ds.pixel_array
    if samples == 1:
        arr = apply_modality_lut(arr, ds)
        scaling = _floats(ds.get("DoseGridScaling"))
        if _modality(ds) == "RTDOSE" and scaling:
            arr = arr * scaling[0]
    return np.asarray(arr)


def _modality(ds: Dataset) -> str | None:
    value = str(ds.get("Modality", "") or "").strip().upper()
    return value or None


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _floats(value: object) -> tuple[float, ...] | None:
    """A header or attribute value as a tuple of positive floats, or None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str):
        value = value.replace("\\", " ").replace(",", " ").split()
    try:
        out = tuple(float(v) for v in np.atleast_1d(np.asarray(value, dtype=object)))
    except (TypeError, ValueError):
        return None
    return out if out and all(np.isfinite(v) and v > 0 for v in out) else None


def _attr_str(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return _attr_str(value.item())
    return value.strip() if isinstance(value, str) and value.strip() else None


def _functional(ds: Dataset, sequence: str, item: str, keyword: str) -> object:
    """``ds.<sequence>[0].<item>[0].<keyword>`` of an enhanced multi-frame header, or None."""
    try:
        return getattr(getattr(ds, sequence)[0], item)[0].get(keyword)
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


def _pixel_spacing(ds: Dataset) -> tuple[float, ...] | None:
    """(row spacing, column spacing) in mm."""
    for value in (
        ds.get("PixelSpacing"),
        _functional(ds, "SharedFunctionalGroupsSequence", "PixelMeasuresSequence", "PixelSpacing"),
        ds.get("ImagerPixelSpacing"),
    ):
        spacing = _floats(value)
        if spacing is not None and len(spacing) == 2:
            return spacing
    return None


def _slice_spacing(ds: Dataset, frames: int) -> float | None:
    """Distance between frames (or slices) in mm, from whichever attribute records it."""
    shared = "SharedFunctionalGroupsSequence"
    for value in (
        ds.get("SpacingBetweenSlices"),
        _functional(ds, shared, "PixelMeasuresSequence", "SpacingBetweenSlices"),
    ):
        z = _floats(value)
        if z is not None and len(z) == 1:
            return z[0]
    offsets = ds.get("GridFrameOffsetVector")  # RT dose: frame offsets, which may be negative
    if offsets is not None and frames > 1:
        try:
            gaps = np.abs(np.diff(np.asarray([float(v) for v in offsets])))
        except (TypeError, ValueError):
            gaps = np.empty(0)
        if gaps.size and gaps.min() > 0 and gaps.max() - gaps.min() <= 0.1 * gaps.min():
            return float(np.median(gaps))
    for value in (
        ds.get("SliceThickness"),
        _functional(ds, shared, "PixelMeasuresSequence", "SliceThickness"),
    ):
        z = _floats(value)
        if z is not None and len(z) == 1:
            return z[0]
    return None


def _slice_keys(slices: list[Dataset]) -> tuple[list[float] | None, bool]:
    """Sort keys of a series' slices: position along the slice normal, else InstanceNumber."""
    positions = [_floats_any(ds.get("ImagePositionPatient")) for ds in slices]
    orientation = _floats_any(slices[0].get("ImageOrientationPatient"))
    if all(p is not None and len(p) == 3 for p in positions) and (
        orientation is not None and len(orientation) == 6
    ):
        normal = np.cross(orientation[:3], orientation[3:])
        return [float(np.dot(p, normal)) for p in positions], True  # type: ignore[arg-type]
    numbers = [_int(ds.get("InstanceNumber")) for ds in slices]
    if all(n is not None for n in numbers):
        return [float(n) for n in numbers], False  # type: ignore[arg-type]
    return None, False


def _floats_any(value: object) -> tuple[float, ...] | None:
    """Like :func:`_floats` but signed (positions and direction cosines)."""
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    return out if all(np.isfinite(v) for v in out) else None
