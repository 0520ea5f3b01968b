"""Figures for the report (matplotlib, headless). Each function returns a Figure; callers save it."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["COLORS", "LABELS", "meta_loss_figure", "task_curves_figure", "speedup_figure"]

COLORS = {"learned": "#d62728", "guarded": "#ff7f0e", "adam_tuned": "#1f77b4"}
LABELS = {"learned": "learned (small_fc_lopt)", "guarded": "learned + LGL2O guard", "adam_tuned": "Adam (tuned LR)"}


def meta_loss_figure(curves: dict) -> plt.Figure:
    """The PES meta-loss curve: ``curves["meta_loss"] = [(outer_step, value), ...]``."""
    fig, ax = plt.subplots(figsize=(6, 3.5), constrained_layout=True)
    s, v = zip(*curves["meta_loss"])
    ax.plot(s, v, color="#d62728")
    ax.set_xlabel("outer step")
    ax.set_ylabel("meta-loss")
    ax.set_title("Meta-training (PES): normalised inner training loss", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def _band(ax, x, stats, color, label):
    m, s = np.asarray(stats["mean"], float), np.asarray(stats["std"], float)
    ax.plot(x, m, color=color, label=label)
    ax.fill_between(x, m - s, m + s, color=color, alpha=0.15, linewidth=0)


def task_curves_figure(curves: dict) -> plt.Figure:
    """Training loss (EMA-smoothed, per step), test loss and test accuracy of every optimizer."""
    first = next(iter(curves["optimizers"].values()))
    panels = [("batch_loss_smoothed", "training loss (EMA 0.95)")] + [
        (k, t) for k, t in (("test_loss", "test loss"), ("test_acc", "test accuracy")) if k in first
    ]  # a synthetic task has no test set, a language model's accuracy is next-token accuracy
    fig, axes = plt.subplots(
        1, len(panels), figsize=(14 * len(panels) / 3, 3.8), constrained_layout=True, squeeze=False
    )
    axes = axes[0]
    steps = np.asarray(curves["steps"])
    for name, c in curves["optimizers"].items():
        color, label = COLORS.get(name), LABELS.get(name, name)
        for ax, (key, _) in zip(axes, panels):
            if key == "batch_loss_smoothed":
                n = len(c[key]["mean"])
                _band(ax, np.arange(1, n + 1), c[key], color, label)
            else:
                _band(ax, steps, c[key], color, label)
    axes[0].set_yscale("log")
    for ax, (_, title) in zip(axes, panels):
        ax.set_xlabel("step")
        ax.set_title(f"{curves['task']}: {title}")
        ax.grid(alpha=0.3)
    axes[-1].legend(loc="best")
    return fig


def speedup_figure(summaries: dict) -> plt.Figure:
    """Speedup over tuned Adam per task (log scale; hatched bars are lower bounds)."""
    tasks = list(summaries)
    opts = ["learned", "guarded"]
    fig, ax = plt.subplots(figsize=(max(5, 1.8 * len(tasks)), 3.5), constrained_layout=True)
    width = 0.8 / len(opts)
    for j, name in enumerate(opts):
        vals = [summaries[t][name]["speedup"] for t in tasks]
        bars = ax.bar(np.arange(len(tasks)) + j * width, vals, width, color=COLORS[name], label=LABELS[name])
        for bar, t in zip(bars, tasks):
            if summaries[t][name]["lower_bound"]:
                bar.set_hatch("//")
    ax.axhline(1.0, color="k", lw=1, ls="--")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(tasks)) + width * (len(opts) - 1) / 2, tasks)
    ax.set_ylabel("speedup over tuned Adam")
    ax.set_title("Speedup over tuned Adam (hatched: lower bound)", fontsize=10)
    ax.legend(fontsize=8)
    return fig
