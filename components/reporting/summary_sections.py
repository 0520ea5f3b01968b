"""The report's cross-task sections: provenance, protocol, headline verdicts and tables, claims, distribution.

Each function returns an HTML fragment of :func:`components.reporting.html.render_report`'s page.
"""

from collections.abc import Mapping

from components.reporting.cells import (
    DASH,
    ci_class,
    escape,
    fmt_ci,
    fmt_count,
    fmt_num,
    fmt_pct,
    fmt_share,
    is_number,
    n_tasks,
    optimizer_cell,
    rule_note,
    table,
    td,
)
from components.reporting.plots import REFERENCE

__all__ = [
    "provenance_list",
    "protocol_lede",
    "verdict_item",
    "headline_tables",
    "claims_section",
    "distribution_section",
]


def provenance_list(evaluation: Mapping, provenance: Mapping) -> str:
    items = [
        ("params hash", escape(str(evaluation.get("params_hash", "unknown")))),
        (
            "this run",
            "date, git commit, MLflow run and wall times are on the run's MLflow page (<code>l2o ui</code>,"
            " <code>l2o compare</code>) and in <code>.l2o/runs/</code>; the page holds none of them, so identical"
            " runs write identical reports (and DVC hashes)",
        ),
    ]
    versions = provenance.get("component_versions") or {}
    if versions:
        items.append(("component versions", ", ".join(f"{escape(k)} {escape(str(v))}" for k, v in versions.items())))
    hashes = provenance.get("data_hashes") or {}
    if hashes:
        items.append(
            (
                "data (sha256)",
                ", ".join(
                    f"{escape(k)} <span title='{escape(str(v))}'>{escape(str(v)[:12])}</span>"
                    for k, v in hashes.items()
                ),
            )
        )
    return "<dl class=prov>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def protocol_lede(evaluation: Mapping, smoothing) -> str:
    tasks = evaluation.get("tasks", {})
    steps = sorted({s.get("num_steps") for s in tasks.values() if isinstance(s.get("num_steps"), int)})
    k = evaluation.get("horizon_multiplier") or 1
    m = evaluation.get("adam_horizon_multiplier") or 1
    grid = evaluation.get("lr_grid") or []
    grid_note = f"{len(grid)} rates from {fmt_num(min(grid))} to {fmt_num(max(grid))}" if grid else DASH
    baselines = [o for o, kind in evaluation.get("optimizers", {}).items() if kind == "baseline"]
    parts = [
        f"{len(tasks)} held-out task{'s' if len(tasks) != 1 else ''}",
        f"{evaluation.get('num_seeds', DASH)} seeds each",
        f"{'/'.join(map(str, steps)) or DASH} steps"
        + (f" (and {k}&times; that for the stability test)" if k > 1 else ""),
        f"baselines {', '.join(escape(b) for b in baselines) or DASH} tuned per task over an LR grid of {grid_note},"
        " by the rule of each comparison (training loss / validation loss)",
        f"Adam's grid runs {m}&times; each horizon, so speedups up to {m}&times; are measurable",
        f"validation split {fmt_pct(evaluation.get('validation_fraction'))} of the training data",
        f"held-out metrics on at most {evaluation.get('eval_examples', DASH)} examples",
    ]
    if is_number(smoothing):
        parts.append(f"training loss smoothed by an EMA({smoothing:g})")
    return "<p class=lede>" + "; ".join(parts) + ".</p>"


def verdict_item(o: str, tr: Mapping, va: Mapping, long: Mapping | None, labels: Mapping, k: int) -> str:
    sp, fl = tr.get("speedup_iqm"), tr.get("final_loss_ratio_iqm")
    if sp and is_number(sp.get("ci_low")) and is_number(sp.get("ci_high")):
        if sp["ci_low"] > 1:
            speed = "<b>faster</b> than tuned Adam"
        elif sp["ci_high"] < 1 and not sp.get("ci_lower_bound"):
            speed = "<b>slower</b> than tuned Adam"
        else:
            speed = "<b>as fast</b> as tuned Adam (CI contains 1)"
    else:
        speed = "speed unknown"
    n = n_tasks(tr)
    text = (
        f"<b>{escape(labels.get(o, o))}</b>: {speed} &mdash; speedup IQM {fmt_ci(sp)},"
        f" final-loss ratio IQM {fmt_ci(fl)}; "
        f"lower training loss than tuned Adam on {fmt_share(tr.get('beats_adam_fraction'), n)} of the tasks, "
        f"better test metric than (validation-tuned) Adam on {fmt_share(va.get('test_beats_adam_fraction'), n)}; "
        f"AlgoPerf score {fmt_num(va.get('algoperf_score'), 2)}; "
        f"{fmt_count(tr.get('diverged_runs'), tr.get('total_runs'))} runs diverged"
    )
    if is_number(tr.get("fallback_rate")):
        text += f"; the guard took {fmt_pct(tr['fallback_rate'])} of the steps"
    if k > 1 and long and long.get("final_loss_ratio_iqm"):
        text += (
            f". At {k}&times; the horizon: final-loss ratio {fmt_ci(long['final_loss_ratio_iqm'])}, beats tuned Adam"
            f" on {fmt_share(long.get('beats_adam_fraction'), n)}"
        )
    return f"<li>{text}.</li>"


