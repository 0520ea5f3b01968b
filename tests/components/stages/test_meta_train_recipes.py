"""The meta-training recipes as params presets (Celo phase 1 + 2, STAR, L3RS, the tiny preset), run
through the meta_train stage on data prepared from the mirror, at toy sizes."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from components.optimizers import load
from components.stages import inputs, meta_train, paths, prepare_data, pretrain
from components.stages.common import StageContext
from components.stages.fetch import MIRROR_ENV
from components.stages.params import PipelineParams
from components.tasks.families import SingleTaskFamily

REPO = Path(__file__).resolve().parents[3]


def _preset(name: str, **meta_train_overrides) -> PipelineParams:
    raw = yaml.safe_load((REPO / "params" / f"{name}.yaml").read_text())
    raw["data"]["max_train_examples"] = 1000
    raw["meta_train"].update(meta_train_overrides)
    return PipelineParams.model_validate(raw)


@pytest.fixture
def prepared(tmp_path, monkeypatch, mirror):
    monkeypatch.setenv(MIRROR_ENV, str(mirror))

    def prepare(params: PipelineParams) -> Path:
        prepare_data.run(params, tmp_path, StageContext(log=lambda _: None))
        return tmp_path

    return prepare


def load_meta(path: Path):
    return load(path)


def test_celo_phase_2_continues_phase_1_and_changes_only_the_scheduler(prepared):
    params = _preset(
        "celo_cpu",
        num_tasks=1,
        trunc_length=4,
        min_unroll=8,
        max_unroll=16,
        log_every=2,
        steps_per_call=2,
        checkpoint_every=None,
        phases=[
            {"name": "phase1", "lopt_hyperparams": {"train_phase": 1}, "num_outer_steps": 4},
            {"name": "phase2", "lopt_hyperparams": {"train_phase": 2}, "num_outer_steps": 4},
        ],
    )
    root = prepared(params)
    families, datas = inputs.build_families(params, root)
    assert len(families) == len(datas) == 4  # the preset: one estimator per dataset (Celo: 8 tasks each)
    assert [f.family.datasets for f in families] == [(d,) for d in params.meta_train.task_family.datasets]
    # (several families are exercised in tests/components/meta/test_train_loop.py; one Celo family
    # compiles in ~35 s per phase on 2 cores, so this test runs the two phases on one)
    params = params.model_copy(
        update={
            "meta_train": params.meta_train.model_copy(
                update={
                    "task_family": params.meta_train.task_family.model_copy(update={"estimator_per_dataset": False})
                }
            )
        }
    )
    lines: list[str] = []
    result = meta_train.run(params, root, StageContext(log=lines.append))
    assert any("2 phase(s) [phase1, phase2]" in line for line in lines), lines
    k_init = jax.random.split(jax.random.PRNGKey(params.seed), 3)[0]  # meta_train's init key for phase 1
    init = jax.device_get(load_meta(root / paths.MODEL_DIR)[0].init_meta_params(k_init))
    lopt1, p1, _ = load_meta(root / paths.MODEL_DIR / "phases" / "phase1")
    lopt2, p2, _ = load_meta(root / paths.MODEL_DIR / "phases" / "phase2")
    final_lopt, final, config = load_meta(root / paths.MODEL_DIR)
    assert (lopt1.train_phase, lopt2.train_phase, final_lopt.train_phase) == (1, 2, 2)

    def same(a, b):
        return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))

    # phase 1 (seeded like phase 1 of the run) trained the MLP and left the scheduler at its init
    assert same(p1["rnn_params"], init["rnn_params"]) and same(p1["lstm_init_state"], init["lstm_init_state"])
    assert not same(p1["ff_mod_stack"], init["ff_mod_stack"])
    # phase 2 started from phase 1 and changed the scheduler only
    assert same(p2["ff_mod_stack"], p1["ff_mod_stack"])
    assert not same(p2["rnn_params"], p1["rnn_params"])
    assert same(final, p2)
    assert [p["name"] for p in config["phases"]] == ["phase1", "phase2"]
    assert [s for s, _ in result.curves["meta_loss"]] == [2, 4, 6, 8]  # one curve across both phases
    assert np.isfinite(result.metrics["meta_loss_last"])


def test_single_task_recipes_star_and_l3rs(prepared):
    star = _preset(
        "star_cpu",
        num_tasks=2,
        trunc_length=4,
        min_unroll=8,
        max_unroll=16,
        num_outer_steps=2,
        log_every=1,
        steps_per_call=1,
        checkpoint_every=None,
    )
    root = prepared(star)
    family, data = inputs.build_family(star, root)
    assert isinstance(family, SingleTaskFamily) and family.name == "fashion_mnist_mlp_2x32"
    result = meta_train.run(star, root, StageContext(log=lambda _: None))
    assert np.isfinite(result.metrics["meta_loss_last"])
    assert json.loads((root / paths.MODEL_DIR / "config.json").read_text())["data_hashes"].keys() == {"fashion_mnist_8"}

    # L3RS: specialised to one fine-tuning task (pre-trained by the pretrain stage), full ES over whole runs
    l3rs = _preset(
        "l3rs_cpu", num_tasks=2, min_unroll=12, max_unroll=12, num_outer_steps=2, log_every=1, checkpoint_every=None
    )
    prepare_data.run(l3rs, root, StageContext(log=lambda _: None))
    with pytest.raises(FileNotFoundError, match="pretrain"):
        meta_train.run(l3rs, root, StageContext(log=lambda _: None))
    pretrain.run(
        l3rs.model_copy(update={"pretrain": l3rs.pretrain.model_copy(update={"num_steps": 20})}),
        root,
        StageContext(log=lambda _: None),
    )
    lines: list[str] = []
    result = meta_train.run(l3rs, root, StageContext(log=lines.append))
    assert any("es: 1 estimator(s) x 2 tasks x 2 antithetic x 12-12 inner steps" in line for line in lines), lines
    assert np.isfinite(result.metrics["meta_loss_last"])
    assert result.metrics["inner_steps_per_second"] > 0
    hashes = json.loads((root / paths.MODEL_DIR / "config.json").read_text())["data_hashes"]
    assert set(hashes) == {"digits_8", "mnist_8"}  # the task's data and its pre-training data
    load(root / paths.MODEL_DIR).make(num_steps=12)


def test_tiny_preset_meta_training_of_adafac_mlp_lopt_lowers_the_meta_loss(prepared):
    """The tiny preset's settings (only longer): 2.32 -> ~1.9 in 200 outer steps (measured)."""
    params = _preset("tiny", num_outer_steps=200, log_every=20, steps_per_call=10)
    assert params.meta_train.lopt == "adafac_mlp_lopt"
    root = prepared(params)
    result = meta_train.run(params, root, StageContext(log=lambda _: None))
    curve = [v for _, v in result.curves["meta_loss"]]
    assert np.all(np.isfinite(curve))
    first, last = np.mean(curve[:2]), np.mean(curve[-3:])
    assert last < first - 0.2, curve


