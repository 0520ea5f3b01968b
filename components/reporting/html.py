"""The HTML report: one self-contained static page (no JavaScript, no network) next to its PNG figures.

The page follows the evaluation protocol of the learned-optimizer papers (VeLO, Celo, HUB, LGL2O, STAR): a headline
table of cross-task aggregates (IQM with stratified bootstrap CIs, shares of tasks beating tuned Adam), the
stability test at k x the horizon, then per-task detail, the learning-rate tuning of the baselines, meta-training
and the safeguard calibration. Every string from the inputs is escaped; a metric that is missing (``None``, NaN, or
a key the input lacks) renders as an en dash.
"""

import html
import json
import math
from collections.abc import Mapping

from components.reporting.plots import REFERENCE, display_order

__all__ = ["render_report", "fmt_ratio", "DASH"]

DASH = "&ndash;"

_CSS = """
:root{--fg:#1d2330;--muted:#5b6473;--line:#d9dde3;--head:#f2f4f7;--good:#e3f4e6;--bad:#fbe6e6;--accent:#2b5d9e}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1240px;margin:0 auto;padding:1.2em 1.5em 3em;color:var(--fg);line-height:1.45;font-size:15px}
h1{font-size:1.7em;margin:.2em 0 .1em}
h2{font-size:1.3em;margin:1.8em 0 .5em;padding-bottom:.2em;border-bottom:2px solid var(--line)}
h3{font-size:1.05em;margin:1.3em 0 .4em}
a{color:var(--accent)}
.lede{color:var(--muted);margin:0 0 .8em}
nav{font-size:.9em;margin:.4em 0 1em;padding:.5em .8em;background:var(--head);border-radius:6px}
nav a{margin-right:1.1em;white-space:nowrap}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.9em}
th,td{border:1px solid var(--line);padding:4px 9px;text-align:right;vertical-align:top}
td,th{white-space:nowrap}
th{background:var(--head);font-weight:600}
td.l,th.l{text-align:left}
tr.group td{background:#fafbfc;font-weight:600;text-align:left;border-top:2px solid #b9c0ca}
td.good{background:var(--good)}td.bad{background:var(--bad)}
td.best{font-weight:700}
.sw{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.45em;vertical-align:-.05em}
.tag{font-size:.78em;color:var(--muted);border:1px solid var(--line);border-radius:3px;padding:0 .35em;margin-left:.4em;white-space:nowrap}
.warn{color:#b35900;font-weight:600}
.muted{color:var(--muted)}
.note{color:var(--muted);font-size:.88em;max-width:62em}
dl.prov{display:grid;grid-template-columns:max-content 1fr;gap:.25em 1.2em;margin:.4em 0;font-size:.9em}
dl.prov dt{color:var(--muted)}dl.prov dd{margin:0;font-family:ui-monospace,Menlo,Consolas,monospace;overflow-wrap:anywhere}
ul.verdict{margin:.4em 0 .8em;padding-left:1.2em}ul.verdict li{margin:.2em 0}
dl.defs{display:grid;grid-template-columns:max-content 1fr;gap:.35em 1.2em;font-size:.86em;color:var(--muted);max-width:72em;margin:.8em 0 1.2em;padding:.7em .9em;background:#fafbfc;border:1px solid var(--line);border-radius:6px}
dl.defs dt{font-weight:600;color:var(--fg)}dl.defs dd{margin:0}
figure{margin:.6em 0 1.2em}figure img{max-width:100%;height:auto;display:block}
figcaption{color:var(--muted);font-size:.85em;max-width:62em}
details{margin:.6em 0}summary{cursor:pointer;color:var(--accent)}
pre{background:#f6f7f9;padding:10px;overflow:auto;font-size:.82em;border-radius:4px}
footer{margin-top:2.5em;padding-top:.6em;border-top:1px solid var(--line);color:var(--muted);font-size:.85em}
"""

_e = html.escape


def _isnum(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)


def fmt_ratio(v) -> str:
    """A ratio to tuned Adam: 2 decimals from 0.1 on, 2 significant digits below, "&infin;", or an en dash."""
    if not _isnum(v):
        return DASH
    if math.isinf(v):
        return "&infin;" if v > 0 else "&minus;&infin;"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}" if abs(v) >= 0.1 or v == 0 else f"{v:.2g}"


def _g(v, digits: int = 3) -> str:
    """A loss or learning rate: ``digits`` significant digits."""
    if not _isnum(v):
        return DASH
    if math.isinf(v):
        return "&infin;" if v > 0 else "&minus;&infin;"
    return f"{v:.{digits}g}"


def _pct(v, digits: int = 0) -> str:
    return f"{100 * v:.{digits}f}%" if _isnum(v) and math.isfinite(v) else DASH


def _pm(stats: Mapping | None, scale: float = 1.0, digits: int = 3) -> str:
    """mean &plusmn; std over seeds (``scale`` 100 for accuracies in %); an en dash when missing."""
    if not stats or not _isnum(stats.get("mean")):
        return DASH
    std = stats.get("std")
    if not _isnum(std) or std == 0:
        return _g(stats["mean"] * scale, digits)
    return f"{_g(stats['mean'] * scale, digits)} &plusmn; {_g(std * scale, 2)}"


