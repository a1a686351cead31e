"""Lazy patches from HDF5 / NeXus volumes larger than memory, as beamlines write them.

:class:`PatchSampler` opens the file with h5py and reads, per patch, only the requested
hyperslab: memory holds the patches asked for plus a bounded chunk cache (``cache_bytes``),
never the volume. Reads follow the dataset's chunking; with ``align=True`` patch origins are
multiples of the chunk shape, so a patch no larger than a chunk touches exactly one chunk per
axis (the fastest reads on compressed data). A NeXus file can be opened without a dataset path:
the ``default`` attributes lead to the NXdata group and its ``signal`` dataset.

:func:`write_chunked_volume` writes a large synthetic volume chunk by chunk (memory bounded by
one chunk) for tests and benchmarks.

:class:`NiftiPatchSampler` does the same for NIfTI files through nibabel's array proxy: an
uncompressed ``.nii`` is read by seeking (memory-mapped), a ``.nii.gz`` by decompressing the
stream up to each patch (memory bounded, slower; nibabel uses ``indexed_gzip`` when installed).
:func:`open_patch_sampler` picks the sampler for a manifest's image reference.

An open sampler is not shared across processes: pickling it (a DataLoader worker) carries the
path and settings, and the copy reopens the file.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cordiale.core.errors import ConfigError, DataError

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "NiftiPatchSampler",
    "PatchSampler",
    "open_patch_sampler",
    "write_chunked_volume",
]

#: Default h5py raw-data chunk cache per open file: modest, so memory stays bounded.
DEFAULT_CACHE_BYTES = 16 * 2**20


def _nexus_signal(h5file: Any) -> str:
    """The NeXus default plottable dataset: root ``default`` -> entry ``default`` -> ``signal``."""
    node = h5file
    for _ in range(8):  # root -> NXentry -> (NXsubentry) -> NXdata
        attrs = node.attrs
        if "signal" in attrs:
            signal = attrs["signal"]
            signal = signal.decode() if isinstance(signal, bytes) else str(signal)
            return f"{node.name.rstrip('/')}/{signal}"
        if "default" not in attrs:
            break
        target = attrs["default"]
        target = target.decode() if isinstance(target, bytes) else str(target)
        if target not in node:
            break
        node = node[target]
    raise DataError(
        "no dataset given and the file has no NeXus default signal "
        "(root @default -> NXentry @default -> NXdata @signal); pass the dataset path"
    )


class PatchSampler:
    """Random or gridded patches of an HDF5 dataset, read lazily one hyperslab at a time.

    ``patch_shape`` has one size per axis of the dataset. Patches are float32; a dataset of
    another numeric type is converted by HDF5 while it is read.
    """

    def __init__(
        self,
        path: str | Path,
        dataset: str | None,
        patch_shape: Sequence[int],
        *,
        seed: int = 0,
        align: bool = False,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.path = Path(path)
        self.patch_shape = tuple(int(n) for n in patch_shape)
        self.seed = seed
        self.align = align
        self.cache_bytes = int(cache_bytes)
        self._rng = np.random.default_rng(seed)
        self._file: Any = None
        self._open(dataset)

    def _open(self, dataset: str | None) -> None:
        import h5py

        try:
            # rdcc_nslots: a prime well above the chunks the cache can hold (HDF5's advice).
            self._file = h5py.File(
                self.path, "r", rdcc_nbytes=self.cache_bytes, rdcc_nslots=10007, rdcc_w0=0.75
            )
        except OSError as exc:
            raise DataError(f"cannot open HDF5 file {self.path}: {exc}") from None
        try:
            name = dataset if dataset is not None else _nexus_signal(self._file)
            node = self._file.get(name)
            if not isinstance(node, h5py.Dataset):
                raise DataError(f"{self.path}: {name!r} is not a dataset")
            if not np.issubdtype(node.dtype, np.number) or node.dtype.kind == "c":
                raise DataError(f"{self.path}:{name}: dtype {node.dtype} is not real-valued")
            if len(self.patch_shape) != node.ndim:
                raise ConfigError(
                    f"patch shape {self.patch_shape} has {len(self.patch_shape)} axes; "
                    f"dataset {name!r} has {node.ndim} (shape {node.shape})"
                )
            if any(p < 1 or p > n for p, n in zip(self.patch_shape, node.shape, strict=True)):
                raise ConfigError(
                    f"patch shape {self.patch_shape} must fit in the dataset shape {node.shape}"
                )
        except BaseException:
            self._file.close()
            self._file = None
            raise
        self.dataset = name
        self._ds = node
        self.shape: tuple[int, ...] = tuple(node.shape)
        #: The dataset's chunk shape; None for contiguous storage.
        self.chunks: tuple[int, ...] | None = node.chunks
        self.dtype = node.dtype

    # --- origins ------------------------------------------------------------------------------

    @property
    def _grid_step(self) -> tuple[int, ...]:
        return self.chunks if self.chunks is not None else self.patch_shape

    def _axis_origins(self, axis: int) -> np.ndarray:
        last = self.shape[axis] - self.patch_shape[axis]
        return np.arange(0, last + 1, self._grid_step[axis])

    def random_origins(self, n: int) -> np.ndarray:
        """``n`` patch origins (n, ndim): uniform, or uniform over chunk-aligned ones."""
        if n < 0:
            raise ConfigError(f"number of patches must be >= 0; got {n}")
        if self.align:
            cols = [self._rng.choice(self._axis_origins(a), size=n) for a in range(len(self.shape))]
        else:
            cols = [
                self._rng.integers(0, s - p + 1, size=n)
                for s, p in zip(self.shape, self.patch_shape, strict=True)
            ]
        return np.stack(cols, axis=1).astype(np.int64) if cols else np.zeros((n, 0), np.int64)

    def grid_origins(self, stride: Sequence[int] | None = None) -> list[tuple[int, ...]]:
        """Origins that tile the volume: every ``stride`` (default: the patch shape) per axis, the
        last one moved back to end at the border so that every voxel is covered once at least."""
        step = self.patch_shape if stride is None else tuple(int(s) for s in stride)
        if len(step) != len(self.shape) or any(s < 1 for s in step):
            raise ConfigError(f"stride must be {len(self.shape)} positive sizes; got {stride}")
        axes = []
        for n, p, s in zip(self.shape, self.patch_shape, step, strict=True):
            starts = list(range(0, n - p + 1, s))
            if starts[-1] != n - p:
                starts.append(n - p)
            axes.append(starts)
        return [tuple(o) for o in itertools.product(*axes)]

    # --- reads --------------------------------------------------------------------------------

    def _handle(self) -> Any:
        if self._file is None:
            raise DataError(f"patch sampler on {self.path} is closed")
        return self._ds

    def _selection(self, origin: Sequence[int]) -> tuple[slice, ...]:
        """The hyperslab of the patch at ``origin``, checked to lie inside the volume."""
        if len(origin) != len(self.shape) or any(
            o < 0 or o + p > n for o, p, n in zip(origin, self.patch_shape, self.shape, strict=True)
        ):
            raise ConfigError(
                f"patch at {tuple(origin)} of shape {self.patch_shape} is outside {self.shape}"
            )
        return tuple(
            slice(int(o), int(o) + p) for o, p in zip(origin, self.patch_shape, strict=True)
        )

    def read(self, origin: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """The patch at ``origin`` (float32), read as one hyperslab."""
        ds = self._handle()
        sel = self._selection(origin)
        if out is None:
            out = np.empty(self.patch_shape, dtype=np.float32)
        ds.read_direct(out, source_sel=sel)
        return out

    def read_many(self, origins: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
        """Patches at ``origins`` (n, *patch_shape) float32, read in storage order (cache-friendly)
        and returned in the order given."""
        origins = np.asarray(origins, dtype=np.int64).reshape(-1, len(self.shape))
        out = np.empty((len(origins), *self.patch_shape), dtype=np.float32)
        for i in np.lexsort(origins.T[::-1]):
            self.read(origins[i], out=out[i])
        return out

    def sample(self, n: int) -> np.ndarray:
        """``n`` random patches, (n, *patch_shape) float32."""
        return self.read_many(self.random_origins(n))

    def patches(self, n: int | None = None) -> Iterator[np.ndarray]:
        """Random patches one at a time: ``n`` of them, or endlessly when ``n`` is None."""
        count = itertools.count() if n is None else range(n)
        for _ in count:
            yield self.read(self.random_origins(1)[0])

    def __iter__(self) -> Iterator[np.ndarray]:
        """An endless stream of random patches (stop it with ``itertools.islice``)."""
        return self.patches()

    def grid(
        self, stride: Sequence[int] | None = None
    ) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
        """``(origin, patch)`` over :meth:`grid_origins`, in storage order."""
        for origin in self.grid_origins(stride):
            yield origin, self.read(origin)

    # --- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._ds = None

    @property
    def closed(self) -> bool:
        return self._file is None

    def __enter__(self) -> PatchSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "dataset": self.dataset,
            "patch_shape": self.patch_shape,
            "seed": self.seed,
            "align": self.align,
            "cache_bytes": self.cache_bytes,
            "rng": self._rng.bit_generator.state,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["path"],
            state["dataset"],
            state["patch_shape"],
            seed=state["seed"],
            align=state["align"],
            cache_bytes=state["cache_bytes"],
        )
        self._rng.bit_generator.state = state["rng"]

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"shape={self.shape}, chunks={self.chunks}"
        return f"PatchSampler({str(self.path)!r}, {self.dataset!r}, {self.patch_shape}, {state})"


class NiftiPatchSampler(PatchSampler):
    """:class:`PatchSampler` over a NIfTI volume (``dataset`` is ignored): each patch is read
    through nibabel's array proxy, never the whole image. Trailing axes of length 1 beyond the
    patch's axes (a 3D volume stored as 4D) are dropped."""

    def _open(self, dataset: str | None) -> None:
        import nibabel

        try:
            img = nibabel.load(self.path)
        except Exception as exc:  # nibabel raises several types for a damaged file
            raise DataError(f"cannot open NIfTI file {self.path} ({type(exc).__name__})") from None
        shape = tuple(int(n) for n in img.shape)
        while len(shape) > len(self.patch_shape) and shape[-1] == 1:
            shape = shape[:-1]
        if len(self.patch_shape) != len(shape):
            raise ConfigError(
                f"patch shape {self.patch_shape} has {len(self.patch_shape)} axes; "
                f"the NIfTI image has {len(shape)} (shape {shape})"
            )
        if any(p < 1 or p > n for p, n in zip(self.patch_shape, shape, strict=True)):
            raise ConfigError(f"patch shape {self.patch_shape} must fit in the image shape {shape}")
        self._file = img
        self._ds = img.dataobj
        self._extra = len(img.shape) - len(shape)
        self.dataset = ""
        self.shape = shape
        self.chunks = None
        self.dtype = np.dtype(img.get_data_dtype())

    def read(self, origin: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        proxy = self._handle()
        sel = self._selection(origin) + (0,) * self._extra
        patch = np.asarray(proxy[sel], dtype=np.float32)
        if out is None:
            return np.ascontiguousarray(patch)
        out[...] = patch
        return out

    def close(self) -> None:
        self._file = None
        self._ds = None


def open_patch_sampler(
    path: str | Path, member: str | None, patch_shape: Sequence[int], *, seed: int = 0
) -> PatchSampler:
    """The sampler for an image reference: HDF5 (``member`` the dataset path) or NIfTI."""
    name = Path(path).name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return NiftiPatchSampler(path, None, patch_shape, seed=seed)
    if name.endswith((".h5", ".hdf5", ".hdf", ".nxs")):
        return PatchSampler(path, member, patch_shape, seed=seed)
    raise ConfigError(
        f"patches are read lazily from NIfTI (.nii, .nii.gz) and HDF5 (.h5, .nxs) volumes; "
        f"not from {Path(path).name}"
    )


def _fill(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if dtype.kind == "f":
        work = np.float64 if dtype.itemsize > 4 else np.float32
        return rng.standard_normal(shape, dtype=work).astype(dtype, copy=False)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape, dtype=np.uint8).astype(bool)
    raise ConfigError(f"cannot fill a volume of dtype {dtype}")


def write_chunked_volume(
    path: str | Path,
    dataset: str,
    shape: Sequence[int],
    chunks: Sequence[int],
    dtype: Any = np.float32,
    *,
    seed: int = 0,
    compression: str | None = None,
    nexus: bool = False,
) -> Path:
    """Write a synthetic volume chunk by chunk: memory holds one chunk, whatever the size.

    Values are standard normal (floats) or uniform over the type's range (integers), drawn
    per chunk from ``(seed, chunk index)``: the same arguments give the same volume. With
    ``nexus=True`` the file also carries the NeXus ``default`` / ``signal`` attributes leading to
    the dataset (its parent groups become NXentry and NXdata), so ``PatchSampler(path, None, ...)``
    finds it.
    """
    import h5py

    shape_t = tuple(int(n) for n in shape)
    chunks_t = tuple(int(c) for c in chunks)
    dt = np.dtype(dtype)
    if len(chunks_t) != len(shape_t) or any(c < 1 for c in chunks_t):
        raise ConfigError(f"chunks {chunks_t} must give one positive size per axis of {shape_t}")
    chunks_t = tuple(min(c, n) for c, n in zip(chunks_t, shape_t, strict=True))
    out = Path(path)
    grid = [range(0, n, c) for n, c in zip(shape_t, chunks_t, strict=True)]
    with h5py.File(out, "w", rdcc_nbytes=0) as f:
        ds = f.create_dataset(
            dataset,
            shape=shape_t,
            dtype=dt,
            chunks=chunks_t,
            compression=compression,
            track_times=False,
        )
        for index, start in enumerate(itertools.product(*grid)):
            sel = tuple(
                slice(s, min(s + c, n)) for s, c, n in zip(start, chunks_t, shape_t, strict=True)
            )
            block_shape = tuple(sl.stop - sl.start for sl in sel)
            rng = np.random.default_rng([seed, index])
            ds.write_direct(_fill(rng, block_shape, dt), dest_sel=sel)
        if nexus:
            parts = [p for p in ds.name.split("/") if p]
            if len(parts) < 3:
                raise ConfigError(
                    f"a NeXus volume needs a dataset path /entry/data/name; got {dataset!r}"
                )
            entry, data = f[parts[0]], ds.parent
            f.attrs["default"] = parts[0]
            entry.attrs["NX_class"] = "NXentry"
            entry.attrs["default"] = data.name[len(entry.name) + 1 :]
            data.attrs["NX_class"] = "NXdata"
            data.attrs["signal"] = parts[-1]
    return out
