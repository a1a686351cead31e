"""``cordiale hub start`` and ``cordiale node start``: the two long-running services."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from cordiale.cli.consortium import DEFAULT_HOME, Db, Home, hub_settings

if TYPE_CHECKING:
    from cordiale.governance.plans import Plan, PlanApprovals

__all__ = ["URL_FILE", "hub_app", "node_app"]

URL_FILE = "hub.url"  # written by `hub start` once it listens (useful with --port 0)

hub_app = typer.Typer(help="Run the hub.", no_args_is_help=True)
node_app = typer.Typer(help="Run a site's node.", no_args_is_help=True)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


@hub_app.command("start")
def hub_start(
    home: Home = DEFAULT_HOME,
    db: Db = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port, see HOME/hub.url).")] = 8443,
    start_timeout: Annotated[
        float, typer.Option(help="Seconds a study waits for its sites to connect.")
    ] = 60.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve the hub over HTTPS with mutual TLS until interrupted; resumes unfinished studies."""
    from cordiale.hub.server import HubServer, bind
    from cordiale.hub.service import Hub

    _logging(verbose)
    settings = dataclasses.replace(hub_settings(home, db), start_timeout=start_timeout)
    server = HubServer(Hub(settings), bind(host, port))
    (home / URL_FILE).write_text(server.url)
    Console(stderr=True).print(f"hub listening on {server.url} (database {settings.database_url})")
    server.run()