def _ci(stat: Mapping | None) -> str:
    """``IQM [ci_low, ci_high]`` of a ratio; "&ge;" marks a censored lower bound; an en dash when missing."""
    if not stat or not _isnum(stat.get("value")):
        return DASH
    ge = "&ge;&thinsp;"
    value = (ge if stat.get("lower_bound") else "") + fmt_ratio(stat["value"])
    low = (ge if stat.get("ci_lower_bound") else "") + fmt_ratio(stat.get("ci_low"))
    high = (ge if stat.get("ci_lower_bound") else "") + fmt_ratio(stat.get("ci_high"))
    censored = stat.get("censored_runs")
    note = f" <span class=tag title='runs beyond the normaliser, counted at their bound'>{censored} censored</span>"
    return f"{value} <span class=muted>[{low}, {high}]</span>" + (note if censored else "")


def _ci_class(stat: Mapping | None) -> str:
    """``good`` when the whole CI is above 1 (better than tuned Adam), ``bad`` when below, else nothing."""
    if not stat or not _isnum(stat.get("ci_low")) or not _isnum(stat.get("ci_high")):
        return ""
    if stat["ci_low"] > 1:
        return " good"
    if stat["ci_high"] < 1:
        return " bad"
    return ""


def _share(fraction, n) -> str:
    """``k/n (p%)`` for a share of ``n`` tasks; an en dash when missing."""
    if not _isnum(fraction):
        return DASH
    if not isinstance(n, int) or n <= 0:
        return _pct(fraction)
    return f"{round(fraction * n)}/{n} <span class=muted>({fraction:.0%})</span>"


def _count(k, n) -> str:
    if not isinstance(k, int) or not isinstance(n, int):
        return DASH
    return f"<span class=warn>{k}/{n}</span>" if k else f"0/{n}"


def _speedup(row: Mapping) -> str:
    v = row.get("speedup")
    if not _isnum(v):
        return DASH
    return ("&ge;&thinsp;" if row.get("censored") else "") + f"{fmt_ratio(v)}&times;"


def _name(o: str, colors: Mapping, labels: Mapping, kind: str | None = None) -> str:
    tag = ""
    if o == REFERENCE:
        tag = "<span class=tag>reference</span>"
    elif kind in ("learned", "hybrid", "safeguarded"):
        tag = f"<span class=tag>{_e(kind)}</span>"
    return f"<span class=sw style='background:{_e(colors.get(o, '#888'))}'></span>{_e(labels.get(o, o))}{tag}"


def _figure(src: str | None, alt: str, caption: str = "") -> str:
    if not src:
        return ""
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure><img src='{_e(src)}' alt='{_e(alt)}' loading='eager'>{cap}</figure>"


def _table(head: list[str], rows: list[str], left: int = 1, table_id: str = "") -> str:
    """A table; ``head`` cells are HTML, the first ``left`` columns left-aligned; ``rows`` are ready ``<tr>``s."""
    ths = "".join(f"<th{' class=l' if i < left else ''}>{h}</th>" for i, h in enumerate(head))
    tid = f" id='{_e(table_id)}'" if table_id else ""
    return f"<div class=scroll><table{tid}><thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"


def _td(content: str, cls: str = "") -> str:
    cls = cls.strip()
    return f"<td class='{cls}'>{content}</td>" if cls else f"<td>{content}</td>"


def _n_tasks(agg: Mapping) -> int | None:
    stat = agg.get("speedup_iqm") or agg.get("final_loss_ratio_iqm") or {}
    return stat.get("n_tasks")


def _provenance(evaluation: Mapping, provenance: Mapping) -> str:
    items = [
        ("generated", _e(str(provenance.get("date", "unknown")))),
        ("params hash", _e(str(evaluation.get("params_hash", "unknown")))),
        ("git commit", _e(str(provenance.get("git_commit", "unknown")))),
        ("MLflow run", _e(str(provenance.get("mlflow_run_id", "unknown")))),
    ]
    versions = provenance.get("component_versions") or {}
    if versions:
        items.append(("component versions", ", ".join(f"{_e(k)} {_e(str(v))}" for k, v in versions.items())))
    hashes = provenance.get("data_hashes") or {}
    if hashes:
        items.append(
            (
                "data (sha256)",
                ", ".join(f"{_e(k)} <span title='{_e(str(v))}'>{_e(str(v)[:12])}</span>" for k, v in hashes.items()),
            )
        )
    return "<dl class=prov>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _protocol(evaluation: Mapping, smoothing) -> str:
    tasks = evaluation.get("tasks", {})
    steps = sorted({s.get("num_steps") for s in tasks.values() if isinstance(s.get("num_steps"), int)})
    k = evaluation.get("horizon_multiplier") or 1
    m = evaluation.get("adam_horizon_multiplier") or 1
    grid = evaluation.get("lr_grid") or []
    grid_note = f"{len(grid)} rates from {_g(min(grid))} to {_g(max(grid))}" if grid else DASH
    baselines = [o for o, kind in evaluation.get("optimizers", {}).items() if kind == "baseline"]
    parts = [
        f"{len(tasks)} held-out task{'s' if len(tasks) != 1 else ''}",
        f"{evaluation.get('num_seeds', DASH)} seeds each",
        f"{'/'.join(map(str, steps)) or DASH} steps"
        + (f" (and {k}&times; that for the stability test)" if k > 1 else ""),
        f"baselines {', '.join(_e(b) for b in baselines) or DASH} tuned per task over an LR grid of {grid_note},"
        " by the rule of each comparison (training loss / validation loss)",
        f"Adam's grid runs {m}&times; each horizon, so speedups up to {m}&times; are measurable",
        f"validation split {_pct(evaluation.get('validation_fraction'))} of the training data",
        f"held-out metrics on at most {evaluation.get('eval_examples', DASH)} examples",
    ]
    if _isnum(smoothing):
        parts.append(f"training loss smoothed by an EMA({smoothing:g})")
    return "<p class=lede>" + "; ".join(parts) + ".</p>"


