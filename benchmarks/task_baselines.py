"""Every task of a suite trained with Adam: final train / test loss and accuracy (a sanity table).

    .venv/bin/python benchmarks/task_baselines.py [--suite heldout] [--tasks NAME ...] [--lr 1e-3]
        [--mirror ../shared/datasets] [--seeds 2] [--steps-scale 1.0]

For each task of ``components.tasks.SUITES[suite]``: the prepared arrays are built from the dataset
mirror with the library (``components.data``: every mirror file checked against its pinned sha256,
then decoded and prepared exactly as the prepare stage does, seed 0); fine-tuning tasks are first
pre-trained with Adam as their spec says (``components.tasks.pretrain``); then the task trains with
Adam at ``--lr`` for its default horizon (times ``--steps-scale``) over ``--seeds`` seeds, vmapped,
with the evaluation runner of the pipeline (synthetic problems, which have no fixed evaluation set,
report their mean minibatch loss over the last 10% of steps as train loss). Prints one row per task
(mean over seeds) and writes
``benchmarks/results/task_baselines_<backend>.json``. No assertions: these are measurements; the
issue asks e.g. MNIST 28x28 MLP test accuracy ≥ 97% and a char-LM loss well under the unigram
entropy, which the table shows next to each LM row.
"""

import argparse
import hashlib
import math
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_io import write_results  # noqa: E402
from components.data import decode_dataset, get_dataset, parse_variant  # noqa: E402
from components.data.prepare import build_variant  # noqa: E402
from components.evaluation.runner import train_curves  # noqa: E402
from components.optimizers import create  # noqa: E402
from components.tasks.finetune import pretrain  # noqa: E402
from components.tasks.spec import eval_sets, task_data  # noqa: E402
from components.tasks.suite import SUITES, build_task, get_spec, source_task  # noqa: E402


def read_mirror_file(mirror: Path, spec_file) -> bytes:
    """The whole file from its mirror parts, each and the whole checked against the pinned sha256."""
    chunks = []
    for part in spec_file.mirror_parts:
        data = (mirror / part.path).read_bytes()
        if hashlib.sha256(data).hexdigest() != part.sha256:
            raise ValueError(f"{mirror / part.path}: sha256 mismatch (expected {part.sha256}); re-copy the mirror")
        chunks.append(data)
    whole = b"".join(chunks)
    if hashlib.sha256(whole).hexdigest() != spec_file.sha256:
        raise ValueError(f"{spec_file.name}: sha256 of the joined mirror parts does not match the pinned value")
    return whole


class Prepared:
    """Prepared arrays by prepared name, decoding each dataset once."""

    def __init__(self, mirror: Path, log):
        self.mirror, self.log, self._decoded, self._arrays = mirror, log, {}, {}

    def __call__(self, name: str) -> dict:
        if name not in self._arrays:
            variant = parse_variant(name, image_size=8)
            if variant.dataset not in self._decoded:
                t0 = time.perf_counter()
                spec = get_dataset(variant.dataset)
                files = {f.name: read_mirror_file(self.mirror, f) for f in spec.files}
                self._decoded[variant.dataset] = decode_dataset(variant.dataset, files)
                self.log(f"  decoded {variant.dataset} in {time.perf_counter() - t0:.1f}s")
            self._arrays[name] = build_variant(
                variant,
                self._decoded[variant.dataset],
                test_fraction=0.2,
                max_train_examples=None,
                text_split=(0.9, 0.05, 0.05),
                seed=0,
            )
        return self._arrays[name]


