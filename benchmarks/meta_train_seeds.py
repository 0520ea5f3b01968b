"""Meta-training seed study: how much the learned optimizer a recipe produces depends on the seed.

    .venv/bin/python benchmarks/meta_train_seeds.py [--params params/default.yaml] [--seeds 0 1 2]
        [--variant NAME KEY=VALUE ...] [--runs DIR] [--out FILE]

For every variant (a name and ``meta_train`` overrides; ``base`` is the params file as it is) and every
seed: the ``meta_train`` stage's own code meta-trains the learned optimizer in a scratch root
``<runs>/<variant>-s<seed>`` (the project's prepared data linked in; nothing committed is touched),
then the optimizer trains every task of ``evaluate.tasks`` alone for its horizon with the evaluate
stage's seeds, and gets the train rule's speedup over tuned Adam: its seed-mean EMA-smoothed training
loss at the horizon against the tuned-Adam envelope the committed default run recorded
(``metrics/curves/<task>.json``; Adam's runs do not depend on the learned optimizer, so the envelope
is the one the evaluate stage would compute). Per run it reports the final meta-loss, the largest
outer-gradient norm, every task's speedup, their IQM (the headline statistic) and how many tasks beat
Adam; per variant the spread of the IQMs over seeds (max/min, and the largest deviation from their
mean). A run whose ``result.json`` exists is read, not re-run, so a study can be extended or resumed.

Only the meta-training seed varies: the tasks' seeds and minibatches are those of ``seed: 0``'s
evaluation, as in the committed default run. Prints a table and writes
``benchmarks/results/meta_train_seeds_<backend>.json``. Minutes per run on 2 CPU cores (meta-training
5000 outer steps: 7-13 min; the four tasks: 2-3 min).
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.results_io import write_results  # noqa: E402
from components.evaluation.metrics import ema, steps_to_reach  # noqa: E402
from components.evaluation.runner import train_curves  # noqa: E402
from components.evaluation.stats import iqm  # noqa: E402
from components.optimizers import load  # noqa: E402
from components.stages import meta_train as meta_train_stage  # noqa: E402
from components.stages.common import StageContext, read_run_log  # noqa: E402
from components.stages.evaluate import task_setup  # noqa: E402
from components.stages.params import PipelineParams  # noqa: E402


def speedup_from_envelope(batch_loss: np.ndarray, envelope: dict, num_steps: int, decay: float) -> dict:
    """The train rule's speedup of ``[S, T]`` minibatch losses against a recorded tuned-Adam envelope.

    ``envelope`` is ``{"steps": [...], "loss": [...]}`` (the envelope subsampled at ``steps``, as the
    evaluate stage records it); the step at which it reaches the candidate's smoothed final loss is
    interpolated between recorded points. A candidate Adam never reaches within the envelope gets the
    envelope's bound (censored); a non-finite final loss gets 0.
    """
    target = float(ema(np.asarray(batch_loss, np.float64).mean(0), decay)[-1])
    losses, steps = np.asarray(envelope["loss"], np.float64), np.asarray(envelope["steps"], np.float64)
    bound = float((steps[-1] + (steps[1] - steps[0])) / num_steps)
    if not np.isfinite(target):
        return {"speedup": 0.0, "censored": False, "target_loss": None}
    index = steps_to_reach(losses, target)  # 1-based, fractional, over the recorded points
    if index is None:
        return {"speedup": bound, "censored": True, "target_loss": target}
    step = float(np.interp(index - 1, np.arange(len(steps)), steps))
    return {"speedup": step / num_steps, "censored": False, "target_loss": target}


def evaluate_alone(params: PipelineParams, lopt, meta_params, log=print) -> dict:
    """Every ``evaluate.tasks`` task trained by the learned optimizer alone: speedup, loss, test accuracy."""
    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(0), 2), params.evaluate.num_seeds)
    rows = {}
    for name in params.evaluate.tasks:
        task, train, sets, n = task_setup(params, REPO, name)
        out = train_curves(
            task,
            lambda _, n=n: lopt.make(meta_params, num_steps=n),
            jnp.zeros(1),
            train,
            sets,
            keys=keys,
            num_steps=n,
            eval_every=params.evaluate.eval_every,
        )
        envelope = json.loads((REPO / "metrics" / "curves" / f"{name}.json").read_text())["adam_envelope"]
        row = speedup_from_envelope(np.asarray(out["batch_loss"])[0], envelope, n, params.evaluate.smoothing)
        row["final_test_acc"] = float(np.asarray(out["test_acc"])[0, :, -1].mean()) if "test_acc" in out else None
        rows[name] = row
        log(f"  {name}: speedup {row['speedup']:.3f} smoothed loss {row['target_loss']}")
    return rows


def _trained_with(root: Path, params: PipelineParams) -> bool:
    """Whether ``root`` holds a finished meta-training with exactly these seed and ``meta_train`` params."""
    config = root / "models" / "lopt" / "config.json"
    if not (config.is_file() and _seconds(root) is not None):
        return False
    recorded = json.loads(config.read_text())
    same_settings = type(params.meta_train).model_validate(recorded["meta_train"]) == params.meta_train
    return recorded["seed"] == params.seed and same_settings


def _seconds(root: Path) -> float | None:
    """The wall time of the meta-training finished in ``root``: its run log (older runs: the metrics file)."""
    log = read_run_log(root, "meta_train") or {}
    if "seconds" in log:
        return float(log["seconds"])
    metrics = root / "metrics" / "meta_train.json"
    old = json.loads(metrics.read_text()) if metrics.is_file() else {}
    return float(old["seconds"]) if "seconds" in old else None


def run_one(base: dict, variant: str, overrides: dict, seed: int, runs: Path, log=print) -> dict:
    root = runs / f"{variant}-s{seed}"
    done = root / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "data").exists():
        (root / "data").symlink_to(REPO / "data")
    raw = copy.deepcopy(base)
    raw["seed"] = seed
    raw["meta_train"].update(overrides)
    params = PipelineParams.model_validate(raw)
    if _trained_with(root, params):  # a run stopped after meta-training: evaluate its optimizer
        seconds = _seconds(root)
    else:
        started = time.perf_counter()
        meta_train_stage.run(params, root, StageContext(log=lambda m: log(f"[{variant} s{seed}] {m}")))
        seconds = time.perf_counter() - started
    lopt, meta_params, _ = load(root / "models" / "lopt")
    curves = json.loads((root / "models" / "lopt" / "curves.json").read_text())
    tasks = evaluate_alone(PipelineParams.model_validate(base), lopt, meta_params, log)
    speedups = [r["speedup"] for r in tasks.values()]
    result = {
        "variant": variant,
        "seed": seed,
        "overrides": overrides,
        "meta_seconds": seconds,
        "meta_loss_first": curves["meta_loss"][0][1],
        "meta_loss_last": curves["meta_loss"][-1][1],
        "grad_norm_max": max(v for _, v in curves["grad_norm"]),
        "tasks": tasks,
        "speedup_iqm": float(iqm(np.asarray(speedups))),
        "beats_adam": int(sum(s > 1 for s in speedups)),
    }
    done.write_text(json.dumps(result, indent=1))
    return result


def spread(results: list[dict]) -> dict:
    values = np.asarray([r["speedup_iqm"] for r in results])
    mean = float(values.mean())
    return {
        "seeds": [r["seed"] for r in results],
        "iqm_mean": mean,
        "iqm_min": float(values.min()),
        "iqm_max": float(values.max()),
        "max_over_min": float(values.max() / values.min()) if values.min() > 0 else float("inf"),
        "largest_deviation_from_mean": float(np.abs(values / mean - 1).max()) if mean > 0 else float("inf"),
    }


def table(results: list[dict], tasks: list[str]) -> str:
    head = ["variant", "seed", "meta-loss", "max |g|"] + [t[:14] for t in tasks] + ["IQM", "beats"]
    lines = ["  ".join(f"{h:>14}" for h in head)]
    for r in results:
        cells = [r["variant"], r["seed"], f"{r['meta_loss_last']:.3f}", f"{r['grad_norm_max']:.1f}"]
        cells += [f"{r['tasks'][t]['speedup']:.3f}" for t in tasks] + [f"{r['speedup_iqm']:.3f}", r["beats_adam"]]
        lines.append("  ".join(f"{c!s:>14}" for c in cells))
    return "\n".join(lines)


def parse_variants(items: list[list[str]] | None) -> dict[str, dict]:
    variants = {"base": {}}
    for name, *settings in items or []:
        overrides = {}
        for s in settings:
            key, sep, value = s.partition("=")
            if not sep:
                raise SystemExit(f"--variant {name}: {s!r} is not KEY=VALUE (e.g. outer_lr=1e-3)")
            overrides[key] = yaml.safe_load(value)
        variants[name] = overrides
    return variants


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(REPO / "params" / "default.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    what = "a recipe: a name and meta_train overrides (repeatable); 'base' is always included"
    ap.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"), help=what)
    ap.add_argument("--only", nargs="+", help="run only these variants (default: all)")
    ap.add_argument("--runs", default=str(REPO / ".l2o" / "seed_study"), help="scratch roots, one per run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    base = yaml.safe_load(Path(args.params).read_text())
    variants = parse_variants(args.variant)
    names = args.only or list(variants)
    results = [run_one(base, name, variants[name], seed, Path(args.runs)) for seed in args.seeds for name in names]
    tasks = list(PipelineParams.model_validate(base).evaluate.tasks)
    print(table(results, tasks))
    spreads = {name: spread([r for r in results if r["variant"] == name]) for name in names}
    for name, s in spreads.items():
        dev, lo, hi, mean = 100 * s["largest_deviation_from_mean"], s["iqm_min"], s["iqm_max"], s["iqm_mean"]
        print(f"{name}: IQM over seeds {lo:.3f}..{hi:.3f} (mean {mean:.3f}, largest deviation from it {dev:.0f}%)")
    doc = {"params": str(args.params), "variants": variants, "results": results, "spread": spreads}
    path = write_results("meta_train_seeds", doc, args.out)
    print(f"wrote {path}")
    return doc


if __name__ == "__main__":
    main()
