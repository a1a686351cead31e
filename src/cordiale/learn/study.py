"""The study spec: what a researcher asks the consortium to run, as a TOML file.

One file names the purpose, the sites, the dataset each site registered and the data contract the
rows must meet, the model, the strategy and its hyperparameters, the rounds, the minimum number of
sites per round, the round timeout and the evaluation. :meth:`StudySpec.load` validates it offline
(``cordiale study validate``) and reports every problem with its TOML path in one message; the hub
validates the same way on submission. :meth:`StudySpec.federation_config` and
:meth:`StudySpec.strategy` turn it into the objects the round loop runs.

Example::

    [study]
    name = "Type 2 diabetes risk"
    purpose = "Predict diabetes onset from routine antenatal measurements"
    sites = ["oxford", "paris-cite", "pasteur"]
    min_sites = 2
    rounds = 10
    round_timeout = 60
    seed = 0

    [data]
    dataset = "pima"                 # the name the sites registered in node.toml
    contract = "pima.contract.toml"  # relative to this file, or an inline [data.contract] table

    [model]
    kind = "logreg"

    [strategy]
    name = "fedavg"
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from cordiale.core.errors import ConfigError
from cordiale.core.records import ArrayRecord
from cordiale.core.tomlfile import read_toml, validation_problems
from cordiale.crypto.messages import MAX_EPOCH_ROUNDS
from cordiale.data.contract import DataContract
from cordiale.data.features import FeatureEncoder
from cordiale.data.imaging.contract import ImagingContract
from cordiale.data.imaging.patch_dataset import PatchSpec
from cordiale.data.imaging.transforms import TransformSpec, parse_transforms, transforms_to_json
from cordiale.governance.plans import Plan, custom_plan, own_plan_builder
from cordiale.learn.dp import DPSettings
from cordiale.learn.federation import FederationConfig
from cordiale.learn.imaging_plans import NETWORKS, NetworkSpec, batchnorm_prefixes, build_network
from cordiale.learn.models import ModelSpec, TabularNet, build_with, get_weights
from cordiale.learn.secure_aggregation import DEFAULT_REKEY_EVERY, SecureAggregationConfig
from cordiale.learn.strategies import Strategy, make_strategy
from cordiale.learn.subgroups import DEFAULT_MIN_CELL, SubgroupSpec
from cordiale.learn.trainer import TrainConfig

__all__ = ["StudySpec", "task_context"]

_SITE_ID = r"^[a-z0-9][a-z0-9-]{0,62}$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StudySection(_Section):
    name: str = Field(min_length=1, max_length=200)
    purpose: str = Field(min_length=1, max_length=2000)
    # a purpose code that site policies match, e.g. research:metabolic
    category: str = Field(default="research", pattern=r"^[a-z][a-z0-9-]*(:[a-z0-9-]+)*$")
    sites: list[str] = Field(min_length=1)
    min_sites: int = Field(default=1, ge=1)
    rounds: int = Field(ge=1, le=10_000)
    round_timeout: float = Field(default=120.0, gt=0)
    seed: int = 0

    @field_validator("sites")
    @classmethod
    def _sites(cls, v: list[str]) -> list[str]:

        bad = [s for s in v if not re.match(_SITE_ID, s)]
        if bad:
            raise ValueError(f"site ids must be lowercase DNS labels; got {bad}")
        if len(set(v)) != len(v):
            raise ValueError("sites are listed more than once")
        return sorted(v)


class DataSection(_Section):
    dataset: str = Field(min_length=1, max_length=100)
    kind: Literal["tabular", "imaging"] = "tabular"
    contract: DataContract | ImagingContract
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    scaling: Literal["federated", "site"] = "federated"
    # imaging: MONAI transforms from an allow-list (see cordiale.data.imaging.transforms)
    preprocess: list[SerializeAsAny[TransformSpec]] = Field(default_factory=list)
    augment: list[SerializeAsAny[TransformSpec]] = Field(default_factory=list)
    # imaging: train on patches drawn lazily from volumes (cordiale.data.imaging.patch_dataset)
    patches: PatchSpec | None = None

    @field_validator("preprocess", "augment", mode="before")
    @classmethod
    def _transforms(cls, v: object, info: ValidationInfo) -> list[TransformSpec]:
        try:
            return parse_transforms(v, info.field_name)  # type: ignore[arg-type]
        except ConfigError as e:
            raise ValueError(str(e)) from None


class ModelSection(_Section):
    kind: Literal["logreg", "mlp"] = "logreg"
    hidden: list[int] = Field(default_factory=lambda: [32])
    batchnorm: bool = False
    # imaging: a built-in MONAI network (plan builtin:imaging), e.g. "monai:densenet121"
    network: str | None = None
    network_params: dict[str, Any] = Field(default_factory=dict)
    local_layers: list[str] = Field(default_factory=list)
    # keep every batch-norm layer at its site (FedBN), whatever the network names it
    fedbn: bool = False
    # a custom plan: ``plan = "plan.py"`` in TOML (read into plan_source by StudySpec.load)
    plan_source: str | None = Field(default=None, max_length=200_000)
    # the custom plan's initial weights (base64 safetensors), built on the researcher's machine
    initial_weights: str | None = None


class TrainSection(_Section):
    epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=0.05, gt=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    proximal_mu: float = Field(default=0.0, ge=0)


class StrategySection(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)  # the strategy's own parameters
    name: str = "fedavg"

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class EvaluationSection(_Section):
    every: int = Field(default=1, ge=0)
    # per-subgroup metrics: columns of the sites' data; numeric ones cut at ``bands`` edges
    subgroups: list[str] = Field(default_factory=list)
    bands: dict[str, list[float]] = Field(default_factory=dict)
    # smallest test examples, positives and negatives a cell at one site may have to be reported
    min_cell: int = DEFAULT_MIN_CELL  # at least MIN_CELL_FLOOR (checked by SubgroupSpec)

    @model_validator(mode="after")
    def _subgroups(self) -> EvaluationSection:
        try:  # SubgroupSpec is the one place subgroup settings are validated
            SubgroupSpec(tuple(self.subgroups), self.bands, self.min_cell)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return self

    def subgroup_spec(self) -> SubgroupSpec | None:
        if not self.subgroups:
            return None
        return SubgroupSpec(tuple(self.subgroups), self.bands, self.min_cell)


class PrivacySection(_Section):
    secure_aggregation: bool = False
    secagg_neighbours: int | None = None
    secagg_threshold: int | None = None
    secagg_rekey_every: int = Field(default=DEFAULT_REKEY_EVERY, ge=1, le=MAX_EPOCH_ROUNDS)
    dp: Literal["none", "client", "sample"] = "none"
    epsilon: float | None = Field(default=None, gt=0)  # a target; or give noise_multiplier
    delta: float = Field(default=1e-5, gt=0, lt=1)
    noise_multiplier: float | None = Field(default=None, gt=0)
    clip_norm: float = Field(default=1.0, gt=0)
    noise: Literal["central", "distributed"] = "distributed"
    accountant: Literal["rdp", "pld"] = "rdp"

    def dp_settings(self) -> DPSettings | None:
        if self.dp == "none":
            return None
        return DPSettings(
            mode=self.dp,
            delta=self.delta,
            epsilon=self.epsilon,
            noise_multiplier=self.noise_multiplier,
            clip_norm=self.clip_norm,
            noise=self.noise,
            accountant=self.accountant,
        )


class StudySpec(_Section):
    study: StudySection
    data: DataSection
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection = Field(default_factory=TrainSection)
    strategy: StrategySection = Field(default_factory=StrategySection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    privacy: PrivacySection = Field(default_factory=PrivacySection)

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> StudySpec:
        """Read and validate a study TOML file (a contract path is resolved beside it)."""
        path = Path(path)
        raw = read_toml(path, "study spec")
        plan = raw.get("model", {}).pop("plan", None)
        if isinstance(plan, str):
            plan_path = (path.parent / plan).resolve()
            try:
                raw["model"]["plan_source"] = plan_path.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise ConfigError(f"{path}: model.plan file {plan_path} does not exist") from None
        contract = raw.get("data", {}).get("contract")
        if isinstance(contract, str):
            table = read_toml((path.parent / contract).resolve(), f"{path}: data.contract file")
            raw["data"]["contract"] = table.get("contract", table)
        return cls.parse(raw, source=str(path))

    @classmethod
    def parse(cls, raw: object, *, source: str = "study spec") -> StudySpec:
        """Validate a mapping (TOML or JSON); every problem is listed with its path."""
        try:
            spec = cls.model_validate(raw)
        except ValidationError as e:
            problems = [f"  - {p}" for p in validation_problems(e)]
            raise ConfigError(
                f"{source} has {len(problems)} problem(s):\n" + "\n".join(problems)
            ) from None
        spec._check_semantics(source)
        return spec

    def _check_semantics(self, source: str) -> None:
        problems = []
        imaging = isinstance(self.data.contract, ImagingContract)
        if (self.data.kind == "imaging") != imaging:
            problems.append(
                f"data.kind is {self.data.kind!r} but data.contract is "
                f"{'an imaging' if imaging else 'a tabular'} contract"
            )
        problems += self._imaging_problems()
        problems += self._subgroup_problems()
        if self.study.min_sites > len(self.study.sites):
            problems.append(
                f"study.min_sites is {self.study.min_sites} but only "
                f"{len(self.study.sites)} site(s) are listed"
            )
        try:
            self.strategy_object()
            config = self.federation_config("validation")
            if config.dp is not None and config.dp.mode == "client":
                config.dp.client_noise_multiplier(self.study.rounds)  # the target can be met
                if config.secure_aggregation is not None and config.dp.noise == "central":
                    problems.append(
                        "privacy.noise = 'central' needs a hub trusted with single updates; "
                        "with secure aggregation use 'distributed'"
                    )
        except ConfigError as e:
            if str(e) not in problems:
                problems.append(str(e))
        if problems:
            raise ConfigError(
                f"{source} has {len(problems)} problem(s):\n"
                + "\n".join(f"  - {p}" for p in problems)
            )

    def _imaging_problems(self) -> list[str]:
        d, m = self.data, self.model
        contract = d.contract
        if not isinstance(contract, ImagingContract):
            used = [
                f"{what} is for imaging studies"
                for what, value in (
                    ("data.preprocess", d.preprocess),
                    ("data.augment", d.augment),
                    ("data.patches", d.patches),
                    ("model.network", m.network),
                )
                if value
            ]
            return used
        problems = []
        if m.network is not None and m.plan_source is not None:
            problems.append("give model.network or model.plan, not both")
        if m.network is None and m.plan_source is None:
            problems.append(
                "an imaging study needs a network: model.network (one of "
                + ", ".join(NETWORKS)
                + ") or a custom plan (model.plan)"
            )
        for stage, specs in (("preprocess", d.preprocess), ("augment", d.augment)):
            try:
                parse_transforms(specs, stage, ndim=contract.ndim)  # type: ignore[arg-type]
            except ConfigError as e:
                problems.append(str(e))
        side = None if contract.shape is None else min(contract.shape)
        if d.patches is not None:
            size = d.patches.size
            side = min(size)
            if len(size) != contract.ndim:
                problems.append(
                    f"data.patches.size has {len(size)} sides; the contract's images are "
                    f"{contract.ndim}-D"
                )
            elif contract.shape is not None and any(
                p > n for p, n in zip(size, contract.shape, strict=True)
            ):
                problems.append(
                    f"data.patches.size {size} does not fit in the contract's shape "
                    f"{contract.shape}"
                )
        try:
            network = self.network_spec()
        except ConfigError as e:  # an unknown network or parameter: names the valid ones
            return [*problems, str(e)]
        if network is not None and side is not None and side < network.min_side:
            problems.append(
                f"{network.name} downsamples by {network.min_side}: images (or patches) need "
                f"every side >= {network.min_side}; the smallest here is {side}"
            )
        return problems

    def _subgroup_problems(self) -> list[str]:
        """Bands against the contract's field types: a float field needs bands, a category or
        boolean field cannot have them (columns outside the contract are checked by the sites)."""
        e, contract = self.evaluation, self.data.contract
        if not isinstance(contract, DataContract):
            return []
        types = {f.name: f.type for f in contract.fields}
        problems = [
            f"evaluation.subgroups: {c!r} is a float field of the contract; give its bands "
            f"(evaluation.bands = {{ {c} = [...] }})"
            for c in e.subgroups
            if types.get(c) == "float" and c not in e.bands
        ]
        problems += [
            f"evaluation.bands.{c}: {c!r} is a {types[c]} field of the contract; bands are for "
            "numeric columns"
            for c in e.bands
            if types.get(c) in ("category", "bool")
        ]
        return problems

    def network_spec(self) -> NetworkSpec | None:
        """The built-in imaging network the study names (spatial dimensions from the contract)."""
        m, contract = self.model, self.data.contract
        if m.network is None:
            return None
        dims = contract.ndim if isinstance(contract, ImagingContract) else 2
        return NetworkSpec(m.network, dims, dict(m.network_params))

    # -- what the round loop runs ----------------------------------------------------------
    def strategy_object(self) -> Strategy:
        return make_strategy(
            self.strategy.name, min_fit_nodes=self.study.min_sites, **self.strategy.params()
        )

    def federation_config(self, study_id: str) -> FederationConfig:
        m, t, p = self.model, self.train, self.privacy
        secagg = None
        if p.secure_aggregation:
            secagg = SecureAggregationConfig(
                threshold=p.secagg_threshold,
                degree=p.secagg_neighbours,
                rekey_every=p.secagg_rekey_every,
            )
        return FederationConfig(
            study_id=study_id,
            rounds=self.study.rounds,
            seed=self.study.seed,
            model=ModelSpec(kind=m.kind, hidden=tuple(m.hidden), batchnorm=m.batchnorm),
            train=TrainConfig(**t.model_dump()),
            scaling=self.data.scaling,
            local_layers=tuple(m.local_layers) + self._fedbn_layers(),
            evaluate_every=self.evaluation.every,
            round_timeout=self.study.round_timeout,
            secure_aggregation=secagg,
            task_context=task_context(self),
            dp=p.dp_settings(),
            plan=self.custom_plan(),
            network=self.network_spec(),
            initial_weights=self._initial_weights(),
            subgroups=self.evaluation.subgroup_spec(),
        )

    def _num_features(self) -> int:
        contract = self.data.contract
        if isinstance(contract, ImagingContract):
            return contract.channels
        return FeatureEncoder(contract).num_features

    def _fedbn_layers(self) -> tuple[str, ...]:
        """With ``model.fedbn``, the prefixes of every batch-norm layer of the model (read from
        the initial weights when the researcher built them, else from the model built here)."""
        if not self.model.fedbn:
            return ()
        weights = self._initial_weights()
        if weights is None:
            weights = get_weights(self._build_initial_model())
        return batchnorm_prefixes(weights)

    def _build_initial_model(self) -> Any:
        plan, network = self.custom_plan(), self.network_spec()
        seed = self.study.seed
        if plan is not None:
            return build_with(own_plan_builder(plan), self._num_features(), seed=seed)
        if network is not None:
            return build_with(lambda n: build_network(network, n), self._num_features(), seed=seed)
        m = self.model
        spec = ModelSpec(kind=m.kind, hidden=tuple(m.hidden), batchnorm=m.batchnorm)
        return build_with(lambda n: TabularNet(spec, n), self._num_features(), seed=seed)

    def custom_plan(self) -> Plan | None:
        src = self.model.plan_source
        return None if src is None else custom_plan(src, name=_slug(self.study.name))

    def _initial_weights(self) -> ArrayRecord | None:
        if self.model.initial_weights is None:
            return None
        try:
            tensors = st_load(base64.b64decode(self.model.initial_weights, validate=True))
        except (ValueError, SafetensorError) as e:
            raise ConfigError(f"model.initial_weights is not base64 safetensors: {e}") from None
        return ArrayRecord(tensors)

    def prepared_for_submission(self) -> StudySpec:
        """With a custom plan or a built-in network, build its initial weights here, on the
        researcher's machine, so that the hub never runs researcher code (nodes run it once
        their custodian approved) and needs no MONAI for imaging networks."""
        if self.model.initial_weights is not None or (
            self.model.plan_source is None and self.model.network is None
        ):
            return self
        model = self._build_initial_model()
        blob = base64.b64encode(st_save(dict(get_weights(model).items()))).decode()
        return self.model_copy(
            update={"model": self.model.model_copy(update={"initial_weights": blob})}
        )

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def task_context(spec: StudySpec) -> dict[str, str | float | int]:
    """What every task of the study tells a node about its data: which dataset, which contract.

    A node restarted mid-study can serve any task from this alone.
    """
    d = spec.data
    context: dict[str, str | float | int] = {
        "data.kind": d.kind,
        "data.dataset": d.dataset,
        "data.contract": d.contract.model_dump_json(),
        "data.test_fraction": d.test_fraction,
        "study.seed": spec.study.seed,
        "study.category": spec.study.category,
    }
    if d.preprocess:
        context["data.preprocess"] = transforms_to_json(d.preprocess)
    if d.augment:
        context["data.augment"] = transforms_to_json(d.augment)
    if d.patches is not None:
        context["data.patches"] = d.patches.model_dump_json()
    return context


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:40] or "custom"
