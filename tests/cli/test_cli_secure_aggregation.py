"""``cordiale simulate --secure-aggregation`` as a user runs it (a real process)."""

import json

import pytest
from cli_runner import cordiale

from cordiale.cli.simulate import simulate_command
from cordiale.core.errors import ConfigError


def test_simulate_with_secure_aggregation_reports_its_settings(tmp_path):
    out = tmp_path / "r.json"
    proc = cordiale(
        "simulate",
        "--dataset",
        "pima",
        "--sites",
        "4",
        "--rounds",
        "2",
        "--no-pooled",
        "--secure-aggregation",
        "--secagg-neighbours",
        "2",
        "--secagg-clip",
        "500",
        "--secagg-rekey-every",
        "1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["config"]["secure_aggregation"] == {
        "threshold": None,
        "neighbours": 2,
        "clip": 500.0,
        "frac_bits": 16,
        "rekey_every": 1,
        "spare_holders": 1,
    }
    assert [r["nodes"] for r in result["rounds"]] == [4, 4]


def test_secagg_options_need_secure_aggregation():
    with pytest.raises(ConfigError, match="need --secure-aggregation"):
        simulate_command(dataset="pima", secagg_threshold=3)
    with pytest.raises(ConfigError, match="need --secure-aggregation"):
        simulate_command(dataset="pima", secagg_rekey_every=2)
