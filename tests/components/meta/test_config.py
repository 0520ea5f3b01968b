"""Meta-training settings are declared once (MetaTrainConfig): the params models are built from it,
and the presets load into it without pydantic."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.meta import MetaTrainConfig, load_preset
from components.stages.params import MetaTrainParams, PipelineParams
from components.stages.params.meta import SETTINGS

REPO = Path(__file__).resolve().parents[3]
PRESETS = sorted((REPO / "params").glob("*.yaml"))


def test_the_params_section_is_built_from_the_library_config():
    fields = {f.name: f for f in dataclasses.fields(MetaTrainConfig)}
    assert set(SETTINGS) == set(fields) and set(SETTINGS) <= set(MetaTrainParams.model_fields)
    for name in SETTINGS:
        model_field = MetaTrainParams.model_fields[name]
        assert model_field.default == fields[name].default, name
        assert model_field.description == fields[name].metadata["description"], name
    # one set of defaults: the params defaults are the library's (outer_lr_schedule: cosine)
    assert MetaTrainParams().config() == MetaTrainConfig()
    assert MetaTrainConfig().outer_lr_schedule == "cosine"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_tasks", 0, "num_tasks must be > 0"),
        ("sigma", -0.1, "sigma must be > 0"),
        ("outer_weight_decay", -1.0, "outer_weight_decay must be >= 0.0"),
        ("checkpoint_every", 0, "checkpoint_every must be > 0"),
        ("estimator", "sgd", r"estimator must be one of \['pes', 'es', 'tbptt'\]"),
        ("outer_lr_schedule", "linear", "outer_lr_schedule must be one of"),
    ],
)
def test_the_library_config_rejects_values_out_of_their_bounds(field, value, message):
    with pytest.raises(ValueError, match=message):
        MetaTrainConfig(**{field: value})


def test_the_library_config_needs_intervals_that_steps_per_call_divides():
    with pytest.raises(ValueError, match=r"log_every \(5\) must be a multiple of steps_per_call \(2\)"):
        MetaTrainConfig(log_every=5, steps_per_call=2)


@pytest.mark.parametrize("path", PRESETS, ids=[p.name for p in PRESETS])
def test_every_preset_loads_into_the_configs_the_pipeline_runs(path):
    params = PipelineParams.model_validate(yaml.safe_load(path.read_text()))
    mt = params.meta_train
    preset = load_preset(path)
    assert preset.lopt == mt.lopt and preset.seed == params.seed
    assert [p.name for p in preset.phases] == [p.name for p in mt.phase_list()]
    for got, phase in zip(preset.phases, mt.phase_list(), strict=True):
        assert got.config == mt.config(mt.phase_steps(phase)), phase.name
        assert got.lopt_hyperparams == mt.phase_hyperparams(phase), phase.name


def test_a_preset_with_an_unknown_or_bad_setting_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("meta_train:\n  trunc_lenght: 5\n")
    with pytest.raises(ValueError, match=r"unknown meta_train keys \['trunc_lenght'\]"):
        load_preset(bad)
    bad.write_text("meta_train:\n  num_tasks: four\n")
    with pytest.raises(ValueError, match="meta_train.num_tasks: expected"):
        load_preset(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text("meta_train:\n  outer_lr: 1e-3\n  num_tasks: 4.0\n")  # PyYAML: '1e-3' is a string
    cfg = load_preset(ok).phases[0].config
    assert cfg.outer_lr == 1e-3 and cfg.num_tasks == 4 and isinstance(cfg.num_tasks, int)


def test_presets_load_without_pydantic():
    code = (
        "import sys; sys.modules['pydantic'] = None\n"
        "from components.meta import load_preset\n"
        "p = load_preset('params/celo_gpu.yaml')\n"
        "print(p.lopt, [(q.name, q.config.num_outer_steps) for q in p.phases])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "celo [('phase1', 100000), ('phase2', 100000)]"
