"""One table of optimizers, one set of checks (optax-style conformance tests).

``OPTIMIZERS_UNDER_TEST`` holds every optimizer the project ships, built through the public
``components.optimizers.create``: each hand-designed baseline, each learned optimizer from fresh
meta-params and after a few meta-training steps, and the hybrids / safeguards wrapping learned ones.
Every entry is driven exactly like a training loop drives it:
``opt.update(grads, state, params, loss=l, loss_fn=f, fresh_loss_fn=f)``.

Checks for every entry: update shapes and dtypes match the params (0-D, 1-D, 2-D, 4-D leaves); state
dtypes are stable; no recompilation on the second step; extra args accepted (and unknown ones
ignored); updates finite; ``jax.vmap`` over a batch of problems gives the per-problem results.
Baselines and safeguarded learned optimizers must lower the loss on a parabola and on Rosenbrock
(baselines with the best learning rate of a small grid, run under ``vmap``); unguarded learned ones
(whose meta-params are random or barely trained) only have to stay finite with bounded steps there.
For every learned optimizer the meta-gradient through a 20-step unroll is finite and non-zero, and a
few steps of meta-training along it give the "trained" variant.

Every program here is compiled with XLA:CPU's cheaper code generation (:data:`CHEAP_COMPILE`): compiling is
most of this module's time (the meta-gradients of Celo and VeLO alone took 50-80 s each in CI), the programs
run for a few steps on tiny tensors, and the checks are about structure, finiteness and tolerances, which the
options do not change (they change how the same HLO is turned into machine code, not what it computes; results
may differ in the last bits). The bit-level comparisons of the fused step and the pipeline's programs compile
with the defaults, in their own modules.
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from components.optimizers import registry
from components.optimizers.baselines import BASELINES


def _cheap_compile_options() -> dict:
    """No XLA fusion emitters and LLVM -O0: the small_fc_lopt meta-gradient compiles in 13 s instead of 21, Celo's
    in 17 instead of 29 (2-core CPU, JAX 0.10.2). ``{}`` (the defaults) where this XLA does not know an option."""
    options = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0}
    try:
        jax.jit(lambda x: x + 1, compiler_options=options).lower(1.0).compile()
    except jax.errors.JaxRuntimeError:  # "No such compile option" (another XLA version)
        return {}
    return options


CHEAP_COMPILE = _cheap_compile_options()
_jit = functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)

# ----------------------------------------------------------------------------- problems


def parabola(params):
    return jnp.sum(jnp.square(params["x"]))


def rosenbrock(params):
    x = params["x"]
    return jnp.square(1.0 - x[0]) + 100.0 * jnp.square(x[1] - jnp.square(x[0]))


@dataclasses.dataclass(frozen=True)
class Problem:
    loss: Callable
    init: tuple
    num_steps: int
    guard_lr: float  # learning rate of the SGD guard / fallback (below 1/L where it matters)
    decrease: float  # required final/initial loss ratio


PROBLEMS = {
    "parabola": Problem(parabola, (-1.0, 10.0, 1.0), 1000, 0.1, 1e-2),
    # the Hessian's largest eigenvalue near (1, 1) is ~1002, so GD needs lr < 2e-3
    "rosenbrock": Problem(rosenbrock, (-0.5, 1.0), 3000, 1e-3, 0.1),
}
BASELINE_LR_GRID = jnp.asarray([1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0], jnp.float32)


def _params():
    """0-D, 1-D, 2-D and 4-D leaves."""
    rng = np.random.default_rng(42)
    shapes = {"scalar": (), "bias": (5,), "kernel": (4, 3), "conv": (3, 3, 2, 4)}
    return {name: jnp.asarray(rng.normal(size=s), jnp.float32) for name, s in shapes.items()}


def _loss(params):
    return sum(jnp.sum(jnp.square(x.astype(jnp.float32) - 0.5)) for x in jax.tree.leaves(params))


NUM_STEPS = 100  # the horizon learned optimizers are told

# ----------------------------------------------------------------------------- learned optimizers

# hyperparameters needed to build each learned optimizer on a problem with `n` parameter tensors
LEARNED_SETTINGS: dict[str, Callable[[int], dict]] = {
    "l3rs": lambda n: {"num_layers": n},
    "velo": lambda n: {"lstm_hidden_size": 16, "param_inits": 4},
    # µP roles of the structural problem's leaves (hidden tensors get 1/fan_in), or of the single "x"
    "mup_small_fc_lopt": lambda n: {
        "roles": {"scalar": "bias", "bias": "bias", "kernel": "hidden", "conv": "hidden"} if n == 4 else {"x": "input"}
    },
}


def _learned(name: str, num_tensors: int):
    return registry.create_learned(name, **LEARNED_SETTINGS.get(name, lambda n: {})(num_tensors))


def _unroll_loss(lopt, meta_params, params, loss_fn, num_steps=20):
    """Mean training loss of a ``num_steps`` unroll from ``params`` (the meta-objective)."""
    opt = lopt.make(meta_params, num_steps=num_steps)

    def step(carry, _):
        params, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params, loss=loss)
        return (optax.apply_updates(params, updates), state), loss

    _, losses = jax.lax.scan(step, (params, opt.init(params)), None, length=num_steps)
    return jnp.mean(losses)


def _meta_objective(lopt, meta_params, params, loss_fn):
    penalty = getattr(lopt, "meta_penalty", None)
    extra = penalty(meta_params) if callable(penalty) else 0.0
    return _unroll_loss(lopt, meta_params, params, loss_fn) + extra


@functools.cache
def meta_gradient_and_trained(name: str, num_tensors: int):
    """(fresh θ, meta-gradient at θ, θ after 3 Adam steps on the 20-step meta-objective)."""
    assert num_tensors == 4, "meta-trained on the structural problem (0-D, 1-D, 2-D and 4-D leaves)"
    lopt = _learned(name, num_tensors)
    theta = lopt.init_meta_params(jax.random.key(0))
    params = _params()
    grad_fn = _jit(jax.grad(functools.partial(_meta_objective, lopt), argnums=0), static_argnums=2)
    loss_fn = _loss
    grad0 = grad_fn(theta, params, loss_fn)
    outer = optax.adam(1e-2)
    state = outer.init(theta)
    trained = theta
    for _ in range(3):
        g = jax.tree.map(lambda x: jnp.where(jnp.isfinite(x), x, 0.0), grad_fn(trained, params, loss_fn))
        updates, state = outer.update(g, state, trained)
        trained = optax.apply_updates(trained, updates)
    return theta, grad0, trained


# ----------------------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class OptimizerCase:
    name: str
    # (problem name or None for the structural checks, number of parameter tensors) -> optimizer
    make: Callable[[str | None, int], optax.GradientTransformationExtraArgs]
    kind: str  # "baseline", "learned" or "safeguarded"/"hybrid"
    lr_is_traced: bool = False  # baselines: make() ignores the problem; lr comes from the vmapped grid


def _baseline_case(name):
    return OptimizerCase(name, lambda problem, n, lr=1e-2: registry.create(name, learning_rate=lr), "baseline", True)


def _learned_case(name, variant):
    def make(problem, n):
        # meta-trained once, on the 4-tensor structural problem; the 1-tensor problems reuse θ (L3RS,
        # whose meta-params hold one embedding per tensor, keeps the first tensor's embedding)
        fresh, _, trained = meta_gradient_and_trained(name, 4)
        theta = fresh if variant == "fresh" else trained
        if name == "l3rs" and n != 4:
            theta = dict(theta, embeddings=theta["embeddings"][:n])
        settings = LEARNED_SETTINGS.get(name, lambda n: {})(n)
        return registry.create(name, num_steps=NUM_STEPS, meta_params=theta, **settings)

    return OptimizerCase(f"{name}[{variant}]", make, "learned")


def _wrapped_case(wrapper, name, variant):
    inner = {"lgl2o": "guard", "gl2o": "fallback", "hub": "hand"}[wrapper]
    learned = _learned_case(name, variant)

    def make(problem, n):
        if wrapper == "hub":
            other = registry.create("adam", learning_rate=1e-2)
        else:
            other = registry.create("sgd", learning_rate=PROBLEMS[problem or "parabola"].guard_lr)
        return registry.create(wrapper, learned=learned.make(problem, n), **{inner: other})

    kind = "hybrid" if wrapper == "hub" else "safeguarded"
    return OptimizerCase(f"{wrapper}({name}[{variant}])", make, kind)


LEARNED_NAMES = [n for n in sorted(registry.LEARNED) if n != "adafac_mlp_lopt"]  # alias of small_fc_lopt

OPTIMIZERS_UNDER_TEST = (
    [_baseline_case(n) for n in sorted(BASELINES)]
    + [_learned_case(n, v) for n in LEARNED_NAMES for v in ("fresh", "trained")]
    + [_wrapped_case(w, n, "trained") for w in ("lgl2o", "gl2o") for n in LEARNED_NAMES]
    + [_wrapped_case("hub", n, "fresh") for n in ("small_fc_lopt", "celo")]
)
_IDS = [case.name for case in OPTIMIZERS_UNDER_TEST]


def test_every_registered_name_is_in_the_table():
    covered = {c.name.split("[")[0] for c in OPTIMIZERS_UNDER_TEST} | {
        c.name.split("(")[0] for c in OPTIMIZERS_UNDER_TEST
    }
    known = {n for names in registry.available().values() for n in names} - {"adafac_mlp_lopt"}
    assert known <= covered, sorted(known - covered)


# ----------------------------------------------------------------------------- checks


def _step(opt, params, state):
    loss, grads = jax.value_and_grad(_loss)(params)
    updates, state = opt.update(grads, state, params, loss=loss, loss_fn=_loss, fresh_loss_fn=_loss)
    return optax.apply_updates(params, updates), state, updates


def _shapes_and_dtypes(tree):
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


_JITTED_STEPS: dict[str, tuple[Callable, list, optax.GradientTransformationExtraArgs]] = {}


def _jitted_step(case):
    """One jitted training step per case, shared by the checks (compiling is the slow part)."""
    if case.name not in _JITTED_STEPS:
        opt = case.make(None, 4)
        traces = []

        @_jit
        def step(params, state):
            traces.append(1)  # Python side effect: runs only while tracing
            return _step(opt, params, state)

        _JITTED_STEPS[case.name] = (step, traces, opt)
    return _JITTED_STEPS[case.name]


@pytest.mark.parametrize("case", OPTIMIZERS_UNDER_TEST, ids=_IDS)
def test_structure_dtypes_finiteness_and_no_recompilation(case):
    step, traces, opt = _jitted_step(case)
    params = _params()
    state0 = opt.init(params)
    p1, state1, updates = step(params, state0)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    assert _shapes_and_dtypes(updates) == _shapes_and_dtypes(params)
    p, state = p1, state1
    for _ in range(4):
        p, state, updates = step(p, state)
        for u in jax.tree.leaves(updates):
            assert np.all(np.isfinite(np.asarray(u, np.float32))), case.name
    jax.block_until_ready(p)
    assert len(traces) == 1  # the second and later steps reuse the first compilation
    assert _shapes_and_dtypes(state1) == _shapes_and_dtypes(state0)
    assert _shapes_and_dtypes(state) == _shapes_and_dtypes(state1)


@pytest.mark.parametrize("case", OPTIMIZERS_UNDER_TEST, ids=_IDS)
def test_extra_args_accepted(case):
    opt = case.make(None, 4)
    params = _params()

    def one_update(params):
        state = opt.init(params)
        grads = jax.grad(_loss)(params)
        return opt.update(
            grads, state, params, loss=_loss(params), loss_fn=_loss, fresh_loss_fn=_loss, unused_extra=jnp.ones(3)
        )

    updates, _ = jax.eval_shape(one_update, params)  # traces without compiling
    assert _shapes_and_dtypes(updates) == _shapes_and_dtypes(params)


@pytest.mark.parametrize("case", OPTIMIZERS_UNDER_TEST, ids=_IDS)
def test_vmap_over_problems_matches_separate_runs(case):
    step, _, opt = _jitted_step(case)
    p_a = _params()
    p_b = jax.tree.map(lambda x: 0.5 * x + 0.3, p_a)
    batched = jax.tree.map(lambda a, b: jnp.stack([a, b]), p_a, p_b)

    def two_steps(params):
        state = opt.init(params)
        params, state, _ = _step(opt, params, state)
        params, state, _ = _step(opt, params, state)
        return params

    out = _jit(jax.vmap(two_steps))(batched)
    for i, p in enumerate((p_a, p_b)):
        s = opt.init(p)
        p, s, _ = step(p, s)
        p, s, _ = step(p, s)
        for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(p), strict=True):
            np.testing.assert_allclose(got[i], want, rtol=2e-5, atol=1e-6)


def _run(opt, problem, learning_rates=None):
    """Losses of ``problem.num_steps`` steps (vmapped over ``learning_rates`` for baselines)."""

    def run(lr):
        o = opt(lr) if learning_rates is not None else opt
        params = {"x": jnp.asarray(problem.init, jnp.float32)}

        def body(carry, _):
            params, state = carry
            loss, grads = jax.value_and_grad(problem.loss)(params)
            updates, state = o.update(grads, state, params, loss=loss, loss_fn=problem.loss, fresh_loss_fn=problem.loss)
            return (optax.apply_updates(params, updates), state), (loss, updates)

        (params, _), (losses, updates) = jax.lax.scan(body, (params, o.init(params)), None, length=problem.num_steps)
        return jnp.append(losses, problem.loss(params)), updates["x"]

    if learning_rates is None:
        return _jit(run)(None)
    return _jit(jax.vmap(run))(learning_rates)


_DESCENT_CASES = [
    pytest.param(case, problem, id=f"{case.name}-{problem}")
    for case in OPTIMIZERS_UNDER_TEST
    if case.kind in ("baseline", "safeguarded")
    for problem in PROBLEMS
]


@pytest.mark.parametrize(("case", "problem_name"), _DESCENT_CASES)
def test_lowers_the_loss(case, problem_name):
    problem = PROBLEMS[problem_name]
    if case.kind == "baseline":
        losses, _ = _run(lambda lr: case.make(problem_name, 1, lr), problem, BASELINE_LR_GRID)
        losses = np.asarray(losses)
        finite = np.all(np.isfinite(losses), axis=1)
        final = np.where(finite, losses[:, -1], np.inf)
        best = int(np.argmin(final))
        ratio = final[best] / losses[best, 0]
        assert ratio < problem.decrease, f"best lr {float(BASELINE_LR_GRID[best])}: final/initial {ratio:.3g}"
        return
    losses, _ = _run(case.make(problem_name, 1), problem)
    losses = np.asarray(losses)
    assert np.all(np.isfinite(losses))
    assert losses[-1] / losses[0] < problem.decrease, f"final/initial {losses[-1] / losses[0]:.3g}"
    if case.name.startswith("lgl2o"):
        # with gradient descent below 1/L as the guard every accepted step is at least as good as a
        # GD step from the same point, so the loss never goes up on these deterministic problems
        assert np.all(np.diff(losses) <= 1e-6 * np.abs(losses[:-1]) + 1e-7)


_BOUNDED_CASES = [
    pytest.param(case, problem, id=f"{case.name}-{problem}")
    for case in OPTIMIZERS_UNDER_TEST
    if case.kind in ("learned", "hybrid")
    for problem in PROBLEMS
]


@pytest.mark.parametrize(("case", "problem_name"), _BOUNDED_CASES)
def test_unguarded_learned_steps_are_finite_and_bounded(case, problem_name):
    problem = PROBLEMS[problem_name]
    losses, updates = _run(case.make(problem_name, 1), problem)
    assert np.all(np.isfinite(np.asarray(losses)))
    # learned steps are scaled by step multipliers of ~1e-3 (VeLO / Celo: times the parameter
    # scale): far below the problems' scale of 1, whatever the (untrained) network outputs
    assert float(jnp.max(jnp.abs(updates))) < 1.0


@pytest.mark.parametrize("name", LEARNED_NAMES)
def test_meta_gradient_through_a_20_step_unroll_is_finite(name):
    theta, grad, trained = meta_gradient_and_trained(name, 4)
    leaves = jax.tree.leaves(grad)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0.0
    lopt = _learned(name, 4)
    objective = _jit(functools.partial(_meta_objective, lopt), static_argnums=2)
    before = objective(theta, _params(), _loss)
    after = objective(trained, _params(), _loss)
    assert np.isfinite(float(after))
    # three small Adam steps along the exact meta-gradient do not make the meta-objective worse
    assert float(after) <= float(before) * (1 + 1e-3)


@pytest.mark.parametrize("name", LEARNED_NAMES)
def test_vmap_over_meta_params(name):
    """PES perturbs θ per population member: the update must vmap over meta-params."""
    lopt = _learned(name, 4)
    theta = lopt.init_meta_params(jax.random.key(0))
    noise = jax.tree.map(lambda x: 0.01 * jnp.ones_like(x), theta)
    pair = jax.tree.map(lambda t, e: jnp.stack([t + e, t - e]), theta, noise)
    params = _params()

    def one(th):
        opt = lopt.make(th, num_steps=NUM_STEPS)
        return _step(opt, params, opt.init(params))[2]

    batched = _jit(jax.vmap(one))(pair)
    for i in range(2):
        single = _jit(one)(jax.tree.map(lambda x, i=i: x[i], pair))
        for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(single), strict=True):
            np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-7)
