"""Seconds per round of a networked study (HTTPS, mutual TLS, loopback) against its simulation.

    .venv/bin/python bench/network_round.py [--nodes 3 10] [--rounds 5] [--hidden 1000 990]

For each N a throwaway consortium is built in a temp dir: a CA, the hub (uvicorn over TLS, SQLite)
in a thread of this process, and N nodes ``site-00``... as separate ``cordiale node start``
processes (``--poll-wait 5``, one torch thread each), so no node shares the GIL with the hub or
another node. Each node reads its own CSV of the bundled Pima table split IID (768 rows: ~77 per
site at N=10). The study: MLP 8-1000-990-1 (~1.0M parameters, the exact count is printed), 1 local
epoch, batch 32, SGD lr 0.01, FedAvg with every site every round, evaluation only after the last
round. Its baseline is the in-process simulation of the same study on the same files
(``simulate(simulation_of(spec))``, no pooled run, every message still encoded and decoded),
measured in the same run after the consortium is shut down.

Latency per round is the ``seconds`` of each committed round, i.e. the wall time of
``Federation.step`` (sample, send, every node trains and answers, aggregate), measured the same
way on both sides: by the hub for the network, by the simulation for the baseline. The median is
over rounds 2 .. R-1: round 1 (warm-up) and round R (it also evaluates) are left out, so the
default 5 rounds give 3 pure training rounds. The hub also writes a checkpoint (fsynced) and
commits the round to its database after ``step``; the "commit to commit" column is the median
interval between the rounds' commit timestamps over the same rounds, which includes that.
Printed per N: parameters, the update payload per round (4 bytes x parameters, to and from every
node), network and simulation seconds per round, their ratio, and the largest absolute difference
between the networked final model and the simulation's (the two must agree).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from safetensors.numpy import load as st_load
from sqlalchemy import select

from cordiale.client import Credentials, ResearcherClient
from cordiale.crypto.pki import CertificateAuthority
from cordiale.data.catalog import get_dataset
from cordiale.hub.admin import add_researcher, add_site, init_consortium
from cordiale.hub.db import RoundRow
from cordiale.hub.server import HubServer, bind
from cordiale.hub.service import Hub, HubSettings
from cordiale.learn.models import ModelSpec, build_model, get_weights
from cordiale.learn.study import StudySpec
from cordiale.sim.runner import simulate, simulation_of
from cordiale.sim.sitefiles import site_datasets, write_site_files

COUNTRIES = ("GB", "FR")
STARTUP_TIMEOUT = 240.0  # N node processes importing torch on a small machine
STUDY_TIMEOUT = 900.0


def site_names(n: int) -> list[str]:
    return [f"site-{i:02d}" for i in range(n)]


def study_dict(sites: list[str], rounds: int, hidden: list[int]) -> dict[str, Any]:
    return {
        "study": {
            "name": "network round benchmark",
            "purpose": "seconds per round over HTTPS with mutual TLS",
            "sites": sites,
            "min_sites": len(sites),
            "rounds": rounds,
            "round_timeout": 120.0,
            "seed": 0,
        },
        "data": {
            "dataset": "pima",
            "contract": get_dataset("pima").contract.model_dump(mode="json"),
        },
        "model": {"kind": "mlp", "hidden": hidden},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.01, "optimizer": "sgd"},
        "strategy": {"name": "fedavg"},
        "evaluation": {"every": 0},
    }


def parameter_count(hidden: list[int]) -> int:
    features = len(get_dataset("pima").contract.field_names)
    model = build_model(ModelSpec(kind="mlp", hidden=tuple(hidden)), features, seed=0)
    return sum(int(a.size) for a in get_weights(model).values())


def middle_median(values: list[float]) -> float:
    """Median without the first (warm-up) and last (evaluating) round, when enough remain."""
    core = values[1:-1]
    return statistics.median(core or values)


def _tail(path: Path, chars: int = 1500) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


@dataclasses.dataclass
class NetworkRun:
    step_seconds: list[float]
    commit_intervals: list[float]
    weights: dict[str, np.ndarray]
    startup_seconds: float


@contextlib.contextmanager
def consortium(work: Path, sites: list[str]) -> Iterator[tuple[Hub, Credentials, dict[str, Path]]]:
    """CA, hub in a thread, one node process per site; everything stopped on exit."""
    settings = HubSettings(home=work / "hub", start_timeout=STARTUP_TIMEOUT)
    init_consortium(settings, "bench-consortium", ["127.0.0.1", "localhost"])
    server = HubServer(Hub(settings), bind("127.0.0.1", 0))
    configs = write_site_files(work, sites, seed=0)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        server.start()
        for i, site in enumerate(sites):
            kit = work / "sites" / site / f"{site}.kit"
            add_site(settings, site, COUNTRIES[i % len(COUNTRIES)], server.url, kit)
            log = work / "logs" / f"{site}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "wb") as out:
                cmd = ["node", "start", "--kit", str(kit), "--config", str(configs[site])]
                procs.append(
                    (
                        site,
                        subprocess.Popen(
                            [sys.executable, "-m", "cordiale", *cmd, "--poll-wait", "5"],
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                        ),
                    )
                )
        token = add_researcher(settings, "bench", "bench-org")
        ca_pem = CertificateAuthority.load(settings.ca_dir).ca_cert_pem.decode()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while len(server.hub.online(sites)) < len(sites):
            dead = [s for s, p in procs if p.poll() is not None]
            if dead:
                log = work / "logs" / f"{dead[0]}.log"
                raise RuntimeError(f"node {dead[0]} exited; its log:\n{_tail(log)}")
            if time.monotonic() > deadline:
                missing = sorted(set(sites) - set(server.hub.online(sites)))
                raise RuntimeError(f"nodes not connected after {STARTUP_TIMEOUT:.0f} s: {missing}")
            time.sleep(0.2)
        yield server.hub, Credentials("bench", server.url, ca_pem, token), configs
    finally:
        for _site, p in procs:
            p.terminate()
        for _site, p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        server.stop()


def network_run(work: Path, spec: StudySpec) -> tuple[NetworkRun, dict[str, Path]]:
    sites = spec.study.sites
    t0 = time.perf_counter()
    with consortium(work, sites) as (hub, credentials, configs):
        startup = time.perf_counter() - t0
        with ResearcherClient(credentials) as client:
            study_id = client.submit(spec)
            status = client.wait(study_id, timeout=STUDY_TIMEOUT, every=1.0)
            if status["state"] != "finished":
                raise RuntimeError(
                    f"study {status['state']} (rounds done {status['rounds_done']}): "
                    f"{status['error']}"
                )
            model = st_load(client.model(study_id))
        with hub.db.session() as s:
            rows = s.scalars(
                select(RoundRow).where(RoundRow.study_id == study_id).order_by(RoundRow.round)
            ).all()
            stamps = [r.committed_at.timestamp() for r in rows]  # round 0 (setup) first
    weights = {k.removeprefix("weights/"): v for k, v in model.items() if k.startswith("weights/")}
    run = NetworkRun(
        step_seconds=[float(r["seconds"]) for r in status["history"]],
        commit_intervals=[b - a for a, b in itertools.pairwise(stamps)],
        weights=weights,
        startup_seconds=startup,
    )
    return run, configs


def simulation_run(spec: StudySpec, configs: dict[str, Path]) -> tuple[list[float], Any]:
    tables = {site: cfg.parent / "data.csv" for site, cfg in configs.items()}
    sim_spec = dataclasses.replace(simulation_of(spec), pooled=False)
    result = simulate(sim_spec, sites=site_datasets(spec, tables))
    return [r.seconds for r in result.federated.history], result.federated.weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[3, 10])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--hidden", type=int, nargs="+", default=[1000, 990])
    ap.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = ap.parse_args()
    if args.rounds < 3:
        ap.error("--rounds must be at least 3 (round 1 warms up, the last one evaluates)")
    console = Console()
    params = parameter_count(args.hidden)
    arch = "-".join(str(h) for h in [8, *args.hidden, 1])
    table = Table(
        title=f"Seconds per round, Pima MLP {arch} ({params:,} parameters), "
        f"median of rounds 2..{args.rounds - 1} of {args.rounds}"
    )
    for col in (
        "nodes",
        "params",
        "MB/\nround",
        "network\ns/round",
        "commit to\ncommit s",
        "sim\ns/round",
        "ratio\nnet/sim",
        "max\n|Δw|",
    ):
        table.add_column(col, justify="right")
    out: list[dict[str, Any]] = []
    startup: list[str] = []
    for n in args.nodes:
        spec = StudySpec.parse(study_dict(site_names(n), args.rounds, args.hidden))
        with tempfile.TemporaryDirectory(prefix=f"cordiale-netbench-{n}-") as d:
            console.print(f"N={n}: starting the hub and {n} node processes in {d}")
            net, configs = network_run(Path(d), spec)
            sim_seconds, sim_weights = simulation_run(spec, configs)
        diff = max(float(np.max(np.abs(net.weights[k] - v))) for k, v in sim_weights.items())
        network = middle_median(net.step_seconds)
        committed = middle_median(net.commit_intervals)
        simulation = middle_median(sim_seconds)
        payload = 2 * n * 4 * params / 1e6
        table.add_row(
            str(n),
            f"{params / 1e6:.2f}M",
            f"{payload:.1f}",
            f"{network:.3f}",
            f"{committed:.3f}",
            f"{simulation:.3f}",
            f"{network / simulation:.2f}x",
            f"{diff:.1e}",
        )
        startup.append(f"N={n}: {net.startup_seconds:.1f} s")
        out.append(
            {
                "nodes": n,
                "params": params,
                "payload_mb_per_round": payload,
                "network_seconds_per_round": network,
                "network_commit_interval": committed,
                "simulation_seconds_per_round": simulation,
                "ratio": network / simulation,
                "max_abs_weight_difference": diff,
                "startup_seconds": net.startup_seconds,
                "network_rounds": net.step_seconds,
                "simulation_rounds": sim_seconds,
            }
        )
    console.print(table)
    console.print(
        f"MB/round: the update payload, 4 bytes x {params:,} parameters to and from every node. "
        f"{os.cpu_count()} cores; every node trains on one torch thread, in its own process. "
        f"Hub and nodes up and connected in {', '.join(startup)}."
    )
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
