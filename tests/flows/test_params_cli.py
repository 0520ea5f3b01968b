"""Params validation: every file under params/ loads; every kind of bad input fails before anything runs."""

import os
from pathlib import Path

import pytest
import yaml

from components.stages.params import PipelineParams, params_hash
from flows.cli import main
from flows.params_io import ParamsError, apply_overrides, dump_params, load_params

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((REPO / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_every_params_file_validates(path):
    params = load_params(path)
    assert isinstance(params, PipelineParams)


def test_resolved_params_yaml_matches_default():
    # params.yaml (what DVC reads) is the resolved default experiment
    assert load_params(REPO / "params.yaml") == load_params(REPO / "params" / "default.yaml")


def test_the_resolved_params_yaml_is_byte_identical_to_the_dump_of_default():
    """Field names, order and defaults of the models are what params.yaml (and DVC) hold."""
    written = dump_params(load_params(REPO / "params" / "default.yaml"), "params/default.yaml")
    assert written == (REPO / "params.yaml").read_text()


def test_dvc_lock_records_the_params_the_models_give():
    resolved = load_params(REPO / "params.yaml").model_dump(mode="json")
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())
    checked = 0
    for stage, entry in lock["stages"].items():
        for dotted, value in entry.get("params", {}).get("params.yaml", {}).items():
            node = resolved
            for part in dotted.split("."):
                node = node[part]
            assert node == value, f"{stage}: {dotted}"
            checked += 1
    assert checked >= 10


# params_hash of every params file: the models' model_dump(mode="json") of each, canonical. A change
# here re-runs every DVC stage and splits MLflow's runs by params hash: update a pin only when you
# meant to change that experiment (or the models' fields / defaults).
PARAMS_HASHES = {
    "celo_cpu.yaml": "32f89bf8c539ed37",
    "celo_gpu.yaml": "7e37cdae5671853f",
    "celo2_cpu.yaml": "0b4d3475405d659d",
    "celo2_gpu.yaml": "54f15bfbdbf287a9",
    "default.yaml": "f2d7789d5b3870c1",
    "l3rs_cpu.yaml": "f518f1ea3f42f1c9",
    "l3rs_gpu.yaml": "35be03ac5bb74175",
    "mulo_cpu.yaml": "9d3fbb3268d1c577",
    "star_cpu.yaml": "c539cd48cb1cd7fd",
    "star_gpu.yaml": "4e99f83cb087489a",
    "tiny.yaml": "97c261483ab22aa5",
}


def test_params_hashes_are_pinned():
    got = {p.name: params_hash(load_params(p)) for p in sorted((REPO / "params").glob("*.yaml"))}
    assert got == PARAMS_HASHES
    assert params_hash(PipelineParams()) == "c901ced51165b7f7"


def test_any_learned_optimizer_and_baseline_guard_are_selectable():
    params = load_params(
        REPO / "params" / "tiny.yaml",
        ["meta_train.lopt=celo", "meta_train.lopt_hyperparams.lstm_hidden_size=8", "calibrate.guard=lion"],
    )
    assert params.meta_train.lopt == "celo" and params.meta_train.lopt_hyperparams == {"lstm_hidden_size": 8}
    assert params.calibrate.guard == "lion"


def test_set_overrides_nested_values():
    params = load_params(REPO / "params" / "tiny.yaml", ["evaluate.num_seeds=5", "evaluate.lr_grid.max=0.3"])
    assert params.evaluate.num_seeds == 5
    assert params.evaluate.lr_grid.max == 0.3
    assert params.evaluate.lr_grid.num == 7  # untouched sibling kept


def test_override_syntax_errors_are_listed():
    with pytest.raises(ParamsError, match=r"expected KEY=VALUE") as err:
        apply_overrides({"seed": 0}, ["seed", "seed.x=1"], "cli")
    assert "seed is not a section" in str(err.value)


BAD_CASES = {
    # issue 20: `outer_lr: .inf` used to validate and meta-train a NaN optimizer
    "non_finite": (
        {"meta_train": {"outer_lr": float("inf"), "lopt_hyperparams": {"step_mult": float("nan")}}},
        ["evaluate.smoothing=-inf", "calibrate.lr_grid.max=inf"],
        [
            "meta_train.outer_lr: Input should be a finite number (got inf)",
            "evaluate.smoothing: Input should be a finite number",
            "calibrate.lr_grid.max: Input should be a finite number",
        ],
    ),
    "non_finite_hyperparameter": (
        {"meta_train": {"lopt_hyperparams": {"step_mult": float("inf")}}},
        [],
        ["meta_train.lopt_hyperparams: ['step_mult'] must be finite numbers (inf and nan are not allowed)"],
    ),
    "unknown_key": (
        {"evaluate": {"num_seedz": 3}},
        [],
        ["evaluate.num_seedz: unknown key"],
    ),
    "wrong_type": (
        {"meta_train": {"num_outer_steps": "many"}},
        [],
        ["meta_train.num_outer_steps: Input should be a valid integer"],
    ),
    "out_of_range": (
        {"seed": -1, "data": {"image_size": 64}},
        ["calibrate.lr_grid.min=-1"],
        [
            "seed: Input should be greater than or equal to 0",
            "data.image_size: Input should be less than or equal to 28",
            "calibrate.lr_grid.min: Input should be greater than 0",
        ],
    ),
    "inconsistent": (
        {"meta_train": {"min_unroll": 500, "max_unroll": 100}},
        ["evaluate.eval_every=300"],
        [
            "meta_train: min_unroll (500) must be <= max_unroll (100)",
            "evaluate: task 'digits_mlp' trains 1000 steps, not a multiple of eval_every (300)",
        ],
    ),
    "dataset_not_prepared": (
        {"data": {"datasets": ["mnist"]}},
        [],
        [
            "meta_train.task_family needs prepared dataset 'fashion_mnist', which data.datasets does not"
            " prepare (['mnist']): add 'fashion_mnist' to data.datasets"
        ],
    ),
    "bad_choice": (
        {"evaluate": {"tasks": ["imagenet_resnet"]}},
        [],
        ["evaluate.tasks.0: unknown task 'imagenet_resnet'; choose one of ['cifar10_conv_32x64x64'"],
    ),
    "unknown_optimizer": (
        {"meta_train": {"lopt": "small_fc_lop"}},
        ["calibrate.guard=celo"],
        [
            "meta_train.lopt: Unknown optimizer 'small_fc_lop'. Known names",
            "'celo' is a learned, expected a baseline optimizer: one of ['adabelief'",
        ],
    ),
    "unknown_suite": (
        {"evaluate": {"suite": "heldin"}},
        [],
        [
            "evaluate.suite: unknown suite 'heldin';"
            " choose one of ['convex', 'heldout', 'legacy', 'mup', 'ood', 'smoke']"
        ],
    ),
    "suite_and_tasks": (
        {"evaluate": {"suite": "legacy", "tasks": ["digits_mlp"]}},
        [],
        ["evaluate: give either suite ('legacy') or tasks, not both"],
    ),
    "suite_data_not_prepared": (
        {"evaluate": {"suite": "heldout"}},
        [],
        [
            "evaluate task 'mnist28_mlp_128x3' needs prepared dataset 'mnist_28', which data.datasets does not"
            " prepare (['mnist', 'fashion_mnist', 'digits']): add 'mnist_28' to data.datasets"
        ],
    ),
    "preset_clash": (
        {"meta_train": {"task_family": {"preset": "celo", "batch_size": 128}}},
        [],
        ["task_family.preset celo fixes ['batch_size']: remove them, or drop the preset"],
    ),
    "family_not_images": (
        {"data": {"datasets": ["mnist", "fashion_mnist", "digits", "mnist1d"]}},
        ["meta_train.task_family.datasets=[mnist, mnist1d]"],
        ["'mnist1d' is a sequence dataset; the family holds image MLPs only"],
    ),
    "family_shapes_differ": (
        {"data": {"datasets": ["mnist", "fashion_mnist", "digits", "mnist_28"]}},
        ["meta_train.task_family.datasets=[mnist, mnist_28]"],
        ["meta_train.task_family.datasets must share one image shape"],
    ),
    "bad_lopt_hyperparameter": (
        {"meta_train": {"lopt": "celo", "lopt_hyperparams": {"hidden_size": 4}}},
        [],
        ["meta_train.lopt_hyperparams for 'celo': Learned optimizer 'celo' has no hyperparameter(s) ['hidden_size']"],
    ),
}


@pytest.fixture
def isolated(project, monkeypatch):
    """A project copy as cwd with a private environment, and a snapshot of its files."""
    monkeypatch.chdir(project)
    monkeypatch.setattr(os, "environ", dict(os.environ))
    before = sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if ".git" not in p.parts)
    return project, before


