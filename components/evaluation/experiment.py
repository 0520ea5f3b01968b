"""The evaluation protocol on one task, and across tasks: what the evaluate stage runs.

:func:`evaluate_on_task` trains every optimizer of the seed papers' comparisons on one task (one
compiled, batched program per optimizer: ``vmap`` over rates and seeds, ``lax.scan`` over steps) and
scores it under both selection rules (:mod:`components.evaluation.protocol`):

* the **learned family**, untuned on the task: ``learned``; ``hub`` / ``hub_inverted`` (HUB);
  ``lgl2o`` and ``gl2o`` with the same guard. Their hand-designed part is the guard at its rate per
  rule (the calibrate stage's choice on meta-training tasks);
* **baselines** over the whole grid, Adam's run ``adam_horizon_multiplier`` (m) x the horizon ``T``
  (the speedup normaliser); every run shares its first ``T`` minibatches, so the ``T``-step baselines
  are the grid's prefix;
* with ``horizon_multiplier`` k > 1, the family (minus inverted HUB) at k x ``T`` against Adam tuned
  (train rule) for k x ``T`` from the same grid.

Across tasks: :mod:`components.evaluation.summary`.
"""

import dataclasses
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from components.evaluation.methods import (
    LEARNED_KINDS,
    LONG,
    REFERENCE,
    SAFEGUARDS,
    base_method,
)
from components.evaluation.metrics import adam_envelope, ema, summarize_runs
from components.evaluation.progress import TaskProgress, write_line
from components.evaluation.protocol import (
    RULES,
    finite_or_none,
    first_step_at_or_below,
    train_rule_row,
    tune,
    validation_rule_row,
)
from components.evaluation.runner import OptFactory, WithWeights, train_curves
from components.optimizers import (
    create,
    fallback_fraction,
    guard_with_fixed_point,
    guard_with_loss,
    hand_share,
    hub,
)

__all__ = [
    "ProtocolConfig",
    "TaskEvaluation",
    "evaluate_on_task",
    "learned_family",
]


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """What :func:`evaluate_on_task` needs of the experiment (plain values; the stage builds it from params)."""

    num_steps: int
    eval_every: int
    lr_grid: tuple[float, ...]
    baselines: tuple[str, ...]
    horizon_multiplier: int = 1
    adam_horizon_multiplier: int = 4
    smoothing: float = 0.95
    methods: tuple[str, ...] = tuple(LEARNED_KINDS)

    def __post_init__(self):
        unknown = [o for o in self.methods if base_method(o) is None]
        if unknown or "learned" not in self.methods:
            raise ValueError(
                f"methods must include 'learned' and be among {list(LEARNED_KINDS)} (or zoo method names,"
                f" zoo_method_names), got {list(self.methods)}"
            )


@dataclasses.dataclass(frozen=True)
class TaskEvaluation:
    """One task's result: ``summary`` (JSON-ready rows per rule, tuning, relation), ``curves``, timing, log line.

    ``timings``: optimizer -> wall-clock cost of its training runs on this task (:func:`train_curves`'s
    ``compile_seconds``, ``run_seconds``, ``steps``; the guard's own runs under ``guard``). Wall-clock values
    never go into DVC-tracked files: they are for MLflow and the console."""

    name: str
    summary: dict
    curves: dict
    seconds: float
    line: str
    timings: dict = dataclasses.field(default_factory=dict)


def learned_family(lopt, meta_params, guard: str, loss_batch: str = "same"):
    """``horizon -> {name: hparam -> optimizer}`` of :data:`LEARNED_KINDS` for :func:`evaluate_on_task`.

    Every member is a :class:`~components.evaluation.runner.WithWeights` over ``meta_params``: the compiled
    programs take the learned weights as an argument, so two optimizers of the same architecture (the fresh
    one and a zoo entry, or two meta-training runs) share them.

    Args:
      lopt: the learned optimizer (``make(meta_params, num_steps=n)`` gives its optax transformation).
      meta_params: its trained meta-parameters.
      guard: the hand-designed optimizer (a baseline name) of HUB, LGL2O and GL2O.
      loss_batch: LGL2O's loss-estimate batch (``same`` / ``fresh``).
    """

    def at(num_steps: int) -> dict[str, OptFactory]:
        def learned(theta):
            return lopt.make(theta, num_steps=num_steps)

        builds = {
            "learned": lambda _, theta: learned(theta),
            "hub": lambda lr, theta: hub(learned(theta), create(guard, learning_rate=lr)),
            "hub_inverted": lambda lr, theta: hub(learned(theta), create(guard, learning_rate=lr), inverted=True),
            "lgl2o": lambda lr, theta: guard_with_loss(
                learned(theta), create(guard, learning_rate=lr), loss_batch=loss_batch
            ),
            "gl2o": lambda lr, theta: guard_with_fixed_point(learned(theta), create(guard, learning_rate=lr)),
        }
        return {name: WithWeights(build, meta_params) for name, build in builds.items()}

    return at