def _verdict(o: str, tr: Mapping, va: Mapping, long: Mapping | None, labels: Mapping, k: int) -> str:
    sp, fl = tr.get("speedup_iqm"), tr.get("final_loss_ratio_iqm")
    if sp and _isnum(sp.get("ci_low")) and _isnum(sp.get("ci_high")):
        if sp["ci_low"] > 1:
            speed = "<b>faster</b> than tuned Adam"
        elif sp["ci_high"] < 1 and not sp.get("ci_lower_bound"):
            speed = "<b>slower</b> than tuned Adam"
        else:
            speed = "<b>as fast</b> as tuned Adam (CI contains 1)"
    else:
        speed = "speed unknown"
    n = _n_tasks(tr)
    text = (
        f"<b>{_e(labels.get(o, o))}</b>: {speed} &mdash; speedup IQM {_ci(sp)}, final-loss ratio IQM {_ci(fl)}; "
        f"lower training loss than tuned Adam on {_share(tr.get('beats_adam_fraction'), n)} of the tasks, "
        f"better test metric than (validation-tuned) Adam on {_share(va.get('test_beats_adam_fraction'), n)}; "
        f"AlgoPerf score {_g(va.get('algoperf_score'), 2)}; "
        f"{_count(tr.get('diverged_runs'), tr.get('total_runs'))} runs diverged"
    )
    if _isnum(tr.get("fallback_rate")):
        text += f"; the guard took {_pct(tr['fallback_rate'])} of the steps"
    if k > 1 and long and long.get("final_loss_ratio_iqm"):
        text += (
            f". At {k}&times; the horizon: final-loss ratio {_ci(long['final_loss_ratio_iqm'])}, beats tuned Adam"
            f" on {_share(long.get('beats_adam_fraction'), n)}"
        )
    return f"<li>{text}.</li>"


_DEFINITIONS = """<dl class=defs>
<dt>Selection rules</dt><dd>Every comparison uses baselines tuned on what it compares. <b>Train rule</b> (speedup,
final-loss ratio, beats tuned Adam on training loss): each baseline's rate is the one with the lowest seed-mean
EMA-smoothed training loss at the task's horizon (VeLO, Celo). <b>Validation rule</b> (test loss and accuracy, beats all
on the test metric, AlgoPerf score): the one with the lowest validation loss (held out of training; synthetic problems
without data: the training loss). HUB, LGL2O and GL2O use the calibrate stage's guard rate chosen by the same rule on
meta-training tasks; the learned optimizer is never tuned. Test data never selects anything.</dd>
<dt>IQM [95% CI]</dt><dd>Interquartile mean of the per-run scores pooled over all (task, seed) runs: the mean of the
middle 50%, robust to a few outlier runs. The bracket is a 95% stratified bootstrap confidence interval: the tasks stay
fixed and the seeds are resampled within each task (rliable, as in Celo and HUB). Green cells: the whole interval is
above 1 (better than tuned Adam); red: the whole interval is below 1.</dd>
<dt>Speedup vs tuned Adam</dt><dd>Steps tuned Adam needs to reach the optimizer's final smoothed training loss, divided
by the optimizer's steps (VeLO / learned_optimization's envelope method): Adam's curve is the lower envelope over its
whole learning-rate grid, run m&times; the task's horizon, so speedups up to m are measured. &ldquo;&ge;&rdquo;: censored,
Adam never reached that loss in m&times; the steps; such a run is counted at its bound m, which makes an IQM that keeps it
a lower bound.</dd>
<dt>Final-loss ratio</dt><dd>L<sub>Adam</sub> / L<sub>opt</sub>: tuned Adam's final smoothed training loss divided by
the optimizer's, seed by seed (Celo). &gt; 1: the optimizer ends lower than tuned Adam.</dd>
<dt>Beats tuned Adam / beats all</dt><dd>Share of tasks on which the optimizer is strictly better than tuned Adam / than
every other optimizer (HUB and inverted HUB are not each other's competitors): on the mean final training loss (train
rule) or on the test accuracy, else the test loss (validation rule). A diverged run never wins.</dd>
<dt>AlgoPerf score</dt><dd>Per task, the first evaluation step at which the seed-mean validation loss reaches tuned Adam's
final validation loss, divided by the fastest optimizer's; the score is the area under the share of tasks within a ratio
&tau; for &tau; in [1, 4], divided by 3 (1: fastest everywhere; a missed target counts 0).</dd>
<dt>Diverged</dt><dd>(task, seed) runs whose final loss is not finite, out of all runs.</dd>
<dt>Fallback rate</dt><dd>For a safeguard (LGL2O, GL2O): the share of steps on which the guard (a hand-designed
optimizer) took over from the learned update, averaged over tasks and seeds. Near 100%: the result is the guard's.</dd>
</dl>"""


