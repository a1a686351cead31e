"""A persistent privacy-budget ledger per dataset, shared by every study that touches it.

A site's custodian gives each dataset a budget ``(epsilon, delta)``. Before anything derived from
the data leaves the site, the node *charges* the task's cost; the ledger refuses the charge with
:class:`BudgetExceeded` if it does not fit in what remains.

Two levels of composition, deliberately different:

* *within a study*, rounds compose through an accountant (:class:`PrivacyAccountant`, RDP or PLD),
  which is far tighter than adding epsilons; the node charges the study's *total* (or, per task,
  the increase of that total);
* *across studies* on one dataset, the ledger uses basic composition: epsilons add up, deltas add
  up. It is conservative and needs no knowledge of the mechanisms behind each charge.

Guarantees:

* **Atomic**: the check of the remaining budget and the write of the charge are one transaction
  (``BEGIN IMMEDIATE``), so concurrent charges, from threads or processes, never overspend.
* **Idempotent per task**: charging the same ``task_id`` on the same dataset again returns the first
  charge (``replayed=True``) and charges nothing, so a replayed or retried task is never charged
  twice; a replay with a different amount or study is refused.
* **Charge before send**: a charge is durable once :meth:`BudgetLedger.charge` returns (WAL,
  ``synchronous=FULL``). If the process dies before sending, the charge stays: the ledger may
  over-count what was released, never under-count. On restart, the task's charge is a replay.

Amounts are compared with a relative slack of 1e-12, so that decimal budgets spent in decimal steps
(3 x 0.1 of 0.3) fit despite binary rounding; that is far below any accountant's own precision.

The file is SQLite in WAL mode with a busy timeout; every call opens its own connection, so one
``BudgetLedger`` may be shared by threads, and several processes may open the same path.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path

from cordiale.core.errors import BudgetExceeded, ConfigError, PrivacyError
from cordiale.privacy import _validate as check

__all__ = ["BudgetLedger", "Charge", "EpsilonDelta"]

_RELATIVE_SLACK = 1e-12
_SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS budgets (
        dataset    TEXT PRIMARY KEY,
        epsilon    REAL NOT NULL CHECK (epsilon >= 0),
        delta      REAL NOT NULL CHECK (delta >= 0 AND delta < 1),
        updated_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS charges (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        dataset    TEXT NOT NULL,
        task_id    TEXT NOT NULL,
        study_id   TEXT NOT NULL,
        epsilon    REAL NOT NULL CHECK (epsilon >= 0),
        delta      REAL NOT NULL CHECK (delta >= 0 AND delta < 1),
        charged_at TEXT NOT NULL,
        UNIQUE (dataset, task_id)
    )""",
)


@dataclass(frozen=True, kw_only=True, slots=True)
class EpsilonDelta:
    """A privacy amount: a budget, what was spent, or what remains."""

    epsilon: float
    delta: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Charge:
    """One task's charge on a dataset. ``replayed`` is True when :meth:`BudgetLedger.charge` found
    the task already charged and charged nothing."""

    dataset: str
    study_id: str
    task_id: str
    epsilon: float
    delta: float
    charged_at: str
    replayed: bool = False


def _fits(spent: float, asked: float, budget: float) -> bool:
    return math.fsum([spent, asked]) <= budget * (1.0 + _RELATIVE_SLACK)


