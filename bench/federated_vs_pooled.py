"""Federated AUC as a share of pooled AUC, for every bundled dataset, IID and Dirichlet(0.5) sites.

    .venv/bin/python bench/federated_vs_pooled.py [--rounds 30] [--sites 4] [--seed 0]

For each case the federated model (FedAvg and FedAdam, best reported) and the pooled baseline
(the same model trained centrally on the union of the sites' training rows) are evaluated on the
union of the sites' test rows; the ratio federated / pooled is what a federation chases (1.0).
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.progress import track
from rich.table import Table

from cordiale.data.catalog import list_datasets
from cordiale.sim.runner import DataSource, SimulationSpec, prepare_sites, simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cases = []
    for d in list_datasets():
        partitions = ["iid", "dirichlet:0.5"] + (["natural"] if d.site_column else [])
        cases += [(d.name, p) for p in partitions]
    table = Table(title=f"federated / pooled AUC ({args.rounds} rounds, seed {args.seed})")
    for col in (
        "dataset",
        "partition",
        "sites",
        "pooled AUC",
        "FedAvg AUC",
        "FedAdam AUC",
        "best ratio",
        "seconds",
    ):
        table.add_column(col, justify="left" if col in ("dataset", "partition") else "right")
    ratios = []
    for name, partition in track(cases, description="cases"):
        t0 = time.perf_counter()
        base = SimulationSpec(
            source=DataSource(dataset=name),
            sites=args.sites,
            partition=partition,
            rounds=args.rounds,
            seed=args.seed,
            evaluate_every=0,
        )
        _, sites = prepare_sites(base)
        aucs = {}
        pooled_auc = float("nan")
        for strategy in ("fedavg", "fedadam"):
            spec = SimulationSpec(
                **{**base.__dict__, "strategy": strategy, "pooled": strategy == "fedavg"}
            )
            res = simulate(spec, sites=sites).to_json()
            aucs[strategy] = res["federated"]["auc"]
            if res["pooled"]:
                pooled_auc = res["pooled"]["auc"]
        ratio = max(aucs.values()) / pooled_auc
        ratios.append(ratio)
        table.add_row(
            name,
            partition,
            str(len(sites)),
            f"{pooled_auc:.3f}",
            f"{aucs['fedavg']:.3f}",
            f"{aucs['fedadam']:.3f}",
            f"{ratio:.3f}",
            f"{time.perf_counter() - t0:.1f}",
        )
    console = Console()
    console.print(table)
    console.print(f"worst ratio {min(ratios):.3f}, mean ratio {sum(ratios) / len(ratios):.3f}")


if __name__ == "__main__":
    main()
