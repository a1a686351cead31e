"""Real sites from a bundled dataset: one CSV and one ``node.toml`` per site, on disk.

The networked demo, the tests and the benchmarks give each node its own file, exactly as a
hospital would, and need the simulation reference for the same files:
:func:`write_site_files` splits a bundled table (seeded partition, as ``cordiale simulate`` does)
and :func:`site_datasets` builds, from those files, what each node builds for a study.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tomli_w

from cordiale.core.records import ConfigRecord
from cordiale.data.catalog import get_dataset
from cordiale.data.local import SiteDataset
from cordiale.data.partition import PartitionSpec, partition_indices
from cordiale.governance.plans import builtin_plan
from cordiale.learn.study import StudySpec, task_context
from cordiale.learn.tasks import derive_seed
from cordiale.node.config import NodeConfig, dataset_for_task

__all__ = ["site_datasets", "write_site_files"]


def write_site_files(
    root: Path,
    sites: list[str],
    *,
    dataset: str = "pima",
    seed: int = 0,
    partition: str = "iid",
    approve_builtin: bool = True,
) -> dict[str, Path]:
    """Write ``root/sites/<site>/{data.csv,node.toml}``; returns site -> node.toml path.

    With ``approve_builtin`` each site's custodian has approved the built-in plan as installed.
    """
    entry = get_dataset(dataset)
    raw = entry.load()
    labels = entry.contract.validate_frame(raw, dataset=dataset)[entry.contract.target.name]
    parts = partition_indices(
        PartitionSpec.parse(partition),
        labels=labels.to_numpy(),
        sites=len(sites),
        rng=np.random.default_rng(derive_seed(seed, "partition")),
        min_size=entry.contract.min_rows,
    )
    configs = {}
    for site, idx in zip(sites, parts.values(), strict=True):
        d = root / "sites" / site
        d.mkdir(parents=True, exist_ok=True)
        raw.iloc[idx].to_csv(d / "data.csv", index=False)
        (d / "node.toml").write_text(
            tomli_w.dumps({"datasets": [{"name": dataset, "path": "data.csv"}]})
        )
        configs[site] = d / "node.toml"
        if approve_builtin:  # what `cordiale node plans approve builtin:tabular` does
            plan = builtin_plan("tabular")
            NodeConfig.load(configs[site]).plan_approvals().approve(plan, by="demo set-up")
    return configs


def site_datasets(spec: StudySpec, tables: dict[str, Path]) -> dict[str, SiteDataset]:
    """What each node builds from its file (site -> CSV/Parquet table, or an imaging manifest)
    for ``spec``."""
    config = ConfigRecord(task_context(spec))
    return {site: dataset_for_task(tables[site], config, site) for site in spec.study.sites}
