"""The report's detail sections: stability at k x the horizon, per-task results, LR tuning, meta-training, safeguard.

Each function returns an HTML fragment of :func:`components.reporting.html.render_report`'s page.
"""

import math
from collections.abc import Mapping

from components.reporting.cells import (
    DASH,
    ci_class,
    escape,
    figure,
    fmt_ci,
    fmt_count,
    fmt_mean_std,
    fmt_num,
    fmt_pct,
    fmt_ratio,
    fmt_share,
    fmt_speedup,
    is_number,
    n_tasks,
    optimizer_cell,
    rule_note,
    table,
    td,
)
from components.reporting.plots import REFERENCE

__all__ = [
    "stability_section",
    "per_task_tables",
    "lr_tuning_section",
    "meta_training_section",
    "safeguard_section",
]


def stability_section(evaluation: Mapping, names: list[str], colors, labels, figures) -> str:
    k = evaluation.get("horizon_multiplier") or 1
    long = evaluation["aggregate"].get("long") or {}
    kinds = evaluation.get("optimizers", {})
    long_names = [o for o in names if o in long]
    if k <= 1 or not long_names:
        return ""
    rows = []
    for o in long_names:
        a = long[o]
        ref = o == REFERENCE
        n = n_tasks(a)
        rows.append(
            "<tr>"
            + td(optimizer_cell(o, colors, labels, kinds.get(o)), "l")
            + td(fmt_ci(evaluation["aggregate"]["train"].get(o, {}).get("final_loss_ratio_iqm")))
            + td(fmt_ci(a["final_loss_ratio_iqm"]), "" if ref else ci_class(a["final_loss_ratio_iqm"]))
            + td("<span class=muted>reference</span>" if ref else fmt_share(a.get("beats_adam_fraction"), n))
            + td(fmt_count(a.get("diverged_runs"), a.get("total_runs")))
            + td(fmt_pct(a.get("fallback_rate"), 1))
            + "</tr>"
        )
    head = [
        "optimizer",
        "final-loss ratio IQM<br>at 1&times; horizon",
        f"final-loss ratio IQM<br>at {k}&times; horizon [95% CI]",
        f"beats tuned Adam<br>at {k}&times; (tasks)",
        f"diverged<br>at {k}&times; (runs)",
        f"fallback rate<br>at {k}&times;",
    ]
    per_task = []
    for t, s in evaluation["tasks"].items():
        lrows = s.get("long") or {}
        per_task.append(
            f"<tr class=group><td colspan=6>{escape(t)} <span class=muted>({s.get('num_steps', DASH)} &rarr;"
            f" {s.get('long_num_steps') or DASH} steps)</span></td></tr>"
        )
        for o in long_names:
            lr = lrows.get(o) or {}
            short = (s.get("train") or {}).get(o) or {}
            ratios = [v for v in lr.get("final_loss_ratio_per_seed") or [] if is_number(v)]
            per_task.append(
                "<tr>"
                + td(optimizer_cell(o, colors, labels), "l")
                + td(fmt_mean_std(short.get("final_train_loss")))
                + td(fmt_mean_std(lr.get("final_train_loss")))
                + td(fmt_ratio(sum(ratios) / len(ratios)) if ratios else DASH)
                + td(fmt_count(lr.get("diverged_seeds"), len(lr.get("final_loss_ratio_per_seed") or []) or None))
                + td(fmt_pct((lr.get("fallback_fraction") or {}).get("mean"), 1))
                + "</tr>"
            )
    task_head = [
        "task / optimizer",
        "final train loss<br>at 1&times;",
        f"final train loss<br>at {k}&times;",
        f"final-loss ratio at {k}&times;<br>(mean over seeds)",
        f"diverged<br>seeds at {k}&times;",
        f"guard<br>fallbacks at {k}&times;",
    ]
    return (
        f"<h2 id=stability>Stability at {k}&times; horizon</h2>"
        f"<p class=note>The learned optimizer, HUB, LGL2O and GL2O also train for {k}&times; each task's horizon (told"
        f" the longer horizon); the reference is Adam tuned (train rule) for that longer horizon, from the same grid."
        f" A learned optimizer that generalises keeps improving instead of stalling or diverging (LGL2O, STAR).</p>"
        + table(head, rows, table_id="stability-table")
        + figure(
            figures.get("long"),
            f"smoothed training loss of each task at {k} times its horizon",
            "Smoothed training loss at the long horizon, mean &plusmn; std over seeds; the dotted line marks the"
            " task's own horizon.",
        )
        + "<h3>Per task</h3>"
        + table(task_head, per_task, table_id="stability-task-table")
    )


