"""Meta-training throughput: the vmapped PES engine against a straightforward per-step Python loop.

    .venv/bin/python benchmarks/meta_train_throughput.py [--num-tasks 8] [--trunc-length 20]
        [--outer-steps 50] [--steps-per-call 10] [--loop-outer-steps 2] [--lopt small_fc_lopt]

Both do the same work per outer step: ``num_tasks`` inner problems (8x8 image MLPs with one hidden
layer of 32, batch 128, the default experiment's family), each unrolled ``trunc_length`` steps for
the θ+ε and the θ−ε branch with the learned optimizer, inner problems reset when their horizon ends,
then the PES estimate and an Adam step on the meta-params.

* **engine**: :func:`components.meta.meta_train`, one compiled call per ``--steps-per-call`` outer
  steps (``vmap`` over tasks and antithetic pairs, ``lax.scan`` over the truncation and over the
  outer steps of a call). Timed over ``--outer-steps`` outer steps after the first call (which
  compiles; meta_train reports when it finished).
* **loop**: one jitted inner step (minibatch, loss, gradient, learned-optimizer update), called from
  Python for every task, branch and step; the PES estimate from the collected losses; then the
  outer update. Warmed up (compiled) before timing.

``--recipe celo`` instead measures Celo's full meta-training recipe as ``params/celo_gpu.yaml`` sets
it (read with :func:`components.meta.load_preset`, no pydantic needed on a bare GPU worker): 4
families (one per 8x8 dataset) × 8 tasks × 2 antithetic branches × truncation 50, horizons
100..2000, both phases (phase 1 trains the MLP, phase 2 the LSTM scheduler), each with the preset's
settings but timed over ``--outer-steps`` outer steps after its compiling first call; it reports
outer and inner steps/s per phase and the projected wall time of the full recipe (each phase's
``num_outer_steps``, 100k).

Inner steps per second = tasks × 2 × trunc_length × outer steps / seconds. The data are random
arrays of the real shapes (two datasets of 8x8x1 images, 10 classes): throughput does not depend on
pixel values. Prints a table and writes ``benchmarks/results/meta_train_throughput_<backend>.json``.
No assertions: these are measurements (the issue asks the engine to be ≥ 10× the loop on CPU).
"""

import argparse
import dataclasses
import math
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_io import write_results  # noqa: E402
from components.meta import (  # noqa: E402
    MetaTrainConfig,
    MetaTrainPreset,
    draw_batches,
    inner_step,
    load_preset,
    meta_train,
    sample_length,
)
from components.optimizers.registry import create_learned  # noqa: E402
from components.tasks import ImageMLPFamily, stack_datasets  # noqa: E402

MIN_UNROLL, MAX_UNROLL, SIGMA = 50, 1000, 0.01
CELO_PRESET = Path(__file__).resolve().parents[1] / "params" / "celo_gpu.yaml"
"""The params file whose meta_train section is Celo's recipe."""


def make_problem(lopt_name: str, num_examples: int = 10000):
    rng = np.random.default_rng(0)
    xs = [rng.random((num_examples, 8, 8, 1), np.float32) for _ in range(2)]
    ys = [rng.integers(0, 10, num_examples).astype(np.int32) for _ in range(2)]
    data = stack_datasets(xs, ys)
    family = ImageMLPFamily(("a", "b"), (32,), (8, 8, 1), 10, 128)
    kwargs = {"hidden_size": 4, "hidden_layers": 2} if lopt_name == "small_fc_lopt" else {}
    return create_learned(lopt_name, **kwargs), family, data


