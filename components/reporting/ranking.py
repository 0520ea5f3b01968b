"""The report's ranking of every learned optimizer: the fresh one, the zoo's, and their HUB / LGL2O versions.

Shown when the evaluation holds zoo entries (``evaluate.zoo``); a run without them keeps its page as it was.
*Inferred* ("the report ranks every learned optimizer"): the order is the headline number of the papers we
follow, the train rule's speedup IQM over tuned Adam, higher first; a censored IQM ("&ge;", a lower bound)
ranks at its bound, and ties go to the higher CI low end, then the final-loss ratio IQM. The rank never hides
the uncertainty: the CI, the share of tasks beating tuned Adam and each zoo entry's meta-training budget
(outer steps done of planned, wall time) stand beside it.
"""

from collections.abc import Mapping

from components.reporting.cells import DASH, ci_class, escape, fmt_ci, fmt_share, n_tasks, optimizer_cell, table, td

__all__ = ["LEARNED_KINDS", "rank_learned", "ranking_section"]

LEARNED_KINDS = ("learned", "hybrid", "safeguarded")


def _value(stat: Mapping | None, key: str) -> float:
    v = (stat or {}).get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and v == v else float("-inf")


def rank_learned(evaluation: Mapping) -> list[str]:
    """Every learned-family optimizer of ``evaluation`` (``metrics/evaluation.json``), best first (module doc)."""
    kinds = evaluation.get("optimizers") or {}
    train = evaluation["aggregate"]["train"]
    names = [o for o, k in kinds.items() if k in LEARNED_KINDS and o in train]

    def key(o: str):
        row = train[o]
        sp = row.get("speedup_iqm")
        return (-_value(sp, "value"), -_value(sp, "ci_low"), -_value(row.get("final_loss_ratio_iqm"), "value"), o)

    return sorted(names, key=key)


def _budget(o: str, zoo: Mapping) -> str:
    if not o.startswith("zoo."):
        return "meta-trained in this run"
    entry = zoo.get(o.split(".")[1]) or {}
    done, planned = entry.get("outer_steps_done"), entry.get("outer_steps_planned")
    seconds = entry.get("wall_time_seconds")
    steps = f"{done}/{planned} outer steps" if done is not None else "outer steps unknown"
    partial = "" if entry.get("complete") else " <span class=warn>(partial)</span>"
    wall = f", {seconds / 3600:.1f} h" if isinstance(seconds, int | float) else ""
    device = entry.get("device")
    return f"zoo: {escape(steps)}{partial}{escape(wall)}" + (
        f" <span class=muted>{escape(device)}</span>" if device else ""
    )


def ranking_section(evaluation: Mapping, colors: Mapping, labels: Mapping) -> str:
    """``<h2 id=ranking>`` and its table, or ``""`` when the evaluation has no zoo entries."""
    kinds = evaluation.get("optimizers") or {}
    if not any(o.startswith("zoo.") for o in kinds):
        return ""
    train = evaluation["aggregate"]["train"]
    zoo = evaluation.get("zoo_entries") or {}
    rows = []
    for i, o in enumerate(rank_learned(evaluation), start=1):
        row = train[o]
        sp = row.get("speedup_iqm")
        rows.append(
            "<tr>"
            + td(str(i))
            + td(optimizer_cell(o, colors, labels, kinds.get(o)), "l")
            + td(fmt_ci(sp), ci_class(sp))
            + td(fmt_ci(row.get("final_loss_ratio_iqm")), ci_class(row.get("final_loss_ratio_iqm")))
            + td(fmt_share(row.get("beats_adam_fraction"), n_tasks(row)) if row else DASH)
            + td(_budget(o, zoo), "l")
            + "</tr>"
        )
    head = [
        "#",
        "learned optimizer",
        "speedup IQM [95% CI]",
        "final-loss ratio IQM [95% CI]",
        "beats tuned Adam",
        "meta-training",
    ]
    return (
        "<h2 id=ranking>Ranking of every learned optimizer</h2>"
        "<p class=note><span class=tag>train rule</span> The freshly meta-trained optimizer and each zoo entry"
        " (<code>zoo.&lt;name&gt;</code>; untuned, not re-trained), alone, in HUB and under LGL2O, ordered by the"
        " speedup IQM over tuned Adam (&ge;: censored, ranked at its bound), then the CI's low end.</p>"
        + table(head, rows, left=2, table_id="ranking")
    )