@node_app.command("start")
def node_start(
    kit: Annotated[Path, typer.Option(help="The site's enrolment kit.")],
    config: Annotated[Path, typer.Option(help="node.toml: the site's datasets.")],
    hub_url: Annotated[str | None, typer.Option(help="Override the kit's hub URL.")] = None,
    poll_wait: Annotated[float, typer.Option(help="Long-poll seconds.")] = 20.0,
    threads: Annotated[int, typer.Option(help="Torch threads for local training.")] = 1,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Dial out to the hub and serve tasks on local data until interrupted."""
    import torch

    from cordiale.crypto.pki import EnrolmentKit
    from cordiale.node.agent import NodeAgent
    from cordiale.node.config import NodeConfig

    _logging(verbose)
    torch.set_num_threads(threads)
    enrolment = EnrolmentKit.read(kit)
    console = Console(stderr=True)
    agent = NodeAgent(
        enrolment,
        NodeConfig.load(config),
        hub_url=hub_url,
        poll_wait=poll_wait,
        on_event=lambda line: console.print(line, highlight=False),
    )
    console.print(
        f"node [bold]{enrolment.site_id}[/] ({enrolment.country}) registering: "
        + json.dumps({k: v["rows"] for k, v in agent.data.summary().items()})
    )

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        agent.stop()
        raise SystemExit(0)  # leave a long poll at once; the node holds no state to save

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    agent.run()


@node_app.command("budget")
def node_budget(
    config: Annotated[Path, typer.Option(help="node.toml: the site's datasets and budgets.")],
    history: Annotated[str | None, typer.Option(help="List every charge on this dataset.")] = None,
) -> None:
    """The site's privacy ledger: budget, spent and left per dataset (and every charge)."""
    from rich.table import Table

    from cordiale.node.config import NodeConfig

    node = NodeConfig.load(config)
    ledger = node.privacy_keeper().ledger
    assert ledger is not None
    console = Console()
    table = Table("dataset", "budget eps", "spent eps", "left eps", "delta spent", "charges")
    for entry in node.datasets:
        if entry.budget_epsilon is None:
            table.add_row(entry.name, "-", "-", "-", "-", "no budget: DP not required")
            continue
        budget, spent = ledger.budget(entry.name), ledger.spent(entry.name)
        left = ledger.remaining(entry.name)
        table.add_row(
            entry.name,
            f"{budget.epsilon:g}",
            f"{spent.epsilon:.4g}",
            f"{left.epsilon:.4g}",
            f"{spent.delta:.2g}",
            str(len(ledger.history(entry.name))),
        )
    console.print(table)
    console.print(f"ledger: {ledger.path}")
    if history is not None:
        charges = Table("when (UTC)", "study", "task", "epsilon", "delta", title=history)
        for c in ledger.history(history):
            charges.add_row(
                c.charged_at[:19], c.study_id, c.task_id, f"{c.epsilon:.4g}", f"{c.delta:.2g}"
            )
        console.print(charges)


@node_app.command("policy")
def node_policy(
    action: Annotated[str, typer.Argument(help="'check'.")],
    study: Annotated[Path, typer.Argument(help="Study spec (TOML) to check.")],
    config: Annotated[Path, typer.Option(help="node.toml (names policy.toml and the data).")],
    site: Annotated[str, typer.Option(help="This site's id (as in its kit).")] = "this-site",
    hub_country: Annotated[
        str | None, typer.Option(help="The hub's country (ISO 3166) if known.")
    ] = None,
    owner_org: Annotated[
        str | None, typer.Option(help="The organisation of the study's owner, if known.")
    ] = None,
) -> None:
    """Tell a custodian, in advance, what this node would do with a study."""
    from cordiale.core.errors import ConfigError
    from cordiale.core.records import ConfigRecord
    from cordiale.governance.policy import TaskFacts
    from cordiale.learn.dp import release_epsilon
    from cordiale.learn.study import StudySpec
    from cordiale.node.config import NodeConfig, SiteData

    if action != "check":
        raise ConfigError(f"unknown policy action {action!r}; use: cordiale node policy check")
    spec = StudySpec.load(study)
    node = NodeConfig.load(config)
    policy = node.site_policy()
    console = Console()
    if policy is None:
        console.print("no policy file in node.toml ([node] policy): every study is allowed")
        return
    fed = spec.federation_config("check")
    cfg = ConfigRecord(dict(fed.task_context))
    extra = fed.dp.to_config(spec.study.rounds, spec.study.min_sites) if fed.dp else {}
    for k, v in [*fed.train.to_config().items(), *extra.items()]:
        cfg[k] = v
    dataset = SiteData(site, node).resolve("check", cfg)  # the data must meet the contract too
    dp = spec.privacy.dp if spec.privacy.dp != "none" else None
    facts = TaskFacts(
        stage="secagg" if spec.privacy.secure_aggregation else "train",
        category=spec.study.category,
        owner_org=owner_org,
        hub_country=hub_country,
        cohort=dataset.num_train,
        secure_aggregation=spec.privacy.secure_aggregation,
        dp=dp,
        planned_epsilon=(
            release_epsilon(cfg, spec.study.rounds, num_examples=dataset.num_train) if dp else None
        ),
        min_cell=spec.evaluation.min_cell if spec.evaluation.subgroups else None,
    )
    problems = policy.violations(facts)
    if not problems:
        console.print(f"[green]allowed[/]: this node would run {spec.study.name!r}")
        return
    console.print(f"[red]refused[/]: {len(problems)} rule(s) of this site's policy:")
    for p in problems:
        console.print(f"  - {p}", highlight=False)
    raise typer.Exit(1)


@node_app.command("plans")
def node_plans(
    action: Annotated[str, typer.Argument(help="list | show | approve | revoke")],
    config: Annotated[Path, typer.Option(help="node.toml (its state_dir keeps the approvals).")],
    plan: Annotated[
        str, typer.Argument(help="builtin:tabular, or a hash (revoke)")
    ] = "builtin:tabular",
    by: Annotated[str, typer.Option(help="Who approves (recorded).")] = "custodian",
) -> None:
    """Review and approve the code this node may run on its data (pinned by SHA-256)."""
    from rich.syntax import Syntax
    from rich.table import Table

    from cordiale.core.errors import ConfigError
    from cordiale.governance.plans import BUILTIN_PLANS, builtin_plan
    from cordiale.node.config import NodeConfig

    approvals = NodeConfig.load(config).plan_approvals()
    console = Console()
    if action == "list":
        approved = approvals.approved()
        for sha in sorted(p.stem for p in approvals.pending_dir.glob("*.py")):
            if sha not in approved:
                console.print(f"awaiting review: custom plan {sha} (cordiale node plans show)")
        table = Table("plan", "sha256 (installed)", "approved", "by", "at")
        for name in BUILTIN_PLANS:
            p = builtin_plan(name)
            entry = approved.get(p.sha256)
            table.add_row(
                p.name,
                p.sha256[:16] + "...",
                "[green]yes[/]" if entry else "[red]no[/]",
                entry["by"] if entry else "-",
                entry["approved_at"] if entry else "-",
            )
        stale = {
            h: e
            for h, e in approved.items()
            if h not in {builtin_plan(n).sha256 for n in BUILTIN_PLANS}
        }
        for h, e in stale.items():
            table.add_row(
                e["name"], h[:16] + "...", "yes (not installed)", e["by"], e["approved_at"]
            )
        console.print(table)
    elif action == "show":
        p = _plan(approvals, plan)
        console.print(f"{p.name}  sha256 {p.sha256}")
        console.print(Syntax(p.source, "python", line_numbers=True))
    elif action == "approve":
        p = _plan(approvals, plan)
        approvals.approve(p, by=by)
        console.print(f"approved {p.name} {p.sha256}")
    elif action == "revoke":
        sha = builtin_plan(plan).sha256 if plan.startswith("builtin:") else plan
        if not approvals.revoke(sha):
            raise ConfigError(f"no approval for {plan} to revoke")
        console.print(f"revoked {sha}")
    else:
        raise ConfigError(f"unknown action {action!r}; use list, show, approve or revoke")


def _plan(approvals: PlanApprovals, plan: str) -> Plan:
    """``builtin:NAME``, or the hash of a custom plan this node was asked to run."""
    from cordiale.core.errors import ConfigError
    from cordiale.governance.plans import builtin_plan

    if plan.startswith("builtin:"):
        return builtin_plan(plan)
    found = approvals.pending(plan)
    if found is None:
        raise ConfigError(f"no plan {plan!r} here: use builtin:NAME or the hash of a custom plan")
    return found
