"""Node-side task code: what a node computes for each stage of a study.

The same functions run in simulation and behind a networked node; they take the task message's
content and the local dataset and return the reply's content. What they return is only ever an
aggregate: feature statistics, a model update and an example count, or a score histogram.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from torch import nn

from cordiale.core.errors import ProtocolError
from cordiale.core.messages import Content
from cordiale.core.records import ArrayRecord, ConfigRecord, MetricRecord
from cordiale.data.features import Standardizer, feature_stats
from cordiale.data.imaging.patch_dataset import PatchDataset
from cordiale.data.imaging.transforms import Augmenter, transforms_from_json
from cordiale.data.local import SiteDataset
from cordiale.learn.dp import privatise_update, sample_level_noise
from cordiale.learn.imaging_plans import NetworkSpec, build_network
from cordiale.learn.metrics import ScoreHistogram
from cordiale.learn.models import (
    ModelSpec,
    TabularNet,
    build_with,
    get_weights,
    keep_state,
    set_weights,
)
from cordiale.learn.subgroups import SubgroupSpec, subgroup_reply
from cordiale.learn.trainer import TrainConfig, TrainOutcome, predict_proba, train_local

if TYPE_CHECKING:
    from cordiale.learn.secure_aggregation import SecAggSession

__all__ = [
    "NodeState",
    "derive_seed",
    "run_evaluate",
    "run_stats",
    "run_train",
    "train_update",
]


K = TypeVar("K")
V = TypeVar("V")
MODELS_KEPT = 8  # built models a node keeps between tasks (a few studies at a time)
#: the task configuration that decides which model a node builds
_MODEL_KEYS = (
    "plan.sha256",  # a custom plan's source is named by its hash
    "model.kind",
    "model.hidden",
    "model.batchnorm",
    "model.network",
    "model.spatial_dims",
    "model.network_params",
)
SCALED_KEPT_BYTES = 64 * 1024 * 1024  # largest training matrix whose scaled copy is kept


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed derived from integers and strings (stable across processes and platforms)."""
    ints = [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(2, np.uint64)[0] >> np.uint64(1))


@dataclass
class NodeState:
    """What a node remembers between rounds, by study: its personalised (local) layers and its
    secure-aggregation client state (see :mod:`cordiale.learn.secure_aggregation`), and the
    custom plans it may run (imported from its approved store by the runtime)."""

    local_layers: dict[str, ArrayRecord] = field(default_factory=dict)
    plans: dict[str, Callable[[int], Any]] = field(default_factory=dict)  # sha256 -> build_model
    secagg: dict[str, SecAggSession] = field(default_factory=dict)
    models: dict[tuple[str, str, int], nn.Module] = field(default_factory=dict)

    #: the training rows as the study's scaler scaled them (the scaler is fixed at set-up, so
    #: every round would compute the same): (rows, the scaler's bytes, scaled), by study
    scaled: dict[str, tuple[np.ndarray, bytes, np.ndarray]] = field(default_factory=dict)

    def scaled_train(self, study: str, x: np.ndarray, scaler: Standardizer) -> np.ndarray:
        """``scaler.transform(x)``, computed once per study while rows and scaler stay the same
        (kept for tabular-sized data only: images are scaled as they are read)."""
        fitted = scaler.mean.tobytes() + scaler.std.tobytes()  # float64 of equal shapes
        hit = self.scaled.get(study)
        if hit is not None and hit[0] is x and hit[1] == fitted:
            return hit[2]
        out = scaler.transform(x)
        if isinstance(x, np.ndarray) and x.nbytes <= SCALED_KEPT_BYTES:
            _keep_recent(self.scaled, study, (x, fitted, out))
        return out

    def keep_model(self, key: tuple[str, str, int], model: nn.Module) -> None:
        """Remember a built model for the next task of its study (the few most recent only)."""
        _keep_recent(self.models, key, model)


def _keep_recent(kept: dict[K, V], key: K, value: V) -> None:
    """Store ``key`` as the newest entry of ``kept``; the oldest go past ``MODELS_KEPT``."""
    kept.pop(key, None)
    kept[key] = value
    while len(kept) > MODELS_KEPT:
        kept.pop(next(iter(kept)))


def _scaler(ds: SiteDataset, content: Content) -> Standardizer:
    rec = content.arrays.get("scaler")
    if rec is None:
        return Standardizer.fit(ds.x_train)
    scaler = Standardizer.from_record(rec)
    shape = ds.x_train.shape[1:]  # features, or (channels, *image shape)
    if scaler.mean.shape != shape or scaler.std.shape != shape:
        raise ProtocolError(
            f"scaler has shape {scaler.mean.shape}; the local data has {shape} per example"
        )
    return scaler


def _build(ds: SiteDataset, cfg: ConfigRecord, state: NodeState, study: str) -> nn.Module:
    """A fresh model, or the one this node built for the study before: every value in it is
    overwritten by the task's weights, so only models with local layers (whose first values come
    from the seeded initialisation) are always built anew."""
    reuse = not cfg.get_str_list("local_layers")
    # what the model is made of, as the task says it (parsed below only when it is new here)
    made_of = repr([cfg.get(k) for k in _MODEL_KEYS])
    if reuse and (kept := state.models.get((study, made_of, ds.num_features))) is not None:
        return kept
    builder: Callable[[int], Any]
    custom = bool(cfg.get_str("plan.source", ""))
    if custom:  # a custom plan: built only by the approved, imported copy
        found = state.plans.get(cfg.get_str("plan.sha256", ""))
        if found is None:
            raise ProtocolError("the task's custom plan is not approved at this node")
        builder = found
    elif (network := NetworkSpec.from_config(cfg)) is not None:  # built-in imaging network
        builder = functools.partial(build_network, network)
    else:
        builder = functools.partial(TabularNet, ModelSpec.from_config(cfg))
    model = build_with(builder, ds.num_features, seed=cfg.get_int("seed", 0))
    if reuse:
        state.keep_model((study, made_of, ds.num_features), model)
        if not custom:  # built-in models: their tensors only ever change in place
            keep_state(model)
    return model


