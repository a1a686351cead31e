"""The round loop, written once: setup, training rounds and evaluation through any Transport.

:class:`Federation` is what the hub runs for a study and what simulation runs in one process; only
the transport differs. Its state between rounds (global weights, strategy state, history) is plain
data, so a hub can checkpoint it after each committed round and resume from there.

Stages of a study:

1. ``stats``: every node returns per-feature sufficient statistics of its training rows; with
   ``federated`` scaling their sum fits the standardiser every node then uses.
2. ``train`` (each round): sampled nodes get the global weights and configuration, return an
   update and an example count; the strategy moves the global model. With secure aggregation
   (``FederationConfig.secure_aggregation``) the round runs as stage ``secagg`` instead: nodes
   send only masked updates and the hub learns only their weighted mean
   (:mod:`cordiale.learn.secure_aggregation`).
3. ``evaluate``: every node scores its test rows and returns a score histogram; metrics per site
   and pooled (the sum of the histograms) follow. With subgroups
   (``FederationConfig.subgroups``) nodes also return a histogram per reportable subgroup cell,
   small cells suppressed at the node (:mod:`cordiale.learn.subgroups`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from cordiale.core.errors import ConfigError, ProtocolError
from cordiale.core.messages import Content, Envelope, Message, Stage
from cordiale.core.records import ArrayRecord, ConfigRecord
from cordiale.data.features import Standardizer, combine_stats
from cordiale.governance.plans import Plan, builtin_plan, own_plan_builder
from cordiale.learn.dp import ClientDP, DPSettings
from cordiale.learn.imaging_plans import NetworkSpec, build_network
from cordiale.learn.metrics import ScoreHistogram, compute_metrics
from cordiale.learn.models import ModelSpec, build_model, build_with, get_weights
from cordiale.learn.secure_aggregation import (
    SecureAggregationConfig,
    SecureAggregator,
    update_shapes,
)
from cordiale.learn.strategies import FitResult, Strategy
from cordiale.learn.subgroups import SiteCells, SubgroupSpec, summarise
from cordiale.learn.tasks import derive_seed
from cordiale.learn.trainer import TrainConfig
from cordiale.transport.base import Transport

__all__ = ["EvaluationReport", "Federation", "FederationConfig", "FederationResult", "RoundRecord"]

HUB_ID = "hub"


@dataclass(frozen=True)
class FederationConfig:
    study_id: str
    rounds: int
    seed: int = 0
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: Literal["federated", "site"] = "federated"
    local_layers: tuple[str, ...] = ()
    evaluate_every: int = 1
    round_timeout: float | None = None
    secure_aggregation: SecureAggregationConfig | None = None
    # Sent with every task: what a networked node needs to find its data (dataset, contract).
    task_context: dict[str, str | float | int] = field(default_factory=dict)
    dp: DPSettings | None = None
    plan: Plan | None = None  # a custom plan (None: the built-in tabular models or network)
    network: NetworkSpec | None = None  # a built-in imaging network (plan builtin:imaging)
    initial_weights: ArrayRecord | None = None  # built by the researcher for a custom plan
    subgroups: SubgroupSpec | None = None  # per-subgroup evaluation, small cells suppressed

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds must be at least 1; got {self.rounds}")
        if self.scaling not in ("federated", "site"):
            raise ConfigError(f"scaling must be 'federated' or 'site'; got {self.scaling!r}")
        if self.evaluate_every < 0:
            raise ConfigError("evaluate_every must be >= 0 (0: only after the last round)")


@dataclass
class EvaluationReport:
    """Metrics of one model per site and pooled over every site's test rows; with subgroups,
    metrics per column and value (pooled over the sites that reported the cell), the values
    suppressed at one site or more, and per site where the site reported the cell."""

    pooled: dict[str, float]
    per_site: dict[str, dict[str, float]]
    subgroups: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    suppressed: dict[str, list[str]] = field(default_factory=dict)
    per_site_subgroups: dict[str, dict[str, dict[str, dict[str, float]]]] = field(
        default_factory=dict
    )

    @classmethod
    def from_histograms(
        cls,
        hists: dict[str, ScoreHistogram],
        *,
        subgroups: SubgroupSpec | None = None,
        cells: dict[str, SiteCells] | None = None,
    ) -> EvaluationReport:
        if not hists:
            raise ProtocolError("no site returned an evaluation")
        total = None
        for h in hists.values():
            total = h if total is None else total + h
        assert total is not None
        report = cls(
            pooled=compute_metrics(total),
            per_site={s: compute_metrics(h) for s, h in sorted(hists.items())},
        )
        if subgroups is not None:
            summary = summarise(subgroups, cells or {})
            report.subgroups, report.suppressed = summary.subgroups, summary.suppressed
            report.per_site_subgroups = summary.per_site
        return report

    def to_json(self) -> dict[str, Any]:
        """As stored and sent (the hub's ``rounds.evaluation``); ``EvaluationReport(**json)``."""
        return asdict(self)


@dataclass
class RoundRecord:
    round: int
    nodes: list[str]
    train_loss: float  # NaN when the sites did not report it (differential privacy)
    seconds: float
    evaluation: EvaluationReport | None = None
    failures: dict[str, str] = field(default_factory=dict)
    privacy: dict[str, float] = field(default_factory=dict)  # epsilon each site reports spent
    #: the round's seconds had the nodes worked at the same time, as real sites do (equal to
    #: ``seconds`` over a network; in one process, less the time all but the slowest node took)
    concurrent_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """One round as results JSON: loss, pooled metrics, AUC per site, failures."""
        out: dict[str, Any] = {
            "round": self.round,
            "nodes": len(self.nodes),
            "train_loss": self.train_loss if math.isfinite(self.train_loss) else None,
            "seconds": self.seconds,
        }
        if self.evaluation is not None:
            out.update(self.evaluation.pooled)
            out["per_site_auc"] = {s: m["auc"] for s, m in self.evaluation.per_site.items()}
            if self.evaluation.subgroups or self.evaluation.suppressed:
                out["subgroups"] = {
                    c: {v: {"auc": m["auc"], "n": m["n"]} for v, m in values.items()}
                    for c, values in self.evaluation.subgroups.items()
                }
                out["suppressed"] = self.evaluation.suppressed
        if self.failures:
            out["failures"] = self.failures
        if self.privacy:
            out["epsilon"] = self.privacy
        return out


@dataclass
class FederationResult:
    weights: ArrayRecord
    history: list[RoundRecord]
    evaluation: EvaluationReport
    node_examples: dict[str, int]


class Federation:
    """Drives one study over a transport. Use :meth:`run`, or :meth:`setup` and :meth:`step`."""

    def __init__(self, config: FederationConfig, strategy: Strategy, transport: Transport) -> None:
        self.config = config
        if (
            config.dp is not None
            and config.dp.mode == "client"
            and not isinstance(strategy, ClientDP)
        ):
            strategy = ClientDP(strategy, config.dp, rounds=config.rounds)  # privacy by wrapping
        self.strategy = strategy
        self.transport = transport
        self.weights: ArrayRecord | None = None
        self.scaler: Standardizer | None = None
        self.node_examples: dict[str, int] = {}
        self.history: list[RoundRecord] = []
        self._secagg: SecureAggregator | None = None  # keeps a key epoch across rounds

    # -- messaging -------------------------------------------------------------------------
    def _exchange(
        self, stage: Stage, server_round: int, contents: dict[str, Content]
    ) -> tuple[dict[str, Message], dict[str, str]]:
        """Send one message per node; return replies and failures (node -> reason) by node."""
        msgs = [
            Message(
                Envelope(
                    study_id=self.config.study_id,
                    round=server_round,
                    stage=stage,
                    sender=HUB_ID,
                    recipient=node,
                ),
                content,
            )
            for node, content in contents.items()
        ]
        replies = self.transport.send_and_receive(msgs, timeout=self.config.round_timeout)
        ok: dict[str, Message] = {}
        failures: dict[str, str] = {}
        for r in replies:
            err = r.content.error
            if err is not None:
                failures[r.envelope.sender] = f"{err.kind}: {err.message}"
            else:
                ok[r.envelope.sender] = r
        for node in contents:
            if node not in ok and node not in failures:
                failures[node] = "no reply before the round timeout"
        return ok, failures

    def _task_configs(self, server_round: int, nodes: Sequence[str]) -> dict[str, ConfigRecord]:
        """Each node's task configuration: the round's (built once) with the node's own seed."""
        base = self._round_config(server_round)
        configs = {}
        for node in nodes:
            cfg = ConfigRecord(base)  # a copy; the round's values are validated once
            cfg["seed"] = derive_seed(self.config.seed, server_round, node)
            configs[node] = cfg
        return configs

    def _round_config(self, server_round: int) -> ConfigRecord:
        cfg = ConfigRecord(self.config.model.to_config())
        if self.config.network is not None:
            cfg.update(self.config.network.to_config())
        for k, v in self.config.train.to_config().items():
            cfg[k] = v
        for k, v in self.strategy.fit_config(server_round).items():
            cfg[k] = v
        cfg["local_layers"] = list(self.config.local_layers)
        for k, v in self._context().items():
            cfg[k] = v
        for k, v in self._plan_config().items():  # nodes run only approved code
            cfg[k] = v
        if self.config.dp is not None:
            dp = self.config.dp.to_config(self.config.rounds, self.strategy.min_fit_nodes)
            for k, v in dp.items():
                cfg[k] = v
        return cfg

    def _arrays(
        self, weights: ArrayRecord, scaler: Standardizer | None = None
    ) -> dict[str, ArrayRecord]:
        arrays = {"weights": weights}
        scaler = scaler or self.scaler
        if scaler is not None:
            arrays["scaler"] = scaler.to_record()
        return arrays

    # -- stages ----------------------------------------------------------------------------
    def setup(self) -> None:
        """Collect feature statistics, fit federated scaling, initialise the global model."""
        nodes = self.transport.node_ids()
        if not nodes:
            raise ProtocolError("no nodes are connected")
        context = ConfigRecord({**self._context(), **self._plan_config()})
        ok, failures = self._exchange("stats", 0, {n: Content(config=context) for n in nodes})
        if failures:
            detail = "\n".join(f"  - {n}: {why}" for n, why in sorted(failures.items()))
            raise ProtocolError(
                f"{len(failures)} of {len(nodes)} site(s) refused the study:\n{detail}"
            )
        stats = [ok[n].content.arrays["stats"] for n in nodes]
        widths = {s["count"].shape for s in stats}
        if len(widths) != 1:
            raise ProtocolError(f"sites report different feature counts: {sorted(widths)}")
        self.node_examples = {n: int(ok[n].content.metrics["num_train"]) for n in nodes}
        if self.config.scaling == "federated":
            self.scaler = Standardizer.from_stats(combine_stats(stats))
        num_features = int(stats[0]["count"].shape[0])
        if self.config.initial_weights is not None:
            self.weights = self.config.initial_weights.copy()
        elif self.config.plan is not None:  # simulation: the researcher's own machine
            builder = own_plan_builder(self.config.plan)
            self.weights = get_weights(build_with(builder, num_features, seed=self.config.seed))
        elif self.config.network is not None:  # the built-in network, as the nodes build it
            network = self.config.network
            model = build_with(
                lambda n: build_network(network, n), num_features, seed=self.config.seed
            )
            self.weights = get_weights(model)
        else:
            model = build_model(self.config.model, num_features, seed=self.config.seed)
            self.weights = get_weights(model)

    def step(self, server_round: int) -> RoundRecord:
        """Run training round ``server_round`` (1-based) and, when due, an evaluation."""
        if self.weights is None:
            raise ProtocolError("setup() must run before the first round")
        t0, saving0 = time.perf_counter(), self.transport.concurrency_saving
        rng = np.random.default_rng([self.config.seed, server_round])
        nodes = self.strategy.sample_nodes(self.transport.node_ids(), rng)
        arrays = self._arrays(self.weights)  # shared, read-only: each message encodes its own copy
        configs = self._task_configs(server_round, nodes)
        contents = {n: Content(arrays=dict(arrays), config=configs[n]) for n in nodes}
        if self.config.secure_aggregation is not None:
            record = self._secure_fit(server_round, contents)
        else:
            record = self._plain_fit(server_round, contents)
        every = self.config.evaluate_every
        last = server_round == self.config.rounds
        if last or (every and server_round % every == 0):
            record.evaluation = self.evaluate(self.weights, server_round=server_round)
        record.seconds = time.perf_counter() - t0
        record.concurrent_seconds = record.seconds - (self.transport.concurrency_saving - saving0)
        self.history.append(record)
        return record

    def _check_fit_nodes(
        self, server_round: int, ok: int, asked: int, failures: dict[str, str]
    ) -> None:
        if ok < self.strategy.min_fit_nodes:
            detail = "; ".join(f"{n}: {why}" for n, why in sorted(failures.items()))
            raise ProtocolError(
                f"round {server_round}: {ok} of {asked} sites returned an update, "
                f"{self.strategy.min_fit_nodes} needed ({detail})"
            )

    def _plain_fit(self, server_round: int, contents: dict[str, Content]) -> RoundRecord:
        assert self.weights is not None
        ok, failures = self._exchange("train", server_round, contents)
        self._check_fit_nodes(server_round, len(ok), len(contents), failures)
        results = [
            FitResult(
                n,
                m.content.arrays["update"],
                int(m.content.metrics["num_examples"]),
                m.content.metrics,
            )
            for n, m in sorted(ok.items())
        ]
        self.weights = self.strategy.aggregate_fit(server_round, self.weights, results)
        total = sum(r.num_examples for r in results)
        loss = (  # sites under differential privacy do not report their loss
            sum(r.metrics["train_loss"] * r.num_examples for r in results) / total
            if all("train_loss" in r.metrics for r in results)
            else math.nan
        )
        privacy = {
            r.node_id: float(r.metrics["privacy.epsilon"])
            for r in results
            if "privacy.epsilon" in r.metrics
        }
        return RoundRecord(
            server_round, sorted(ok), float(loss), 0.0, failures=failures, privacy=privacy
        )

    def _secure_fit(self, server_round: int, contents: dict[str, Content]) -> RoundRecord:
        """The round through secure aggregation: the strategy sees only the mean update."""
        assert self.weights is not None and self.config.secure_aggregation is not None
        if self._secagg is None:
            self._secagg = SecureAggregator(self.config.secure_aggregation)
        result = self._secagg.run_round(
            lambda c: self._exchange("secagg", server_round, c),
            server_round,
            contents,
            update_shapes(self.weights, self.config.local_layers),
            max_weight=(
                1  # client-level DP weighs every site equally
                if self.config.dp is not None and self.config.dp.mode == "client"
                else max((self.node_examples.get(n, 0) for n in contents), default=0)
            ),
            last_round=self.config.rounds,
        )
        self._check_fit_nodes(server_round, len(result.nodes), len(contents), result.failures)
        self.weights = self.strategy.server_update(server_round, self.weights, result.mean_update)
        return RoundRecord(
            server_round,
            result.nodes,
            result.train_loss,
            0.0,
            failures=result.failures,
            privacy=result.privacy,
        )

    def evaluate(
        self,
        weights: ArrayRecord,
        *,
        server_round: int = 0,
        personalized: bool = True,
        scaler: Standardizer | None = None,
    ) -> EvaluationReport:
        """Evaluate ``weights`` on every node's test rows (with its local layers if personalised).

        ``scaler`` overrides the study's scaling (to evaluate a model trained elsewhere).
        """
        arrays = self._arrays(weights, scaler)
        configs = self._task_configs(server_round, self.transport.node_ids())
        contents = {}
        for n, cfg in configs.items():
            cfg["personalized"] = personalized
            contents[n] = Content(arrays=dict(arrays), config=cfg)
        ok, failures = self._exchange("evaluate", server_round, contents)
        if not ok:
            detail = "; ".join(f"{n}: {why}" for n, why in sorted(failures.items()))
            raise ProtocolError(f"no site returned an evaluation ({detail})")
        hists = {
            n: ScoreHistogram.from_record(m.content.arrays["histogram"]) for n, m in ok.items()
        }
        subgroups = self.config.subgroups
        cells = None
        if subgroups is not None:
            cells = {n: SiteCells.from_reply(m.content, subgroups) for n, m in ok.items()}
        return EvaluationReport.from_histograms(hists, subgroups=subgroups, cells=cells)

    def _context(self) -> dict[str, str | float | int]:
        """What every task tells a node: the study's data settings and its subgroups."""
        subgroups = self.config.subgroups
        extra = subgroups.to_config() if subgroups is not None else {}
        return {**self.config.task_context, **extra}

    def _plan_config(self) -> dict[str, str]:
        """Which code the nodes must run: the custom plan (with its source) or the built-in."""
        plan = self.config.plan
        if plan is None:
            builtin = builtin_plan("imaging" if self.config.network is not None else "tabular")
            return {"plan.name": builtin.name, "plan.sha256": builtin.sha256}
        return {"plan.name": plan.name, "plan.sha256": plan.sha256, "plan.source": plan.source}

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoint(self) -> dict[str, ArrayRecord]:
        """The state a hub commits after a round: global weights, scaler, strategy state."""
        if self.weights is None:
            raise ProtocolError("nothing to checkpoint before setup()")
        out = {"weights": self.weights, "strategy": self.strategy.state()}
        if self.scaler is not None:
            out["scaler"] = self.scaler.to_record()
        return out

    def restore(self, arrays: dict[str, ArrayRecord], node_examples: dict[str, int]) -> None:
        """Continue from :meth:`checkpoint` output instead of running :meth:`setup`."""
        self.weights = arrays["weights"]
        self.strategy.load_state(arrays.get("strategy", ArrayRecord()))
        self.scaler = Standardizer.from_record(arrays["scaler"]) if "scaler" in arrays else None
        self.node_examples = dict(node_examples)

    def run(self, on_round: Callable[[RoundRecord], None] | None = None) -> FederationResult:
        self.setup()
        for r in range(len(self.history) + 1, self.config.rounds + 1):
            record = self.step(r)
            if on_round is not None:
                on_round(record)
        final = self.history[-1].evaluation
        assert final is not None and self.weights is not None
        return FederationResult(self.weights, self.history, final, self.node_examples)
