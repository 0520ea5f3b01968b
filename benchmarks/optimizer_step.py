"""Step time of every optimizer relative to Adam on the same parameters (one jitted update).

    .venv/bin/python benchmarks/optimizer_step.py [--sizes 1e5 1e6] [--only adam celo ...] [--repeats 20]
        [--impls reference fused single_pass]

Every name of ``components.optimizers.available()`` is built through ``create``: baselines with
lr 1e-3, learned optimizers from fresh meta-params, hybrids / safeguards around ``small_fc_lopt``
(guard / hand / fallback: Adam, or SGD for GL2O). The parameters are an MLP-shaped pytree of the
requested total size (two square-ish weight matrices and their biases), so per-tensor work (VeLO /
Celo's LSTMs, L3RS's layer features) is counted as it would be in training. Each update gets the
gradient, the loss and a cheap quadratic ``loss_fn`` (the LGL2O / GL2O rows therefore show the
optimizer-side overhead; in real training their extra forward / backward passes cost a model
evaluation each).

``--impls``: every learned optimizer with an ``impl`` field (the per-parameter MLP's form, see
:mod:`components.optimizers.fused`) gets one row per listed form, labelled ``name[impl]``; without
it each runs in its ``auto`` form.

Timing: every program is compiled first, then the optimizers are timed in interleaved rounds and
the best round is kept, so a slow moment of a shared machine hits all of them alike. Above
``--resident-limit`` parameters (device memory) each optimizer is compiled, timed in rounds that
alternate with Adam, and freed before the next. Prints one
table (ms per update and the ratio to Adam measured in the same run) and writes
``benchmarks/results/optimizer_step_<backend>.json`` with the device, versions and date.
No assertions: these are measurements.
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_io import write_results  # noqa: E402
from components.optimizers import registry  # noqa: E402


def mlp_params(size: int) -> dict:
    """Two weight matrices (3/4 and 1/4 of ``size``) and their biases."""
    side1 = max(1, int((0.75 * size) ** 0.5))
    side2 = max(1, int((0.25 * size) ** 0.5))
    key1, key2 = jax.random.split(jax.random.key(0))
    return {
        "layer1": {"w": 0.05 * jax.random.normal(key1, (side1, side1)), "b": jnp.zeros((side1,))},
        "layer2": {"w": 0.05 * jax.random.normal(key2, (side2, side2)), "b": jnp.zeros((side2,))},
    }


CPU_UNCOMPILABLE = ("mlp_lopt[fused]", "mlp_lopt[single_pass]")
"""Rows left out on CPU: compiling them exhausts the memory of a CI-sized machine."""


def has_impl(name: str) -> bool:
    """Whether ``name`` is a learned optimizer with a selectable MLP form (an ``impl`` field)."""
    return registry.kind_of(name) == "learned" and "impl" in registry.spec_hyperparameters(name)


def split_label(label: str) -> tuple[str, str | None]:
    """``"celo[fused]"`` -> ``("celo", "fused")``; ``"adam"`` -> ``("adam", None)``."""
    if label.endswith("]") and "[" in label:
        name, impl = label[:-1].split("[", 1)
        return name, impl
    return label, None


def build(label: str, num_tensors: int) -> optax.GradientTransformationExtraArgs:
    name, impl = split_label(label)
    kind = registry.kind_of(name)
    if kind == "baseline":
        return registry.create(name, learning_rate=1e-3)
    if kind == "learned":
        extra = {"num_layers": num_tensors} if name == "l3rs" else {}
        if impl is not None:
            extra["impl"] = impl
        return registry.create(name, num_steps=1000, key=jax.random.key(0), **extra)
    inner = {"hub": "hand", "lgl2o": "guard", "gl2o": "fallback"}[name]
    other = {"name": "sgd" if name == "gl2o" else "adam", "learning_rate": 1e-3}
    return registry.create(name, learned={"name": "small_fc_lopt"}, num_steps=1000, **{inner: other})


def compiled_step(opt, params):
    loss_fn = lambda p: 0.5 * sum(jnp.sum(x * x) for x in jax.tree.leaves(p))  # noqa: E731

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params, loss=loss, loss_fn=loss_fn, fresh_loss_fn=loss_fn)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    params, state = jax.block_until_ready(step(params, state))
    return step, params, state


def _time(prog, repeats):
    step, p, s = prog
    t0 = time.perf_counter()
    for _ in range(repeats):
        p, s = step(p, s)
    jax.block_until_ready(p)
    prog[1], prog[2] = p, s
    return (time.perf_counter() - t0) / repeats * 1e3


def time_all(names, size, repeats, rounds, log, resident):
    """Best-of-``rounds`` ms per update for every name at ``size`` parameters.

    ``resident``: keep every compiled program and state in memory and interleave all of them per
    round; otherwise (large sizes) only Adam stays resident and each optimizer is timed in rounds
    alternating with Adam, then freed.
    """
    params = mlp_params(size)
    n_tensors = len(jax.tree.leaves(params))
    actual = sum(x.size for x in jax.tree.leaves(params))

    def compile_one(name):
        t0 = time.perf_counter()
        prog = list(compiled_step(build(name, n_tensors), params))
        log(f"  compiled {name} at {actual:.2e} params in {time.perf_counter() - t0:.1f}s")
        return prog

    best = {name: float("inf") for name in names}
    if resident:
        programs = {name: compile_one(name) for name in names}
        for _ in range(rounds):
            for name, prog in programs.items():
                best[name] = min(best[name], _time(prog, repeats))
        return actual, best
    adam = compile_one("adam")
    for name in names:
        if name == "adam":
            continue
        prog = compile_one(name)
        for _ in range(rounds):
            best["adam"] = min(best["adam"], _time(adam, repeats))
            best[name] = min(best[name], _time(prog, repeats))
        del prog
    if len(names) == 1:
        best["adam"] = min(_time(adam, repeats) for _ in range(rounds))
    return actual, best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=None, help="total parameter counts")
    ap.add_argument("--only", nargs="+", default=None, help="optimizer names (default: all; adam is always timed)")
    ap.add_argument(
        "--impls",
        nargs="+",
        default=None,
        choices=["reference", "fused", "single_pass"],
        help="time every learned optimizer with an impl field in each of these forms (default: its auto form)",
    )
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None, help="JSON result path (default: benchmarks/results/...)")
    ap.add_argument(
        "--resident-limit",
        type=float,
        default=2e7,
        help="above this many parameters only one optimizer's program and state are kept in memory at a time",
    )
    args = ap.parse_args(argv)
    backend = jax.default_backend()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    sizes = args.sizes or ([1e5, 1e6] if backend == "cpu" else [1e6, 1e7, 1e8])
    known = [n for names in registry.available().values() for n in names if n != "adafac_mlp_lopt"]
    names = ["adam"] + [n for n in (args.only or known) if n != "adam"]
    for n in names:
        registry.kind_of(n)  # a clear error for an unknown name
    if args.impls:
        names = [label for n in names for label in ([f"{n}[{i}]" for i in args.impls] if has_impl(n) else [n])]
        if backend == "cpu":  # XLA:CPU runs out of memory compiling these (components/optimizers/mlp_lopt.py)
            skipped = [n for n in names if n in CPU_UNCOMPILABLE]
            names = [n for n in names if n not in CPU_UNCOMPILABLE]
            for n in skipped:
                log(f"  skipping {n}: XLA:CPU cannot compile its 32-wide fused loop (see mlp_lopt's docstring)")
    device = jax.devices()[0]
    log(f"backend {backend} ({device.device_kind}), jax {jax.__version__}, optax {optax.__version__}")
    results = {}
    for size in sizes:
        actual, ms = time_all(names, int(size), args.repeats, args.rounds, log, size <= args.resident_limit)
        results[actual] = ms

    cols = list(results)
    print(f"optimizer step time / Adam step time — {backend} ({device.device_kind}), jax {jax.__version__}")
    width = max(16, *(len(n) for n in names))
    header = f"{'optimizer':<{width}}" + "".join(f" | {f'{c:.1e} params':>24}" for c in cols)
    print(header)
    print("-" * len(header))
    for name in names:
        cells = [f"{results[c][name]:9.3f} ms {results[c][name] / results[c]['adam']:6.2f}x" for c in cols]
        print(f"{name:<{width}}" + "".join(f" | {cell:>24}" for cell in cells))

    doc = {
        "num_devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "optax": optax.__version__,
        "impls": args.impls,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "results": [
            {"params": c, "optimizer": n, "ms": results[c][n], "ratio_to_adam": results[c][n] / results[c]["adam"]}
            for c in cols
            for n in names
        ],
    }
    log(f"wrote {write_results('optimizer_step', doc, args.out)}")


if __name__ == "__main__":
    main()
