"""Per-round cost of secure aggregation, against the plaintext round measured in the same run.

    .venv/bin/python bench/secagg_overhead.py [--rounds 11] [--sites 4 20 100] [--neighbours 10]
        [--flower-sites 4 100] [--flower-rounds 5] [--no-flower]

1. Pima MLP 8-32-1 studies (1 local epoch, batch 32, SGD lr 0.05, IID sites, FedAvg), median
   seconds per round with and without ``secure_aggregation``; at N >= 50 also SecAgg+ with
   ``--neighbours`` neighbours, with keys kept for an epoch of 10 rounds (the default), with
   every survivor asked at unmasking (``spare_holders=None``; the default asks only enough for
   one spare share of each secret) and with fresh keys every round (``rekey_every=1``, the
   original protocol's cost). The median is a round inside an epoch; the "mean" column averages
   all timed rounds (the last round, which evaluates, is left out: with 11 rounds, one whole
   epoch, its key set-up included). Every message is encoded and decoded (in-memory transport).
   The plaintext study runs before and after the secure ones; the faster of the two is the
   baseline (the conservative choice on a noisy machine). After the warm-up, ``gc.freeze()``
   moves the ~400k objects that imports and data loading leave to the garbage collector's
   permanent generation: otherwise its full collections rescan them at moments that depend on
   the order of the runs, which moved one row by up to 40% between runs.
   Where ``.venv-flower`` holds Flower, next to Cordiale's rows at ``--flower-sites``: Flower's
   own SecAgg+ on the same task (``bench/flower_secagg.py``: Flower 1.41's legacy
   ``DefaultWorkflow`` with ``SecAggPlusWorkflow`` and ``secaggplus_mod``, on its Ray
   simulation) against the same Flower workflow without it, seconds per round with round 1
   left out; all sites share keys below 50 sites (as Cordiale's complete graph), and at
   N >= 50 each site's secrets go to ``--neighbours`` neighbours (``num_shares`` = k + 1).
   Threshold: a strict majority of the shares in both. Each Flower run is bounded by a watchdog.
2. The protocol alone for 10 sites and a 1M-element vector (``run_secagg_round``) against the
   plaintext weighted sum of the same vectors.

The issue's goal: at most 1.5x plaintext at 100 sites (SecAgg+).
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np
import torch
from rich.table import Table

from cordiale.crypto import run_secagg_round
from cordiale.crypto.primitives import exchange, generate_keypair
from cordiale.learn.secure_aggregation import SecureAggregationConfig
from round_overhead import FLOWER_PY, cordiale_run, flower_run, pima_sites, wide_console

FLOWER_TIMEOUT = 240.0  # seconds, each Flower run (its watchdog)


def per_round(
    sites: dict, rounds: int, secagg: SecureAggregationConfig | None
) -> tuple[float, float, float]:
    """Median seconds per round in this one process, had the sites worked concurrently, and
    the mean seconds per round in this process."""
    one_process, concurrent, _, mean = cordiale_run(sites, rounds, 0, secagg)
    return one_process, concurrent, mean


def flower_secagg(n: int, rounds: int, neighbours: int) -> tuple[list[str], str]:
    """A table row: Flower's seconds per round without and with its SecAgg+ ("-" if a run
    failed; the reason is on stderr), and Flower's version."""
    shares = n if n < 50 else min(neighbours + 1, n)
    threshold = shares // 2 + 1
    extra = ("--secagg", "--num-shares", str(shares), "--threshold", str(threshold))
    plain = flower_run(n, rounds, "flower_secagg.py", (), FLOWER_TIMEOUT)
    secure = flower_run(n, rounds, "flower_secagg.py", extra, FLOWER_TIMEOUT)
    mode = "Flower complete graph" if shares == n else f"Flower SecAgg+ k={shares - 1}"
    row = [str(n), mode]
    p = plain["seconds_per_round"] if plain else None
    s = secure["seconds_per_round"] if secure else None
    row += [f"{p:.3f}" if p else "-", f"{s:.3f}" if s else "-"]
    row += [f"{s / p:.2f}x" if p and s else "-", "-", "-", "-", "-"]
    return row, (plain or secure or {}).get("flwr_version", "?")


