"""Meta-gradient estimators (PES, FullES, truncated BPTT) against gradients we can compute exactly.

The meta-problem: SGD with a learnable log learning rate θ = log η (``LearnableSGD``) on a 3-d
quadratic ``0.5 Σ h_i (w_i − 1 − ξ_i)²``, ``h = (0.5, 1, 2)``, ``w_0 = 0``, short horizons. In the
*noisy* version every minibatch draws ``ξ ~ N(0, s² I)`` from its key, so the inner loss is stochastic
like a real training loss; the meta-objective is the expected mean pre-update loss, which has a closed
form (:func:`_expected_objective`: the error ``e_t = w_t − 1`` has mean ``(1−ηh)^t e_0`` and a variance
following ``v_{t+1} = (1−ηh)² v_t + (ηh s)²``), so its gradient in θ is exact and independent of the
estimator code.

Statistics of the ES / PES checks. Each check draws n *independent* single-task estimates (one
inner problem each, ``num_tasks=1`` under ``jax.vmap`` over keys), takes their mean and its standard
error ``SE = std/√n`` and requires ``|mean − truth| < 4·SE``:

* the antithetic estimator is unbiased for the gradient of the Gaussian-smoothed objective
  ``E_ε[J(θ+ε)]``, which differs from ``∇J(θ)`` by ``(σ²/2) J'''(θ) + O(σ⁴)``; at σ = 0.01 that is
  ~1e-5 here, and the tests check it is below 5% of SE, so it cannot cause a failure;
* by the central limit theorem the mean is ≈ normal (n ≥ 2048 samples, each a smooth function of
  Gaussians), so a correct estimator fails the 4·SE check with probability ≈ 6e-5;
* SE is not ~0 although θ is one number: ``ĝ = ΔL·ε/(2σ²) ≈ J'(θ)·(ε/σ)²``, a scaled χ²₁ variable
  (relative std √2), plus the minibatch noise; so SE ≈ |truth|·√(2/n) and the tests also require
  ``SE < 0.2 |truth|``: the check has power (a 20% error in the estimator would be caught).

The keys are fixed, so the tests are deterministic; the probabilities above are over the choice of seed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from components.meta.config import MetaTrainConfig
from components.meta.es import FullES, antithetic_gradient, sample_perturbations
from components.meta.estimators import build_estimator
from components.meta.pes import PES
from components.meta.tbptt import TruncatedBackprop
from tests.components.meta.test_pes import LearnableSGD, QuadraticFamily, _true_meta_gradient

H = np.array([0.5, 1.0, 2.0], np.float32)
LR = 0.05
SIGMA = 0.01
NOISE = 1.0  # std of the minibatch noise ξ of the noisy quadratic
DATA = jnp.zeros(())  # the quadratics draw their batches from the key: no dataset


@jax.tree_util.register_pytree_node_class
class NoisyQuadraticTask:
    """``0.5 Σ h (w − 1 − ξ)²`` with ξ ~ N(0, NOISE² I) drawn by ``batch``; normalised loss = loss."""

    def __init__(self, h):
        self.h = h

    def tree_flatten(self):
        return (self.h,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    def init(self, key):
        return {"w": jnp.zeros_like(self.h)}

    def batch(self, data, key):
        return NOISE * jax.random.normal(key, self.h.shape, self.h.dtype)

    def loss(self, params, batch, key=None):
        return 0.5 * jnp.sum(self.h * (params["w"] - 1.0 - batch) ** 2)

    def normalized_loss(self, loss):
        return loss


class NoisyQuadraticFamily:
    def sample(self, key):
        return NoisyQuadraticTask(jnp.asarray(H))


def _expected_objective(log_lr, num_steps, noise=NOISE):
    """E[(1/T) Σ_{t<T} L_t] for SGD(η = e^θ) from w = 0, in closed form over the moments of w − 1."""
    h = jnp.asarray(H)
    a = 1.0 - jnp.exp(log_lr) * h

    def step(carry, _):
        mean, var = carry
        loss = 0.5 * jnp.sum(h * (mean**2 + var + noise**2))
        return (a * mean, a**2 * var + (jnp.exp(log_lr) * h * noise) ** 2), loss

    _, losses = jax.lax.scan(step, (-jnp.ones(3), jnp.zeros(3)), None, length=num_steps)
    return losses.mean()


def _deterministic_loss(log_lr, t):
    """L_t of the noise-free quadratic: ``0.5 Σ h (1 − ηh)^{2t}``."""
    h = jnp.asarray(H)
    return 0.5 * jnp.sum(h * (1.0 - jnp.exp(log_lr) * h) ** (2 * t))


def _check_unbiased(samples, truth, third_derivative, name):
    """|mean − truth| < 4 SE, with power (SE < 0.2 |truth|) and a negligible smoothing bias."""
    samples = np.asarray(samples, np.float64)
    assert np.all(np.isfinite(samples)), name
    n = samples.size
    mean, se = samples.mean(), samples.std(ddof=1) / np.sqrt(n)
    smoothing_bias = 0.5 * SIGMA**2 * abs(third_derivative)
    msg = f"{name}: mean {mean:.5f}, SE {se:.5f} (n={n}), truth {truth:.5f}, smoothing bias ~{smoothing_bias:.1e}"
    print(msg)
    assert se < 0.2 * abs(truth), msg
    assert smoothing_bias < 0.05 * se, msg
    assert abs(mean - truth) < 4 * se, msg
    return mean, se


def _theta():
    lopt = LearnableSGD(np.log(LR))
    return lopt, lopt.init_meta_params(None)


@pytest.mark.parametrize("windows", [1, 4], ids=["one-truncation", "four-truncations"])
def test_pes_is_unbiased_for_the_true_meta_gradient(windows):
    """PES over ``windows`` truncations of K=5 steps of one unroll of T = 5·windows steps.

    Each truncation's estimate is unbiased for ∇ of the mean loss over *its* window (through the whole
    history, thanks to the accumulated perturbation), so the mean of a sample's per-truncation estimates
    is unbiased for ∇ of the mean loss over the full unroll (their sum estimates ``windows`` times it).
    The per-sample mean over truncations is one sample; SE is over the independent samples.
    """
    lopt, theta = _theta()
    family, k, n = NoisyQuadraticFamily(), 5, 2048
    est = PES(1, k, k * windows, k * windows, SIGMA, random_offset=False)
    init = jax.jit(jax.vmap(lambda key: est.init_state(lopt, theta, family, key)))
    step = jax.jit(jax.vmap(lambda st, key: est.gradient(lopt, theta, family, st, DATA, key)))
    keys = jax.random.split(jax.random.PRNGKey(windows), (windows + 1, n))
    state = init(keys[0])
    assert int(state.inner.step.sum()) == 0  # no random offsets: every unroll starts at step 0
    per_window = []
    for w in range(windows):
        g, state, aux = step(state, keys[w + 1])
        per_window.append(np.asarray(g["log_lr"]))
    assert np.all(np.asarray(aux["resets"]) == 1)  # the last truncation ended each inner problem exactly
    samples = np.mean(per_window, axis=0)
    truth = float(jax.grad(_expected_objective)(theta["log_lr"], k * windows))
    d3 = float(jax.grad(jax.grad(jax.grad(_expected_objective)))(theta["log_lr"], k * windows))
    # PES's O(σ²) bias is a sum of such third-derivative terms over the window perturbations: same order
    _check_unbiased(samples, truth, windows * d3, f"PES x{windows}")


def test_full_es_is_unbiased_for_the_true_meta_gradient():
    """FullES (loss_type avg) over one full unroll of T=20 steps of the noisy quadratic."""
    lopt, theta = _theta()
    family, t, n = NoisyQuadraticFamily(), 20, 2048
    est = FullES(1, t, t, SIGMA)
    run = jax.jit(jax.vmap(lambda key: est.gradient(lopt, theta, family, (), DATA, key)))
    g, state, aux = run(jax.random.split(jax.random.PRNGKey(7), n))
    assert state == ()
    assert np.all(np.asarray(aux["inner_steps"]) == 2 * t) and np.all(np.asarray(aux["resets"]) == 1)
    log_lr = theta["log_lr"]
    truth = float(jax.grad(_expected_objective)(log_lr, t))
    d3 = float(jax.grad(jax.grad(jax.grad(_expected_objective)))(log_lr, t))
    _check_unbiased(np.asarray(g["log_lr"]), truth, d3, "FullES avg")
    # the simulated meta-loss agrees with the closed-form objective the truth is the gradient of
    meta = np.asarray(aux["meta_loss"], np.float64)
    expected = float(_expected_objective(log_lr, t))
    assert abs(meta.mean() - expected) < 4 * meta.std(ddof=1) / np.sqrt(n), (meta.mean(), expected)
    # with no minibatch noise the same estimator matches the deterministic gradient of test_pes
    assert float(jax.grad(_expected_objective)(log_lr, t, 0.0)) == pytest.approx(
        float(_true_meta_gradient(lopt, theta, t)), rel=1e-4
    )


@pytest.mark.parametrize("loss_type", ["min", "last", "last_recompute"])
def test_full_es_loss_types(loss_type):
    """Other objectives on the noise-free quadratic, where all losses fall monotonically with t.

    ``min`` and ``last`` are then both L_{T−1} (the last pre-update loss); ``last_recompute`` is L_T
    (the loss at the final parameters). Larger steps help, so every gradient is negative.
    """
    lopt, theta = _theta()
    t, n = 10, 2048
    est = FullES(1, t, t, SIGMA, loss_type=loss_type, recompute_samples=3)
    run = jax.jit(jax.vmap(lambda key: est.gradient(lopt, theta, QuadraticFamily(), (), DATA, key)))
    g, _, aux = run(jax.random.split(jax.random.PRNGKey(11), n))
    final = t if loss_type == "last_recompute" else t - 1
    log_lr = theta["log_lr"]
    truth = float(jax.grad(_deterministic_loss)(log_lr, final))
    d3 = float(jax.grad(jax.grad(jax.grad(_deterministic_loss)))(log_lr, final))
    assert truth < 0
    mean, _ = _check_unbiased(np.asarray(g["log_lr"]), truth, d3, f"FullES {loss_type}")
    assert mean < 0
    assert float(np.mean(aux["meta_loss"])) == pytest.approx(float(_deterministic_loss(log_lr, final)), rel=1e-3)


def test_full_es_sign_delta_loss_and_non_finite_differences():
    lopt, theta = _theta()
    scalar, n = 0.5, 256
    est = FullES(1, 10, 10, SIGMA, sign_delta_loss=scalar)
    keys = jax.random.split(jax.random.PRNGKey(3), n)
    g = jax.jit(jax.vmap(lambda key: est.gradient(lopt, theta, QuadraticFamily(), (), DATA, key)[0]))(keys)
    # rebuild each estimate's ε (FullES documents: the second of 4 keys split from `key`)
    eps = jax.vmap(lambda key: sample_perturbations(lopt, theta, SIGMA, 1, jax.random.split(key, 4)[1]))(keys)
    delta = np.asarray(g["log_lr"]) * 2 * SIGMA**2 / np.asarray(eps["log_lr"][:, 0])
    np.testing.assert_allclose(np.abs(delta), scalar, rtol=1e-4)  # |ΔL| is the scalar for every sample
    assert np.all(np.asarray(g["log_lr"]) < 0)  # ... and its sign is right: ΔL opposes ε when J' < 0
    assert 0 < np.mean(delta > 0) < 1
    # non-finite differences contribute nothing, with or without sign-ΔL
    eps4 = {"x": jnp.array([1.0, 2.0, 3.0, 4.0])}
    pos, neg = jnp.array([1.0, jnp.nan, jnp.inf, 2.0]), jnp.array([0.0, 0.0, 0.0, jnp.inf])
    grad, delta4 = antithetic_gradient(pos, neg, eps4, 1.0)
    np.testing.assert_array_equal(delta4, [1.0, 0.0, 0.0, 0.0])
    assert float(grad["x"]) == pytest.approx(1.0 * 1.0 / 2 / 4)
    _, delta4 = antithetic_gradient(pos, neg, eps4, 1.0, sign_delta_loss=3.0)
    np.testing.assert_array_equal(delta4, [3.0, 0.0, 0.0, 0.0])


def test_full_es_draws_one_length_per_call_from_the_schedule():
    lopt, theta = _theta()
    est = FullES(3, 4, 64, SIGMA)
    run = jax.jit(lambda key: est.gradient(lopt, theta, QuadraticFamily(), (), DATA, key))
    steps = [int(run(jax.random.PRNGKey(i))[2]["inner_steps"]) for i in range(12)]
    lengths = {s // (2 * 3) for s in steps}
    assert all(s % 6 == 0 for s in steps) and all(4 <= length <= 64 for length in lengths)
    assert len(lengths) > 3  # one compiled program ran unrolls of different lengths


def test_full_es_rejects_a_bad_loss_type():
    with pytest.raises(ValueError, match="loss_type 'mean'"):
        FullES(4, 10, 10, loss_type="mean")
    with pytest.raises(ValueError, match="min_unroll"):
        FullES(4, 10, 5)


def _truncated_reference(log_lr, horizon, k, windows):
    """Per-window truncated gradients and losses, by a plain Python loop of explicit SGD steps."""
    h = jnp.asarray(H)
    w, step = jnp.zeros(3), 0
    grads, losses = [], []
    for _ in range(windows):
        schedule = [(step + i) % horizon for i in range(k)]  # inner step index of each window step
        w_start = w

        def window(theta, w_start=w_start, schedule=schedule):
            w, total = w_start, 0.0
            for i, s in enumerate(schedule):
                if i > 0 and s == 0:  # the previous step ended the problem: fresh params, no θ path
                    w = jnp.zeros(3)
                total = total + 0.5 * jnp.sum(h * (w - 1.0) ** 2)
                w = w - jnp.exp(theta) * h * (w - 1.0)
            return total / k, w

        (loss, w), g = jax.value_and_grad(window, has_aux=True)(log_lr)
        step = (step + k) % horizon
        if step == 0:
            w = jnp.zeros(3)
        grads.append(float(g))
        losses.append(float(loss))
    return grads, losses


@pytest.mark.parametrize(
    ("horizon", "k", "windows"),
    [(8, 8, 1), (8, 2, 4), (6, 4, 3)],
    ids=["one-window", "four-windows", "reset-mid-window"],
)
def test_truncated_backprop_matches_the_truncated_gradient(horizon, k, windows):
    lopt, theta = _theta()
    est = TruncatedBackprop(2, k, horizon, horizon, random_offset=False)
    family = QuadraticFamily()
    state = est.init_state(lopt, theta, family, jax.random.PRNGKey(0))
    step = jax.jit(lambda st, key: est.gradient(lopt, theta, family, st, DATA, key))
    ref_grads, ref_losses = _truncated_reference(theta["log_lr"], horizon, k, windows)
    resets = 0
    for w in range(windows):
        g, state, aux = step(state, jax.random.PRNGKey(w))
        assert float(g["log_lr"]) == pytest.approx(ref_grads[w], rel=1e-5, abs=1e-7)
        assert float(aux["meta_loss"]) == pytest.approx(ref_losses[w], rel=1e-5)
        assert int(aux["inner_steps"]) == 2 * k
        resets += int(aux["resets"])
    assert resets == 2 * (k * windows // horizon)
    if windows == 1:  # one window over the whole unroll: the exact meta-gradient
        assert float(g["log_lr"]) == pytest.approx(float(_true_meta_gradient(lopt, theta, horizon)), rel=1e-5)


class _SGDWithFrozenScale(LearnableSGD):
    """η = scale · e^θ with ``scale`` a frozen meta-parameter."""

    def init_meta_params(self, key):
        return {"log_lr": jnp.asarray(self.log_lr, jnp.float32), "scale": jnp.ones((), jnp.float32)}

    def frozen_keys(self):
        return ("scale",)

    def make(self, meta_params, *, num_steps):
        return super().make({"log_lr": meta_params["log_lr"] + jnp.log(meta_params["scale"])}, num_steps=num_steps)


def test_frozen_meta_parameters_get_no_gradient():
    lopt = _SGDWithFrozenScale(np.log(LR))
    theta = lopt.init_meta_params(None)
    family, key = QuadraticFamily(), jax.random.PRNGKey(0)
    es = FullES(8, 6, 6, SIGMA)
    tb = TruncatedBackprop(2, 3, 6, 6)
    g_es, _, _ = jax.jit(lambda k: es.gradient(lopt, theta, family, (), DATA, k))(key)
    g_tb, _, _ = jax.jit(lambda k: tb.gradient(lopt, theta, family, tb.init_state(lopt, theta, family, k), DATA, k))(
        key
    )
    for g in (g_es, g_tb):
        assert float(g["scale"]) == 0.0 and float(g["log_lr"]) < 0


def test_build_estimator_makes_every_kind():
    kw = dict(num_tasks=4, trunc_length=5, min_unroll=10, max_unroll=20, sigma=0.02)
    es_cfg = MetaTrainConfig(
        estimator="es", es_loss_type="last_recompute", es_recompute_samples=7, sign_delta_loss=0.1, **kw
    )
    assert build_estimator(es_cfg) == FullES(4, 10, 20, 0.02, "last_recompute", 7, 0.1)
    assert build_estimator(MetaTrainConfig(estimator="tbptt", **kw)) == TruncatedBackprop(4, 5, 10, 20)
    assert build_estimator(MetaTrainConfig(estimator="pes", **kw)) == PES(4, 5, 10, 20, 0.02)
    with pytest.raises(ValueError, match="es_loss_type must be one of"):
        MetaTrainConfig(estimator="es", es_loss_type="es_loss_bad", **kw)