def run_task(name, prepared, *, lr, seeds, steps_scale, eval_examples, log):
    spec = get_spec(name)
    num_steps = max(10, int(round(spec.num_steps * steps_scale / 10)) * 10)
    eval_every = num_steps // 10
    arrays = prepared(spec.dataset) if spec.dataset else {}
    t0 = time.perf_counter()
    pretrained = None
    if spec.pretrain is not None:
        src = source_task(spec)
        src_arrays = prepared(spec.pretrain.dataset)
        pretrained = pretrain(
            src,
            task_data(spec.pretrain.dataset, src_arrays),
            jax.random.key(1),
            spec.pretrain.num_steps,
            spec.pretrain.learning_rate,
        )
    task = build_task(spec, pretrained=pretrained)
    data = task_data(spec.dataset, arrays) if spec.dataset else None
    sets = {k: jax.tree.map(jnp.asarray, v) for k, v in eval_sets(spec, arrays, eval_examples).items()}
    keys = jax.random.split(jax.random.key(0), seeds)
    out = train_curves(
        task,
        lambda h: create("adam", learning_rate=h),
        jnp.asarray([lr], jnp.float32),
        data,
        sets,
        keys=keys,
        num_steps=num_steps,
        eval_every=eval_every,
    )
    jax.block_until_ready(out)
    seconds = time.perf_counter() - t0
    row = {"task": name, "kind": spec.kind, "dataset": spec.dataset, "steps": num_steps, "seconds": seconds}
    for k in ("train_loss", "train_acc", "test_loss", "test_acc"):
        if k in out:
            row[k] = float(np.nanmean(np.asarray(out[k])[..., -1]))
    if "train_loss" not in out:  # synthetic problems have no fixed evaluation set: the minibatch loss instead
        batch_loss = np.asarray(out["batch_loss"])
        row["train_loss"] = float(np.mean(batch_loss[..., -max(1, num_steps // 10) :]))
        row["init_train_loss"] = float(np.mean(batch_loss[..., 0]))
    row["init_test_loss"] = float(np.nanmean(np.asarray(out["test_loss"])[..., 0])) if "test_loss" in out else None
    if spec.kind == "char_lm":
        # unigram entropy of the test characters (nats): what a model ignoring the context reaches
        counts = np.bincount(np.asarray(arrays["test_tokens"]), minlength=len(arrays["vocab"])).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        row["unigram_entropy"] = float(-(p * np.log(p)).sum())
    log(f"  {name}: {row} ({seconds:.1f}s)")
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default="heldout", choices=sorted(SUITES))
    ap.add_argument("--tasks", nargs="+", default=None, help="a subset of the suite's tasks")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiply every task's default horizon")
    ap.add_argument("--eval-examples", type=int, default=2000)
    ap.add_argument(
        "--mirror", default=os.environ.get("L2O_DATA_MIRROR", str(Path(__file__).parents[2] / "shared" / "datasets"))
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    names = args.tasks or list(SUITES[args.suite])
    unknown = sorted(set(names) - set(SUITES[args.suite]))
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown} for suite {args.suite!r}; choose from {list(SUITES[args.suite])}")
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    prepared = Prepared(Path(args.mirror), log)
    device = jax.devices()[0]
    rows = []
    for i, name in enumerate(names):
        log(f"[{i + 1}/{len(names)}] {name}")
        try:
            rows.append(
                run_task(
                    name, prepared, lr=args.lr, seeds=args.seeds, steps_scale=args.steps_scale,
                    eval_examples=args.eval_examples, log=log,
                )
            )  # fmt: skip
        except (OSError, ValueError, ImportError) as err:  # e.g. a dataset missing from this mirror
            log(f"  {name}: FAILED ({type(err).__name__}: {err})")
            rows.append({"task": name, "steps": 0, "seconds": 0.0, "error": f"{type(err).__name__}: {err}"})

    def fmt(v, spec=".3f"):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    print(
        f"Adam lr={args.lr}, {args.seeds} seeds — {jax.default_backend()} ({device.device_kind}), jax {jax.__version__}"
    )
    print(
        f"{'task':<40} {'steps':>6} {'train loss':>10} {'test loss':>10} {'test acc':>9} {'init test':>9}"
        f" {'unigram H':>9} {'s':>7}"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['task']:<40} failed: {r['error'][:100]}")
            continue
        print(
            f"{r['task']:<40} {r['steps']:>6} {fmt(r.get('train_loss')):>10} {fmt(r.get('test_loss')):>10}"
            f" {fmt(r.get('test_acc')):>9} {fmt(r.get('init_test_loss')):>9} {fmt(r.get('unigram_entropy')):>9}"
            f" {r['seconds']:>7.1f}"
        )
    doc = {
        "suite": args.suite,
        "lr": args.lr,
        "seeds": args.seeds,
        "steps_scale": args.steps_scale,
        "rows": rows,
    }
    log(f"wrote {write_results('task_baselines', doc, args.out)}")


if __name__ == "__main__":
    main()
