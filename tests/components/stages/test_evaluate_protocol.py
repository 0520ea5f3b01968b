"""The evaluate stage's bookkeeping on constructed per-task summaries (answers computed by hand).

The statistics themselves (IQM, bootstrap, censoring, AlgoPerf) are tested in ``tests/components/evaluation``;
here: that the stage feeds each rule's rows to its own aggregate, splits by distribution, builds the claim
tables, and that ``metrics/headline.json`` flattens it per optimizer and rule.
"""

import pytest

from components.evaluation.summary import aggregate_all, headline
from components.stages import evaluate

NAMES = ["learned", "hub", "hub_inverted", "lgl2o", "gl2o", "adam", "sgdm"]


def _stats(v):
    return {"mean": v, "std": 0.0, "min": v, "max": v}


def _train(final, speedup, ratio, *, censored=False, fallback=None, steps=None):
    row = {
        "final_train_loss": _stats(final),
        "speedup_per_seed": [speedup, speedup],
        "censored_per_seed": [censored, censored],
        "final_loss_ratio_per_seed": [ratio, ratio],
        "diverged_seeds": 0,
        "steps_to_target": steps,
    }
    if fallback is not None:
        row["fallback_fraction"] = _stats(fallback)
    return row


def _val(acc, ttt, fallback=None):
    row = {
        "final_test_acc": _stats(acc),
        "final_test_loss": _stats(1 - acc),
        "diverged_seeds": 0,
        "time_to_target": ttt,
    }
    if fallback is not None:
        row["fallback_fraction"] = _stats(fallback)
    return row


def _task(in_distribution: bool, learned_final: float, hub_acc: float):
    """Training losses: learned ``learned_final``, hub 0.45, others 0.6-0.9; test accuracies with HUB at ``hub_acc``."""
    train = {
        "learned": _train(learned_final, 4.0, 1.2, censored=True, steps=10),
        "hub": _train(0.45, 3.0, 1.3, steps=12),
        "hub_inverted": _train(0.7, 0.8, 0.86),
        "lgl2o": _train(0.55, 1.5, 1.1, fallback=0.2, steps=20),
        "gl2o": _train(0.9, 0.5, 0.67, fallback=0.6),
        "adam": _train(0.6, 1.0, 1.0, steps=40),
        "sgdm": _train(0.8, 0.5, 0.75),
        "guard": _train(0.58, 1.0, 1.03, steps=30),
    }
    val = {
        "learned": _val(0.80, 50.0),
        "hub": _val(hub_acc, 40.0),
        "hub_inverted": _val(0.81, 100.0),
        "lgl2o": _val(0.84, 80.0, fallback=0.2),
        "gl2o": _val(0.70, None, fallback=0.6),
        "adam": _val(0.85, 100.0),
        "sgdm": _val(0.83, 200.0),
    }
    long = {o: _train(0.5, 1.0, 1.0) for o in ("learned", "hub", "lgl2o", "gl2o", "adam")}
    return {
        "num_steps": 100,
        "long_num_steps": 200,
        "relation": {"in_distribution": in_distribution, "ood_axes": [] if in_distribution else ["dataset"]},
        "train": train,
        "validation": val,
        "long": long,
    }


SUMMARIES = {"a": _task(False, 0.5, 0.90), "b": _task(False, 0.65, 0.84), "c": _task(True, 0.3, 0.86)}