def engine_rate(
    lopt, family, data, num_tasks: int, trunc: int, outer_steps: int, steps_per_call: int
) -> tuple[float, float]:
    """(inner steps/s after the first call, which includes compilation; total seconds)."""
    cfg = MetaTrainConfig(
        num_outer_steps=outer_steps + steps_per_call,
        steps_per_call=steps_per_call,
        num_tasks=num_tasks,
        trunc_length=trunc,
        min_unroll=MIN_UNROLL,
        max_unroll=MAX_UNROLL,
        sigma=SIGMA,
        outer_lr_schedule="constant",
        log_every=outer_steps + steps_per_call,
    )
    lines: list[str] = []
    r = meta_train(lopt, family, data, cfg, key=jax.random.PRNGKey(0), log=lines.append)
    # meta_train reports when its first call (compilation included) finished
    match = next(m for line in lines if (m := re.search(r"compiled the outer step in ([0-9.]+)s", line)))
    first = float(match.group(1))
    return outer_steps * num_tasks * 2 * trunc / (r.seconds - first), r.seconds


def loop_rate(lopt, family, data, num_tasks: int, trunc: int, outer_steps: int) -> float:
    """Inner steps/s of the per-step Python loop (after a warm-up outer step that compiles it)."""

    @jax.jit
    def loop_step(theta, params, opt_state, length, task, data, key):
        opt = lopt.make(theta, num_steps=length)
        loss, params, opt_state = inner_step(opt, task, params, opt_state, *draw_batches(task, data, key))
        return task.normalized_loss(loss), params, opt_state

    @jax.jit
    def fresh(theta, key):
        k_task, k_len, k_init = jax.random.split(key, 3)
        task = family.sample(k_task)
        length = sample_length(k_len, MIN_UNROLL, MAX_UNROLL)
        params = task.init(k_init)
        return task, length, params, lopt.make(theta, num_steps=length).init(params)

    outer = optax.adam(1e-3)
    key = jax.random.PRNGKey(1)
    theta = lopt.init_meta_params(key)
    outer_state = outer.init(theta)
    # per task: the shared task/length and the two branches' (params, opt_state), step, PES accumulator
    problems = []
    for t in range(num_tasks):
        task, length, params, opt_state = fresh(theta, jax.random.fold_in(key, t))
        problems.append(
            {
                "task": task,
                "length": length,
                "step": int(np.random.default_rng(t).integers(0, int(length))),
                "branches": [(params, opt_state), (params, opt_state)],
                "accum": jax.tree_util.tree_map(jnp.zeros_like, theta),
            }
        )

    def one_outer_step(theta, outer_state, i):
        k_outer = jax.random.fold_in(key, 1000 + i)
        grads = []
        for t, prob in enumerate(problems):
            k_task = jax.random.fold_in(k_outer, t)
            leaves, treedef = jax.tree_util.tree_flatten(theta)
            eps = jax.tree_util.tree_unflatten(
                treedef,
                [SIGMA * jax.random.normal(k, p.shape) for k, p in zip(jax.random.split(k_task, len(leaves)), leaves)],
            )
            thetas = [jax.tree_util.tree_map(jnp.add, theta, eps), jax.tree_util.tree_map(jnp.subtract, theta, eps)]
            losses = [[], []]
            reset_at = None
            for k in range(trunc):
                k_step = jax.random.fold_in(k_task, 10 + k)
                for b in range(2):
                    params, opt_state = prob["branches"][b]
                    loss, params, opt_state = loop_step(
                        thetas[b], params, opt_state, prob["length"], prob["task"], data, k_step
                    )
                    losses[b].append(float(loss))
                    prob["branches"][b] = (params, opt_state)
                prob["step"] += 1
                if prob["step"] >= int(prob["length"]):  # horizon reached: a new problem for both branches
                    k_new = jax.random.fold_in(k_step, 1)
                    new = [fresh(thetas[b], k_new) for b in range(2)]
                    prob["task"], prob["length"] = new[0][0], new[0][1]
                    prob["branches"] = [(new[b][2], new[b][3]) for b in range(2)]
                    prob["step"] = 0
                    reset_at = k if reset_at is None else reset_at
            delta = np.asarray(losses[0]) - np.asarray(losses[1])
            split = trunc if reset_at is None else reset_at + 1
            d_before, d_after = delta[:split].sum() / trunc, delta[split:].sum() / trunc
            acc_new = jax.tree_util.tree_map(jnp.add, prob["accum"], eps)
            grads.append(
                jax.tree_util.tree_map(
                    lambda a, e, db=d_before, da=d_after: (db * a + da * e) / (2 * SIGMA**2), acc_new, eps
                )
            )
            prob["accum"] = eps if reset_at is not None else acc_new
        grad = jax.tree_util.tree_map(lambda *g: sum(g) / len(g), *grads)
        updates, outer_state = outer.update(grad, outer_state, theta)
        return optax.apply_updates(theta, updates), outer_state

    theta, outer_state = one_outer_step(theta, outer_state, 0)  # warm-up: compiles loop_step and fresh
    jax.block_until_ready(theta)
    t0 = time.perf_counter()
    for i in range(1, outer_steps + 1):
        theta, outer_state = one_outer_step(theta, outer_state, i)
    jax.block_until_ready(theta)
    return outer_steps * num_tasks * 2 * trunc / (time.perf_counter() - t0)


