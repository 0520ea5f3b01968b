"""The honest protocol on constructed curves with hand-computed answers: speedups above 1, censoring,
one selection rule per comparison, the AlgoPerf score."""

import numpy as np
import pytest

from components.evaluation.aggregate import (
    aggregate_train,
    aggregate_validation,
    algoperf_profile,
    algoperf_ratios,
    algoperf_score,
    censored_iqm,
)
from components.evaluation.metrics import speedup_over_adam
from components.evaluation.protocol import train_rule_row, tune, validation_rule_row

T = 100


def _adam_grid(multiplier: int) -> np.ndarray:
    """One Adam rate whose loss falls linearly from 10 to 0 over 4 * T steps, run multiplier * T steps."""
    steps = np.arange(1, multiplier * T + 1)
    return np.maximum(10.0 - 10.0 * steps / (4 * T), 0.0)[None, :]


def test_an_optimizer_four_times_faster_than_adam_scores_four():
    # the candidate ends (at T) at the loss Adam reaches at 4T - 1: speedup (4T - 1) / T ~ 4
    adam_loss_at_4t = 10.0 - 10.0 * (4 * T - 1) / (4 * T)
    candidate = np.linspace(10.0, adam_loss_at_4t, T)
    for m in (4, 10):
        out = speedup_over_adam(_adam_grid(m), candidate, decay=0.0)
        assert out["speedup"] == pytest.approx(4.0, rel=0.05) and not out["censored"]
        assert out["bound"] == m


def test_with_adam_as_long_as_the_candidate_the_speedup_is_censored_at_one():
    # the old protocol: Adam ran T steps, so the same candidate could only score "at least 1"
    candidate = np.linspace(10.0, 0.025, T)
    out = speedup_over_adam(_adam_grid(1), candidate, decay=0.0)
    assert out["censored"] and out["speedup"] == out["bound"] == 1.0


def test_a_censored_speedup_is_stored_as_its_bound_and_makes_the_iqm_a_lower_bound():
    grid = _adam_grid(4)
    beyond = np.full(T, -1.0)  # lower than Adam ever gets
    row = train_rule_row(np.stack([beyond, beyond]), grid, np.array([7.5, 7.5]), smoothing=0.0)
    assert row["censored"] and row["speedup"] == 4.0 and row["censored_per_seed"] == [True, True]
    # pooled [1, 1, 4, 4, 2, 2, 2, 2]: IQM keeps the middle four (2, 2, 2, 2) -> exact although two runs are
    # censored, because a censored run trimmed off the top cannot change it
    exact = censored_iqm([[1, 1], [4, 4], [2, 2], [2, 2]], [[False] * 2, [True] * 2, [False] * 2, [False] * 2])
    assert exact["value"] == 2.0 and exact["censored_runs"] == 2 and not exact["lower_bound"]
    assert exact["ci_lower_bound"]
    # pooled [4, 4, 4, 4, 1, 1, 1, 1] with the 4s censored: the kept middle holds a censored run -> "at least 2.5"
    lower = censored_iqm([[4, 4], [4, 4], [1, 1], [1, 1]], [[True] * 2, [True] * 2, [False] * 2, [False] * 2])
    assert lower["value"] == pytest.approx(2.5) and lower["lower_bound"]


def _overfitting_grid():
    """Rate 0 (small) generalises, rate 1 (large) fits the training data and overfits.

    ``batch_loss [H=2, S=2, T=4]``, ``val_loss [H, S, E=3]`` at steps 0, 2, 4.
    """
    batch = np.array([[[1.0, 0.8, 0.6, 0.5]] * 2, [[1.0, 0.4, 0.1, 0.01]] * 2])
    val = np.array([[[1.0, 0.7, 0.55]] * 2, [[1.0, 0.8, 0.9]] * 2])
    return batch, val


def test_train_and_validation_rules_pick_different_rates_on_an_overfitting_case():
    batch, val = _overfitting_grid()
    lrs = [1e-3, 1e-1]
    by_train = tune(lrs, batch, val, rule="train", horizon=4, eval_index=2, smoothing=0.0)
    by_val = tune(lrs, batch, val, rule="validation", horizon=4, eval_index=2, smoothing=0.0)
    assert (by_train.learning_rate, by_train.metric) == (1e-1, "train_loss")
    assert (by_val.learning_rate, by_val.metric) == (1e-3, "val_loss")
    # a diverged rate is never chosen; no validation data: the validation rule says it used the training loss
    batch_nan = batch.copy()
    batch_nan[1, :, -1] = np.nan
    assert tune(lrs, batch_nan, None, rule="validation", horizon=4, smoothing=0.0).metric.startswith("train_loss (no")
    assert tune(lrs, batch_nan, None, rule="train", horizon=4, smoothing=0.0).index == 0


