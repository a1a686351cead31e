"""Seconds per round and whole-run wall time at N=4 and N=100 sites on Pima, next to Flower.

    .venv/bin/python bench/round_overhead.py [--rounds 10] [--sites 4 100]

Task (as in the foundation issue): MLP 8-32-1, 1 local epoch, batch 32, SGD lr 0.05, IID sites,
FedAvg with every site every round, no per-round evaluation. Printed per N:

* Cordiale seconds per round (median over rounds, every message encoded and decoded),
* the local-training compute alone (the same ``train_local`` calls with no federation around them),
  and the per-round *overhead* = round time - compute,
* where ``.venv-flower`` holds Flower (``bench/flower_round.py`` runs inside it), Flower's seconds
  per round for the same task, the ratio Flower / Cordiale of the round times, and the ratio of the
  per-round overheads (each round time minus the same bare compute), measured in this same run.
  Flower's simulation engine polls every 0.1 s, which floors its round time at small N.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from cordiale.data.catalog import get_dataset
from cordiale.data.features import Standardizer, combine_stats, feature_stats
from cordiale.data.local import LocalDataset, split_frame
from cordiale.data.partition import PartitionSpec, partition_indices
from cordiale.learn.models import ModelSpec, build_model, get_weights, set_weights
from cordiale.learn.secure_aggregation import SecureAggregationConfig
from cordiale.learn.tasks import derive_seed
from cordiale.learn.trainer import TrainConfig, train_local
from cordiale.sim.runner import DataSource, SimulationSpec, simulate

ROOT = Path(__file__).resolve().parents[1]
FLOWER_PY = ROOT / ".venv-flower" / "bin" / "python"
TRAIN = TrainConfig(epochs=1, batch_size=32, lr=0.05, optimizer="sgd")
MODEL = ModelSpec(kind="mlp", hidden=(32,))


def wide_console() -> Console:
    """A console whose tables keep their column names when the output is a file or a pipe."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def pima_sites(n: int, seed: int) -> dict[str, LocalDataset]:
    """IID Pima sites built directly (100 sites of ~8 rows are below the contract's minimum)."""
    entry = get_dataset("pima")
    frame = entry.contract.validate_frame(entry.load(), dataset="pima")
    target = entry.contract.target.name
    parts = partition_indices(
        PartitionSpec("iid"),
        labels=frame[target].to_numpy(),
        sites=n,
        rng=np.random.default_rng(seed),
    )
    sites = {}
    for name, idx in parts.items():
        train, test = split_frame(
            frame.iloc[idx], target=target, test_fraction=0.2, seed=derive_seed(seed, name)
        )
        sites[name] = LocalDataset.from_frames(name, entry.contract, train, test)
    return sites


def compute_only(sites: dict[str, LocalDataset], rounds: int, seed: int) -> float:
    """Seconds per round of the bare local training: the ``train_local`` calls alone (models
    built, data scaled and weights reset outside the timed part; no messages, no aggregation)."""
    scaler = Standardizer.from_stats(
        combine_stats([feature_stats(d.x_train) for d in sites.values()])
    )
    data = {s: (scaler.transform(d.x_train), d.y_train) for s, d in sites.items()}
    models = {s: build_model(MODEL, x.shape[1], seed=seed) for s, (x, _) in data.items()}
    initial = {s: get_weights(m) for s, m in models.items()}
    times = []
    for r in range(rounds):
        for s, m in models.items():
            set_weights(m, initial[s])
        t0 = time.perf_counter()
        for s, (x, y) in data.items():
            train_local(models[s], x, y, TRAIN, seed=derive_seed(seed, r, s))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cordiale_run(
    sites: dict[str, LocalDataset],
    rounds: int,
    seed: int,
    secure_aggregation: SecureAggregationConfig | None = None,
) -> tuple[float, float, float, float]:
    """Median seconds per round (the last round, which evaluates, left out), the same had the
    sites worked at the same time (``RoundRecord.concurrent_seconds``), wall time, and the mean
    seconds per round (the same rounds)."""
    spec = SimulationSpec(
        source=DataSource(dataset="pima"),
        strategy="fedavg",
        rounds=rounds,
        model=MODEL,
        train=TRAIN,
        seed=seed,
        pooled=False,
        evaluate_every=0,
        secure_aggregation=secure_aggregation,
    )
    t0 = time.perf_counter()
    result = simulate(spec, sites=sites)
    wall = time.perf_counter() - t0
    rounds_timed = result.federated.history[:-1] or result.federated.history
    return (
        statistics.median(r.seconds for r in rounds_timed),
        statistics.median(r.concurrent_seconds for r in rounds_timed),
        wall,
        statistics.mean(r.seconds for r in rounds_timed),
    )


def flower_run(
    n: int,
    rounds: int,
    script: str = "flower_round.py",
    extra: tuple[str, ...] = (),
    timeout: float = 900.0,
) -> dict[str, float] | None:
    """Run a Flower benchmark ``script`` (in ``bench/``) in ``.venv-flower``; its JSON line, or
    None (no Flower, or the run failed). ``timeout`` is the script's own watchdog; the child is
    killed a minute after it if it has not ended by then."""
    if not FLOWER_PY.exists():
        return None
    cmd = [str(FLOWER_PY), str(ROOT / "bench" / script), "--sites", str(n), "--rounds", str(rounds)]
    cmd += ["--timeout", str(timeout), *extra]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60)
    except subprocess.TimeoutExpired:
        Console(stderr=True).print(f"Flower run killed after {timeout + 60:.0f} s: {cmd[2:]}")
        return None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (lines[-1] if lines else "") + proc.stderr[-800:]
        Console(stderr=True).print(f"Flower run failed ({' '.join(cmd[2:])}): {tail}")
        return None
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--sites", type=int, nargs="+", default=[4, 100])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-flower", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    table = Table(title=f"Seconds per round, Pima MLP 8-32-1, {args.rounds} rounds")
    for col in (
        "sites",
        "cordiale s/round",
        "compute s/round",
        "overhead s/round",
        "cordiale wall s",
        "flower s/round",
        "flower wall s",
        "flower / cordiale",
        "overhead flower / cordiale",
    ):
        table.add_column(col, justify="right")
    for n in args.sites:
        sites = pima_sites(n, args.seed)
        per_round, _, wall, _ = cordiale_run(sites, args.rounds, args.seed)
        compute = compute_only(sites, args.rounds, args.seed)
        fl = None if args.no_flower else flower_run(n, args.rounds)
        table.add_row(
            str(n),
            f"{per_round:.4f}",
            f"{compute:.4f}",
            f"{max(per_round - compute, 0):.4f}",
            f"{wall:.2f}",
            f"{fl['seconds_per_round']:.4f}" if fl else "-",
            f"{fl['wall_seconds']:.2f}" if fl else "-",
            f"{fl['seconds_per_round'] / per_round:.1f}x" if fl else "-",
            f"{(fl['seconds_per_round'] - compute) / max(per_round - compute, 1e-9):.1f}x"
            if fl
            else "-",
        )
    console = wide_console()
    console.print(table)
    if not FLOWER_PY.exists():
        console.print("Flower not found (.venv-flower): see bench/README.md to set it up.")


if __name__ == "__main__":
    main()
