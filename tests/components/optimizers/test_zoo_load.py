"""``load("zoo:<name>")``: zoo entries are checkpoints found by name; unknown names list what there is."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from components.optimizers import create_learned, load, save
from components.optimizers import zoo as zoo_lib

REPO = Path(__file__).resolve().parents[3]


def _entry(zoo: Path, name: str, seed: int = 3) -> dict:
    lopt = create_learned("small_fc_lopt", hidden_size=4)
    theta = lopt.init_meta_params(jax.random.key(seed))
    # perturbed, so a load that fell back to the initialiser could not pass
    theta = jax.tree.map(lambda x: x + 0.01 * jax.random.normal(jax.random.key(seed + 1), x.shape), theta)
    save(zoo / name, lopt, theta, {"zoo": {"name": name, "outer_steps_done": 3, "outer_steps_planned": 10}})
    return theta


def test_zoo_name_loads_the_entry_exactly(tmp_path):
    theta = _entry(tmp_path, "tiny_a")
    lopt, loaded, config = load("zoo:tiny_a", zoo_dir=tmp_path)
    assert lopt.name == "small_fc_lopt" and config["zoo"]["outer_steps_done"] == 3
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(theta), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert zoo_lib.entries(tmp_path) == ["tiny_a"]
    assert zoo_lib.read_lineage("tiny_a", tmp_path)["zoo"]["outer_steps_planned"] == 10


def test_zoo_entry_trains_in_a_plain_optax_loop_in_a_fresh_process(tmp_path):
    _entry(tmp_path, "tiny_b")
    script = textwrap.dedent(
        f"""
        import jax, jax.numpy as jnp, optax
        from components.optimizers import load
        opt = load("zoo:tiny_b", zoo_dir={str(tmp_path)!r}).make(num_steps=50)
        params = {{"w": jnp.full((3, 2), 2.0), "b": jnp.ones((2,))}}
        loss_fn = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)
        state = opt.init(params)
        first = loss_fn(params)
        for _ in range(50):
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, state = opt.update(grads, state, params, loss=loss)
            params = optax.apply_updates(params, updates)
        print("LOSSES", float(first), float(loss_fn(params)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    first, last = map(float, out.stdout.split("LOSSES")[1].split())
    assert np.isfinite(last) and last != first  # the learned update moved the parameters


def test_unknown_zoo_name_lists_the_entries(tmp_path):
    _entry(tmp_path, "tiny_a")
    _entry(tmp_path, "tiny_c")
    with pytest.raises(FileNotFoundError, match=r"no zoo entry 'nope'.*\['tiny_a', 'tiny_c'\]"):
        load("zoo:nope", zoo_dir=tmp_path)


def test_empty_or_missing_zoo_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="the zoo is empty.*l2o zoo add"):
        load("zoo:anything", zoo_dir=tmp_path / "missing")
    assert zoo_lib.entries(tmp_path / "missing") == []


def test_invalid_zoo_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="invalid zoo entry name '../x'"):
        load("zoo:../x", zoo_dir=tmp_path)


def test_default_zoo_is_models_zoo_of_the_repository():
    assert zoo_lib.default_zoo_dir() == REPO / "models" / "zoo"


def test_a_folder_without_config_is_not_an_entry(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "weights.safetensors").write_bytes(b"")
    (tmp_path / ".tmp-x").mkdir()
    (tmp_path / ".tmp-x" / "config.json").write_text(json.dumps({}))
    assert zoo_lib.entries(tmp_path) == []
