"""The evaluate stage's wall-clock metrics: per task and optimizer, and the medians and sums across tasks."""

import pytest

from components.stages.evaluate import timing_metrics


def _result(name: str, adam_us: float, learned_us: float) -> dict:
    steps = 1000
    t = {
        "adam": {"compile_seconds": 2.0, "run_seconds": adam_us * steps / 1e6, "steps": steps},
        "learned": {"compile_seconds": 5.0, "run_seconds": learned_us * steps / 1e6, "steps": steps},
    }
    return {"name": name, "timings": t}


def test_step_cost_per_task_and_across_tasks():
    m = timing_metrics([_result("a", 10.0, 30.0), _result("b", 20.0, 40.0), _result("c", 10.0, 50.0)])
    assert m["a/learned/step_us"] == pytest.approx(30.0)
    assert m["b/adam/compile_seconds"] == 2.0 and m["b/adam/run_seconds"] == pytest.approx(0.02)
    assert m["timing/learned/step_us"] == pytest.approx(40.0)  # median of 30, 40, 50
    assert m["timing/adam/step_us"] == pytest.approx(10.0)
    assert m["timing/learned/compile_seconds"] == pytest.approx(15.0)
    assert m["timing/learned/run_seconds"] == pytest.approx(0.12)
    assert not any("vs_adam" in k for k in m)  # Adam's runs are scheduled differently: no ratio is formed


def test_results_without_timings_give_no_timing_metrics():
    assert timing_metrics([{"name": "a", "timings": {}}, {"name": "b"}]) == {}
