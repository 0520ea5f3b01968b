"""The benchmark scripts run, write their provenance, and measure what the params files configure."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks import meta_train_throughput, optimizer_step
from components.stages import meta_train as stage_meta_train
from flows.params_io import load_params

REPO = Path(__file__).resolve().parents[2]


def test_the_celo_recipe_is_read_from_the_gpu_preset():
    """The throughput benchmark reads params/celo_gpu.yaml itself (no copy to keep in sync): the
    configs it times are those the pipeline would run."""
    params = load_params(REPO / "params" / "celo_gpu.yaml")
    mt = params.meta_train
    preset = meta_train_throughput.celo_recipe()
    assert preset.lopt == mt.lopt == "celo"
    for phase, want in zip(preset.phases, mt.phase_list(), strict=True):
        assert phase.config == stage_meta_train._config(params, mt.phase_steps(want))
        assert phase.lopt_hyperparams == mt.phase_hyperparams(want)
    summary = meta_train_throughput.recipe_summary(preset)
    assert summary["phases"] == {p.name: p.num_outer_steps for p in mt.phases}
    assert (summary["num_tasks"], summary["trunc_length"], summary["steps_per_call"]) == (8, 50, 10)


def test_the_celo_recipe_refuses_another_preset():
    with pytest.raises(ValueError, match="needs meta_train.task_family"):
        meta_train_throughput.celo_recipe(REPO / "params" / "tiny.yaml")


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


def test_seed_study_speedup_reads_the_recorded_envelope():
    """meta_train_seeds' speedup: the step at which the recorded (subsampled) tuned-Adam envelope reaches
    the candidate's smoothed final loss, over the horizon; censored at the envelope's end; 0 when not finite."""
    from benchmarks.meta_train_seeds import parse_variants, speedup_from_envelope

    envelope = {"steps": [1, 11, 21, 31], "loss": [4.0, 3.0, 2.0, 1.0]}  # Adam reaches 2.5 at step 16
    flat = np.full((2, 10), 2.5)
    got = speedup_from_envelope(flat, envelope, num_steps=10, decay=0.0)
    assert got == {"speedup": pytest.approx(1.6), "censored": False, "target_loss": 2.5}
    assert speedup_from_envelope(np.full((2, 10), 0.5), envelope, 10, 0.0)["censored"] is True
    assert speedup_from_envelope(np.full((2, 10), 0.5), envelope, 10, 0.0)["speedup"] == pytest.approx(4.1)
    assert speedup_from_envelope(np.full((2, 10), np.nan), envelope, 10, 0.0)["speedup"] == 0.0
    assert parse_variants([["fast", "outer_lr=0.01", "grad_clip_norm=null"]]) == {
        "base": {},
        "fast": {"outer_lr": 0.01, "grad_clip_norm": None},
    }
    with pytest.raises(SystemExit, match="not KEY=VALUE"):
        parse_variants([["bad", "outer_lr"]])
