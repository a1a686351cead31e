"""The command line as a user runs it: a real process, real files, exit codes and messages."""

import json

import pytest
from cli_runner import cordiale

from cordiale.data.catalog import get_dataset


def test_simulate_writes_json_and_learning_curve(tmp_path):
    out = tmp_path / "results.json"
    proc = cordiale(
        "simulate",
        "--dataset",
        "pima",
        "--sites",
        "4",
        "--partition",
        "dirichlet:0.5",
        "--strategy",
        "fedadam",
        "--rounds",
        "5",
        "--seed",
        "0",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert {"federated", "pooled", "per_site", "rounds"} <= set(result)
    assert {"auc", "accuracy", "ece", "brier"} <= set(result["federated"])
    assert len(result["rounds"]) == 5 and len(result["per_site"]) == 4
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "all sites" in proc.stdout and "federated AUC / pooled AUC" in proc.stdout


def test_simulate_prints_a_subgroup_table_and_refuses_a_bad_min_cell(tmp_path):
    out = tmp_path / "results.json"
    common = ("simulate", "--dataset", "thyroid", "--rounds", "2", "--model", "logreg")
    proc = cordiale(
        *common,
        "--no-pooled",
        "--subgroup",
        "sex",
        "--subgroup",
        "age:40,60",
        "--min-cell",
        "10",
        "--out",
        str(out),
    )
    bad = cordiale(*common, "--subgroup", "sex", "--min-cell", "2")

    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert list(result["subgroups"]["age"]) == ["<40", "40-60", ">=60"]
    assert {"F", "M"} <= set(result["subgroups"]["sex"])
    table = proc.stdout[proc.stdout.index("subgroups") :]
    for value in ("<40", "40-60", ">=60", "F", "M", "suppressed"):
        assert value in table
    assert bad.returncode == 2 and "min_cell must be at least 5" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_simulate_own_csv_with_site_column_and_no_pooled(tmp_path):
    frame = get_dataset("glaucoma").load()
    frame["hospital"] = (["oxford", "paris-cite", "pasteur"] * 200)[: len(frame)]
    frame["glaucoma"] = frame["glaucoma"].map({0: "no", 1: "yes"})
    csv = tmp_path / "my.csv"
    frame.to_csv(csv, index=False)
    out = tmp_path / "r.json"
    proc = cordiale(
        "simulate",
        "--csv",
        str(csv),
        "--target",
        "glaucoma",
        "--site-column",
        "hospital",
        "--strategy",
        "fedavg",
        "--rounds",
        "3",
        "--no-pooled",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert set(result["per_site"]) == {"oxford", "paris-cite", "pasteur"}
    assert result["pooled"] is None and result["federated"]["auc"] > 0.6


def test_bad_csv_lists_every_problem_without_traceback(tmp_path):
    frame = get_dataset("pima").load().head(15).drop(columns=["Age"])
    frame["Glucose"] = frame["Glucose"].astype(object)
    frame.loc[1, "Glucose"] = "n/a?"
    frame.loc[2, "BMI"] = 700
    csv = tmp_path / "bad.csv"
    frame.to_csv(csv, index=False)
    contract = tmp_path / "contract.toml"
    proc = cordiale("datasets", "--contract", "pima")
    assert proc.returncode == 0
    contract.write_text(proc.stdout)  # the bundled contract, as a user starts from it
    proc = cordiale("simulate", "--csv", str(csv), "--contract", str(contract), "--rounds", "1")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    for text in (
        "missing column(s): Age",
        "'Glucose': 1 non-numeric",
        "'BMI': 1 value(s) outside",
        "too few rows: 15",
    ):
        assert text in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--dataset", "mnist"], "valid datasets are: breast-cancer, glaucoma, pima, thyroid"),
        (["--dataset", "pima", "--strategy", "scaffold"], "valid strategys are: fedadagrad"),
        (["--dataset", "pima", "--partition", "zipf"], "valid partitions are: dirichlet:ALPHA"),
        (["--dataset", "pima", "--model", "resnet"], "valid models are: logreg, mlp"),
        (["--csv", "nope.csv", "--target", "y"], "table nope.csv not found"),
    ],
)
def test_unknown_names_list_the_valid_ones(args, text, tmp_path):
    proc = cordiale("simulate", *args, "--rounds", "1", cwd=tmp_path)
    assert proc.returncode == 2 and text in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_datasets_lists_the_catalog():
    proc = cordiale("datasets")
    assert proc.returncode == 0
    for name in ("pima", "thyroid", "glaucoma", "breast-cancer", "CC0"):
        assert name in proc.stdout
