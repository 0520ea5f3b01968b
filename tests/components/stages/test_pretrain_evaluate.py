"""The pretrain and evaluate stages on suite tasks of every kind: an image fine-tuning task (from
the pretrain stage's cached weights), a character language model and a synthetic quadratic.

Real prepared data from the mirror (prepare_data stage), a real (untrained) learned-optimizer
checkpoint and safeguard file; small tasks so that it stays a unit test (most of its time is XLA
compiling the learned optimizer for the transformer's parameter tree).
"""

import json

import jax
import numpy as np
import pytest

from components.optimizers import save
from components.optimizers.registry import create_learned
from components.stages import evaluate, inputs, paths, prepare_data, pretrain
from components.stages.common import StageContext, load_prepared
from components.stages.fetch import MIRROR_ENV
from components.stages.params import PipelineParams
from components.stages.paths import MODEL_DIR, SAFEGUARD
from components.tasks.finetune import finetune
from components.tasks.suite import get_spec, source_task

TASKS = ["ft_mnist_to_digits_mlp", "shakespeare_char_lm_tiny", "noisy_quadratic_d100"]


def _params(**evaluate_overrides) -> PipelineParams:
    return PipelineParams(
        data={"datasets": ["mnist", "fashion_mnist", "digits", "tiny_shakespeare"], "max_train_examples": 3000},
        meta_train={"lopt_hyperparams": {"hidden_size": 4, "hidden_layers": 2}},
        pretrain={"num_steps": 60},
        evaluate={
            "tasks": TASKS,
            "num_steps": 20,
            "num_seeds": 2,
            "eval_every": 10,
            "eval_examples": 64,
            # one baseline (the guard's): a second one's grid is tuned the same way (the tiny experiment runs two)
            "baselines": ["adam"],
            "lr_grid": {"min": 1e-3, "max": 1e-2, "num": 2},
            "adam_horizon_multiplier": 2,
            # the learned optimizer alone of its family keeps the transformer's compile time down (the tiny experiment
            # runs all five; the wrappers treat every task the same way)
            "methods": ["learned"],
            **evaluate_overrides,
        },
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory, mirror):
    root = tmp_path_factory.mktemp("stages")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(MIRROR_ENV, str(mirror))
        prepare_data.run(_params(), root, StageContext(log=lambda _: None))
    lopt = create_learned("small_fc_lopt", hidden_size=4, hidden_layers=2)
    save(root / MODEL_DIR, lopt, lopt.init_meta_params(jax.random.PRNGKey(0)), {"component": "test"})
    (root / SAFEGUARD).write_text(json.dumps({"guard": "adam", "learning_rate": 1e-3, "loss_batch": "same"}))
    return root


def _run_log(root):
    return json.loads((root / paths.RUN_LOG_DIR / "pretrain.json").read_text())


