"""A federated imaging study, simulated and over the network: FedAvg vs FedBN on shifted sites.

Three synthetic hospitals (``oxford``, ``paris-cite``, ``pasteur``) whose scanners differ in gain,
contrast, noise, blur and resolution hold lesion / no-lesion images. The study trains a MONAI
DenseNet121 (the built-in plan ``builtin:imaging``, approved by hash at each site) with MONAI
augmentation, twice: FedAvg (every layer averaged) and FedBN
(``model.fedbn = true``: batch-norm layers stay at each site). Each runs in one-process
simulation and over a real consortium - a hub and three nodes on 127.0.0.1 with mutual TLS - and
the networked model must equal the simulated one. A table compares per-site AUC.

    .venv/bin/python examples/imaging_study.py                 # about a minute on 2 CPU cores
    .venv/bin/python examples/imaging_study.py --patients 30 --rounds 8 --out imaging-results
"""

from __future__ import annotations

import argparse
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
import torch
from rich.console import Console
from rich.table import Table
from safetensors.numpy import load as st_load

from cordiale.client import Credentials, ResearcherClient
from cordiale.crypto.pki import CertificateAuthority, EnrolmentKit
from cordiale.data.imaging.synthetic import generate
from cordiale.governance.plans import builtin_plan
from cordiale.hub.admin import add_researcher, add_site, init_consortium
from cordiale.hub.server import HubServer, bind
from cordiale.hub.service import Hub, HubSettings
from cordiale.learn.study import StudySpec
from cordiale.node.agent import NodeAgent
from cordiale.node.config import NodeConfig
from cordiale.sim.runner import simulate, simulation_of
from cordiale.sim.sitefiles import site_datasets

COUNTRIES = {"oxford": "GB", "paris-cite": "FR", "pasteur": "FR"}
VARIANTS = {"FedAvg": False, "FedBN": True}


def study_spec(sites: list[str], *, fedbn: bool, rounds: int, side: int) -> dict[str, Any]:
    """The study as a researcher writes it (here as a mapping; as TOML in a file)."""
    return {
        "study": {
            "name": f"Lesion detection ({'FedBN' if fedbn else 'FedAvg'})",
            "purpose": "Detect focal lesions across scanners of three hospitals",
            "category": "research:imaging",
            "sites": sites,
            "min_sites": 2,
            "rounds": rounds,
            "round_timeout": 120.0,
            "seed": 0,
        },
        "data": {
            "dataset": "lesions",
            "kind": "imaging",
            "scaling": "site",
            "test_fraction": 0.25,
            "contract": {"name": "lesions", "ndim": 2, "shape": [side, side], "min_images": 10},
            # training batches only, seeded from each task's seed; a per-image intensity
            # preprocessing ("preprocess": [{"name": "ScaleIntensity"}]) would also remove much
            # of the scanner shift that FedBN answers
            "augment": [
                {"name": "RandFlip", "prob": 0.5, "spatial_axis": 0},
                {"name": "RandRotate90", "prob": 0.5},
                {"name": "RandGaussianNoise", "prob": 0.3, "std": 0.02},
            ],
        },
        "model": {
            "network": "monai:densenet121",
            "network_params": {"init_features": 8, "growth_rate": 8},
            "fedbn": fedbn,
        },
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.01, "momentum": 0.9},
        "strategy": {"name": "fedavg"},
    }


@dataclass
class Outcome:
    per_site_auc: dict[str, float]
    networked_per_site_auc: dict[str, float]
    max_difference: float  # networked vs simulated model, largest absolute weight difference


@contextmanager
def consortium(root: Path, manifests: dict[str, Path]) -> Iterator[Credentials]:
    """A consortium on loopback: CA, hub (HTTPS, mutual TLS, SQLite) and one node agent per site,
    each node reading only its own manifest, its custodian having approved ``builtin:imaging``."""
    settings = HubSettings(home=root / "hub")
    init_consortium(settings, "imaging-alliance", ["127.0.0.1", "localhost"], hub_country="FR")
    sock = bind("127.0.0.1", 0)
    url = f"https://127.0.0.1:{sock.getsockname()[1]}"
    server = HubServer(Hub(settings), sock)
    server.start()
    agents: list[tuple[NodeAgent, threading.Thread]] = []
    try:
        for site, manifest in manifests.items():
            node_toml = manifest.parent / "node.toml"
            node_toml.write_text(
                tomli_w.dumps({"datasets": [{"name": "lesions", "path": manifest.name}]})
            )
            config = NodeConfig.load(node_toml)
            # the custodian reviews `cordiale node plans show builtin:imaging`, then approves it
            config.plan_approvals().approve(builtin_plan("imaging"), by=f"custodian of {site}")
            kit_path = root / f"{site}.kit"
            add_site(settings, site, COUNTRIES.get(site, "FR"), url, kit_path)
            agent = NodeAgent(EnrolmentKit.read(kit_path), config, hub_url=url, poll_wait=2.0)
            thread = threading.Thread(target=agent.run, name=f"node-{site}", daemon=True)
            thread.start()
            agents.append((agent, thread))
        ca_pem = CertificateAuthority.load(settings.ca_dir).ca_cert_pem.decode()
        yield Credentials("alice", url, ca_pem, add_researcher(settings, "alice", "oxford"))
    finally:
        for agent, thread in agents:
            agent.stop()
            thread.join(timeout=10)
        server.stop()


