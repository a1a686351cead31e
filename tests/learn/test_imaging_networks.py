"""Built-in MONAI networks (plan builtin:imaging), transforms and patch training, simulated."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from cordiale.core.errors import ConfigError, PolicyRefusal
from cordiale.data.imaging.synthetic import generate
from cordiale.data.imaging.transforms import Augmenter, parse_transforms
from cordiale.governance.plans import PlanApprovals, builtin_plan
from cordiale.learn.imaging_plans import NETWORKS, NetworkSpec, build_network
from cordiale.learn.models import build_with, get_weights
from cordiale.learn.study import StudySpec
from cordiale.learn.trainer import TrainConfig, train_local
from cordiale.sim.runner import simulate, simulation_of
from cordiale.sim.sitefiles import site_datasets

pytest.importorskip("monai")
RESNET = {"widen_factor": 0.25, "conv1_t_size": 3, "conv1_t_stride": 2}


def spec(sites: list[str], *, ndim: int = 2, side: int = 32, **sections: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "study": {"name": "lesions", "purpose": "p", "sites": sites, "rounds": 4},
        "data": {
            "dataset": "lesions",
            "kind": "imaging",
            "scaling": "site",
            "test_fraction": 0.3,
            "contract": {"name": "lesions", "ndim": ndim, "shape": [side] * ndim, "min_images": 8},
        },
        "model": {"network": "monai:resnet10", "network_params": RESNET, "fedbn": True},
        "train": {"epochs": 2, "lr": 0.05, "batch_size": 16, "momentum": 0.9},
    }
    for name, values in sections.items():
        raw[name] = {**raw[name], **values}
    return raw


def problems(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as e:
        StudySpec.parse(raw)
    return str(e.value)


def test_an_unknown_network_or_parameter_is_refused_naming_the_valid_ones():
    sites = ["a", "b"]
    msg = problems(spec(sites, model={"network": "monai:unet"}))
    assert "unknown network 'monai:unet'; valid networks are: " + ", ".join(sorted(NETWORKS)) in msg
    msg = problems(spec(sites, model={"network_params": {"widen": 2}}))
    assert "model.network_params for monai:resnet10: widen: Extra inputs are not permitted" in msg
    assert "widen_factor" in msg  # the valid parameters are listed
    densenet = {"network": "monai:densenet121", "network_params": {}}
    msg = problems(spec(sites, side=16, model=densenet))
    assert "monai:densenet121 downsamples by 32" in msg and "smallest here is 16" in msg
    msg = problems(spec(sites, model={"network": None, "network_params": {}}))
    assert "an imaging study needs a network: model.network (one of monai:densenet121" in msg
    msg = problems(spec(sites, data={"augment": [{"name": "RandBlur"}], "patches": {"size": [8]}}))
    assert "data.augment[0]: unknown transform 'RandBlur'" in msg
    assert "data.patches.size: List should have at least 2 items" in msg


def test_the_imaging_plan_is_approved_by_hash_like_the_tabular_one(tmp_path):
    imaging, tabular = builtin_plan("imaging"), builtin_plan("tabular")
    approvals = PlanApprovals(tmp_path / "approved-plans.json")

    with pytest.raises(PolicyRefusal, match=r"plan builtin:imaging .* is not approved"):
        approvals.check("builtin:imaging", imaging.sha256)
    approvals.approve(imaging, by="custodian")

    assert approvals.check("builtin:imaging", imaging.sha256) == imaging
    assert imaging.sha256 != tabular.sha256
    assert "# ==== cordiale.learn.imaging_plans ====" in imaging.source
    assert "# ==== monai (third-party) ====" in imaging.source  # an upgrade is a new plan
    with pytest.raises(PolicyRefusal, match="not approved"):  # approving one is not the other
        approvals.check("builtin:tabular", tabular.sha256)


def test_augmentation_changes_training_and_is_reproducible_for_a_seed():
    network = NetworkSpec("monai:resnet10", 2, RESNET)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(24, 1, 32, 32)).astype("f4"), rng.integers(0, 2, 24)
    augment = parse_transforms(
        [{"name": "RandFlip", "prob": 0.5, "spatial_axis": 0}, {"name": "RandRotate90"}],
        "augment",
        ndim=2,
    )
    start = build_with(lambda n: build_network(network, n), 1, seed=0)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.05)

    def trained(augment_seed: int | None) -> dict[str, np.ndarray]:
        model = copy.deepcopy(start)
        aug = None if augment_seed is None else Augmenter(augment, seed=augment_seed)
        train_local(model, x, y, cfg, seed=1, augment=aug)
        return dict(get_weights(model).items())

    a, b, c, plain = trained(3), trained(3), trained(4), trained(None)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    assert not all(np.array_equal(a[k], plain[k]) for k in a)


@pytest.fixture(scope="module")
def slices(tmp_path_factory):
    out = tmp_path_factory.mktemp("slices")
    return generate(out, fmt="nifti", patients=10, images_per_patient=4, shape=(32, 32), seed=5)


def test_a_monai_resnet_with_fedbn_and_augmentation_detects_lesions_on_every_site(slices):
    raw = spec(
        sorted(slices),
        data={
            "preprocess": [{"name": "NormalizeIntensity"}],
            "augment": [{"name": "RandFlip", "prob": 0.5}, {"name": "RandRotate90", "prob": 0.5}],
        },
    )
    study = StudySpec.parse(raw)
    config = study.federation_config("s")

    result = simulate(
        replace(simulation_of(study), pooled=False), sites=site_datasets(study, slices)
    )

    assert config.network == NetworkSpec("monai:resnet10", 2, RESNET)
    assert "net.bn1." in config.local_layers and "net.layer4.0.downsample.1." in config.local_layers
    per_site = result.federated.evaluation.per_site
    assert set(per_site) == set(slices)
    assert all(m["auc"] > 0.75 for m in per_site.values()), per_site


def test_patch_training_on_volumes_learns_per_volume(tmp_path):
    manifests = generate(
        tmp_path, fmt="hdf5", patients=10, images_per_patient=2, shape=(32,) * 3, seed=1, lesions=3
    )
    study = StudySpec.parse(
        spec(
            sorted(manifests),
            ndim=3,
            data={"patches": {"size": [16, 16, 16], "per_volume": 6, "eval_per_volume": 8}},
            study={"rounds": 4},
        )
    )
    sites = site_datasets(study, manifests)

    result = simulate(replace(simulation_of(study), pooled=False), sites=sites)

    for ds in sites.values():  # patches, never volumes, with metrics per test volume
        assert ds.x_train.shape[2:] == (16, 16, 16) and ds.x_train.shape[0] == 6 * 14
    per_site = result.federated.evaluation.per_site
    assert all(m["n"] == 6 for m in per_site.values())  # 6 test volumes per site
    assert result.federated.evaluation.pooled["auc"] > 0.8
    assert all(m["auc"] > 0.7 for m in per_site.values()), per_site
