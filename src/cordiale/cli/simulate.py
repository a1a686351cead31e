"""``cordiale simulate``: a federated study in one process, on bundled data or your own table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cordiale.cli.subgroups import parse_subgroups, subgroup_table
from cordiale.core.errors import ConfigError
from cordiale.crypto.fixedpoint import DEFAULT_CLIP, DEFAULT_REKEY_EVERY

if TYPE_CHECKING:
    from cordiale.learn.federation import RoundRecord

__all__ = ["parse_params", "render_summary", "simulate_command"]


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["eta=0.1", "server_momentum=0.9"]`` to ``{"eta": 0.1, ...}`` (numbers where possible)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"strategy parameter must be KEY=VALUE; got {item!r}")
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def render_summary(console: Console, result: dict[str, Any]) -> None:
    """The final table: per site and all sites, federated next to pooled."""
    table = Table(
        title=f"{result['dataset']}: federated ({result['config']['strategy']}) "
        f"vs pooled, test sets"
    )
    for col in (
        "site",
        "train",
        "test",
        "fed AUC",
        "fed acc",
        "fed ECE",
        "fed Brier",
        "pooled AUC",
        "pooled acc",
    ):
        table.add_column(col, justify="right" if col != "site" else "left")
    for site, info in result["per_site"].items():
        f, p = info["federated"] or {}, info["pooled"] or {}
        table.add_row(
            site,
            str(info["n_train"]),
            str(info["n_test"]),
            _fmt(f.get("auc")),
            _fmt(f.get("accuracy")),
            _fmt(f.get("ece")),
            _fmt(f.get("brier")),
            _fmt(p.get("auc")),
            _fmt(p.get("accuracy")),
        )
    f, p = result["federated"], result["pooled"] or {}
    table.add_row(
        "[bold]all sites[/]",
        str(sum(i["n_train"] for i in result["per_site"].values())),
        str(int(f["n"])),
        f"[bold]{_fmt(f['auc'])}[/]",
        _fmt(f["accuracy"]),
        _fmt(f["ece"]),
        _fmt(f["brier"]),
        f"[bold]{_fmt(p.get('auc'))}[/]",
        _fmt(p.get("accuracy")),
        end_section=True,
    )
    console.print(table)
    ratio = result.get("auc_ratio_federated_to_pooled")
    if ratio is not None:
        console.print(f"federated AUC / pooled AUC = [bold]{ratio:.3f}[/]")
    subgroups = subgroup_table(result.get("subgroups", {}), result.get("suppressed", {}))
    if subgroups is not None:
        console.print(subgroups)
    privacy = result.get("privacy")
    if privacy:
        spent = privacy["epsilon_spent"]
        console.print(
            f"differential privacy ({privacy['settings']['dp']}-level): epsilon spent per site "
            f"at delta {privacy['settings']['delta']:g}: "
            + (", ".join(f"{s} {e:.3g}" for s, e in sorted(spent.items())) or "none")
        )


def simulate_command(
    dataset: Annotated[
        str | None, typer.Option(help="Bundled dataset (see `cordiale datasets`).")
    ] = None,
    csv: Annotated[Path | None, typer.Option(help="Your own CSV or Parquet table.")] = None,
    target: Annotated[str | None, typer.Option(help="Target column of --csv.")] = None,
    positive: Annotated[str | None, typer.Option(help="Positive class value of --target.")] = None,
    site_column: Annotated[str | None, typer.Option(help="Column naming each row's site.")] = None,
    contract: Annotated[Path | None, typer.Option(help="Data contract (TOML) for --csv.")] = None,
    sites: Annotated[int, typer.Option(help="Number of virtual sites (not with natural).")] = 4,
    partition: Annotated[
        str | None, typer.Option(help="iid | dirichlet:ALPHA | quantity:ALPHA | natural.")
    ] = None,
    strategy: Annotated[
        str, typer.Option(help="fedavg | fedprox | fedavgm | fedadam | fedyogi | fedadagrad.")
    ] = "fedavg",
    strategy_param: Annotated[
        list[str] | None, typer.Option("--strategy-param", "-p", help="KEY=VALUE, repeatable.")
    ] = None,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 20,
    model: Annotated[str, typer.Option(help="logreg | mlp.")] = "mlp",
    hidden: Annotated[str, typer.Option(help="Hidden widths of the MLP, comma-separated.")] = "32",
    batchnorm: Annotated[bool, typer.Option(help="Batch normalisation in the MLP.")] = False,
    local_layers: Annotated[
        str, typer.Option(help="Comma-separated weight-name prefixes kept local per site (FedBN).")
    ] = "",
    epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Local batch size.")] = 32,
    lr: Annotated[float, typer.Option(help="Local learning rate.")] = 0.05,
    optimizer: Annotated[str, typer.Option(help="sgd | adam.")] = "sgd",
    momentum: Annotated[float, typer.Option(help="Local SGD momentum.")] = 0.0,
    scaling: Annotated[str, typer.Option(help="federated | site feature scaling.")] = "federated",
    test_fraction: Annotated[
        float, typer.Option(help="Share of each site's rows for testing.")
    ] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of everything random.")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Write results JSON here (and a PNG beside).")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Learning-curve PNG (default: OUT with .png).")
    ] = None,
    pooled: Annotated[
        bool, typer.Option(help="Also train the pooled (centralised) baseline.")
    ] = True,
    secure_aggregation: Annotated[
        bool,
        typer.Option(help="Secure aggregation: the hub sees only the sum of the sites' updates."),
    ] = False,
    secagg_threshold: Annotated[
        int | None,
        typer.Option(help="Secure aggregation: survivors needed per neighbourhood [majority]."),
    ] = None,
    secagg_neighbours: Annotated[
        int | None,
        typer.Option(help="Secure aggregation: SecAgg+ neighbours per site [all other sites]."),
    ] = None,
    secagg_clip: Annotated[
        float | None,
        typer.Option(
            help=f"Secure aggregation: clip each element of n*update to ±CLIP [{DEFAULT_CLIP:g}]."
        ),
    ] = None,
    secagg_rekey_every: Annotated[
        int | None,
        typer.Option(
            help="Secure aggregation: rounds one set of keys serves at most; 1 = fresh keys "
            f"every round [{DEFAULT_REKEY_EVERY}]."
        ),
    ] = None,
    dp: Annotated[
        str | None,
        typer.Option(help="Differential privacy: 'client' (DP-FedAvg) or 'sample' (DP-SGD)."),
    ] = None,
    epsilon: Annotated[
        float | None, typer.Option(help="DP: target epsilon (the accountant sets the noise).")
    ] = None,
    noise_multiplier: Annotated[
        float | None, typer.Option(help="DP: noise multiplier (epsilon is then reported).")
    ] = None,
    delta: Annotated[float, typer.Option(help="DP: delta.")] = 1e-5,
    clip_norm: Annotated[
        float, typer.Option(help="DP: L2 bound of an update (client) or a gradient (sample).")
    ] = 1.0,
    dp_noise: Annotated[
        str, typer.Option(help="Client DP: noise added 'distributed' by the sites or 'central'.")
    ] = "distributed",
    subgroup: Annotated[
        list[str] | None,
        typer.Option(
            help="Evaluate per subgroup of a column, COL or COL:EDGE,EDGE,... (numeric bands, "
            "e.g. Age:30,40,50); repeatable."
        ),
    ] = None,
    min_cell: Annotated[
        int,
        typer.Option(
            help="Subgroups: fewest test examples, positives and negatives a cell at one site "
            "may have to be reported (at least 5)."
        ),
    ] = 10,
) -> None:
    """Run a federated study in one process on bundled data or your own table."""
    from cordiale.learn.dp import DPSettings
    from cordiale.learn.models import ModelSpec
    from cordiale.learn.secure_aggregation import SecureAggregationConfig
    from cordiale.learn.trainer import TrainConfig
    from cordiale.report.curves import plot_learning_curve
    from cordiale.sim.runner import DataSource, SimulationSpec, simulate

    try:
        widths = tuple(int(w) for w in hidden.split(",") if w.strip())
    except ValueError:
        raise ConfigError(f"--hidden must be comma-separated integers; got {hidden!r}") from None
    secagg = None
    if secure_aggregation:
        secagg = SecureAggregationConfig(
            threshold=secagg_threshold,
            degree=secagg_neighbours,
            clip=DEFAULT_CLIP if secagg_clip is None else secagg_clip,
            rekey_every=DEFAULT_REKEY_EVERY if secagg_rekey_every is None else secagg_rekey_every,
        )
    elif (secagg_threshold, secagg_neighbours, secagg_clip, secagg_rekey_every) != (
        None,
        None,
        None,
        None,
    ):
        raise ConfigError(
            "--secagg-threshold, --secagg-neighbours, --secagg-clip and --secagg-rekey-every "
            "need --secure-aggregation"
        )
    dp_settings = None
    if dp is not None:
        dp_settings = DPSettings(
            mode=dp,  # type: ignore[arg-type]
            epsilon=epsilon,
            noise_multiplier=noise_multiplier,
            delta=delta,
            clip_norm=clip_norm,
            noise=dp_noise,  # type: ignore[arg-type]
        )
    elif (epsilon, noise_multiplier) != (None, None):
        raise ConfigError("--epsilon and --noise-multiplier need --dp client or --dp sample")
    spec = SimulationSpec(
        source=DataSource(
            dataset=dataset,
            table=csv,
            target=target,
            positive=positive,
            site_column=site_column,
            contract=contract,
        ),
        sites=sites,
        partition=partition,
        strategy=strategy,
        strategy_params=parse_params(strategy_param or []),
        rounds=rounds,
        model=ModelSpec(kind=model, hidden=widths, batchnorm=batchnorm),  # type: ignore[arg-type]
        train=TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,  # type: ignore[arg-type]
            momentum=momentum,
        ),
        seed=seed,
        test_fraction=test_fraction,
        scaling=scaling,  # type: ignore[arg-type]
        local_layers=tuple(p.strip() for p in local_layers.split(",") if p.strip()),
        pooled=pooled,
        secure_aggregation=secagg,
        dp=dp_settings,
        subgroups=parse_subgroups(subgroup or [], min_cell),
    )
    console = Console()
    with Progress(
        TextColumn("[bold]{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        tasks = {"federated": progress.add_task("federated", total=rounds, status="")}
        if pooled:
            tasks["pooled"] = progress.add_task("pooled", total=rounds, status="waiting")

        def on_round(phase: str, r: RoundRecord) -> None:
            # under DP the sites do not report their loss (NaN): only the AUC is shown
            status = f"loss {r.train_loss:.3f}" if math.isfinite(r.train_loss) else ""
            if r.evaluation is not None:
                status += f"  AUC {r.evaluation.pooled['auc']:.3f}"
            if r.failures:
                status += f"  [yellow]{len(r.failures)} site(s) failed[/]"
            progress.update(tasks[phase], advance=1, status=status)

        result = simulate(spec, on_round=on_round).to_json()
    render_summary(console, result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        console.print(f"results: {out}")
        plot = plot or out.with_suffix(".png")
    if plot is not None:
        console.print(f"learning curve: {plot_learning_curve(result, plot)}")
