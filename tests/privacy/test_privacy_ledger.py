"""Budget ledger: atomic charges under threads and processes, replays, crashes, persistence."""

from __future__ import annotations

import math
import multiprocessing
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cordiale.core.errors import BudgetExceeded, ConfigError, PrivacyError
from cordiale.privacy import BudgetLedger, EpsilonDelta

DATASET = "cohort-a"


@pytest.fixture
def ledger(tmp_path: Path) -> BudgetLedger:
    ledger = BudgetLedger(tmp_path / "budget.db")
    ledger.set_budget(DATASET, epsilon=1.0, delta=1e-5)
    return ledger


# -------------------------------------------------------------------- workers for spawned processes


def _charge_in_process(path: str, worker: int, attempts: int, epsilon: float) -> int:
    """Open the ledger in a fresh process and try ``attempts`` charges; return how many passed."""
    ledger = BudgetLedger(path)
    accepted = 0
    for i in range(attempts):
        try:
            ledger.charge(
                DATASET, study_id="s", task_id=f"w{worker}-{i}", epsilon=epsilon, delta=0.0
            )
            accepted += 1
        except BudgetExceeded:
            pass
    return accepted


def _charge_then_crash(path: str) -> None:
    """A node charges a task, then dies before sending anything."""
    BudgetLedger(path).charge(DATASET, study_id="s", task_id="t-crash", epsilon=0.4, delta=1e-6)
    os._exit(3)  # no cleanup, no "send"


# ------------------------------------------------------------------------------------------ tests


def test_charges_are_recorded_and_counted(ledger):
    # Execute
    first = ledger.charge(DATASET, study_id="s1", task_id="t1", epsilon=0.25, delta=1e-6)
    ledger.charge(DATASET, study_id="s2", task_id="t2", epsilon=0.5, delta=2e-6)

    # Assert: basic composition across studies.
    assert not first.replayed
    assert ledger.spent(DATASET) == EpsilonDelta(epsilon=0.75, delta=3e-6)
    assert ledger.remaining(DATASET) == EpsilonDelta(epsilon=0.25, delta=pytest.approx(7e-6))
    assert [(c.study_id, c.task_id) for c in ledger.history(DATASET)] == [
        ("s1", "t1"),
        ("s2", "t2"),
    ]
    assert ledger.history(DATASET)[0] == first


def test_budget_exceeded_says_what_is_left_and_what_was_asked(ledger):
    # Prepare
    ledger.charge(DATASET, study_id="s", task_id="t1", epsilon=0.7, delta=0.0)

    # Execute
    with pytest.raises(BudgetExceeded) as info:
        ledger.charge(DATASET, study_id="s", task_id="t2", epsilon=0.5, delta=1e-6)

    # Assert: the local message says what is left; the public one only what was asked.
    message = str(info.value)
    assert "asks for epsilon=0.5, delta=1e-06" in message
    assert "only epsilon=0.3, delta=1e-05 remain" in message
    assert "epsilon=0.5" in info.value.public_message
    assert "0.3" not in info.value.public_message
    assert DATASET not in info.value.public_message
    assert ledger.spent(DATASET).epsilon == 0.7


def test_delta_is_budgeted_too(ledger):
    with pytest.raises(BudgetExceeded, match=r"asks for epsilon=0\.1, delta=2e-05"):
        ledger.charge(DATASET, study_id="s", task_id="t", epsilon=0.1, delta=2e-5)


def test_replay_of_a_task_is_not_charged_twice(ledger):
    # Prepare
    first = ledger.charge(DATASET, study_id="s", task_id="t", epsilon=0.6, delta=1e-6)

    # Execute: the same task again, twice (a retried or replayed message).
    again = ledger.charge(DATASET, study_id="s", task_id="t", epsilon=0.6, delta=1e-6)
    third = ledger.charge(DATASET, study_id="s", task_id="t", epsilon=0.6, delta=1e-6)

    # Assert: even though a second 0.6 would not fit, the replay succeeds and costs nothing.
    assert again.replayed and third.replayed
    assert again.charged_at == first.charged_at
    assert ledger.spent(DATASET).epsilon == 0.6
    assert len(ledger.history(DATASET)) == 1


def test_conflicting_replay_is_refused(ledger):
    ledger.charge(DATASET, study_id="s", task_id="t", epsilon=0.1, delta=0.0)
    with pytest.raises(PrivacyError, match="already charged") as info:
        ledger.charge(DATASET, study_id="s", task_id="t", epsilon=0.2, delta=0.0)
    assert not isinstance(info.value, BudgetExceeded)
    assert ledger.spent(DATASET).epsilon == 0.1