def _rule_note(rule: str) -> str:
    text = {
        "train": "baselines tuned on the smoothed final training loss",
        "validation": "baselines tuned on the validation loss",
    }[rule]
    return f"<p class=note><span class=tag>{_e(rule)} rule</span> {text}.</p>"


def _train_table(agg: Mapping, names: list[str], colors, labels, kinds, table_id: str = "headline-table") -> str:
    rows = []
    for o in names:
        a = agg.get(o, {})
        n = _n_tasks(a)
        ref = o == REFERENCE
        beats = "<span class=muted>reference</span>" if ref else _share(a.get("beats_adam_fraction"), n)
        rows.append(
            "<tr>"
            + _td(_name(o, colors, labels, kinds.get(o)), "l")
            + _td(_ci(a.get("speedup_iqm")), "" if ref else _ci_class(a.get("speedup_iqm")))
            + _td(_ci(a.get("final_loss_ratio_iqm")), "" if ref else _ci_class(a.get("final_loss_ratio_iqm")))
            + _td(beats)
            + _td(_share(a.get("beats_all_fraction"), n))
            + _td(_count(a.get("diverged_runs"), a.get("total_runs")))
            + _td(_pct(a.get("fallback_rate"), 1))
            + "</tr>"
        )
    head = [
        "optimizer",
        "speedup vs tuned Adam<br>IQM [95% CI]",
        "final-loss ratio<br>IQM [95% CI]",
        "beats tuned Adam<br>(tasks, train loss)",
        "beats all<br>(tasks, train loss)",
        "diverged<br>(runs)",
        "fallback<br>rate",
    ]
    return _table(head, rows, table_id=table_id)


def _validation_table(agg: Mapping, names: list[str], colors, labels, kinds, n: int | None, table_id: str) -> str:
    rows = []
    for o in names:
        a = agg.get(o, {})
        ref = o == REFERENCE
        rows.append(
            "<tr>"
            + _td(_name(o, colors, labels, kinds.get(o)), "l")
            + _td(_pct(a.get("mean_test_acc"), 1))
            + _td(_g(a.get("mean_test_loss")))
            + _td("<span class=muted>reference</span>" if ref else _share(a.get("test_beats_adam_fraction"), n))
            + _td(_share(a.get("test_beats_all_fraction"), n))
            + _td(_g(a.get("algoperf_score"), 2))
            + _td(_pct(a.get("fallback_rate"), 1))
            + "</tr>"
        )
    head = [
        "optimizer",
        "mean<br>test acc",
        "mean<br>test loss",
        "beats tuned Adam<br>(tasks, test metric)",
        "beats all<br>(tasks, test metric)",
        "AlgoPerf<br>score",
        "fallback<br>rate",
    ]
    return _table(head, rows, table_id=table_id)


def _headline(evaluation: Mapping, names: list[str], colors, labels) -> str:
    agg = evaluation["aggregate"]
    kinds = evaluation.get("optimizers", {})
    n = len(evaluation.get("tasks", {}))
    return (
        "<h3>Training loss</h3>"
        + _rule_note("train")
        + _train_table(agg["train"], names, colors, labels, kinds)
        + "<h3>Generalisation</h3>"
        + _rule_note("validation")
        + _validation_table(agg["validation"], names, colors, labels, kinds, n, "generalisation-table")
    )