def _lr_cell(row: Mapping, kind: str | None = None) -> str:
    lr = row.get("learning_rate")
    if not is_number(lr):
        return DASH
    text = fmt_num(lr)
    if row.get("lr_at_grid_edge"):
        text += (
            " <span class=warn title='the best rate is at the edge of the grid: widen the grid'>"
            "&#9888;&nbsp;grid edge</span>"
        )
    elif kind in ("safeguarded", "hybrid"):
        text += " <span class=muted>(guard)</span>"
    return text


def _best(rows: Mapping, names: list[str], key: str, lower: bool) -> set:
    vals = {o: ((rows.get(o) or {}).get(key) or {}).get("mean") for o in names}
    vals = {o: v for o, v in vals.items() if is_number(v) and math.isfinite(v)}
    if len(vals) < 2:
        return set()
    top = (min if lower else max)(vals.values())
    return {o for o, v in vals.items() if v == top}


_TRAIN_HEAD = [
    "task / optimizer",
    "final train loss<br>(smoothed)",
    "speedup vs<br>tuned Adam",
    "final-loss<br>ratio",
    "steps to Adam's<br>final loss",
    "learning<br>rate",
    "guard<br>fallbacks",
    "diverged<br>seeds",
]
_VALIDATION_HEAD = [
    "task / optimizer",
    "final<br>val loss",
    "final<br>test loss",
    "test acc<br>(%)",
    "steps to Adam's<br>final val loss",
    "learning<br>rate",
    "guard<br>fallbacks",
    "diverged<br>seeds",
]


def _train_task_row(o: str, r: Mapping, best: set, kind, n_seeds, colors, labels) -> str:
    speed_cls = "" if o == REFERENCE else ("good" if is_number(r.get("speedup")) and r["speedup"] > 1 else "")
    ratio = r.get("final_loss_ratio")
    ratio_cls = "" if o == REFERENCE else ("good" if is_number(ratio) and ratio > 1 else "")
    return (
        "<tr>"
        + td(optimizer_cell(o, colors, labels), "l")
        + td(fmt_mean_std(r.get("final_train_loss")), "best" if o in best else "")
        + td(fmt_speedup(r), speed_cls)
        + td(fmt_ratio(ratio), ratio_cls)
        + td(fmt_num(r.get("steps_to_target"), 4))
        + td(_lr_cell(r, kind), "l")
        + td(fmt_pct((r.get("fallback_fraction") or {}).get("mean"), 1))
        + td(fmt_count(r.get("diverged_seeds"), n_seeds))
        + "</tr>"
    )


def _validation_task_row(o: str, v: Mapping, best: dict, kind, n_seeds, colors, labels) -> str:
    def cell(key, scale=1.0, digits=3):
        return td(fmt_mean_std(v.get(key), scale, digits), "best" if o in best.get(key, ()) else "")

    return (
        "<tr>"
        + td(optimizer_cell(o, colors, labels), "l")
        + cell("final_val_loss")
        + cell("final_test_loss")
        + cell("final_test_acc", 100, 3)
        + td(fmt_num(v.get("time_to_target"), 4))
        + td(_lr_cell(v, kind), "l")
        + td(fmt_pct((v.get("fallback_fraction") or {}).get("mean"), 1))
        + td(fmt_count(v.get("diverged_seeds"), n_seeds))
        + "</tr>"
    )


def per_task_tables(evaluation: Mapping, names: list[str], colors, labels) -> str:
    """Per task and optimizer: the training-loss columns (train rule) and the held-out ones (validation rule)."""
    kinds = evaluation.get("optimizers", {})
    train_rows, val_rows = [], []
    for t, s in evaluation["tasks"].items():
        adam_steps = s.get("adam_num_steps")
        group = (
            f"<tr class=group><td colspan=8>{escape(t)} <span class=muted>({s.get('num_steps', DASH)} steps"
            + (f"; Adam's grid {adam_steps}" if adam_steps else "")
            + ")</span></td></tr>"
        )
        train_rows.append(group)
        val_rows.append(group)
        tr, va = s.get("train") or {}, s.get("validation") or {}
        best_train = _best(tr, names, "final_train_loss", True)
        best_val = {
            key: _best(va, names, key, key != "final_test_acc")
            for key in ("final_val_loss", "final_test_loss", "final_test_acc")
        }
        for o in names:
            r = tr.get(o)
            if r is not None:
                n_seeds = len(r.get("speedup_per_seed") or []) or evaluation.get("num_seeds")
                train_rows.append(_train_task_row(o, r, best_train, kinds.get(o), n_seeds, colors, labels))
            v = va.get(o)
            if v is not None:
                n_seeds = evaluation.get("num_seeds")
                val_rows.append(_validation_task_row(o, v, best_val, kinds.get(o), n_seeds, colors, labels))
    return (
        "<h3>Training loss</h3>"
        + rule_note("train")
        + table(_TRAIN_HEAD, train_rows, table_id="task-table")
        + "<h3>Held-out metrics</h3>"
        + rule_note("validation")
        + table(_VALIDATION_HEAD, val_rows, table_id="task-validation-table")
    )