def big_vector(n_sites: int, length: int, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    inputs = {f"site-{i}": rng.uniform(-1, 1, length) for i in range(n_sites)}
    t0 = time.perf_counter()
    _ = np.sum(list(inputs.values()), axis=0)
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_secagg_round(inputs, clip=1.0)
    return plain, time.perf_counter() - t0


def key_agreements(n: int) -> float:
    """Seconds for ``n`` X25519 exchanges (a round of SecAgg+ does two per node and neighbour)."""
    pairs = [(generate_keypair(), generate_keypair().public) for _ in range(n)]
    t0 = time.perf_counter()
    for own, peer in pairs:
        exchange(own, peer)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--sites", type=int, nargs="+", default=[4, 20, 100])
    ap.add_argument("--neighbours", type=int, default=10)
    ap.add_argument("--flower-sites", type=int, nargs="*", default=[4, 100])
    ap.add_argument("--flower-rounds", type=int, default=5)
    ap.add_argument("--no-flower", action="store_true")
    args = ap.parse_args()
    flower = FLOWER_PY.exists() and not args.no_flower
    flower_version = "?"
    torch.set_num_threads(1)
    table = Table(title="Seconds per round, Pima MLP 8-32-1: plaintext vs secure aggregation")
    for col in (
        "sites",
        "mode",
        "plain s/round",
        "secure s/round",
        "ratio",
        "ratio of means (key set-up included)",
        "plain, sites concurrent",
        "secure, sites concurrent",
        "ratio, sites concurrent",
    ):
        table.add_column(col, justify="right")
    per_round(pima_sites(4, 0), 2, SecureAggregationConfig())  # warm up torch and the crypto
    gc.freeze()
    for n in args.sites:
        sites = pima_sites(n, 0)
        before = per_round(sites, args.rounds, None)
        modes = [("complete graph", SecureAggregationConfig())]
        if n >= 50:
            k = args.neighbours
            modes.append((f"SecAgg+ k={k}", SecureAggregationConfig(degree=k)))
            modes.append(
                (
                    f"SecAgg+ k={k}, every survivor unmasks",
                    SecureAggregationConfig(degree=k, spare_holders=None),
                )
            )
            modes.append(
                (
                    f"SecAgg+ k={k}, fresh keys each round",
                    SecureAggregationConfig(degree=k, rekey_every=1),
                )
            )
        measured = [(label, per_round(sites, args.rounds, cfg)) for label, cfg in modes]
        after = per_round(sites, args.rounds, None)
        plain, plain_conc, plain_mean = (min(a, b) for a, b in zip(before, after, strict=True))
        for label, (secure, secure_conc, secure_mean) in measured:
            table.add_row(
                str(n),
                label,
                f"{plain:.3f}",
                f"{secure:.3f}",
                f"{secure / plain:.2f}x",
                f"{secure_mean / plain_mean:.2f}x",
                f"{plain_conc:.4f}",
                f"{secure_conc:.4f}",
                f"{secure_conc / plain_conc:.2f}x",
            )
        if flower and n in args.flower_sites:
            row, flower_version = flower_secagg(n, args.flower_rounds, args.neighbours)
            table.add_row(*row)
    console = wide_console()
    console.print(table)
    if flower:
        console.print(
            f"Flower rows: Flower {flower_version}'s SecAggPlusWorkflow vs its plain workflow, Ray "
            f"simulation, {args.flower_rounds} rounds with round 1 left out, threshold a strict "
            "majority of the shares; its engine polls every 0.1 s per message exchange "
            "(SecAgg+: 4 a round)."
        )
    else:
        console.print("Flower rows skipped: no .venv-flower (see bench/README.md) or --no-flower.")
    agreements = 2 * 100 * args.neighbours
    console.print(
        f"key agreement alone: {agreements:,} X25519 exchanges (a 100-site SecAgg+ round with "
        f"{args.neighbours} neighbours) take {key_agreements(agreements):.3f} s in one process"
    )
    plain, secure = big_vector(10, 1_000_000)
    console.print(
        f"protocol only, 10 sites x 1M elements: plaintext sum {plain:.3f} s, "
        f"secure aggregation {secure:.3f} s ({secure / plain:.0f}x the bare sum)"
    )


if __name__ == "__main__":
    main()