def run(
    out: Path,
    *,
    patients: int = 16,
    rounds: int = 5,
    side: int = 32,
    console: Console | None = None,
) -> dict[str, Outcome]:
    """Generate the sites, run both variants simulated and networked; returns their outcomes."""
    console = console or Console()
    # One intra-op thread, as the simulation uses: convolutions then sum in the same order in the
    # nodes as in the simulation, so the networked model equals the simulated one bit for bit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(out, patients=patients, rounds=rounds, side=side, console=console)
    finally:
        torch.set_num_threads(threads)


def _run(
    out: Path, *, patients: int, rounds: int, side: int, console: Console
) -> dict[str, Outcome]:
    manifests = generate(
        out / "images", fmt="nifti", patients=patients, images_per_patient=3, shape=(side, side)
    )
    console.print(f"synthetic sites in {out / 'images'}: {', '.join(manifests)}")
    outcomes: dict[str, Outcome] = {}
    with consortium(out / "consortium", manifests) as credentials:
        for variant, fedbn in VARIANTS.items():
            spec = StudySpec.parse(
                study_spec(sorted(manifests), fedbn=fedbn, rounds=rounds, side=side)
            )
            console.print(f"[bold]{variant}[/]: simulating {rounds} rounds ...")
            sim = simulate(
                replace(simulation_of(spec), pooled=False), sites=site_datasets(spec, manifests)
            )
            console.print(f"[bold]{variant}[/]: the same study over mutual TLS ...")
            with ResearcherClient(credentials) as client:
                study_id = client.submit(spec)
                status = client.wait(study_id, timeout=600)
                if status["state"] != "finished":
                    raise SystemExit(f"{variant} study {status['state']}: {status['error']}")
                model = st_load(client.model(study_id))
            diff = max(
                float(np.max(np.abs(model[f"weights/{k}"] - v)))
                for k, v in sim.federated.weights.items()
            )
            outcomes[variant] = Outcome(
                per_site_auc={s: m["auc"] for s, m in sim.federated.evaluation.per_site.items()},
                networked_per_site_auc=dict(status["history"][-1]["per_site_auc"]),
                max_difference=diff,
            )
    return outcomes


def render(console: Console, outcomes: dict[str, Outcome]) -> None:
    table = Table(title="Per-site AUC of the federated DenseNet121 (test images of each site)")
    table.add_column("site")
    for variant in outcomes:
        table.add_column(variant, justify="right")
    sites = sorted(next(iter(outcomes.values())).per_site_auc)
    for site in sites:
        table.add_row(site, *(f"{o.per_site_auc[site]:.3f}" for o in outcomes.values()))
    table.add_row(
        "mean",
        *(f"{np.mean(list(o.per_site_auc.values())):.3f}" for o in outcomes.values()),
        style="bold",
    )
    console.print(table)
    for variant, o in outcomes.items():
        same = o.max_difference <= 1e-6 and o.networked_per_site_auc == o.per_site_auc
        verdict = "[green]identical[/]" if same else "[red]DIFFERENT[/]"
        console.print(
            f"{variant}: networked vs simulated: {verdict} "
            f"(max |weight difference| {o.max_difference:.1e})"
        )


def main(argv: list[str] | None = None) -> dict[str, Outcome]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="keep every file here")
    parser.add_argument("--patients", type=int, default=16, help="patients per site")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--side", type=int, default=32, help="image side in pixels (>= 32)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="cordiale-imaging-"))
    console = Console()
    outcomes = run(out, patients=args.patients, rounds=args.rounds, side=args.side, console=console)
    render(console, outcomes)
    return outcomes


if __name__ == "__main__":
    main()
