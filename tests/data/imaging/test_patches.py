"""Lazy patches from chunked HDF5 volumes: correct hyperslabs, and memory bounded by the patches,
not by the volume (measured in a clean subprocess, under an address-space limit)."""

from __future__ import annotations

import itertools
import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from peak_rss import PEAK_SINCE_RESET

from cordiale.core.errors import ConfigError, DataError
from cordiale.data.imaging.patches import PatchSampler, write_chunked_volume

h5py = pytest.importorskip("h5py")

SHAPE, CHUNKS, PATCH = (40, 36, 50), (8, 16, 7), (8, 9, 12)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("vol") / "small.h5"
    write_chunked_volume(path, "/entry/data/data", SHAPE, CHUNKS, np.float32, seed=4, nexus=True)
    with h5py.File(path, "r") as f:
        full = f["/entry/data/data"][()]
    return path, full


def test_patches_equal_the_slices_of_the_volume(small):
    path, full = small
    with PatchSampler(path, "/entry/data/data", PATCH, seed=1) as s:
        assert s.shape == SHAPE and s.chunks == CHUNKS
        origins = s.random_origins(50)
        patches = s.read_many(origins)
        assert patches.shape == (50, *PATCH) and patches.dtype == np.float32
        for origin, patch in zip(origins, patches, strict=True):
            sel = tuple(slice(o, o + p) for o, p in zip(origin, PATCH, strict=True))
            np.testing.assert_array_equal(patch, full[sel])
        # every position reachable, including the far border
        corner = tuple(n - p for n, p in zip(SHAPE, PATCH, strict=True))
        np.testing.assert_array_equal(s.read(corner), full[tuple(slice(c, None) for c in corner)])


def test_sample_is_deterministic_for_a_seed(small):
    path, full = small
    with PatchSampler(path, "/entry/data/data", PATCH, seed=3) as a:
        first = a.sample(20)
    with PatchSampler(path, "/entry/data/data", PATCH, seed=3) as b:
        origins = b.random_origins(20)
    with PatchSampler(path, "/entry/data/data", PATCH, seed=3) as c:
        np.testing.assert_array_equal(c.read_many(origins), first)  # the rng is untouched
        np.testing.assert_array_equal(c.sample(20), first)
        assert not np.array_equal(c.sample(20), first)  # the next draw differs
    # every sampled patch is one of the volume's windows
    for patch, origin in zip(first, origins, strict=True):
        np.testing.assert_array_equal(
            patch, full[tuple(slice(o, o + p) for o, p in zip(origin, PATCH, strict=True))]
        )


def test_grid_tiles_the_whole_volume(small):
    path, full = small
    with PatchSampler(path, "/entry/data/data", PATCH) as s:
        rebuilt = np.full(SHAPE, np.nan, dtype=np.float32)
        for origin, patch in s.grid():
            rebuilt[tuple(slice(o, o + p) for o, p in zip(origin, PATCH, strict=True))] = patch
        np.testing.assert_array_equal(rebuilt, full)
        assert len(s.grid_origins()) == 5 * 4 * 5  # ceil(40/8), ceil(36/9), ceil(50/12)
        assert len(s.grid_origins(stride=(40, 36, 50))) == 8  # the corners: origin and far end
        assert len(s.grid_origins(stride=(1, 1, 1))) == 33 * 28 * 39  # every window


def test_aligned_patches_start_on_chunk_boundaries(small):
    path, full = small
    with PatchSampler(path, "/entry/data/data", (8, 16, 7), align=True, seed=2) as s:
        origins = s.random_origins(100)
        assert (origins % np.array(CHUNKS) == 0).all()
        patches = s.read_many(origins)
    for origin, patch in zip(origins, patches, strict=True):
        sel = tuple(slice(o, o + c) for o, c in zip(origin, CHUNKS, strict=True))
        np.testing.assert_array_equal(patch, full[sel])


def test_iteration_nexus_default_and_pickling(small):
    path, _ = small
    with PatchSampler(path, None, PATCH, seed=5) as s:  # NeXus: @default -> @signal
        assert s.dataset == "/entry/data/data"
        streamed = list(itertools.islice(s, 3))
        assert len(streamed) == 3 and all(p.shape == PATCH for p in streamed)
        assert len(list(s.patches(4))) == 4
        clone = pickle.loads(pickle.dumps(s))  # a DataLoader worker reopens the file
        try:
            np.testing.assert_array_equal(clone.sample(5), s.sample(5))
        finally:
            clone.close()
    assert s.closed
    with pytest.raises(DataError, match="closed"):
        s.sample(1)


def test_integer_volumes_come_back_as_float32(tmp_path):
    path = write_chunked_volume(tmp_path / "u16.h5", "vol", (30, 20), (7, 20), np.uint16, seed=0)
    with h5py.File(path, "r") as f:
        full = f["vol"][()]
    assert full.dtype == np.uint16 and full.max() > 60000
    with PatchSampler(path, "vol", (10, 5), seed=0) as s:
        origin = s.random_origins(1)[0]
        patch = s.read(origin)
    assert patch.dtype == np.float32
    np.testing.assert_array_equal(
        patch, full[origin[0] : origin[0] + 10, origin[1] : origin[1] + 5]
    )


