"""What ``cordiale demo`` runs: a whole consortium on loopback, in one command.

It generates a throwaway consortium (CA; sites ``oxford`` GB, ``paris-cite`` FR, ``pasteur`` FR;
researcher ``alice``), starts the hub and the three nodes as separate processes on 127.0.0.1 with
mutual TLS and SQLite, gives each site its own file of the bundled Pima data (split iid, seeded;
each node reads only its own), submits a study, follows it live, fetches the model and metrics,
checks the networked model against the one-process simulation of the same study and shows the
centralised baseline, then shuts everything down. Every file it makes (kits, node.toml,
study.toml, logs, results) stays in ``--workdir`` for inspection.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tomli_w
import typer
from rich.console import Console

from cordiale.cli.simulate import render_summary
from cordiale.cli.study import follow
from cordiale.client import Credentials, ResearcherClient
from cordiale.core.errors import TransportError
from cordiale.crypto.pki import CertificateAuthority
from cordiale.data.catalog import get_dataset
from cordiale.hub.admin import add_researcher, add_site, init_consortium
from cordiale.hub.checkpoints import load_checkpoint
from cordiale.hub.settings import HubSettings
from cordiale.learn.study import StudySpec
from cordiale.sim.runner import simulate, simulation_of
from cordiale.sim.sitefiles import site_datasets, write_site_files

__all__ = ["SITES", "run_demo"]

SITES = {"oxford": "GB", "paris-cite": "FR", "pasteur": "FR"}


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cordiale", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def _wait_for_file(path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise TransportError(f"the hub did not start; its log:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return path.read_text().strip()


def _write_study(work: Path, rounds: int, seed: int) -> Path:
    contract = get_dataset("pima").contract
    (work / "pima.contract.toml").write_text(
        tomli_w.dumps({"contract": contract.model_dump(mode="json", exclude_none=True)})
    )
    study = {
        "study": {
            "name": "Diabetes risk in antenatal care (demo)",
            "purpose": "Predict type 2 diabetes from routine measurements, across GB and FR",
            "sites": list(SITES),
            "min_sites": 2,
            "rounds": rounds,
            "round_timeout": 30.0,
            "seed": seed,
        },
        "data": {"dataset": "pima", "contract": "pima.contract.toml"},
        "model": {"kind": "logreg"},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.1},
        "strategy": {"name": "fedavg"},
        # metrics for younger and older women, each site holding back cells too small to share
        "evaluation": {"subgroups": ["Age"], "bands": {"Age": [35]}, "min_cell": 5},
    }
    path = work / "study.toml"
    path.write_text(tomli_w.dumps(study))
    return path


def _check_against_simulation(
    console: Console, spec: StudySpec, configs: dict[str, Path], model: Path, results: dict
) -> None:
    """Re-run the study in one process on the same files; compare, and add the pooled baseline."""
    sites = site_datasets(spec, {site: cfg.parent / "data.csv" for site, cfg in configs.items()})
    sim = simulate(simulation_of(spec), sites=sites)
    networked = load_checkpoint(model)["weights"]
    diff = max(float(np.max(np.abs(networked[k] - v))) for k, v in sim.federated.weights.items())
    sim_json = sim.to_json()
    results["pooled"] = sim_json["pooled"]
    for site, info in results["per_site"].items():
        info["pooled"] = sim_json["per_site"][site]["pooled"]
    if results["federated"] and sim_json["pooled"]:
        results["auc_ratio_federated_to_pooled"] = (
            results["federated"]["auc"] / sim_json["pooled"]["auc"]
        )
    render_summary(console, results)  # with the subgroup table
    verdict = "[green]identical[/]" if diff <= 1e-6 else "[red]DIFFERENT[/]"
    console.print(
        f"networked model vs one-process simulation of the same study: {verdict} "
        f"(max |difference| {diff:.1e})"
    )


def run_demo(rounds: int, seed: int, workdir: Path | None) -> None:
    """Run the demo (see the module docstring)."""
    console = Console()
    work = workdir or Path(tempfile.mkdtemp(prefix="cordiale-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    home = work / "hub"
    settings = HubSettings(home=home)
    console.rule("[bold]Cordiale demo: uk-fr-alliance on 127.0.0.1")
    init_consortium(settings, "uk-fr-alliance", ["127.0.0.1", "localhost"])
    console.print(f"consortium CA in {settings.ca_dir}; work dir {work}")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        hub_log = work / "logs" / "hub.log"
        hub = _spawn(
            ["hub", "start", "--home", str(home), "--port", "0", "--start-timeout", "60"],
            hub_log,
        )
        procs.append(hub)
        url = _wait_for_file(home / "hub.url", hub, hub_log, timeout=60)
        console.print(f"hub (pid {hub.pid}) listening on {url}, mutual TLS")
        configs = write_site_files(work, list(SITES), seed=seed)
        for site, country in SITES.items():
            kit = work / "sites" / site / f"{site}.kit"
            add_site(settings, site, country, url, kit)
            procs.append(
                _spawn(
                    ["node", "start", "--kit", str(kit), "--config", str(configs[site])],
                    work / "logs" / f"{site}.log",
                )
            )
            console.print(f"node {site} ({country}, pid {procs[-1].pid}) dials out to the hub")
        token = add_researcher(settings, "alice", "oxford")
        ca_pem = CertificateAuthority.load(settings.ca_dir).ca_cert_pem.decode()
        credentials = Credentials("alice", url, ca_pem, token)
        credentials.write(work / "alice.credentials.toml")
        spec = StudySpec.load(_write_study(work, rounds, seed))
        with ResearcherClient(credentials) as client:
            study_id = client.submit(spec)
            console.print(f"alice submitted study [bold]{study_id}[/] ({work / 'study.toml'})")
            status = follow(client, study_id, console)
            console.print()
            if status["state"] != "finished":
                console.print(f"[red]study {status['state']}:[/] {status['error']}")
                raise typer.Exit(1)
            paths = client.fetch(study_id, work / "results")
            results = client.results(study_id)
        _check_against_simulation(console, spec, configs, paths["model"], results)
        console.print("results: " + ", ".join(str(p) for p in paths.values()))
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        console.print("hub and nodes stopped")