def test_pretrain_writes_loads_and_reuses(root):
    lines = []
    result = pretrain.run(_params(), root, StageContext(log=lines.append))
    index = json.loads((root / paths.PRETRAINED_INDEX).read_text())
    assert list(index["tasks"]) == ["ft_mnist_to_digits_mlp"]  # the only fine-tuning task
    row = index["tasks"]["ft_mnist_to_digits_mlp"]
    assert row["prepared_file"] == "mnist.npz" and row["num_steps"] == 60
    assert "reused" not in row and "seconds" not in row  # run facts: the run log, not the tracked index
    assert _run_log(root)["tasks"]["ft_mnist_to_digits_mlp"]["reused"] is False
    assert row["final_train_loss"] < 2.0 and row["source_test_acc"] > 0.3, row  # chance: 2.30, 0.10
    assert result.metrics["ft_mnist_to_digits_mlp/source_test_acc"] == row["source_test_acc"]

    # the stored params load into the source architecture and give the recorded accuracy back
    params = inputs.load_pretrained(root, "ft_mnist_to_digits_mlp")
    src = source_task(get_spec("ft_mnist_to_digits_mlp"))
    shapes = jax.tree_util.tree_map(np.shape, src.init(jax.random.PRNGKey(1)))
    assert jax.tree_util.tree_map(np.shape, params) == shapes
    arrays = load_prepared(root, "mnist")
    held_out = (arrays["x_test"][:2000], arrays["y_test"][:2000])
    assert float(src.accuracy(params, held_out)) == pytest.approx(row["source_test_acc"], abs=1e-6)
    ft = finetune(src, params, reinit_head=True)  # the hidden layer is the pre-trained one, the head is new
    assert set(ft.pretrained) == {"dense0"}
    np.testing.assert_array_equal(ft.pretrained["dense0"]["w"], params["dense0"]["w"])

    # same params: the file is reused, byte for byte; another step count re-trains
    before = (root / paths.PRETRAINED_DIR / "ft_mnist_to_digits_mlp.npz").read_bytes()
    pretrain.run(_params(), root, StageContext(log=lines.append))
    index_before = (root / paths.PRETRAINED_INDEX).read_bytes()
    pretrain.run(_params(), root, StageContext(log=lines.append))
    assert _run_log(root)["tasks"]["ft_mnist_to_digits_mlp"]["reused"] is True
    assert (root / paths.PRETRAINED_INDEX).read_bytes() == index_before  # a reused task: the same index bytes
    assert (root / paths.PRETRAINED_DIR / "ft_mnist_to_digits_mlp.npz").read_bytes() == before
    assert any("unchanged, reused" in line for line in lines)
    other = _params().model_copy(update={"pretrain": _params().pretrain.model_copy(update={"num_steps": 61})})
    pretrain.run(other, root, StageContext(log=lines.append))
    row = json.loads((root / paths.PRETRAINED_INDEX).read_text())["tasks"]["ft_mnist_to_digits_mlp"]
    assert _run_log(root)["tasks"]["ft_mnist_to_digits_mlp"]["reused"] is False and row["num_steps"] == 61
    pretrain.run(_params(), root, StageContext(log=lines.append))  # back to the state the next test expects


