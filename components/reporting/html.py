"""The HTML report: one self-contained static page (no JavaScript, no network) next to its PNG figures.

The page follows the evaluation protocol of the learned-optimizer papers (VeLO, Celo, HUB, LGL2O, STAR): a headline
table of cross-task aggregates (IQM with stratified bootstrap CIs, shares of tasks beating tuned Adam), the
stability test at k x the horizon, then per-task detail, the learning-rate tuning of the baselines, meta-training
and the safeguard calibration. Every string from the inputs is escaped; a metric that is missing (``None``, NaN, or
a key the input lacks) renders as an en dash.
"""

import json
from collections.abc import Mapping

from components.reporting.cells import DASH, escape, figure
from components.reporting.plots import display_order
from components.reporting.ranking import ranking_section
from components.reporting.summary_sections import (
    claims_section,
    distribution_section,
    headline_tables,
    protocol_lede,
    provenance_list,
    verdict_item,
)
from components.reporting.task_sections import (
    lr_tuning_section,
    meta_training_section,
    per_task_tables,
    safeguard_section,
    stability_section,
)

__all__ = ["render_report"]

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

DEFINITIONS = """<dl class=defs>
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


LEARNED_FAMILY = ("learned", "hybrid", "safeguarded")  # the kinds the verdicts are about


def _verdicts(agg: Mapping, ours: list[str], labels: Mapping, k: int) -> str:
    """One verdict line per optimizer of the learned family."""
    return "".join(
        verdict_item(
            o, agg["train"].get(o, {}), agg["validation"].get(o, {}), (agg.get("long") or {}).get(o), labels, k
        )
        for o in ours
    )


def _nav(claims: str, stability: str, tuning: str, ranking: str = "") -> str:
    """The page's table of contents (sections the run has no content for are left out)."""
    sections = [
        ("provenance", "Provenance"),
        ("headline", "Headline"),
        *([("ranking", "Ranking")] if ranking else []),
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
    return "<nav>" + "".join(f"<a href='#{a}'>{t}</a>" for a, t in sections) + "</nav>"


def _task_figures(evaluation: Mapping, figures: Mapping) -> str:
    return "".join(
        f"<h3>{escape(t)} <span class=muted>({evaluation['tasks'][t].get('num_steps', DASH)} steps)</span></h3>"
        + figure(figures.get(f"task:{t}"), f"learning curves of every optimizer on {t}")
        for t in evaluation["tasks"]
    )


def _summary_figures(figures: Mapping) -> dict[str, str]:
    """The cross-task figures with their alt texts and captions (``""`` for a figure the run has not drawn)."""
    return {
        "aggregate": figure(
            figures.get("aggregate"),
            "bar chart of the speedup IQM and final-loss ratio IQM of each optimizer with 95% confidence intervals",
            "Bars start at 1 (tuned Adam); whiskers: 95% stratified bootstrap CI.",
        ),
        "profile": figure(
            figures.get("profile"),
            "performance profile: fraction of runs whose speedup over tuned Adam exceeds a threshold",
            "Performance profile: for each threshold &tau;, the share of (task, seed) runs with a speedup over tuned Adam "
            "above &tau; (each task weighs the same). Curves further right are better.",
        ),
        "speedup": figure(
            figures.get("speedup"),
            "per-task speedup over tuned Adam of each optimizer",
            "Per-task speedup vs tuned Adam (bars from 1; hatched: censored, a lower bound).",
        ),
        "algoperf": figure(
            figures.get("algoperf"),
            "AlgoPerf performance profile: share of tasks reaching the target within tau times the best time",
            "AlgoPerf profile (validation rule): for &tau; in [1, 4], the share of tasks on which the optimizer reaches tuned"
            " Adam's final validation loss within &tau; times the fastest optimizer's steps; the score is the area divided"
            " by 3.",
        ),
    }


def _footer(provenance: Mapping, k: int) -> str:
    footer = (
        "Generated by l2o-pipeline's report stage"
        + (f" on {escape(str(provenance['date']))}" if provenance.get("date") else "")
        + "."
    )
    if k <= 1:
        footer += " No long-horizon runs (horizon_multiplier 1)."
    return footer


_PER_TASK_HEAD = """<h2 id=tasks>Per-task results</h2>
<p class=note>Mean &plusmn; std over seeds. Bold: best of the task in that column. Training-loss columns at the train
rule's rates (speedup and final-loss ratio from the smoothed training loss of the seed-averaged run; &ldquo;&ge;&rdquo;:
censored); held-out columns at the last evaluation point of the task's horizon, at the validation rule's rates.</p>"""


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
      provenance: ``component_versions`` (component -> version) and ``data_hashes`` (prepared dataset ->
        sha256); nothing that differs between identical runs.
      order: optimizers in display order (default: learned, safeguarded, then baselines with tuned Adam first).

    Returns:
      The page, a complete HTML document.
    """
    kinds = evaluation.get("optimizers") or {o: "baseline" for o in evaluation["aggregate"]["train"]}
    names = list(order) if order else display_order(kinds)
    k = evaluation.get("horizon_multiplier") or 1
    verdicts = _verdicts(evaluation["aggregate"], [o for o in names if kinds.get(o) in LEARNED_FAMILY], labels, k)
    stability = stability_section(evaluation, names, colors, labels, figures)
    claims = claims_section(evaluation, names, colors, labels)
    tuning = lr_tuning_section(evaluation, [o for o in names if kinds.get(o) == "baseline"], colors, labels)
    figs = _summary_figures(figures)
    ranking = ranking_section(evaluation, colors, labels)  # "" without zoo entries
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><title>{escape(title)}</title><style>{_CSS}</style></head><body>
<header><h1>{escape(title)}</h1>
{protocol_lede(evaluation, (params.get("evaluate") or {}).get("smoothing"))}
{_nav(claims, stability, tuning, ranking)}</header>
<main>
<h2 id=provenance>Provenance</h2>
{provenance_list(evaluation, provenance)}
<h2 id=headline>Headline: learned optimizers vs tuned baselines</h2>
<ul class=verdict>{verdicts}</ul>
{headline_tables(evaluation, names, colors, labels)}
{ranking}{DEFINITIONS}
{figs["aggregate"]}
{figs["profile"]}
{figs["algoperf"]}
{claims}
{distribution_section(evaluation, names, colors, labels)}
{stability}
{_PER_TASK_HEAD}
{per_task_tables(evaluation, names, colors, labels)}
{figs["speedup"]}
<h2 id=curves>Learning curves</h2>
<p class=note>Every optimizer on every task, mean &plusmn; std over seeds. Training loss per step (EMA-smoothed, log
scale) at the train rule's rates; test loss and accuracy at the evaluation points at the validation rule's rates.</p>
{_task_figures(evaluation, figures)}
{tuning}
{meta_training_section(meta_train, figures)}
{safeguard_section(safeguard)}
<h2 id=params>Params</h2>
<details><summary>Resolved params (hash {escape(str(evaluation.get("params_hash", "unknown")))})</summary><pre>{escape(json.dumps(params, indent=2, sort_keys=True))}</pre></details>
</main>
<footer>Raw numbers: <a href="evaluation.json">evaluation.json</a> (a copy of <code>metrics/evaluation.json</code>).
{_footer(provenance, k)}</footer>
</body></html>
"""
