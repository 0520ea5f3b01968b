"""HTML building blocks of the report page: number formats, table cells, tables and figures.

Every string from the inputs is escaped; a metric that is missing (``None``, NaN, or a key the input lacks)
renders as an en dash (:data:`DASH`).
"""

import math
from collections.abc import Mapping
from html import escape

from components.reporting.plots import REFERENCE

__all__ = [
    "DASH",
    "escape",
    "is_number",
    "fmt_ratio",
    "fmt_num",
    "fmt_pct",
    "fmt_mean_std",
    "fmt_ci",
    "ci_class",
    "fmt_share",
    "fmt_count",
    "fmt_speedup",
    "optimizer_cell",
    "figure",
    "table",
    "td",
    "n_tasks",
    "rule_note",
]

DASH = "&ndash;"


def is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)


def fmt_ratio(v) -> str:
    """A ratio to tuned Adam: 2 decimals from 0.1 on, 2 significant digits below, "&infin;", or an en dash."""
    if not is_number(v):
        return DASH
    if math.isinf(v):
        return "&infin;" if v > 0 else "&minus;&infin;"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}" if abs(v) >= 0.1 or v == 0 else f"{v:.2g}"


def fmt_num(v, digits: int = 3) -> str:
    """A loss or learning rate: ``digits`` significant digits."""
    if not is_number(v):
        return DASH
    if math.isinf(v):
        return "&infin;" if v > 0 else "&minus;&infin;"
    return f"{v:.{digits}g}"


def fmt_pct(v, digits: int = 0) -> str:
    return f"{100 * v:.{digits}f}%" if is_number(v) and math.isfinite(v) else DASH


def fmt_mean_std(stats: Mapping | None, scale: float = 1.0, digits: int = 3) -> str:
    """mean &plusmn; std over seeds (``scale`` 100 for accuracies in %); an en dash when missing."""
    if not stats or not is_number(stats.get("mean")):
        return DASH
    std = stats.get("std")
    if not is_number(std) or std == 0:
        return fmt_num(stats["mean"] * scale, digits)
    return f"{fmt_num(stats['mean'] * scale, digits)} &plusmn; {fmt_num(std * scale, 2)}"


def fmt_ci(stat: Mapping | None) -> str:
    """``IQM [ci_low, ci_high]`` of a ratio; "&ge;" marks a censored lower bound; an en dash when missing."""
    if not stat or not is_number(stat.get("value")):
        return DASH
    ge = "&ge;&thinsp;"
    value = (ge if stat.get("lower_bound") else "") + fmt_ratio(stat["value"])
    low = (ge if stat.get("ci_lower_bound") else "") + fmt_ratio(stat.get("ci_low"))
    high = (ge if stat.get("ci_lower_bound") else "") + fmt_ratio(stat.get("ci_high"))
    censored = stat.get("censored_runs")
    note = f" <span class=tag title='runs beyond the normaliser, counted at their bound'>{censored} censored</span>"
    return f"{value} <span class=muted>[{low}, {high}]</span>" + (note if censored else "")


def ci_class(stat: Mapping | None) -> str:
    """``good`` when the whole CI is above 1 (better than tuned Adam), ``bad`` when below, else nothing."""
    if not stat or not is_number(stat.get("ci_low")) or not is_number(stat.get("ci_high")):
        return ""
    if stat["ci_low"] > 1:
        return " good"
    if stat["ci_high"] < 1:
        return " bad"
    return ""


def fmt_share(fraction, n) -> str:
    """``k/n (p%)`` for a share of ``n`` tasks; an en dash when missing."""
    if not is_number(fraction):
        return DASH
    if not isinstance(n, int) or n <= 0:
        return fmt_pct(fraction)
    return f"{round(fraction * n)}/{n} <span class=muted>({fraction:.0%})</span>"


def fmt_count(k, n) -> str:
    if not isinstance(k, int) or not isinstance(n, int):
        return DASH
    return f"<span class=warn>{k}/{n}</span>" if k else f"0/{n}"


def fmt_speedup(row: Mapping) -> str:
    v = row.get("speedup")
    if not is_number(v):
        return DASH
    return ("&ge;&thinsp;" if row.get("censored") else "") + f"{fmt_ratio(v)}&times;"


def optimizer_cell(o: str, colors: Mapping, labels: Mapping, kind: str | None = None) -> str:
    tag = ""
    if o == REFERENCE:
        tag = "<span class=tag>reference</span>"
    elif kind in ("learned", "hybrid", "safeguarded"):
        tag = f"<span class=tag>{escape(kind)}</span>"
    return f"<span class=sw style='background:{escape(colors.get(o, '#888'))}'></span>{escape(labels.get(o, o))}{tag}"


def figure(src: str | None, alt: str, caption: str = "") -> str:
    if not src:
        return ""
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure><img src='{escape(src)}' alt='{escape(alt)}' loading='eager'>{cap}</figure>"


def table(head: list[str], rows: list[str], left: int = 1, table_id: str = "") -> str:
    """A table; ``head`` cells are HTML, the first ``left`` columns left-aligned; ``rows`` are ready ``<tr>``s."""
    ths = "".join(f"<th{' class=l' if i < left else ''}>{h}</th>" for i, h in enumerate(head))
    tid = f" id='{escape(table_id)}'" if table_id else ""
    return f"<div class=scroll><table{tid}><thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"


def td(content: str, cls: str = "") -> str:
    cls = cls.strip()
    return f"<td class='{cls}'>{content}</td>" if cls else f"<td>{content}</td>"


def n_tasks(agg: Mapping) -> int | None:
    stat = agg.get("speedup_iqm") or agg.get("final_loss_ratio_iqm") or {}
    return stat.get("n_tasks")


def rule_note(rule: str) -> str:
    text = {
        "train": "baselines tuned on the smoothed final training loss",
        "validation": "baselines tuned on the validation loss",
    }[rule]
    return f"<p class=note><span class=tag>{escape(rule)} rule</span> {text}.</p>"
