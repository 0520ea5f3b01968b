"""The evaluation protocol per task: tuning rules, and the scores of one optimizer's runs under each rule.

Two selection rules, one per kind of comparison (VeLO / Celo compare training loss, HUB test
performance; ``research/algorithms.md`` §7 "tune on what you compare on"):

* ``train``: a rate is chosen by the seed-mean, EMA-smoothed training loss at the comparison's
  horizon ``T`` (the last step of that horizon). Training-loss comparisons (speedup, final-loss
  ratio, "beats tuned Adam" on training loss, steps to target) use it.
* ``validation``: a rate is chosen by the seed-mean loss on the validation split (held out of the
  training data) at step ``T``. Generalisation comparisons (test loss / accuracy, HUB's "beats all",
  the AlgoPerf time-to-target) use it. A task without held-out data (a synthetic problem) falls
  back to the training loss, and :class:`Tuned` says so (``metric``).

Every function here is pure (numpy in, plain values out), so the evaluate and calibrate stages,
tests and notebooks share one implementation.
"""

import dataclasses
import math

import numpy as np

from components.evaluation.metrics import ema, final_loss_ratio, speedup_over_adam, steps_to_reach, summarize_runs

__all__ = [
    "RULES",
    "Tuned",
    "tuning_scores",
    "tune",
    "finite_or_none",
    "train_rule_row",
    "validation_rule_row",
    "first_step_at_or_below",
]

RULES = ("train", "validation")


def finite_or_none(v) -> float | None:
    """``float(v)``, or ``None`` for NaN / inf (strict JSON has no non-finite numbers)."""
    return float(v) if v is not None and math.isfinite(float(v)) else None


@dataclasses.dataclass(frozen=True)
class Tuned:
    """The rate a selection rule picked from a grid.

    Attributes:
      rule: ``"train"`` or ``"validation"``.
      metric: what was minimised: ``"train_loss"`` (smoothed training loss), ``"val_loss"``, or
        ``"train_loss (no validation split)"`` when the validation rule had no held-out data.
      index: position of the chosen rate in the grid.
      learning_rate: the chosen rate.
      at_edge: the chosen rate is the first or last of a grid of more than one rate (widen it).
      scores: the seed-mean score of every rate (``None``: diverged; never chosen unless all are).
      horizon: the step at which the score was read.
    """

    rule: str
    metric: str
    index: int
    learning_rate: float
    at_edge: bool
    scores: tuple
    horizon: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"scores": list(self.scores)}


def tuning_scores(
    batch_loss: np.ndarray,
    val_loss: np.ndarray | None,
    *,
    rule: str,
    horizon: int,
    eval_index: int | None,
    smoothing: float,
) -> tuple[np.ndarray, str]:
    """Per rate, the score a rule minimises (non-finite -> ``inf``) and its name.

    Args:
      batch_loss: ``[H, R, T_total]`` minibatch losses (rates x runs x steps), ``T_total >= horizon``.
      val_loss: ``[H, R, E]`` validation losses at the evaluation points, or ``None``.
      rule: one of :data:`RULES`.
      horizon: the comparison's horizon ``T`` (the train rule reads the smoothed loss at step ``T``).
      eval_index: index of step ``T`` among the evaluation points (the validation rule reads it).
      smoothing: EMA decay of the training loss.
    """
    if rule not in RULES:
        raise ValueError(f"unknown tuning rule {rule!r}: choose one of {list(RULES)}")
    if rule == "validation" and val_loss is not None:
        scores, metric = np.asarray(val_loss, np.float64)[:, :, eval_index].mean(axis=1), "val_loss"
    else:
        curve = np.asarray(batch_loss, np.float64)[:, :, :horizon].mean(axis=1)
        scores = ema(curve, smoothing)[:, -1]
        metric = "train_loss" if rule == "train" else "train_loss (no validation split)"
    return np.where(np.isfinite(scores), scores, np.inf), metric


def tune(
    learning_rates,
    batch_loss: np.ndarray,
    val_loss: np.ndarray | None = None,
    *,
    rule: str,
    horizon: int,
    eval_index: int | None = None,
    smoothing: float = 0.95,
    tiebreak: np.ndarray | None = None,
    rtol: float = 1e-3,
) -> Tuned:
    """Choose a learning rate from a grid's runs by ``rule`` (see :func:`tuning_scores`).

    Args:
      learning_rates: the ``H`` rates of the grid.
      batch_loss, val_loss, rule, horizon, eval_index, smoothing: as in :func:`tuning_scores`.
      tiebreak: optional ``[H]`` secondary scores (lower is better): among the rates whose score is
        within ``rtol`` of the best, the one with the lowest tiebreak wins (the calibrate stage uses
        the guard's own loss, for when the guard is never taken and every rate ties).
      rtol: relative tolerance of a tie.

    Returns:
      :class:`Tuned`.
    """
    lrs = [float(v) for v in learning_rates]
    scores, metric = tuning_scores(
        batch_loss, val_loss, rule=rule, horizon=horizon, eval_index=eval_index, smoothing=smoothing
    )
    if len(scores) != len(lrs):
        raise ValueError(f"{len(lrs)} learning rates but runs for {len(scores)}")
    best = int(np.argmin(scores))
    if tiebreak is not None and np.isfinite(scores[best]):
        tied = np.nonzero(scores <= scores[best] * (1 + rtol))[0]
        second = np.where(np.isfinite(tiebreak), np.asarray(tiebreak, np.float64), np.inf)
        best = int(tied[np.argmin(second[tied])])
    return Tuned(
        rule=rule,
        metric=metric,
        index=best,
        learning_rate=lrs[best],
        at_edge=len(lrs) > 1 and best in (0, len(lrs) - 1),
        scores=tuple(finite_or_none(s) for s in scores),
        horizon=int(horizon),
    )