def _train_table(agg: Mapping, names: list[str], colors, labels, kinds, table_id: str = "headline-table") -> str:
    rows = []
    for o in names:
        a = agg.get(o, {})
        n = n_tasks(a)
        ref = o == REFERENCE
        beats = "<span class=muted>reference</span>" if ref else fmt_share(a.get("beats_adam_fraction"), n)
        rows.append(
            "<tr>"
            + td(optimizer_cell(o, colors, labels, kinds.get(o)), "l")
            + td(fmt_ci(a.get("speedup_iqm")), "" if ref else ci_class(a.get("speedup_iqm")))
            + td(fmt_ci(a.get("final_loss_ratio_iqm")), "" if ref else ci_class(a.get("final_loss_ratio_iqm")))
            + td(beats)
            + td(fmt_share(a.get("beats_all_fraction"), n))
            + td(fmt_count(a.get("diverged_runs"), a.get("total_runs")))
            + td(fmt_pct(a.get("fallback_rate"), 1))
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
    return table(head, rows, table_id=table_id)


def _validation_table(agg: Mapping, names: list[str], colors, labels, kinds, n: int | None, table_id: str) -> str:
    rows = []
    for o in names:
        a = agg.get(o, {})
        ref = o == REFERENCE
        rows.append(
            "<tr>"
            + td(optimizer_cell(o, colors, labels, kinds.get(o)), "l")
            + td(fmt_pct(a.get("mean_test_acc"), 1))
            + td(fmt_num(a.get("mean_test_loss")))
            + td("<span class=muted>reference</span>" if ref else fmt_share(a.get("test_beats_adam_fraction"), n))
            + td(fmt_share(a.get("test_beats_all_fraction"), n))
            + td(fmt_num(a.get("algoperf_score"), 2))
            + td(fmt_pct(a.get("fallback_rate"), 1))
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
    return table(head, rows, table_id=table_id)


def headline_tables(evaluation: Mapping, names: list[str], colors, labels) -> str:
    agg = evaluation["aggregate"]
    kinds = evaluation.get("optimizers", {})
    n = len(evaluation.get("tasks", {}))
    return (
        "<h3>Training loss</h3>"
        + rule_note("train")
        + _train_table(agg["train"], names, colors, labels, kinds)
        + "<h3>Generalisation</h3>"
        + rule_note("validation")
        + _validation_table(agg["validation"], names, colors, labels, kinds, n, "generalisation-table")
    )


def _claim_block(c: Mapping | None, key: str, title: str, head: list[str], cells, names, colors, labels) -> str:
    """One claim's table (``""`` when the run has no such table), rows in display order then the guard alone."""
    if not c:
        return ""
    order = [o for o in [*names, "guard"] if o in c["rows"]]  # the file's keys are sorted
    rows = ["<tr>" + td(optimizer_cell(o, colors, labels), "l") + "".join(cells(c["rows"][o])) + "</tr>" for o in order]
    return (
        f"<h3 id=claim-{key}>{title}</h3><p class=note><b>Seed paper:</b> {escape(c['seed'])}. "
        f"<b>Here</b> ({escape(c['rule'])} rule): {escape(c['claim'])}.</p>"
        + table(["optimizer", *head], rows, table_id=f"claim-{key}-table")
    )


def _speed_claims(n: int) -> list[tuple]:
    """``(key, title, head, row -> cells)`` of Celo's and HUB's claims."""
    return [
        (
            "celo",
            "Celo / VeLO: faster than tuned Adam",
            [
                "speedup IQM [95% CI]<br><span class=muted>Celo: 1.86</span>",
                "final-loss ratio IQM<br><span class=muted>Celo: 1.20</span>",
                "beats tuned Adam",
            ],
            lambda r: [
                td(fmt_ci(r["speedup_iqm"])),
                td(fmt_ci(r["final_loss_ratio_iqm"])),
                td(fmt_share(r["beats_adam_fraction"], n)),
            ],
        ),
        (
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
                td(fmt_share(r["beats_learned_fraction"], n)),
                td(fmt_share(r["beats_adam_fraction"], n)),
                td(fmt_share(r["beats_all_fraction"], n)),
                td(fmt_pct(r["mean_test_acc"], 1)),
                td(fmt_pct(r.get("hand_share"), 1)),
            ],
        ),
    ]


def _safety_claims(n: int, tol) -> list[tuple]:
    """``(key, title, head, row -> cells)`` of LGL2O's, STAR's and AlgoPerf's claims."""
    return [
        (
            "lgl2o",
            "LGL2O vs GL2O vs their guard",
            [
                "mean final<br>train loss",
                "worst excess<br>over the guard",
                f"within {fmt_pct(tol)}<br>of the guard (tasks)",
                "fallback<br>rate",
                "reach tuned Adam's<br>final loss (tasks)",
            ],
            lambda r: [
                td(fmt_num(r["final_train_loss_mean"])),
                td(
                    fmt_pct(r.get("worst_excess_over_guard"), 1)
                    if "worst_excess_over_guard" in r
                    else "<span class=muted>guard</span>"
                ),
                td(fmt_share(r.get("within_tolerance_fraction"), n) if "within_tolerance_fraction" in r else DASH),
                td(fmt_pct(r.get("fallback_rate"), 1)),
                td(fmt_share(r["tasks_reaching_target"], n)),
            ],
        ),
        (
            "star",
            "STAR: stable beyond the horizon",
            ["final-loss ratio IQM<br>vs Adam tuned for it", "beats tuned Adam", "diverged"],
            lambda r: [
                td(fmt_ci(r["final_loss_ratio_iqm"])),
                td(fmt_share(r["beats_adam_fraction"], n)),
                td(fmt_count(r["diverged_runs"], r["total_runs"])),
            ],
        ),
        ("algoperf", "AlgoPerf score", ["score in [0, 1]"], lambda r: [td(fmt_num(r["algoperf_score"], 2))]),
    ]


def claims_section(evaluation: Mapping, names: list[str], colors, labels) -> str:
    """The seed papers' claims side by side: one table per claim the run has (``""`` when none)."""
    claims = evaluation["aggregate"].get("claims") or {}
    n = len(evaluation.get("tasks", {}))
    tol = (claims.get("lgl2o") or {}).get("tolerance")
    specs = [*_speed_claims(n), *_safety_claims(n, tol)]
    out = [_claim_block(claims.get(key), key, *spec, names, colors, labels) for key, *spec in specs]
    out = [o for o in out if o]
    if not out:
        return ""
    return "<h2 id=claims>The seed papers' claims, side by side</h2>" + "".join(out)


def distribution_section(evaluation: Mapping, names: list[str], colors, labels) -> str:
    kinds = evaluation.get("optimizers", {})
    rows = []
    for t, s in evaluation["tasks"].items():
        rel = s.get("relation") or {}
        inside = rel.get("in_distribution")
        axes = rel.get("ood_axes") or []
        rows.append(
            "<tr>"
            + td(escape(t), "l")
            + td("in distribution" if inside else ("out of distribution" if rel else DASH), "l")
            + td(escape(", ".join(axes)) if axes else DASH, "l")
            + "</tr>"
        )
    parts = [
        "<h2 id=distribution>In and out of the meta-training distribution</h2>"
        "<p class=note>Computed from each task's spec and the experiment's meta-training distribution (datasets,"
        " architectures, sizes, horizons, batch sizes, fine-tuning).</p>",
        table(["task", "relation", "differs by"], rows, left=3, table_id="distribution-table"),
    ]
    groups = evaluation["aggregate"].get("by_distribution") or {}
    for key, title in (("out_of_distribution", "Out of distribution"), ("in_distribution", "In distribution")):
        g = groups.get(key)
        if not g:
            parts.append(f"<h3>{title}</h3><p class=note>No task.</p>")
            continue
        parts.append(
            f"<h3>{title} ({len(g['tasks'])} task{'s' if len(g['tasks']) != 1 else ''}:"
            f" {escape(', '.join(g['tasks']))})</h3>"
            + _train_table(g["train"], names, colors, labels, kinds, table_id=f"{key}-train-table")
            + _validation_table(
                g["validation"], names, colors, labels, kinds, len(g["tasks"]), f"{key}-validation-table"
            )
        )
    return "".join(parts)
