"""The guard-rate selection of the calibrate stage: the evaluation's tuning function with a tie-break."""

import numpy as np

from components.evaluation.protocol import tune


def _pick(final, alone=None):
    # [H, runs=1, T=1] curves whose last (only) point is the final loss; smoothing 0 reads it as is
    runs = np.asarray(final, np.float64)[:, None, None]
    return tune([1e-3, 1e-2, 1e-1][: len(final)], runs, rule="train", horizon=1, smoothing=0.0, tiebreak=alone).index


def test_lowest_guarded_loss_wins():
    assert _pick([0.5, 0.3, 0.4], np.array([0.1, 0.9, 0.9])) == 1


def test_ties_go_to_the_best_guard_alone():
    # the guard was never used: every rate gives the same guarded loss
    assert _pick([0.3, 0.3, 0.3], np.array([0.9, 0.2, 0.5])) == 1


def test_non_finite_losses_never_win():
    assert _pick([np.nan, 0.4], np.array([0.1, 0.2])) == 1