def test_load_pretrained_errors_name_the_fix(root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run `l2o run` \(or `l2o stage pretrain`\)"):
        inputs.load_pretrained(tmp_path, "ft_mnist_to_digits_mlp")
    bad = tmp_path / paths.PRETRAINED_DIR
    bad.mkdir(parents=True)
    np.savez(bad / "ft_mnist_to_digits_mlp.npz", **{"['dense0']['b']": np.zeros((3,), np.float32)})
    with pytest.raises(
        ValueError,
        match=r"\['dense0'\]\['b'\] is \(3,\), the task's source model needs \(128,\).*re-run the pretrain stage",
    ):
        inputs.load_pretrained(tmp_path, "ft_mnist_to_digits_mlp")


def test_evaluate_runs_every_task_kind_for_its_own_horizon(root):
    if not (root / paths.PRETRAINED_INDEX).exists():
        pretrain.run(_params(), root, StageContext(log=lambda _: None))
    lines = []
    # num_steps / batch_size unset: each task's own horizon and batch size
    result = evaluate.run(_params(num_steps=None, eval_every=100), root, StageContext(log=lines.append))
    doc = json.loads((root / paths.EVAL_METRICS).read_text())
    horizons = {"ft_mnist_to_digits_mlp": 300, "shakespeare_char_lm_tiny": 500, "noisy_quadratic_d100": 1000}
    assert sorted(doc["tasks"]) == sorted(TASKS) and doc["num_steps"] == horizons
    for name in TASKS:
        curves = json.loads((root / paths.CURVES_DIR / f"{name}.json").read_text())
        assert curves["steps"] == list(range(0, horizons[name] + 1, 100))
        assert len(curves["optimizers"]["learned"]["batch_loss"]["mean"]) == horizons[name]
        summary = doc["tasks"][name]
        assert set(summary["train"]) == {"learned", "adam", "guard"}
        for opt in ("learned", "adam"):
            row = summary["train"][opt]
            assert np.isfinite(row["final_train_loss"]["mean"]) and row["speedup"] > 0
        # the validation rule reads the validation split where the task has held-out data, else the training loss
        assert summary["tuning"]["adam"]["train"]["metric"] == "train_loss"
        assert summary["tuning"]["adam"]["validation"]["metric"] == (
            "train_loss (no validation split)" if name == "noisy_quadratic_d100" else "val_loss"
        )
        assert summary["relation"] is not None and "in_distribution" in summary["relation"]
    ft, lm, quad = (doc["tasks"][t]["validation"]["adam"] for t in TASKS)
    # fine-tuning from the pre-trained hidden layer (60 Adam steps on MNIST here)
    assert ft["final_test_acc"]["mean"] > 0.8, ft
    # the char LM has next-character accuracy and a test loss below the uniform 65-way entropy
    assert 0.0 <= lm["final_test_acc"]["mean"] <= 1.0 and lm["final_test_loss"]["mean"] < np.log(65)
    # a synthetic quadratic has no held-out set and no accuracy: null, not NaN; its smoothed training loss stands in
    assert quad["final_test_loss"] is None and quad["final_test_acc"] is None and quad["final_train_acc"] is None
    assert np.isfinite(quad["final_train_loss"]["mean"])
    assert "NaN" not in (root / paths.EVAL_METRICS).read_text()
    curves = json.loads((root / paths.CURVES_DIR / "noisy_quadratic_d100.json").read_text())
    assert set(curves["optimizers"]["learned"]) == {"batch_loss", "batch_loss_smoothed"}
    assert "noisy_quadratic_d100/adam/final_test_acc" not in result.metrics
    assert "noisy_quadratic_d100/adam/final_train_loss" in result.metrics
    assert any("noisy_quadratic_d100 (1000 steps; Adam grid" in line and "train loss" in line for line in lines), lines
    # aggregate accuracy over the tasks that have one
    agg = doc["aggregate"]["validation"]["adam"]["mean_test_acc"]
    assert agg == pytest.approx((ft["final_test_acc"]["mean"] + lm["final_test_acc"]["mean"]) / 2)


def test_the_validation_split_is_held_out_of_training(root):
    if not (root / paths.PRETRAINED_INDEX).exists():
        pretrain.run(_params(), root, StageContext(log=lambda _: None))
    params = _params(validation_fraction=0.1)
    # images: the last 10% of the training examples (at most eval_examples = 64) are the validation set
    task, train, sets, _ = evaluate.task_setup(params, root, "ft_mnist_to_digits_mlp")
    arrays = np.load(root / "data" / "prepared" / "digits.npz")
    n = len(arrays["y_train"])
    n_val = min(int(n * 0.1), 64)
    assert set(sets) == {"train", "val", "test"}
    np.testing.assert_array_equal(np.asarray(sets["val"][0]), arrays["x_train"][n - n_val :])
    assert int(train.n[0]) == n - n_val  # minibatches are drawn from the rest only
    np.testing.assert_array_equal(np.asarray(train.x[0, : n - n_val]), arrays["x_train"][: n - n_val])
    # text: the end of the task's token range; the task trains on the range before it
    task, train, sets, _ = evaluate.task_setup(params, root, "shakespeare_char_lm_tiny")
    assert task.token_range == pytest.approx((0.0, 0.9))
    tokens = np.load(root / "data" / "prepared" / "tiny_shakespeare.npz")["train_tokens"]
    start = int(len(tokens) * 0.9)  # the first token the task never trains on
    val_x = np.asarray(sets["val"][0])
    np.testing.assert_array_equal(val_x[0], tokens[start : start + val_x.shape[1]])
    # synthetic: no held-out data at all
    _, _, sets, _ = evaluate.task_setup(params, root, "noisy_quadratic_d100")
    assert sets == {}
