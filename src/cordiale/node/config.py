"""``node.toml``: the datasets a site registers, and how a study's task finds its rows.

Example::

    [node]
    state_dir = "state"                 # ledger and audit log (default: cordiale-node-state)
    policy = "policy.toml"              # optional: what this site allows

    [[datasets]]
    name = "pima"                       # the name studies ask for
    path = "data/oxford-pima.csv"       # relative to node.toml; CSV or Parquet
    contract = "pima.contract.toml"     # optional: checked when the node starts
    description = "Antenatal clinic, 2019-2023"
    budget_epsilon = 8.0                # optional: only DP studies, until epsilon 8 is spent
    budget_delta = 1e-5

Only metadata leaves the site when the node registers (name, format, row count, column names,
contract name): never a value. When a task arrives, :class:`SiteData` reads the named dataset,
checks it against the contract the study carries and splits it with the study's seed, exactly as
simulation does (:func:`~cordiale.data.local.build_site_dataset`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cordiale.core.errors import ConfigError
from cordiale.core.records import ConfigRecord
from cordiale.core.tomlfile import read_toml, validation_problems
from cordiale.data.contract import DataContract
from cordiale.data.imaging.contract import ImagingContract
from cordiale.data.imaging.dataset import ImageDataset
from cordiale.data.imaging.patch_dataset import PatchDataset, PatchSpec
from cordiale.data.imaging.transforms import transforms_from_json
from cordiale.data.local import SiteDataset, build_site_dataset
from cordiale.data.tabular import read_table
from cordiale.governance.plans import PlanApprovals
from cordiale.governance.policy import SitePolicy
from cordiale.learn.tasks import derive_seed
from cordiale.node.privacy import PrivacyKeeper

__all__ = ["DatasetEntry", "NodeConfig", "SiteData", "dataset_for_task"]


class DatasetEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,100}$")
    path: Path
    contract: Path | None = None
    description: str = ""
    # a privacy budget: studies on this dataset must use DP, and stop when it is spent
    budget_epsilon: float | None = Field(default=None, gt=0)
    budget_delta: float = Field(default=1e-5, gt=0, lt=1)


class NodeSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    state_dir: Path = Path("cordiale-node-state")  # the privacy ledger and audit log live here
    policy: Path | None = None  # policy.toml: what this site allows (see governance.policy)
    require_plan_approval: bool = True  # run only code whose hash the custodian approved


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    node: NodeSection = Field(default_factory=NodeSection)
    datasets: list[DatasetEntry] = Field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> NodeConfig:
        """Read ``node.toml``; paths are resolved beside it and must exist."""
        path = Path(path)
        raw = read_toml(path, "node config")
        try:
            config = cls.model_validate(raw)
        except ValidationError as e:
            problems = "\n".join(f"  - {p}" for p in validation_problems(e))
            raise ConfigError(f"node config {path} has problems:\n{problems}") from None
        base = path.parent
        entries = [
            e.model_copy(
                update={
                    "path": (base / e.path).resolve(),
                    "contract": None if e.contract is None else (base / e.contract).resolve(),
                }
            )
            for e in config.datasets
        ]
        missing = [f"{e.name}: {e.path}" for e in entries if not e.path.is_file()]
        missing += [
            f"{e.name}: {e.contract}" for e in entries if e.contract and not e.contract.is_file()
        ]
        names = [e.name for e in entries]
        if missing:
            raise ConfigError(f"node config {path} names files that do not exist: {missing}")
        if len(set(names)) != len(names):
            raise ConfigError(f"node config {path} registers a dataset name twice: {names}")
        policy = None if config.node.policy is None else (base / config.node.policy).resolve()
        if policy is not None and not policy.is_file():
            raise ConfigError(
                f"node config {path} names a policy file that does not exist: {policy}"
            )
        state = config.node.model_copy(
            update={"state_dir": (base / config.node.state_dir).resolve(), "policy": policy}
        )
        return cls(node=state, datasets=entries)

    def plan_approvals(self) -> PlanApprovals:
        return PlanApprovals(self.node.state_dir / "approved-plans.json")

    def site_policy(self) -> SitePolicy | None:
        return None if self.node.policy is None else SitePolicy.load(self.node.policy)

    def privacy_keeper(self) -> PrivacyKeeper:
        """The node's ledger (in ``state_dir``), with the budgets this file sets."""
        keeper = PrivacyKeeper.at(self.node.state_dir)
        assert keeper.ledger is not None
        for e in self.datasets:
            if e.budget_epsilon is not None:
                keeper.ledger.set_budget(e.name, epsilon=e.budget_epsilon, delta=e.budget_delta)
        return keeper


