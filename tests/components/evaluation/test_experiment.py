"""The protocol on one task end to end (library level): every method, both rules, the long grid and horizon."""

import jax
import numpy as np
import pytest

from components.evaluation.experiment import (
    LEARNED_KINDS,
    ProtocolConfig,
    evaluate_on_task,
    learned_family,
)
from components.evaluation.summary import aggregate_all
from components.optimizers.registry import create_learned
from components.tasks.suite import build_task


@pytest.fixture(scope="module")
def result():
    lopt = create_learned("small_fc_lopt", hidden_size=4, hidden_layers=2)
    theta = lopt.init_meta_params(jax.random.PRNGKey(0))
    config = ProtocolConfig(
        num_steps=20,
        eval_every=10,
        lr_grid=(1e-2, 1e-1),
        baselines=("adam", "sgd"),
        horizon_multiplier=2,
        adam_horizon_multiplier=4,
        smoothing=0.5,
    )
    return evaluate_on_task(
        "noisy_quadratic_d100",
        build_task("noisy_quadratic_d100"),
        None,
        {},
        keys=jax.random.split(jax.random.PRNGKey(1), 2),
        config=config,
        family=learned_family(lopt, theta, "adam"),
        guard="adam",
        guard_rates={"train": 1e-1, "validation": 1e-2},
        relation={"in_distribution": False, "ood_axes": ["dataset"]},
    )


def test_every_method_under_both_rules(result):
    s = result.summary
    names = [*LEARNED_KINDS, "adam", "sgd"]
    assert set(s["train"]) == {*names, "guard"} and set(s["validation"]) == set(names)
    assert s["adam_num_steps"] == 80 and s["long_num_steps"] == 40
    # the guard's rate follows the rule of the comparison
    assert s["train"]["lgl2o"]["learning_rate"] == 1e-1 and s["validation"]["lgl2o"]["learning_rate"] == 1e-2
    assert s["train"]["hub"]["rule"] == "train" and s["validation"]["hub"]["rule"] == "validation"
    # speedups are measured against Adam's 4x grid: bound 4; tuned Adam is never faster than the envelope
    # (on this noisy quadratic, batch 1, the cumulative minimum over rates is well below any one rate)
    assert all(s["train"][o]["bound"] == 4.0 for o in names)
    assert 0.0 < s["train"]["adam"]["speedup"] <= 1.0 + 1e-9
    # no held-out data: the validation rule says it fell back to the training loss
    assert s["tuning"]["adam"]["validation"]["metric"] == "train_loss (no validation split)"
    assert s["validation"]["adam"]["final_train_loss"] is not None
    for o in ("hub", "hub_inverted"):
        share = s["train"][o]["hand_share"]["mean"]
        assert 0.0 <= share <= 1.0
    # HUB's default variant is mostly learned, the inverted one mostly hand-designed
    assert s["train"]["hub"]["hand_share"]["mean"] < s["train"]["hub_inverted"]["hand_share"]["mean"]
    assert 0.0 <= s["train"]["lgl2o"]["fallback_fraction"]["mean"] <= 1.0
    assert set(s["long"]) == {"adam", "learned", "hub", "lgl2o", "gl2o"}
    assert s["tuning"]["adam"]["long"]["horizon"] == 40
    assert len(result.curves["long"]["optimizers"]["learned"]["batch_loss_smoothed"]["mean"]) == 40
    assert result.curves["adam_envelope"]["steps"][-1] <= 80


def test_aggregate_of_one_task(result):
    agg = aggregate_all({"q": result.summary}, [*LEARNED_KINDS, "adam", "sgd"], n_resamples=20)
    assert agg["by_distribution"]["in_distribution"] is None
    assert agg["by_distribution"]["out_of_distribution"]["tasks"] == ["q"]
    assert set(agg["claims"]) == {"celo", "hub", "lgl2o", "star", "algoperf"}
    assert np.isfinite(agg["train"]["learned"]["speedup_iqm"]["value"])


def test_methods_must_include_the_learned_optimizer():
    with pytest.raises(ValueError, match="must include 'learned'"):
        ProtocolConfig(num_steps=10, eval_every=10, lr_grid=(1e-3,), baselines=("adam",), methods=("hub",))
