"""The node runtime: one site's side of a study, behind any transport.

It decodes a task, checks it (addressed to this node, not seen before, a stage it knows), runs the
node-side task code of :mod:`cordiale.learn.tasks` on the local dataset and encodes the reply. A
failure becomes an error reply that carries only the error's public message: local detail (paths,
values) never leaves the site. The networked node agent wraps this same runtime.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from cordiale.core.codec import DecodeLimits, decode_message, encode_message
from cordiale.core.errors import CordialeError, ProtocolError, WireError
from cordiale.core.messages import Content, Envelope, ErrorInfo, Message, ReplayGuard
from cordiale.core.records import ConfigRecord
from cordiale.data.local import SiteDataset
from cordiale.governance.plans import PlanApprovals
from cordiale.governance.policy import SitePolicy, TaskFacts
from cordiale.learn.dp import release_epsilon
from cordiale.learn.secagg_wire import TRAINING_STEP, step_of
from cordiale.learn.secure_aggregation import run_secagg
from cordiale.learn.subgroups import SubgroupSpec
from cordiale.learn.tasks import NodeState, run_evaluate, run_stats, run_train
from cordiale.node.privacy import PrivacyKeeper

__all__ = ["DatasetResolver", "NodeRuntime"]

#: Finds the local dataset a study's task runs on: ``(study_id, task config) -> dataset``.
DatasetResolver = Callable[[str, ConfigRecord], SiteDataset]

log = logging.getLogger(__name__)


class NodeRuntime:
    """Serves task messages for one site from its local dataset.

    ``dataset`` is one dataset (simulation) or a resolver that finds, per study, the dataset the
    task names and checks it against the study's contract (the networked node).
    """

    def __init__(
        self,
        node_id: str,
        dataset: SiteDataset | DatasetResolver,
        *,
        limits: DecodeLimits | None = None,
        privacy: PrivacyKeeper | None = None,
        policy: SitePolicy | None = None,
        approvals: PlanApprovals | None = None,
        plans: Mapping[str, Callable[[int], Any]] | None = None,
    ) -> None:
        self.node_id = node_id
        self.privacy = privacy or PrivacyKeeper()
        self.policy = policy
        self.approvals = approvals  # None: no code approval (simulation)
        self.hub_country: str | None = None  # from the hub's certificate, set by the agent
        self._resolve: DatasetResolver = (
            dataset if callable(dataset) else (lambda _study, _config: dataset)
        )
        self.state = NodeState(plans=dict(plans or {}))  # simulation: the researcher's own
        self._guard = ReplayGuard()
        self._limits = limits or DecodeLimits()
        self.tasks_run = 0

    def handle(self, message: Message) -> Message:
        """Answer one task message (never raises for a bad task: replies with the error)."""
        try:
            env = message.envelope
            if env.recipient != self.node_id:
                raise ProtocolError(f"task addressed to {env.recipient!r}, not to this node")
            self._guard.accept(message)
            content = self._dispatch(message)
            self.tasks_run += 1
        except CordialeError as e:
            content = Content(error=ErrorInfo(kind=type(e).__name__, message=e.public_message))
        except Exception:
            log.exception("task %s failed at node %s", message.envelope.message_id, self.node_id)
            content = Content(
                error=ErrorInfo(kind="InternalError", message="internal error at node")
            )
        return message.reply(content)

    def handle_bytes(self, data: bytes) -> bytes:
        """Decode, answer and encode: the byte-level entry used by transports."""
        try:
            message = decode_message(data, self._limits)
        except WireError as e:
            reply = Message(
                Envelope(
                    study_id="unknown",
                    round=0,
                    stage="control",
                    sender=self.node_id,
                    recipient="hub",
                ),
                Content(error=ErrorInfo(kind="WireError", message=e.public_message)),
            )
            return encode_message(reply)
        return encode_message(self.handle(message))

    def _dispatch(self, message: Message) -> Content:
        stage = message.envelope.stage
        if stage not in ("stats", "train", "evaluate", "secagg"):
            raise ProtocolError(f"this node does not run stage {stage!r}")
        study = message.envelope.study_id
        if stage == "secagg" and step_of(message.content) != TRAINING_STEP:
            # key set-up and unmasking: protocol secrets only, no data and no plan code touched
            return run_secagg(
                self.node_id, None, message.content, self.state, study, message.envelope.round
            )
        if self.approvals is not None:  # only code the custodian approved touches the data
            cfg = message.content.config
            plan = self.approvals.check(
                cfg.get_str("plan.name", ""),
                cfg.get_str("plan.sha256", ""),
                cfg.get_str("plan.source", "") or None,
            )
            if plan.name.startswith("custom:") and plan.sha256 not in self.state.plans:
                self.state.plans[plan.sha256] = self.approvals.builder(plan.sha256)
        dataset = self._resolve(study, message.content.config)
        if self.policy is not None:  # the site's rules, before any work
            self.policy.check(_facts(message, dataset, self.hub_country))
        handlers: dict[str, Callable[[], Content]] = {
            "stats": lambda: run_stats(dataset, message.content),
            "train": lambda: run_train(dataset, message.content, self.state, study),
            "evaluate": lambda: run_evaluate(dataset, message.content, self.state, study),
            "secagg": lambda: run_secagg(
                self.node_id, dataset, message.content, self.state, study, message.envelope.round
            ),
        }
        releases = stage in ("train", "secagg")  # secagg here: the training step
        name = message.content.config.get_str("data.dataset", dataset.name)
        spent = None
        if releases:
            self.privacy.check_allowed(name, message.content.config)
            if "dp.mode" in message.content.config:
                # charged, durably, before any work: nothing derived from the data leaves unpaid
                spent = self.privacy.charge(
                    name,
                    message.envelope.study_id,
                    message.envelope.message_id,
                    message.content.config,
                    num_examples=dataset.num_train,
                )
        content = handlers[stage]()
        if spent is not None:
            content.metrics["privacy.epsilon"], content.metrics["privacy.delta"] = spent
        return content


def _facts(message: Message, dataset: SiteDataset, hub_country: str | None) -> TaskFacts:
    cfg = message.content.config
    dp = cfg.get_str("dp.mode", "") or None
    planned = None
    if dp is not None:
        rounds = cfg.get_int("dp.rounds", 1)
        planned = release_epsilon(cfg, rounds, num_examples=dataset.num_train)
    subgroups = SubgroupSpec.from_config(cfg)
    return TaskFacts(
        stage=message.envelope.stage,
        category=cfg.get_str("study.category", "research"),
        owner_org=cfg.get_str("study.owner_org", "") or None,
        hub_country=hub_country,
        cohort=dataset.num_train,
        secure_aggregation=message.envelope.stage == "secagg",
        dp=dp,
        planned_epsilon=planned,
        min_cell=None if subgroups is None else subgroups.min_cell,
    )
