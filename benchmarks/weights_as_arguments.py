"""What passing a learned optimizer's weights to the evaluation program as an argument changes (issue 22, item 2).

    .venv/bin/python benchmarks/weights_as_arguments.py [--root DIR] [--task digits_mlp]

:func:`components.evaluation.runner.train_curves` builds each optimizer inside the compiled program. Closed over,
a learned optimizer's meta-parameters are constants that XLA embeds, and every other set of weights (a re-trained
optimizer, a zoo entry of the same architecture, a checkpoint of the same run) is a new program to compile. The
evaluation's factories (:func:`components.evaluation.experiment.learned_family`) are
:class:`components.evaluation.runner.WithWeights`: the program gets the weights as one more argument, so one
compiled program serves every optimizer of the same structure on a task and JAX's persistent cache finds it on
later runs. This compares the two forms (closed over: a plain factory calling the ``WithWeights``).

This measures, on one evaluation task of a project whose pipeline has run (``models/lopt``, ``data/prepared``,
``models/safeguard.json``; e.g. the smoke run's workspace ``.l2o/experiments/tiny``), for the learned optimizer
alone, under LGL2O and in HUB with the calibrated guard:

* whether the two forms give bitwise-identical outputs (every curve and the final optimizer state);
* the compile time of each form (tracing, lowering, compiling), and of the argument form for other weights (the
  meta-parameters x 1.01) once the first is in the persistent cache, i.e. what a second optimizer of the same
  structure costs.

The persistent cache is a fresh temporary folder. Prints one row per optimizer and writes
``benchmarks/results/weights_as_arguments_<backend>.json``. No assertions: measurements.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _programs(root: Path, task_name: str):
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from components.evaluation.experiment import learned_family  # noqa: PLC0415
    from components.optimizers import load  # noqa: PLC0415
    from components.stages import evaluate as stage  # noqa: PLC0415
    from components.stages.paths import MODEL_DIR, SAFEGUARD  # noqa: PLC0415
    from flows.params_io import load_params  # noqa: PLC0415

    params = load_params(root / "params.yaml")
    task, train, sets, steps = stage.task_setup(params, root, task_name)
    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(params.seed), 2), params.evaluate.num_seeds)
    trained = load(root / MODEL_DIR)
    safeguard = json.loads((root / SAFEGUARD).read_text())
    guard, loss_batch = safeguard["guard"], safeguard.get("loss_batch", "same")
    rate = jnp.asarray([safeguard["learning_rate"]], jnp.float32)

    family = learned_family(trained.lopt, trained.meta_params, guard, loss_batch)(steps)  # the evaluate stage's own
    members = {name: family[name] for name in ("learned", "lgl2o", "hub")}
    return dict(task=task, train=train, sets=sets, steps=steps, keys=keys, rate=rate, every=params.evaluate.eval_every,
                members=members)  # fmt: skip


def _train(p: dict, make_opt) -> tuple[dict, float]:
    """``train_curves`` of one factory: (outputs, compile seconds)."""
    from components.evaluation.runner import train_curves  # noqa: PLC0415

    timing: dict = {}
    out = train_curves(
        p["task"], make_opt, p["rate"], p["train"], p["sets"], keys=p["keys"], num_steps=p["steps"],
        eval_every=p["every"], timing=timing,
    )  # fmt: skip
    return out, timing["compile_seconds"]


def _equal(a: dict, b: dict) -> bool:
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=".", help="a project (or workspace) whose pipeline has run")
    ap.add_argument("--task", default="digits_mlp", help="an evaluation task of its params")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    cache = tempfile.mkdtemp(prefix="l2o-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache  # read when JAX is imported, below
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    import jax  # noqa: PLC0415

    from components.evaluation.runner import WithWeights  # noqa: PLC0415

    p = _programs(Path(args.root).resolve(), args.task)
    rows = []
    for name, member in p["members"].items():
        constants, compile_constants = _train(p, lambda lr, member=member: member(lr))  # closed over
        arguments, compile_args = _train(p, member)
        other = WithWeights(member.make, jax.tree.map(lambda x: x * 1.01, member.weights))
        _, compile_other = _train(p, other)
        rows.append(
            {
                "optimizer": name,
                "bitwise_equal": _equal(constants, arguments),
                "compile_s_constants": round(compile_constants, 2),
                "compile_s_arguments": round(compile_args, 2),
                "compile_s_arguments_other_weights": round(compile_other, 2),
            }
        )
    print(f"{args.task} ({p['steps']} steps, {len(p['keys'])} seeds), {jax.default_backend()}, {os.cpu_count()} cores")
    print(f"{'optimizer':<10} {'bitwise equal':>13} {'compile: constants':>19} {'arguments':>10} {'other weights':>14}")
    for r in rows:
        print(
            f"{r['optimizer']:<10} {str(r['bitwise_equal']):>13} {r['compile_s_constants']:>18.1f}s"
            f" {r['compile_s_arguments']:>9.1f}s {r['compile_s_arguments_other_weights']:>13.1f}s"
        )
    from benchmarks.results_io import write_results  # noqa: PLC0415

    path = write_results("weights_as_arguments", {"task": args.task, "results": rows}, args.out)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return rows


if __name__ == "__main__":
    main()
