"""Across tasks: the papers' headline numbers under each selection rule, censored speedups, AlgoPerf's score.

Inputs are the per-task rows of :mod:`components.evaluation.protocol` (``rows[task][optimizer]``);
outputs are JSON-ready dicts. The statistics are :mod:`components.evaluation.stats` (rliable's IQM
and stratified bootstrap, via scipy).

**Censored speedups.** A speedup beyond the normaliser's reach (Adam's grid never reaches the
optimizer's loss within its ``m x T`` steps) is only known to be at least its bound ``m``. Such a run
is counted *at its bound* in the IQM and its bootstrap; since the IQM is non-decreasing in every
score, the aggregate is then a lower bound of the true IQM, and it is flagged ``lower_bound`` when a
censored run is among the scores the IQM keeps (a censored run trimmed off the top cannot change
it). The CI is flagged the same way when any run is censored. Reports show flagged values as
"≥ x".

**AlgoPerf score** (MLCommons AlgoPerf's scoring rule): per task the time to reach a target (here:
tuned Adam's final validation loss), divided by the best time of any optimizer of the run; the
performance profile ``ρ(τ)`` is the share of tasks with ratio ``≤ τ``; the score is
``1/(r_max − 1) ∫_1^{r_max} ρ(τ) dτ`` with ``r_max = 4``, in ``[0, 1]`` (1: fastest on every
task; a task never reached counts 0). For a step function the integral is exact:
``score = mean over tasks of max(0, r_max − max(1, r)) / (r_max − 1)``.
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np

from components.evaluation.stats import iqm, stratified_bootstrap_ci

__all__ = [
    "censored_iqm",
    "share_beating",
    "algoperf_ratios",
    "algoperf_score",
    "algoperf_profile",
    "aggregate_train",
    "aggregate_validation",
    "aggregate_long",
    "ALGOPERF_R_MAX",
]

ALGOPERF_R_MAX = 4.0


def censored_iqm(
    scores_by_task: Sequence[Sequence[float]],
    censored_by_task: Sequence[Sequence[bool]] | None = None,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """IQM with a stratified bootstrap 95% CI, censored scores counted at their bound (module docstring).

    Args:
      scores_by_task: per task, the per-run scores (a censored run holds its bound).
      censored_by_task: per task, per run, whether the score is only a lower bound.
      n_resamples, seed: of the bootstrap.

    Returns:
      ``value``, ``ci_low``, ``ci_high``, ``n_tasks``, ``n_runs``, ``censored_runs``, ``lower_bound``
      (the value is a lower bound), ``ci_lower_bound`` (the CI bounds are lower bounds).
    """
    out = stratified_bootstrap_ci(scores_by_task, iqm, n_resamples=n_resamples, seed=seed)
    flags = np.concatenate([np.asarray(c, bool) for c in censored_by_task]) if censored_by_task else None
    n_censored = int(flags.sum()) if flags is not None and flags.size else 0
    lower = False
    if n_censored:
        pooled = np.concatenate([np.asarray(s, np.float64) for s in scores_by_task])
        order = np.argsort(pooled, kind="stable")
        cut = len(pooled) // 4
        kept = order[cut : len(pooled) - cut]
        lower = bool(flags[kept].any())
    return {**out, "censored_runs": n_censored, "lower_bound": lower, "ci_lower_bound": n_censored > 0}


def share_beating(
    values: Mapping[str, Mapping[str, float | None]],
    o: str,
    others: Sequence[str],
    *,
    higher_is_better: Mapping[str, bool] | None = None,
) -> float | None:
    """Share of tasks on which ``o`` is strictly better than every optimizer in ``others``.

    ``values[optimizer][task]``; ``higher_is_better[task]`` (default False: losses). A missing or
    non-finite value never wins and loses to any finite one. ``None`` when there are no tasks.
    """
    tasks = list(values[o])
    if not tasks:
        return None
    wins = 0
    for t in tasks:
        sign = -1.0 if (higher_is_better or {}).get(t, False) else 1.0

        def key(name, t=t, sign=sign):
            v = values[name].get(t)
            return sign * v if v is not None and math.isfinite(v) else math.inf

        mine = key(o)
        wins += math.isfinite(mine) and all(mine < key(p) for p in others)
    return wins / len(tasks)


def algoperf_ratios(times: Mapping[str, Mapping[str, float | None]]) -> dict[str, dict[str, float | None]]:
    """Per optimizer and task: time to target / the best time of any optimizer on that task (``None``: missed)."""
    tasks = sorted({t for per in times.values() for t in per})
    out = {o: {} for o in times}
    for t in tasks:
        reached = [v for per in times.values() if (v := per.get(t)) is not None and math.isfinite(v) and v > 0]
        best = min(reached) if reached else None
        for o, per in times.items():
            v = per.get(t)
            out[o][t] = v / best if best and v is not None and math.isfinite(v) else None
    return out


def algoperf_score(ratios: Mapping[str, float | None], r_max: float = ALGOPERF_R_MAX) -> float | None:
    """``1/(r_max − 1) ∫_1^{r_max} ρ(τ) dτ`` of one optimizer's per-task ratios (``None``: task missed)."""
    if not ratios:
        return None
    parts = [0.0 if r is None else max(0.0, r_max - max(1.0, r)) / (r_max - 1.0) for r in ratios.values()]
    return float(np.mean(parts))


