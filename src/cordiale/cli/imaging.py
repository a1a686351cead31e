"""``cordiale data``: data utilities; ``synth-imaging`` writes a synthetic multi-site image set."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cordiale.core.errors import ConfigError

__all__ = ["data_app", "parse_prevalence", "parse_shape", "synth_imaging"]

data_app = typer.Typer(help="Data utilities (synthetic imaging sets).", no_args_is_help=True)


def parse_shape(text: str) -> tuple[int, ...]:
    """``64x64`` or ``32x32x32`` to a tuple of ints."""
    try:
        shape = tuple(int(part) for part in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise ConfigError(f"shape must look like 64x64 or 32x32x32; got {text!r}") from None
    return shape


def parse_prevalence(text: str) -> float | dict[str, float]:
    """``0.3`` (every site) or ``oxford=0.3,pasteur=0.1`` (others 0.5)."""
    try:
        if "=" not in text:
            return float(text)
        out: dict[str, float] = {}
        for item in text.split(","):
            site, _, value = item.partition("=")
            out[site.strip()] = float(value)
        return out
    except ValueError:
        raise ConfigError(
            f"prevalence must be a fraction (0.3) or SITE=FRACTION pairs "
            f"(oxford=0.3,pasteur=0.1); got {text!r}"
        ) from None


@data_app.command("synth-imaging")
def synth_imaging(
    out: Annotated[Path, typer.Option("--out", help="Output folder (one sub-folder per site).")],
    fmt: Annotated[
        str, typer.Option("--format", help="File format: dicom, nifti or hdf5.")
    ] = "nifti",
    patients: Annotated[int, typer.Option(help="Patients per site.")] = 20,
    images_per_patient: Annotated[int, typer.Option(help="Images per patient.")] = 4,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
    shape: Annotated[str, typer.Option(help="Image shape: 64x64, or 32x32x32 for volumes.")] = (
        "64x64"
    ),
    prevalence: Annotated[
        str,
        typer.Option(help="Fraction of lesion images: 0.5, or per site: oxford=0.3,pasteur=0.1."),
    ] = "0.5",
    sites: Annotated[
        str | None,
        typer.Option(help="Comma-separated subset of the default sites (all when omitted)."),
    ] = None,
    lesions: Annotated[
        int, typer.Option(help="Lesions per positive image (several for patch training).")
    ] = 1,
) -> None:
    """Write a synthetic multi-site imaging set (lesion / no lesion) with a manifest per site."""
    from cordiale.data.imaging.synthetic import DEFAULT_SITES, generate

    chosen = DEFAULT_SITES
    if sites is not None:
        names = [s.strip() for s in sites.split(",") if s.strip()]
        unknown = [n for n in names if n not in DEFAULT_SITES]
        if unknown or not names:
            raise ConfigError(
                f"unknown site(s) {', '.join(unknown) or '(none given)'}; "
                f"sites are: {', '.join(DEFAULT_SITES)}"
            )
        chosen = {n: DEFAULT_SITES[n] for n in names}
    manifests = generate(
        out,
        sites=chosen,
        fmt=fmt,
        patients=patients,
        images_per_patient=images_per_patient,
        prevalence=parse_prevalence(prevalence),
        shape=parse_shape(shape),
        seed=seed,
        lesions=lesions,
    )
    table = Table(title=f"Synthetic imaging ({fmt}, {shape}, seed {seed}) in {out}")
    for col in ("site", "images", "positives", "patients", "scanner", "scanner effects"):
        table.add_column(col, overflow="fold")
    for site, manifest in manifests.items():
        with manifest.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        table.add_row(
            site,
            str(len(rows)),
            str(sum(int(r["label"]) for r in rows)),
            str(len({r["patient_id"] for r in rows})),
            chosen[site].model,
            chosen[site].describe(),
        )
    console = Console()
    console.print(table)
    for site, manifest in manifests.items():
        console.print(f"{site}: {manifest}", highlight=False)