class BudgetLedger:
    """Privacy budgets and charges per dataset, in the SQLite file at ``path`` (created if absent).

    >>> import tempfile, os
    >>> ledger = BudgetLedger(os.path.join(tempfile.mkdtemp(), "budget.db"))
    >>> ledger.set_budget("cohort", epsilon=1.0, delta=1e-5)
    >>> ledger.charge("cohort", study_id="s1", task_id="t1", epsilon=0.4, delta=1e-6).epsilon
    0.4
    >>> ledger.remaining("cohort")
    EpsilonDelta(epsilon=0.6, delta=9e-06)
    """

    def __init__(self, path: str | PathLike[str], *, busy_timeout_s: float = 30.0) -> None:
        self._path = Path(path)
        self._timeout = check.positive("busy_timeout_s", busy_timeout_s)
        if not self._path.parent.is_dir():
            raise ConfigError(
                f"the ledger's directory does not exist: {self._path.parent}",
                public_message="the budget ledger's directory does not exist",
            )
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            with self._transaction(conn):
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self._path

    # ---------------------------------------------------------------------------------- plumbing

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None)
        except sqlite3.Error as err:
            raise PrivacyError(
                f"cannot open the budget ledger {self._path}: {err}",
                public_message="the privacy budget ledger is unavailable",
            ) from err
        try:
            conn.execute("PRAGMA synchronous=FULL")
            yield conn
        except sqlite3.Error as err:
            raise PrivacyError(
                f"budget ledger {self._path} failed: {err}",
                public_message="the privacy budget ledger is unavailable",
            ) from err
        finally:
            conn.close()

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[None]:
        conn.execute(f"BEGIN {mode}")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def _budget(conn: sqlite3.Connection, dataset: str) -> EpsilonDelta:
        row = conn.execute(
            "SELECT epsilon, delta FROM budgets WHERE dataset = ?", (dataset,)
        ).fetchone()
        if row is None:
            raise PrivacyError(
                f"no privacy budget is set for dataset {dataset!r}; set one with set_budget",
                public_message="no privacy budget is set for this dataset",
            )
        return EpsilonDelta(epsilon=row[0], delta=row[1])

    @staticmethod
    def _spent(conn: sqlite3.Connection, dataset: str) -> EpsilonDelta:
        rows = conn.execute(
            "SELECT epsilon, delta FROM charges WHERE dataset = ?", (dataset,)
        ).fetchall()
        return EpsilonDelta(
            epsilon=math.fsum(r[0] for r in rows), delta=math.fsum(r[1] for r in rows)
        )

    @staticmethod
    def _remaining(budget: EpsilonDelta, spent: EpsilonDelta) -> EpsilonDelta:
        return EpsilonDelta(
            epsilon=max(0.0, budget.epsilon - spent.epsilon),
            delta=max(0.0, budget.delta - spent.delta),
        )

    # ------------------------------------------------------------------------------------ public

    def set_budget(self, dataset: str, *, epsilon: float, delta: float) -> None:
        """Set (or replace) the total budget of ``dataset``; charges already made stay counted."""
        dataset = check.identifier("dataset", dataset)
        eps = check.non_negative("epsilon", epsilon)
        dlt = check.probability("delta", delta, low_open=False, high_open=True)
        now = datetime.now(UTC).isoformat()
        with self._connect() as conn, self._transaction(conn):
            conn.execute(
                "INSERT INTO budgets (dataset, epsilon, delta, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (dataset) DO UPDATE SET epsilon = excluded.epsilon, "
                "delta = excluded.delta, updated_at = excluded.updated_at",
                (dataset, eps, dlt, now),
            )

    def budget(self, dataset: str) -> EpsilonDelta:
        """The total budget of ``dataset`` (:class:`PrivacyError` if none is set)."""
        dataset = check.identifier("dataset", dataset)
        with self._connect() as conn:
            return self._budget(conn, dataset)

    def charge(
        self, dataset: str, *, study_id: str, task_id: str, epsilon: float, delta: float
    ) -> Charge:
        """Charge ``(epsilon, delta)`` to ``dataset`` for one task, atomically, at most once.

        Raises :class:`BudgetExceeded` (saying what remains and what was asked) if the charge does
        not fit; :class:`PrivacyError` if no budget is set or ``task_id`` was already charged with a
        different study or amount. A repeat of an identical charge returns the first one with
        ``replayed=True``.
        """
        dataset = check.identifier("dataset", dataset)
        study_id = check.identifier("study_id", study_id)
        task_id = check.identifier("task_id", task_id)
        eps = check.non_negative("epsilon", epsilon)
        dlt = check.probability("delta", delta, low_open=False, high_open=True)
        with self._connect() as conn, self._transaction(conn):
            row = conn.execute(
                "SELECT study_id, epsilon, delta, charged_at FROM charges "
                "WHERE dataset = ? AND task_id = ?",
                (dataset, task_id),
            ).fetchone()
            if row is not None:
                return self._replay(dataset, task_id, row, asked=(study_id, eps, dlt))
            budget = self._budget(conn, dataset)
            spent = self._spent(conn, dataset)
            if not (
                _fits(spent.epsilon, eps, budget.epsilon) and _fits(spent.delta, dlt, budget.delta)
            ):
                left = self._remaining(budget, spent)
                raise BudgetExceeded(
                    f"dataset {dataset!r}: task {task_id!r} of study {study_id!r} asks for "
                    f"epsilon={eps:.6g}, delta={dlt:.6g} but only epsilon={left.epsilon:.6g}, "
                    f"delta={left.delta:.6g} remain (budget epsilon={budget.epsilon:.6g}, "
                    f"delta={budget.delta:.6g})",
                    public_message=(
                        f"privacy budget exceeded: the task asks for epsilon={eps:.6g}, "
                        f"delta={dlt:.6g}, more than the dataset has left"
                    ),
                )
            now = datetime.now(UTC).isoformat()
            conn.execute(
                "INSERT INTO charges (dataset, task_id, study_id, epsilon, delta, charged_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (dataset, task_id, study_id, eps, dlt, now),
            )
        return Charge(
            dataset=dataset,
            study_id=study_id,
            task_id=task_id,
            epsilon=eps,
            delta=dlt,
            charged_at=now,
        )

    @staticmethod
    def _replay(
        dataset: str,
        task_id: str,
        row: tuple[str, float, float, str],
        *,
        asked: tuple[str, float, float],
    ) -> Charge:
        if tuple(row[:3]) != asked:
            raise PrivacyError(
                f"task {task_id!r} was already charged on dataset {dataset!r} as study "
                f"{row[0]!r}, epsilon={row[1]:.6g}, delta={row[2]:.6g}; a replay asks for study "
                f"{asked[0]!r}, epsilon={asked[1]:.6g}, delta={asked[2]:.6g}",
                public_message="conflicting replay of an already charged task",
            )
        return Charge(
            dataset=dataset,
            study_id=row[0],
            task_id=task_id,
            epsilon=row[1],
            delta=row[2],
            charged_at=row[3],
            replayed=True,
        )

    def spent(self, dataset: str) -> EpsilonDelta:
        """Sum of all charges on ``dataset`` (zero if none)."""
        dataset = check.identifier("dataset", dataset)
        with self._connect() as conn:
            return self._spent(conn, dataset)

    def remaining(self, dataset: str) -> EpsilonDelta:
        """Budget minus spent (never negative), from one consistent snapshot (:class:`PrivacyError`
        if no budget is set)."""
        dataset = check.identifier("dataset", dataset)
        with self._connect() as conn, self._transaction(conn, "DEFERRED"):
            return self._remaining(self._budget(conn, dataset), self._spent(conn, dataset))

    def history(self, dataset: str) -> list[Charge]:
        """Every charge on ``dataset``, oldest first."""
        dataset = check.identifier("dataset", dataset)
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT study_id, task_id, epsilon, delta, charged_at FROM charges "
                "WHERE dataset = ? ORDER BY id",
                (dataset,),
            ).fetchall()
        return [
            Charge(
                dataset=dataset,
                study_id=r[0],
                task_id=r[1],
                epsilon=r[2],
                delta=r[3],
                charged_at=r[4],
            )
            for r in rows
        ]

    def __repr__(self) -> str:
        return f"BudgetLedger({str(self._path)!r})"
