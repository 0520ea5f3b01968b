"""IQM, stratified bootstrap CIs, performance profiles and win fractions on hand-computed inputs."""

import math

import numpy as np
import pytest

from components.evaluation.stats import (
    aggregate_scores,
    iqm,
    performance_profile,
    stratified_bootstrap_ci,
    win_fractions,
)


def test_iqm_known_values():
    # n=8: floor(8/4)=2 values trimmed at each end -> mean(3, 4, 5, 6) = 4.5
    assert iqm(np.arange(1, 9)) == 4.5
    # outliers sit in the outer quartiles and are trimmed: mean(2, 3, 4, 5) = 3.5
    assert iqm([-100.0, 1, 2, 3, 4, 5, 6, 1000.0]) == 3.5
    # infinities are legitimate extreme values, trimmed the same way
    assert iqm([-np.inf, 1, 2, 3, 4, 5, 6, np.inf]) == 3.5
    # fewer than 4 values: nothing trimmed (floor(3/4)=0) -> plain mean (1 + 2 + 10) / 3
    assert iqm([1.0, 2.0, 10.0]) == pytest.approx(13 / 3)
    assert isinstance(iqm([1.0, 2.0]), float)


def test_iqm_of_tasks_by_runs_matrix_pools_all_runs():
    scores = np.array([[1.0, 9.0], [2.0, 3.0], [4.0, 100.0], [5.0, 6.0]])  # 4 tasks x 2 runs
    # pooled sorted: 1 2 3 4 5 6 9 100 -> trim 2 each side -> mean(3, 4, 5, 6) = 4.5
    assert iqm(scores) == 4.5
    # vectorised form used by the bootstrap: one IQM per row (n=2: plain mean)
    np.testing.assert_allclose(iqm(scores, axis=-1), [5.0, 2.5, 52.0, 5.5])


def test_iqm_rejects_nan_and_empty():
    with pytest.raises(ValueError, match="NaN"):
        iqm([1.0, np.nan, 3.0])
    with pytest.raises(ValueError, match="empty"):
        iqm([])


def test_bootstrap_constant_tasks_give_degenerate_ci_at_the_iqm():
    tasks = [[1.0, 1.0, 1.0], [5.0, 5.0], [2.0, 2.0, 2.0, 2.0]]
    # every resample reproduces the data; pooled sorted 1 1 1 2 2 2 2 5 5 (n=9, trim 2 each side) -> mean(1 2 2 2 2)
    out = stratified_bootstrap_ci(tasks, n_resamples=200)
    assert out == {"value": 1.8, "ci_low": 1.8, "ci_high": 1.8, "n_tasks": 3, "n_runs": 9}


def test_bootstrap_single_run_per_task_is_degenerate():
    # nothing to resample: CI = point value = iqm(1, 2, 3, 4) = mean(2, 3) = 2.5
    out = stratified_bootstrap_ci([[1.0], [2.0], [3.0], [4.0]])
    assert out == {"value": 2.5, "ci_low": 2.5, "ci_high": 2.5, "n_tasks": 4, "n_runs": 4}


def test_bootstrap_keeps_tasks_fixed_and_only_one_task_varies():
    # Only task D varies; a stratified resample of D is {1,1} (p=1/4), {1,3} (p=1/2) or {3,3} (p=1/4):
    #   D={1,1}: pooled 0 0 1 1 1 1 2 2 -> mean(1 1 1 1) = 1.0
    #   D={1,3}: pooled 0 0 1 1 1 2 2 3 -> mean(1 1 1 2) = 1.25  (the data itself)
    #   D={3,3}: pooled 0 0 1 1 2 2 3 3 -> mean(1 1 2 2) = 1.5
    # With 2000 replicates ~500 land on each extreme, so the 2.5% / 97.5% percentiles are exactly 1.0 and 1.5.
    # (A non-stratified bootstrap would mix runs across tasks and reach e.g. 0.0 or 2.0.)
    tasks = [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [1.0, 3.0]]
    out = stratified_bootstrap_ci(tasks, seed=3)
    assert out == {"value": 1.25, "ci_low": 1.0, "ci_high": 1.5, "n_tasks": 4, "n_runs": 8}