def _np(out: dict) -> dict:
    res = {k: np.asarray(v) for k, v in out.items() if k != "opt_state"}
    if hasattr(out["opt_state"], "num_fallbacks"):  # a safeguard: the share of steps its guard took
        res["fallback"] = np.asarray(fallback_fraction(out["opt_state"]))
    if hasattr(out["opt_state"], "mean_hand_share"):  # HUB: the hand-designed optimizer's share of the step
        res["hand_share"] = np.asarray(hand_share(out["opt_state"]))
    return res


def _pick(run: dict, i: int, steps: int | None = None, evals: int | None = None) -> dict:
    """Rate ``i`` of a ``[H, S, ...]`` run, cut to its first ``steps`` steps and ``evals`` evaluation points."""
    out = {}
    for k, v in run.items():
        v = v[i]
        if k == "batch_loss" and steps is not None:
            v = v[:, :steps]
        elif k != "batch_loss" and evals is not None and v.ndim >= 2:
            v = v[:, :evals]
        out[k] = v
    return out


@dataclasses.dataclass
class _Trained:
    """Every training run of one task, ``[H, S, ...]`` arrays per optimizer, and the rates each rule chose."""

    grids: dict  # baseline -> its whole LR grid (Adam's m x T long)
    tuned: dict  # baseline -> rule -> Tuning (Adam also "long" when k > 1)
    runs: dict  # learned family member (and "guard") -> its runs at the unique guard rates
    long_runs: dict  # long-horizon runs (k > 1)
    rates: dict  # rule -> the guard's rate
    at: dict  # rule -> index of that rate among the unique ones
    seconds: float
    timings: dict  # optimizer -> its runs' compile_seconds, run_seconds, steps (TaskEvaluation)

    def run_of(self, o: str, rule: str, T: int, E: int) -> dict:
        """Optimizer ``o``'s runs at the rate of ``rule``, cut to ``T`` steps and ``E + 1`` evaluation points."""
        if o in self.grids:
            return _pick(self.grids[o], self.tuned[o][rule].index, T, E + 1)
        if base_method(o) == "learned":
            return _pick(self.runs[o], 0, T, E + 1)
        return _pick(self.runs[o], self.at[rule], T, E + 1)


