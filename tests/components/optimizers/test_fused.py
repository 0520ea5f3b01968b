"""The per-parameter MLP engine: reference, fused and single-pass forms compute the same function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from components.optimizers import features as F
from components.optimizers import fused

SHAPES = [(), (7,), (6, 5), (3, 4, 5), (2, 3, 4, 5)]


def _channels(key, shape, num_full=5):
    """Full-size channels plus, for every axis, one channel constant along it, and a scalar one."""
    keys = jax.random.split(key, num_full + len(shape) + 1)
    chans = [jax.random.normal(k, shape) * (i + 1) for i, k in enumerate(keys[:num_full])]
    for axis in range(len(shape)):
        reduced = tuple(1 if a == axis else n for a, n in enumerate(shape))
        chans.append(jnp.abs(jax.random.normal(keys[num_full + axis], reduced)) + 0.5)
    chans.append(jnp.float32(3.0) * jnp.ones(()))  # a per-tensor scalar channel
    return chans


def _layers(key, num_in, widths):
    sizes = [num_in, *widths]
    keys = jax.random.split(key, 2 * len(sizes))
    return [
        (
            jax.random.normal(keys[2 * i], (a, b)) / np.sqrt(a),
            0.1 * jax.random.normal(keys[2 * i + 1], (b,)),
        )
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
    ]


CASES = [(s, (4, 4, 2)) for s in SHAPES] + [((), (3,)), ((3, 4, 5), (3,)), ((6, 5), (8, 8, 2)), ((2, 3, 4, 5), (32, 2))]


@pytest.mark.parametrize(("shape", "widths"), CASES, ids=[f"rank{len(s)}-mlp{'x'.join(map(str, w))}" for s, w in CASES])
def test_fused_equals_reference_on_every_rank(shape, widths):
    chans = _channels(jax.random.key(len(shape)), shape)
    layers = _layers(jax.random.key(7), len(chans), widths)
    ref = jax.jit(lambda c, ly: fused.mlp_reference(c, ly))(chans, layers)
    got = jax.jit(lambda c, ly: fused.mlp_fused(c, ly))(chans, layers)
    assert len(ref) == len(got) == widths[-1]
    for r, g in zip(ref, got, strict=True):
        assert g.shape == shape
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=2e-5, atol=2e-5)


def test_given_norms_are_used_and_match_the_computed_ones():
    chans = _channels(jax.random.key(0), (6, 5))
    layers = _layers(jax.random.key(1), len(chans), (4, 2))
    norms = fused.channel_inverse_rms(chans)
    full = [jnp.broadcast_to(c, (6, 5)) for c in chans]
    want = jnp.stack([F.inverse_rms(c) for c in full])
    np.testing.assert_allclose(np.asarray(norms), np.asarray(want), rtol=1e-6)
    for form in (fused.mlp_reference, fused.mlp_fused):
        a = form(chans, layers)
        b = form(chans, layers, norms)
        c = form(chans, layers, 2.0 * norms)
        np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), rtol=1e-5, atol=1e-6)
        assert not np.allclose(np.asarray(a[0]), np.asarray(c[0]))


def test_subsample_norms_are_exact_on_small_tensors_and_close_on_large_ones():
    small = _channels(jax.random.key(0), (20, 30))  # 600 elements <= SUBSAMPLE
    np.testing.assert_allclose(
        np.asarray(fused.subsample_inverse_rms(small)), np.asarray(fused.channel_inverse_rms(small)), rtol=1e-6
    )
    big = _channels(jax.random.key(1), (400, 300))  # 120k elements: strided to about 4k
    est = np.asarray(fused.subsample_inverse_rms(big))
    exact = np.asarray(fused.channel_inverse_rms(big))
    np.testing.assert_allclose(est, exact, rtol=0.05)
    # it reads only the subsample: the jaxpr reduces arrays of at most SUBSAMPLE elements
    jaxpr = jax.make_jaxpr(fused.subsample_inverse_rms)(big)
    reduced = [int(np.prod(eqn.invars[0].aval.shape)) for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == "reduce_sum"]
    assert reduced and max(reduced) <= fused.SUBSAMPLE


def test_single_pass_uses_stale_norms_after_the_first_step():
    chans = _channels(jax.random.key(2), (6, 5))
    layers = _layers(jax.random.key(3), len(chans), (4, 2))
    exact = fused.channel_inverse_rms(chans)
    stale = 1.5 * exact
    first, nxt = fused.normalized_mlp("single_pass", chans, layers, stale_norms=stale, first_step=True)
    later, nxt2 = fused.normalized_mlp("single_pass", chans, layers, stale_norms=stale, first_step=False)
    want_first = fused.mlp_fused(chans, layers, exact)  # small tensor: the subsample is the tensor
    want_later = fused.mlp_fused(chans, layers, stale)
    np.testing.assert_allclose(np.asarray(first[0]), np.asarray(want_first[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(later[0]), np.asarray(want_later[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(nxt), np.asarray(exact), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(nxt2), np.asarray(exact), rtol=1e-6)
    for impl in ("reference", "fused"):
        out, none = fused.normalized_mlp(impl, chans, layers)
        assert none is None
        np.testing.assert_allclose(np.asarray(out[1]), np.asarray(want_first[1]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="stale_norms"):
        fused.normalized_mlp("single_pass", chans, layers)


def test_impl_names_resolve_and_bad_ones_are_refused():
    assert fused.resolve_impl("auto", "cpu") == fused.AUTO_IMPL["cpu"]
    assert fused.resolve_impl("auto") in ("reference", "fused", "single_pass")
    for impl in ("reference", "fused", "single_pass"):
        assert fused.resolve_impl(impl, "gpu") == impl
    with pytest.raises(ValueError, match="single_pass"):
        fused.check_impl("SmallFcLOpt", "pallas")
    with pytest.raises(ValueError, match="resolved"):
        fused.normalized_mlp("auto", [jnp.ones(3)], [(jnp.ones((1, 2)), jnp.zeros(2))])


def test_mismatched_first_layer_is_a_clear_error():
    with pytest.raises(ValueError, match="num_channels=2"):
        fused.mlp_fused([jnp.ones(3), jnp.ones(3)], [(jnp.ones((3, 2)), jnp.zeros(2))])
    with pytest.raises(ValueError, match="at least one layer"):
        fused.mlp_reference([jnp.ones(3)], [])


def test_fused_form_writes_no_stacked_channel_or_hidden_array():
    """The point of the fused form: no [*shape, C] or [H, *shape] intermediate in the program."""
    shape = (64, 48)
    chans = _channels(jax.random.key(4), shape, num_full=6)
    layers = _layers(jax.random.key(5), len(chans), (4, 4, 2))

    def stacked_shapes(fn):
        jaxpr = jax.make_jaxpr(fn)(chans, layers)
        found = set()
        for eqn in jaxpr.jaxpr.eqns:
            for var in eqn.outvars:
                s = tuple(var.aval.shape)
                if len(s) == 3 and (s[:2] == shape or s[1:] == shape):
                    found.add(s)
        return found

    assert stacked_shapes(lambda c, ly: fused.mlp_reference(c, ly))  # the reference does stack
    assert not stacked_shapes(lambda c, ly: fused.mlp_fused(c, ly))
