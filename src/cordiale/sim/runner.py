"""One-process simulation: the real node runtime and round loop over the in-memory transport.

``simulate`` loads a bundled dataset or a user's table, checks it against its data contract, splits
it into virtual sites, lets each site split its own rows into training and test sets, and runs the
same :class:`~cordiale.learn.federation.Federation` the hub runs, through an
:class:`~cordiale.transport.inmemory.InMemoryTransport` (every message encoded and decoded). The
pooled baseline is the same model trained by the same code on one virtual site holding the union of
the sites' training rows: the upper bound a federation chases. Deterministic for a seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from cordiale import __version__
from cordiale.core.errors import ConfigError, ContractViolation
from cordiale.core.jsonsafe import finite
from cordiale.data.catalog import get_dataset
from cordiale.data.contract import DataContract, infer_contract
from cordiale.data.local import LocalDataset, split_site
from cordiale.data.partition import PartitionSpec, partition_indices
from cordiale.data.tabular import read_table
from cordiale.governance.plans import Plan, own_plan_builder
from cordiale.learn.dp import DPSettings
from cordiale.learn.federation import (
    EvaluationReport,
    Federation,
    FederationConfig,
    FederationResult,
    RoundRecord,
)
from cordiale.learn.imaging_plans import NetworkSpec
from cordiale.learn.models import ModelSpec
from cordiale.learn.secure_aggregation import SecureAggregationConfig
from cordiale.learn.strategies import make_strategy
from cordiale.learn.study import StudySpec
from cordiale.learn.subgroups import SubgroupSpec
from cordiale.learn.tasks import derive_seed
from cordiale.learn.trainer import TrainConfig
from cordiale.node.runtime import NodeRuntime
from cordiale.transport.inmemory import InMemoryTransport

__all__ = [
    "DataSource",
    "SimulationResult",
    "SimulationSpec",
    "prepare_sites",
    "simulate",
    "simulation_of",
]

POOLED_SITE = "pooled"


@dataclass(frozen=True)
class DataSource:
    """A bundled dataset by name, or a user's CSV/Parquet table with its target."""

    dataset: str | None = None
    table: Path | None = None
    target: str | None = None
    positive: str | None = None
    site_column: str | None = None
    contract: Path | None = None

    def __post_init__(self) -> None:
        if (self.dataset is None) == (self.table is None):
            raise ConfigError(
                "give exactly one of a bundled dataset (--dataset) or a table (--csv)"
            )
        if self.table is not None and self.target is None and self.contract is None:
            raise ConfigError(
                "a table needs its target column (--target) or a contract (--contract)"
            )

    def load(self) -> tuple[str, pd.DataFrame, DataContract, str | None]:
        """``(name, raw frame, contract, site column)``."""
        if self.dataset is not None:
            entry = get_dataset(self.dataset)
            return entry.name, entry.load(), entry.contract, self.site_column or entry.site_column
        assert self.table is not None
        frame = read_table(self.table)
        if self.site_column is not None and self.site_column not in frame.columns:
            raise ConfigError(f"site column {self.site_column!r} is not in {self.table.name}")
        if self.contract is not None:
            contract = DataContract.from_toml(self.contract)
        else:
            assert self.target is not None
            exclude = (self.site_column,) if self.site_column else ()
            contract = infer_contract(
                frame,
                name=self.table.stem,
                target=self.target,
                positive=self.positive,
                exclude=exclude,
            )
        return self.table.name, frame, contract, self.site_column


@dataclass(frozen=True)
class SimulationSpec:
    source: DataSource
    sites: int = 4
    partition: str | None = None  # default: natural when there is a site column, else iid
    strategy: str = "fedavg"
    strategy_params: dict[str, Any] = field(default_factory=dict)
    rounds: int = 20
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    test_fraction: float = 0.2
    scaling: Literal["federated", "site"] = "federated"
    local_layers: tuple[str, ...] = ()
    pooled: bool = True
    evaluate_every: int = 1
    secure_aggregation: SecureAggregationConfig | None = None
    dp: DPSettings | None = None
    plan: Plan | None = None  # a custom plan (None: the built-in models of ``model``)
    network: NetworkSpec | None = None  # a built-in imaging network (plan builtin:imaging)
    # what every task tells a node about its data (a study's transforms, patches)
    task_context: dict[str, str | float | int] = field(default_factory=dict)
    subgroups: SubgroupSpec | None = None  # per-subgroup evaluation, small cells suppressed


