"""Sample-level DP in the local trainer: DP-SGD (Opacus) with Poisson sampling and OS randomness.

The references are hand-written: per-example gradients of the logistic loss, clipped and averaged
in numpy, and the noise's scale measured on an update that is nothing but noise.
"""

import numpy as np
import pytest
import torch

from cordiale.core.errors import ConfigError
from cordiale.core.records import ConfigRecord
from cordiale.learn.models import ModelSpec, build_model, get_weights
from cordiale.learn.trainer import (
    TrainConfig,
    dp_sample_rate_and_steps,
    predict_proba,
    train_local,
)

#: A noise multiplier so small that the noise is far below float32 resolution of the weights, yet
#: positive, so that training runs DP-SGD (clipping, Poisson sampling) all the same.
NO_NOISE = 1e-12


def _toy(n=200, d=4, seed=0):
    """Linearly separable rows: the label is the sign of a fixed direction."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = (x @ np.linspace(1.0, -0.5, d) > 0).astype(np.float64)
    return x, y


def _bce(model, x, y):
    p = np.clip(predict_proba(model, x), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _flat(model):
    return np.concatenate([v.ravel().astype(np.float64) for v in get_weights(model).values()])


# -- configuration ---------------------------------------------------------------------------------


def test_dp_fields_round_trip_through_the_config():
    cfg = TrainConfig(batch_size=16, dp_noise_multiplier=1.3, dp_max_grad_norm=0.7)
    record = cfg.to_config()
    assert record["train.dp_noise_multiplier"] == 1.3
    assert record["train.dp_max_grad_norm"] == 0.7
    assert TrainConfig.from_config(record) == cfg
    plain = TrainConfig.from_config(ConfigRecord({"train.epochs": 2}))
    assert (plain.dp_noise_multiplier, plain.dp_max_grad_norm, plain.dp_sgd) == (0.0, 1.0, False)


@pytest.mark.parametrize(
    "fields",
    [
        {"dp_noise_multiplier": -0.1},
        {"dp_noise_multiplier": float("nan")},
        {"dp_noise_multiplier": float("inf")},
        {"dp_max_grad_norm": 0.0},
        {"dp_max_grad_norm": -1.0},
        {"dp_max_grad_norm": float("nan")},
    ],
)
def test_invalid_dp_settings_are_refused(fields):
    with pytest.raises(ConfigError):
        TrainConfig(**fields)


# -- sampling and steps ----------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "batch", "epochs"), [(200, 20, 1), (300, 64, 3), (50, 80, 2)])
def test_sample_rate_and_steps_are_reported(n, batch, epochs):
    x, y = _toy(n)
    model = build_model(ModelSpec(kind="logreg"), x.shape[1], seed=0)
    cfg = TrainConfig(epochs=epochs, batch_size=batch, dp_noise_multiplier=1.0)
    out = train_local(model, x, y, cfg, seed=0)
    q = min(1.0, batch / n)
    assert out.sample_rate == pytest.approx(q)
    assert out.steps == epochs * max(1, round(1 / q))
    assert out.num_examples == n
    assert np.isfinite(out.loss)
    assert dp_sample_rate_and_steps(n, batch) == (pytest.approx(q), max(1, round(1 / q)))


def test_steps_match_what_the_node_accounts_for():
    from cordiale.learn.dp import sample_rate_and_steps

    for n, batch, epochs in [(200, 20, 1), (300, 64, 3), (50, 80, 2), (1000, 7, 2)]:
        q, per_epoch = dp_sample_rate_and_steps(n, batch)
        assert sample_rate_and_steps(n, batch, epochs) == (pytest.approx(q), epochs * per_epoch)


def test_no_dp_reports_a_zero_sample_rate():
    x, y = _toy()
    model = build_model(ModelSpec(kind="logreg"), x.shape[1], seed=0)
    assert train_local(model, x, y, TrainConfig(), seed=0).sample_rate == 0.0


def test_empty_poisson_batches_are_noise_only_steps():
    """q = 1/100 on 100 rows: about a third of the batches are empty; every one is a step."""
    x, y = _toy(100)
    model = build_model(ModelSpec(kind="mlp", hidden=(8,)), x.shape[1], seed=0)
    cfg = TrainConfig(epochs=3, batch_size=1, lr=0.1, dp_noise_multiplier=1.0)
    out = train_local(model, x, y, cfg, seed=0)
    assert out.steps == 300
    assert np.isfinite(out.loss)
    assert np.all(np.isfinite(_flat(model)))


# -- training --------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [ModelSpec(kind="logreg"), ModelSpec(kind="mlp", hidden=(16,))])
def test_dp_sgd_learns_a_separable_problem(spec):
    x, y = _toy(400)
    model = build_model(spec, x.shape[1], seed=1)
    before = _bce(model, x, y)
    cfg = TrainConfig(epochs=8, batch_size=40, lr=0.5, dp_noise_multiplier=0.3)
    train_local(model, x, y, cfg, seed=0)
    after = _bce(model, x, y)
    assert after < 0.6 * before
    assert np.mean((predict_proba(model, x) > 0.5) == y) > 0.9


def _reference_dp_sgd_logreg(x, y, w, b, *, lr, clip, steps, mu=0.0, weight_decay=0.0):
    """Full-batch DP-SGD without noise on the logistic loss, by hand: per-example gradients
    ``(sigmoid(w.x + b) - y) [x, 1]``, each clipped to ``clip``, averaged; then the proximal and
    weight-decay terms."""
    w0, b0 = w.copy(), b
    for _ in range(steps):
        r = 1 / (1 + np.exp(-(x @ w + b))) - y
        g = np.hstack([r[:, None] * x, r[:, None]])  # one row per example
        norms = np.linalg.norm(g, axis=1)
        g = g * np.minimum(1.0, clip / (norms + 1e-6))[:, None]
        mean = g.mean(axis=0)
        gw = mean[:-1] + mu * (w - w0) + weight_decay * w
        gb = mean[-1] + mu * (b - b0) + weight_decay * b
        w, b = w - lr * gw, b - lr * gb
    return w, b, norms


@pytest.mark.parametrize(("mu", "weight_decay"), [(0.0, 0.0), (2.0, 0.0), (0.5, 0.1)])
def test_per_example_clipping_matches_a_hand_written_reference(mu, weight_decay):
    """q = 1 (every row in every batch) and negligible noise: DP-SGD is deterministic and must be
    the mean of per-example clipped gradients, plus FedProx and weight decay."""
    x, y = _toy(60, d=3, seed=2)
    x32 = x.astype(np.float32).astype(np.float64)
    model = build_model(ModelSpec(kind="logreg"), 3, seed=4)
    w = model.state_dict()["net.0.weight"].numpy().astype(np.float64).ravel()
    b = float(model.state_dict()["net.0.bias"][0])
    _, _, norms = _reference_dp_sgd_logreg(x32, y, w, b, lr=0.3, clip=1.0, steps=1)
    clip = float(np.median(norms))  # half the examples are clipped, half are not
    cfg = TrainConfig(
        epochs=3,
        batch_size=60,
        lr=0.3,
        weight_decay=weight_decay,
        proximal_mu=mu,
        dp_noise_multiplier=NO_NOISE,
        dp_max_grad_norm=clip,
    )
    out = train_local(model, x, y, cfg, seed=0)
    assert out.steps == 3
    w_ref, b_ref, _ = _reference_dp_sgd_logreg(
        x32, y, w, b, lr=0.3, clip=clip, steps=3, mu=mu, weight_decay=weight_decay
    )
    np.testing.assert_allclose(model.state_dict()["net.0.weight"].numpy().ravel(), w_ref, atol=1e-6)
    assert float(model.state_dict()["net.0.bias"][0]) == pytest.approx(b_ref, abs=1e-6)


def test_a_tiny_clip_bounds_the_update():
    """One full-batch step with clip 1e-3: the mean of clipped gradients has norm <= clip, so the
    update is at most lr * clip, although the unclipped gradient is hundreds of times larger."""
    x, y = _toy(100, d=6)
    x = 50 * x  # large gradients
    spec = ModelSpec(kind="mlp", hidden=(32,))
    lr, clip = 0.5, 1e-3
    dp_model = build_model(spec, 6, seed=0)
    start = _flat(dp_model)
    cfg = TrainConfig(
        epochs=1, batch_size=100, lr=lr, dp_noise_multiplier=NO_NOISE, dp_max_grad_norm=clip
    )
    train_local(dp_model, x, y, cfg, seed=0)
    dp_step = np.linalg.norm(_flat(dp_model) - start)
    plain = build_model(spec, 6, seed=0)
    train_local(plain, x, y, TrainConfig(epochs=1, batch_size=100, lr=lr), seed=0)
    plain_step = np.linalg.norm(_flat(plain) - start)
    assert 0 < dp_step <= lr * clip * (1 + 1e-4)
    assert plain_step > 100 * lr * clip


@pytest.mark.parametrize(("n", "batch", "clip"), [(100, 100, 1.0), (100, 10, 0.5)])
def test_noise_has_the_configured_scale(n, batch, clip):
    """With an enormous multiplier the update is the noise alone: per coordinate, after one epoch
    of ``k = round(n/batch)`` steps, N(0, k * (lr * z * clip / batch)^2) - divided by the
    *expected* batch size, not by the size of each Poisson sample."""
    x, y = _toy(n, d=8)
    z, lr = 1e4, 0.1
    model = build_model(ModelSpec(kind="mlp", hidden=(512,)), 8, seed=0)  # 5121 weights
    start = _flat(model)
    cfg = TrainConfig(
        epochs=1, batch_size=batch, lr=lr, dp_noise_multiplier=z, dp_max_grad_norm=clip
    )
    out = train_local(model, x, y, cfg, seed=0)
    std = np.sqrt(out.steps) * lr * z * clip / batch
    scaled = (_flat(model) - start) / std
    # 5121 draws: the sample sd is within 5 standard errors (1 % each) of 1, the mean of 0 (a
    # false alarm about once in 10^6 runs). Dividing by each Poisson sample's own size instead
    # would inflate the sd by more than 10 % at batch 10.
    assert abs(scaled.std() - 1) < 5 / np.sqrt(2 * len(scaled))
    assert abs(scaled.mean()) < 5 / np.sqrt(len(scaled))


# -- randomness ------------------------------------------------------------------------------------


def test_dp_sgd_randomness_does_not_come_from_the_seed():
    """The hub chooses the seed: with DP-SGD, the same seed must not give the same weights."""
    x, y = _toy()
    cfg = TrainConfig(epochs=1, batch_size=20, dp_noise_multiplier=1.0)
    runs = []
    for _ in range(2):
        model = build_model(ModelSpec(kind="logreg"), x.shape[1], seed=0)
        torch.manual_seed(0)  # nor from torch's global generator
        train_local(model, x, y, cfg, seed=123)
        runs.append(_flat(model))
    assert not np.array_equal(runs[0], runs[1])


def test_dp_sgd_sampling_is_not_seeded_either():
    """Noise off in effect: what still differs between runs is which rows each step saw."""
    x, y = _toy()
    cfg = TrainConfig(epochs=1, batch_size=20, dp_noise_multiplier=NO_NOISE, dp_max_grad_norm=5.0)
    runs = []
    for _ in range(2):
        model = build_model(ModelSpec(kind="logreg"), x.shape[1], seed=0)
        train_local(model, x, y, cfg, seed=123)
        runs.append(_flat(model))
    assert not np.allclose(runs[0], runs[1], atol=1e-6)


def test_training_without_dp_stays_deterministic_for_a_seed():
    x, y = _toy()
    cfg = TrainConfig(epochs=2, batch_size=16, momentum=0.5, proximal_mu=0.1)
    runs = []
    for _ in range(2):
        model = build_model(ModelSpec(kind="mlp", hidden=(8,)), x.shape[1], seed=0)
        out = train_local(model, x, y, cfg, seed=7)
        runs.append((_flat(model), out))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


# -- the caller's model ----------------------------------------------------------------------------


def test_batch_norm_is_refused_and_the_model_left_alone():
    x, y = _toy()
    model = build_model(ModelSpec(kind="mlp", hidden=(8,), batchnorm=True), x.shape[1], seed=0)
    before = _flat(model)
    cfg = TrainConfig(dp_noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="DP-SGD does not support batch normalisation"):
        train_local(model, x, y, cfg, seed=0)
    np.testing.assert_array_equal(_flat(model), before)


def test_the_callers_model_keeps_its_names_parameters_and_no_hooks():
    x, y = _toy()
    model = build_model(ModelSpec(kind="mlp", hidden=(16, 8)), x.shape[1], seed=0)
    keys = list(get_weights(model))
    params = list(model.parameters())
    before = _flat(model)
    cfg = TrainConfig(epochs=2, batch_size=20, dp_noise_multiplier=0.5, proximal_mu=0.1)
    train_local(model, x, y, cfg, seed=0)
    assert list(get_weights(model)) == keys
    assert list(model.state_dict()) == keys
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    assert not np.array_equal(_flat(model), before)  # trained in place
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks
        assert not getattr(module, "_forward_pre_hooks", None)
    for p in model.parameters():
        assert not hasattr(p, "grad_sample") and not hasattr(p, "summed_grad")
    # and it trains on without DP, deterministically, as before
    train_local(model, x, y, TrainConfig(epochs=1), seed=0)
    assert np.all(np.isfinite(_flat(model)))
