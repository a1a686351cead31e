"""Each rule of a site policy refuses the tasks it should, and only those (table-driven)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cordiale.core.errors import ConfigError, PolicyRefusal
from cordiale.governance.policy import SitePolicy, TaskFacts

POLICY = SitePolicy(
    purposes=["research:metabolic"],
    researcher_orgs=["oxford", "paris-cite"],
    jurisdictions=["GB", "FR"],
    min_cohort=50,
    require_secure_aggregation=True,
    require_dp=True,
    max_epsilon=8.0,
    allow_analytics=False,
    min_cell=20,
)
OK = TaskFacts(
    stage="secagg",
    category="research:metabolic:diabetes",
    owner_org="oxford",
    hub_country="FR",
    cohort=200,
    secure_aggregation=True,
    dp="client",
    planned_epsilon=4.0,
    min_cell=20,
)

# (rule, a task that breaks only that rule)
BREAKS = [
    ("purposes", replace(OK, category="research:oncology")),
    ("purposes", replace(OK, category="research:metabolicx")),  # a prefix, not a substring
    ("researcher_orgs", replace(OK, owner_org="pharma-inc")),
    ("researcher_orgs", replace(OK, owner_org=None)),
    ("jurisdictions", replace(OK, hub_country="US")),
    ("jurisdictions", replace(OK, hub_country=None)),
    ("min_cohort", replace(OK, cohort=49)),
    ("require_secure_aggregation", replace(OK, stage="train", secure_aggregation=False)),
    ("require_dp", replace(OK, dp=None, planned_epsilon=None)),
    ("max_epsilon", replace(OK, planned_epsilon=8.5)),
    ("allow_analytics", replace(OK, stage="analytics")),
    ("min_cell", replace(OK, min_cell=10)),
]


def test_the_reference_task_is_allowed():
    assert POLICY.violations(OK) == []
    POLICY.check(OK)


@pytest.mark.parametrize(
    ("rule", "task"), BREAKS, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BREAKS)]
)
def test_each_rule_refuses_what_breaks_it_and_names_itself(rule, task):
    problems = POLICY.violations(task)
    assert len(problems) == 1 and problems[0].startswith(f"{rule}:")
    with pytest.raises(PolicyRefusal, match=rule) as refusal:
        POLICY.check(task)
    assert rule in refusal.value.public_message  # the researcher sees which rule


@pytest.mark.parametrize(
    ("rule", "task"), BREAKS, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BREAKS)]
)
def test_an_empty_policy_allows_everything(rule, task):
    assert SitePolicy().violations(task) == []


def test_training_rules_do_not_apply_to_evaluation_or_statistics():
    for stage in ("stats", "evaluate"):
        task = replace(OK, stage=stage, secure_aggregation=False, dp=None, planned_epsilon=None)
        assert POLICY.violations(task) == []


def test_every_broken_rule_is_listed_at_once():
    task = replace(OK, hub_country="US", cohort=3, owner_org="x")
    assert [p.split(":")[0] for p in POLICY.violations(task)] == [
        "researcher_orgs",
        "jurisdictions",
        "min_cohort",
    ]


def test_a_study_without_subgroups_meets_any_min_cell():
    assert POLICY.violations(replace(OK, min_cell=None)) == []


def test_a_node_refuses_a_study_whose_subgroup_cells_are_smaller_than_its_policy(pima_sites):
    """Checked by the node at set-up, before any work: the study never starts there."""
    from cordiale.core.messages import Content, Envelope, Message
    from cordiale.core.records import ConfigRecord
    from cordiale.learn.subgroups import SubgroupSpec
    from cordiale.node.runtime import NodeRuntime

    node = NodeRuntime("site-0", pima_sites["site-0"], policy=SitePolicy(min_cell=20))
    for min_cell, refused in ((10, True), (20, False)):
        spec = SubgroupSpec(("Age",), {"Age": [35.0]}, min_cell)
        task = Message(
            Envelope(study_id="s", round=0, stage="stats", sender="hub", recipient="site-0"),
            Content(config=ConfigRecord(spec.to_config())),
        )
        error = node.handle(task).content.error
        if refused:
            assert error is not None and "min_cell" in error.message and "20" in error.message
        else:
            assert error is None


def test_policy_files_are_validated(tmp_path):
    good = tmp_path / "policy.toml"
    good.write_text('[policy]\njurisdictions = ["GB"]\nmin_cohort = 10\n')
    assert SitePolicy.load(good).jurisdictions == ["GB"]
    bad = tmp_path / "bad.toml"
    bad.write_text('[policy]\njurisdiction = ["GB"]\nmin_cohort = -1\nmin_cell = 3\n')
    with pytest.raises(ConfigError, match=r"min_cohort.*min_cell.*jurisdiction: Extra inputs"):
        SitePolicy.load(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        SitePolicy.load(tmp_path / "missing.toml")
