"""The benchmark scripts run, write their provenance, and measure what the params files configure."""

import json
import math
from pathlib import Path

from benchmarks import meta_train_throughput, optimizer_step
from flows.params_io import load_params

REPO = Path(__file__).resolve().parents[2]


def test_celo_recipe_constants_match_the_gpu_preset():
    """The throughput benchmark runs without pydantic on a GPU worker, so it mirrors the preset."""
    mt = load_params(REPO / "params" / "celo_gpu.yaml").meta_train
    recipe = meta_train_throughput.CELO_RECIPE
    assert recipe["lopt"] == mt.lopt
    for key in ("num_tasks", "trunc_length", "min_unroll", "max_unroll", "sigma", "steps_per_call"):
        assert recipe[key] == getattr(mt, key), key
    assert recipe["phases"] == {p.name: p.num_outer_steps for p in mt.phases}
    assert mt.estimator == "pes" and mt.task_family.preset == "celo" and mt.task_family.estimator_per_dataset


def test_optimizer_step_times_every_impl_against_adam(tmp_path, capsys):
    out = tmp_path / "step.json"
    optimizer_step.main(
        ["--sizes", "2e3", "--only", "small_fc_lopt", "sgd", "--impls", "reference", "fused", "single_pass",
         "--repeats", "2", "--rounds", "1", "--out", str(out)]
    )  # fmt: skip
    doc = json.loads(out.read_text())
    assert {"date", "backend", "device", "jax", "optax", "python"} <= set(doc)
    labels = [r["optimizer"] for r in doc["results"]]
    assert labels == ["adam", "small_fc_lopt[reference]", "small_fc_lopt[fused]", "small_fc_lopt[single_pass]", "sgd"]
    for row in doc["results"]:
        assert row["ms"] > 0 and math.isfinite(row["ratio_to_adam"])
    table = capsys.readouterr().out
    assert "small_fc_lopt[single_pass]" in table and "1.00x" in table