def lr_tuning_section(evaluation: Mapping, names: list[str], colors, labels) -> str:
    grid = evaluation.get("lr_grid") or []
    out = []
    for o in names:
        rows = []
        for t, s in evaluation["tasks"].items():
            per = (s.get("tuning") or {}).get(o)
            if not per:
                continue
            for rule in [r for r in ("train", "validation", "long") if r in per]:  # the file's keys are sorted
                tuned = per[rule]
                scores = tuned.get("scores") or []
                cells = [
                    td("<span class=warn title='diverged'>div.</span>")
                    if sc is None
                    else td(fmt_num(sc), "best" if i == tuned.get("index") else "")
                    for i, sc in enumerate(scores)
                ]
                edge = " <span class=warn>&#9888;&nbsp;grid edge</span>" if tuned.get("at_edge") else ""
                rows.append(
                    "<tr>"
                    + td(escape(t), "l")
                    + td(escape(rule), "l")
                    + td(
                        escape(str(tuned.get("metric", "")).replace("_", " ")) + f" at step {tuned.get('horizon')}",
                        "l",
                    )
                    + "".join(cells)
                    + td(fmt_num(tuned.get("learning_rate")) + edge, "l")
                    + "</tr>"
                )
        if rows:
            head = ["task", "rule", "tuned on", *[f"lr {fmt_num(lr)}" for lr in grid], "chosen"]
            out.append(f"<h3>{optimizer_cell(o, colors, labels)}</h3>" + table(head, rows, left=3, table_id=f"lr-{o}"))
    if not out:
        return ""
    return (
        "<h2 id=tuning>Learning-rate tuning</h2><p class=note>Seed-mean score (lower is better) of each baseline"
        " at every"
        " rate of the grid under each rule (Adam also for the long horizon of the stability table); bold: the chosen"
        " rate; &ldquo;div.&rdquo;: diverged. A chosen rate at the edge of the grid means the grid should be"
        " widened.</p>" + "".join(out)
    )


def meta_training_section(meta_train: Mapping, figures) -> str:
    first, last = meta_train.get("meta_loss_first"), meta_train.get("meta_loss_last")
    n, bad = meta_train.get("num_meta_params"), meta_train.get("nonfinite_losses")
    text = (
        f"Meta-loss {fmt_num(first, 4)} &rarr; {fmt_num(last, 4)} ({n if isinstance(n, int) else DASH} meta-parameters"
        + (f", {bad} estimates with an inf/nan inner loss" if isinstance(bad, int) and bad else "")
        + "; wall time and rate: the meta_train run in MLflow)."
    )
    return f"<h2 id=meta>Meta-training</h2><p>{text}</p>" + figure(
        figures.get("meta_loss"), "meta-training curve: meta-loss against outer step"
    )


def safeguard_section(safeguard: Mapping) -> str:
    sweep = safeguard.get("sweep") or []
    rows = [
        "<tr>"
        + td(fmt_num(s.get("learning_rate")))
        + td(fmt_num(s.get("final_loss"), 4))
        + td(fmt_num(s.get("validation_loss"), 4))
        + td(fmt_num(s.get("guard_alone_final_loss"), 4))
        + td(fmt_pct(s.get("fallback_fraction")))
        + "</tr>"
        for s in sweep
    ]
    head = [
        "guard learning rate",
        "guarded final loss",
        "guarded validation loss",
        "guard alone final loss",
        "fallback fraction",
    ]
    rates = safeguard.get("learning_rates") or {"train": safeguard.get("learning_rate")}
    chosen = ", ".join(f"{fmt_num(v)} ({escape(r)} rule)" for r, v in rates.items())
    edges = [r for r, t in (safeguard.get("tuning") or {}).items() if t.get("at_edge")]
    warn = (
        f" <span class=warn>&#9888; at the edge of the grid ({escape(', '.join(edges))} rule):"
        " widen calibrate.lr_grid</span>"
        if edges
        else ""
    )
    return (
        "<h2 id=safeguard>Safeguard (LGL2O; also GL2O's guard and HUB's hand-designed part)</h2>"
        f"<p>Guard <b>{escape(str(safeguard.get('guard', DASH)))}</b> at learning rate {chosen}{warn}, "
        f"chosen on the meta-training tasks: {escape(str(safeguard.get('selection', DASH)))}.</p>"
        + table(head, rows, left=0, table_id="safeguard-table")
    )
