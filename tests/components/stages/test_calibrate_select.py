"""The guard-rate selection of the calibrate stage."""

import numpy as np

from components.stages.calibrate import _select


def test_lowest_guarded_loss_wins():
    assert _select(np.array([0.5, 0.3, 0.4]), np.array([0.1, 0.9, 0.9])) == 1


def test_ties_go_to_the_best_guard_alone():
    # the guard was never used: every rate gives the same guarded loss
    assert _select(np.array([0.3, 0.3, 0.3]), np.array([0.9, 0.2, 0.5])) == 1


def test_non_finite_losses_never_win():
    assert _select(np.array([np.nan, 0.4]), np.array([0.1, 0.2])) == 1