def test_aggregate_uses_each_rules_rows_and_splits_by_distribution():
    agg = aggregate_all(SUMMARIES, NAMES, n_resamples=100, seed=0)
    tr, va = agg["train"], agg["validation"]
    # learned: every run censored at 4 -> IQM 4 flagged as a lower bound
    assert tr["learned"]["speedup_iqm"]["value"] == 4.0 and tr["learned"]["speedup_iqm"]["lower_bound"]
    assert not tr["hub"]["speedup_iqm"]["lower_bound"]
    # training loss: learned beats Adam (0.6) on a and c, not b (0.65)
    assert tr["learned"]["beats_adam_fraction"] == pytest.approx(2 / 3)
    # beats all on training loss: hub (0.45) except on c where learned has 0.3
    assert tr["hub"]["beats_all_fraction"] == pytest.approx(2 / 3)
    assert tr["lgl2o"]["fallback_rate"] == pytest.approx(0.2) and tr["learned"]["fallback_rate"] is None
    # validation rule, test accuracy: hub beats Adam (0.85) on a (0.90) and c (0.86), so it beats all there too
    assert va["hub"]["test_beats_adam_fraction"] == pytest.approx(2 / 3)
    assert va["hub"]["test_beats_all_fraction"] == pytest.approx(2 / 3)
    # inverted HUB is not HUB's competitor: at 0.91 it would take task a from HUB, yet HUB keeps it
    swapped = {
        t: {**s, "validation": {**s["validation"], "hub_inverted": _val(0.91, 100.0)}} for t, s in SUMMARIES.items()
    }
    assert aggregate_all(swapped, NAMES, n_resamples=10)["validation"]["hub"][
        "test_beats_all_fraction"
    ] == pytest.approx(2 / 3)
    # AlgoPerf: hub is fastest everywhere (40) -> 1; Adam at 100/40 = 2.5 -> (4 - 2.5) / 3 = 0.5; gl2o never -> 0
    assert va["hub"]["algoperf_score"] == 1.0 and va["adam"]["algoperf_score"] == pytest.approx(0.5)
    assert va["gl2o"]["algoperf_score"] == 0.0
    # in / out of distribution: c alone is in
    split = agg["by_distribution"]
    assert split["in_distribution"]["tasks"] == ["c"] and split["out_of_distribution"]["tasks"] == ["a", "b"]
    assert split["out_of_distribution"]["train"]["learned"]["beats_adam_fraction"] == 0.5
    # stability at the long horizon, for the learned family and Adam
    assert set(agg["long"]) == {"adam", "learned", "hub", "lgl2o", "gl2o"}


def test_claim_tables():
    claims = aggregate_all(SUMMARIES, NAMES, n_resamples=100, seed=0)["claims"]
    assert set(claims) == {"celo", "hub", "lgl2o", "star", "algoperf"}
    hub = claims["hub"]["rows"]["hub"]
    assert hub["beats_learned_fraction"] == 1.0 and hub["beats_adam_fraction"] == pytest.approx(2 / 3)
    lg = claims["lgl2o"]["rows"]["lgl2o"]
    # (0.55 - 0.58) / 0.58 on every task: never worse than the guard
    assert lg["worst_excess_over_guard"] == pytest.approx(-0.03 / 0.58) and lg["within_tolerance_fraction"] == 1.0
    gl = claims["lgl2o"]["rows"]["gl2o"]
    assert gl["worst_excess_over_guard"] == pytest.approx(0.32 / 0.58) and gl["within_tolerance_fraction"] == 0.0
    assert lg["tasks_reaching_target"] == 1.0 and gl["tasks_reaching_target"] == 0.0
    assert claims["lgl2o"]["rows"]["guard"]["steps_to_target"] == {"a": 30, "b": 30, "c": 30}
    assert "1.86" in claims["celo"]["seed"] and "94%" in claims["hub"]["seed"]


def test_headline_flattens_per_optimizer_and_rule():
    agg = aggregate_all(SUMMARIES, NAMES, n_resamples=100, seed=0)
    head = headline(agg)
    assert list(head) == NAMES
    learned = head["learned"]
    assert learned["train_rule"]["speedup_iqm"] == 4.0 and learned["train_rule"]["speedup_iqm_lower_bound"] == 1
    assert learned["validation_rule"]["test_beats_adam_fraction"] == pytest.approx(0.0)
    assert learned["out_of_distribution"]["tasks"] == 2 and learned["in_distribution"]["tasks"] == 1
    assert "beats_adam_fraction" not in head["adam"]["train_rule"]  # None is left out
    assert head["lgl2o"]["train_rule"]["fallback_rate"] == pytest.approx(0.2)
    assert "fallback_rate" not in learned["train_rule"]
    flat = [v for row in head.values() for sec in row.values() for v in sec.values()]
    assert all(isinstance(v, float | int) for v in flat)


def test_plot_rows_are_long_form_one_line_per_optimizer():
    curves = {
        "optimizers": {
            "learned": {"batch_loss_smoothed": {"mean": [3.0, 2.0, float("nan")]}},
            "adam": {"batch_loss_smoothed": {"mean": [3.0, 2.5, 2.25]}},
        }
    }
    rows = evaluate._plot_rows(curves, ["learned", "adam"])
    assert rows == [
        {"step": 1, "optimizer": "learned", "loss": 3.0},
        {"step": 2, "optimizer": "learned", "loss": 2.0},
        {"step": 3, "optimizer": "learned", "loss": None},
        {"step": 1, "optimizer": "adam", "loss": 3.0},
        {"step": 2, "optimizer": "adam", "loss": 2.5},
        {"step": 3, "optimizer": "adam", "loss": 2.25},
    ]
