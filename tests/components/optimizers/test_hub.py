"""HUB hybrid: limits of the softmax mix, hand-computed mixes, the hand-share statistic, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from components.optimizers import adam, sgd
from components.optimizers.hub import HubState, hand_share, hub, hub_weights

LN3 = math.log(3.0)


def neg_grad():
    """A stateless 'learned optimizer' whose update is exactly -g."""
    return optax.with_extra_args_support(optax.scale(-1.0))


def one_update(opt, grads, params=None, **extra_args):
    state = opt.init(grads if params is None else params)
    return opt.update(grads, state, params, **extra_args)


@pytest.mark.parametrize("shape", [(), (1,), (1, 1, 1, 1)])
def test_one_entry_tensor_takes_the_hand_update_exactly(shape):
    grads = {"w": jnp.full(shape, 0.7, jnp.float32)}
    hand_updates, _ = one_update(sgd(0.1), grads)
    learned_updates, _ = one_update(neg_grad(), grads)
    updates, state = one_update(hub(neg_grad(), sgd(0.1)), grads)
    np.testing.assert_array_equal(updates["w"], hand_updates["w"])
    assert float(hand_share(state)) == 1.0
    inverted, state = one_update(hub(neg_grad(), sgd(0.1), inverted=True), grads)
    np.testing.assert_array_equal(inverted["w"], learned_updates["w"])
    assert float(hand_share(state)) == 0.0


def test_hand_computed_mix_on_a_small_tensor():
    # |g| = [ln 3, 0, ln 3] -> exp = [3, 1, 3] -> S = [3/7, 1/7, 3/7]
    g = np.array([LN3, 0.0, -LN3], np.float32)
    s = np.array([3, 1, 3]) / 7
    np.testing.assert_allclose(hub_weights(jnp.asarray(g)), s, rtol=1e-6)
    u_hand, u_learned = -0.1 * g, -g
    updates, state = one_update(hub(neg_grad(), sgd(0.1)), {"w": jnp.asarray(g)})
    np.testing.assert_allclose(updates["w"], s * u_hand + (1 - s) * u_learned, rtol=1e-6)
    # hand mass 0.1·ln3·6/7, learned mass ln3·8/7
    np.testing.assert_allclose(hand_share(state), 0.6 / 8.6, rtol=1e-6)

    updates, state = one_update(hub(neg_grad(), sgd(0.1), inverted=True), {"w": jnp.asarray(g)})
    np.testing.assert_allclose(updates["w"], (1 - s) * u_hand + s * u_learned, rtol=1e-6)
    # hand mass 0.1·ln3·8/7, learned mass ln3·6/7
    np.testing.assert_allclose(hand_share(state), 0.8 / 6.8, rtol=1e-6)


@pytest.mark.parametrize("temperature", [1e9, float("inf")])
def test_infinite_temperature_gives_uniform_weights(temperature):
    g = np.array([[0.5, -3.0, 1.0], [2.0, 0.0, -0.25]], np.float32)
    n = g.size
    updates, _ = one_update(hub(neg_grad(), sgd(0.1), temperature=temperature), {"w": jnp.asarray(g)})
    np.testing.assert_allclose(updates["w"], (1 / n) * (-0.1 * g) + (1 - 1 / n) * (-g), rtol=1e-6)
    updates, _ = one_update(hub(neg_grad(), sgd(0.1), temperature=temperature, inverted=True), {"w": jnp.asarray(g)})
    np.testing.assert_allclose(updates["w"], (1 - 1 / n) * (-0.1 * g) + (1 / n) * (-g), rtol=1e-6)


def test_zero_temperature_puts_the_hand_update_on_the_dominant_entry():
    g = np.array([0.1, -3.0, 0.2, 0.5, 0.0], np.float32)
    hand, learned = -0.1 * g, -g
    updates, _ = one_update(hub(neg_grad(), sgd(0.1), temperature=1e-3), {"w": jnp.asarray(g)})
    expected = learned.copy()
    expected[1] = hand[1]
    np.testing.assert_array_equal(updates["w"], expected)
    updates, _ = one_update(hub(neg_grad(), sgd(0.1), temperature=1e-3, inverted=True), {"w": jnp.asarray(g)})
    expected = hand.copy()
    expected[1] = learned[1]
    np.testing.assert_array_equal(updates["w"], expected)


def test_weights_are_per_tensor_and_sum_to_one():
    grads = {"a": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones((2, 1, 3, 2)), "c": jnp.float32(4.0)}
    for g in jax.tree.leaves(grads):
        s = hub_weights(g)
        assert s.shape == g.shape and s.dtype == jnp.float32
        np.testing.assert_allclose(jnp.sum(s), 1.0, rtol=1e-6)
    np.testing.assert_allclose(hub_weights(grads["b"]), np.full((2, 1, 3, 2), 1 / 12), rtol=1e-6)


def _mixed_params():
    rng = np.random.default_rng(0)
    shapes = {"scalar": (), "bias": (5,), "kernel": (4, 3), "conv": (3, 3, 2, 4)}
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
    params["half"] = jnp.asarray(rng.normal(size=(3,)), jnp.bfloat16)
    return params


def _loss(params):
    return sum(jnp.sum(jnp.square(x.astype(jnp.float32) - 0.5)) for x in jax.tree.leaves(params))


def test_equal_inner_optimizers_give_that_optimizers_update():
    params = _mixed_params()
    del params["half"]  # rounding of a bf16 mix differs from adam's own bf16 rounding
    opt, ref = hub(adam(0.05), adam(0.05)), adam(0.05)
    state, ref_state = opt.init(params), ref.init(params)
    ref_params = params
    step = jax.jit(lambda p, s: opt.update(jax.grad(_loss)(p), s, p))
    ref_step = jax.jit(lambda p, s: ref.update(jax.grad(_loss)(p), s, p))
    for _ in range(3):
        updates, state = step(params, state)
        ref_updates, ref_state = ref_step(ref_params, ref_state)
        for u, r in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates), strict=True):
            np.testing.assert_allclose(u, r, rtol=1e-5, atol=1e-7)
        params = optax.apply_updates(params, updates)
        ref_params = optax.apply_updates(ref_params, ref_updates)


def test_hand_share_is_a_running_mean_over_measured_steps():
    opt = hub(neg_grad(), sgd(0.1))
    g1 = {"w": jnp.asarray([LN3, 0.0, -LN3])}  # share 0.6 / 8.6
    g2 = {"w": jnp.ones(3)}  # S = 1/3 everywhere: hand mass 0.1, learned mass 2
    zero = {"w": jnp.zeros(3)}  # both updates 0: share undefined, not measured
    state = opt.init(g1)
    _, state = opt.update(g1, state)
    _, state = opt.update(zero, state)
    assert int(state.num_steps) == 2 and int(state.num_measured_steps) == 1
    np.testing.assert_allclose(hand_share(state), 0.6 / 8.6, rtol=1e-6)
    _, state = opt.update(g2, state)
    assert int(state.num_steps) == 3 and int(state.num_measured_steps) == 2
    np.testing.assert_allclose(hand_share(state), (0.6 / 8.6 + 0.1 / 2.1) / 2, rtol=1e-6)
    assert float(hand_share(hub(neg_grad(), sgd(0.1)).init(g1))) == 0.0


def test_jit_and_vmap_with_stable_state():
    # (a real learned optimizer inside HUB: the module's doctest and the conformance table)
    opt = hub(sgd(0.05, momentum=0.9), adam(0.01), temperature=0.5)
    traces = []

    @jax.jit
    @jax.vmap
    def step(params, state):
        traces.append(1)
        loss, grads = jax.value_and_grad(_loss)(params)
        updates, state = opt.update(grads, state, params, loss=loss, loss_fn=_loss, unused=1.0)
        return optax.apply_updates(params, updates), state, updates

    single = _mixed_params()
    params = jax.tree.map(lambda x: jnp.stack([x, x + 1]), single)
    state0 = jax.vmap(opt.init)(params)
    params, state1, updates = step(params, state0)
    params, state2, _ = step(params, state1)
    assert len(traces) == 1
    assert isinstance(state2, HubState)
    shapes = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)  # noqa: E731
    assert shapes(state0) == shapes(state1) == shapes(state2)
    assert shapes(updates) == shapes(params)
    assert np.all((np.asarray(hand_share(state2)) > 0) & (np.asarray(hand_share(state2)) < 1))
    assert all(np.all(np.isfinite(np.asarray(u, np.float32))) for u in jax.tree.leaves(updates))


def test_extra_args_and_params_reach_both_inner_optimizers():
    seen = []

    def recording(name):
        def update(updates, state, params=None, **extra_args):
            seen.append((name, params is not None, extra_args.get("loss")))
            return updates, state

        return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)

    params = {"w": jnp.ones(2)}
    one_update(hub(recording("learned"), recording("hand")), params, params, loss=3.0, loss_fn=_loss)
    assert seen == [("learned", True, 3.0), ("hand", True, 3.0)]


def test_construction_errors():
    with pytest.raises(TypeError, match="hub: learned must be an optax GradientTransformation"):
        hub(optax.scale, sgd(0.1))
    with pytest.raises(TypeError, match="hub: hand must be an optax GradientTransformation"):
        hub(sgd(0.1), "adam")
    with pytest.raises(TypeError, match="inverted must be a bool"):
        hub(sgd(0.1), adam(0.1), inverted="yes")
    for bad in (0.0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            hub(sgd(0.1), adam(0.1), temperature=bad)
