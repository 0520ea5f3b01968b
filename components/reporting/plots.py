"""Figures for the report (matplotlib, headless Agg backend). Each function returns a Figure; callers save it.

Every figure takes ``colors`` and ``labels`` (optimizer name -> colour / display name, see :func:`optimizer_style`)
so an optimizer has the same colour everywhere: the learned optimizer red, its HUB hybrids purple / pink, its
LGL2O and GL2O safeguards orange / brown, tuned Adam (the reference) blue, other baselines from a fixed palette.

Ratios to tuned Adam (speedups, final-loss ratios) are drawn on a log axis as bars that start at 1, the reference:
a bar going up (or right) is better than tuned Adam, one going down (or left) worse.
"""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402
import numpy as np  # noqa: E402

from components.evaluation.stats import performance_profile  # noqa: E402

__all__ = [
    "COLORS",
    "LABELS",
    "REFERENCE",
    "display_order",
    "optimizer_style",
    "aggregate_figure",
    "performance_profile_figure",
    "task_curves_figure",
    "long_horizon_figure",
    "speedup_figure",
    "algoperf_figure",
    "meta_loss_figure",
]

REFERENCE = "adam"
COLORS = {
    "learned": "#d62728",
    "hub": "#9467bd",
    "hub_inverted": "#e377c2",
    "lgl2o": "#ff7f0e",
    "gl2o": "#8c564b",
    "adam": "#1f77b4",
}
# other optimizers, in order of appearance (tab10 without the ones above)
_PALETTE = ["#2ca02c", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939"]
LABELS = {
    "learned": "learned",
    "hub": "HUB (learned + Adam)",
    "hub_inverted": "inverted HUB",
    "lgl2o": "LGL2O (loss guard)",
    "gl2o": "GL2O (fixed-point guard)",
    "adam": "Adam (tuned LR)",
}
_BASELINE_NAMES = {
    "sgd": "SGD",
    "sgdm": "SGD + momentum",
    "adamw": "AdamW",
    "rmsprop": "RMSProp",
    "lamb": "LAMB",
    "lars": "LARS",
    "adabelief": "AdaBelief",
    "adafactor": "Adafactor",
    "adagrad": "Adagrad",
    "radam": "RAdam",
    "nadam": "NAdam",
    "nadamw": "NAdamW",
    "lion": "Lion",
}
_LINE_STYLES = {"learned": "-", "hub": "-.", "hub_inverted": ":", "lgl2o": "--", "gl2o": (0, (5, 1, 1, 1))}


_KIND_RANK = {"learned": 0, "hybrid": 1, "safeguarded": 2, "baseline": 3}


def display_order(optimizers: dict[str, str], baselines: list[str] | None = None) -> list[str]:
    """Optimizer names in display order: learned, hybrids, safeguarded, then tuned Adam and the other baselines.

    Args:
      optimizers: name -> kind ("learned", "safeguarded", "baseline"); JSON files written with sorted keys lose
        the evaluate stage's order, so it is rebuilt here.
      baselines: the baselines in params order (``evaluate.baselines``); others follow in the order given.
    """
    names = list(optimizers)
    baselines = list(baselines or [])

    def key(o: str):
        rank = _KIND_RANK.get(optimizers[o], 4)
        return rank, o != REFERENCE, baselines.index(o) if o in baselines else len(baselines), names.index(o)

    return sorted(names, key=key)


def _plain_log_ticks(ax, axis: str = "y", minor: bool = True) -> None:
    """Label a log axis with plain numbers (0.5, 1, 2) instead of powers of ten; ``minor``: also 2x and 5x."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}" if minor and f"{v:.0e}"[0] in "25" else ""))


def optimizer_style(optimizers: dict[str, str], learned_name: str | None = None) -> tuple[dict, dict]:
    """Colours and display labels of the optimizers of an evaluation.

    Args:
      optimizers: ``evaluation.json["optimizers"]``, name -> kind ("learned", "safeguarded", "baseline").
      learned_name: architecture of the learned optimizer (e.g. ``small_fc_lopt``), shown in its label.

    Returns:
      ``(colors, labels)``, two dicts keyed by optimizer name.
    """
    colors, labels, spare = {}, {}, iter(_PALETTE * (1 + len(optimizers) // len(_PALETTE)))
    for name, kind in optimizers.items():
        colors[name] = COLORS.get(name) or next(spare)
        if name in LABELS:
            labels[name] = LABELS[name]
        elif kind == "baseline":
            labels[name] = f"{_BASELINE_NAMES.get(name, name)} (tuned LR)"
        else:
            labels[name] = name
    if learned_name and "learned" in labels:
        labels["learned"] = f"learned ({learned_name})"
    return colors, labels


def _finite(values) -> np.ndarray:
    a = np.asarray([np.nan if v is None else v for v in values], np.float64)
    return a[np.isfinite(a)]


def _log_limits(values, pad: float = 1.6) -> tuple[float, float]:
    """Log-axis limits that show every finite positive value and the reference 1."""
    v = _finite(values)
    v = v[v > 0]
    lo = min([1.0, *v.tolist()]) / pad
    hi = max([1.0, *v.tolist()]) * pad
    return lo, hi


def _fmt(v: float) -> str:
    return f"{v:.2f}" if v >= 0.1 else f"{v:.2g}"


def aggregate_figure(aggregate: dict, names: list[str], colors: dict, labels: dict) -> plt.Figure:
    """Speedup IQM and final-loss ratio IQM per optimizer with their 95% bootstrap CIs (bars from 1, log axis).

    Args:
      aggregate: ``evaluation.json["aggregate"]``.
      names: optimizers, top to bottom.
      colors: optimizer -> colour.
      labels: optimizer -> display name.
    """
    metrics = [("speedup_iqm", "speedup over tuned Adam (IQM)"), ("final_loss_ratio_iqm", "final-loss ratio (IQM)")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.55 * len(names) + 1.6), constrained_layout=True, sharey=True)
    y = np.arange(len(names))[::-1]
    for ax, (key, title) in zip(axes, metrics):
        stats = [aggregate[o].get(key) for o in names]
        bounds = [b for s in stats if s for b in (s["ci_low"], s["ci_high"], s["value"])]
        lo, hi = _log_limits(bounds, pad=2.2)
        for yi, o, s in zip(y, names, stats):
            if s is None or not math.isfinite(s["value"]) or s["value"] <= 0:
                text = "0 (off the axis)" if s is not None and s["value"] == 0 else "n/a"
                ax.text(lo * 1.1, yi, text, va="center", fontsize=8, color="#444")
                continue
            v = s["value"]
            ax.barh(yi, v - 1.0, left=1.0, height=0.6, color=colors[o], alpha=0.85)
            err_lo, err_hi = max(v - s["ci_low"], 0.0), max(s["ci_high"] - v, 0.0)
            if math.isfinite(err_lo) and math.isfinite(err_hi):
                ax.errorbar(v, yi, xerr=[[err_lo], [err_hi]], fmt="none", ecolor="black", capsize=3, lw=1)
            text_x = max(x for x in (s["ci_high"], v, 1.0) if math.isfinite(x))
            ax.text(text_x * 1.08, yi, _fmt(v), va="center", fontsize=8)
        ax.axvline(1.0, color="black", lw=1, ls="--")
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        _plain_log_ticks(ax, "x", minor=hi / lo < 30)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", which="both", alpha=0.25)
    axes[0].set_yticks(y, [labels[o] for o in names])
    axes[0].set_xlabel("< 1: slower than tuned Adam | > 1: faster", fontsize=8)
    axes[1].set_xlabel("< 1: higher final loss than tuned Adam | > 1: lower", fontsize=8)
    fig.suptitle("Across tasks: interquartile mean over (task, seed) runs, 95% stratified bootstrap CI", fontsize=10)
    return fig


def performance_profile_figure(
    tasks: dict, names: list[str], colors: dict, labels: dict, num_taus: int = 200
) -> plt.Figure:
    """Share of (task, seed) runs whose speedup over tuned Adam exceeds tau, over a log range of tau.

    Args:
      tasks: ``evaluation.json["tasks"]``; each optimizer's train-rule row's ``speedup_per_seed`` is used (a
        missing or non-finite speedup counts as 0, a run that never exceeds any tau; a censored one as its bound).
      names: optimizers to draw.
      colors: optimizer -> colour.
      labels: optimizer -> display name.
      num_taus: number of thresholds.
    """
    scores = {
        o: [
            [s if s is not None and math.isfinite(s) else 0.0 for s in tasks[t]["train"][o]["speedup_per_seed"]]
            for t in tasks
        ]
        for o in names
    }
    lo, hi = _log_limits([s for per_task in scores.values() for seeds in per_task for s in seeds], pad=1.5)
    taus = np.logspace(math.log10(lo), math.log10(hi), num_taus)
    fig, ax = plt.subplots(figsize=(9.5, 4), layout="constrained")
    for o in names:
        frac = performance_profile(scores[o], taus)
        ax.step(taus, frac, where="post", color=colors[o], ls=_LINE_STYLES.get(o, "-"), lw=2, label=labels[o])
    ax.axvline(1.0, color="black", lw=1, ls="--")
    ax.set_xscale("log")
    _plain_log_ticks(ax, "x", minor=hi / lo < 30)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(r"speedup threshold $\tau$ (1 = as fast as tuned Adam)")
    ax.set_ylabel(r"fraction of runs with speedup $> \tau$")
    ax.set_title("Performance profile (each task weighs the same)", fontsize=10)
    ax.grid(which="both", alpha=0.25)
    fig.legend(fontsize=8, loc="outside right center", frameon=False)
    return fig


def _band(ax, x, stats, color, label, ls="-", marker=None):
    m, s = np.asarray(stats["mean"], float), np.asarray(stats["std"], float)
    ax.plot(x, m, color=color, label=label, ls=ls, marker=marker, ms=4, lw=1.6)
    ax.fill_between(x, m - s, m + s, color=color, alpha=0.12, linewidth=0)


def _curve_panels(first: dict) -> list[tuple[str, str]]:
    panels = [("batch_loss_smoothed", "smoothed training loss")]
    return panels + [(k, t) for k, t in (("test_loss", "test loss"), ("test_acc", "test accuracy")) if k in first]


def task_curves_figure(curves: dict, names: list[str], colors: dict, labels: dict) -> plt.Figure:
    """One task's learning curves for every optimizer (tuned baselines at their tuned rate), mean +- std over seeds.

    Panels: EMA-smoothed training loss per step (log scale), then test loss and test accuracy at the evaluation
    points where the task has them (a synthetic problem has no test set).

    Args:
      curves: ``metrics/curves/<task>.json``.
      names: optimizers to draw (those missing from ``curves`` are skipped).
      colors: optimizer -> colour.
      labels: optimizer -> display name.
    """
    names = [o for o in names if o in curves["optimizers"]]
    panels = _curve_panels(curves["optimizers"][names[0]])
    size = (3.9 * len(panels) + 0.6, 3.4)
    fig, axes = plt.subplots(1, len(panels), figsize=size, squeeze=False, layout="constrained")
    axes = axes[0]
    steps = np.asarray(curves["steps"])
    for o in names:
        c = curves["optimizers"][o]
        for ax, (key, _) in zip(axes, panels):
            if key not in c:
                continue
            if key == "batch_loss_smoothed":
                _band(ax, np.arange(1, len(c[key]["mean"]) + 1), c[key], colors[o], labels[o], _LINE_STYLES.get(o, "-"))
            else:
                _band(ax, steps, c[key], colors[o], labels[o], _LINE_STYLES.get(o, "-"), marker="o")
    axes[0].set_yscale("log")
    _plain_log_ticks(axes[0])
    for ax, (_, title) in zip(axes, panels):
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
        ax.grid(which="both", alpha=0.25)
    handles, legend_labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, legend_labels, loc="outside right center", fontsize=8, frameon=False)
    return fig


def long_horizon_figure(
    long_curves: dict[str, dict], horizons: dict[str, int], names: list[str], colors: dict, labels: dict
) -> plt.Figure:
    """Smoothed training loss at k x each task's horizon (one panel per task, log scale).

    Args:
      long_curves: task -> ``curves["long"]`` (``steps``, ``num_steps``, ``optimizers``).
      horizons: task -> its own horizon (marked by a dotted line).
      names: optimizers to draw (those without long-horizon curves are skipped).
      colors: optimizer -> colour.
      labels: optimizer -> display name.
    """
    tasks = list(long_curves)
    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.9 * ncols + 1.8, 3.1 * nrows + 0.4), squeeze=False, layout="constrained"
    )
    for ax, t in zip(axes.flat, tasks):
        long = long_curves[t]
        for o in names:
            c = long["optimizers"].get(o)
            if c is None:
                continue
            m = c["batch_loss_smoothed"]
            _band(ax, np.arange(1, len(m["mean"]) + 1), m, colors[o], labels[o], _LINE_STYLES.get(o, "-"))
        ax.axvline(horizons[t], color="gray", lw=1, ls=":")
        ax.set_yscale("log")
        _plain_log_ticks(ax)
        ax.set_title(f"{t} ({long['num_steps']} steps)", fontsize=10)
        ax.set_xlabel("step (dotted: the task's own horizon)", fontsize=8)
        ax.grid(which="both", alpha=0.25)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.set_visible(False)
    handles, legend_labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, legend_labels, loc="outside right center", fontsize=8, frameon=False)
    fig.suptitle("Long horizon: smoothed training loss (mean \u00b1 std over seeds)", fontsize=11)
    return fig


def speedup_figure(tasks: dict, names: list[str], colors: dict, labels: dict) -> plt.Figure:
    """Per-task speedup over tuned Adam of each optimizer (bars from 1, log scale; hatched bars are lower bounds).

    Args:
      tasks: ``evaluation.json["tasks"]``.
      names: optimizers to draw (usually all but tuned Adam).
      colors: optimizer -> colour.
      labels: optimizer -> display name.
    """
    task_names = list(tasks)
    width_in = max(7.0, 0.65 * len(task_names) * max(1, len(names)) + 3)
    fig, ax = plt.subplots(figsize=(width_in, 4), layout="constrained")
    width = 0.8 / max(1, len(names))
    x = np.arange(len(task_names))
    values = []
    for j, o in enumerate(names):
        rows = [tasks[t]["train"][o] for t in task_names]
        vals = np.asarray([r["speedup"] if r["speedup"] and r["speedup"] > 0 else np.nan for r in rows], float)
        values += vals[np.isfinite(vals)].tolist()
        bars = ax.bar(x + j * width, vals - 1.0, width, bottom=1.0, color=colors[o], label=labels[o], alpha=0.85)
        for bar, r in zip(bars, rows):
            if r["censored"]:
                bar.set_hatch("///")
                bar.set_edgecolor("white")
    ax.axhline(1.0, color="black", lw=1, ls="--")
    ax.set_yscale("log")
    lo, hi = _log_limits(values)
    ax.set_ylim(lo, hi)
    _plain_log_ticks(ax, minor=hi / lo < 30)
    ax.set_xticks(x + width * (len(names) - 1) / 2, task_names, fontsize=8)
    ax.set_ylabel("speedup vs tuned Adam")
    ax.set_title(
        "Speedup over tuned Adam per task, train rule (hatched: censored, Adam's longer grid never reached that loss)",
        fontsize=10,
    )
    ax.grid(axis="y", which="both", alpha=0.25)
    fig.legend(fontsize=8, loc="outside right center", frameon=False)
    return fig


def algoperf_figure(validation: dict, names: list[str], colors: dict, labels: dict, r_max: float = 4.0) -> plt.Figure:
    """AlgoPerf's performance profile: share of tasks whose time to target is within tau of the best optimizer's.

    Args:
      validation: ``evaluation.json["aggregate"]["validation"]`` (each optimizer's ``algoperf_ratios`` and
        ``algoperf_score``).
      names: optimizers to draw.
      colors: optimizer -> colour.
      labels: optimizer -> display name.
      r_max: right end of the profile (AlgoPerf: 4).
    """
    from components.evaluation.aggregate import algoperf_profile  # noqa: PLC0415

    taus = np.linspace(1.0, r_max, 301)
    fig, ax = plt.subplots(figsize=(9.5, 3.8), layout="constrained")
    for o in names:
        rho = algoperf_profile(validation[o]["algoperf_ratios"], taus)
        score = validation[o].get("algoperf_score")
        label = f"{labels[o]} (score {score:.2f})" if score is not None else labels[o]
        ax.step(taus, rho, where="post", color=colors[o], ls=_LINE_STYLES.get(o, "-"), lw=2, label=label)
    ax.set_xlim(1.0, r_max)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(r"$\tau$: time to target / best time of the run")
    ax.set_ylabel(r"share of tasks with ratio $\leq \tau$")
    ax.set_title("AlgoPerf profile (target: tuned Adam's final validation loss; score = area / 3)", fontsize=10)
    ax.grid(alpha=0.25)
    fig.legend(fontsize=8, loc="outside right center", frameon=False)
    return fig


def meta_loss_figure(curves: dict) -> plt.Figure:
    """The meta-training curve: ``curves["meta_loss"] = [(outer_step, value), ...]``."""
    fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
    s, v = zip(*curves["meta_loss"])
    ax.plot(s, v, color=COLORS["learned"], marker="o" if len(s) < 30 else None, ms=4)
    ax.set_xlabel("outer step")
    ax.set_ylabel("meta-loss")
    ax.set_title("Meta-training: normalised inner training loss", fontsize=10)
    ax.grid(alpha=0.3)
    return fig