def celo_recipe(path: Path = CELO_PRESET) -> MetaTrainPreset:
    """The preset at ``path``, checked to be Celo's recipe (the families below are built for it)."""
    preset = load_preset(path)
    family = preset.task_family
    if family.get("preset") != "celo" or not family.get("estimator_per_dataset"):
        raise ValueError(
            f"{path}: --recipe celo needs meta_train.task_family {{preset: celo, estimator_per_dataset: true}},"
            f" got {family}"
        )
    return preset


def recipe_summary(preset: MetaTrainPreset) -> dict:
    """What the JSON records of the recipe: the learned optimizer, the first phase's population and
    unroll settings, and every phase's outer steps."""
    cfg = preset.phases[0].config
    keys = ("num_tasks", "trunc_length", "min_unroll", "max_unroll", "sigma", "steps_per_call")
    return {
        "params": str(CELO_PRESET.relative_to(CELO_PRESET.parents[1])),
        "lopt": preset.lopt,
        **{k: getattr(cfg, k) for k in keys},
        "phases": {p.name: p.config.num_outer_steps for p in preset.phases},
    }


def celo_recipe_rates(preset: MetaTrainPreset, outer_steps: int, log) -> list[dict]:
    """Per phase: outer / inner steps per second of the Celo recipe and its projected wall time."""
    from components.tasks.families import CELO_DATASETS, CELO_IMAGE_SHAPE, celo_families  # noqa: PLC0415

    rng = np.random.default_rng(0)
    families = list(celo_families(CELO_DATASETS).values())
    datas = [
        stack_datasets(
            [rng.random((10000, *CELO_IMAGE_SHAPE), np.float32)], [rng.integers(0, 10, 10000).astype(np.int32)]
        )
        for _ in families
    ]
    rows = []
    for index, phase in enumerate(preset.phases, start=1):
        spc = phase.config.steps_per_call
        timed = max(spc, outer_steps // spc * spc)
        lopt = create_learned(preset.lopt, **phase.lopt_hyperparams)
        # the phase's settings, run for the timed steps plus the compiling first call, one curve point
        steps = timed + spc
        cfg = dataclasses.replace(phase.config, num_outer_steps=steps, log_every=steps, checkpoint_every=None)
        lines: list[str] = []
        res = meta_train(lopt, families, datas, cfg, key=jax.random.PRNGKey(index), log=lines.append)
        match = next(m for line in lines if (m := re.search(r"compiled the outer step in ([0-9.]+)s", line)))
        first = float(match.group(1))
        outer_rate = timed / (res.seconds - first)
        inner_per_outer = len(families) * cfg.num_tasks * 2 * cfg.trunc_length
        full_steps = phase.config.num_outer_steps
        rows.append(
            {
                "phase": phase.name,
                "timed_outer_steps": timed,
                "compile_seconds": first,
                "outer_steps_per_s": outer_rate,
                "inner_steps_per_s": outer_rate * inner_per_outer,
                "recipe_outer_steps": full_steps,
                "projected_hours": (full_steps / outer_rate + first) / 3600,
            }
        )
        log(f"  {phase.name}: {outer_rate:.2f} outer steps/s over {timed} steps (compiled in {first:.0f}s)")
    return rows


def main_recipe(args) -> int:
    device = jax.devices()[0]
    outer = args.outer_steps if args.outer_steps is not None else (2000 if jax.default_backend() == "gpu" else 20)
    preset = celo_recipe()
    rows = celo_recipe_rates(preset, outer, lambda m: print(m, flush=True))
    r = recipe_summary(preset)
    print(
        f"Celo recipe meta-training ({r['params']}): 4 families x {r['num_tasks']} tasks x 2 x truncation"
        f" {r['trunc_length']}, {r['steps_per_call']} outer steps per call, {jax.default_backend()}"
        f" ({device.device_kind}), jax {jax.__version__}"
    )
    print(f"{'phase':<8} {'timed steps':>11} {'outer steps/s':>14} {'inner steps/s':>14} {'projected h':>12}")
    for row in rows:
        print(
            f"{row['phase']:<8} {row['timed_outer_steps']:>11} {row['outer_steps_per_s']:>14.2f}"
            f" {row['inner_steps_per_s']:>14.0f} {row['projected_hours']:>12.2f}"
        )
    total = sum(row["projected_hours"] for row in rows)
    print(f"projected full recipe (all phases, {sum(r['phases'].values())} outer steps): {total:.2f} h")
    doc = {"recipe": r, "args": vars(args), "rows": rows, "projected_hours_total": total}
    print(f"wrote {write_results('meta_train_celo_recipe', doc, args.out)}")
    return 0 if all(math.isfinite(row["outer_steps_per_s"]) for row in rows) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", choices=["celo"], default=None, help="measure a paper's full meta-training recipe")
    ap.add_argument("--lopt", default="small_fc_lopt")
    ap.add_argument("--num-tasks", type=int, nargs="+", default=[8])
    ap.add_argument("--trunc-length", type=int, default=20)
    ap.add_argument(
        "--outer-steps",
        type=int,
        default=None,
        help="engine outer steps (the first, compiling call is not timed); default 50; with --recipe: "
        "2000 on GPU, 20 on CPU",
    )
    ap.add_argument("--steps-per-call", type=int, default=10, help="engine outer steps per compiled call")
    ap.add_argument("--loop-outer-steps", type=int, default=2, help="timed outer steps of the per-step loop")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.recipe:
        return main_recipe(args)
    if args.outer_steps is None:
        args.outer_steps = 50

    device = jax.devices()[0]
    lopt, family, data = make_problem(args.lopt)
    rows = []
    for num_tasks in args.num_tasks:
        engine, seconds = engine_rate(
            lopt, family, data, num_tasks, args.trunc_length, args.outer_steps, args.steps_per_call
        )
        loop = loop_rate(lopt, family, data, num_tasks, args.trunc_length, args.loop_outer_steps)
        rows.append(
            {
                "num_tasks": num_tasks,
                "trunc_length": args.trunc_length,
                "engine_inner_steps_per_s": engine,
                "loop_inner_steps_per_s": loop,
                "speedup": engine / loop,
                "engine_seconds": seconds,
            }
        )
        print(f"  tasks={num_tasks}: engine {engine:.0f}/s, loop {loop:.0f}/s", flush=True)

    print(
        f"meta-training throughput, {args.lopt} on 8x8 MLP-32 tasks (batch 128), PES truncation {args.trunc_length},"
        f" engine {args.steps_per_call} outer steps per call,"
        f" {jax.default_backend()} ({device.device_kind}), jax {jax.__version__}"
    )
    print(f"{'tasks x 2':>9} {'engine inner steps/s':>21} {'loop inner steps/s':>19} {'engine / loop':>14}")
    for r in rows:
        print(
            f"{r['num_tasks'] * 2:>9} {r['engine_inner_steps_per_s']:>21.0f} {r['loop_inner_steps_per_s']:>19.0f}"
            f" {r['speedup']:>13.1f}x"
        )
    doc = {
        "lopt": args.lopt,
        "args": vars(args),
        "rows": rows,
    }
    print(f"wrote {write_results('meta_train_throughput', doc, args.out)}")
    return 0 if all(math.isfinite(r["speedup"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
