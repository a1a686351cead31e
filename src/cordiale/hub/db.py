"""The hub's persistent state: SQLAlchemy 2 models and the database handle.

SQLite (embedded, the default) and PostgreSQL (by URL) run the same code. The schema is created and
upgraded only by Alembic migrations (:mod:`cordiale.hub.migrations`), never by ``create_all``, so a
hub upgraded in place keeps its studies.

Tables: ``sites`` (admitted nodes and their current certificate), ``researchers`` (token hashes,
never tokens), ``studies`` (a persisted state machine), ``rounds`` (one row per committed round,
with its checkpoint), ``tasks`` (every message sent to a site and what became of it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from cordiale.core.errors import ConfigError

__all__ = [
    "STUDY_STATES",
    "Base",
    "Database",
    "GrantRow",
    "ResearcherRow",
    "RoundRow",
    "SiteRow",
    "StudyRow",
    "TaskRow",
    "utcnow",
]

# pending: submitted, waiting for its sites; running; finished; failed (error says why)
STUDY_STATES = ("pending", "running", "finished", "failed")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores no offset of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are refused: pass an aware one (UTC)")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class SiteRow(Base):
    __tablename__ = "sites"
    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    country: Mapped[str] = mapped_column(String(2))
    cert_serial: Mapped[str] = mapped_column(String(64))  # hex: serials exceed 64 bits
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    datasets: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # the newest head of the site's audit log its node showed (0005): entries, last hash
    audit_count: Mapped[int | None] = mapped_column(Integer)
    audit_hash: Mapped[str | None] = mapped_column(String(64))


class ResearcherRow(Base):
    __tablename__ = "researchers"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    org: Mapped[str] = mapped_column(String(63))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # (0003)


class GrantRow(Base):
    """Read access to a study for a researcher other than its owner (0003)."""

    __tablename__ = "study_grants"
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), primary_key=True)
    researcher: Mapped[str] = mapped_column(ForeignKey("researchers.name"), primary_key=True)
    granted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class StudyRow(Base):
    __tablename__ = "studies"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(ForeignKey("researchers.name"))
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    rounds_done: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    setup: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # examples per site, features
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class RoundRow(Base):
    __tablename__ = "rounds"
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), primary_key=True)
    round: Mapped[int] = mapped_column(Integer, primary_key=True)
    committed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    nodes: Mapped[list[Any]] = mapped_column(JSON)
    failures: Mapped[dict[str, Any]] = mapped_column(JSON)
    train_loss: Mapped[float | None] = mapped_column(Float)  # None: not reported (DP) (0004)
    seconds: Mapped[float] = mapped_column(Float)
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    checkpoint: Mapped[str] = mapped_column(String(300))  # file name in the study's directory
    privacy: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # site -> epsilon spent (0002)


class TaskRow(Base):
    __tablename__ = "tasks"
    message_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(16))
    site: Mapped[str] = mapped_column(String(63), index=True)
    # queued -> delivered -> answered | failed | expired
    state: Mapped[str] = mapped_column(String(16), default="queued")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the round committer
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def _normalise_url(url: str) -> str:
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class Database:
    """An engine and a session factory for one hub database URL."""

    def __init__(self, url: str) -> None:
        self.url = _normalise_url(url)
        if not self.url.startswith(("sqlite", "postgresql")):
            raise ConfigError(
                f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://..."
            )
        kwargs: dict[str, Any] = {}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self, revision: str = "head") -> None:
        """Create or upgrade the schema to ``revision`` (the newest by default)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(resources.files("cordiale.hub") / "migrations"))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose work is committed atomically on exit (rolled back on error)."""
        with self._sessions() as s, s.begin():
            yield s

    def dispose(self) -> None:
        self.engine.dispose()
