"""The node keeps the privacy account: charged before anything leaves, refused past the budget."""

from __future__ import annotations

import threading

import pytest

from cordiale.core.messages import Content, Envelope, Message
from cordiale.core.records import ConfigRecord
from cordiale.learn.dp import DPSettings, release_epsilon
from cordiale.learn.models import ModelSpec, build_model, get_weights
from cordiale.node.privacy import PrivacyKeeper
from cordiale.node.runtime import NodeRuntime
from cordiale.privacy.ledger import BudgetLedger

DP = DPSettings(mode="client", noise_multiplier=3.0, clip_norm=1.0)  # 1.39, 2.03, 2.54, ... eps


def _task(*, dp: bool = True, study: str = "s", message_id: str | None = None) -> Message:
    cfg = ConfigRecord(ModelSpec(kind="logreg").to_config())
    cfg["data.dataset"] = "pima"
    if dp:
        for k, v in DP.to_config(rounds=10, min_nodes=2).items():
            cfg[k] = v
    env = Envelope(study_id=study, round=1, stage="train", sender="hub", recipient="site-0")
    if message_id is not None:
        env = env.model_copy(update={"message_id": message_id})
    weights = get_weights(build_model(ModelSpec(kind="logreg"), 8, seed=0))
    return Message(env, Content(arrays={"weights": weights}, config=cfg))


@pytest.fixture
def ledger(tmp_path):
    ledger = BudgetLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("pima", epsilon=3.0, delta=1e-4)
    return ledger


def _node(pima_sites, ledger: BudgetLedger) -> NodeRuntime:
    return NodeRuntime("site-0", pima_sites["site-0"], privacy=PrivacyKeeper(ledger))


def test_each_release_is_charged_to_the_ledger_and_reported(pima_sites, ledger):
    node = _node(pima_sites, ledger)
    replies = [node.handle(_task()) for _ in range(3)]
    cfg = _task().content.config
    expected = [
        release_epsilon(cfg, k, num_examples=pima_sites["site-0"].num_train) for k in (1, 2, 3)
    ]
    assert [r.content.metrics["privacy.epsilon"] for r in replies] == pytest.approx(expected)
    assert ledger.spent("pima").epsilon == pytest.approx(expected[-1])
    assert ledger.spent("pima").delta == pytest.approx(1e-5)  # one delta per study


def test_a_release_past_the_budget_is_refused_with_what_is_left(pima_sites, ledger):
    node = _node(pima_sites, ledger)
    replies = [node.handle(_task()) for _ in range(12)]
    refused = [r for r in replies if r.content.error is not None]
    assert refused, "a budget of 3 runs out at the 5th release at z=3 (eps 3.38)"
    first = refused[0].content
    assert first.error.kind == "BudgetExceeded"
    assert "asks for epsilon=" in first.error.message and "is left" in first.error.message
    assert first.arrays == {}  # no update leaves with a refusal
    assert ledger.spent("pima").epsilon <= 3.0 * (1 + 1e-12)


def test_a_restarted_node_continues_the_count_and_never_charges_a_task_twice(pima_sites, ledger):
    task = _task(message_id="a" * 32)
    first = _node(pima_sites, ledger).handle(task)
    restarted = _node(pima_sites, ledger)  # a new process, the same ledger file
    again = restarted.handle(task)  # the same task delivered again after the restart
    second = restarted.handle(_task())
    eps1 = first.content.metrics["privacy.epsilon"]
    assert again.content.metrics["privacy.epsilon"] == pytest.approx(eps1)
    cfg = task.content.config
    n = pima_sites["site-0"].num_train
    assert second.content.metrics["privacy.epsilon"] == pytest.approx(
        release_epsilon(cfg, 2, num_examples=n)
    )
    assert len(ledger.history("pima")) == 2


def test_concurrent_tasks_at_the_budget_edge_never_overspend(pima_sites, ledger):
    nodes = [_node(pima_sites, ledger) for _ in range(4)]  # four processes sharing the ledger
    replies: list[Message] = []
    lock = threading.Lock()

    def work(node: NodeRuntime) -> None:
        for _ in range(5):
            reply = node.handle(_task())
            with lock:
                replies.append(reply)

    threads = [threading.Thread(target=work, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert ledger.spent("pima").epsilon <= 3.0 * (1 + 1e-12)
    charged = len(ledger.history("pima"))
    answered = sum(1 for r in replies if r.content.error is None)
    assert answered == charged  # every update that left was paid for


def test_a_budgeted_dataset_takes_only_dp_studies(pima_sites, ledger):
    reply = _node(pima_sites, ledger).handle(_task(dp=False))
    assert reply.content.error.kind == "PolicyRefusal"
    assert "only studies with differential privacy" in reply.content.error.message
    assert ledger.history("pima") == []