def test_resume_after_a_finished_run_reproduces_it(prepared):
    params = _preset("tiny", num_outer_steps=4, log_every=2, checkpoint_every=2)
    root = prepared(params)
    meta_train.run(params, root, StageContext(log=lambda _: None))
    _, first, _ = load_meta(root / paths.MODEL_DIR)
    ckpt = root / paths.CHECKPOINT_DIR / "main.npz"
    assert ckpt.exists()
    lines: list[str] = []
    meta_train.run(params, root, StageContext(log=lines.append, resume=True))
    assert any("resumed from" in line and "outer step 4/4" in line for line in lines), lines
    _, again, _ = load_meta(root / paths.MODEL_DIR)
    for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(a, b)
    # other settings: the checkpoint is refused with a message naming it
    other = _preset("tiny", num_outer_steps=4, log_every=2, checkpoint_every=2, sigma=0.02)
    with pytest.raises(ValueError, match="main.npz was written by a run with other settings"):
        meta_train.run(other, root, StageContext(log=lambda _: None, resume=True))


def test_celo2_recipe_runs_through_the_stage_and_saves_a_loadable_celo2(prepared):
    params = _preset(
        "celo2_cpu",
        num_tasks=1,
        trunc_length=4,
        min_unroll=8,
        max_unroll=16,
        num_outer_steps=4,
        log_every=2,
        steps_per_call=2,
        checkpoint_every=None,
    )
    root = prepared(params)
    families, _ = inputs.build_families(params, root)
    assert len(families) == 4  # Celo's task distribution: one estimator per dataset
    # one family keeps the test to one compilation (as the Celo recipe test does)
    task_family = params.meta_train.task_family.model_copy(update={"estimator_per_dataset": False})
    params = params.model_copy(update={"meta_train": params.meta_train.model_copy(update={"task_family": task_family})})
    result = meta_train.run(params, root, StageContext(log=lambda _: None))
    lopt, theta, config = load_meta(root / paths.MODEL_DIR)
    assert lopt.name == "celo2" and lopt.orthogonalize and lopt.mult_1d == 20.0
    k_init = jax.random.split(jax.random.PRNGKey(params.seed), 3)[0]  # meta_train's init key
    init = jax.device_get(lopt.init_meta_params(k_init))
    leaves = list(zip(jax.tree_util.tree_leaves(init), jax.tree_util.tree_leaves(theta), strict=True))
    assert all(np.all(np.isfinite(b)) for _, b in leaves)
    assert sum(not np.array_equal(a, b) for a, b in leaves) >= 10  # PES moved the MLP's weights
    assert [s for s, _ in result.curves["meta_loss"]] == [2, 4]
    assert np.isfinite(result.metrics["meta_loss_last"])


