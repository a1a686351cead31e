"""Learning-curve plots (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_learning_curve"]


def _loss(round_json: dict[str, Any]) -> float:
    """A round's training loss, NaN (a gap in the curve) where the sites did not report it."""
    loss = round_json.get("train_loss")
    return float("nan") if loss is None else float(loss)


def plot_learning_curve(result: dict[str, Any], path: Path, *, metric: str = "auc") -> Path:
    """Plot ``metric`` per round: federated (all test sets), each site, the pooled baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r for r in result["rounds"] if r.get(metric) is not None]
    fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = [r["round"] for r in rounds]
    ax.plot(
        xs, [r[metric] for r in rounds], color="tab:blue", lw=2.2, label="federated (all sites)"
    )
    sites = (
        sorted({s for r in rounds for s in r.get("per_site_auc", {})}) if metric == "auc" else []
    )
    for s in sites[:20]:
        ys = [r["per_site_auc"].get(s) for r in rounds]
        ax.plot(xs, [y if y is not None else float("nan") for y in ys], lw=0.8, alpha=0.5, label=s)
    pooled_rounds = [r for r in result.get("pooled_rounds", []) if r.get(metric) is not None]
    if pooled_rounds:
        ax.plot(
            [r["round"] for r in pooled_rounds],
            [r[metric] for r in pooled_rounds],
            color="black",
            ls="--",
            lw=1.5,
            label="pooled (centralised)",
        )
    ax.set_xlabel("round")
    ax.set_ylabel(metric.upper() if metric == "auc" else metric)
    ax.set_title(
        f"{result['dataset']}: {result['config']['strategy']}, "
        f"{result['config']['sites']} sites, {result['config']['partition']}"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    ax_loss.plot(
        [r["round"] for r in result["rounds"]],
        [_loss(r) for r in result["rounds"]],
        color="tab:blue",
        label="federated",
    )
    if result.get("pooled_rounds"):
        ax_loss.plot(
            [r["round"] for r in result["pooled_rounds"]],
            [_loss(r) for r in result["pooled_rounds"]],
            color="black",
            ls="--",
            label="pooled",
        )
    ax_loss.set_xlabel("round")
    ax_loss.set_ylabel("training loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
