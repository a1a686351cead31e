"""Faults with real processes: the hub killed with SIGKILL mid-study, a node killed mid-round.

The hub (or the victim node) runs as a ``cordiale`` process so that SIGKILL is real; the other
nodes are agents in this process. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from safetensors.numpy import load as st_load
from sqlalchemy import func, select

from consortium import SITES, LocalConsortium, study_spec, wait_until
from cordiale.hub.db import Database, RoundRow
from cordiale.learn.study import StudySpec
from cordiale.sim.runner import simulate, simulation_of

pytestmark = pytest.mark.slow


def _cordiale(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cordiale", *args], stdout=out, stderr=subprocess.STDOUT
        )


def _start_hub_process(c: LocalConsortium, port: int) -> subprocess.Popen[bytes]:
    log = c.root / "hub.log"
    proc = _cordiale(
        ["hub", "start", "--home", str(c.settings.home), "--port", str(port), "--start-timeout=60"],
        log,
    )
    verify = ssl.create_default_context(cafile=c.settings.ca_dir / "ca.pem")

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"hub exited:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{c.url}/v1/health", verify=verify, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=60, every=0.1)
    return proc


def _status(c: LocalConsortium, study_id: str) -> dict:
    with c.client() as client:
        return client.status(study_id)


def _committed_rounds(c: LocalConsortium, study_id: str) -> list[int]:
    db = Database(c.settings.database_url)
    try:
        with db.session() as s:
            rows = s.scalars(
                select(RoundRow.round).where(RoundRow.study_id == study_id).order_by(RoundRow.round)
            ).all()
            assert s.scalar(select(func.count()).select_from(RoundRow)) == len(rows)
            return list(rows)
    finally:
        db.dispose()


def test_hub_killed_mid_study_resumes_and_ends_with_the_uninterrupted_model(tmp_path):
    # Prepare: the hub as a process; three node agents that will outlive it.
    c = LocalConsortium(tmp_path)
    port = c.sock.getsockname()[1]
    c.sock.close()
    hub = _start_hub_process(c, port)
    for site in SITES:
        c.start_node(site)
    spec = study_spec(list(SITES), rounds=8, seed=3)
    try:
        with c.client() as client:
            study_id = client.submit(StudySpec.parse(spec))

        # Execute: SIGKILL once three rounds are committed, then start it again.
        wait_until(lambda: _status(c, study_id)["rounds_done"] >= 3, timeout=120)
        os.kill(hub.pid, signal.SIGKILL)
        hub.wait(timeout=10)
        done_at_kill = _committed_rounds(c, study_id)
        hub = _start_hub_process(c, port)
        wait_until(lambda: _status(c, study_id)["state"] in ("finished", "failed"), timeout=180)
        status = _status(c, study_id)
        with c.client() as client:
            model = st_load(client.model(study_id))
    finally:
        c.close()
        hub.send_signal(signal.SIGTERM)
        hub.wait(timeout=20)

    # Assert: no round lost or doubled, and the model of an uninterrupted run.
    assert status["state"] == "finished", status["error"]
    assert 3 <= len(done_at_kill) - 1 < 8
    assert _committed_rounds(c, study_id) == list(range(0, 9))
    assert [r["round"] for r in status["history"]] == list(range(1, 9))
    reference = simulate(simulation_of(StudySpec.parse(spec)), sites=c.site_datasets(spec))
    for name, value in reference.federated.weights.items():
        np.testing.assert_allclose(model[f"weights/{name}"], value, atol=1e-6, rtol=0)


def _victim(c: LocalConsortium, site: str) -> subprocess.Popen[bytes]:
    """``site``'s node as a process, returned once the (in-process) hub sees it online."""
    proc = _cordiale(
        [
            *("node", "start", "--kit", str(c.root / "sites" / site / "kit.toml")),
            *("--config", str(c.configs[site]), "--poll-wait", "1"),
        ],
        c.root / f"{site}.log",
    )
    assert c.server is not None
    wait_until(lambda: c.server.hub.online([site]) == [site], timeout=120)
    return proc


def _kill_pasteur_after_round_1(
    tmp_path: Path, *, min_sites: int, rounds: int, timeout: float, restart: bool = False, **hub
) -> dict:
    """oxford and paris-cite as agents, pasteur as a process killed once round 1 is committed
    (and, with ``restart``, started again a little later); returns the study's final status."""
    with LocalConsortium(tmp_path, **hub).start(["oxford", "paris-cite"]) as c:
        victim = _victim(c, "pasteur")
        try:
            spec = study_spec(
                list(SITES), rounds=rounds, min_sites=min_sites, round_timeout=timeout
            )
            with c.client() as client:
                study_id = client.submit(StudySpec.parse(spec))
                wait_until(lambda: client.status(study_id)["rounds_done"] >= 1, timeout=120)
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=10)
                if restart:
                    time.sleep(timeout + 1.0)  # at least one attempt fails without pasteur
                    victim = _victim(c, "pasteur")
                return client.wait(study_id, timeout=180)
        finally:
            victim.kill()
            victim.wait(timeout=10)


def test_a_node_killed_mid_study_is_dropped_at_the_round_timeout(tmp_path):
    status = _kill_pasteur_after_round_1(
        tmp_path, min_sites=2, rounds=4, timeout=3.0, offline_after=3.0
    )

    # finished without pasteur after it died; its loss is on the record
    assert status["state"] == "finished", status["error"]
    last = status["history"][-1]
    assert last["nodes"] == 2
    assert set(last["per_site_auc"]) == {"oxford", "paris-cite"}
    assert status["sites"]["pasteur"]["online"] is False


def test_a_round_below_the_minimum_is_retried_and_completes_when_the_node_returns(tmp_path):
    status = _kill_pasteur_after_round_1(
        tmp_path,
        min_sites=3,
        rounds=5,
        timeout=3.0,
        restart=True,
        offline_after=3.0,
        round_retries=5,
    )

    assert status["state"] == "finished", status["error"]
    assert [r["round"] for r in status["history"]] == [1, 2, 3, 4, 5]
    assert all(r["nodes"] == 3 for r in status["history"])


def test_a_round_that_never_reaches_the_minimum_fails_the_study_with_the_reason(tmp_path):
    status = _kill_pasteur_after_round_1(
        tmp_path, min_sites=3, rounds=5, timeout=2.0, offline_after=2.0, round_retries=1
    )

    assert status["state"] == "failed"
    assert "failed 2 times" in status["error"] and "pasteur" in status["error"]
    assert status["rounds_done"] < 5
