"""Membership inference against the local trainer: a loss-threshold attack, with and without DP.

    .venv/bin/python bench/membership_inference.py [--dataset pima] [--splits 3] [--runs 5]
        [--epsilons 8,1] [--epochs 100] [--hidden 256]

The longer version of ``tests/privacy/test_membership_inference.py``. For each of ``--splits``
seeded member / non-member splits (half the table each, standardised with statistics of the whole
table), an MLP is trained with Adam on the members without DP (once: deterministic) and with
DP-SGD at each target epsilon (``--runs`` times: DP-SGD draws from OS entropy), the noise multiplier
chosen by the accountant for the trainer's sampling rate and steps (delta 1e-5). The attack scores
each row by its negative loss (Yeom et al. 2018). The table gives, per epsilon, the attack's ROC AUC
(mean, sd, min, max over all runs and splits), TPR at 1 % FPR, and the largest AUC any attack can
reach against an (epsilon, delta)-DP algorithm, e^eps / (1 + e^eps) + delta.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from cordiale.data.catalog import get_dataset
from cordiale.data.features import FeatureEncoder, Standardizer
from cordiale.learn.models import ModelSpec, build_model
from cordiale.learn.trainer import TrainConfig, dp_sample_rate_and_steps, train_local
from cordiale.privacy.accounting import noise_multiplier_for

DELTA = 1e-5


def _losses(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).double()
    return nn.functional.binary_cross_entropy_with_logits(
        logits, torch.from_numpy(y).double(), reduction="none"
    ).numpy()


def _attack(model: nn.Module, members: tuple, others: tuple) -> tuple[float, float, float]:
    """AUC, TPR at 1 % FPR, and the train - test accuracy gap."""
    loss_in, loss_out = _losses(model, *members), _losses(model, *others)
    scores = np.concatenate([-loss_in, -loss_out])
    truth = np.r_[np.ones(len(loss_in)), np.zeros(len(loss_out))]
    fpr, tpr, _ = roc_curve(truth, scores)
    gap = np.mean(loss_in < math.log(2)) - np.mean(loss_out < math.log(2))
    return float(roc_auc_score(truth, scores)), float(np.interp(0.01, fpr, tpr)), float(gap)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="pima")
    ap.add_argument("--splits", type=int, default=3)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--epsilons", default="8,1")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", default="256")
    args = ap.parse_args()
    torch.set_num_threads(1)  # small matrices: threads cost more than they save
    spec = ModelSpec(kind="mlp", hidden=tuple(int(h) for h in args.hidden.split(",")))
    ds = get_dataset(args.dataset)
    frame = ds.contract.validate_frame(ds.load(), dataset=args.dataset)
    x, y = FeatureEncoder(ds.contract).encode(frame)
    x = Standardizer.fit(x).transform(x)
    half = len(y) // 2
    q, per_epoch = dp_sample_rate_and_steps(half, args.batch)
    steps = args.epochs * per_epoch
    epsilons = [math.inf, *(float(e) for e in args.epsilons.split(","))]
    noise = {
        eps: 0.0
        if math.isinf(eps)
        else noise_multiplier_for(target_epsilon=eps, delta=DELTA, sampling_rate=q, steps=steps)
        for eps in epsilons
    }
    found: dict[float, list[tuple[float, float, float]]] = {eps: [] for eps in epsilons}
    seconds: dict[float, list[float]] = {eps: [] for eps in epsilons}
    for split in range(args.splits):
        order = np.random.default_rng(split).permutation(len(y))
        members = (x[order[:half]], y[order[:half]])
        others = (x[order[half : 2 * half]], y[order[half : 2 * half]])
        for eps in epsilons:
            for _ in range(1 if math.isinf(eps) else args.runs):
                model = build_model(spec, x.shape[1], seed=split)
                cfg = TrainConfig(
                    epochs=args.epochs,
                    batch_size=args.batch,
                    lr=0.01,
                    optimizer="adam",
                    dp_noise_multiplier=noise[eps],
                )
                t0 = time.perf_counter()
                train_local(model, *members, cfg, seed=split)
                seconds[eps].append(time.perf_counter() - t0)
                found[eps].append(_attack(model, members, others))
    table = Table(
        title=f"loss-threshold membership inference: {args.dataset}, {half} members / {half} "
        f"others, {spec.describe(x.shape[1])}, {args.epochs} epochs (q = {q:.4f}, {steps} "
        f"steps), {args.splits} splits x {args.runs} DP runs, delta {DELTA:g}"
    )
    for col in (
        "epsilon",
        "z",
        "AUC mean",
        "sd",
        "min",
        "max",
        "AUC bound",
        "TPR@1%FPR mean",
        "max",
        "train-test acc",
        "s / training",
    ):
        table.add_column(col, justify="right")
    for eps in epsilons:
        a = np.array(found[eps])
        bound = math.exp(eps) / (1 + math.exp(eps)) + DELTA if math.isfinite(eps) else 1.0
        table.add_row(
            f"{eps:g}",
            f"{noise[eps]:.3f}",
            f"{a[:, 0].mean():.3f}",
            f"{a[:, 0].std():.3f}",
            f"{a[:, 0].min():.3f}",
            f"{a[:, 0].max():.3f}",
            f"{bound:.4f}",
            f"{a[:, 1].mean():.3f}",
            f"{a[:, 1].max():.3f}",
            f"{a[:, 2].mean():.3f}",
            f"{np.mean(seconds[eps]):.1f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