def algoperf_profile(ratios: Mapping[str, float | None], taus: Sequence[float]) -> list[float]:
    """``ρ(τ)``: share of tasks whose ratio is at most ``τ`` (a missed task never counts)."""
    vals = [r for r in ratios.values()]
    return [float(np.mean([r is not None and r <= tau for r in vals])) if vals else 0.0 for tau in taus]


def aggregate_train(
    rows: Mapping[str, Mapping[str, dict]],
    names: Sequence[str],
    *,
    reference: str = "adam",
    variants: Mapping[str, Sequence[str]] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """Training-loss comparisons (train rule) per optimizer across tasks.

    Args:
      rows: ``rows[task][optimizer]`` from :func:`~components.evaluation.protocol.train_rule_row`
        (plus ``fallback_fraction`` for safeguards).
      names: optimizers in display order.
      reference: tuned Adam's name.
      variants: optimizers that are not each other's competitors in "beats all" (HUB and inverted HUB).
      n_resamples, seed: of the bootstrap.

    Returns:
      Per optimizer: ``speedup_iqm`` (censored at the bound, see :func:`censored_iqm`),
      ``final_loss_ratio_iqm``, ``beats_adam_fraction`` / ``beats_all_fraction`` (mean final
      smoothed training loss, strict), ``diverged_runs`` / ``total_runs``, ``fallback_rate``.
    """
    tasks = list(rows)
    if not tasks:
        raise ValueError("no tasks to aggregate")
    variants = variants or {}
    final = {o: {t: rows[t][o]["final_train_loss"]["mean"] for t in tasks} for o in names}
    ci = dict(n_resamples=n_resamples, seed=seed)
    out = {}
    for o in names:
        rs = [rows[t][o] for t in tasks]
        others = [p for p in names if p != o and p not in variants.get(o, ())]
        out[o] = {
            "speedup_iqm": censored_iqm(
                [r["speedup_per_seed"] for r in rs], [r["censored_per_seed"] for r in rs], **ci
            ),
            "final_loss_ratio_iqm": stratified_bootstrap_ci([r["final_loss_ratio_per_seed"] for r in rs], **ci),
            "beats_adam_fraction": None if o == reference else share_beating(final, o, [reference]),
            "beats_all_fraction": share_beating(final, o, others),
            "diverged_runs": int(sum(r["diverged_seeds"] for r in rs)),
            "total_runs": int(sum(len(r["speedup_per_seed"]) for r in rs)),
            "fallback_rate": _mean_fallback(rs),
        }
    return out


def aggregate_validation(
    rows: Mapping[str, Mapping[str, dict]],
    names: Sequence[str],
    *,
    reference: str = "adam",
    variants: Mapping[str, Sequence[str]] | None = None,
) -> dict:
    """Generalisation comparisons (validation rule) per optimizer across tasks.

    The test metric of a task is its test accuracy (higher is better) when it has one, else its test
    loss; a task without held-out data uses the final training loss (and says so in its row).

    Returns:
      Per optimizer: ``test_beats_adam_fraction``, ``test_beats_all_fraction``, ``mean_test_acc``
      (over tasks with an accuracy), ``mean_test_loss``, ``diverged_runs``, ``fallback_rate``,
      ``algoperf_score`` (time to tuned Adam's final validation loss, r_max 4) and its per-task
      ``algoperf_ratios``.
    """
    tasks = list(rows)
    if not tasks:
        raise ValueError("no tasks to aggregate")
    variants = variants or {}
    metric = {t: _test_metric(rows[t][reference]) for t in tasks}
    values = {o: {t: _mean(rows[t][o].get(metric[t])) for t in tasks} for o in names}
    higher = {t: metric[t].endswith("_acc") for t in tasks}
    ratios = algoperf_ratios({o: {t: rows[t][o].get("time_to_target") for t in tasks} for o in names})
    out = {}
    for o in names:
        rs = [rows[t][o] for t in tasks]
        others = [p for p in names if p != o and p not in variants.get(o, ())]
        accs = [_mean(r.get("final_test_acc")) for r in rs]
        losses = [_mean(r.get("final_test_loss")) for r in rs]
        out[o] = {
            "test_beats_adam_fraction": (
                None if o == reference else share_beating(values, o, [reference], higher_is_better=higher)
            ),
            "test_beats_all_fraction": share_beating(values, o, others, higher_is_better=higher),
            "mean_test_acc": _mean_of([a for a in accs if a is not None]),
            "mean_test_loss": _mean_of([v for v in losses if v is not None]),
            "diverged_runs": int(sum(r["diverged_seeds"] for r in rs)),
            "fallback_rate": _mean_fallback(rs),
            "algoperf_score": algoperf_score(ratios[o]),
            "algoperf_ratios": ratios[o],
        }
    return out


def aggregate_long(
    rows: Mapping[str, Mapping[str, dict]],
    names: Sequence[str],
    *,
    reference: str = "adam",
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """STAR-style stability at k x the horizon (train rule; Adam tuned for the long horizon).

    Returns:
      Per optimizer with long runs: ``final_loss_ratio_iqm``, ``beats_adam_fraction``,
      ``diverged_runs`` / ``total_runs``, ``fallback_rate``.
    """
    tasks = list(rows)
    final = {o: {t: rows[t][o]["final_train_loss"]["mean"] for t in tasks} for o in names}
    out = {}
    for o in names:
        rs = [rows[t][o] for t in tasks]
        out[o] = {
            "final_loss_ratio_iqm": stratified_bootstrap_ci(
                [r["final_loss_ratio_per_seed"] for r in rs], n_resamples=n_resamples, seed=seed
            ),
            "beats_adam_fraction": None if o == reference else share_beating(final, o, [reference]),
            "diverged_runs": int(sum(r["diverged_seeds"] for r in rs)),
            "total_runs": int(sum(len(r["final_loss_ratio_per_seed"]) for r in rs)),
            "fallback_rate": _mean_fallback(rs),
        }
    return out


def _test_metric(row: Mapping) -> str:
    if row.get("final_test_acc") is not None:
        return "final_test_acc"
    if row.get("final_test_loss") is not None:
        return "final_test_loss"
    return "final_train_loss"


def _mean(stat) -> float | None:
    if stat is None:
        return None
    v = stat["mean"] if isinstance(stat, Mapping) else stat
    return float(v) if v is not None and math.isfinite(v) else None


def _mean_of(vals: list[float]) -> float | None:
    return float(np.mean(vals)) if vals else None


def _mean_fallback(rs: list[Mapping]) -> float | None:
    vals = [r["fallback_fraction"]["mean"] for r in rs if r.get("fallback_fraction") is not None]
    return float(np.mean(vals)) if vals and len(vals) == len(rs) else None
