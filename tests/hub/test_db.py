"""The hub's database on both backends: migrations, round-trips, atomicity and constraints."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from cordiale.core.errors import ConfigError
from cordiale.hub.db import Database, ResearcherRow, RoundRow, SiteRow, StudyRow, TaskRow

TABLES = {"sites", "researchers", "studies", "rounds", "tasks", "study_grants"}
HEAD = "0005"  # the newest migration
CEST = dt.timezone(dt.timedelta(hours=2))
T0 = dt.datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=dt.UTC)


def _researcher(name: str = "ada") -> ResearcherRow:
    return ResearcherRow(
        name=name, org="inserm", token_hash="f" * 64, expires_at=T0 + dt.timedelta(days=30)
    )


def _site(site_id: str = "lyon", country: str = "FR") -> SiteRow:
    return SiteRow(id=site_id, country=country, cert_serial="0a" * 20)


def _count(db: Database, model: type) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_migrate_is_idempotent_and_reaches_head(database):
    database.migrate()  # the fixture already migrated once
    database.migrate()
    assert set(inspect(database.engine).get_table_names()) == TABLES | {"alembic_version"}
    with database.engine.connect() as conn:
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    assert versions == [HEAD]


def test_rows_of_every_model_round_trip(database):
    datasets = {"diabetes": {"rows": 768, "columns": ["age", "bmi"], "means": [33.24, 31.99]}}
    spec = {
        "strategy": "fedadam",
        "rounds": 30,
        "lr": 0.1,
        "sites": ["lyon", "turin"],
        "nested": {"grid": [[0.5, 1.0], [1.5, -2.25e-8]], "none": None, "flag": True},
    }
    setup = {"examples": {"lyon": 384, "turin": 384}, "features": ["age", "bmi", "glucose"]}
    evaluation = {"auc": 0.8125, "per_site": {"lyon": [0.75, 1 / 3]}}
    with database.session() as s:
        s.add(_researcher())
        s.add(
            SiteRow(
                id="lyon",
                country="FR",
                cert_serial="ff" * 32,
                revoked=True,
                created_at=T0,
                last_seen=T0 + dt.timedelta(hours=1),
                datasets=datasets,
            )
        )
        s.flush()  # the study's owner must exist first
        s.add(
            StudyRow(
                id="s1",
                owner="ada",
                name="diabetes risk",
                spec=spec,
                state="running",
                rounds_done=2,
                setup=setup,
                created_at=T0,
                updated_at=T0,
            )
        )
        s.flush()
        s.add(
            RoundRow(
                study_id="s1",
                round=1,
                committed_at=T0,
                nodes=["lyon", "turin"],
                failures={"turin": "timeout"},
                train_loss=0.6931471805599453,
                seconds=1.25,
                evaluation=evaluation,
                checkpoint="round-0001.safetensors",
            )
        )
        s.add(  # a round of a DP study: the sites did not report their loss
            RoundRow(
                study_id="s1",
                round=2,
                committed_at=T0,
                nodes=["lyon"],
                failures={},
                train_loss=None,
                seconds=1.0,
                evaluation=None,
                checkpoint="round-0002.safetensors",
            )
        )
        s.add(TaskRow(message_id="m1", study_id="s1", round=1, stage="fit", site="lyon"))

    with database.session() as s:
        site = s.get(SiteRow, "lyon")
        assert (site.country, site.cert_serial, site.revoked) == ("FR", "ff" * 32, True)
        assert site.datasets == datasets
        researcher = s.get(ResearcherRow, "ada")
        assert (researcher.org, researcher.token_hash) == ("inserm", "f" * 64)
        study = s.get(StudyRow, "s1")
        assert (study.owner, study.name, study.state, study.rounds_done, study.error) == (
            "ada",
            "diabetes risk",
            "running",
            2,
            None,
        )
        assert study.spec == spec
        assert study.setup == setup
        rnd = s.get(RoundRow, ("s1", 1))
        assert rnd.nodes == ["lyon", "turin"]
        assert rnd.failures == {"turin": "timeout"}
        assert rnd.train_loss == 0.6931471805599453
        assert rnd.seconds == 1.25
        assert rnd.evaluation == evaluation
        assert rnd.checkpoint == "round-0001.safetensors"
        assert s.get(RoundRow, ("s1", 2)).train_loss is None
        task = s.get(TaskRow, "m1")
        assert (task.study_id, task.round, task.stage, task.site) == ("s1", 1, "fit", "lyon")
        assert (task.state, task.error) == ("queued", None)  # the defaults


def test_timezone_aware_datetimes_round_trip(database):
    # SQLite stores no offset: db.UTCDateTime converts to UTC on the way in and marks it on the
    # way out, so both backends return the same instant, aware.
    last_seen = dt.datetime(2024, 5, 1, 14, 30, 15, 123456, tzinfo=CEST)  # == T0 + 0, in Paris
    with database.session() as s:
        s.add(_researcher())
        s.add(
            SiteRow(id="lyon", country="FR", cert_serial="01", created_at=T0, last_seen=last_seen)
        )
    with database.session() as s:
        site = s.get(SiteRow, "lyon")
        researcher = s.get(ResearcherRow, "ada")
    for value in (site.created_at, site.last_seen, researcher.expires_at, researcher.created_at):
        assert value.tzinfo is not None and value.utcoffset() is not None, value
    assert site.created_at == T0
    assert site.last_seen == T0  # the same instant, whatever zone it comes back in
    assert researcher.expires_at == T0 + dt.timedelta(days=30)
    now = dt.datetime.now(dt.UTC)
    assert now - dt.timedelta(minutes=5) < researcher.created_at <= now  # default: utcnow()


def test_session_rolls_back_everything_on_error(database):
    with pytest.raises(RuntimeError, match="boom"), database.session() as s:
        s.add(_researcher())
        s.add(_site())
        s.flush()  # the rows reach the database inside the transaction...
        raise RuntimeError("boom")
    assert _count(database, ResearcherRow) == 0  # ...and none of them survive it
    assert _count(database, SiteRow) == 0


def test_duplicate_site_id_is_refused_and_the_first_row_kept(database):
    with database.session() as s:
        s.add(_site("lyon", "FR"))
    with pytest.raises(IntegrityError), database.session() as s:
        s.add(_site("lyon", "IT"))
    with database.session() as s:
        assert s.get(SiteRow, "lyon").country == "FR"
    assert _count(database, SiteRow) == 1


def test_study_of_an_unknown_researcher_is_refused(database):
    with pytest.raises(IntegrityError), database.session() as s:
        s.add(StudyRow(id="s1", owner="nobody", name="orphan", spec={}))
    assert _count(database, StudyRow) == 0


def test_unsupported_url_is_a_config_error():
    with pytest.raises(ConfigError, match="mysql://x"):
        Database("mysql://x")


def test_naive_datetimes_are_refused(database):
    with pytest.raises(Exception, match="naive datetimes are refused"), database.session() as s:
        s.add(
            ResearcherRow(
                name="bo", org="x", token_hash="e" * 64, expires_at=dt.datetime(2030, 1, 1)
            )
        )
        s.flush()


def test_an_old_schema_is_upgraded_in_place_and_keeps_its_rows(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    db.migrate("0001")  # a hub of the first release
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO researchers (name, org, token_hash, expires_at, created_at) "
                "VALUES ('ada', 'inserm', :h, '2030-01-01 00:00:00', '2024-01-01 00:00:00')"
            ),
            {"h": "f" * 64},
        )
    assert "privacy" not in {c["name"] for c in inspect(db.engine).get_columns("rounds")}
    db.migrate()
    assert "privacy" in {c["name"] for c in inspect(db.engine).get_columns("rounds")}
    with db.session() as s:
        assert s.get(ResearcherRow, "ada").org == "inserm"
    db.dispose()