def test_each_comparison_uses_its_own_rule():
    """A learned optimizer between the two Adams: it loses on training loss to the train-tuned Adam and
    wins on the test metric against the validation-tuned Adam; each table compares with its own Adam."""
    batch, val = _overfitting_grid()
    lrs = [1e-3, 1e-1]
    adam = {r: tune(lrs, batch, val, rule=r, horizon=4, eval_index=2, smoothing=0.0) for r in ("train", "validation")}
    learned_batch = np.array([[1.0, 0.5, 0.2, 0.1]] * 2)
    learned_eval = {"val_loss": np.array([[1.0, 0.6, 0.5]] * 2), "test_loss": np.array([[1.0, 0.6, 0.5]] * 2)}
    grid_mean = batch.mean(axis=1)
    adam_train = batch[adam["train"].index]
    train_rows = {
        "t": {
            "adam": train_rule_row(adam_train, grid_mean, adam_train[:, -1], smoothing=0.0),
            "learned": train_rule_row(learned_batch, grid_mean, adam_train[:, -1], smoothing=0.0),
        }
    }
    # held-out metrics: the validation-rule Adam's runs (its test loss = its validation curve here)
    adam_val_run = {"batch_loss": batch[adam["validation"].index], "val_loss": val[adam["validation"].index]}
    adam_val_run["test_loss"] = adam_val_run["val_loss"]
    keys = ["val_loss", "test_loss"]
    steps = np.array([0, 2, 4])
    target = float(val[adam["validation"].index][:, 2].mean())
    validation_rows = {
        "t": {
            "adam": validation_rule_row(adam_val_run, keys, eval_index=2, eval_steps=steps, target=target),
            "learned": validation_rule_row(
                {"batch_loss": learned_batch, **learned_eval}, keys, eval_index=2, eval_steps=steps, target=target
            ),
        }
    }
    tr = aggregate_train(train_rows, ["learned", "adam"], n_resamples=50)
    va = aggregate_validation(validation_rows, ["learned", "adam"])
    # train rule: Adam at 1e-1 ends at 0.01 < learned 0.1 -> learned does not beat it, ratio 0.1
    assert tr["learned"]["beats_adam_fraction"] == 0.0
    assert tr["learned"]["final_loss_ratio_iqm"]["value"] == pytest.approx(0.1)
    # validation rule: Adam at 1e-3 ends at test loss 0.55 > learned 0.5 -> learned wins
    assert va["learned"]["test_beats_adam_fraction"] == 1.0
    # a tuned Adam compared with its own envelope scores ~1, not the 0.19 of a mixed rule
    assert train_rows["t"]["adam"]["speedup"] == pytest.approx(1.0)


def test_algoperf_score_by_hand():
    times = {"a": {"t1": 100.0, "t2": 50.0, "t3": None}, "b": {"t1": 200.0, "t2": 25.0, "t3": 10.0}}
    ratios = algoperf_ratios(times)
    assert ratios["a"] == {"t1": 1.0, "t2": 2.0, "t3": None}
    assert ratios["b"] == {"t1": 2.0, "t2": 1.0, "t3": 1.0}
    # a: (3 + 2 + 0) / 3 / 3 = 5/9 ; b: (2 + 3 + 3) / 3 / 3 = 8/9
    assert algoperf_score(ratios["a"]) == pytest.approx(5 / 9)
    assert algoperf_score(ratios["b"]) == pytest.approx(8 / 9)
    # the closed form equals the integral of the step profile over [1, 4]
    taus = np.linspace(1.0, 4.0, 30001)
    for o in ("a", "b"):
        rho = algoperf_profile(ratios[o], taus)
        assert np.trapezoid(rho, taus) / 3.0 == pytest.approx(algoperf_score(ratios[o]), abs=1e-3)


def test_tuned_adam_reaches_its_own_final_loss_at_the_horizon():
    # per-seed EMA finals averaged vs the EMA of the seed mean: equal up to rounding, and still "reached"
    batch = np.array([[3.0, 2.0, 1.1, 0.7], [2.9, 2.1, 1.3, 0.9]])
    row = train_rule_row(batch, batch.mean(axis=0)[None], np.array([0.7, 0.9]), smoothing=0.9, target=None)
    target = float(np.mean([ema_final for ema_final in row["final_train_loss_per_seed"]]))
    again = train_rule_row(batch, batch.mean(axis=0)[None], np.array([0.7, 0.9]), smoothing=0.9, target=target)
    assert again["steps_to_target"] == pytest.approx(4.0)
