"""The round scheduler: one thread per running study, driving the shared round loop.

A study is a persisted state machine (``pending -> running -> finished | failed``). The runner
waits for the study's sites to dial in, runs setup (feature statistics, initial model), then each
round through :class:`~cordiale.learn.federation.Federation` over a
:class:`~cordiale.hub.mailbox.HubTransport`. After each round it writes the checkpoint file and
commits, in one database transaction, the round's row and the study's progress: a hub killed at
any instant resumes from the last committed round, and because every node-side step is seeded by
``(study seed, round, site)`` the resumed study ends with the same model as an uninterrupted one.

A round that fails (too few sites answered before the timeout) is retried from the last
checkpoint, with fresh message ids, up to ``round_retries`` times; then the study fails with the
reason, which ``study status`` shows.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cordiale.core.errors import CordialeError, ProtocolError, TransportError
from cordiale.core.jsonsafe import finite
from cordiale.core.messages import Message
from cordiale.governance.audit import AuditLog
from cordiale.hub.checkpoints import load_checkpoint, save_checkpoint
from cordiale.hub.db import Database, ResearcherRow, RoundRow, StudyRow, TaskRow, utcnow
from cordiale.hub.mailbox import HubTransport, Mailbox
from cordiale.learn.federation import Federation, RoundRecord
from cordiale.learn.study import StudySpec

__all__ = ["StudyRunner"]

log = logging.getLogger(__name__)


class StudyRunner(threading.Thread):
    """Runs (or resumes) one study to its end, committing every round."""

    def __init__(
        self,
        study_id: str,
        *,
        db: Database,
        mailbox: Mailbox,
        audit: AuditLog,
        study_dir: Path,
        online: Callable[[list[str]], list[str]],
        stop: threading.Event,
        on_state: Callable[[str, str, str | None], None],
        start_timeout: float = 60.0,
        round_retries: int = 2,
    ) -> None:
        super().__init__(name=f"study-{study_id}", daemon=True)
        self.study_id = study_id
        self._db = db
        self._mailbox = mailbox
        self._audit = audit
        self._dir = study_dir
        self._online = online
        self._halt = stop
        self._on_state = on_state
        self._start_timeout = start_timeout
        self._retries = round_retries

    # -- bookkeeping -----------------------------------------------------------------------
    def _set(self, **values: Any) -> None:
        if "state" in values:
            self._audit.append(
                actor="hub",
                action=f"study.{values['state']}",
                object=f"study/{self.study_id}",
                details={"error": values.get("error")},
            )
        with self._db.session() as s:
            row = s.get(StudyRow, self.study_id)
            assert row is not None
            for k, v in values.items():
                setattr(row, k, v)
            row.updated_at = utcnow()

    def _record_tasks(self, messages: Sequence[Message]) -> None:
        with self._db.session() as s:
            s.add_all(
                TaskRow(
                    message_id=m.envelope.message_id,
                    study_id=m.envelope.study_id,
                    round=m.envelope.round,
                    stage=m.envelope.stage,
                    site=m.envelope.recipient,
                    state="queued",
                )
                for m in messages
            )

    def _commit_round(
        self, record: RoundRecord, fed: Federation, *, setup: dict[str, Any] | None = None
    ) -> None:
        name = save_checkpoint(self._dir, record.round, fed.checkpoint())
        self._audit.append(
            actor="hub",
            action="round.commit",
            object=f"study/{self.study_id}/round/{record.round}",
            payload=(self._dir / name).read_bytes(),
            details={"sites": len(record.nodes), "failures": len(record.failures)},
        )
        with self._db.session() as s:  # the commit point of the round
            s.add(
                RoundRow(
                    study_id=self.study_id,
                    round=record.round,
                    nodes=list(record.nodes),
                    failures=dict(record.failures),
                    train_loss=record.train_loss if math.isfinite(record.train_loss) else None,
                    seconds=float(record.seconds),
                    evaluation=finite(
                        None if record.evaluation is None else record.evaluation.to_json()
                    ),
                    checkpoint=name,
                    privacy=dict(record.privacy) or None,
                )
            )
            row = s.get(StudyRow, self.study_id)
            assert row is not None
            row.rounds_done = record.round
            if setup is not None:
                row.setup = setup
            row.updated_at = utcnow()

    def _restore(self, fed: Federation, rounds_done: int, setup: dict[str, Any]) -> None:
        with self._db.session() as s:
            rr = s.get(RoundRow, (self.study_id, rounds_done))
            name = rr.checkpoint if rr is not None else None
        if name is None:
            raise ProtocolError(f"round {rounds_done} has no committed checkpoint")
        fed.restore(load_checkpoint(self._dir / name), setup["node_examples"])

    def _wait_for_sites(self, sites: list[str], minimum: int, timeout: float) -> list[str]:
        """Wait until every site is online, or ``timeout``; then at least ``minimum`` must be."""
        deadline = time.monotonic() + timeout
        while not self._halt.is_set():
            online = self._online(sites)
            if len(online) == len(sites):
                return online
            if time.monotonic() > deadline:
                if len(online) >= minimum:
                    return online
                missing = sorted(set(sites) - set(online))
                raise ProtocolError(
                    f"{len(online)} of {len(sites)} sites online after {timeout:.0f} s, "
                    f"{minimum} needed; not connected: {', '.join(missing)}"
                )
            time.sleep(0.1)
        raise TransportError("the hub is shutting down")

    # -- the study -------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except TransportError:
            log.info("study %s paused: hub shutting down", self.study_id)
        except CordialeError as e:
            log.warning("study %s failed: %s", self.study_id, e)
            self._set(state="failed", error=str(e))
        except Exception as e:  # a bug: keep the hub alive, say so in the study
            log.exception("study %s crashed", self.study_id)
            self._set(state="failed", error=f"internal error at the hub: {type(e).__name__}")

    def _run(self) -> None:
        with self._db.session() as s:
            row = s.get(StudyRow, self.study_id)
            assert row is not None
            spec = StudySpec.parse(row.spec)
            rounds_done, setup = row.rounds_done, row.setup
            owner = s.get(ResearcherRow, row.owner)
            who = {"study.owner": row.owner, "study.owner_org": owner.org if owner else ""}
        sites, minimum = spec.study.sites, spec.study.min_sites
        transport = HubTransport(
            self._mailbox,
            lambda: self._online(sites),
            stop=self._halt,
            on_post=self._record_tasks,
            on_state=self._on_state,
        )
        config = spec.federation_config(self.study_id)
        config = replace(config, task_context={**config.task_context, **who})  # for site policies
        fed = Federation(config, spec.strategy_object(), transport)
        self._wait_for_sites(sites, minimum, self._start_timeout)
        if setup is None:
            self._set(state="running")
            fed.setup()
            setup = {"node_examples": fed.node_examples}
            # round 0: the initial model and the sites' example counts, committed together
            initial = RoundRecord(0, sorted(fed.node_examples), train_loss=0.0, seconds=0.0)
            self._commit_round(initial, fed, setup=setup)
        else:
            self._set(state="running")
            self._restore(fed, rounds_done, setup)
        for r in range(rounds_done + 1, spec.study.rounds + 1):
            self._commit_round(self._round(fed, r, spec, setup), fed)
        self._set(state="finished")

    def _round(
        self, fed: Federation, r: int, spec: StudySpec, setup: dict[str, Any]
    ) -> RoundRecord:
        last: CordialeError | None = None
        for _attempt in range(self._retries + 1):
            try:
                self._wait_for_sites(
                    spec.study.sites, spec.study.min_sites, spec.study.round_timeout
                )
                return fed.step(r)
            except ProtocolError as e:
                last = e
                log.warning("study %s round %d failed, retrying: %s", self.study_id, r, e)
                self._restore(fed, r - 1, setup)  # a half-done round leaves no trace
        raise ProtocolError(f"round {r} failed {self._retries + 1} times; last: {last}")
