"""Site policy: what a custodian allows to run on their node, checked before any work.

``policy.toml`` sits beside ``node.toml``; every rule is optional (absent: no restriction)::

    [policy]
    purposes = ["research:metabolic", "research:womens-health"]  # study.category, by prefix
    researcher_orgs = ["oxford", "paris-cite"]   # the organisation of the study's owner
    jurisdictions = ["GB", "FR"]                 # countries results may flow to (the hub's)
    min_cohort = 50                              # fewest local training rows a task may use
    require_secure_aggregation = true            # training only through secure aggregation
    require_dp = true                            # training only with differential privacy
    max_epsilon = 8.0                            # the most a study may plan to spend here
    allow_analytics = false                      # federated analytics tasks

The node evaluates every rule on :class:`TaskFacts` (what the task says, what the node knows about
its own data, and the hub's country from the hub's own certificate) and refuses with *every* rule
that fails, by name, in a message the researcher sees. ``cordiale node policy check study.toml``
runs the same evaluation offline. Pure: no I/O but reading the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cordiale.core.errors import ConfigError, PolicyRefusal
from cordiale.core.tomlfile import read_toml, validation_problems

__all__ = ["SitePolicy", "TaskFacts"]

TRAINING_STAGES = ("train", "secagg")


@dataclass(frozen=True)
class TaskFacts:
    """What a policy decides on, for one task."""

    stage: str
    category: str  # the study's purpose code, e.g. research:metabolic
    owner_org: str | None
    hub_country: str | None
    cohort: int  # the local training rows the task would use
    secure_aggregation: bool
    dp: str | None  # "client", "sample" or None
    planned_epsilon: float | None  # what the whole study would spend here (None without DP)
    min_cell: int | None = None  # the smallest subgroup cell it would report (None: no subgroups)


class SitePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    purposes: list[str] | None = None
    researcher_orgs: list[str] | None = None
    jurisdictions: list[str] | None = None
    min_cohort: int = Field(default=0, ge=0)
    require_secure_aggregation: bool = False
    require_dp: bool = False
    max_epsilon: float | None = Field(default=None, gt=0)
    allow_analytics: bool = True
    #: the smallest subgroup cell (examples, and positives and negatives) this site reports
    min_cell: int | None = Field(default=None, ge=5)

    @classmethod
    def load(cls, path: str | Path) -> SitePolicy:
        raw = read_toml(path, "policy file")
        try:
            return cls.model_validate(raw.get("policy", raw))
        except ValidationError as e:
            problems = "; ".join(validation_problems(e))
            raise ConfigError(f"policy file {path} is invalid: {problems}") from None

    def violations(self, t: TaskFacts) -> list[str]:
        """Every rule the task breaks, each naming the rule."""
        out = []
        if self.purposes is not None and not any(
            t.category == p or t.category.startswith(p + ":") for p in self.purposes
        ):
            out.append(f"purposes: {t.category!r} is not one of {self.purposes}")
        if self.researcher_orgs is not None and t.owner_org not in self.researcher_orgs:
            out.append(
                f"researcher_orgs: the study's owner belongs to {t.owner_org!r}, "
                f"not one of {self.researcher_orgs}"
            )
        if self.jurisdictions is not None and t.hub_country not in self.jurisdictions:
            where = t.hub_country or "an unknown country"
            out.append(
                f"jurisdictions: results would flow to a hub in {where}, "
                f"allowed: {self.jurisdictions}"
            )
        if t.cohort < self.min_cohort:
            out.append(
                f"min_cohort: the task would use {t.cohort} rows, at least {self.min_cohort}"
            )
        if self.min_cell is not None and t.min_cell is not None and t.min_cell < self.min_cell:
            out.append(
                f"min_cell: the study reports subgroup cells of {t.min_cell} examples, "
                f"this site at least {self.min_cell}"
            )
        if t.stage == "analytics" and not self.allow_analytics:
            out.append("allow_analytics: federated analytics are not allowed on this node")
        if t.stage in TRAINING_STAGES:
            if self.require_secure_aggregation and not t.secure_aggregation:
                out.append("require_secure_aggregation: training must use secure aggregation")
            if self.require_dp and t.dp is None:
                out.append("require_dp: training must use differential privacy")
            if (
                self.max_epsilon is not None
                and t.dp is not None
                and (t.planned_epsilon is None or t.planned_epsilon > self.max_epsilon)
            ):
                out.append(
                    f"max_epsilon: the study plans epsilon {t.planned_epsilon:.3g} here, "
                    f"at most {self.max_epsilon:g}"
                )
        return out

    def check(self, t: TaskFacts) -> None:
        """Raise :class:`PolicyRefusal` naming every failing rule."""
        problems = self.violations(t)
        if problems:
            raise PolicyRefusal(
                "refused by this site's policy: " + "; ".join(problems),
                public_message="refused by this site's policy: " + "; ".join(problems),
            )
