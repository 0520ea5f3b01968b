"""The evaluation protocol's bookkeeping on constructed per-task summaries (answers computed by hand).

The statistics themselves (IQM, stratified bootstrap, win shares) are tested in
``tests/components/evaluation``; here: that the evaluate stage feeds them the right numbers, that
tuning reads the validation split, and that ``metrics/headline.json`` flattens the aggregate.
"""

import math

import numpy as np
import pytest

from components.stages import evaluate


def _stats(v):
    return {"mean": v, "std": 0.0, "min": v, "max": v}


def _row(final, speedups, ratios, *, acc=None, diverged=0, fallback=None, long=None):
    row = {
        "final_train_loss": _stats(final),
        "final_test_acc": None if acc is None else _stats(acc),
        "speedup_per_seed": speedups,
        "final_loss_ratio_per_seed": ratios,
        "diverged_seeds": diverged,
        "long": long,
    }
    if fallback is not None:
        row["fallback_fraction"] = _stats(fallback)
    return row


def _long(final, ratios, diverged=0, fallback=None):
    out = {"final_train_loss": _stats(final), "final_loss_ratio_per_seed": ratios, "diverged_seeds": diverged}
    if fallback is not None:
        out["fallback_fraction"] = _stats(fallback)
    return out


NAMES = ["learned", "guarded", "adam", "sgdm"]
SUMMARIES = {
    # task a: learned lowest (0.5 < 0.6 adam < 0.7 sgdm < 0.8 guarded)
    "a": {
        "optimizers": {
            "learned": _row(0.5, [2.0, 2.0], [1.2, 1.2], acc=0.9, long=_long(0.4, [1.5, 1.5])),
            "guarded": _row(
                0.8, [0.5, 0.5], [0.75, 0.75], acc=0.8, fallback=0.1, long=_long(0.7, [0.8, 0.8], fallback=0.2)
            ),
            "adam": _row(0.6, [1.0, 1.0], [1.0, 1.0], acc=0.85, long=_long(0.6, [1.0, 1.0])),
            "sgdm": _row(0.7, [0.5, 0.5], [0.86, 0.86], acc=0.8),
        }
    },
    # task b: learned diverged on both seeds; guarded lowest (0.9 < 0.95 sgdm < 1.0 adam)
    "b": {
        "optimizers": {
            "learned": _row(math.nan, [0.0, 0.0], [0.0, 0.0], diverged=2, long=_long(math.nan, [0.0, 0.0], diverged=2)),
            "guarded": _row(0.9, [1.5, 1.5], [1.1, 1.1], fallback=0.3, long=_long(0.9, [1.2, 1.2], fallback=0.4)),
            "adam": _row(1.0, [1.0, 1.0], [1.0, 1.0], long=_long(1.1, [1.0, 1.0])),
            "sgdm": _row(0.95, [1.2, 1.2], [1.05, 1.05]),
        }
    },
}


def test_aggregate_gives_the_papers_headline_numbers():
    agg = evaluate.aggregate(SUMMARIES, NAMES, n_resamples=200, seed=0)
    learned, guarded, adam, sgdm = (agg[o] for o in NAMES)
    # learned speedups pooled: [2, 2, 0, 0] -> IQM drops one at each end -> mean(0, 2) = 1; every task's
    # seeds are equal, so resampling within tasks changes nothing: the CI is the point
    assert learned["speedup_iqm"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n_tasks": 2, "n_runs": 4}
    # guarded ratios [0.75, 0.75, 1.1, 1.1] -> mean(0.75, 1.1) = 0.925
    assert guarded["final_loss_ratio_iqm"]["value"] == pytest.approx(0.925)
    # wins on mean final training loss: learned wins a (beats adam and all), loses b (diverged)
    assert (learned["beats_adam_fraction"], learned["beats_all_fraction"]) == (0.5, 0.5)
    assert (guarded["beats_adam_fraction"], guarded["beats_all_fraction"]) == (0.5, 0.5)
    assert (sgdm["beats_adam_fraction"], sgdm["beats_all_fraction"]) == (0.5, 0.0)
    assert adam["beats_adam_fraction"] is None and adam["beats_all_fraction"] == 0.0
    assert (learned["diverged_runs"], learned["total_runs"]) == (2, 4)
    assert guarded["fallback_rate"] == pytest.approx(0.2) and learned["fallback_rate"] is None
    # accuracy over the tasks that have one (only a)
    assert learned["mean_test_acc"] == pytest.approx(0.9)
    # long horizon: only the optimizers with long runs (sgdm has none)
    assert "long_final_loss_ratio_iqm" not in sgdm
    assert learned["long_final_loss_ratio_iqm"]["value"] == pytest.approx(0.75)  # [1.5, 1.5, 0, 0]
    # long: a: learned 0.4 < adam 0.6 (win), b: diverged; guarded: a 0.7 > 0.6, b 0.9 < 1.1 (win)
    assert learned["long_beats_adam_fraction"] == 0.5 and guarded["long_beats_adam_fraction"] == 0.5
    assert learned["long_diverged_runs"] == 2 and guarded["long_fallback_rate"] == pytest.approx(0.3)


def test_headline_flattens_the_aggregate_for_dvc_metrics():
    agg = evaluate.aggregate(SUMMARIES, NAMES, n_resamples=200, seed=0)
    head = evaluate.headline(agg)
    assert set(head) == set(NAMES)
    assert head["learned"]["speedup_iqm"] == 1.0 and head["learned"]["speedup_iqm_ci_low"] == 1.0
    assert head["guarded"]["fallback_rate"] == pytest.approx(0.2)
    assert "beats_adam_fraction" not in head["adam"]  # None is left out
    assert "fallback_rate" not in head["learned"]
    assert all(isinstance(v, float | int) for row in head.values() for v in row.values())


def test_baselines_are_tuned_on_the_validation_loss_not_the_training_loss():
    # rate 0 has the lower training loss, rate 1 the lower validation loss: validation decides
    out = {
        "batch_loss": np.array([[[1.0, 0.1]] * 2, [[1.0, 0.5]] * 2]),  # [H=2, S=2, T=2]
        "val_loss": np.array([[[2.0, 0.9]] * 2, [[2.0, 0.4]] * 2]),
    }
    scores, metric = evaluate._tuning_scores(out, smoothing=0.0)
    assert metric == "val_loss" and int(np.argmin(scores)) == 1
    # a diverged rate is never chosen
    out["val_loss"][1, 0, -1] = np.nan
    scores, _ = evaluate._tuning_scores(out, smoothing=0.0)
    assert scores[1] == np.inf and int(np.argmin(scores)) == 0
    # no held-out data (synthetic problems): the final smoothed training loss decides
    scores, metric = evaluate._tuning_scores({"batch_loss": out["batch_loss"]}, smoothing=0.0)
    assert metric == "train_loss" and int(np.argmin(scores)) == 0


def test_plot_rows_hold_every_optimizer_per_step():
    curves = {
        "optimizers": {o: {"batch_loss_smoothed": {"mean": [3.0, 2.0, float("nan")]}} for o in ("learned", "adam")}
    }
    rows = evaluate._plot_rows(curves, ["learned", "adam"])
    assert rows == [
        {"step": 1, "learned": 3.0, "adam": 3.0},
        {"step": 2, "learned": 2.0, "adam": 2.0},
        {"step": 3, "learned": None, "adam": None},
    ]