class SiteData:
    """The site's registered datasets, loaded on demand and cached per study."""

    def __init__(self, node_id: str, config: NodeConfig) -> None:
        self.node_id = node_id
        self._entries = {e.name: e for e in config.datasets}
        self._cache: dict[str, SiteDataset] = {}
        self._lock = threading.Lock()

    def check_local_contracts(self) -> None:
        """Validate each dataset against its registered contract (raises ContractViolation)."""
        for e in self._entries.values():
            if e.contract is not None:
                DataContract.from_toml(e.contract).validate_frame(
                    read_table(e.path), dataset=e.name
                )

    def summary(self) -> dict[str, dict[str, Any]]:
        """What the hub may know of each dataset: metadata and row counts, never values."""
        out = {}
        for e in self._entries.values():
            frame: pd.DataFrame = read_table(e.path)
            out[e.name] = {
                "rows": len(frame),
                "columns": [str(c) for c in frame.columns],
                "format": e.path.suffix.lstrip(".").lower(),
                "contract": None if e.contract is None else DataContract.from_toml(e.contract).name,
                "description": e.description,
            }
        return out

    def resolve(self, study_id: str, config: ConfigRecord) -> SiteDataset:
        """The dataset a study's task runs on, checked against the contract the study carries."""
        with self._lock:
            cached = self._cache.get(study_id)
            if cached is not None:
                return cached
            name = config.get_str("data.dataset", "")
            entry = self._entries.get(name)
            if entry is None:
                raise ConfigError(
                    f"this site has no dataset named {name!r}; it registered: "
                    f"{', '.join(sorted(self._entries)) or 'none'}"
                )
            dataset = dataset_for_task(entry.path, config, self.node_id)
            self._cache[study_id] = dataset
            return dataset


def dataset_for_task(path: Path, config: ConfigRecord, site: str) -> SiteDataset:
    """What a site builds from its file for a study's task: rows (CSV/Parquet) or images (the
    manifest), checked against the task's contract, split with the study's seed, and for imaging
    preprocessed or cut into patches as the study says. Simulation builds its sites with this
    too, so both hold the same data."""
    raw_contract = config.get_str("data.contract", "{}")
    fraction = config.get_float("data.test_fraction", 0.2)
    seed = derive_seed(config.get_int("study.seed", 0), "split", site)
    try:
        if config.get_str("data.kind", "tabular") != "imaging":
            return build_site_dataset(
                read_table(path),
                DataContract.model_validate_json(raw_contract),
                site=site,
                test_fraction=fraction,
                seed=seed,
            )
        # the dataset's path is its manifest (images listed with labels and patients)
        contract = ImagingContract.model_validate_json(raw_contract)
        preprocess = transforms_from_json(config.get_str("data.preprocess", ""), "preprocess")
        patches = config.get_str("data.patches", "")
        if patches:
            return PatchDataset.from_manifest(
                path,
                contract,
                PatchSpec.model_validate_json(patches),
                test_fraction=fraction,
                seed=seed,
                site=site,
                preprocess=preprocess,
            )
        return ImageDataset.from_manifest(
            path, contract, test_fraction=fraction, seed=seed, site=site, preprocess=preprocess
        )
    except ValidationError as e:
        raise ConfigError(f"the study's data settings are invalid: {e}") from None
