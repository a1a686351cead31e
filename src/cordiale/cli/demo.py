"""``cordiale demo``: a consortium of three sites on loopback (see :mod:`cordiale.cli.demo_run`).

The command's options live here; the work, and its heavy imports, load only when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["demo_command"]


def demo_command(
    rounds: Annotated[int, typer.Option(help="Training rounds.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the split and of training.")] = 0,
    workdir: Annotated[
        Path | None, typer.Option(help="Keep every file here (default: a temp dir).")
    ] = None,
) -> None:
    """A consortium of three sites on loopback: hub and nodes as processes, mutual TLS, SQLite."""
    from cordiale.cli.demo_run import run_demo

    run_demo(rounds, seed, workdir)
