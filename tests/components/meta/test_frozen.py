"""Frozen meta-param subsets and meta-level penalties declared by a learned optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from components.meta import MetaTrainConfig, meta_train
from components.meta.frozen import penalty_gradient, trainable_mask


class TwoPartSGD:
    """SGD with lr = exp(log_lr) · exp(log_scale); one of the two parts can be frozen."""

    name = "two_part_sgd"

    def __init__(self, frozen=(), weight_decay=0.0):
        self._frozen = tuple(frozen)
        self.weight_decay = weight_decay

    def frozen_keys(self):
        return self._frozen

    def meta_penalty(self, meta_params):
        return 0.5 * self.weight_decay * jnp.square(meta_params["log_scale"]["v"])

    def init_meta_params(self, key):
        return {"log_lr": jnp.asarray(np.log(1e-2), jnp.float32), "log_scale": {"v": jnp.asarray(0.5, jnp.float32)}}

    def make(self, meta_params, *, num_steps):
        mp = {k: (jax.lax.stop_gradient(v) if k in self._frozen else v) for k, v in meta_params.items()}
        return optax.with_extra_args_support(optax.sgd(jnp.exp(mp["log_lr"] + mp["log_scale"]["v"])))


class _Task:
    def init(self, key):
        return {"w": jnp.zeros(3)}

    def batch(self, data, key):
        return None

    def loss(self, params, batch, key=None):
        return 0.5 * jnp.sum(jnp.array([0.5, 1.0, 2.0]) * (params["w"] - 1.0) ** 2)

    def normalized_loss(self, loss):
        return loss


jax.tree_util.register_pytree_node(_Task, lambda t: ((), None), lambda aux, ch: _Task())


class _Family:
    def sample(self, key):
        return _Task()


_CFG = MetaTrainConfig(
    num_outer_steps=20, num_tasks=8, trunc_length=5, min_unroll=20, max_unroll=40, sigma=0.05,
    outer_lr=5e-2, outer_weight_decay=0.1, log_every=10,
)  # fmt: skip


def test_trainable_mask_marks_frozen_subtrees():
    lopt = TwoPartSGD(frozen=("log_scale",))
    mask = trainable_mask(lopt, lopt.init_meta_params(None))
    assert mask == {"log_lr": True, "log_scale": {"v": False}}
    with pytest.raises(ValueError, match="not in its meta-params"):
        trainable_mask(TwoPartSGD(frozen=("nope",)), lopt.init_meta_params(None))


def test_frozen_keys_are_never_updated_and_the_rest_trains():
    lopt = TwoPartSGD(frozen=("log_scale",))
    start = lopt.init_meta_params(None)
    result = meta_train(lopt, _Family(), jnp.zeros(()), _CFG, key=jax.random.key(0), log=lambda m: None)
    # frozen: bit-identical (no ES perturbation, no update, no AdamW weight decay)
    assert float(result.meta_params["log_scale"]["v"]) == float(start["log_scale"]["v"])
    assert float(result.meta_params["log_lr"]) > float(start["log_lr"]) + 0.2  # larger steps help here


def test_meta_penalty_gradient_is_added_and_respects_frozen_keys():
    lopt = TwoPartSGD(weight_decay=2.0)
    mp = lopt.init_meta_params(None)
    grad = penalty_gradient(lopt, mp)
    assert float(grad["log_scale"]["v"]) == pytest.approx(2.0 * 0.5)  # d/dv of 0.5·wd·v²
    assert float(grad["log_lr"]) == 0.0
    frozen = penalty_gradient(TwoPartSGD(frozen=("log_scale",), weight_decay=2.0), mp)
    assert float(frozen["log_scale"]["v"]) == 0.0
    # with a strong penalty the penalised part is pulled towards 0 during meta-training
    strong = TwoPartSGD(frozen=("log_lr",), weight_decay=50.0)
    result = meta_train(strong, _Family(), jnp.zeros(()), _CFG, key=jax.random.key(0), log=lambda m: None)
    assert abs(float(result.meta_params["log_scale"]["v"])) < 0.5 - 0.2
