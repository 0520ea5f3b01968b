"""Aggregate statistics across tasks: IQM, stratified bootstrap CIs, performance profiles, win fractions.

The learned-optimizer papers report optimizer quality over a *suite* of tasks, each trained with a few seeds.
Following rliable (Agarwal et al., 2021, "Deep Reinforcement Learning at the Edge of the Statistical Precipice",
NeurIPS), which Celo uses for its meta-generalisation plots and HUB for its benchmark tables, this module provides:

* **Interquartile mean (IQM)**: the mean of the middle 50% of all ``runs x tasks`` scores pooled together, i.e.
  ``scipy.stats.trim_mean(scores, 0.25)`` -- ``floor(n / 4)`` values are dropped at each end, so for ``n < 4`` it is
  the plain mean. It is robust to outlier runs (unlike the mean) and less noisy than the median.
* **Stratified bootstrap confidence intervals**: the tasks are kept fixed and, independently within each task, the
  runs (seeds) are resampled with replacement; the statistic (IQM by default) is recomputed on the pooled resampled
  scores, and the CI is the percentile interval of those replicates (rliable's default). This is exactly
  ``scipy.stats.bootstrap`` given one sample per task with ``paired=False``.
* **Performance profiles** (rliable's "score distributions"): for a threshold ``tau``, the fraction of runs scoring
  strictly above ``tau``, averaged over tasks with equal weight per task.
* **Win fractions**: the share of tasks on which an optimizer's final loss is strictly better than tuned Adam's, and
  strictly better than every competitor's (VeLO / Celo style "beats Adam on X% of tasks").

Inputs are numpy arrays (or anything ``np.asarray`` accepts); outputs are plain Python floats / lists / dicts, so
they can be written to JSON metrics files directly.

Non-finite scores: ``+inf`` / ``-inf`` are treated as legitimate extreme values (trimming removes them from the IQM
when there are few enough of them; otherwise they propagate to the result), whereas NaN is always an error
(``ValueError``) because there is no meaningful way to rank it.
"""

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.stats

__all__ = [
    "iqm",
    "stratified_bootstrap_ci",
    "aggregate_scores",
    "performance_profile",
    "win_fractions",
]

# ``scipy.stats.bootstrap`` takes its generator as ``rng`` from scipy 1.15 on, as ``random_state`` before.
_BOOTSTRAP_RNG_KEYWORD = "rng" if "rng" in inspect.signature(scipy.stats.bootstrap).parameters else "random_state"
# Upper bound on the number of floats in one vectorised batch of bootstrap replicates (~32 MiB of float64).
_MAX_BATCH_ELEMENTS = 1 << 22


def _check_no_nan(x: np.ndarray, what: str) -> None:
    if np.isnan(x).any():
        raise ValueError(f"{what} contain NaN ({int(np.isnan(x).sum())} of {x.size}); NaN scores cannot be ranked")