def _train_all(name, task, train, sets, keys, cfg: ProtocolConfig, family, guard: str, guard_rates, log) -> _Trained:
    """Train the baselines' grids, tune them per rule, then the learned family (and the long horizon)."""
    T, k = cfg.num_steps, cfg.horizon_multiplier
    m = max(cfg.adam_horizon_multiplier, k)
    E = T // cfg.eval_every  # evaluation point of step T
    t0 = time.perf_counter()
    timings: dict[str, dict] = {}
    lrs = list(cfg.lr_grid)
    rates = {r: float(guard_rates[r]) for r in RULES}
    unique = sorted(set(rates.values()))
    members = {o: f for o, f in family(T).items() if o in cfg.methods}
    # the guard's runs come from its grid when that grid holds every rate it needs
    guard_in_grid = guard in cfg.baselines and all(any(math.isclose(u, lr, rel_tol=1e-6) for lr in lrs) for u in unique)
    long_methods = _long_methods(cfg.methods) if k > 1 else []

    def long_label(o: str) -> str:
        return f"{o} ({k}x horizon)"

    progress = TaskProgress(
        name,
        [
            *cfg.baselines,
            *members,
            *([] if guard_in_grid else ["guard"]),
            *(long_label(o) for o in long_methods),
        ],
        log,
    )
    try:

        def curves(opt: str, make, hparams, mult: int = 1, label: str | None = None) -> dict:
            # the first T steps are the same minibatches for every run; longer runs add (mult - 1) x T
            # steps evaluated every T steps (so the points at k x T exist for every k)
            total = timings.setdefault(opt, {})  # train_curves adds this program's cost to the optimizer's
            compiled, ran = total.get("compile_seconds", 0.0), total.get("run_seconds", 0.0)
            out = _np(
                train_curves(
                    task,
                    make,
                    jnp.asarray(hparams, jnp.float32),
                    train,
                    sets,
                    keys=keys,
                    num_steps=T,
                    eval_every=cfg.eval_every,
                    tail_steps=(mult - 1) * T,
                    tail_eval_every=T,
                    timing=total,
                )
            )
            progress.program_done(label or opt, total["compile_seconds"] - compiled, total["run_seconds"] - ran)
            return out

        grids = {
            b: curves(b, lambda lr, b=b: create(b, learning_rate=lr), lrs, m if b == REFERENCE else 1)
            for b in cfg.baselines
        }
        tuned = {
            b: {
                r: tune(
                    lrs, g["batch_loss"], g.get("val_loss"), rule=r, horizon=T, eval_index=E, smoothing=cfg.smoothing
                )
                for r in RULES
            }
            for b, g in grids.items()
        }
        if k > 1:  # the stability reference: Adam tuned (train rule) for the long horizon, from the same grid
            tuned[REFERENCE]["long"] = tune(
                lrs, grids[REFERENCE]["batch_loss"], rule="train", horizon=k * T, smoothing=cfg.smoothing
            )

        at = {r: unique.index(rates[r]) for r in RULES}
        runs = {o: curves(o, f, [0.0] if base_method(o) == "learned" else unique) for o, f in members.items()}
        if guard_in_grid:
            idx = [next(i for i, lr in enumerate(lrs) if math.isclose(u, lr, rel_tol=1e-6)) for u in unique]
            runs["guard"] = {kk: v[np.asarray(idx)] for kk, v in grids[guard].items()}
        else:
            runs["guard"] = curves("guard", lambda lr: create(guard, learning_rate=lr), unique)
        long_runs = {}
        if k > 1:
            long_f = family(k * T)
            for o in long_methods:
                hparams = [0.0] if base_method(o) == "learned" else [rates["train"]]
                long_runs[o] = curves(o, long_f[o], hparams, k, label=long_label(o))
    finally:
        progress.close()
    return _Trained(grids, tuned, runs, long_runs, rates, at, time.perf_counter() - t0, timings)


def _long_methods(methods) -> list[str]:
    """The methods run at k x the horizon: :data:`LONG` (in its order), then the zoo entries' of :data:`LONG`."""
    zoo = [o for o in methods if o not in LEARNED_KINDS and base_method(o) in LONG]
    return [*(o for o in LONG if o in methods), *zoo]


def _rule_rows(tr: _Trained, cfg: ProtocolConfig, names: list[str], metric_keys: list[str]) -> tuple[dict, dict]:
    """``(train_rows, validation_rows)``: every optimizer scored under each rule (the guard alone under train)."""
    T = cfg.num_steps
    E = T // cfg.eval_every
    eval_steps = np.arange(0, T + 1, cfg.eval_every)
    adam_grid = tr.grids[REFERENCE]["batch_loss"].mean(axis=1)  # [H, m x T]: the speedup normaliser
    adam_seeds = ema(tr.run_of(REFERENCE, "train", T, E)["batch_loss"], cfg.smoothing)[:, -1]
    target = float(adam_seeds.mean())
    train_rows = {}
    for o in [*names, "guard"]:
        rr = tr.run_of(o, "train", T, E)
        row = train_rule_row(rr["batch_loss"], adam_grid, adam_seeds, smoothing=cfg.smoothing, target=target)
        train_rows[o] = _annotate(row, o, rr, "train", tr.tuned, tr.rates)
    adam_val = tr.run_of(REFERENCE, "validation", T, E)
    val_target = float(np.mean(adam_val["val_loss"][:, E])) if "val_loss" in adam_val else None
    validation_rows = {}
    for o in names:
        rr = tr.run_of(o, "validation", T, E)
        row = validation_rule_row(rr, metric_keys, eval_index=E, eval_steps=eval_steps, target=val_target)
        if "val_loss" not in metric_keys:  # no held-out data: the smoothed training loss stands in
            sm = ema(rr["batch_loss"], cfg.smoothing)
            row["final_train_loss"] = summarize_runs(sm[:, -1])
            row["time_to_target"] = first_step_at_or_below(sm.mean(axis=0), target)
        validation_rows[o] = _annotate(row, o, rr, "validation", tr.tuned, tr.rates)
    return train_rows, validation_rows


