"""Only code the custodian approved touches the data: zero executions otherwise."""

from __future__ import annotations

import hashlib

import pytest

from cordiale.core.errors import PolicyRefusal, UnknownNameError
from cordiale.core.messages import Content, Envelope, Message
from cordiale.core.records import ConfigRecord
from cordiale.governance.plans import BUILTIN_PLANS, PlanApprovals, builtin_plan, custom_plan
from cordiale.learn.models import ModelSpec, build_model, get_weights
from cordiale.node.runtime import NodeRuntime


def _train_task(plan_sha: str) -> Message:
    cfg = ConfigRecord(ModelSpec(kind="logreg").to_config())
    cfg["plan.name"], cfg["plan.sha256"] = "builtin:tabular", plan_sha
    env = Envelope(study_id="s", round=1, stage="train", sender="hub", recipient="site-0")
    weights = get_weights(build_model(ModelSpec(kind="logreg"), 8, seed=0))
    return Message(env, Content(arrays={"weights": weights}, config=cfg))


def test_the_builtin_plan_is_the_hash_of_the_node_side_code():
    plan = builtin_plan("tabular")
    assert plan.sha256 == hashlib.sha256(plan.source.encode()).hexdigest()
    for module in BUILTIN_PLANS["tabular"]:
        assert f"# ==== {module} ====" in plan.source  # what a custodian reviews
    assert "def train_local(" in plan.source and "def run_train(" in plan.source
    with pytest.raises(UnknownNameError, match="builtin:tabular"):
        builtin_plan("notebook")


def test_an_unapproved_plan_never_runs(pima_sites, tmp_path):
    node = NodeRuntime(
        "site-0", pima_sites["site-0"], approvals=PlanApprovals(tmp_path / "approved.json")
    )
    replies = [node.handle(_train_task(builtin_plan("tabular").sha256)) for _ in range(3)]
    assert node.tasks_run == 0
    for r in replies:
        assert r.content.error.kind == "PolicyRefusal" and r.content.arrays == {}
        assert "not approved by this site's custodian" in r.content.error.message


def test_approval_lets_the_plan_run_and_revocation_stops_it(pima_sites, tmp_path):
    approvals = PlanApprovals(tmp_path / "approved.json")
    node = NodeRuntime("site-0", pima_sites["site-0"], approvals=approvals)
    plan = builtin_plan("tabular")
    approvals.approve(plan, by="dr-custodian")
    ok = node.handle(_train_task(plan.sha256))
    assert ok.content.error is None and "update" in ok.content.arrays
    assert approvals.approved()[plan.sha256]["by"] == "dr-custodian"
    assert approvals.revoke(plan.sha256)
    again = node.handle(_train_task(plan.sha256))
    assert again.content.error.kind == "PolicyRefusal" and node.tasks_run == 1


def test_a_one_byte_change_is_a_new_plan_and_is_refused(pima_sites, tmp_path):
    approvals = PlanApprovals(tmp_path / "approved.json")
    plan = builtin_plan("tabular")
    approvals.approve(plan, by="custodian")
    node = NodeRuntime("site-0", pima_sites["site-0"], approvals=approvals)
    modified = hashlib.sha256((plan.source + " ").encode()).hexdigest()
    reply = node.handle(_train_task(modified))
    assert reply.content.error.kind == "PolicyRefusal" and node.tasks_run == 0
    assert "different code versions" in reply.content.error.message
    with pytest.raises(PolicyRefusal):
        approvals.check("builtin:tabular", modified)


def test_a_received_plan_is_kept_as_text_and_never_executed_before_approval(tmp_path):
    marker = tmp_path / "ran"
    source = f"open({str(marker)!r}, 'w').close()\n\ndef build_model(num_features):\n    pass\n"
    plan = custom_plan(source)
    approvals = PlanApprovals(tmp_path / "state" / "approved.json")

    with pytest.raises(PolicyRefusal, match="not approved"):
        approvals.check(plan.name, plan.sha256, source)

    assert approvals.pending(plan.sha256).source == source  # kept for the custodian's review
    assert not marker.exists()  # ... and nothing of it ran


def test_an_approved_plan_file_edited_after_approval_is_refused(tmp_path):
    source = "def build_model(num_features):\n    return None\n"
    plan = custom_plan(source)
    approvals = PlanApprovals(tmp_path / "approved.json")
    approvals.approve(plan, by="custodian")
    (approvals.approved_dir / f"{plan.sha256}.py").write_text(source + "import os\n")
    with pytest.raises(PolicyRefusal, match="changed since approval"):
        approvals.builder(plan.sha256)