@dataclass
class SimulationResult:
    spec: SimulationSpec
    dataset: str
    feature_names: list[str]
    site_sizes: dict[str, tuple[int, int]]
    federated: FederationResult
    pooled: FederationResult | None
    pooled_on_sites: EvaluationReport | None
    wall_seconds: float
    bytes_on_wire: int

    def to_json(self) -> dict[str, Any]:
        fed = self.federated.evaluation
        pooled = self.pooled_on_sites
        per_site = {
            s: {
                "n_train": n_tr,
                "n_test": n_te,
                "federated": fed.per_site.get(s),
                "pooled": pooled.per_site.get(s) if pooled else None,
                "subgroups": fed.per_site_subgroups.get(s, {}),
            }
            for s, (n_tr, n_te) in self.site_sizes.items()
        }
        ratio = None
        if pooled is not None and pooled.pooled["auc"] > 0:
            ratio = fed.pooled["auc"] / pooled.pooled["auc"]
        spec = self.spec
        out = {
            "cordiale_version": __version__,
            "dataset": self.dataset,
            "config": {
                "sites": len(self.site_sizes),
                "partition": spec.partition,
                "strategy": spec.strategy,
                "strategy_params": spec.strategy_params,
                "rounds": spec.rounds,
                "model": (
                    spec.network.describe()
                    if spec.network is not None
                    else spec.model.describe(len(self.feature_names))
                ),
                "train": dict(spec.train.__dict__),
                "seed": spec.seed,
                "test_fraction": spec.test_fraction,
                "scaling": spec.scaling,
                "local_layers": list(spec.local_layers),
                "secure_aggregation": (
                    spec.secure_aggregation.to_json() if spec.secure_aggregation else None
                ),
                "dp": spec.dp.to_json() if spec.dp else None,
                "subgroups": spec.subgroups.to_json() if spec.subgroups else None,
            },
            "federated": fed.pooled,
            "pooled": pooled.pooled if pooled else None,
            "auc_ratio_federated_to_pooled": ratio,
            "per_site": per_site,
            "subgroups": fed.subgroups,
            "suppressed": fed.suppressed,
            "rounds": [r.to_json() for r in self.federated.history],
            "pooled_rounds": [r.to_json() for r in self.pooled.history] if self.pooled else [],
            "timing": {"wall_seconds": self.wall_seconds, "bytes_on_wire": self.bytes_on_wire},
            "privacy": self._privacy(),
        }
        return finite(out)

    def _privacy(self) -> dict[str, Any] | None:
        dp = self.spec.dp
        if dp is None:
            return None
        spent: dict[str, float] = {}
        for r in self.federated.history:
            spent.update(r.privacy)
        return {"settings": {"dp": dp.mode, **dp.to_json()}, "epsilon_spent": spent}


def prepare_sites(spec: SimulationSpec) -> tuple[str, dict[str, LocalDataset]]:
    """Load, validate, partition and split: the data each virtual site holds."""
    name, raw, contract, site_column = spec.source.load()
    partition = PartitionSpec.parse(spec.partition or ("natural" if site_column else "iid"))
    if partition.kind == "natural" and site_column is None:
        raise ConfigError("partition 'natural' needs a site column (--site-column)")
    if spec.subgroups is not None:
        lacking = [c for c in spec.subgroups.columns if c not in raw.columns]
        if lacking:
            raise ConfigError(
                f"subgroup column(s) {', '.join(map(repr, lacking))} not in {name}; its columns: "
                + ", ".join(map(str, raw.columns))
            )
    frame = contract.validate_frame(raw, dataset=name)
    labels = frame[contract.target.name].to_numpy()
    site_values = None
    if partition.kind == "natural":
        assert site_column is not None
        site_values = raw[site_column].reset_index(drop=True).to_numpy()
    parts = partition_indices(
        partition,
        labels=labels,
        sites=spec.sites,
        rng=np.random.default_rng(derive_seed(spec.seed, "partition")),
        site_values=site_values,
        min_size=contract.min_rows,
    )
    problems = []
    for site, idx in parts.items():
        y = labels[idx]
        if len(idx) < contract.min_rows:
            problems.append(
                f"site {site!r}: {len(idx)} rows, the contract needs at least {contract.min_rows}"
            )
        for cls_value, label in ((1, "positive"), (0, "negative")):
            if int((y == cls_value).sum()) < contract.min_per_class:
                problems.append(
                    f"site {site!r}: {int((y == cls_value).sum())} {label} row(s), "
                    f"the contract needs at least {contract.min_per_class}"
                )
    if problems:
        raise ContractViolation(f"{name} split into {len(parts)} sites", problems)
    sites = {}
    raw = raw.reset_index(drop=True)
    for site, idx in parts.items():
        sites[site] = split_site(
            site,
            contract,
            frame.iloc[idx],
            raw.iloc[idx],
            test_fraction=spec.test_fraction,
            seed=derive_seed(spec.seed, "split", site),
        )
    return name, sites


