"""End to end over HTTPS with mutual TLS: a study runs on three node agents beside their files."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomli_w
from safetensors.numpy import load as st_load
from sqlalchemy import select

from consortium import SITES, LocalConsortium, study_spec
from cordiale.governance.audit import AuditLog, verify
from cordiale.hub.db import Database, TaskRow
from cordiale.learn.study import StudySpec
from cordiale.privacy import epsilon
from cordiale.sim.runner import simulate, simulation_of
from cordiale.sim.sitefiles import site_datasets


def _networked_weights(c: LocalConsortium, study_id: str) -> dict[str, np.ndarray]:
    with c.client() as client:
        raw = st_load(client.model(study_id))
    return {k.split("/", 1)[1]: v for k, v in raw.items() if k.startswith("weights/")}


def test_networked_result_equals_the_simulation_of_the_same_study(consortium):
    # Prepare
    spec = study_spec(list(SITES), rounds=4, seed=7)

    # Execute
    status = consortium.run_study(spec)
    reference = simulate(simulation_of(StudySpec.parse(spec)), sites=consortium.site_datasets(spec))

    # Assert: same weights to 1e-6, same per-round metrics, every round committed once.
    assert status["state"] == "finished", status["error"]
    weights = _networked_weights(consortium, status["id"])
    assert weights.keys() == reference.federated.weights.keys()
    for name, value in reference.federated.weights.items():
        np.testing.assert_allclose(weights[name], value, atol=1e-6, rtol=0)
    history = status["history"]
    assert [r["round"] for r in history] == [1, 2, 3, 4]
    for net, sim in zip(history, reference.federated.history, strict=True):
        assert net["auc"] == pytest.approx(sim.evaluation.pooled["auc"], abs=1e-9)
        assert net["train_loss"] == pytest.approx(sim.train_loss, abs=1e-6)
    with consortium.client() as client:
        results = client.results(status["id"])
    assert results["federated"]["auc"] == pytest.approx(
        reference.federated.evaluation.pooled["auc"], abs=1e-9
    )
    assert set(results["per_site"]) == set(SITES)
    assert all(s["task"] == "answered" for s in status["sites"].values())


def test_a_site_whose_data_fails_the_contract_refuses_with_every_problem(consortium):
    # Prepare: paris-cite's file loses a column and gets an impossible glucose value.
    path = consortium.configs["paris-cite"].parent / "data.csv"
    frame = pd.read_csv(path)
    frame = frame.drop(columns=["BMI"])
    frame.loc[3, "Glucose"] = 999
    frame.to_csv(path, index=False)

    # Execute
    status = consortium.run_study(study_spec(list(SITES)))

    # Assert: the study failed at setup, and the researcher sees which site and why.
    assert status["state"] == "failed"
    refusal = status["sites"]["paris-cite"]
    assert refusal["task"] == "failed" and refusal["stage"] == "stats"
    assert "BMI" in refusal["error"] and "Glucose" in refusal["error"]
    assert "paris-cite" in status["error"] and "BMI" in status["error"]
    assert "999" not in refusal["error"]  # the problem is named, the value never leaves
    assert status["sites"]["oxford"]["task"] == "answered"


def test_study_fetch_writes_model_metrics_and_learning_curve(consortium, tmp_path):
    status = consortium.run_study(study_spec(list(SITES), rounds=2))
    with consortium.client() as client:
        paths = client.fetch(status["id"], tmp_path / "results")
    assert set(paths) == {"model", "results", "curve"}
    assert paths["curve"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tensors = st_load(paths["model"].read_bytes())
    assert any(k.startswith("scaler/") for k in tensors)  # the model comes with its scaling


def test_the_hub_runs_on_postgresql(tmp_path, postgres_db_url):
    c = LocalConsortium(tmp_path, db_url=postgres_db_url)
    c.start()
    try:
        status = c.run_study(study_spec(list(SITES), rounds=2))
    finally:
        c.close()
    assert status["state"] == "finished", status["error"]
    assert [r["round"] for r in status["history"]] == [1, 2]


def test_secure_aggregation_over_the_network_matches_plaintext_within_quantisation(consortium):
    # Prepare
    spec = study_spec(list(SITES), rounds=3, seed=5)
    secure = {**spec, "privacy": {"secure_aggregation": True}}

    # Execute
    status = consortium.run_study(secure)
    plain = simulate(simulation_of(StudySpec.parse(spec)), sites=consortium.site_datasets(spec))
    secure_sim = simulate(
        simulation_of(StudySpec.parse(secure)), sites=consortium.site_datasets(secure)
    )

    # Assert: the network's secure sum is the simulation's, and within the fixed-point resolution
    # of the plaintext study; training went only through the masked stage, never a plain update.
    assert status["state"] == "finished", status["error"]
    weights = _networked_weights(consortium, status["id"])
    for name, value in secure_sim.federated.weights.items():
        np.testing.assert_allclose(weights[name], value, atol=1e-6, rtol=0)
    for name, value in plain.federated.weights.items():
        np.testing.assert_allclose(weights[name], value, atol=1e-3, rtol=0)
    final = status["history"][-1]["auc"]
    assert final == pytest.approx(plain.federated.evaluation.pooled["auc"], abs=0.01)
    db = Database(consortium.settings.database_url)
    with db.session() as s:
        stages = set(s.scalars(select(TaskRow.stage).where(TaskRow.study_id == status["id"])))
    db.dispose()
    assert stages == {"stats", "secagg", "evaluate"}


def test_a_dp_study_reports_epsilon_per_site_and_a_site_stops_at_its_budget(tmp_path):
    # Prepare: every site puts pima under a budget; pasteur's allows two releases at z=3.
    c = LocalConsortium(tmp_path)
    budgets = {"oxford": 10.0, "paris-cite": 10.0, "pasteur": 2.5}
    for site, budget in budgets.items():
        c.configs[site].write_text(
            tomli_w.dumps(
                {"datasets": [{"name": "pima", "path": "data.csv", "budget_epsilon": budget}]}
            )
        )
    c.start()
    spec = study_spec(list(SITES), rounds=4, min_sites=2)
    spec["privacy"] = {"dp": "client", "noise_multiplier": 3.0, "clip_norm": 0.5}
    try:
        # Execute
        status = c.run_study(spec)
        plain = c.run_study(study_spec(list(SITES), rounds=1))  # no DP on budgeted data
    finally:
        c.close()
    budget = subprocess.run(
        [sys.executable, "-m", "cordiale", "node", "budget", "--config", str(c.configs["pasteur"])],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )

    # Assert: the accountant's epsilon per site; pasteur refused rounds 3 and 4 and said why.
    def eps(k: int) -> float:
        return epsilon(noise_multiplier=3.0, sampling_rate=1.0, steps=k, delta=1e-5)

    assert status["state"] == "finished", status["error"]
    spent = status["privacy"]["epsilon_spent"]
    assert spent["oxford"] == pytest.approx(eps(4)) and spent["pasteur"] == pytest.approx(eps(2))
    assert [r["nodes"] for r in status["history"]] == [3, 3, 2, 2]
    refusal = status["history"][2]["failures"]["pasteur"]
    assert "BudgetExceeded" in refusal and "is left" in refusal
    assert plain["state"] == "failed" and "differential privacy" in plain["error"]
    assert budget.returncode == 0, budget.stderr
    assert f"{eps(2):.4g}" in budget.stdout and f"{2.5 - eps(2):.4g}" in budget.stdout


def test_every_reply_that_left_a_site_is_in_its_signed_audit_log(consortium, tmp_path):
    # Execute
    status = consortium.run_study(study_spec(list(SITES), rounds=2))
    consortium.close()  # stop the nodes so their logs are final

    # Assert: each node's log verifies with its certificate and records every reply it sent
    for site in SITES:
        log = consortium.configs[site].parent / "cordiale-node-state" / "audit.jsonl"
        report = verify(log, public_key_pem=consortium.kits[site].cert_pem)
        assert report.ok, report.problem
        replies = AuditLog(log).entries(action="task.reply", object_prefix=f"study/{status['id']}")
        stages = sorted(e.object.rsplit("/", 1)[1] for e in replies)
        assert stages == ["evaluate", "evaluate", "stats", "train", "train"]
        assert all(e.payload_sha256 and e.payload_size for e in replies)
        other = consortium.kits["oxford" if site != "oxford" else "pasteur"].cert_pem
        assert not verify(log, public_key_pem=other).ok  # signed by this site's key only
    hub_log = consortium.settings.home / "audit.jsonl"
    hub_cert = (consortium.settings.ca_dir / "hub.pem").read_bytes()
    assert verify(hub_log, public_key_pem=hub_cert).ok
    actions = [e.action for e in AuditLog(hub_log).entries(object_prefix=f"study/{status['id']}")]
    assert actions.count("study.submit") == 1 and actions.count("round.commit") == 3  # 0, 1, 2
    assert actions.count("reply.accept") == 15 and actions[-1] == "study.finished"

    # ... and the command line names the first bad entry of an edited log
    lines = log.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"task.reply"', '"task.replay"')
    log.write_text("".join(lines))
    kit = consortium.configs["pasteur"].parent / "kit.toml"
    proc = subprocess.run(
        [sys.executable, "-m", "cordiale", "audit", "verify", "--log", str(log), "--kit", str(kit)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 1 and "entry 2" in proc.stdout


def test_site_policies_refuse_by_rule_and_a_custodian_can_check_in_advance(tmp_path):
    # Prepare: the hub runs in FR; oxford allows results to flow to GB only, pasteur only to
    # studies of researchers from paris-cite; paris-cite allows everything.
    c = LocalConsortium(tmp_path, hub_country="FR")
    policies = {
        "oxford": '[policy]\njurisdictions = ["GB"]\n',
        "pasteur": '[policy]\nresearcher_orgs = ["paris-cite"]\npurposes = ["research"]\n',
    }
    for site, text in policies.items():
        d = c.configs[site].parent
        (d / "policy.toml").write_text(text)
        c.configs[site].write_text(
            tomli_w.dumps(
                {
                    "node": {"policy": "policy.toml"},
                    "datasets": [{"name": "pima", "path": "data.csv"}],
                }
            )
        )
    c.start()
    study = tmp_path / "study.toml"
    study.write_text(tomli_w.dumps(study_spec(list(SITES), rounds=1)))
    try:
        status = c.run_study(study_spec(list(SITES), rounds=1))
    finally:
        c.close()
    check = subprocess.run(
        [
            *(sys.executable, "-m", "cordiale", "node", "policy", "check", str(study)),
            *("--config", str(c.configs["oxford"]), "--hub-country", "FR"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )

    # Assert: the study fails at setup; each refusal names its rule; the check foresaw it.
    assert status["state"] == "failed"
    oxford, pasteur = status["sites"]["oxford"]["error"], status["sites"]["pasteur"]["error"]
    assert "PolicyRefusal" in oxford and "jurisdictions" in oxford and "FR" in oxford
    assert "researcher_orgs" in pasteur and "'oxford'" in pasteur
    assert status["sites"]["paris-cite"]["task"] == "answered"
    assert check.returncode == 1 and "jurisdictions" in check.stdout, check.stdout + check.stderr


def test_a_site_whose_custodian_revoked_the_plan_runs_nothing(tmp_path):
    # Prepare: oxford's custodian revokes the built-in plan with the command line.
    c = LocalConsortium(tmp_path)
    config = str(c.configs["oxford"])

    def plans(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cordiale", "node", "plans", *args, "--config", config],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "200"},
        )

    revoke = plans("revoke", "builtin:tabular")
    listing = plans("list")
    with c.start():
        status = c.run_study(study_spec(list(SITES), rounds=1))

    # Assert: oxford refused at setup, before touching its rows; the others answered.
    assert revoke.returncode == 0, revoke.stderr
    assert "builtin:tabular" in listing.stdout and " no " in listing.stdout
    assert status["state"] == "failed"
    assert "not approved by this site's custodian" in status["sites"]["oxford"]["error"]
    assert status["sites"]["paris-cite"]["task"] == "answered"


PLAN = """import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.hidden = nn.Linear(n, 6)
        self.out = nn.Linear(6, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x))).squeeze(-1)


