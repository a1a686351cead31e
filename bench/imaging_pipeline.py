"""The imaging data path: loading from files, patches from a chunked volume, FedAvg vs FedBN.

    .venv/bin/python bench/imaging_pipeline.py [--images 400] [--repeats 3]
        [--volume 256] [--chunk 32] [--patch 32] [--patches 200]
        [--seeds 0 1 2] [--rounds 10] [--patients 30] [--images-per-patient 6]
        [--prevalence 0.3] [--noise 1.0] [--scaling site [federated]]
        [--aug-images 512] [--aug-3d 48] [--aug-volumes 96] [--aug-train 96]
        [--vol3d 64] [--patch3d 16] [--patients3d 20] [--per-volume 8] [--rounds3d 5]
        [--only load patches auc augment patch3d]

Five tables, each against a baseline measured in the same run (everything sits in a temp dir
that was just written, so the files are in the page cache: these are CPU costs, not disk speed):

1. **Loading + transform.** One site (the ``oxford`` scanner of ``DEFAULT_SITES``) of ``--images``
   64x64 images (10 per patient) written by ``synthetic.generate`` as DICOM, NIfTI (``.nii.gz``)
   and HDF5 (one gzip-compressed dataset per image). Timed: ``ImageDataset.from_manifest`` (read
   the manifest, validate every file against the contract, split by patient, stack as float32
   ``(n, 1, 64, 64)``) and the per-site standardisation (``Standardizer.fit(x_train)``, then
   ``transform`` of the training and test images). The baseline is ``np.load`` of the same float32
   pixels from one ``.npy``; the three formats must give identical pixels (checked). Printed per
   format: the size on disk, load and standardise milliseconds (median of ``--repeats``), images
   per second of the two together, and that time as a multiple of ``np.load``'s.
2. **Patches from a chunked HDF5 volume.** ``write_chunked_volume``: ``--volume``^3 float32
   (256^3 = 64 MiB) in ``--chunk``^3 chunks, uncompressed. ``--patches`` random ``--patch``^3
   patches read with ``PatchSampler(...).sample(n)`` (origins anywhere, so a patch touches up to 8
   chunks; and ``align=True``, one chunk per patch), against the baseline of reading the whole
   volume with h5py and slicing the same patches out of memory (same seed, same origins; the
   patches must match bytewise). Each approach runs in its own process so that its peak RSS is
   its own (Linux ``VmHWM``, reset after the imports); printed: seconds (median of
   ``--repeats``), patches/s, MB/s of patch data delivered, peak RSS and its rise over the RSS
   after imports (the patches themselves are ``--patches`` x ``--patch``^3 x 4 bytes: 26 MB).
3. **Per-site AUC, FedAvg vs FedBN.** Three sites with strongly different scanners (gain 0.4 to
   2.5, gamma 0.5 to 2, noise 0.15 to 0.45 times ``--noise``, blur, one at half resolution),
   ``--patients`` patients of ``--images-per-patient`` 32x32 NIfTI images, prevalence
   ``--prevalence``: harder than the defaults of ``generate``, where every site reaches AUC ~1.0.
   The study: the CNN of ``examples/imaging_cnn_plan.py`` as ``model.plan_source``, ``--rounds``
   rounds of 2 local epochs, batch 16, lr 0.05, per-site scaling (``data.scaling = "site"``;
   ``--scaling site federated`` adds a table with federated scaling), ``local_layers = []``
   (FedAvg, the baseline) or ``["bn"]`` (FedBN: batch-norm layers stay at each site), simulated in
   process without the pooled run. Data and study seed are both each of ``--seeds``. Printed per
   site: the scanner, test images, AUC of each (mean ± std over seeds) and their difference; then
   the AUC on the union of the sites' test images ("all sites"), where each site's images go
   through its own model (its own batch-norm layers under FedBN). Scores are not calibrated
   across sites, so that pooled AUC can fall below every site's own. Site scaling standardises
   each pixel per site, which already removes the gain and most of the contrast shift: FedBN
   then gains little. Under federated scaling FedAvg fails on the shifted sites and FedBN
   recovers much of it.
4. **MONAI augmentation throughput.** Training batches drawn as ``train_local`` draws them (a
   seeded permutation, batches of 16, ``augment(xt[idx])`` through the study's ``Augmenter``,
   image by image), one torch thread, for ``--aug-images`` 2D 64x64 images and ``--aug-volumes``
   3D ``--aug-3d``^3 volumes: images/s of the augmentation of ``examples/imaging_study.py``
   (RandFlip + RandRotate90 + RandGaussianNoise) and of RandAffine on its own, against the
   baseline of the same batches without augmentation (only the indexing, so that ratio is large);
   then what matters for a study: ``train_local`` for one epoch over ``--aug-train`` images (2D:
   the example's DenseNet121, 3D: a ResNet10 of width 0.25) with each augmentation, as a multiple
   of the same training without. Pipelines are interleaved per repeat; median of ``--repeats``.
5. **Federated 3D patch training.** Three sites (``DEFAULT_SITES``) of ``--patients3d``
   patients x 2 HDF5 volumes of ``--vol3d``^3 written by ``synthetic.generate`` (3 lesions per
   positive volume; one gzip chunk per volume). The study: MONAI ResNet10 (width 0.25, FedBN),
   site scaling, ``--rounds3d`` rounds x 2 epochs, batch 16, evaluation after the last round,
   through ``simulate`` (one process, one torch thread). Arm 1 trains on ``--per-volume`` random
   ``--patch3d``^3 patches per volume (``[data.patches]``, scored per volume); the baseline arm
   loads the same volumes whole (``ImageDataset``) and block-averages them to ``--patch3d``^3,
   so both nets see inputs of one size. Each arm runs in its own process; printed: seconds per
   round (median), examples (patches or volumes) trained per second, peak RSS rise over the RSS
   after imports and one warm-up training step (while building the data, and over the whole
   run), that rise / the volumes' bytes on disk (the memory baseline) and / their float32 size,
   and the per-volume AUC per site and pooled.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from cordiale.learn.study import StudySpec

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "examples" / "imaging_cnn_plan.py"
PARTS = ("load", "patches", "auc", "augment", "patch3d")
VOLUME_DATASET = "/entry/data/volume"
MB = 1e6


def _status_mib(field: str) -> float | None:
    """A ``/proc/self/status`` memory line (``VmRSS``, ``VmHWM``) in MiB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> None:
    """Restart the peak RSS count here (Linux: ``5`` to ``clear_refs``), so that it excludes the
    imports; a no-op elsewhere."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> float:
    """This process's peak resident set size since :func:`reset_peak_rss` (``VmHWM``; elsewhere
    ``ru_maxrss``, which on Linux would start from the parent's at fork)."""
    hwm = _status_mib("VmHWM")
    if hwm is not None:
        return hwm
    scale = 2**20 if sys.platform == "darwin" else 2**10  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall seconds of ``repeats`` calls and the last call's result."""
    times, out = [], None
    for _ in range(repeats):
        out = None  # free the last result first: peak memory is that of one call
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --- 1. loading + transform --------------------------------------------------------------------


