"""The Typer application and the error boundary: a user sees a sentence, never a traceback."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from cordiale import __version__
from cordiale.cli import audit, consortium, datasets, demo, imaging, services, simulate, study
from cordiale.core.errors import CordialeError

__all__ = ["app", "main"]

app = typer.Typer(
    name="cordiale",
    help="Cordiale: federated learning and analytics for cross-border biomedical research.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("simulate")(simulate.simulate_command)
app.command("datasets")(datasets.datasets_command)
app.command("demo")(demo.demo_command)
app.add_typer(consortium.ca_app, name="ca")
app.add_typer(consortium.site_app, name="site")
app.add_typer(consortium.researcher_app, name="researcher")
app.add_typer(services.hub_app, name="hub")
app.add_typer(services.node_app, name="node")
app.add_typer(study.study_app, name="study")
app.add_typer(audit.audit_app, name="audit")
app.add_typer(imaging.data_app, name="data")


@app.command("version")
def version_command() -> None:
    """Print the Cordiale version."""
    typer.echo(__version__)


def main() -> None:
    try:
        code = app(standalone_mode=False)  # click returns typer.Exit's code in this mode
        if isinstance(code, int) and code != 0:
            sys.exit(code)
    except CordialeError as e:
        console = Console(stderr=True, soft_wrap=True)
        console.print("[bold red]error:[/] ", end="")
        console.print(str(e), highlight=False, markup=False)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        Console(stderr=True).print("aborted")
        sys.exit(130)
    except Exception as e:  # click usage errors arrive here with standalone_mode=False
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