def _claims(evaluation: Mapping, names: list[str], colors, labels) -> str:
    claims = evaluation["aggregate"].get("claims") or {}
    n = len(evaluation.get("tasks", {}))
    out = []

    def block(key: str, title: str, head: list[str], cells) -> None:
        c = claims.get(key)
        if not c:
            return
        order = [o for o in [*names, "guard"] if o in c["rows"]]  # the file's keys are sorted
        rows = ["<tr>" + _td(_name(o, colors, labels), "l") + "".join(cells(c["rows"][o])) + "</tr>" for o in order]
        out.append(
            f"<h3 id=claim-{key}>{title}</h3><p class=note><b>Seed paper:</b> {_e(c['seed'])}. "
            f"<b>Here</b> ({_e(c['rule'])} rule): {_e(c['claim'])}.</p>"
            + _table(["optimizer", *head], rows, table_id=f"claim-{key}-table")
        )

    block(
        "celo",
        "Celo / VeLO: faster than tuned Adam",
        [
            "speedup IQM [95% CI]<br><span class=muted>Celo: 1.86</span>",
            "final-loss ratio IQM<br><span class=muted>Celo: 1.20</span>",
            "beats tuned Adam",
        ],
        lambda r: [
            _td(_ci(r["speedup_iqm"])),
            _td(_ci(r["final_loss_ratio_iqm"])),
            _td(_share(r["beats_adam_fraction"], n)),
        ],
    )
    block(
        "hub",
        "HUB: better than each of its parts and than every competitor",
        [
            "beats learned alone",
            "beats tuned Adam",
            "beats all<br><span class=muted>HUB: 94% (16/17)</span>",
            "mean test acc",
            "hand-designed share<br>of the step",
        ],
        lambda r: [
            _td(_share(r["beats_learned_fraction"], n)),
            _td(_share(r["beats_adam_fraction"], n)),
            _td(_share(r["beats_all_fraction"], n)),
            _td(_pct(r["mean_test_acc"], 1)),
            _td(_pct(r.get("hand_share"), 1)),
        ],
    )
    tol = (claims.get("lgl2o") or {}).get("tolerance")
    block(
        "lgl2o",
        "LGL2O vs GL2O vs their guard",
        [
            "mean final<br>train loss",
            "worst excess<br>over the guard",
            f"within {_pct(tol)}<br>of the guard (tasks)",
            "fallback<br>rate",
            "reach tuned Adam's<br>final loss (tasks)",
        ],
        lambda r: [
            _td(_g(r["final_train_loss_mean"])),
            _td(
                _pct(r.get("worst_excess_over_guard"), 1)
                if "worst_excess_over_guard" in r
                else "<span class=muted>guard</span>"
            ),
            _td(_share(r.get("within_tolerance_fraction"), n) if "within_tolerance_fraction" in r else DASH),
            _td(_pct(r.get("fallback_rate"), 1)),
            _td(_share(r["tasks_reaching_target"], n)),
        ],
    )
    block(
        "star",
        "STAR: stable beyond the horizon",
        ["final-loss ratio IQM<br>vs Adam tuned for it", "beats tuned Adam", "diverged"],
        lambda r: [
            _td(_ci(r["final_loss_ratio_iqm"])),
            _td(_share(r["beats_adam_fraction"], n)),
            _td(_count(r["diverged_runs"], r["total_runs"])),
        ],
    )
    block(
        "algoperf",
        "AlgoPerf score",
        ["score in [0, 1]"],
        lambda r: [_td(_g(r["algoperf_score"], 2))],
    )
    if not out:
        return ""
    return "<h2 id=claims>The seed papers' claims, side by side</h2>" + "".join(out)


def _distribution(evaluation: Mapping, names: list[str], colors, labels) -> str:
    kinds = evaluation.get("optimizers", {})
    rows = []
    for t, s in evaluation["tasks"].items():
        rel = s.get("relation") or {}
        inside = rel.get("in_distribution")
        axes = rel.get("ood_axes") or []
        rows.append(
            "<tr>"
            + _td(_e(t), "l")
            + _td("in distribution" if inside else ("out of distribution" if rel else DASH), "l")
            + _td(_e(", ".join(axes)) if axes else DASH, "l")
            + "</tr>"
        )
    parts = [
        "<h2 id=distribution>In and out of the meta-training distribution</h2>"
        "<p class=note>Computed from each task's spec and the experiment's meta-training distribution (datasets,"
        " architectures, sizes, horizons, batch sizes, fine-tuning).</p>",
        _table(["task", "relation", "differs by"], rows, left=3, table_id="distribution-table"),
    ]
    groups = evaluation["aggregate"].get("by_distribution") or {}
    for key, title in (("out_of_distribution", "Out of distribution"), ("in_distribution", "In distribution")):
        g = groups.get(key)
        if not g:
            parts.append(f"<h3>{title}</h3><p class=note>No task.</p>")
            continue
        parts.append(
            f"<h3>{title} ({len(g['tasks'])} task{'s' if len(g['tasks']) != 1 else ''}:"
            f" {_e(', '.join(g['tasks']))})</h3>"
            + _train_table(g["train"], names, colors, labels, kinds, table_id=f"{key}-train-table")
            + _validation_table(
                g["validation"], names, colors, labels, kinds, len(g["tasks"]), f"{key}-validation-table"
            )
        )
    return "".join(parts)


