"""The evaluation across tasks: aggregates per selection rule, by distribution, the claim tables, the headline.

:func:`aggregate_all` turns the per-task summaries of :func:`components.evaluation.experiment.evaluate_on_task`
into the numbers per rule (:mod:`components.evaluation.aggregate`), split by the tasks' relation to the
meta-training distribution, with the claim tables (:mod:`components.evaluation.claims`); :func:`headline`
flattens them into the per-optimizer numbers ``dvc metrics`` shows.
"""

import math

from components.evaluation.aggregate import aggregate_long, aggregate_train, aggregate_validation
from components.evaluation.claims import claims
from components.evaluation.methods import LEARNED_KINDS, LONG, REFERENCE, VARIANTS, base_method

__all__ = ["aggregate_all", "headline", "flat_numbers"]


def aggregate_all(
    summaries: dict[str, dict], names: list[str], *, n_resamples: int = 2000, seed: int = 0, variants=None
) -> dict:
    """Across tasks under each rule (:mod:`components.evaluation.aggregate`), by distribution, and the claim tables.

    ``variants`` (default :data:`~components.evaluation.methods.VARIANTS`) are the "beats all"
    non-competitors; with zoo entries the stage passes
    :func:`~components.evaluation.methods.family_variants`.

    Returns:
      ``train`` / ``validation`` / ``long`` (per optimizer), ``by_distribution``
      (``in_distribution`` / ``out_of_distribution``: the tasks and both rules' aggregates over them,
      ``None`` when a group is empty) and ``claims`` (:func:`components.evaluation.claims.claims`).
    """
    ci = dict(n_resamples=n_resamples, seed=seed)
    variants = VARIANTS if variants is None else variants

    def both(tasks):
        tr = {t: summaries[t]["train"] for t in tasks}
        va = {t: summaries[t]["validation"] for t in tasks}
        return {
            "tasks": list(tasks),
            "train": aggregate_train(tr, names, reference=REFERENCE, variants=variants, **ci),
            "validation": aggregate_validation(va, names, reference=REFERENCE, variants=variants),
        }

    tasks = list(summaries)
    out = both(tasks)
    del out["tasks"]
    long = {t: s["long"] for t, s in summaries.items() if s.get("long")}
    out["long"] = (
        aggregate_long(
            long,
            [
                REFERENCE,
                *(o for o in LONG if o in names),
                *(o for o in names if o not in LEARNED_KINDS and base_method(o) in LONG),  # zoo entries
            ],
            reference=REFERENCE,
            **ci,
        )
        if len(long) == len(tasks)
        else None
    )
    inside = [t for t in tasks if (summaries[t].get("relation") or {}).get("in_distribution")]
    outside = [t for t in tasks if t not in inside]
    out["by_distribution"] = {
        "in_distribution": both(inside) if inside else None,
        "out_of_distribution": both(outside) if outside else None,
    }
    out["claims"] = claims(
        {t: s["train"] for t, s in summaries.items()},
        {t: s["validation"] for t, s in summaries.items()},
        out,
        present=names,
        horizon_multiplier=max((s["long_num_steps"] or 0) // s["num_steps"] for s in summaries.values()),
    )
    return out


_HEADLINE_KEYS = {
    "train_rule": (
        "speedup_iqm",
        "final_loss_ratio_iqm",
        "beats_adam_fraction",
        "beats_all_fraction",
        "diverged_runs",
        "fallback_rate",
    ),
    "validation_rule": (
        "test_beats_adam_fraction",
        "test_beats_all_fraction",
        "mean_test_acc",
        "mean_test_loss",
        "algoperf_score",
    ),
    "stability": ("final_loss_ratio_iqm", "beats_adam_fraction", "diverged_runs"),
}


def headline(agg: dict) -> dict:
    """``metrics/headline.json``: per optimizer, flat numbers under each rule (what ``dvc metrics`` shows).

    ``{optimizer: {"train_rule": {...}, "validation_rule": {...}, "stability": {...},
    "out_of_distribution": {...}, "in_distribution": {...}}}``; an IQM ``x`` comes with ``x_ci_low`` /
    ``x_ci_high`` and, for a censored speedup, ``x_lower_bound: 1``; missing values are left out.
    """
    sections = {"train_rule": agg["train"], "validation_rule": agg["validation"], "stability": agg.get("long") or {}}
    out = {}
    for o in agg["train"]:
        entry = {}
        for sec, per in sections.items():
            if o in per:
                entry[sec] = _numbers(per[o], _HEADLINE_KEYS[sec])
        for group, part in (agg.get("by_distribution") or {}).items():
            if part is not None:
                entry[group] = {
                    **_numbers(part["train"][o], ("speedup_iqm", "beats_adam_fraction")),
                    **_numbers(part["validation"][o], ("test_beats_adam_fraction", "algoperf_score")),
                    "tasks": len(part["tasks"]),
                }
        out[o] = entry
    return out


def _numbers(row: dict, keys) -> dict:
    out = {}
    for k in keys:
        v = row.get(k)
        if isinstance(v, dict):
            out[k] = v["value"]
            out[f"{k}_ci_low"], out[f"{k}_ci_high"] = v["ci_low"], v["ci_high"]
            if v.get("lower_bound") is not None:
                out[f"{k}_lower_bound"] = int(bool(v["lower_bound"]))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[k] = v
    return {k: v for k, v in out.items() if v is not None and math.isfinite(v)}


def flat_numbers(d: dict, prefix: str = "") -> dict[str, float | None]:
    """``{"a/b": number}`` of a nested dict's numbers (bools as 0 / 1, ``None`` kept); other values left out."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_numbers(v, f"{prefix}{k}/"))
        elif isinstance(v, bool) or v is None or isinstance(v, int | float):
            out[f"{prefix}{k}"] = None if v is None else float(v)
    return out