def _long_rows(tr: _Trained, cfg: ProtocolConfig) -> dict:
    """The stability rows at k x the horizon, against Adam tuned (train rule) for it."""
    T, k = cfg.num_steps, cfg.horizon_multiplier
    adam_grid = tr.grids[REFERENCE]["batch_loss"].mean(axis=1)
    adam_long = _pick(tr.grids[REFERENCE], tr.tuned[REFERENCE]["long"].index, k * T)
    long_seeds = ema(adam_long["batch_loss"], cfg.smoothing)[:, -1]
    long_rows = {REFERENCE: train_rule_row(adam_long["batch_loss"], adam_grid, long_seeds, smoothing=cfg.smoothing)}
    long_rows[REFERENCE]["learning_rate"] = tr.tuned[REFERENCE]["long"].learning_rate
    for o in tr.long_runs:
        rr = _pick(tr.long_runs[o], 0)
        long_rows[o] = train_rule_row(rr["batch_loss"], adam_grid, long_seeds, smoothing=cfg.smoothing)
        if base_method(o) in SAFEGUARDS:
            long_rows[o]["fallback_fraction"] = summarize_runs(rr["fallback"])
        if base_method(o) != "learned":
            long_rows[o]["learning_rate"] = tr.rates["train"]
    return long_rows


def evaluate_on_task(
    name: str,
    task,
    train,
    sets: dict,
    *,
    keys: jax.Array,
    config: ProtocolConfig,
    family: Callable[[int], dict[str, OptFactory]],
    guard: str,
    guard_rates: dict[str, float],
    relation: dict | None = None,
    progress: Callable[[str], None] | None = write_line,
) -> TaskEvaluation:
    """Every optimizer of the protocol on one task under both rules (the module docstring).

    Args:
      name: the task's name (for the curves and the summary line).
      task: the task (:mod:`components.tasks.protocol`), ``train`` its training data, ``sets`` its
        evaluation batches (``train`` / ``val`` / ``test``; ``{}`` for synthetic problems).
      keys: ``[S]`` seed keys, shared by every optimizer (initialisation and minibatches).
      config: horizons, grid, smoothing, baselines.
      family: ``horizon -> {name: hparam -> optimizer}`` of :data:`LEARNED_KINDS` (the hparam is the
        hand-designed part's rate; ignored by ``learned``), e.g. :func:`learned_family`.
      guard: the hand-designed optimizer of HUB / LGL2O / GL2O (a baseline name).
      guard_rates: its rate per rule (``train``, ``validation``).
      relation: the task's relation to the meta-training distribution, stored as given.
      progress: where the progress lines go (:mod:`components.evaluation.progress`: the programs to compile,
        then one line as each finishes, with the task's and the stage's ETA); ``None``: silent.

    Returns:
      :class:`TaskEvaluation`.
    """
    cfg = config
    T, k = cfg.num_steps, cfg.horizon_multiplier
    m = max(cfg.adam_horizon_multiplier, k)
    trained = _train_all(name, task, train, sets, keys, cfg, family, guard, guard_rates, progress)
    names = [*cfg.methods, *cfg.baselines]
    has_acc = bool(getattr(task, "has_accuracy", True))
    metric_keys = [f"{s}_{mm}" for s in sets for mm in ("loss", "acc") if mm == "loss" or has_acc]
    train_rows, validation_rows = _rule_rows(trained, cfg, names, metric_keys)
    tuned = trained.tuned
    summary = {
        "num_steps": T,
        "long_num_steps": k * T if k > 1 else None,
        "adam_num_steps": m * T,
        "relation": relation,
        "has_validation": "val_loss" in metric_keys,
        "tuning": {b: {r: t.to_json() for r, t in per.items()} for b, per in tuned.items()},
        "guard": {"name": guard, "learning_rates": trained.rates},
        "train": train_rows,
        "validation": validation_rows,
        "long": _long_rows(trained, cfg) if k > 1 else None,
    }
    curves_doc = _curves_doc(name, names, cfg, trained, metric_keys)
    shown = _summary_line(validation_rows, names, metric_keys)
    lr_note = ", ".join(
        f"{b} lr={tuned[b]['train'].learning_rate:.3g}/{tuned[b]['validation'].learning_rate:.3g}"
        for b in cfg.baselines
    )
    sp = " ".join(f"{o}={'>=' if train_rows[o]['censored'] else ''}{train_rows[o]['speedup']:.2f}" for o in cfg.methods)
    line = (
        f"evaluate: {name} ({T} steps; Adam grid {m * T}{f'; stability {k * T}' if k > 1 else ''}): {shown}"
        f" (train/validation-rule {lr_note}); speedup {sp} ({trained.seconds:.0f}s)"
    )
    return TaskEvaluation(
        name=name, summary=summary, curves=curves_doc, seconds=trained.seconds, line=line, timings=trained.timings
    )