def test_decimal_budgets_spent_in_decimal_steps_fit(tmp_path):
    # 0.1 + 0.1 + 0.1 > 0.3 in binary floating point; the ledger's 1e-12 slack absorbs that.
    ledger = BudgetLedger(tmp_path / "b.db")
    ledger.set_budget(DATASET, epsilon=0.3, delta=0.0)
    for i in range(3):
        ledger.charge(DATASET, study_id="s", task_id=f"t{i}", epsilon=0.1, delta=0.0)
    with pytest.raises(BudgetExceeded):
        ledger.charge(DATASET, study_id="s", task_id="t3", epsilon=1e-9, delta=0.0)


def test_no_budget_no_charge(tmp_path):
    ledger = BudgetLedger(tmp_path / "b.db")
    with pytest.raises(PrivacyError, match="no privacy budget is set for dataset 'other'"):
        ledger.charge("other", study_id="s", task_id="t", epsilon=0.1, delta=0.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epsilon": -0.1}, "epsilon must be >= 0"),
        ({"delta": 1.0}, r"delta must be in \[0, 1\)"),
        ({"task_id": ""}, "task_id must be 1-200 printable characters"),
        ({"study_id": 7}, "study_id must be 1-200 printable characters"),
    ],
)
def test_invalid_charges_are_config_errors(ledger, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ledger.charge(
            DATASET, **{"study_id": "s", "task_id": "t", "epsilon": 0.1, "delta": 0.0, **kwargs}
        )


def test_ledger_persists_across_instances(ledger):
    ledger.charge(DATASET, study_id="s", task_id="t", epsilon=0.4, delta=0.0)
    reopened = BudgetLedger(ledger.path)
    assert reopened.budget(DATASET) == EpsilonDelta(epsilon=1.0, delta=1e-5)
    assert reopened.spent(DATASET).epsilon == 0.4


def test_concurrent_threads_at_the_budget_edge_never_overspend(ledger):
    # Prepare: 16 threads each ask 0.25 of a budget of 1.0, released together.
    barrier = threading.Barrier(16)

    def attempt(i: int) -> bool:
        barrier.wait()
        try:
            ledger.charge(DATASET, study_id="s", task_id=f"t{i}", epsilon=0.25, delta=0.0)
        except BudgetExceeded:
            return False
        return True

    # Execute
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(attempt, range(16)))

    # Assert: exactly four fit.
    assert sum(results) == 4
    assert ledger.spent(DATASET).epsilon == 1.0
    assert len(ledger.history(DATASET)) == 4


def test_concurrent_processes_at_the_budget_edge_never_overspend(ledger):
    # Prepare: 3 spawned processes, 4 attempts of 0.2 each, against a budget of 1.0.
    context = multiprocessing.get_context("spawn")

    # Execute
    with context.Pool(3) as pool:
        accepted = pool.starmap(
            _charge_in_process, [(str(ledger.path), w, 4, 0.2) for w in range(3)]
        )

    # Assert: exactly five fit, whatever the interleaving.
    assert sum(accepted) == 5
    assert ledger.spent(DATASET).epsilon == pytest.approx(1.0, abs=1e-12)
    assert ledger.spent(DATASET).epsilon <= 1.0 * (1 + 1e-12)
    assert len(ledger.history(DATASET)) == 5


def test_a_crash_after_charging_keeps_the_charge(ledger):
    # Execute: the process charges, then exits before it sends.
    process = multiprocessing.get_context("spawn").Process(
        target=_charge_then_crash, args=(str(ledger.path),)
    )
    process.start()
    process.join(timeout=60)

    # Assert: the charge survived (over-count allowed, under-count never) ...
    assert process.exitcode == 3
    assert ledger.spent(DATASET) == EpsilonDelta(epsilon=0.4, delta=1e-6)

    # ... and the restarted node's retry of the task is a replay, not a second charge.
    retry = ledger.charge(DATASET, study_id="s", task_id="t-crash", epsilon=0.4, delta=1e-6)
    assert retry.replayed
    assert ledger.spent(DATASET).epsilon == 0.4


@settings(max_examples=20, deadline=None)
@given(amounts=st.lists(st.floats(0.0, 0.5), min_size=1, max_size=12))
def test_any_sequence_of_charges_stays_within_budget(amounts):
    with tempfile.TemporaryDirectory() as folder:
        # Prepare
        ledger = BudgetLedger(Path(folder) / "b.db")
        ledger.set_budget(DATASET, epsilon=1.0, delta=0.0)
        accepted: list[float] = []

        # Execute
        for i, amount in enumerate(amounts):
            try:
                ledger.charge(DATASET, study_id="s", task_id=f"t{i}", epsilon=amount, delta=0.0)
                accepted.append(amount)
            except BudgetExceeded:
                # Assert: a refusal means the charge truly did not fit.
                assert math.fsum([*accepted, amount]) > 1.0

        # Assert
        assert ledger.spent(DATASET).epsilon == math.fsum(accepted) <= 1.0 + 1e-12
        assert ledger.remaining(DATASET).epsilon == pytest.approx(1.0 - math.fsum(accepted))
