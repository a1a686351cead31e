"""``cordiale datasets``: the bundled datasets, their size, task, source and licence."""

from __future__ import annotations

from typing import Annotated

import tomli_w
import typer
from rich.console import Console
from rich.table import Table

from cordiale.data.catalog import get_dataset, list_datasets

__all__ = ["datasets_command"]


def datasets_command(
    contract: Annotated[
        str | None,
        typer.Option(
            help="Print this dataset's data contract as TOML (a template for --contract)."
        ),
    ] = None,
) -> None:
    """List the bundled real clinical datasets (rows, features, task, source, licence)."""
    console = Console()
    if contract is not None:
        entry = get_dataset(contract)
        raw = entry.contract.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        typer.echo(tomli_w.dumps({"contract": {"name": entry.contract.name, **raw}}), nl=False)
        return
    table = Table(title="Bundled datasets (real clinical data)")
    for col in ("name", "rows", "features", "task", "site column", "source", "licence"):
        table.add_column(col, overflow="fold")
    for d in list_datasets():
        frame = d.load()
        table.add_row(
            d.name,
            str(len(frame)),
            str(len(d.contract.fields)),
            d.task,
            d.site_column or "-",
            d.source,
            d.licence,
        )
    console.print(table)
    console.print(
        "Cleaning applied: "
        + "; ".join(f"[bold]{d.name}[/]: {d.cleaning}" for d in list_datasets() if d.cleaning)
    )
