"""The HTML report: a self-contained page (no JavaScript, no network) next to its PNG figures."""

import html
import json

__all__ = ["render_report"]

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}img{max-width:100%}.note{color:#555;font-size:90%}
pre{background:#f7f7f7;padding:8px;overflow:auto}
"""


def _pm(stats: dict | None, digits: int = 3) -> str:
    """mean ± std over seeds; an en dash where the task has no such metric (``None``)."""
    if stats is None:
        return "&ndash;"
    return f"{stats['mean']:.{digits}f} &plusmn; {stats['std']:.{digits}f}"


def _steps_note(num_steps) -> str:
    """``num_steps`` is one int (older files) or task -> steps."""
    if isinstance(num_steps, dict):
        distinct = sorted(set(num_steps.values()))
        if len(distinct) == 1:
            return f"{distinct[0]} steps each"
        return f"each for its own horizon ({', '.join(map(str, distinct))} steps)"
    return f"{num_steps} steps each"


def _speedup(row: dict) -> str:
    return ("&ge; " if row["lower_bound"] else "") + f"{row['speedup']:.2f}&times;"


def render_report(
    *,
    title: str,
    evaluation: dict,
    meta_train: dict,
    safeguard: dict,
    figures: dict[str, str],
    params: dict,
    labels: dict[str, str],
) -> str:
    """Render the report page.

    Args:
      title: page title.
      evaluation: ``metrics/evaluation.json``.
      meta_train: ``metrics/meta_train.json``.
      safeguard: ``models/safeguard.json``.
      figures: figure key -> PNG file name (relative to the page): ``meta_loss``, ``speedup``, and
        ``task:<name>`` for each task.
      params: the resolved params (shown for reproducibility).
      labels: optimizer key -> display name.
    """
    e = html.escape
    rows = []
    for task, summary in evaluation["tasks"].items():
        for opt in ("learned", "guarded", "adam_tuned"):
            r = summary[opt]
            extra = ""
            if opt == "adam_tuned":
                extra = f"lr={r['learning_rate']:.3g}" + (" (grid edge!)" if r.get("lr_at_grid_edge") else "")
            elif opt == "guarded":
                extra = f"fallbacks {r['fallback_fraction']['mean']:.0%}"
            steps = evaluation["num_steps"]
            task_label = f"{task} ({steps[task]})" if isinstance(steps, dict) and task in steps else task
            rows.append(
                f"<tr><td class=l>{e(task_label)}</td><td class=l>{e(labels.get(opt, opt))}</td>"
                f"<td>{_pm(r['final_train_loss'])}</td><td>{_pm(r['final_test_loss'])}</td>"
                f"<td>{_pm(r['final_test_acc'])}</td><td>{_speedup(r)}</td><td>{r['final_loss_ratio']:.2f}</td>"
                f"<td class=l>{e(extra)}</td></tr>"
            )
    agg_rows = "".join(
        f"<tr><td class=l>{e(labels.get(o, o))}</td><td>{a['geomean_speedup']:.2f}&times;</td>"
        f"<td>{'&ndash;' if a['mean_test_acc'] is None else format(a['mean_test_acc'], '.3f')}</td><td>{a['tasks_faster_than_adam']}/{len(evaluation['tasks'])}</td></tr>"
        for o, a in evaluation["aggregate"].items()
    )
    task_figs = "".join(
        f"<h3>{e(k.split(':', 1)[1])}</h3><img src='{e(v)}' alt='{e(k)} curves'>"
        for k, v in figures.items()
        if k.startswith("task:")
    )
    sweep = "".join(
        f"<tr><td>{s['learning_rate']:.3g}</td><td>{s['final_loss']:.4f}</td><td>{s['guard_alone_final_loss']:.4f}</td>"
        f"<td>{s['fallback_fraction']:.0%}</td></tr>"
        for s in safeguard["sweep"]
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{e(title)}</title><style>{_CSS}</style></head><body>
<h1>{e(title)}</h1>
<p class=note>Held-out tasks, {evaluation["num_seeds"]} seeds, {_steps_note(evaluation["num_steps"])} (steps in brackets
after each task); test metrics on the first {evaluation["eval_examples"]} test examples (or windows of text) of each dataset;
&ndash; where a task has no such metric.
Speedup = steps Adam needs to reach the optimizer's final EMA(0.95)-smoothed training loss, on the monotone lower
envelope of Adam over its whole learning-rate grid (learned_optimization's normaliser), divided by the optimizer's
steps; "&ge;" means Adam never reached it. Final-loss ratio = tuned Adam's final training loss / the optimizer's
(&gt; 1: lower than Adam). Adam's learning rate is tuned per task on the same seeds.</p>
<h2>Summary</h2>
<table><tr><th class=l>task</th><th class=l>optimizer</th><th>final train loss</th><th>final test loss</th>
<th>final test acc</th><th>speedup vs tuned Adam</th><th>final-loss ratio</th><th class=l>notes</th></tr>{"".join(rows)}</table>
<h3>Across tasks</h3>
<table><tr><th class=l>optimizer</th><th>geomean speedup</th><th>mean test acc</th><th>tasks faster than Adam</th></tr>{agg_rows}</table>
<img src='{e(figures["speedup"])}' alt='speedup'>
<h2>Learning curves</h2>{task_figs}
<h2>Meta-training</h2>
<p>Meta-loss {meta_train["meta_loss_first"]:.4f} &rarr; {meta_train["meta_loss_last"]:.4f} in {meta_train["seconds"]:.0f} s
({meta_train["inner_steps_per_second"]:.0f} inner steps/s, {meta_train["num_meta_params"]} meta-parameters).</p>
<img src='{e(figures["meta_loss"])}' alt='meta-training curve'>
<h2>Safeguard (LGL2O)</h2>
<p>Guard {e(safeguard["guard"])}, learning rate {safeguard["learning_rate"]:.3g}, chosen by: {e(safeguard["selection"])}.</p>
<table><tr><th>guard LR</th><th>guarded final loss</th><th>guard alone final loss</th><th>fallback fraction</th></tr>{sweep}</table>
<h2>Params</h2><pre>{e(json.dumps(params, indent=2, sort_keys=True))}</pre>
</body></html>
"""