def test_bootstrap_single_run_task_is_kept_fixed_among_others():
    # Task A has one run (kept in every replicate); only D varies. n=7, trim floor(7/4)=1 each side:
    #   D={1,1}: 0 1 1 1 1 2 2 -> mean(1 1 1 1 2) = 1.2
    #   D={1,3}: 0 1 1 1 2 2 3 -> mean(1 1 1 2 2) = 1.4
    #   D={3,3}: 0 1 1 2 2 3 3 -> mean(1 1 2 2 3) = 1.8
    out = stratified_bootstrap_ci([[0.0], [1.0, 1.0], [2.0, 2.0], [1.0, 3.0]], seed=1)
    assert out["value"] == pytest.approx(1.4)
    assert out["ci_low"] == pytest.approx(1.2) and out["ci_high"] == pytest.approx(1.8)
    assert (out["n_tasks"], out["n_runs"]) == (4, 7)


def test_bootstrap_is_reproducible_and_accepts_other_statistics():
    rng = np.random.default_rng(0)
    tasks = [rng.normal(size=n) for n in (3, 5, 4)]
    a = stratified_bootstrap_ci(tasks, seed=7, n_resamples=500)
    assert a == stratified_bootstrap_ci(tasks, seed=7, n_resamples=500)
    assert a["ci_low"] <= a["value"] <= a["ci_high"]
    mean = stratified_bootstrap_ci(tasks, np.mean, seed=7, n_resamples=500)
    assert mean["value"] == pytest.approx(np.concatenate(tasks).mean())
    assert mean["ci_low"] < mean["value"] < mean["ci_high"]


def test_bootstrap_ci_coverage_on_a_known_distribution():
    # 10 tasks x 5 runs from Normal(2, 1): by symmetry the population IQM is 2. Over 200 independent data sets the
    # 95% CI should contain 2 about 95% of the time. Bounds [0.88, 0.99]: the binomial SE of the empirical coverage
    # at n=200 is sqrt(0.95 * 0.05 / 200) ~ 1.5%, and the percentile bootstrap under-covers a little at small n
    # (resampling 5 runs within a task shrinks their variance by (5-1)/5, so the nominal 95% is closer to ~92%).
    data_rng = np.random.default_rng(12345)
    n_trials, covered = 200, 0
    for trial in range(n_trials):
        scores = data_rng.normal(2.0, 1.0, size=(10, 5))
        out = stratified_bootstrap_ci(scores, n_resamples=1000, seed=trial)
        covered += out["ci_low"] <= 2.0 <= out["ci_high"]
    assert 0.88 <= covered / n_trials <= 0.99


def test_bootstrap_errors():
    with pytest.raises(ValueError, match="at least one task"):
        stratified_bootstrap_ci([])
    with pytest.raises(ValueError, match="task 1.*NaN"):
        stratified_bootstrap_ci([[1.0, 2.0], [np.nan, 1.0]])
    with pytest.raises(ValueError, match="no runs"):
        stratified_bootstrap_ci([[1.0, 2.0], []])
    with pytest.raises(ValueError, match="confidence"):
        stratified_bootstrap_ci([[1.0, 2.0]], confidence=95)


def test_aggregate_scores_hand_values():
    scores = np.array([[1.0, 9.0], [2.0, 3.0], [4.0, 100.0], [5.0, 6.0]])
    out = aggregate_scores(scores, n_resamples=500)
    assert out["value"] == 4.5  # IQM, see test_iqm_of_tasks_by_runs_matrix_pools_all_runs
    assert out["mean"] == 130 / 8  # (1+9+2+3+4+100+5+6) / 8 = 16.25
    assert out["median"] == 5.25  # per-task means 5, 2.5, 52, 5.5 -> median (5 + 5.5) / 2
    assert out["ci_low"] <= 4.5 <= out["ci_high"]
    assert (out["n_tasks"], out["n_runs"]) == (4, 8)


