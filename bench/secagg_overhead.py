"""Per-round cost of secure aggregation, against the plaintext round measured in the same run.

    .venv/bin/python bench/secagg_overhead.py [--rounds 5] [--sites 4 20 100] [--neighbours 10]

1. Pima MLP 8-32-1 studies (1 local epoch, batch 32, SGD lr 0.05, IID sites, FedAvg), median
   seconds per round with and without ``secure_aggregation``; at N >= 50 also SecAgg+ with
   ``--neighbours`` neighbours. Every message is encoded and decoded (in-memory transport).
2. The protocol alone for 10 sites and a 1M-element vector (``run_secagg_round``) against the
   plaintext weighted sum of the same vectors.

The issue's goal: at most 1.5x plaintext at 100 sites (SecAgg+).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from rich.table import Table

from cordiale.crypto import run_secagg_round
from cordiale.learn.secure_aggregation import SecureAggregationConfig
from round_overhead import cordiale_run, pima_sites, wide_console


def per_round(
    sites: dict, rounds: int, secagg: SecureAggregationConfig | None
) -> tuple[float, float]:
    """Median seconds per round in this one process, and had the sites worked concurrently."""
    one_process, concurrent, _ = cordiale_run(sites, rounds, 0, secagg)
    return one_process, concurrent


def big_vector(n_sites: int, length: int, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    inputs = {f"site-{i}": rng.uniform(-1, 1, length) for i in range(n_sites)}
    t0 = time.perf_counter()
    _ = np.sum(list(inputs.values()), axis=0)
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_secagg_round(inputs, clip=1.0)
    return plain, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sites", type=int, nargs="+", default=[4, 20, 100])
    ap.add_argument("--neighbours", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    table = Table(title="Seconds per round, Pima MLP 8-32-1: plaintext vs secure aggregation")
    for col in (
        "sites",
        "mode",
        "plain s/round",
        "secure s/round",
        "ratio",
        "plain, sites concurrent",
        "secure, sites concurrent",
        "ratio, sites concurrent",
    ):
        table.add_column(col, justify="right")
    per_round(pima_sites(4, 0), 2, SecureAggregationConfig())  # warm up torch and the crypto
    for n in args.sites:
        sites = pima_sites(n, 0)
        plain, plain_conc = per_round(sites, args.rounds, None)
        modes = [("complete graph", SecureAggregationConfig())]
        if n >= 50:
            modes.append(
                (f"SecAgg+ k={args.neighbours}", SecureAggregationConfig(degree=args.neighbours))
            )
        for label, cfg in modes:
            secure, secure_conc = per_round(sites, args.rounds, cfg)
            table.add_row(
                str(n),
                label,
                f"{plain:.3f}",
                f"{secure:.3f}",
                f"{secure / plain:.2f}x",
                f"{plain_conc:.4f}",
                f"{secure_conc:.4f}",
                f"{secure_conc / plain_conc:.2f}x",
            )
    console = wide_console()
    console.print(table)
    plain, secure = big_vector(10, 1_000_000)
    console.print(
        f"protocol only, 10 sites x 1M elements: plaintext sum {plain:.3f} s, "
        f"secure aggregation {secure:.3f} s ({secure / plain:.0f}x the bare sum)"
    )


if __name__ == "__main__":
    main()