def _model(
    ds: SiteDataset, content: Content, state: NodeState, study: str
) -> tuple[nn.Module, ArrayRecord]:
    """The task's model with its weights loaded, and those weights (the global model's, with
    this node's local layers where the study keeps some)."""
    cfg = content.config
    weights = content.arrays.get("weights")
    if weights is None:
        raise ProtocolError("task carries no 'weights' record")
    model = _build(ds, cfg, state, study)
    keep = tuple(cfg.get_str_list("local_layers"))
    if not keep or cfg.get("personalized", True) is False:
        set_weights(model, weights)
        return model, weights
    merged = weights.copy()
    for k, v in state.local_layers.get(study, ArrayRecord()).items():
        merged[k] = v
    set_weights(model, merged, keep=keep)  # local layers keep their initial values until trained
    return model, merged


def run_stats(ds: SiteDataset, content: Content) -> Content:
    """Per-feature count/sum/sum-of-squares of the training rows, for federated scaling.

    A study's subgroup columns are checked here, at set-up: a site whose data lacks one refuses
    the study before any training."""
    subgroups = SubgroupSpec.from_config(content.config)
    if subgroups is not None:
        subgroups.check_columns(ds.subgroups_test)
    return Content(
        arrays={"stats": feature_stats(ds.x_train)},
        metrics=MetricRecord({"num_train": ds.num_train, "num_test": ds.num_test}),
    )


def train_update(
    ds: SiteDataset, content: Content, state: NodeState, study: str
) -> tuple[ArrayRecord, TrainOutcome]:
    """Train locally from the global weights; return the update (float arrays other than the
    local layers, ``local - global``) and the outcome, keeping the local layers in ``state``.

    Shared by :func:`run_train` (which sends the update) and secure aggregation (which keeps it
    at the node and sends it only masked).
    """
    cfg: ConfigRecord = content.config
    model, start = _model(ds, content, state, study)
    x = state.scaled_train(study, ds.x_train, _scaler(ds, content))
    train_cfg = TrainConfig.from_config(cfg)
    dp_mode = cfg.get_str("dp.mode", "")
    if dp_mode == "sample":  # DP-SGD; the node solves for its own noise (it knows its rows)
        z = sample_level_noise(
            cfg,
            num_examples=ds.num_train,
            batch_size=train_cfg.batch_size,
            epochs=train_cfg.epochs,
        )
        train_cfg = replace(
            train_cfg, dp_noise_multiplier=z, dp_max_grad_norm=cfg.get_float("dp.clip_norm", 1.0)
        )
    outcome = train_local(
        model, x, ds.y_train, train_cfg, seed=cfg.get_int("seed", 0), augment=_augmenter(cfg)
    )
    end = get_weights(model)
    keep = tuple(cfg.get_str_list("local_layers"))
    if keep:
        state.local_layers[study] = ArrayRecord(
            (k, v) for k, v in end.items() if k.startswith(keep)
        )
    update = ArrayRecord(
        (k, (end[k].astype(np.float64) - start[k].astype(np.float64)).astype(start[k].dtype))
        for k in end
        if end[k].dtype.kind == "f" and not (keep and k.startswith(keep))
    )
    if dp_mode == "client":  # clip, and add this node's noise share when noise is distributed
        update, _norm = privatise_update(update, cfg)
    return update, outcome


def run_train(ds: SiteDataset, content: Content, state: NodeState, study: str) -> Content:
    """Train locally from the global weights; reply with the update and the example count.

    The mean training loss goes along only without differential privacy: it is computed from
    the raw rows, outside what the privacy accounting covers, so a DP study never releases it.
    """
    update, outcome = train_update(ds, content, state, study)
    metrics = MetricRecord({"num_examples": outcome.num_examples, "steps": outcome.steps})
    if not content.config.get_str("dp.mode", ""):
        metrics["train_loss"] = outcome.loss
    return Content(arrays={"update": update}, metrics=metrics)


def _augmenter(cfg: ConfigRecord) -> Augmenter | None:
    """The study's training augmentation, seeded from the task's seed (None without one)."""
    text = cfg.get_str("data.augment", "")
    specs = transforms_from_json(text, "augment") if text else []
    if not specs:
        return None
    return Augmenter(specs, seed=derive_seed(cfg.get_int("seed", 0), "augment"))


def run_evaluate(ds: SiteDataset, content: Content, state: NodeState, study: str) -> Content:
    """Score the test rows; reply with a score histogram (never the scores), and one per
    subgroup cell the study asks for, small cells suppressed (:mod:`cordiale.learn.subgroups`).

    For a patch dataset the scores are per volume: the mean probability of its patches.
    """
    model, _ = _model(ds, content, state, study)
    probs = predict_proba(model, _scaler(ds, content).transform(ds.x_test))
    labels = ds.y_test
    if isinstance(ds, PatchDataset):
        probs, labels = ds.volume_scores(probs)
    hist = ScoreHistogram.from_scores(probs, labels)
    cells, config = subgroup_reply(content.config, ds.subgroups_test, probs, labels)
    return Content(
        arrays={"histogram": hist.to_record(), **cells},
        metrics=MetricRecord({"num_examples": ds.num_test}),
        config=config,
    )
