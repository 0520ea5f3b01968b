"""One checkpoint format for every learned optimizer: exact round trips, and errors that name the file."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from components.optimizers import load, registry, save

# a non-default configuration of each (so the config really round-trips), small where it matters
CONFIGS = {
    "mlp_lopt": {"hidden_size": 8},
    "small_fc_lopt": {"hidden_size": 6, "exp_mult": 0.01},
    "mup_small_fc_lopt": {"hidden_size": 6, "hidden_lr_mult": 2.0, "roles": {"w": "hidden", "b": "bias"}},
    "star": {"nominal_estimator": "Adam", "meta_weight_decay": 0.5},
    "celo": {"lstm_hidden_size": 8, "train_phase": 1},
    "celo_adam": {"lstm_hidden_size": 8},
    "celo2": {"weight_decay": 0.1, "adam_regex": "/b$", "orthogonalize": False, "ns_coeffs": [3.0, -3.2, 1.2]},
    "velo": {"lstm_hidden_size": 8, "param_inits": 3},
    "l3rs": {"num_layers": 2, "base_directions": ["adam", "lion"]},
}
NAMES = sorted(n for n in registry.LEARNED if n != "adafac_mlp_lopt")


def test_every_learned_optimizer_has_a_case():
    assert set(CONFIGS) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_is_exact(name, tmp_path):
    lopt = registry.create_learned(name, **CONFIGS[name])
    theta = lopt.init_meta_params(jax.random.key(7))
    # perturb every leaf so nothing can be re-created from the initialiser by accident
    leaves, treedef = jax.tree.flatten(theta)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    theta = jax.tree.unflatten(treedef, [x + jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    path = save(tmp_path / name, lopt, theta, {"git_commit": "abc", "params_hash": "123"})
    config = json.loads((path / "config.json").read_text())
    assert config["architecture"] == name and config["git_commit"] == "abc"
    loaded_lopt, loaded, _ = load(path)
    assert loaded_lopt == lopt
    assert jax.tree.structure(loaded) == jax.tree.structure(theta)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(theta), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # and the loaded transformation computes exactly the same update
    params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.ones(3)}
    grads = jax.tree.map(lambda x: 0.1 * x + 0.05, params)
    direct = lopt.make(theta, num_steps=50)
    from_disk = load(path).make(num_steps=50)
    u1, _ = direct.update(grads, direct.init(params), params, loss=jnp.float32(1.0))
    u2, _ = from_disk.update(grads, from_disk.init(params), params, loss=jnp.float32(1.0))
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert isinstance(from_disk, optax.GradientTransformationExtraArgs)


def test_weights_of_another_architecture_are_rejected(tmp_path):
    lopt = registry.create_learned("celo", **CONFIGS["celo"])
    path = save(tmp_path / "celo", lopt, lopt.init_meta_params(jax.random.key(0)), {})
    config = json.loads((path / "config.json").read_text())
    config["hyperparameters"]["lstm_hidden_size"] = 16
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"does not match|has shape"):
        load(path)


_LOAD_WITHOUT_FLOWS = """
import sys
sys.modules["flows"] = None  # any import of flows (or a flows.* entry point) now raises ImportError
import jax, jax.numpy as jnp
from components.optimizers import load
trained = load(sys.argv[1])
opt = trained.make(num_steps=20)
params = {"w": jnp.ones((2, 3))}
updates, _ = opt.update(params, opt.init(params), params, loss=jnp.float32(1.0))
assert updates["w"].shape == (2, 3)
assert not any(name == "flows" or name.startswith("flows.") for name in sys.modules if sys.modules[name] is not None)
assert "mlflow" not in sys.modules
print("loaded", trained.lopt.name)
"""


def test_load_needs_no_orchestration(tmp_path):
    """The library loads a checkpoint with ``flows`` unimportable: no entry point or import reaches it."""
    lopt = registry.create_learned("small_fc_lopt")
    path = save(tmp_path / "ckpt", lopt, lopt.init_meta_params(jax.random.key(0)), {"git_commit": "abc"})
    repo = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_FLOWS, str(path)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "loaded small_fc_lopt" in done.stdout
