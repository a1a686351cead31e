"""``cordiale study``: validate, submit, follow and fetch a study (the researcher's commands)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cordiale.cli.subgroups import subgroup_table
from cordiale.client import Credentials, ResearcherClient

__all__ = ["follow", "study_app"]

study_app = typer.Typer(help="Submit and follow studies.", no_args_is_help=True)

CredentialsOpt = Annotated[
    Path,
    typer.Option(
        "--credentials",
        envvar="CORDIALE_CREDENTIALS",
        help="Researcher credentials (written by `cordiale researcher add`).",
    ),
]
DEFAULT_CREDENTIALS = Path("researcher.credentials.toml")


def _client(credentials: Path) -> ResearcherClient:
    return ResearcherClient(Credentials.read(credentials))


@study_app.command("validate")
def validate(spec: Annotated[Path, typer.Argument(help="Study spec (TOML).")]) -> None:
    """Check a study spec offline; every problem is listed."""
    from cordiale.learn.study import StudySpec

    s = StudySpec.load(spec)
    Console().print(
        f"[green]valid[/]: {s.study.name!r}, {len(s.study.sites)} sites "
        f"({', '.join(s.study.sites)}), {s.study.rounds} rounds of {s.strategy.name}, "
        f"dataset {s.data.dataset!r} with contract {s.data.contract.name!r}"
    )


@study_app.command("submit")
def submit(
    spec: Annotated[Path, typer.Argument(help="Study spec (TOML).")],
    credentials: CredentialsOpt = DEFAULT_CREDENTIALS,
) -> None:
    """Submit a study to the hub; prints its id."""
    from cordiale.learn.study import StudySpec

    with _client(credentials) as client:
        study_id = client.submit(StudySpec.load(spec))
    Console().print(f"submitted: [bold]{study_id}[/]")
    typer.echo(study_id)


@study_app.command("list")
def list_studies(credentials: CredentialsOpt = DEFAULT_CREDENTIALS) -> None:
    """Your studies and their states."""
    with _client(credentials) as client:
        rows = client.studies()
    table = Table("id", "name", "state", "rounds")
    for r in rows:
        table.add_row(r["id"], r["name"], r["state"], f"{r['rounds_done']}/{r['rounds']}")
    Console().print(table)


def _site_table(status: dict[str, Any]) -> Table:
    table = Table("site", "online", "stage", "round", "task", "error", title=status["name"])
    for site, info in status["sites"].items():
        table.add_row(
            site,
            "[green]yes[/]" if info["online"] else "[red]no[/]",
            info["stage"] or "-",
            "-" if info["round"] is None else str(info["round"]),
            info["task"] or "-",
            (info["error"] or "")[:80],
        )
    return table


def follow(client: ResearcherClient, study_id: str, console: Console) -> dict[str, Any]:
    """Live progress (rounds) and per-site state until the study ends; returns the last status."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[metric]}"),
        TimeElapsedColumn(),
        console=console,
    )
    status = client.status(study_id)
    bar = progress.add_task(f"study {study_id}", total=status["rounds"], metric="")
    with Live(Group(progress, _site_table(status)), console=console, refresh_per_second=4) as live:
        while True:
            history = status["history"]
            metric = f"AUC {history[-1]['auc']:.3f}" if history and "auc" in history[-1] else ""
            progress.update(bar, completed=status["rounds_done"], metric=metric)
            live.update(Group(progress, _site_table(status)))
            if status["state"] in ("finished", "failed"):
                return status
            time.sleep(0.5)
            status = client.status(study_id)


@study_app.command("status")
def status_command(
    study_id: Annotated[str, typer.Argument(help="Study id.")],
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="Follow live.")] = False,
    credentials: CredentialsOpt = DEFAULT_CREDENTIALS,
) -> None:
    """A study's state, rounds and per-site state (``--follow``: live until it ends)."""
    console = Console()
    with _client(credentials) as client:
        if follow_:
            status = follow(client, study_id, console)
        else:
            status = client.status(study_id)
            console.print(_site_table(status))
    console.print(
        f"state: [bold]{status['state']}[/], rounds {status['rounds_done']}/{status['rounds']}"
    )
    evaluated = [r for r in status["history"] if "subgroups" in r]
    if evaluated:
        last = evaluated[-1]
        table = subgroup_table(
            last["subgroups"],
            last.get("suppressed", {}),
            title=f"subgroups after round {last['round']} (all sites; small cells suppressed)",
        )
        if table is not None:
            console.print(table)
    privacy = status.get("privacy")
    if privacy:
        s = privacy["settings"]
        spent = ", ".join(f"{k} {v:.3g}" for k, v in sorted(privacy["epsilon_spent"].items()))
        console.print(
            f"differential privacy ({s['dp']}-level, delta {s['delta']:g}): epsilon spent per "
            f"site: {spent or 'none yet'}"
        )
    if status["error"]:
        console.print(f"[red]error:[/] {status['error']}", highlight=False)
        raise typer.Exit(1)


@study_app.command("fetch")
def fetch(
    study_id: Annotated[str, typer.Argument(help="Study id.")],
    out: Annotated[Path, typer.Option(help="Directory for model, metrics and plots.")] = Path(
        "results"
    ),
    credentials: CredentialsOpt = DEFAULT_CREDENTIALS,
) -> None:
    """Download the global model (safetensors), metrics (JSON) and learning curve (PNG)."""
    with _client(credentials) as client:
        paths = client.fetch(study_id, out)
    console = Console()
    results = json.loads(paths["results"].read_text())
    table = subgroup_table(results.get("subgroups", {}), results.get("suppressed", {}))
    if table is not None:
        console.print(table)
    for kind, path in paths.items():
        console.print(f"{kind}: {path}")


@study_app.command("grant")
def grant(
    study_id: Annotated[str, typer.Argument(help="Study id.")],
    researcher: Annotated[str, typer.Argument(help="Who may read it.")],
    credentials: CredentialsOpt = DEFAULT_CREDENTIALS,
) -> None:
    """Let another researcher read your study (status, results, model)."""
    with _client(credentials) as client:
        client.grant(study_id, researcher)
    Console().print(f"{researcher} may now read study {study_id}")