def _stability(evaluation: Mapping, names: list[str], colors, labels, figures) -> str:
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
        n = _n_tasks(a)
        rows.append(
            "<tr>"
            + _td(_name(o, colors, labels, kinds.get(o)), "l")
            + _td(_ci(evaluation["aggregate"]["train"].get(o, {}).get("final_loss_ratio_iqm")))
            + _td(_ci(a["final_loss_ratio_iqm"]), "" if ref else _ci_class(a["final_loss_ratio_iqm"]))
            + _td("<span class=muted>reference</span>" if ref else _share(a.get("beats_adam_fraction"), n))
            + _td(_count(a.get("diverged_runs"), a.get("total_runs")))
            + _td(_pct(a.get("fallback_rate"), 1))
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
            f"<tr class=group><td colspan=6>{_e(t)} <span class=muted>({s.get('num_steps', DASH)} &rarr;"
            f" {s.get('long_num_steps') or DASH} steps)</span></td></tr>"
        )
        for o in long_names:
            lr = lrows.get(o) or {}
            short = (s.get("train") or {}).get(o) or {}
            ratios = [v for v in lr.get("final_loss_ratio_per_seed") or [] if _isnum(v)]
            per_task.append(
                "<tr>"
                + _td(_name(o, colors, labels), "l")
                + _td(_pm(short.get("final_train_loss")))
                + _td(_pm(lr.get("final_train_loss")))
                + _td(fmt_ratio(sum(ratios) / len(ratios)) if ratios else DASH)
                + _td(_count(lr.get("diverged_seeds"), len(lr.get("final_loss_ratio_per_seed") or []) or None))
                + _td(_pct((lr.get("fallback_fraction") or {}).get("mean"), 1))
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
        + _table(head, rows, table_id="stability-table")
        + _figure(
            figures.get("long"),
            f"smoothed training loss of each task at {k} times its horizon",
            "Smoothed training loss at the long horizon, mean &plusmn; std over seeds; the dotted line marks the"
            " task's own horizon.",
        )
        + "<h3>Per task</h3>"
        + _table(task_head, per_task, table_id="stability-task-table")
    )


def _lr_cell(row: Mapping, kind: str | None = None) -> str:
    lr = row.get("learning_rate")
    if not _isnum(lr):
        return DASH
    text = _g(lr)
    if row.get("lr_at_grid_edge"):
        text += " <span class=warn title='the best rate is at the edge of the grid: widen the grid'>&#9888;&nbsp;grid edge</span>"
    elif kind in ("safeguarded", "hybrid"):
        text += " <span class=muted>(guard)</span>"
    return text


def _best(rows: Mapping, names: list[str], key: str, lower: bool) -> set:
    vals = {o: ((rows.get(o) or {}).get(key) or {}).get("mean") for o in names}
    vals = {o: v for o, v in vals.items() if _isnum(v) and math.isfinite(v)}
    if len(vals) < 2:
        return set()
    top = (min if lower else max)(vals.values())
    return {o for o, v in vals.items() if v == top}


def _per_task(evaluation: Mapping, names: list[str], colors, labels) -> str:
    kinds = evaluation.get("optimizers", {})
    train_rows, val_rows = [], []
    for t, s in evaluation["tasks"].items():
        adam_steps = s.get("adam_num_steps")
        group = (
            f"<tr class=group><td colspan=8>{_e(t)} <span class=muted>({s.get('num_steps', DASH)} steps"
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
                speed_cls = "" if o == REFERENCE else ("good" if _isnum(r.get("speedup")) and r["speedup"] > 1 else "")
                ratio = r.get("final_loss_ratio")
                ratio_cls = "" if o == REFERENCE else ("good" if _isnum(ratio) and ratio > 1 else "")
                train_rows.append(
                    "<tr>"
                    + _td(_name(o, colors, labels), "l")
                    + _td(_pm(r.get("final_train_loss")), "best" if o in best_train else "")
                    + _td(_speedup(r), speed_cls)
                    + _td(fmt_ratio(ratio), ratio_cls)
                    + _td(_g(r.get("steps_to_target"), 4))
                    + _td(_lr_cell(r, kinds.get(o)), "l")
                    + _td(_pct((r.get("fallback_fraction") or {}).get("mean"), 1))
                    + _td(_count(r.get("diverged_seeds"), n_seeds))
                    + "</tr>"
                )
            v = va.get(o)
            if v is not None:

                def cell(key, scale=1.0, digits=3, v=v, o=o, best_val=best_val):
                    return _td(_pm(v.get(key), scale, digits), "best" if o in best_val.get(key, ()) else "")

                val_rows.append(
                    "<tr>"
                    + _td(_name(o, colors, labels), "l")
                    + cell("final_val_loss")
                    + cell("final_test_loss")
                    + cell("final_test_acc", 100, 3)
                    + _td(_g(v.get("time_to_target"), 4))
                    + _td(_lr_cell(v, kinds.get(o)), "l")
                    + _td(_pct((v.get("fallback_fraction") or {}).get("mean"), 1))
                    + _td(_count(v.get("diverged_seeds"), evaluation.get("num_seeds")))
                    + "</tr>"
                )
    train_head = [
        "task / optimizer",
        "final train loss<br>(smoothed)",
        "speedup vs<br>tuned Adam",
        "final-loss<br>ratio",
        "steps to Adam's<br>final loss",
        "learning<br>rate",
        "guard<br>fallbacks",
        "diverged<br>seeds",
    ]
    val_head = [
        "task / optimizer",
        "final<br>val loss",
        "final<br>test loss",
        "test acc<br>(%)",
        "steps to Adam's<br>final val loss",
        "learning<br>rate",
        "guard<br>fallbacks",
        "diverged<br>seeds",
    ]
    return (
        "<h3>Training loss</h3>"
        + _rule_note("train")
        + _table(train_head, train_rows, table_id="task-table")
        + "<h3>Held-out metrics</h3>"
        + _rule_note("validation")
        + _table(val_head, val_rows, table_id="task-validation-table")
    )


def _lr_tuning(evaluation: Mapping, names: list[str], colors, labels) -> str:
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
                    _td("<span class=warn title='diverged'>div.</span>")
                    if sc is None
                    else _td(_g(sc), "best" if i == tuned.get("index") else "")
                    for i, sc in enumerate(scores)
                ]
                edge = " <span class=warn>&#9888;&nbsp;grid edge</span>" if tuned.get("at_edge") else ""
                rows.append(
                    "<tr>"
                    + _td(_e(t), "l")
                    + _td(_e(rule), "l")
                    + _td(_e(str(tuned.get("metric", "")).replace("_", " ")) + f" at step {tuned.get('horizon')}", "l")
                    + "".join(cells)
                    + _td(_g(tuned.get("learning_rate")) + edge, "l")
                    + "</tr>"
                )
        if rows:
            head = ["task", "rule", "tuned on", *[f"lr {_g(lr)}" for lr in grid], "chosen"]
            out.append(f"<h3>{_name(o, colors, labels)}</h3>" + _table(head, rows, left=3, table_id=f"lr-{o}"))
    if not out:
        return ""
    return (
        "<h2 id=tuning>Learning-rate tuning</h2><p class=note>Seed-mean score (lower is better) of each baseline at every"
        " rate of the grid under each rule (Adam also for the long horizon of the stability table); bold: the chosen"
        " rate; &ldquo;div.&rdquo;: diverged. A chosen rate at the edge of the grid means the grid should be"
        " widened.</p>" + "".join(out)
    )


