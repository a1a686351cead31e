"""The hub as a service object: who may call, what they may see, and the studies it drives.

:class:`Hub` holds the database, the consortium CA, the mailbox of tasks and one
:class:`~cordiale.hub.scheduler.StudyRunner` per live study. The HTTP layer
(:mod:`cordiale.hub.app`) is a thin translation of requests into these methods; every object-level
check (a researcher reads only their own studies, a node only its own tasks) happens here.

The hub's home directory holds ``ca/`` (the consortium CA, created by ``cordiale ca init``) and
``studies/<id>/`` (round checkpoints).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select

from cordiale.core.codec import DecodeLimits, decode_message
from cordiale.core.errors import (
    AuthenticationError,
    ConfigError,
    CryptoError,
    NotFoundError,
    PermissionDenied,
    ProtocolError,
)
from cordiale.core.jsonsafe import finite
from cordiale.crypto.pki import CertificateAuthority, Identity
from cordiale.crypto.tokens import hash_token
from cordiale.hub.checkpoints import load_checkpoint
from cordiale.hub.db import (
    Database,
    GrantRow,
    ResearcherRow,
    RoundRow,
    SiteRow,
    StudyRow,
    TaskRow,
    utcnow,
)
from cordiale.hub.mailbox import Mailbox
from cordiale.hub.scheduler import StudyRunner
from cordiale.hub.settings import HubSettings, hub_audit_log
from cordiale.learn.federation import EvaluationReport, RoundRecord
from cordiale.learn.study import StudySpec

__all__ = ["Hub", "HubSettings"]

log = logging.getLogger(__name__)

AuditHead = tuple[int, str]  # a site's audit log head: number of entries, hash of the last


class Hub:
    """Everything the hub does, independent of HTTP."""

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        self.ca = CertificateAuthority.load(settings.ca_dir)
        self.db = Database(settings.database_url)
        self.db.migrate()
        self.limits = DecodeLimits(max_bytes=settings.max_upload_bytes)
        self.mailbox = Mailbox(on_state=self._task_state)
        self.audit = hub_audit_log(settings)
        self.stop_event = threading.Event()
        self._last_seen: dict[str, float] = {}
        self._runners: dict[str, StudyRunner] = {}
        self._identities: dict[str, tuple[Identity, float]] = {}
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Resume every study that was pending or running when the hub last stopped."""
        with self.db.session() as s:
            live = s.scalars(
                select(StudyRow.id).where(StudyRow.state.in_(("pending", "running")))
            ).all()
        for study_id in live:
            self._launch(study_id)

    def stop(self) -> None:
        self.stop_event.set()
        self.mailbox.close()
        for runner in list(self._runners.values()):
            runner.join(timeout=10)
        self.db.dispose()

    def _launch(self, study_id: str) -> None:
        with self._lock:
            runner = self._runners.get(study_id)
            if runner is not None and runner.is_alive():
                return
            runner = StudyRunner(
                study_id,
                db=self.db,
                mailbox=self.mailbox,
                audit=self.audit,
                study_dir=self.settings.home / "studies" / study_id,
                online=self.online,
                stop=self.stop_event,
                on_state=self._task_state,
                start_timeout=self.settings.start_timeout,
                round_retries=self.settings.round_retries,
            )
            self._runners[study_id] = runner
        runner.start()

    def wait_for(self, study_id: str, timeout: float) -> None:
        runner = self._runners.get(study_id)
        if runner is not None:
            runner.join(timeout)

    def _peer_identity(self, cert_pem: str) -> Identity:
        """The CA's check of a certificate (signature, validity, CRL), redone once a minute.

        Long polls and replies come every few seconds; the CRL read and two ECDSA checks need not.
        Revocation stays immediate: every request also checks the site's current serial and
        revoked flag in the database.
        """
        now = time.monotonic()
        cached = self._identities.get(cert_pem)
        if cached is not None and now - cached[1] < 60.0:
            return cached[0]
        identity = self.ca.check_peer(cert_pem.encode())
        if len(self._identities) > 4096:
            self._identities.clear()
        self._identities[cert_pem] = (identity, now)
        return identity

    # -- who is calling ----------------------------------------------------------------------
    def authenticate_node(self, cert_pem: str | None) -> str:
        """The site id of a node's client certificate, checked against the CA and the registry."""
        if not cert_pem:
            raise AuthenticationError("node endpoints need a client certificate (mutual TLS)")
        try:
            identity = self._peer_identity(cert_pem)
        except CryptoError as e:
            raise AuthenticationError(f"client certificate refused: {e}") from None
        with self.db.session() as s:
            site = s.get(SiteRow, identity.site_id)
            if site is None:
                raise PermissionDenied(f"site {identity.site_id!r} is not admitted")
            if site.revoked or site.cert_serial != f"{identity.serial:x}":
                raise AuthenticationError(
                    f"the certificate of {identity.site_id!r} is revoked or superseded"
                )
        self._last_seen[identity.site_id] = time.monotonic()
        return identity.site_id

    def authenticate_researcher(self, authorization: str | None) -> str:
        if not authorization or not authorization.startswith("Bearer "):
            raise AuthenticationError("researcher endpoints need 'Authorization: Bearer TOKEN'")
        digest = hash_token(authorization.removeprefix("Bearer ").strip())
        with self.db.session() as s:
            who = s.scalars(select(ResearcherRow).where(ResearcherRow.token_hash == digest)).first()
            if who is None:
                raise AuthenticationError("unknown researcher token")
            if who.revoked_at is not None:
                raise AuthenticationError(f"the token of {who.name!r} has been revoked")
            if _aware(who.expires_at) < utcnow():
                raise AuthenticationError(f"the token of {who.name!r} has expired")
            return who.name

    # -- sites -------------------------------------------------------------------------------
    def online(self, sites: list[str]) -> list[str]:
        now = time.monotonic()
        return sorted(
            s
            for s in sites
            if self.mailbox.is_polling(s)
            or now - self._last_seen.get(s, -1e9) < self.settings.offline_after
        )

    def hello(
        self, site: str, datasets: dict[str, Any], audit: AuditHead | None = None
    ) -> dict[str, Any]:
        """Register a node's datasets and move its audit anchor to the head it shows."""
        with self.db.session() as s:
            row = s.get(SiteRow, site)
            assert row is not None
            self._anchor(row, audit)
            row.datasets = datasets
            row.last_seen = utcnow()
        log.info("site %s connected with datasets %s", site, sorted(datasets))
        return {"site": site, "consortium": self.ca.consortium}

    def audit_anchor(self, site: str) -> dict[str, Any] | None:
        """The newest head of ``site``'s audit log that its node showed (None: none yet)."""
        with self.db.session() as s:
            row = s.get(SiteRow, site)
            assert row is not None
            if row.audit_count is None:
                return None
            return {"count": row.audit_count, "last_hash": row.audit_hash}

    def _anchor(self, row: SiteRow, audit: AuditHead | None) -> None:
        """Move the site's audit anchor forward to ``audit``; refuse a head that went back.

        A node shows the head of its audit log (entries, last hash) with every hello and reply.
        Fewer entries than a head it showed before, or the same number with another hash, means
        the log was rolled back or replaced at the site: the node is refused until its custodian
        has looked, and the hub's own audit log records the event.
        """
        if audit is None:
            return
        previous = None if row.audit_count is None else (row.audit_count, row.audit_hash or "")
        count, last_hash = audit
        if previous is not None and (
            count < previous[0] or (count == previous[0] and last_hash != previous[1])
        ):
            self.audit.append(
                actor=f"site:{row.id}",
                action="site.audit_rollback",
                object=f"site/{row.id}",
                details={"anchored": previous[0], "shown": count},
            )
            raise PermissionDenied(
                f"the audit log of site {row.id!r} went back: the hub saw {previous[0]} "
                f"entries, the node now shows {count}"
                + (" with another history" if count == previous[0] else "")
                + "; its custodian must verify the log ('cordiale audit verify') before it "
                "serves again"
            )
        row.audit_count, row.audit_hash = count, last_hash

    def next_task(self, site: str, wait: float) -> tuple[str, bytes] | None:
        wait = max(0.0, min(wait, self.settings.max_poll_wait))
        task = self.mailbox.next_task(site, wait)
        self._last_seen[site] = time.monotonic()
        return task

    def task_bytes(self, site: str, message_id: str) -> bytes:
        owner = self.mailbox.owner(message_id)
        if owner is None:
            raise NotFoundError(f"task {message_id} is not pending")
        if owner != site:
            raise PermissionDenied(f"task {message_id} is not addressed to {site!r}")
        data = self.mailbox.redeliver(site, message_id)
        if data is None:
            raise NotFoundError(f"task {message_id} is not pending")
        return data

    def accept_reply(self, site: str, data: bytes, audit: AuditHead | None = None) -> str:
        """Check and hand over a node's reply; returns ``accepted`` or ``duplicate``."""
        reply = decode_message(data, self.limits)  # WireError: 400, never unpickled
        if audit is not None:
            with self.db.session() as s:
                row = s.get(SiteRow, site)
                assert row is not None
                self._anchor(row, audit)
        env = reply.envelope
        if env.sender != site:
            raise PermissionDenied(f"a reply from {site!r} claims to come from {env.sender!r}")
        if env.reply_to is None:
            raise ProtocolError("a reply must name the task it answers (reply_to)")
        outcome = self.mailbox.put_reply(site, reply)
        if outcome == "unknown":
            raise ProtocolError(
                f"task {env.reply_to} is not pending for {site!r} (expired or never sent)"
            )
        if outcome == "accepted":
            self.audit.append(
                actor=f"site:{site}",
                action="reply.accept",
                object=f"study/{env.study_id}/round/{env.round}/{env.stage}",
                payload=data,
                details={"task": env.reply_to},
            )
        return outcome

    def _task_state(self, message_id: str, state: str, error: str | None) -> None:
        with self.db.session() as s:
            row = s.get(TaskRow, message_id)
            if row is not None:
                row.state = state
                row.error = error
                row.updated_at = utcnow()

    # -- studies (researchers) ---------------------------------------------------------------
    def submit(self, owner: str, raw_spec: dict[str, Any]) -> str:
        spec = StudySpec.parse(raw_spec, source="the submitted study")
        if spec.model.plan_source is not None and spec.model.initial_weights is None:
            raise ConfigError(
                "a study with a custom plan must carry its initial weights (model.initial_weights,"
                " built by the researcher's client): the hub never runs researcher code"
            )
        with self.db.session() as s:
            known = set(s.scalars(select(SiteRow.id).where(SiteRow.revoked.is_(False))).all())
        unknown = sorted(set(spec.study.sites) - known)
        if unknown:
            raise ConfigError(f"the study names sites that are not admitted: {', '.join(unknown)}")
        study_id = uuid.uuid4().hex[:12]
        self.audit.append(
            actor=f"researcher:{owner}",
            action="study.submit",
            object=f"study/{study_id}",
            payload=json.dumps(spec.to_json(), sort_keys=True).encode(),
            details={"name": spec.study.name, "sites": len(spec.study.sites)},
        )
        with self.db.session() as s:
            s.add(
                StudyRow(
                    id=study_id,
                    owner=owner,
                    name=spec.study.name,
                    spec=spec.to_json(),
                    state="pending",
                )
            )
        self._launch(study_id)
        return study_id

    def _own_study(self, s: Any, who: str, study_id: str, *, write: bool = False) -> StudyRow:
        """The study, if ``who`` owns it (or, to read it, was granted access)."""
        row = s.get(StudyRow, study_id)
        if row is None:
            raise NotFoundError(f"no study {study_id!r}")
        if row.owner == who or (not write and s.get(GrantRow, (study_id, who)) is not None):
            return row
        raise PermissionDenied(f"study {study_id!r} belongs to another researcher")

    def grant(self, owner: str, study_id: str, researcher: str) -> None:
        """Let ``researcher`` read the study (status, results, model); owners only."""
        with self.db.session() as s:
            self._own_study(s, owner, study_id, write=True)
            if s.get(ResearcherRow, researcher) is None:
                raise NotFoundError(f"no researcher {researcher!r}")
            if s.get(GrantRow, (study_id, researcher)) is None:
                s.add(GrantRow(study_id=study_id, researcher=researcher))
        self.audit.append(
            actor=f"researcher:{owner}",
            action="study.grant",
            object=f"study/{study_id}",
            details={"researcher": researcher},
        )

    def list_studies(self, owner: str) -> list[dict[str, Any]]:
        with self.db.session() as s:
            granted = select(GrantRow.study_id).where(GrantRow.researcher == owner)
            rows = s.scalars(
                select(StudyRow).where((StudyRow.owner == owner) | StudyRow.id.in_(granted))
            ).all()
            return [
                {
                    "id": r.id,
                    "name": r.name,
                    "state": r.state,
                    "rounds_done": r.rounds_done,
                    "rounds": r.spec["study"]["rounds"],
                }
                for r in sorted(rows, key=lambda r: _aware(r.created_at))
            ]

    def status(self, owner: str, study_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            row = self._own_study(s, owner, study_id)
            spec = row.spec
            sites = spec["study"]["sites"]
            latest: dict[str, TaskRow] = {}
            for t in s.scalars(
                select(TaskRow).where(TaskRow.study_id == study_id).order_by(TaskRow.created_at)
            ).all():
                latest[t.site] = t
            online = set(self.online(sites))
            rounds = s.scalars(
                select(RoundRow)
                .where(RoundRow.study_id == study_id, RoundRow.round > 0)
                .order_by(RoundRow.round)
            ).all()
            return finite(
                {
                    "id": row.id,
                    "name": row.name,
                    "owner": row.owner,
                    "state": row.state,
                    "error": row.error,
                    "rounds_done": row.rounds_done,
                    "rounds": spec["study"]["rounds"],
                    "sites": {
                        site: {
                            "online": site in online,
                            "stage": latest[site].stage if site in latest else None,
                            "round": latest[site].round if site in latest else None,
                            "task": latest[site].state if site in latest else None,
                            "error": latest[site].error if site in latest else None,
                        }
                        for site in sites
                    },
                    "history": [_round_json(r) for r in rounds],
                    "privacy": _privacy_summary(spec, rounds),
                }
            )

    def results(self, owner: str, study_id: str) -> dict[str, Any]:
        """Results JSON in the shape ``cordiale simulate`` writes (plots read either)."""
        status = self.status(owner, study_id)
        with self.db.session() as s:
            row = self._own_study(s, owner, study_id)
            spec = StudySpec.parse(row.spec)
            subgroups = spec.evaluation.subgroup_spec()
            last = s.scalars(
                select(RoundRow)
                .where(RoundRow.study_id == study_id, RoundRow.evaluation.is_not(None))
                .order_by(RoundRow.round.desc())
            ).first()
            setup = row.setup or {}
        evaluation = last.evaluation if last is not None else None
        examples = setup.get("node_examples", {})
        per_site = evaluation["per_site"] if evaluation else {}
        site_subgroups = evaluation.get("per_site_subgroups", {}) if evaluation else {}
        return finite(
            {
                "study": {"id": study_id, "name": spec.study.name, "state": status["state"]},
                "dataset": spec.data.dataset,
                "config": {
                    "sites": len(spec.study.sites),
                    "partition": "by site",
                    "strategy": spec.strategy.name,
                    "strategy_params": spec.strategy.params(),
                    "rounds": spec.study.rounds,
                    "seed": spec.study.seed,
                    "model": spec.model.model_dump(),
                    "train": spec.train.model_dump(),
                    "subgroups": subgroups.to_json() if subgroups else None,
                },
                "federated": evaluation["pooled"] if evaluation else None,
                "pooled": None,  # no site's rows are pooled on a network
                "per_site": {
                    site: {
                        "n_train": examples.get(site),
                        "n_test": int(m["n"]) if (m := per_site.get(site)) else None,
                        "federated": per_site.get(site),
                        "pooled": None,
                        "subgroups": site_subgroups.get(site, {}),
                    }
                    for site in spec.study.sites
                },
                "subgroups": evaluation.get("subgroups", {}) if evaluation else {},
                "suppressed": evaluation.get("suppressed", {}) if evaluation else {},
                "rounds": status["history"],
                "privacy": status["privacy"],
            }
        )

    def model_file(self, owner: str, study_id: str) -> Path:
        """The checkpoint of the newest committed round (global weights and scaler)."""
        with self.db.session() as s:
            self._own_study(s, owner, study_id)
            last = s.scalars(
                select(RoundRow)
                .where(RoundRow.study_id == study_id)
                .order_by(RoundRow.round.desc())
            ).first()
            if last is None:
                raise NotFoundError(f"study {study_id!r} has no committed round yet")
            path = self.settings.home / "studies" / study_id / last.checkpoint
        load_checkpoint(path)  # refuses a corrupt file rather than serving it
        self.audit.append(
            actor=f"researcher:{owner}",
            action="model.fetch",
            object=f"study/{study_id}/round/{last.round}",
            payload=path.read_bytes(),
        )
        return path


def _aware(t: dt.datetime) -> dt.datetime:
    """SQLite returns naive datetimes; they were stored as UTC."""
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def _round_json(r: RoundRow) -> dict[str, Any]:
    """A committed round as results JSON, in the very shape simulation writes."""
    evaluation = EvaluationReport(**r.evaluation) if r.evaluation else None
    record = RoundRecord(
        r.round,
        list(r.nodes),
        math.nan if r.train_loss is None else r.train_loss,
        r.seconds,
        evaluation=evaluation,
        failures=dict(r.failures),
        privacy=dict(r.privacy or {}),
    )
    return record.to_json()


def _privacy_summary(spec: dict[str, Any], rounds: Any) -> dict[str, Any] | None:
    """The study's DP settings and the epsilon each site last reported having spent."""
    settings = spec.get("privacy", {})
    if settings.get("dp", "none") == "none":
        return None
    spent: dict[str, float] = {}
    for r in rounds:
        spent.update(r.privacy or {})
    keys = ("dp", "epsilon", "delta", "noise_multiplier", "clip_norm", "noise")
    return {
        "settings": {k: settings.get(k) for k in keys},
        "epsilon_spent": spent,
    }