def test_written_volume_is_deterministic_and_chunked(tmp_path):
    a = write_chunked_volume(tmp_path / "a.h5", "v", (33, 17), (8, 8), seed=9, compression="gzip")
    b = write_chunked_volume(tmp_path / "b.h5", "v", (33, 17), (8, 8), seed=9)
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert fa["v"].chunks == (8, 8) and fa["v"].compression == "gzip"
        np.testing.assert_array_equal(fa["v"][()], fb["v"][()])
        assert abs(float(fa["v"][()].mean())) < 0.2 and 0.8 < float(fa["v"][()].std()) < 1.2


def test_invalid_requests(small, tmp_path):
    path, _ = small
    with pytest.raises(ConfigError, match="axes"):
        PatchSampler(path, "/entry/data/data", (8, 8))
    with pytest.raises(ConfigError, match="fit"):
        PatchSampler(path, "/entry/data/data", (41, 8, 8))
    with pytest.raises(DataError, match="not a dataset"):
        PatchSampler(path, "/entry/data", (8, 8, 8))
    with pytest.raises(DataError, match="cannot open"):
        PatchSampler(tmp_path / "missing.h5", "x", (1,))
    plain = write_chunked_volume(tmp_path / "plain.h5", "v", (8, 8), (4, 4))
    with pytest.raises(DataError, match="NeXus"):
        PatchSampler(plain, None, (2, 2))
    with PatchSampler(path, "/entry/data/data", PATCH) as s, pytest.raises(ConfigError):
        s.read((39, 0, 0))


# --- memory ------------------------------------------------------------------------------------

MiB = 2**20
VOLUME_SHAPE = (512, 512, 512)  # float32: 512 MiB
VOLUME_CHUNKS = (32, 32, 32)
N_PATCHES, PATCH_SIDE = 200, 32
AS_HEADROOM = 256 * MiB  # address space granted above what the child maps after its imports
MAX_RSS_GROWTH = 128 * MiB

CHILD = PEAK_SINCE_RESET + textwrap.dedent(
    """
    import json, resource, sys

    import h5py
    import numpy as np
    import psutil

    from cordiale.data.imaging.patches import PatchSampler, write_chunked_volume


    path, n, side, headroom = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    shape, chunks = json.loads(sys.argv[5]), json.loads(sys.argv[6])
    proc = psutil.Process()
    vms = proc.memory_info().vms
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vms + headroom, hard))

    peak_since_reset()
    rss_before_write = proc.memory_info().rss
    write_chunked_volume(path, "/volume", shape, chunks, np.float32, seed=0)
    peak_write = peak_since_reset()

    rss_before = proc.memory_info().rss
    with PatchSampler(path, "/volume", (side,) * 3, seed=0) as sampler:
        patches = sampler.sample(n)
    peak = peak_since_reset()
    # control: under the same limit the whole volume cannot even be allocated
    try:
        with h5py.File(path, "r") as f:
            f["/volume"][()]
        full_read = "succeeded"
    except MemoryError:
        full_read = "MemoryError"
    print(json.dumps({
        "vms_limit": vms + headroom,
        "write_growth": peak_write - rss_before_write,
        "rss_before": rss_before,
        "peak_rss": peak,
        "shape": list(patches.shape),
        "finite": bool(np.isfinite(patches).all()),
        "std": float(patches.std()),
        "full_read": full_read,
    }))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and VmHWM: Linux")
def test_memory_stays_bounded_on_a_volume_larger_than_the_memory_given(tmp_path):
    """In a fresh process whose address space allows 256 MiB above its imports: write a 512 MiB
    volume chunk by chunk, then sample 200 patches of 32^3; both stay far below the volume."""
    pytest.importorskip("psutil")
    path = tmp_path / "big.h5"
    volume_bytes = int(np.prod(VOLUME_SHAPE)) * 4
    assert volume_bytes > AS_HEADROOM
    args = [*map(str, (path, N_PATCHES, PATCH_SIDE, AS_HEADROOM))]
    args += [json.dumps(VOLUME_SHAPE), json.dumps(VOLUME_CHUNKS)]
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
        )
        assert proc.returncode == 0, proc.stderr
        assert path.stat().st_size >= volume_bytes
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        growth = report["peak_rss"] - report["rss_before"]
        print(
            f"\nwrite: peak RSS growth {report['write_growth'] / MiB:.1f} MiB; "
            f"sample: peak RSS {report['peak_rss'] / MiB:.1f} MiB, "
            f"baseline {report['rss_before'] / MiB:.1f} MiB, growth {growth / MiB:.1f} MiB "
            f"for {N_PATCHES} patches of {PATCH_SIDE}^3 from a {volume_bytes / MiB:.0f} MiB "
            f"volume; address space limited to {report['vms_limit'] / MiB:.0f} MiB; "
            f"full read: {report['full_read']}"
        )
        assert report["shape"] == [N_PATCHES, PATCH_SIDE, PATCH_SIDE, PATCH_SIDE]
        assert report["finite"] and 0.9 < report["std"] < 1.1
        assert report["write_growth"] < MAX_RSS_GROWTH
        assert growth < MAX_RSS_GROWTH
        # the limit was real: the volume itself does not fit in it
        assert report["full_read"] == "MemoryError"
    finally:
        path.unlink(missing_ok=True)