@pytest.mark.parametrize("name", ["mulo_cpu", "star_cpu", "l3rs_cpu", "celo_cpu", "default"])
def test_a_dump_of_the_params_validates_again(name):
    """params.yaml and a zoo workspace's record hold model_dump(): every field, task-family defaults included."""
    params = _preset(name)
    dumped = params.model_dump(mode="json")
    assert PipelineParams.model_validate(dumped) == params
    if params.meta_train.task_family.task is not None:  # a real clash with the one task is still refused
        dumped["meta_train"]["task_family"]["batch_size"] = params.meta_train.task_family.batch_size + 1
        with pytest.raises(ValueError, match=r"fixes the model and data: remove \['batch_size'\]"):
            PipelineParams.model_validate(dumped)


def test_diverging_inner_losses_are_counted_and_fail_the_stage_without_any_output(prepared):
    """The documented rule (issue 20): inf/nan inner losses are counted; a run whose last meta-loss point is
    non-finite fails with the fix named and writes no model, metrics or registration input."""
    params = _preset(
        "tiny", num_outer_steps=4, log_every=2, checkpoint_every=None, lopt_hyperparams={"step_mult": 1e30}
    )
    root = prepared(params)
    lines: list[str] = []
    with pytest.raises(FloatingPointError, match=r"100% of the last window's estimates had an inf/nan") as err:
        meta_train.run(params, root, StageContext(log=lines.append))
    assert any("nonfinite_loss=" in line for line in lines), lines  # the progress line counts them as they come
    assert "meta_train.outer_lr" in str(err.value)
    assert not (root / paths.MODEL_DIR).exists() and not (root / paths.META_METRICS).exists()


def test_metrics_and_model_hold_no_wall_clock_values_and_the_run_log_does(prepared):
    """Identical runs hash alike (issue 20): timings, the resume point and the commit go to the run log
    (.l2o/runs/meta_train.json, git-ignored) and MLflow (the StageResult), not the DVC-tracked outputs."""
    params = _preset("tiny", num_outer_steps=4, log_every=2, checkpoint_every=2)
    root = prepared(params)
    result = meta_train.run(params, root, StageContext(log=lambda _: None))
    files = [root / paths.META_METRICS, root / paths.MODEL_DIR / "config.json"]
    first = [f.read_bytes() for f in files] + [(root / paths.MODEL_DIR / "weights.safetensors").read_bytes()]
    metrics = json.loads(files[0].read_text())
    assert "seconds" not in metrics and "inner_steps_per_second" not in metrics and metrics["nonfinite_losses"] == 0
    config = json.loads(files[1].read_text())
    assert "git_commit" not in config and all("resumed_from" not in row for row in config["phases"])
    assert result.metrics["seconds"] > 0 and result.metrics["inner_steps_per_second"] > 0  # for MLflow
    log = json.loads((root / paths.RUN_LOG_DIR / "meta_train.json").read_text())
    assert log["seconds"] > 0 and log["resumed_from"] == [0] and "git_commit" in log
    # a resumed run (restored at its last step) writes byte-identical outputs; only the run log differs
    meta_train.run(params, root, StageContext(log=lambda _: None, resume=True))
    again = [f.read_bytes() for f in files] + [(root / paths.MODEL_DIR / "weights.safetensors").read_bytes()]
    assert again == first
    assert json.loads((root / paths.RUN_LOG_DIR / "meta_train.json").read_text())["resumed_from"] == [4]
