"""Partitioners: how a table is split into virtual sites for simulation.

A partition spec is a short string: ``iid``, ``dirichlet:ALPHA`` (label skew: each class is spread
over the sites with Dirichlet(ALPHA) proportions; smaller ALPHA, more skew), ``quantity:ALPHA``
(site sizes drawn from Dirichlet(ALPHA), labels IID) or ``natural`` (one site per value of the
table's site column). Every partitioner is a pure function of its inputs and a numpy Generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cordiale.core.errors import ConfigError, UnknownNameError

__all__ = ["PARTITIONS", "PartitionSpec", "partition_indices"]

PARTITIONS = ("iid", "dirichlet:ALPHA", "quantity:ALPHA", "natural")
_MAX_TRIES = 1000


@dataclass(frozen=True)
class PartitionSpec:
    kind: str
    alpha: float | None = None

    @classmethod
    def parse(cls, text: str) -> PartitionSpec:
        kind, _, arg = text.strip().partition(":")
        if kind in ("iid", "natural"):
            if arg:
                raise ConfigError(f"partition {kind!r} takes no parameter; got {text!r}")
            return cls(kind)
        if kind in ("dirichlet", "quantity"):
            try:
                alpha = float(arg)
            except ValueError:
                raise ConfigError(
                    f"partition {kind!r} needs a positive number: {kind}:0.5; got {text!r}"
                ) from None
            if not alpha > 0:
                raise ConfigError(f"partition {kind!r} needs alpha > 0; got {alpha}")
            return cls(kind, alpha)
        raise UnknownNameError("partition", text, PARTITIONS)

    def __str__(self) -> str:
        return self.kind if self.alpha is None else f"{self.kind}:{self.alpha:g}"


def _iid(n: int, sites: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [np.sort(p) for p in np.array_split(rng.permutation(n), sites)]


def _dirichlet(
    labels: np.ndarray, sites: int, alpha: float, rng: np.random.Generator, min_size: int
) -> list[np.ndarray]:
    classes = np.unique(labels)
    for _ in range(_MAX_TRIES):
        parts: list[list[int]] = [[] for _ in range(sites)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(sites, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for s, chunk in enumerate(np.split(idx, cuts)):
                parts[s].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise ConfigError(
        f"dirichlet:{alpha:g} could not give each of {sites} sites at least {min_size} rows "
        f"from {len(labels)} rows; use fewer sites or a larger alpha"
    )


def _quantity(
    n: int, sites: int, alpha: float, rng: np.random.Generator, min_size: int
) -> list[np.ndarray]:
    if n < sites * min_size:
        raise ConfigError(f"{n} rows cannot give {sites} sites at least {min_size} rows each")
    perm = rng.permutation(n)
    props = rng.dirichlet(np.full(sites, alpha))
    sizes = np.full(sites, min_size) + np.floor(props * (n - sites * min_size)).astype(int)
    sizes[np.argmax(props)] += n - sizes.sum()
    return [np.sort(p) for p in np.split(perm, np.cumsum(sizes)[:-1])]


def partition_indices(
    spec: PartitionSpec,
    *,
    labels: np.ndarray,
    sites: int,
    rng: np.random.Generator,
    site_values: np.ndarray | None = None,
    min_size: int = 1,
) -> dict[str, np.ndarray]:
    """Split row indices ``0..len(labels)-1`` into sites; returns site name to sorted indices."""
    n = len(labels)
    if spec.kind == "natural":
        if site_values is None:
            raise ConfigError("partition 'natural' needs a site column (--site-column)")
        keys = np.asarray(site_values).astype(str)
        return {str(k): np.flatnonzero(keys == k) for k in sorted(set(keys.tolist()))}
    if sites < 1:
        raise ConfigError(f"need at least one site; got {sites}")
    if spec.kind == "iid":
        parts = _iid(n, sites, rng)
    elif spec.kind == "dirichlet":
        parts = _dirichlet(labels, sites, float(spec.alpha or 1.0), rng, min_size)
    else:
        parts = _quantity(n, sites, float(spec.alpha or 1.0), rng, min_size)
    width = len(str(sites - 1))
    return {f"site-{i:0{width}d}": p for i, p in enumerate(parts)}
