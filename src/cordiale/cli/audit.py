"""``cordiale audit``: verify, show and export an audit log (a node's or the hub's).

A node's log is ``<state_dir>/audit.jsonl``, signed with its node key: check it with the node's
certificate (the ``cert`` of its kit, or ``--kit``). The hub's is ``HOME/audit.jsonl``, signed with
the hub's TLS key (``HOME/ca/hub.pem``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["audit_app"]

audit_app = typer.Typer(help="Tamper-evident audit logs.", no_args_is_help=True)

LogOpt = Annotated[Path, typer.Option("--log", help="The audit log (audit.jsonl).")]


def _public_key(cert: Path | None, kit: Path | None) -> bytes | None:
    if kit is not None:
        from cordiale.crypto.pki import EnrolmentKit

        return EnrolmentKit.read(kit).cert_pem
    return None if cert is None else cert.read_bytes()


@audit_app.command("verify")
def verify_command(
    log: LogOpt,
    cert: Annotated[
        Path | None, typer.Option(help="Certificate (PEM) whose key signed the log.")
    ] = None,
    kit: Annotated[Path | None, typer.Option(help="A node's kit: check with its cert.")] = None,
) -> None:
    """Check every entry's hash, chain and signature, and the signed head; name the first bad."""
    from cordiale.governance.audit import verify

    report = verify(log, public_key_pem=_public_key(cert, kit))
    console = Console()
    if report.ok:
        signed = "signatures checked" if (cert or kit) else "unsigned check (no --cert)"
        console.print(f"[green]ok[/]: {report.entries} entries, chain intact ({signed})")
        return
    console.print(f"[red]TAMPERED or damaged[/]: {report.problem}", highlight=False)
    raise typer.Exit(1)


@audit_app.command("show")
def show_command(
    log: LogOpt,
    action: Annotated[str | None, typer.Option(help="Only this action.")] = None,
    actor: Annotated[str | None, typer.Option(help="Only this actor.")] = None,
    object_prefix: Annotated[
        str | None, typer.Option("--object", help="Only objects starting with this.")
    ] = None,
) -> None:
    """Print the entries (filtered)."""
    from cordiale.governance.audit import AuditLog

    entries = AuditLog(log).entries(action=action, actor=actor, object_prefix=object_prefix)
    table = Table("seq", "time (UTC)", "actor", "action", "object", "bytes", "sha256")
    for e in entries:
        table.add_row(
            str(e.seq),
            e.time[:19],
            e.actor,
            e.action,
            e.object,
            "-" if e.payload_size is None else str(e.payload_size),
            (e.payload_sha256 or "-")[:16],
        )
    Console().print(table)


@audit_app.command("export")
def export_command(
    log: LogOpt,
    out: Annotated[Path, typer.Option(help="JSON-lines file to write (and its .head).")],
) -> None:
    """Write the log as JSON lines for a data-protection officer (verifiable copy)."""
    from cordiale.governance.audit import AuditLog

    n = AuditLog(log).export(out)
    Console().print(f"{n} entries written to {out}")