def _annotate(row: dict, o: str, run: dict, rule: str, tuned: dict, rates: dict) -> dict:
    """Add the rate (tuned or calibrated), its rule, and a safeguard's fallback fraction to a row."""
    if o in tuned:
        row["learning_rate"] = tuned[o][rule].learning_rate
        row["lr_at_grid_edge"] = tuned[o][rule].at_edge
    elif base_method(o) != "learned":
        row["learning_rate"] = rates[rule]
    row["rule"] = rule
    if base_method(o) in SAFEGUARDS:
        row["fallback_fraction"] = summarize_runs(run["fallback"])
    if "hand_share" in run:  # HUB: mean share of the L1 mass of the step that came from the hand optimizer
        row["hand_share"] = summarize_runs(run["hand_share"])
    return row


def _summary_line(rows: dict, names: list[str], metric_keys: list[str]) -> str:
    key = "test_acc" if "test_acc" in metric_keys else ("test_loss" if "test_loss" in metric_keys else "train_loss")
    vals = " ".join(
        f"{o}={v['mean']:.3f}" if (v := rows[o].get(f"final_{key}")) is not None else f"{o}=-" for o in names
    )
    return f"{key.replace('_', ' ')} {vals}"


def _stats(a: np.ndarray) -> dict:
    return {"mean": [finite_or_none(v) for v in a.mean(axis=0)], "std": [finite_or_none(v) for v in a.std(axis=0)]}


def _curves_doc(name: str, names: list[str], cfg: ProtocolConfig, tr: _Trained, metric_keys: list[str]) -> dict:
    """``metrics/curves/<task>.json``: training loss at the train rule's rates, held-out sets at the validation's."""
    T, k = cfg.num_steps, cfg.horizon_multiplier
    E = T // cfg.eval_every
    doc = {
        "task": name,
        "steps": list(range(0, T + 1, cfg.eval_every)),
        "num_steps": T,
        "rules": {"training_loss": "train", "held_out": "validation"},
        "optimizers": {},
        "long": None,
    }
    for o in names:
        t, va = tr.run_of(o, "train", T, E), tr.run_of(o, "validation", T, E)
        doc["optimizers"][o] = {
            "batch_loss": _stats(t["batch_loss"]),
            "batch_loss_smoothed": _stats(ema(t["batch_loss"], cfg.smoothing)),
            **{kk: _stats(va[kk]) for kk in metric_keys},
        }
    env = adam_envelope(tr.grids[REFERENCE]["batch_loss"].mean(axis=1), cfg.smoothing)
    stride = max(1, len(env) // 400)
    doc["adam_envelope"] = {
        "steps": list(range(1, len(env) + 1, stride)),
        "loss": [finite_or_none(v) for v in env[::stride]],
    }
    if tr.long_runs:
        long_steps = list(range(0, T + 1, cfg.eval_every)) + list(range(2 * T, k * T + 1, T))
        n_eval = len(long_steps)
        adam_long = _pick(tr.grids[REFERENCE], tr.tuned[REFERENCE]["long"].index, k * T, n_eval)
        doc["long"] = {
            "steps": long_steps,
            "num_steps": k * T,
            "optimizers": {
                o: {
                    "batch_loss_smoothed": _stats(ema(r["batch_loss"], cfg.smoothing)),
                    **{kk: _stats(r[kk]) for kk in metric_keys},
                }
                for o, r in [(REFERENCE, adam_long), *((o, _pick(tr.long_runs[o], 0)) for o in tr.long_runs)]
            },
        }
    return doc
