"""An imaging study in simulation: synthetic shifted sites, a CNN plan, FedAvg and FedBN."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cordiale.data.imaging.synthetic import generate
from cordiale.learn.study import StudySpec
from cordiale.sim.runner import simulate, simulation_of
from cordiale.sim.sitefiles import site_datasets

PLAN = (Path(__file__).parents[2] / "examples" / "imaging_cnn_plan.py").read_text()


def imaging_spec(sites: list[str], local_layers: list[str], rounds: int = 6) -> dict:
    return {
        "study": {
            "name": "lesions",
            "purpose": "early detection",
            "sites": sites,
            "rounds": rounds,
        },
        "data": {
            "dataset": "lesions",
            "kind": "imaging",
            "scaling": "site",
            "contract": {
                "name": "lesions",
                "modality": "any",
                "ndim": 2,
                "shape": [32, 32],
                "min_images": 10,
            },
        },
        "model": {"plan_source": PLAN, "local_layers": local_layers},
        "train": {"epochs": 2, "lr": 0.05, "batch_size": 16},
    }


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    out = tmp_path_factory.mktemp("imaging")
    return generate(out, fmt="nifti", patients=10, images_per_patient=4, shape=(32, 32), seed=2)


@pytest.mark.parametrize("local_layers", [[], ["bn"]], ids=["fedavg", "fedbn"])
def test_a_cnn_plan_learns_to_detect_lesions_across_shifted_sites(manifests, local_layers):
    spec = StudySpec.parse(imaging_spec(sorted(manifests), local_layers))
    sites = site_datasets(spec, manifests)

    result = simulate(replace(simulation_of(spec), pooled=False), sites=sites)

    per_site = result.federated.evaluation.per_site
    assert set(per_site) == set(manifests)
    assert result.federated.evaluation.pooled["auc"] > 0.8  # well above chance on every site
    assert all(m["auc"] > 0.7 for m in per_site.values())
    for ds in sites.values():  # patients never straddle train and test
        assert not set(ds.patients_train) & set(ds.patients_test)
    if local_layers:  # FedBN: the global model's batch-norm layers never moved
        fresh = simulate(
            replace(simulation_of(spec), pooled=False, rounds=1), sites=sites
        ).federated.weights
        for name, value in result.federated.weights.items():
            if name.startswith("bn") and np.issubdtype(value.dtype, np.floating):
                np.testing.assert_array_equal(value, fresh[name])


def test_subgroups_come_from_the_manifest_columns(tmp_path):
    """An imaging study evaluated per scanner (a manifest column): each site has one scanner, so
    a scanner's cell is that site's whole test set and its metrics are the site's."""
    manifests = generate(tmp_path, fmt="nifti", patients=24, images_per_patient=2, shape=(32, 32))
    raw = imaging_spec(sorted(manifests), [], rounds=2)
    raw["data"]["test_fraction"] = 0.5
    raw["evaluation"] = {"subgroups": ["scanner"], "min_cell": 5}
    spec = StudySpec.parse(raw)
    sites = site_datasets(spec, manifests)

    result = simulate(replace(simulation_of(spec), pooled=False), sites=sites).to_json()

    scanners = {str(ds.subgroups_test["scanner"][0]): s for s, ds in sites.items()}
    assert set(result["subgroups"]["scanner"]) | set(result["suppressed"].get("scanner", [])) == (
        set(scanners)
    )
    assert result["subgroups"]["scanner"], "no scanner cell was large enough to report"
    for scanner, metrics in result["subgroups"]["scanner"].items():
        site = result["per_site"][scanners[scanner]]
        assert metrics["n"] == site["n_test"]
        assert metrics["auc"] == pytest.approx(site["federated"]["auc"], abs=1e-12)
