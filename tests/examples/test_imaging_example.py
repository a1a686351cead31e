"""examples/imaging_study.py, run at reduced size: both variants, simulated and over mutual TLS."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("monai")
EXAMPLE = Path(__file__).parents[2] / "examples" / "imaging_study.py"


def test_the_imaging_example_runs_and_the_network_equals_the_simulation(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("imaging_study_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # its dataclasses look their module up
    try:
        spec.loader.exec_module(example)
    finally:
        sys.modules.pop(spec.name, None)

    outcomes = example.main(["--out", str(tmp_path), "--patients", "8", "--rounds", "2"])

    assert set(outcomes) == {"FedAvg", "FedBN"}
    for outcome in outcomes.values():
        assert set(outcome.per_site_auc) == {"oxford", "paris-cite", "pasteur"}
        assert outcome.max_difference == 0.0  # networked model == simulated model
        assert outcome.networked_per_site_auc == outcome.per_site_auc
    printed = capsys.readouterr().out
    assert "Per-site AUC" in printed and printed.count("identical") == 2
