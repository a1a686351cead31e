"""The node's privacy account: what each DP release costs, charged before it leaves the site.

For every training reply of a DP study the node computes, itself, the epsilon of all its releases
in that study so far (:func:`~cordiale.learn.dp.release_epsilon`, by the ``dp_accounting``
accountant) and charges the *increase* to the dataset's ledger
(:class:`~cordiale.privacy.ledger.BudgetLedger`): atomically, idempotently per task, durably, and
before the task runs, so nothing derived from the data leaves unpaid. A charge that does not fit
is refused with what was asked and what is left. The number of earlier releases comes from the
ledger itself, so a restarted node never under-counts.

A dataset with a budget takes only DP studies: a task without differential privacy is refused.
Without a ledger (simulation), releases are counted in memory and nothing is enforced.
"""

from __future__ import annotations

import threading
from pathlib import Path

from cordiale.core.errors import BudgetExceeded, PolicyRefusal, PrivacyError
from cordiale.core.records import ConfigRecord
from cordiale.learn.dp import release_epsilon
from cordiale.privacy.ledger import BudgetLedger

__all__ = ["PrivacyKeeper"]


class PrivacyKeeper:
    """Charges DP releases to a ledger (or counts them, in simulation)."""

    def __init__(self, ledger: BudgetLedger | None = None) -> None:
        self.ledger = ledger
        self._counts: dict[tuple[str, str], tuple[int, float]] = {}
        self._lock = threading.Lock()

    @classmethod
    def at(cls, state_dir: Path) -> PrivacyKeeper:
        state_dir.mkdir(parents=True, exist_ok=True)
        return cls(BudgetLedger(state_dir / "privacy-ledger.sqlite"))

    def _has_budget(self, dataset: str) -> bool:
        if self.ledger is None:
            return False
        try:
            self.ledger.budget(dataset)
        except PrivacyError:
            return False
        return True

    def check_allowed(self, dataset: str, config: ConfigRecord) -> None:
        """Refuse a non-DP training task on a dataset the custodian put under a budget."""
        if "dp.mode" not in config and self._has_budget(dataset):
            raise PolicyRefusal(
                f"dataset {dataset!r} has a privacy budget: it takes only studies with "
                "differential privacy (privacy.dp in the study spec)"
            )

    def charge(
        self, dataset: str, study: str, task_id: str, config: ConfigRecord, *, num_examples: int
    ) -> tuple[float, float]:
        """Charge one release; return the study's cumulative ``(epsilon, delta)`` at this site."""
        delta = config.get_float("dp.delta", 0.0)
        with self._lock:
            if self.ledger is None:
                releases, spent = self._counts.get((dataset, study), (0, 0.0))
            else:
                mine = [c for c in self.ledger.history(dataset) if c.study_id == study]
                if any(c.task_id == task_id for c in mine):
                    total = sum(c.epsilon for c in mine)
                    return total, delta  # a replay of a charged task: nothing more is charged
                releases, spent = len(mine), sum(c.epsilon for c in mine)
            total = release_epsilon(config, releases + 1, num_examples=num_examples)
            cost = max(0.0, total - spent)
            if self.ledger is None:
                self._counts[(dataset, study)] = (releases + 1, spent + cost)
            else:
                try:
                    self.ledger.charge(
                        dataset,
                        study_id=study,
                        task_id=task_id,
                        epsilon=cost,
                        delta=delta if releases == 0 else 0.0,  # one delta per study
                    )
                except BudgetExceeded as e:
                    left = self.ledger.remaining(dataset)
                    raise BudgetExceeded(
                        e.message,
                        public_message=(
                            f"privacy budget exceeded at this site: the task asks for "
                            f"epsilon={cost:.4g}, {left.epsilon:.4g} is left"
                        ),
                    ) from None
            return spent + cost, delta