def first_step_at_or_below(curve: np.ndarray, target: float, steps: np.ndarray | None = None) -> float | None:
    """First step at which ``curve`` is at or below ``target`` (``None``: never, or no finite target).

    ``steps`` gives the step of each point (evaluation points); without it point ``i`` is step
    ``i + 1`` (per-step curves), linearly interpolated between points as in VeLO's normaliser.
    """
    if target is None or not math.isfinite(target):
        return None
    # a curve that ends exactly at the target reaches it (the mean of smoothed seeds and the smoothed
    # seed mean differ by rounding)
    target = target + 1e-9 * abs(target)
    curve = np.asarray(curve, np.float64)
    if steps is None:
        return steps_to_reach(curve, target)
    hits = np.nonzero(curve <= target)[0]
    return float(np.asarray(steps)[hits[0]]) if hits.size else None


def train_rule_row(
    batch_loss: np.ndarray,
    adam_grid: np.ndarray,
    adam_final_per_seed: np.ndarray,
    *,
    smoothing: float,
    target: float | None = None,
) -> dict:
    """Training-loss scores of one optimizer's ``[S, T]`` runs against tuned Adam (train rule).

    Args:
      batch_loss: ``[S, T]`` minibatch losses of the optimizer's seeds.
      adam_grid: ``[H, T_adam]`` Adam's seed-mean curves over its whole grid (the speedup
        normaliser; ``T_adam`` may exceed ``T``).
      adam_final_per_seed: ``[S]`` tuned Adam's (train rule) smoothed training loss at step ``T``
        per seed, for the final-loss ratios.
      smoothing: EMA decay.
      target: a training loss to reach (the LGL2O table's target: tuned Adam's final loss); the
        row's ``steps_to_target`` is the first step the seed-mean smoothed curve reaches it.

    Returns:
      ``final_train_loss`` (stats over seeds), ``final_train_loss_per_seed``, ``speedup`` (of the
      seed-mean curve), ``censored`` / ``bound``, ``speedup_per_seed`` with ``censored_per_seed``,
      ``final_loss_ratio`` (of seed means) and ``final_loss_ratio_per_seed`` (seed by seed: same
      initialisation and minibatches), ``diverged_seeds``, ``steps_to_target``.
    """
    batch_loss = np.asarray(batch_loss, np.float64)
    smoothed = ema(batch_loss, smoothing)
    finals = smoothed[:, -1]
    mean_curve = batch_loss.mean(axis=0)
    overall = speedup_over_adam(adam_grid, mean_curve, decay=smoothing)
    per_seed = [speedup_over_adam(adam_grid, c, decay=smoothing) for c in batch_loss]
    adam_mean = float(np.mean(adam_final_per_seed))
    return {
        "final_train_loss": summarize_runs(finals),
        "final_train_loss_per_seed": [finite_or_none(v) for v in finals],
        "speedup": overall["speedup"],
        "censored": overall["censored"],
        "bound": overall["bound"],
        "adam_steps": overall["adam_steps"],
        "speedup_per_seed": [s["speedup"] for s in per_seed],
        "censored_per_seed": [s["censored"] for s in per_seed],
        "final_loss_ratio": final_loss_ratio(adam_mean, float(finals.mean())),
        "final_loss_ratio_per_seed": [
            final_loss_ratio(float(a), float(f)) for a, f in zip(adam_final_per_seed, finals)
        ],
        "diverged_seeds": int((~np.isfinite(batch_loss[:, -1])).sum()),
        "steps_to_target": first_step_at_or_below(ema(mean_curve, smoothing), target),
    }


def validation_rule_row(
    run: dict[str, np.ndarray], metric_keys: list[str], *, eval_index: int, eval_steps: np.ndarray, target: float | None
) -> dict:
    """Held-out scores of one optimizer's runs at step ``T`` (validation rule).

    Args:
      run: ``<set>_loss`` / ``<set>_acc`` arrays ``[S, E]`` and ``batch_loss`` ``[S, T]``.
      metric_keys: the evaluation keys the task has (e.g. ``val_loss``, ``test_acc``).
      eval_index: the evaluation point of step ``T``.
      eval_steps: ``[E']`` the steps of the evaluation points up to ``T``.
      target: the AlgoPerf-style target (tuned Adam's final validation loss); ``time_to_target``
        is the first evaluation step at which the seed-mean validation loss reaches it.

    Returns:
      ``final_<key>`` (stats over seeds, ``None`` where the task lacks the key),
      ``final_<key>_per_seed``, ``diverged_seeds``, ``time_to_target``.
    """
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
    row = {}
    for k in keys:
        if k in metric_keys:
            vals = np.asarray(run[k], np.float64)[:, eval_index]
            row[f"final_{k}"] = summarize_runs(vals)
            row[f"final_{k}_per_seed"] = [finite_or_none(v) for v in vals]
        else:
            row[f"final_{k}"] = None
    row["diverged_seeds"] = int((~np.isfinite(np.asarray(run["batch_loss"], np.float64)[:, -1])).sum())
    if "val_loss" in metric_keys:
        curve = np.asarray(run["val_loss"], np.float64)[:, : eval_index + 1].mean(axis=0)
        row["time_to_target"] = first_step_at_or_below(curve, target, eval_steps)
    else:
        row["time_to_target"] = None
    return row