def _assert_nothing_written(project, before):
    after = sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if ".git" not in p.parts)
    assert after == before
    assert load_params(project / "params.yaml") == load_params(REPO / "params.yaml")


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_invalid_params_exit_2_listing_every_problem(case, isolated, capsys):
    project, before = isolated
    raw, overrides, expected = BAD_CASES[case]
    (project / "bad.yaml").write_text(yaml.safe_dump(raw))
    before = sorted([*before, "bad.yaml"])
    argv = ["run", "--params", "bad.yaml"] + [a for o in overrides for a in ("--set", o)]
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert "invalid params in bad.yaml" in err
    for fragment in expected:
        assert fragment in err, err
    _assert_nothing_written(project, before)


def _exit_code(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def test_missing_params_file(isolated, capsys):
    project, before = isolated
    assert _exit_code(["run", "--params", "params/nope.yaml"]) == 2
    err = capsys.readouterr().err
    assert "file not found: params/nope.yaml" in err
    _assert_nothing_written(project, before)


def test_invalid_yaml(isolated, capsys):
    project, before = isolated
    (project / "broken.yaml").write_text("seed: [1, 2\n")
    assert _exit_code(["run", "--params", "broken.yaml"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    _assert_nothing_written(project, sorted([*before, "broken.yaml"]))


def test_bad_set_value(isolated, capsys):
    project, before = isolated
    assert _exit_code(["run", "--params", "params/tiny.yaml", "--set", "evaluate.num_seeds"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    _assert_nothing_written(project, before)


def test_optimizers_command_lists_every_name(capsys):
    from components.optimizers import available  # noqa: PLC0415

    assert main(["optimizers"]) == 0
    out = capsys.readouterr().out
    for names in available().values():
        for name in names:
            assert f"  {name} " in out
    assert "learning_rate" in out and "num_steps" in out


def test_tasks_command_lists_tasks_with_parameter_counts(capsys):
    assert main(["tasks", "--params", "params/tiny.yaml"]) == 0
    out = capsys.readouterr().out
    assert "evaluation tasks of params/tiny.yaml: 2 tasks; 0 in distribution" in out
    assert "meta-training distribution (image MLP family): mnist_8, fashion_mnist_8; mlp 16 relu;" in out
    # tiny.yaml overrides every task's horizon (40) and batch size (32); its unrolls stop at 30 steps
    line = next(ln for ln in out.splitlines() if "ft_mnist_to_digits_mlp" in ln)
    assert line.split()[1:] == [
        "finetune:mlp",
        "digits_8",
        "<-",
        "mnist_8",
        "9,610",
        "40",
        "32",
        "OOD:",
        "dataset,",
        "architecture,",
        "horizon,",
        "finetuning",
    ]
    assert main(["tasks", "--params", "params/celo_gpu.yaml"]) == 0
    out = capsys.readouterr().out
    assert "evaluation tasks of params/celo_gpu.yaml (suite heldout): 20 tasks; 2 in distribution" in out
    assert "(preset celo)" in out and "meta-training distribution (Celo preset)" in out
    line = next(ln for ln in out.splitlines() if " shakespeare_char_lm_1m " in ln)
    assert line.split()[3:6] == ["1,222,977", "5000", "32"]  # its own horizon and batch size
    # UCI digits stands in for SVHN in Celo's recipe: digits_mlp is labelled in-distribution
    line = next(ln for ln in out.splitlines() if " digits_mlp " in ln)
    assert line.split()[-1] == "in-distribution"
    assert main(["tasks", "--params", "params/default.yaml"]) == 0
    out = capsys.readouterr().out
    assert "mnist_mlp_deep" in out and "26,122" in out  # 64*128+128 + 128*128+128 + 128*10+10
    assert main(["tasks", "--suite", "heldout"]) == 0
    out = capsys.readouterr().out
    assert "suite heldout: 20 tasks, relation to the Celo preset's meta-training (no params file)" in out
    assert "finetune:char_lm" in out and "3,676,682" in out
    line = next(ln for ln in out.splitlines() if " mnist_mlp_long " in ln)
    assert line.split()[-2:] == ["OOD:", "horizon"]
    assert main(["tasks", "--suite", "nope"]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err


def test_tasks_command_lists_the_ood_suite_with_its_declaration(capsys):
    assert main(["tasks", "--suite", "ood"]) == 0
    out = capsys.readouterr().out
    assert "suite ood: 4 tasks, relation to the Celo preset's meta-training (no params file); 0 in distribution" in out
    line = next(ln for ln in out.splitlines() if " shakespeare_char_lm_4x_horizon " in ln)
    assert line.split()[1:5] == ["char_lm", "tiny_shakespeare", "18,017", "8000"]
    assert line.endswith("OOD: dataset, architecture, horizon  [declared OOD: dataset, architecture, horizon]")
    line = next(ln for ln in out.splitlines() if " mnist_mlp_autoencoder " in ln)
    assert line.split()[1] == "mlp_autoencoder" and line.endswith("[declared OOD: architecture]")
    assert main(["tasks", "--suite", "heldout"]) == 0
    assert "declared OOD" not in capsys.readouterr().out