def build_model(num_features):
    return Net(num_features)
"""


def test_a_custom_plan_runs_only_once_every_custodian_approved_its_hash(tmp_path):
    # Prepare
    spec = study_spec(list(SITES), rounds=3, seed=4)
    spec["model"] = {"plan_source": PLAN}
    sha = hashlib.sha256(PLAN.encode()).hexdigest()

    def plans(site: str, *args: str) -> subprocess.CompletedProcess[str]:
        config = str(c.configs[site])
        return subprocess.run(
            [sys.executable, "-m", "cordiale", "node", "plans", *args, "--config", config],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "200"},
        )

    c = LocalConsortium(tmp_path)
    with c.start():
        # Execute: submitted before review, after approval, and with a one-byte change
        before = c.run_study(spec)
        shown = plans("oxford", "show", sha)
        approvals = [plans(site, "approve", sha, "--by", f"custodian-{site}") for site in SITES]
        after = c.run_study(spec)
        modified = c.run_study({**spec, "model": {"plan_source": PLAN + "#"}})
        with c.client() as client:
            raw = client._http.post("/v1/studies", json=StudySpec.parse(spec).to_json())
            model = st_load(client.model(after["id"]))
    reference = simulate(simulation_of(StudySpec.parse(spec)), sites=c.site_datasets(spec))

    # Assert
    assert before["state"] == "failed"
    assert all(f"custom plan {sha[:16]}" in s["error"] for s in before["sites"].values())
    assert shown.returncode == 0 and "def build_model" in shown.stdout
    assert all(a.returncode == 0 for a in approvals)
    assert after["state"] == "finished", after["error"]
    for name, value in reference.federated.weights.items():
        np.testing.assert_allclose(model[f"weights/{name}"], value, atol=1e-6, rtol=0)
    assert "hidden.weight" in reference.federated.weights  # the researcher's architecture ran
    assert modified["state"] == "failed" and "not approved" in modified["error"]
    assert raw.status_code == 422 and "never runs researcher code" in raw.json()["detail"]


def test_an_imaging_study_over_the_network_equals_its_simulation(tmp_path):
    # Prepare: three sites, each with its own scanner's NIfTI files and manifest
    from cordiale.data.imaging.synthetic import generate
    from cordiale.governance.plans import PlanApprovals, custom_plan

    plan_source = (Path(__file__).parents[2] / "examples" / "imaging_cnn_plan.py").read_text()
    manifests = generate(
        tmp_path / "images", fmt="nifti", patients=8, images_per_patient=3, shape=(32, 32)
    )
    c = LocalConsortium(tmp_path / "consortium")
    configs = {}
    for site, manifest in manifests.items():
        configs[site] = manifest.parent / "node.toml"
        configs[site].write_text(
            tomli_w.dumps({"datasets": [{"name": "lesions", "path": manifest.name}]})
        )
        approvals = PlanApprovals(manifest.parent / "cordiale-node-state" / "approved-plans.json")
        approvals.approve(custom_plan(plan_source), by="custodian")
    spec = {
        "study": {"name": "lesions", "purpose": "p", "sites": sorted(manifests), "rounds": 3},
        "data": {
            "dataset": "lesions",
            "kind": "imaging",
            "scaling": "site",
            "contract": {"name": "lesions", "ndim": 2, "shape": [32, 32], "min_images": 10},
        },
        "model": {"plan_source": plan_source, "local_layers": ["bn"]},
        "train": {"epochs": 1, "lr": 0.05, "batch_size": 16},
    }
    c.start_hub()
    for site in manifests:
        c.start_node(site, configs[site])
    try:
        status = c.run_study(spec)
        with c.client() as client:
            model = st_load(client.model(status["id"]))
    finally:
        c.close()
    parsed = StudySpec.parse(spec)
    reference = simulate(simulation_of(parsed), sites=site_datasets(parsed, manifests))

    # Assert
    assert status["state"] == "finished", status["error"]
    assert set(status["history"][-1]["per_site_auc"]) == set(manifests)
    for name, value in reference.federated.weights.items():
        np.testing.assert_allclose(model[f"weights/{name}"], value, atol=1e-6, rtol=0)


def test_subgroup_metrics_over_the_network_equal_the_simulation(consortium, tmp_path):
    # Prepare: Age in bands and Pregnancies by value, cells of fewer than 5 suppressed
    from typer.testing import CliRunner

    from cordiale.cli.app import app

    spec = study_spec(list(SITES), rounds=2)
    spec["evaluation"] = {
        "subgroups": ["Age", "Pregnancies"],
        "bands": {"Age": [30, 40]},
        "min_cell": 5,
    }
    creds = tmp_path / "alice.toml"
    consortium.credentials["alice"].write(creds)

    # Execute
    status = consortium.run_study(spec)
    reference = simulate(simulation_of(StudySpec.parse(spec)), sites=consortium.site_datasets(spec))
    with consortium.client() as client:
        results = client.results(status["id"])
    auth = ["--credentials", str(creds)]
    shown = CliRunner().invoke(app, ["study", "status", status["id"], *auth])
    fetched = CliRunner().invoke(
        app, ["study", "fetch", status["id"], "--out", str(tmp_path / "r"), *auth]
    )

    # Assert: the hub's results (from its database) equal the simulation's, in the same shape
    assert status["state"] == "finished", status["error"]
    sim = reference.to_json()
    assert results["subgroups"]["Age"]  # some cells were reported ...
    assert results["suppressed"]  # ... and some suppressed
    assert results["suppressed"] == sim["suppressed"]
    for net, ref in [
        (results["subgroups"], sim["subgroups"]),
        *((results["per_site"][s]["subgroups"], sim["per_site"][s]["subgroups"]) for s in SITES),
    ]:
        assert net.keys() == ref.keys()
        for column, values in ref.items():
            assert list(net[column]) == list(values)  # same cells, same order
            for value, metrics in values.items():
                assert net[column][value] == pytest.approx(metrics, abs=1e-9)
    assert status["history"][-1]["subgroups"]["Age"].keys() == sim["subgroups"]["Age"].keys()
    assert shown.exit_code == 0, shown.output
    assert fetched.exit_code == 0, fetched.output
    for out in (shown.output, fetched.output):
        assert "subgroups" in out and "Age" in out and "suppressed" in out
