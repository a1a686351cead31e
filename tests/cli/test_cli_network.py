"""The networked commands as a user runs them: admin, researcher and the one-command demo."""

from __future__ import annotations

import json
import stat

import tomli_w
from cli_runner import cordiale

from consortium import SITES, LocalConsortium, study_spec


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_admin_commands_create_ca_kits_and_credentials(tmp_path):
    home = ["--home", str(tmp_path / "hub")]
    init = cordiale("ca", "init", "--consortium", "uk-fr-alliance", *home)
    again = cordiale("ca", "init", "--consortium", "uk-fr-alliance", *home)
    kit = tmp_path / "oxford.kit"
    site = cordiale("site", "add", "oxford", "--country", "GB", "--out", str(kit), *home)
    bad = cordiale("site", "add", "Oxford!", "--country", "GB", *home)
    creds = tmp_path / "alice.toml"
    researcher = cordiale(
        "researcher", "add", "alice", "--org", "oxford", "--out", str(creds), *home
    )

    assert init.returncode == 0, init.stderr
    assert again.returncode == 2 and "already" in again.stderr and "Traceback" not in again.stderr
    assert site.returncode == 0, site.stderr
    assert _mode(kit) == 0o600 and "BEGIN PRIVATE KEY" in kit.read_text()
    assert bad.returncode == 2 and "Oxford!" in bad.stderr
    assert researcher.returncode == 0, researcher.stderr
    assert _mode(creds) == 0o600 and "cdl_" in creds.read_text()
    assert "cdl_" not in researcher.stdout  # the token goes to the 0600 file, not the terminal


def test_study_validate_lists_every_problem(tmp_path):
    spec = study_spec(["oxford", "paris-cite"], min_sites=3)
    spec["strategy"] = {"name": "fedmagic"}
    spec["train"] = {"lr": -1.0}
    path = tmp_path / "study.toml"
    path.write_text(tomli_w.dumps(spec))
    good = tmp_path / "good.toml"
    good.write_text(tomli_w.dumps(study_spec(["oxford", "paris-cite"])))

    bad_run = cordiale("study", "validate", str(path))
    good_run = cordiale("study", "validate", str(good))

    assert bad_run.returncode == 2
    assert "train.lr" in bad_run.stderr
    assert good_run.returncode == 0, good_run.stderr
    assert "valid" in good_run.stdout and "2 sites" in good_run.stdout


def test_researcher_submits_follows_and_fetches_a_study(tmp_path):
    c = LocalConsortium(tmp_path / "consortium")
    c.start()
    creds = tmp_path / "alice.credentials.toml"
    c.credentials["alice"].write(creds)
    spec = tmp_path / "study.toml"
    spec.write_text(tomli_w.dumps(study_spec(list(SITES), rounds=3)))
    auth = ["--credentials", str(creds)]
    try:
        submit = cordiale("study", "submit", str(spec), *auth)
        study_id = submit.stdout.strip().splitlines()[-1]
        follow = cordiale("study", "status", study_id, "--follow", *auth)
        fetch = cordiale("study", "fetch", study_id, "--out", str(tmp_path / "results"), *auth)
        listing = cordiale("study", "list", *auth)
        c.credentials["bob"].write(tmp_path / "bob.toml")
        other = cordiale("study", "status", study_id, "--credentials", str(tmp_path / "bob.toml"))
    finally:
        c.close()

    assert submit.returncode == 0, submit.stderr
    assert follow.returncode == 0, follow.stderr
    assert "3/3" in follow.stdout and "finished" in follow.stdout
    assert all(site in follow.stdout for site in SITES)
    assert fetch.returncode == 0, fetch.stderr
    assert {p.name for p in (tmp_path / "results").iterdir()} == {
        "model.safetensors",
        "results.json",
        "learning_curve.png",
    }
    assert study_id in listing.stdout
    assert other.returncode == 2 and "another researcher" in other.stderr


def test_demo_runs_a_consortium_end_to_end(tmp_path):
    proc = cordiale("demo", "--rounds", "3", "--workdir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "identical" in proc.stdout  # networked model == one-process simulation
    assert "all sites" in proc.stdout and "hub and nodes stopped" in proc.stdout
    assert (tmp_path / "results" / "model.safetensors").is_file()
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert set(results["subgroups"].get("Age", {})) | set(results["suppressed"].get("Age", [])) == {
        "<35",
        ">=35",
    }  # the age bands, each reported or held back
    assert "subgroups" in proc.stdout
    for site in SITES:  # each node read only its own file
        assert (tmp_path / "sites" / site / "data.csv").is_file()
        assert "connected" in (tmp_path / "logs" / f"{site}.log").read_text()