def _meta_training(meta_train: Mapping, figures) -> str:
    first, last = meta_train.get("meta_loss_first"), meta_train.get("meta_loss_last")
    secs, ips = meta_train.get("seconds"), meta_train.get("inner_steps_per_second")
    n = meta_train.get("num_meta_params")
    text = (
        f"Meta-loss {_g(first, 4)} &rarr; {_g(last, 4)} in {f'{secs:.0f}' if _isnum(secs) else DASH} s "
        f"({f'{ips:.0f}' if _isnum(ips) else DASH} inner steps/s, {n if isinstance(n, int) else DASH} meta-parameters)."
    )
    return f"<h2 id=meta>Meta-training</h2><p>{text}</p>" + _figure(
        figures.get("meta_loss"), "meta-training curve: meta-loss against outer step"
    )


def _safeguard(safeguard: Mapping) -> str:
    sweep = safeguard.get("sweep") or []
    rows = [
        "<tr>"
        + _td(_g(s.get("learning_rate")))
        + _td(_g(s.get("final_loss"), 4))
        + _td(_g(s.get("validation_loss"), 4))
        + _td(_g(s.get("guard_alone_final_loss"), 4))
        + _td(_pct(s.get("fallback_fraction")))
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
    chosen = ", ".join(f"{_g(v)} ({_e(r)} rule)" for r, v in rates.items())
    edges = [r for r, t in (safeguard.get("tuning") or {}).items() if t.get("at_edge")]
    warn = (
        f" <span class=warn>&#9888; at the edge of the grid ({_e(', '.join(edges))} rule): widen calibrate.lr_grid</span>"
        if edges
        else ""
    )
    return (
        "<h2 id=safeguard>Safeguard (LGL2O; also GL2O's guard and HUB's hand-designed part)</h2>"
        f"<p>Guard <b>{_e(str(safeguard.get('guard', DASH)))}</b> at learning rate {chosen}{warn}, "
        f"chosen on the meta-training tasks: {_e(str(safeguard.get('selection', DASH)))}.</p>"
        + _table(head, rows, left=0, table_id="safeguard-table")
    )


def render_report(
    *,
    title: str,
    evaluation: dict,
    meta_train: dict,
    safeguard: dict,
    figures: dict[str, str],
    params: dict,
    colors: dict[str, str],
    labels: dict[str, str],
    provenance: dict,
    order: list[str] | None = None,
) -> str:
    """Render the report page.

    Args:
      title: page title.
      evaluation: ``metrics/evaluation.json``.
      meta_train: ``metrics/meta_train.json``.
      safeguard: ``models/safeguard.json``.
      figures: figure key -> PNG file name (relative to the page): ``aggregate``, ``profile``, ``speedup``,
        ``meta_loss``, ``long`` (when there is a long horizon) and ``task:<name>`` for each task; a missing key
        leaves its figure out.
      params: the resolved params (shown for reproducibility; ``evaluate.smoothing`` is quoted in the text).
      colors: optimizer -> colour (the swatches match the figures).
      labels: optimizer -> display name.
      provenance: ``date``, ``git_commit``, ``mlflow_run_id``, ``component_versions`` (component -> version) and
        ``data_hashes`` (prepared dataset -> sha256).
      order: optimizers in display order (default: learned, safeguarded, then baselines with tuned Adam first).

    Returns:
      The page, a complete HTML document.
    """
    kinds = evaluation.get("optimizers") or {o: "baseline" for o in evaluation["aggregate"]["train"]}
    names = list(order) if order else display_order(kinds)
    k = evaluation.get("horizon_multiplier") or 1
    smoothing = (params.get("evaluate") or {}).get("smoothing")
    agg = evaluation["aggregate"]
    ours = [o for o in names if kinds.get(o) in ("learned", "hybrid", "safeguarded")]
    verdicts = "".join(
        _verdict(o, agg["train"].get(o, {}), agg["validation"].get(o, {}), (agg.get("long") or {}).get(o), labels, k)
        for o in ours
    )
    stability = _stability(evaluation, names, colors, labels, figures)
    claims = _claims(evaluation, names, colors, labels)
    distribution = _distribution(evaluation, names, colors, labels)
    tuning = _lr_tuning(evaluation, [o for o in names if kinds.get(o) == "baseline"], colors, labels)
    sections = [
        ("provenance", "Provenance"),
        ("headline", "Headline"),
        *([("claims", "Paper claims")] if claims else []),
        ("distribution", "In / out of distribution"),
        *([("stability", "Stability")] if stability else []),
        ("tasks", "Per-task results"),
        ("curves", "Learning curves"),
        *([("tuning", "LR tuning")] if tuning else []),
        ("meta", "Meta-training"),
        ("safeguard", "Safeguard"),
        ("params", "Params"),
    ]
    nav = "<nav>" + "".join(f"<a href='#{a}'>{t}</a>" for a, t in sections) + "</nav>"
    task_figs = "".join(
        f"<h3>{_e(t)} <span class=muted>({evaluation['tasks'][t].get('num_steps', DASH)} steps)</span></h3>"
        + _figure(figures.get(f"task:{t}"), f"learning curves of every optimizer on {t}")
        for t in evaluation["tasks"]
    )
    params_json = json.dumps(params, indent=2, sort_keys=True)
    aggregate_fig = _figure(
        figures.get("aggregate"),
        "bar chart of the speedup IQM and final-loss ratio IQM of each optimizer with 95% confidence intervals",
        "Bars start at 1 (tuned Adam); whiskers: 95% stratified bootstrap CI.",
    )
    profile_fig = _figure(
        figures.get("profile"),
        "performance profile: fraction of runs whose speedup over tuned Adam exceeds a threshold",
        "Performance profile: for each threshold &tau;, the share of (task, seed) runs with a speedup over tuned Adam "
        "above &tau; (each task weighs the same). Curves further right are better.",
    )
    speedup_fig = _figure(
        figures.get("speedup"),
        "per-task speedup over tuned Adam of each optimizer",
        "Per-task speedup vs tuned Adam (bars from 1; hatched: censored, a lower bound).",
    )
    algoperf_fig = _figure(
        figures.get("algoperf"),
        "AlgoPerf performance profile: share of tasks reaching the target within tau times the best time",
        "AlgoPerf profile (validation rule): for &tau; in [1, 4], the share of tasks on which the optimizer reaches tuned"
        " Adam's final validation loss within &tau; times the fastest optimizer's steps; the score is the area divided"
        " by 3.",
    )
    footer = (
        "Generated by l2o-pipeline's report stage"
        + (f" on {_e(str(provenance['date']))}" if provenance.get("date") else "")
        + "."
    )
    if k <= 1:
        footer += " No long-horizon runs (horizon_multiplier 1)."
    params_hash = _e(str(evaluation.get("params_hash", "unknown")))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><title>{_e(title)}</title><style>{_CSS}</style></head><body>
<header><h1>{_e(title)}</h1>
{_protocol(evaluation, smoothing)}
{nav}</header>
<main>
<h2 id=provenance>Provenance</h2>
{_provenance(evaluation, provenance)}
<h2 id=headline>Headline: learned optimizers vs tuned baselines</h2>
<ul class=verdict>{verdicts}</ul>
{_headline(evaluation, names, colors, labels)}
{_DEFINITIONS}
{aggregate_fig}
{profile_fig}
{algoperf_fig}
{claims}
{distribution}
{stability}
<h2 id=tasks>Per-task results</h2>
<p class=note>Mean &plusmn; std over seeds. Bold: best of the task in that column. Training-loss columns at the train
rule's rates (speedup and final-loss ratio from the smoothed training loss of the seed-averaged run; &ldquo;&ge;&rdquo;:
censored); held-out columns at the last evaluation point of the task's horizon, at the validation rule's rates.</p>
{_per_task(evaluation, names, colors, labels)}
{speedup_fig}
<h2 id=curves>Learning curves</h2>
<p class=note>Every optimizer on every task, mean &plusmn; std over seeds. Training loss per step (EMA-smoothed, log
scale) at the train rule's rates; test loss and accuracy at the evaluation points at the validation rule's rates.</p>
{task_figs}
{tuning}
{_meta_training(meta_train, figures)}
{_safeguard(safeguard)}
<h2 id=params>Params</h2>
<details><summary>Resolved params (hash {params_hash})</summary><pre>{_e(params_json)}</pre></details>
</main>
<footer>Raw numbers: <a href="evaluation.json">evaluation.json</a> (a copy of <code>metrics/evaluation.json</code>).
{footer}</footer>
</body></html>
"""