def test_performance_profile_hand_values():
    tasks = [[1.0, 2.0, 3.0, 4.0], [0.0, 10.0]]
    # task A: >0 4/4, >1 3/4, >2.5 2/4, >10 0 ; task B: >0 1/2 (strict), >1 1/2, >2.5 1/2, >10 0 (strict)
    # equal weight per task -> [0.75, 0.625, 0.5, 0.0]
    assert performance_profile(tasks, [0.0, 1.0, 2.5, 10.0]) == [0.75, 0.625, 0.5, 0.0]
    assert performance_profile(tasks, 0.0) == [0.75]
    with pytest.raises(ValueError, match="NaN"):
        performance_profile([[1.0, np.nan]], [0.0])


FINAL_LOSSES = {
    "adam": {"t1": 1.0, "t2": 2.0, "t3": 3.0, "t4": math.nan},
    "velo": {"t1": 0.5, "t2": 2.0, "t3": 4.0, "t4": 1.0},
    "celo": {"t1": 0.8, "t2": 1.5, "t3": 3.5, "t4": math.inf},
    "broken": {"t1": math.nan, "t2": math.inf, "t3": math.nan, "t4": math.inf},  # diverged everywhere
}


def test_win_fractions_hand_values():
    out = win_fractions(FINAL_LOSSES)
    # velo vs adam: t1 win, t2 tie (no win), t3 loss, t4 finite vs diverged adam (win) -> 2/4
    # celo vs adam: t1 win, t2 win, t3 loss, t4 both diverged (no win) -> 2/4
    # best on each task: t1 velo (0.5), t2 celo (1.5), t3 adam (3.0), t4 velo (1.0; the rest diverged)
    assert out == {
        "adam": {"beats_reference": None, "beats_all": 0.25, "n_tasks": 4},
        "velo": {"beats_reference": 0.5, "beats_all": 0.5, "n_tasks": 4},
        "celo": {"beats_reference": 0.5, "beats_all": 0.25, "n_tasks": 4},
        "broken": {"beats_reference": 0.0, "beats_all": 0.0, "n_tasks": 4},
    }


def test_win_fractions_ties_for_best_are_not_wins_and_higher_is_better():
    losses = {"adam": {"x": 2.0, "y": 1.0}, "a": {"x": 1.0, "y": 3.0}, "b": {"x": 1.0, "y": 0.0}}
    out = win_fractions(losses)
    # x: a and b tie at 1.0 (both beat adam, neither beats all); y: b best (0.0) -> b beats all on 1/2
    assert out["a"] == {"beats_reference": 0.5, "beats_all": 0.0, "n_tasks": 2}
    assert out["b"] == {"beats_reference": 1.0, "beats_all": 0.5, "n_tasks": 2}
    # as accuracies (higher is better): x adam best (2.0), y a best (3.0)
    up = win_fractions(losses, lower_is_better=False)
    assert up["adam"]["beats_all"] == 0.5 and up["a"]["beats_all"] == 0.5 and up["b"]["beats_all"] == 0.0
    assert up["a"]["beats_reference"] == 0.5 and up["b"]["beats_reference"] == 0.0


def test_win_fractions_errors():
    with pytest.raises(ValueError, match=r"velo lacks \['t2'\]"):
        win_fractions({"adam": {"t1": 1.0, "t2": 2.0}, "velo": {"t1": 1.0}})
    with pytest.raises(ValueError, match="reference optimizer 'adam'"):
        win_fractions({"velo": {"t1": 1.0}})
    with pytest.raises(ValueError, match="empty"):
        win_fractions({})
