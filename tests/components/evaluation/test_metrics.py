"""Speedup over tuned Adam (learned_optimization's envelope normaliser) and the other metrics."""

import numpy as np
import pytest

from components.evaluation import adam_envelope, ema, final_loss_ratio, speedup_over_adam, steps_to_reach


def test_ema_is_bias_corrected_and_identity_at_zero():
    x = np.array([2.0, 2.0, 2.0])
    np.testing.assert_allclose(ema(x, 0.9), x)
    np.testing.assert_allclose(ema(np.array([1.0, 3.0]), 0.0), [1.0, 3.0])
    np.testing.assert_allclose(ema(np.array([0.0, 1.0]), 0.5), [0.0, 0.5 / 0.75])


def test_steps_to_reach_interpolates():
    curve = np.array([4.0, 3.0, 2.0, 1.0])
    assert steps_to_reach(curve, 4.0) == 1.0
    assert steps_to_reach(curve, 2.5) == pytest.approx(2.5)  # half way from step 2 (3.0) to step 3 (2.0)
    assert steps_to_reach(curve, 0.5) is None


def test_envelope_takes_the_best_learning_rate_per_step_and_is_monotone():
    curves = np.array([[3.0, 1.0, 2.0, 2.0], [2.0, 2.0, 0.5, np.nan]])
    np.testing.assert_allclose(adam_envelope(curves, 0.0), [2.0, 1.0, 0.5, 0.5])


def test_speedup_known_values():
    adam = np.array([np.linspace(10.0, 1.0, 100)])  # reaches loss 5.5 at step 50.5
    fast = np.linspace(10.0, 5.5, 10)  # ends at 5.5 after 10 steps
    out = speedup_over_adam(adam, fast, decay=0.0)
    assert out["speedup"] == pytest.approx(50.5 / 10) and not out["censored"]
    # Adam compared with itself: speedup 1
    assert speedup_over_adam(adam, adam[0], decay=0.0)["speedup"] == pytest.approx(1.0)
    # better than Adam ever gets: only a lower bound
    better = speedup_over_adam(adam, np.full(100, 0.5), decay=0.0)
    assert better["censored"] and better["speedup"] == better["bound"] == 1.0
    # diverged: speedup 0
    assert speedup_over_adam(adam, np.array([1.0, np.inf]), decay=0.0)["speedup"] == 0.0


def test_final_loss_ratio():
    assert final_loss_ratio(1.0, 0.5) == 2.0
    assert final_loss_ratio(1.0, float("nan")) == 0.0