def iqm(values: Any, axis: int | None = None) -> Any:
    """Interquartile mean: the mean of the values left after trimming 25% at each end.

    Computed as ``scipy.stats.trim_mean(values, 0.25)``, which drops ``floor(n / 4)`` values at each end (so for
    fewer than 4 values it is the plain mean). ``+inf`` / ``-inf`` are valid extreme values: trimmed away when they
    fall in the outer quartiles, otherwise they propagate (and ``+inf`` with ``-inf`` in the kept middle gives NaN).

    Args:
      values: Array-like of scores.
      axis: ``None`` (default) pools all values and returns a Python float; an integer reduces along that axis and
        returns an array, which makes ``iqm`` usable as a vectorised ``statistic`` in
        :func:`stratified_bootstrap_ci` (as are ``np.mean`` and ``np.median``).

    Returns:
      The IQM as a float (``axis=None``) or as an array of IQMs along ``axis``.

    Raises:
      ValueError: If ``values`` is empty or contains NaN.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("iqm of an empty set of scores is undefined")
    _check_no_nan(x, "scores")
    if axis is None:
        return float(scipy.stats.trim_mean(x, 0.25, axis=None))
    return scipy.stats.trim_mean(x, 0.25, axis=axis)


def _as_tasks(scores_by_task: Sequence[Any]) -> list[np.ndarray]:
    """Validate ``scores_by_task`` into a list of non-empty 1-D float64 arrays without NaN."""
    tasks = [np.atleast_1d(np.asarray(scores, dtype=np.float64)) for scores in scores_by_task]
    if not tasks:
        raise ValueError("scores_by_task is empty: at least one task is needed")
    for i, scores in enumerate(tasks):
        if scores.ndim != 1:
            raise ValueError(f"task {i}: expected a 1-D array of per-run scores, got shape {scores.shape}")
        if scores.size == 0:
            raise ValueError(f"task {i} has no runs")
        _check_no_nan(scores, f"task {i}'s scores")
    return tasks


def stratified_bootstrap_ci(
    scores_by_task: Sequence[Any],
    statistic: Callable[..., Any] = iqm,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int | None = 0,
) -> dict[str, Any]:
    """Point estimate and stratified-bootstrap percentile confidence interval of a pooled statistic.

    The statistic is applied to the concatenation of all tasks' runs (rliable's IQM over the ``runs x tasks``
    matrix; with unequal run counts, a task with more runs weighs more). For the CI, the tasks are held fixed and
    the runs of each task are resampled with replacement independently of the other tasks (``scipy.stats.bootstrap``
    with one sample per task, ``paired=False``, ``method="percentile"``).

    Edge cases:
      * A task with a single run has nothing to resample (and ``scipy.stats.bootstrap`` requires at least two
        observations per sample), so its run is kept fixed in every replicate.
      * If every task has a single run, the CI is degenerate: ``ci_low == ci_high == value``.
      * Tasks whose runs are all equal also contribute no variability; if all tasks are like that, the CI collapses
        onto the point value.
      * Infinite scores that survive the statistic's trimming in some replicates make the bounds infinite.

    Args:
      scores_by_task: One 1-D array-like of per-run (per-seed) scores per task; lengths may differ. A 2-D
        ``[tasks, runs]`` array works too (its rows are the tasks).
      statistic: Vectorised, order-invariant reduction called as ``statistic(x, axis=-1)`` on the pooled scores
        (``x`` is 1-D for the point estimate and ``[batch, n_runs]`` for the replicates). Defaults to :func:`iqm`;
        ``np.mean`` and ``np.median`` work as well.
      confidence: Confidence level of the two-sided interval, in ``(0, 1)``.
      n_resamples: Number of bootstrap replicates.
      seed: Seed of the ``np.random.default_rng`` generator driving the resampling (``None``: fresh entropy).

    Returns:
      ``{"value", "ci_low", "ci_high"}`` as floats, ``"n_tasks"`` and ``"n_runs"`` (total runs over all tasks) as
      ints.

    Raises:
      ValueError: If there are no tasks, a task has no runs or is not 1-D, any score is NaN, or ``confidence`` /
        ``n_resamples`` is out of range.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    tasks = _as_tasks(scores_by_task)
    pooled = np.concatenate(tasks)
    value = float(statistic(pooled, axis=-1))
    varying = [scores for scores in tasks if scores.size >= 2]
    fixed = np.concatenate([scores for scores in tasks if scores.size == 1] or [np.empty(0)])

    if not varying:  # every task has a single run: nothing to resample
        ci_low = ci_high = value
    else:

        def pooled_statistic(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
            samples = tuple(np.moveaxis(sample, axis, -1) for sample in samples)
            batch_shape = samples[0].shape[:-1]
            parts = [*samples, np.broadcast_to(fixed, (*batch_shape, fixed.size))]
            return statistic(np.concatenate(parts, axis=-1), axis=-1)

        batch = max(1, min(n_resamples, _MAX_BATCH_ELEMENTS // pooled.size))
        with np.errstate(invalid="ignore"):  # scipy's standard error of infinite replicates is NaN; harmless
            result = scipy.stats.bootstrap(
                tuple(varying),
                pooled_statistic,
                n_resamples=n_resamples,
                batch=batch,
                vectorized=True,
                paired=False,
                confidence_level=confidence,
                method="percentile",
                **{_BOOTSTRAP_RNG_KEYWORD: np.random.default_rng(seed)},
            )
        ci_low = float(result.confidence_interval.low)
        ci_high = float(result.confidence_interval.high)
    return {"value": value, "ci_low": ci_low, "ci_high": ci_high, "n_tasks": len(tasks), "n_runs": int(pooled.size)}


def aggregate_scores(
    scores_by_task: Sequence[Any],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int | None = 0,
) -> dict[str, Any]:
    """IQM with its stratified-bootstrap CI, plus the plain mean and the median of per-task means.

    Args:
      scores_by_task: One 1-D array-like of per-run scores per task (see :func:`stratified_bootstrap_ci`).
      confidence: Confidence level of the IQM's interval.
      n_resamples: Number of bootstrap replicates.
      seed: Seed of the resampling generator.

    Returns:
      The dict of :func:`stratified_bootstrap_ci` for the IQM (``value`` is the IQM) plus ``"mean"`` (mean of all
      runs pooled, like the IQM) and ``"median"`` (median over tasks of each task's mean score).

    Raises:
      ValueError: As :func:`stratified_bootstrap_ci`.
    """
    out = stratified_bootstrap_ci(scores_by_task, iqm, confidence=confidence, n_resamples=n_resamples, seed=seed)
    tasks = _as_tasks(scores_by_task)
    out["mean"] = float(np.mean(np.concatenate(tasks)))
    out["median"] = float(np.median([scores.mean() for scores in tasks]))
    return out


def performance_profile(scores_by_task: Sequence[Any], taus: Any) -> list[float]:
    """Performance profile (score distribution): share of runs scoring above each threshold, averaged over tasks.

    For each ``tau``: ``mean over tasks of (number of the task's runs with score > tau) / (number of its runs)``,
    so every task weighs the same whatever its number of runs. The profile is non-increasing in ``tau``.

    Args:
      scores_by_task: One 1-D array-like of per-run scores per task.
      taus: Scalar or 1-D array-like of thresholds.

    Returns:
      One fraction in ``[0, 1]`` per threshold, in the order of ``taus``.

    Raises:
      ValueError: If there are no tasks, a task has no runs, or a score or threshold is NaN.
    """
    tasks = _as_tasks(scores_by_task)
    thresholds = np.atleast_1d(np.asarray(taus, dtype=np.float64))
    if thresholds.ndim != 1:
        raise ValueError(f"taus must be a scalar or a 1-D array, got shape {thresholds.shape}")
    _check_no_nan(thresholds, "taus")
    per_task = [(scores[None, :] > thresholds[:, None]).mean(axis=1) for scores in tasks]  # each [n_taus]
    return [float(f) for f in np.mean(per_task, axis=0)]


def win_fractions(
    final_losses: Mapping[str, Mapping[str, float]],
    reference: str = "adam",
    lower_is_better: bool = True,
) -> dict[str, dict[str, Any]]:
    """Share of tasks on which each optimizer beats the reference and beats all other optimizers.

    A win is strict: ties never count. A non-finite loss (NaN or +-inf: a diverged run) never wins, and any finite
    loss beats a non-finite one; two diverged optimizers do not beat each other.

    Args:
      final_losses: ``optimizer -> task -> final loss``; every optimizer must have the same set of tasks.
      reference: The baseline optimizer (tuned Adam); must be a key of ``final_losses``.
      lower_is_better: ``True`` for losses; ``False`` if the values are scores where higher is better.

    Returns:
      ``optimizer -> {"beats_reference", "beats_all", "n_tasks"}``: the fraction of tasks where the optimizer is
      strictly better than ``reference`` (``None`` for the reference itself), the fraction where it is strictly
      better than every other optimizer (with a single optimizer, every task with a finite loss counts), and the
      number of tasks.

    Raises:
      ValueError: If ``final_losses`` is empty, has no tasks, lacks ``reference``, or the optimizers' task sets
        differ (the message names the missing tasks).
    """
    if not final_losses:
        raise ValueError("final_losses is empty")
    if reference not in final_losses:
        raise ValueError(f"reference optimizer {reference!r} not in final_losses (have {sorted(final_losses)})")
    all_tasks = sorted(set().union(*(set(per_task) for per_task in final_losses.values())))
    missing = {opt: sorted(set(all_tasks) - set(per_task)) for opt, per_task in final_losses.items()}
    missing = {opt: tasks for opt, tasks in missing.items() if tasks}
    if missing:
        details = "; ".join(f"{opt} lacks {tasks}" for opt, tasks in missing.items())
        raise ValueError(f"optimizers must be evaluated on the same tasks: {details}")
    if not all_tasks:
        raise ValueError("final_losses has no tasks")

    optimizers = list(final_losses)
    # [optimizers, tasks]; losses as "lower is better", diverged (non-finite) as +inf so any finite value beats it
    losses = np.array([[float(final_losses[opt][task]) for task in all_tasks] for opt in optimizers], np.float64)
    if not lower_is_better:
        losses = -losses
    finite = np.isfinite(losses)
    losses = np.where(finite, losses, np.inf)
    # beats[i, j, t]: optimizer i strictly better than optimizer j on task t (a diverged i never wins)
    beats = finite[:, None, :] & (losses[:, None, :] < losses[None, :, :])
    ref = optimizers.index(reference)
    n_tasks = len(all_tasks)
    out: dict[str, dict[str, Any]] = {}
    for i, opt in enumerate(optimizers):
        others = [j for j in range(len(optimizers)) if j != i]
        beats_all = beats[i, others].all(axis=0) if others else finite[i]
        out[opt] = {
            "beats_reference": None if i == ref else float(beats[i, ref].mean()),
            "beats_all": float(beats_all.mean()),
            "n_tasks": n_tasks,
        }
    return out