def _pooled_dataset(sites: dict[str, LocalDataset]) -> LocalDataset:
    first = next(iter(sites.values()))
    return LocalDataset(
        POOLED_SITE,
        first.contract,
        np.concatenate([d.x_train for d in sites.values()]),
        np.concatenate([d.y_train for d in sites.values()]),
        np.concatenate([d.x_test for d in sites.values()]),
        np.concatenate([d.y_test for d in sites.values()]),
        list(getattr(first, "feature_names", [])),
    )


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Small models train fastest on one thread; restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def simulate(
    spec: SimulationSpec,
    *,
    on_round: Callable[[str, RoundRecord], None] | None = None,
    sites: dict[str, LocalDataset] | None = None,
) -> SimulationResult:
    """Run the federated study and (unless ``spec.pooled`` is false) its pooled baseline.

    ``on_round(phase, record)`` is called after every round, ``phase`` being ``"federated"`` or
    ``"pooled"``. ``sites`` may be given to reuse prepared data.
    """
    t0 = time.perf_counter()
    if sites is None:
        name, sites = prepare_sites(spec)
    else:
        name = next(iter(sites.values())).contract.name
    config = FederationConfig(
        study_id="simulation",
        rounds=spec.rounds,
        seed=spec.seed,
        model=spec.model,
        train=spec.train,
        scaling=spec.scaling,
        local_layers=spec.local_layers,
        evaluate_every=spec.evaluate_every,
        secure_aggregation=spec.secure_aggregation,
        dp=spec.dp,
        plan=spec.plan,
        network=spec.network,
        task_context=spec.task_context,
        subgroups=spec.subgroups,
    )
    # a custom plan runs from the researcher's own approved copy, as nodes run theirs
    plans = {spec.plan.sha256: own_plan_builder(spec.plan)} if spec.plan else {}
    transport = InMemoryTransport(
        {s: NodeRuntime(s, d, plans=plans).handle_bytes for s, d in sites.items()}
    )
    with _torch_threads(1):
        federation = Federation(
            config, make_strategy(spec.strategy, **spec.strategy_params), transport
        )
        fed = federation.run(lambda r: on_round("federated", r) if on_round else None)
        pooled = pooled_on_sites = None
        if spec.pooled:
            pooled_transport = InMemoryTransport(
                {
                    POOLED_SITE: NodeRuntime(
                        POOLED_SITE, _pooled_dataset(sites), plans=plans
                    ).handle_bytes
                }
            )
            pooled_fed = Federation(
                FederationConfig(
                    **{
                        **config.__dict__,
                        "local_layers": (),
                        "scaling": "federated",
                        "secure_aggregation": None,  # one site: nothing to hide it among
                        "dp": None,  # the baseline is the non-private upper bound
                        "subgroups": None,  # one site; its subgroups are evaluated on the sites
                    }
                ),
                make_strategy("fedavg"),
                pooled_transport,
            )
            pooled = pooled_fed.run(lambda r: on_round("pooled", r) if on_round else None)
            pooled_on_sites = federation.evaluate(
                pooled.weights, personalized=False, scaler=pooled_fed.scaler
            )
    first = next(iter(sites.values()))
    return SimulationResult(
        spec=spec,
        dataset=name,
        feature_names=list(getattr(first, "feature_names", [])),
        site_sizes={s: (d.num_train, d.num_test) for s, d in sites.items()},
        federated=fed,
        pooled=pooled,
        pooled_on_sites=pooled_on_sites,
        wall_seconds=time.perf_counter() - t0,
        bytes_on_wire=transport.bytes_sent + transport.bytes_received,
    )


def simulation_of(study: StudySpec) -> SimulationSpec:
    """The one-process simulation of a networked study: same model, strategy, seed and split.

    Run it with ``simulate(simulation_of(study), sites=...)`` on the sites' own rows (each built
    by :func:`~cordiale.data.local.build_site_dataset`, as the nodes do) to get the result the
    network must reproduce, and the pooled baseline beside it.
    """
    config = study.federation_config("simulation")
    return SimulationSpec(
        source=DataSource(dataset=study.data.dataset),
        sites=len(study.study.sites),
        strategy=study.strategy.name,
        strategy_params={**study.strategy.params(), "min_fit_nodes": study.study.min_sites},
        rounds=config.rounds,
        model=config.model,
        train=config.train,
        seed=config.seed,
        test_fraction=study.data.test_fraction,
        scaling=config.scaling,
        local_layers=config.local_layers,
        evaluate_every=config.evaluate_every,
        secure_aggregation=config.secure_aggregation,
        dp=config.dp,
        plan=config.plan,
        network=config.network,
        task_context=config.task_context,
        subgroups=config.subgroups,
    )
