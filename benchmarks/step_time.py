"""Per-step cost of the optimizers relative to Adam (one jitted update, parameters of several sizes).

    .venv/bin/python benchmarks/step_time.py [--sizes 1e4 1e5 1e6] [--repeats 50]

Prints one table: milliseconds per update and the ratio to Adam measured in the same run. The LGL2O
guard also pays two forward passes of the loss in real training; here its ``loss_fn`` is a cheap
quadratic, so the column shows the optimizer-side overhead only.
"""

import argparse
import time

import jax
import jax.numpy as jnp

from components.optimizers import SmallFcLOpt, guard_with_loss, make_baseline


def _time_update(opt, params, repeats):
    loss_fn = lambda p: sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(p))  # noqa: E731

    @jax.jit
    def step(params, state):
        grads = jax.tree_util.tree_map(lambda x: 2 * x, params)
        updates, state = opt.update(grads, state, params, loss=loss_fn(params), loss_fn=loss_fn)
        return jax.tree_util.tree_map(lambda p, u: p + u, params, updates), state

    state = opt.init(params)
    params, state = jax.block_until_ready(step(params, state))  # compile
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeats):
            params, state = step(params, state)
        jax.block_until_ready(params)
        best = min(best, (time.perf_counter() - t0) / repeats)
    return best * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    lopt = SmallFcLOpt()
    learned = lopt.make(lopt.init_meta_params(jax.random.PRNGKey(0)), num_steps=1000)
    opts = {
        "adam": make_baseline("adam", 1e-3),
        "small_fc_lopt": learned,
        "lgl2o(small_fc_lopt, adam)": guard_with_loss(learned, make_baseline("adam", 1e-3)),
    }
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), jax {jax.__version__}")
    header = f"{'params':>10} | " + " | ".join(f"{k:>28}" for k in opts)
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        n = int(size)
        side = int(n**0.5)
        params = {"w": jnp.ones((side, n // side)) * 0.01, "b": jnp.zeros((n // side,))}
        ms = {k: _time_update(o, params, args.repeats) for k, o in opts.items()}
        cells = [f"{ms[k]:9.3f} ms ({ms[k] / ms['adam']:5.1f}x Adam)" for k in opts]
        print(f"{n:>10} | " + " | ".join(f"{c:>28}" for c in cells))


if __name__ == "__main__":
    main()