def bench_loading(work: Path, images: int, repeats: int) -> Table:
    from cordiale.data.features import Standardizer
    from cordiale.data.imaging.contract import ImagingContract
    from cordiale.data.imaging.dataset import ImageDataset
    from cordiale.data.imaging.synthetic import DEFAULT_SITES, FORMATS, generate

    per_patient = 10
    patients = max(2, images // per_patient)
    site = "oxford"
    contract = ImagingContract(
        name="bench-load", modality="any", ndim=2, shape=[64, 64], min_images=10
    )

    def standardise(ds: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
        scaler = Standardizer.fit(ds.x_train)
        return scaler.transform(ds.x_train), scaler.transform(ds.x_test)

    rows: list[tuple[str, int, int, float, float]] = []
    reference: np.ndarray | None = None
    same = True
    for fmt in FORMATS:
        manifest = generate(
            work / fmt,
            sites={site: DEFAULT_SITES[site]},
            fmt=fmt,
            patients=patients,
            images_per_patient=per_patient,
            shape=(64, 64),
            seed=0,
        )[site]

        def load(manifest: Path = manifest) -> ImageDataset:
            return ImageDataset.from_manifest(
                manifest, contract, test_fraction=0.2, seed=0, site=site
            )

        load_s, ds = median_time(load, repeats)
        std_s, _ = median_time(lambda ds=ds: standardise(ds), repeats)
        pixels = np.concatenate([ds.x_train, ds.x_test])
        if reference is None:
            reference = pixels
        same = same and np.array_equal(pixels, reference)
        rows.append((fmt, len(pixels), disk_bytes(work / fmt), load_s, std_s))

    assert reference is not None
    npy = work / "pixels.npy"
    np.save(npy, reference)
    npy_s, loaded = median_time(lambda: np.load(npy), repeats)
    same = same and np.array_equal(loaded, reference)

    table = Table(
        title=f"1. Loading + standardising {len(reference)} images of 64x64, one site "
        f"(median of {repeats}; baseline np.load of one .npy)",
        caption="identical pixels in every format and the .npy: " + ("yes" if same else "NO (bug)"),
    )
    for col in ("source", "images", "on disk", "load ms", "standardise ms", "images/s"):
        table.add_column(col, justify="left" if col == "source" else "right")
    table.add_column("time / np.load", justify="right", style="bold")
    names = {"dicom": "DICOM (.dcm)", "nifti": "NIfTI (.nii.gz)", "hdf5": "HDF5 (gzip)"}
    for fmt, n, size, load_s, std_s in rows:
        total = load_s + std_s
        table.add_row(
            names[fmt],
            str(n),
            f"{size / MB:.1f} MB",
            f"{1000 * load_s:.1f}",
            f"{1000 * std_s:.1f}",
            f"{n / total:,.0f}",
            f"{total / npy_s:,.0f}x",
        )
    table.add_row(
        "np.load (.npy, float32)",
        str(len(reference)),
        f"{npy.stat().st_size / MB:.1f} MB",
        f"{1000 * npy_s:.2f}",
        "-",
        f"{len(reference) / npy_s:,.0f}",
        "1x",
        style="dim",
    )
    return table


# --- 2. patches from a chunked volume ----------------------------------------------------------


def patch_worker(raw: str) -> None:
    """Child process: time one approach, print one JSON line (seconds, RSS, patch digest)."""
    import h5py

    from cordiale.data.imaging.patches import PatchSampler

    job = json.loads(raw)
    path, mode, n, seed, repeats = job["path"], job["mode"], job["n"], job["seed"], job["repeats"]
    patch = tuple(job["patch"])
    reset_peak_rss()
    idle = _status_mib("VmRSS") or peak_rss_mib()

    def sampler(align: bool) -> np.ndarray:
        with PatchSampler(path, VOLUME_DATASET, patch, seed=seed, align=align) as s:
            return s.sample(n)

    def full() -> np.ndarray:
        with PatchSampler(path, VOLUME_DATASET, patch, seed=seed) as s:
            origins = s.random_origins(n)  # the origins ``sample(n)`` reads
        with h5py.File(path, "r") as f:
            volume = f[VOLUME_DATASET][()]
        out = np.empty((n, *patch), dtype=np.float32)
        for i, o in enumerate(origins):
            out[i] = volume[tuple(slice(int(a), int(a) + p) for a, p in zip(o, patch, strict=True))]
        return out

    fns: dict[str, Callable[[], np.ndarray]] = {
        "sampler": lambda: sampler(False),
        "sampler-aligned": lambda: sampler(True),
        "full": full,
    }
    seconds, out = median_time(fns[mode], repeats)
    digest = hashlib.sha256(np.ascontiguousarray(out).data).hexdigest()  # no copy
    print(json.dumps({"seconds": seconds, "idle": idle, "peak": peak_rss_mib(), "digest": digest}))


def run_worker(job: dict[str, Any], flag: str = "--patch-worker") -> dict[str, Any]:
    """Run ``job`` in a child process (``flag``: which worker); its JSON line."""
    proc = subprocess.run(
        [sys.executable, __file__, flag, json.dumps(job)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        what = job.get("mode") or job.get("arm")
        raise RuntimeError(f"worker {flag} {what} failed:\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def bench_patches(work: Path, volume: int, chunk: int, patch: int, n: int, repeats: int) -> Table:
    from cordiale.data.imaging.patches import write_chunked_volume

    path = work / "volume.h5"
    t0 = time.perf_counter()
    write_chunked_volume(path, VOLUME_DATASET, (volume,) * 3, (chunk,) * 3, np.float32, seed=0)
    write_s = time.perf_counter() - t0
    job = {"path": str(path), "n": n, "seed": 0, "repeats": repeats, "patch": [patch] * 3}
    results = {m: run_worker({**job, "mode": m}) for m in ("full", "sampler", "sampler-aligned")}
    patch_bytes = n * patch**3 * 4
    base = results["full"]["seconds"]
    same = results["full"]["digest"] == results["sampler"]["digest"]

    table = Table(
        title=f"2. {n} patches of {patch}^3 from a {volume}^3 float32 HDF5 volume "
        f"({path.stat().st_size / 2**20:.0f} MiB, chunks {chunk}^3, uncompressed; "
        f"median of {repeats}; baseline: read it all, then slice)",
        caption=f"volume written in {write_s:.1f} s; patches from PatchSampler identical to the "
        "full-read slices: " + ("yes" if same else "NO (bug)"),
    )
    for col in ("approach", "seconds", "patches/s", "patch MB/s", "peak RSS", "RSS rise"):
        table.add_column(col, justify="left" if col == "approach" else "right")
    table.add_column("speed-up", justify="right", style="bold")
    labels = {
        "full": "h5py: read full volume, slice",
        "sampler": "PatchSampler.sample (any origin)",
        "sampler-aligned": "PatchSampler.sample (align=True)",
    }
    for mode, r in results.items():
        s = r["seconds"]
        table.add_row(
            labels[mode],
            f"{s:.3f}",
            f"{n / s:,.0f}",
            f"{patch_bytes / MB / s:,.0f}",
            f"{r['peak']:.0f} MiB",
            f"+{r['peak'] - r['idle']:.0f} MiB",
            f"{base / s:.1f}x",
            style="dim" if mode == "full" else None,
        )
    return table


# --- 3. FedAvg vs FedBN ------------------------------------------------------------------------


def shifted_sites(noise: float = 1.0) -> dict[str, Any]:
    """Three scanners that differ more than ``DEFAULT_SITES`` (noisier, softer, coarser); every
    site's noise times ``noise``."""
    from cordiale.data.imaging.synthetic import SiteScanner

    return {
        "oxford": SiteScanner(
            model="sharp, clean",
            intensity_scale=1.0,
            gamma=1.0,
            noise=0.15 * noise,
            blur_sigma=0.0,
        ),
        "paris-cite": SiteScanner(
            model="bright, soft",
            intensity_scale=2.5,
            gamma=0.5,
            noise=0.3 * noise,
            blur_sigma=1.5,
        ),
        "pasteur": SiteScanner(
            model="dim, noisy, low-res",
            intensity_scale=0.4,
            gamma=2.0,
            noise=0.45 * noise,
            blur_sigma=0.7,
            downsample=2,
        ),
    }


def study(
    sites: list[str], local_layers: list[str], seed: int, rounds: int, scaling: str
) -> StudySpec:
    from cordiale.learn.study import StudySpec

    return StudySpec.parse(
        {
            "study": {
                "name": "lesions",
                "purpose": "FedAvg vs FedBN across shifted scanners",
                "sites": sites,
                "rounds": rounds,
                "seed": seed,
            },
            "data": {
                "dataset": "lesions",
                "kind": "imaging",
                "scaling": scaling,
                "contract": {
                    "name": "lesions",
                    "modality": "any",
                    "ndim": 2,
                    "shape": [32, 32],
                    "min_images": 10,
                },
            },
            "model": {"plan_source": PLAN.read_text(), "local_layers": local_layers},
            "train": {"epochs": 2, "lr": 0.05, "batch_size": 16},
        }
    )


def mean_std(values: Sequence[float]) -> str:
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def bench_auc(
    work: Path,
    seeds: list[int],
    rounds: int,
    patients: int,
    per_patient: int,
    prevalence: float,
    scalings: list[str],
    noise: float,
) -> list[Table]:
    from cordiale.data.imaging.synthetic import generate
    from cordiale.sim.runner import simulate, simulation_of
    from cordiale.sim.sitefiles import site_datasets

    scanners = shifted_sites(noise)
    names = sorted(scanners)
    arms: dict[str, list[str]] = {"FedAvg": [], "FedBN": ["bn"]}
    # (scaling, arm, site or "all") -> AUC per seed
    aucs: dict[tuple[str, str, str], list[float]] = {}
    tests: dict[str, list[int]] = {s: [] for s in names}
    seconds: list[float] = []
    for seed in seeds:
        manifests = generate(
            work / f"auc-{seed}",
            sites=scanners,
            fmt="nifti",
            patients=patients,
            images_per_patient=per_patient,
            prevalence=prevalence,
            shape=(32, 32),
            seed=seed,
        )
        for scaling in scalings:
            for arm, local in arms.items():
                spec = study(names, local, seed, rounds, scaling)
                sites = site_datasets(spec, manifests)
                if scaling == scalings[0] and arm == "FedAvg":
                    for s, ds in sites.items():
                        tests[s].append(ds.num_test)
                t0 = time.perf_counter()
                result = simulate(
                    dataclasses.replace(simulation_of(spec), pooled=False), sites=sites
                )
                seconds.append(time.perf_counter() - t0)
                ev = result.federated.evaluation
                for s, m in ev.per_site.items():
                    aucs.setdefault((scaling, arm, s), []).append(float(m["auc"]))
                aucs.setdefault((scaling, arm, "all"), []).append(float(ev.pooled["auc"]))

    tables = []
    for scaling in scalings:
        table = Table(
            title=f"3. Per-site AUC, FedAvg vs FedBN ({scaling} scaling; mean ± std over seeds "
            f"{', '.join(map(str, seeds))}; baseline FedAvg)",
            caption=f"3 sites x {patients} patients x {per_patient} images of 32x32, prevalence "
            f"{prevalence:g}; CNN plan, {rounds} rounds x 2 epochs; "
            f"{statistics.median(seconds):.1f} s per study (median)",
        )
        for col in ("site", "scanner", "test images", "FedAvg AUC", "FedBN AUC"):
            table.add_column(col, justify="left" if col in ("site", "scanner") else "right")
        table.add_column("FedBN - FedAvg", justify="right", style="bold")
        for s in [*names, "all"]:
            avg, bn = aucs[(scaling, "FedAvg", s)], aucs[(scaling, "FedBN", s)]
            diff = [b - a for a, b in zip(avg, bn, strict=True)]
            if s == "all":
                label, scanner = "all sites (pooled test)", ""
                n_test = sum(statistics.fmean(t) for t in tests.values())
            else:
                label, scanner = s, scanners[s].describe()
                n_test = statistics.fmean(tests[s])
            table.add_row(
                label,
                scanner,
                f"{n_test:.0f}",
                mean_std(avg),
                mean_std(bn),
                f"{statistics.fmean(diff):+.3f}",
                end_section=s == names[-1],
            )
        tables.append(table)
    return tables


# --- 4. MONAI augmentation throughput ----------------------------------------------------------

#: The study's augmentation (``examples/imaging_study.py``), and RandAffine on its own.
AUG_FLIP_ROT_NOISE: list[dict[str, Any]] = [
    {"name": "RandFlip", "prob": 0.5, "spatial_axis": 0},
    {"name": "RandRotate90", "prob": 0.5},
    {"name": "RandGaussianNoise", "prob": 0.3, "std": 0.02},
]
AUG_AFFINE: list[dict[str, Any]] = [
    {"name": "RandAffine", "prob": 0.5, "rotate_range": 0.3, "padding_mode": "border"}
]
AUG_PIPELINES: dict[str, list[dict[str, Any]]] = {
    "none (baseline)": [],
    "RandFlip + RandRotate90 + RandGaussianNoise (p .5/.5/.3)": AUG_FLIP_ROT_NOISE,
    "RandAffine (p .5, rotate 0.3 rad, border)": AUG_AFFINE,
}
BATCH = 16
RESNET_SMALL = {"widen_factor": 0.25, "conv1_t_size": 3, "conv1_t_stride": 2}


def augment_epoch(x: Any, specs: list[dict[str, Any]], seed: int) -> float:
    """Seconds for one epoch of training batches as ``train_local`` draws them (a seeded
    permutation, batches of 16, ``augment(xt[idx])``), without a model."""
    import torch

    from cordiale.data.imaging.transforms import Augmenter, parse_transforms

    ndim = x.dim() - 2
    augment = Augmenter(parse_transforms(specs, "augment", ndim=ndim), seed=seed) if specs else None
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    for start in range(0, len(x), BATCH):
        idx = order[start : start + BATCH]
        batch = x[idx] if augment is None else augment(x[idx])
        del batch
    return time.perf_counter() - t0


def train_epoch(model: Any, x: np.ndarray, y: np.ndarray, specs: list[dict[str, Any]]) -> float:
    """Seconds of one ``train_local`` epoch (batch 16, SGD) of a copy of ``model``."""
    import copy

    from cordiale.data.imaging.transforms import Augmenter, parse_transforms
    from cordiale.learn.trainer import TrainConfig, train_local

    ndim = x.ndim - 2
    augment = Augmenter(parse_transforms(specs, "augment", ndim=ndim), seed=0) if specs else None
    model = copy.deepcopy(model)
    t0 = time.perf_counter()
    train_local(
        model, x, y, TrainConfig(epochs=1, batch_size=BATCH, lr=0.01), seed=0, augment=augment
    )
    return time.perf_counter() - t0


def bench_augment(
    images_2d: int, side_3d: int, volumes_3d: int, train_images: int, repeats: int
) -> Table:
    import torch

    from cordiale.learn.imaging_plans import NetworkSpec, build_network
    from cordiale.learn.models import build_with

    cases = [
        (
            "2D 64x64",
            (64, 64),
            images_2d,
            NetworkSpec("monai:densenet121", 2, {"init_features": 8, "growth_rate": 8}),
        ),
        (
            f"3D {side_3d}^3",
            (side_3d,) * 3,
            volumes_3d,
            NetworkSpec("monai:resnet10", 3, RESNET_SMALL),
        ),
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the simulation trains
    rows: list[tuple[str, str, int, float, float, float, float]] = []
    try:
        for label, shape, n, network in cases:
            rng = np.random.default_rng(0)
            x = torch.from_numpy(rng.normal(size=(n, 1, *shape)).astype(np.float32))
            xs = rng.normal(size=(train_images, 1, *shape)).astype(np.float32)
            ys = rng.integers(0, 2, train_images)
            model = build_with(lambda c, network=network: build_network(network, c), 1, seed=0)
            for specs in AUG_PIPELINES.values():  # warm-up: MONAI's first calls, torch kernels
                augment_epoch(x[: 2 * BATCH], specs, seed=0)
                train_epoch(model, xs[: 2 * BATCH], ys[: 2 * BATCH], specs)
            aug_s: dict[str, list[float]] = {p: [] for p in AUG_PIPELINES}
            train_s: dict[str, list[float]] = {p: [] for p in AUG_PIPELINES}
            for r in range(repeats):  # interleaved, so drift hits every pipeline alike
                for name, specs in AUG_PIPELINES.items():
                    aug_s[name].append(augment_epoch(x, specs, seed=r))
                    train_s[name].append(train_epoch(model, xs, ys, specs))
            for name in AUG_PIPELINES:
                rows.append(
                    (
                        label,
                        name,
                        n,
                        statistics.median(aug_s[name]),
                        statistics.median(aug_s["none (baseline)"]),
                        statistics.median(train_s[name]),
                        statistics.median(train_s["none (baseline)"]),
                    )
                )
    finally:
        torch.set_num_threads(threads)

    table = Table(
        title=f"4. MONAI augmentation of training batches as train_local applies it "
        f"(batches of {BATCH}, one torch thread; median of {repeats}; baseline: the same "
        "batches without augmentation)",
        caption="images/s: one epoch of seeded batches, each xt\\[idx] through the Augmenter "
        f"(image by image), no model; training: train_local, 1 epoch over {train_images} "
        "images, 2D DenseNet121 "
        "(init_features 8, growth 8), 3D ResNet10 (widen 0.25); pixels N(0, 1) (the transforms' "
        "cost does not depend on them)",
    )
    for col in ("images", "augmentation", "batch images", "images/s", "time / none"):
        table.add_column(col, justify="left" if col in ("images", "augmentation") else "right")
    table.add_column("training images/s", justify="right")
    table.add_column("training time / none", justify="right", style="bold")
    for label, name, n, s, base, ts, tbase in rows:
        baseline = name == "none (baseline)"
        table.add_row(
            label,
            name,
            str(n),
            f"{n / s:,.0f}",
            "1x" if baseline else f"{s / base:,.0f}x",
            f"{train_images / ts:,.0f}",
            "1.00" if baseline else f"{ts / tbase:.2f}",
            style="dim" if baseline else None,
            end_section=name == list(AUG_PIPELINES)[-1],
        )
    return table


# --- 5. patch-based 3D training ----------------------------------------------------------------


def study3d(sites: list[str], side: int, patch: int | None, per_volume: int, rounds: int) -> Any:
    """The 3D study: MONAI ResNet10 (FedBN), site scaling, patches when ``patch`` is given."""
    from cordiale.learn.study import StudySpec

    data: dict[str, Any] = {
        "dataset": "volumes",
        "kind": "imaging",
        "scaling": "site",
        "test_fraction": 0.3,
        "contract": {"name": "volumes", "ndim": 3, "shape": [side] * 3, "min_images": 8},
    }
    if patch is not None:
        data["patches"] = {
            "size": [patch] * 3,
            "per_volume": per_volume,
            "eval_per_volume": per_volume,
        }
    return StudySpec.parse(
        {
            "study": {"name": "volumes", "purpose": "patches", "sites": sites, "rounds": rounds},
            "data": data,
            "model": {"network": "monai:resnet10", "network_params": RESNET_SMALL, "fedbn": True},
            "train": {"epochs": 2, "lr": 0.05, "batch_size": BATCH, "momentum": 0.9},
            "evaluation": {"every": 0},  # only after the last round: rounds time training
        }
    )


def block_mean(x: np.ndarray, f: int) -> np.ndarray:
    """``(n, 1, s, s, s)`` volumes to ``(n, 1, s/f, s/f, s/f)`` by averaging f^3 blocks."""
    n, c, *sides = x.shape
    shape = [n, c] + [v for s in sides for v in (s // f, f)]
    return x.reshape(shape).mean(axis=(3, 5, 7)).astype(np.float32)


def warm_up_3d(side: int) -> None:
    """One training step of the study's network on a batch of ``side``^3 patches, then freed."""
    from cordiale.learn.imaging_plans import NetworkSpec, build_network
    from cordiale.learn.trainer import TrainConfig, train_local

    model = build_network(NetworkSpec("monai:resnet10", 3, RESNET_SMALL), 1)
    x = np.zeros((BATCH, 1, side, side, side), dtype=np.float32)
    train_local(model, x, np.arange(BATCH) % 2, TrainConfig(batch_size=BATCH), seed=0)


def study3d_worker(raw: str) -> None:
    """Child process: build the sites and simulate one arm; print one JSON line."""
    from cordiale.data.imaging.transforms import monai_module
    from cordiale.sim.runner import simulate, simulation_of
    from cordiale.sim.sitefiles import site_datasets

    job = json.loads(raw)
    manifests = {s: Path(p) for s, p in job["manifests"].items()}
    monai_module("monai.networks.nets")
    warm_up_3d(job["patch"])  # the imports and torch's first step, before the RSS count starts
    reset_peak_rss()
    idle = _status_mib("VmRSS") or peak_rss_mib()
    patched = job["arm"] == "patches"
    spec = study3d(
        sorted(manifests),
        job["side"],
        job["patch"] if patched else None,
        job["per_volume"],
        job["rounds"],
    )
    t0 = time.perf_counter()
    sites = site_datasets(spec, manifests)
    if not patched:  # whole volumes, block-averaged to the patch side; the full ones freed
        f = job["side"] // job["patch"]
        sites = {
            s: dataclasses.replace(
                d, x_train=block_mean(d.x_train, f), x_test=block_mean(d.x_test, f)
            )
            for s, d in sites.items()
        }
    build_s = time.perf_counter() - t0
    data_peak = peak_rss_mib()
    result = simulate(dataclasses.replace(simulation_of(spec), pooled=False), sites=sites)
    ev = result.federated.evaluation
    print(
        json.dumps(
            {
                "idle": idle,
                "data_peak": data_peak,
                "peak": peak_rss_mib(),
                "build_s": build_s,
                "round_s": [r.seconds for r in result.federated.history],
                "num_train": {s: d.num_train for s, d in sites.items()},
                "example": list(next(iter(sites.values())).x_train.shape[1:]),
                "auc": {s: float(m["auc"]) for s, m in ev.per_site.items()},
                "test_volumes": {s: int(m["n"]) for s, m in ev.per_site.items()},
                "pooled_auc": float(ev.pooled["auc"]),
            }
        )
    )


def bench_patch_study(
    work: Path, side: int, patch: int, patients: int, per_volume: int, rounds: int
) -> Table:
    from cordiale.data.imaging.synthetic import generate

    if side % patch:
        raise SystemExit(f"--vol3d ({side}) must be a multiple of --patch3d ({patch})")
    folder = work / "volumes3d"
    t0 = time.perf_counter()
    manifests = generate(
        folder,
        fmt="hdf5",
        patients=patients,
        images_per_patient=2,
        shape=(side,) * 3,
        seed=0,
        lesions=3,
    )
    gen_s = time.perf_counter() - t0
    on_disk = disk_bytes(folder)
    volumes = sum(len(m.read_text().splitlines()) - 1 for m in manifests.values())
    float_bytes = volumes * side**3 * 4
    job = {
        "manifests": {s: str(p) for s, p in manifests.items()},
        "side": side,
        "patch": patch,
        "per_volume": per_volume,
        "rounds": rounds,
    }
    results = {}
    for arm in ("patches", "downsampled"):
        results[arm] = run_worker({**job, "arm": arm}, "--study3d-worker")
    sites = sorted(manifests)
    f = side // patch
    arms = {
        "patches": f"{per_volume} patches of {patch}^3 / volume",
        "downsampled": f"whole, block mean {f}x (baseline)",
    }
    table = Table(
        title=f"5. Federated 3D patch training: 3 sites, {volumes} HDF5 volumes of {side}^3, "
        f"MONAI ResNet10 (FedBN), {rounds} rounds x 2 epochs; baseline: the same volumes "
        f"loaded whole (ImageDataset) and block-averaged {f}x to {patch}^3; memory baseline: "
        "the volumes' bytes on disk",
        caption=f"{patients} patients per site, 2 volumes each, 3 lesions per positive volume "
        f"(written in {gen_s:.1f} s); volumes on disk (gzip HDF5): {on_disk / 2**20:.0f} MiB, "
        f"as float32: {float_bytes / 2**20:.0f} MiB. simulate in one process, one torch thread, "
        "sites one after another; s/round: median over rounds (evaluation after the last only); "
        "peak RSS rise: each arm in its own process, over the RSS after imports and one warm-up "
        "training step; AUC per test volume (patches: mean of a volume's patch probabilities), "
        "test volumes in brackets",
    )
    table.add_column("")
    for arm, label in arms.items():
        table.add_column(label, justify="right", style="dim" if arm == "downsampled" else None)

    def row(label: str, fmt: Callable[[dict[str, Any]], str], **kw: Any) -> None:
        table.add_row(label, *(fmt(results[arm]) for arm in arms), **kw)

    def rise(r: dict[str, Any], key: str) -> float:
        return float(r[key] - r["idle"]) * 2**20

    def trained_per_s(r: dict[str, Any]) -> float:
        return sum(r["num_train"].values()) * 2 / statistics.median(r["round_s"])  # 2 epochs

    row("training examples per site", lambda r: f"{statistics.fmean(r['num_train'].values()):.0f}")
    row("example shape", lambda r: "x".join(map(str, r["example"])))
    row("building the sites' data, s", lambda r: f"{r['build_s']:.2f}")
    row("seconds per round", lambda r: f"{statistics.median(r['round_s']):.2f}", style="bold")
    row("examples trained per second", lambda r: f"{trained_per_s(r):,.0f}", style="bold")
    row("peak RSS rise, building data", lambda r: f"+{rise(r, 'data_peak') / 2**20:.0f} MiB")
    row("peak RSS rise, whole run", lambda r: f"+{rise(r, 'peak') / 2**20:.0f} MiB")
    row(
        "  / volume bytes on disk",
        lambda r: f"{rise(r, 'peak') / on_disk:.2f}",
        style="bold",
    )
    row(
        "  / volumes as float32",
        lambda r: f"{rise(r, 'peak') / float_bytes:.2f}",
        end_section=True,
    )
    for s in sites:
        row(f"AUC {s}", lambda r, s=s: f"{r['auc'][s]:.3f} ({r['test_volumes'][s]})")
    row("AUC all sites (pooled test)", lambda r: f"{r['pooled_auc']:.3f}", style="bold")
    return table


# --- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400, help="images per format (table 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timings are the median of these")
    parser.add_argument("--volume", type=int, default=256, help="volume side (table 2)")
    parser.add_argument("--chunk", type=int, default=32, help="HDF5 chunk side")
    parser.add_argument("--patch", type=int, default=32, help="patch side")
    parser.add_argument("--patches", type=int, default=200, help="patches per measurement")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="table 3")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--patients", type=int, default=30, help="patients per site")
    parser.add_argument("--images-per-patient", type=int, default=6)
    parser.add_argument("--prevalence", type=float, default=0.3)
    parser.add_argument("--noise", type=float, default=1.0, help="x every site's scanner noise")
    parser.add_argument("--scaling", nargs="+", choices=["site", "federated"], default=["site"])
    parser.add_argument("--aug-images", type=int, default=512, help="2D images (table 4)")
    parser.add_argument("--aug-3d", type=int, default=48, help="3D volume side (table 4)")
    parser.add_argument("--aug-volumes", type=int, default=96, help="3D volumes (table 4)")
    parser.add_argument("--aug-train", type=int, default=96, help="images trained (table 4)")
    parser.add_argument("--vol3d", type=int, default=64, help="volume side (table 5)")
    parser.add_argument("--patch3d", type=int, default=16, help="patch side (table 5)")
    parser.add_argument("--patients3d", type=int, default=20, help="patients per site (table 5)")
    parser.add_argument("--per-volume", type=int, default=8, help="patches per volume (table 5)")
    parser.add_argument("--rounds3d", type=int, default=5, help="rounds (table 5)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--patch-worker", help=argparse.SUPPRESS)
    parser.add_argument("--study3d-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.patch_worker:
        patch_worker(args.patch_worker)
        return
    if args.study3d_worker:
        study3d_worker(args.study3d_worker)
        return

    console = Console()
    if not console.is_terminal:  # piped: rich would wrap the tables at 80 columns
        console = Console(width=150)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cordiale-imaging-bench-") as tmp:
        work = Path(tmp)
        if "load" in args.only:
            console.print(bench_loading(work, args.images, args.repeats))
        if "patches" in args.only:
            console.print(
                bench_patches(work, args.volume, args.chunk, args.patch, args.patches, args.repeats)
            )
        if "auc" in args.only:
            for table in bench_auc(
                work,
                args.seeds,
                args.rounds,
                args.patients,
                args.images_per_patient,
                args.prevalence,
                args.scaling,
                args.noise,
            ):
                console.print(table)
        if "augment" in args.only:
            t1 = time.perf_counter()
            console.print(
                bench_augment(
                    args.aug_images, args.aug_3d, args.aug_volumes, args.aug_train, args.repeats
                )
            )
            console.print(f"table 4: {time.perf_counter() - t1:.0f} s")
        if "patch3d" in args.only:
            t1 = time.perf_counter()
            console.print(
                bench_patch_study(
                    work,
                    args.vol3d,
                    args.patch3d,
                    args.patients3d,
                    args.per_volume,
                    args.rounds3d,
                )
            )
            console.print(f"table 5: {time.perf_counter() - t1:.0f} s")
    console.print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
