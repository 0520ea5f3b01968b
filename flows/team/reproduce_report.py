"""The text of `l2o reproduce`'s report: the two runs, warnings, the metric table, the data-hash table, the
verdict (:func:`format_report`; ``--json`` prints the report with `flows.tables.to_json` instead)."""

from typing import Any

from flows.tables import grid, number
from flows.team.reproduce_checks import DATA_STAGES, names

__all__ = ["format_report"]


def _hash(h: str | None) -> str:
    if h is None:
        return "—"
    return h[:12] + (".dir" if h.endswith(".dir") else "")


def format_report(report: dict[str, Any]) -> str:
    """The reproduction as text: the two runs, warnings, the metric table, the data-hash table and the verdict.

    Args:
        report: ``{"original": {...}, "reproduced": {...}, "warnings": [...], "rtol", "atol", "ignore", "metrics":
            compare_metrics rows, "hashes": compare_lock_hashes rows, "changed_deps": [...], "reproduced_ok",
            "verdict"}`` (what `cmd_reproduce` builds; only ``metrics``, ``hashes`` and ``verdict`` are required).

    Returns:
        The text, no trailing newline.
    """
    lines = []
    orig, rep = report.get("original") or {}, report.get("reproduced") or {}
    if orig:
        lines.append(
            f"original    {orig.get('run_id')}  git_commit {orig.get('git_commit')}"
            f"  l2o.params_hash {orig.get('params_hash')}"
        )
    if rep:
        lines.append(
            f"reproduced  {rep.get('run_id') or '(no run)'}  in {rep.get('worktree')}"
            + (" (kept)" if rep.get("kept") else " (removed)" if "kept" in rep else "")
            + (f"  ({rep['seconds']:.0f}s, {rep.get('environment')})" if rep.get("seconds") is not None else "")
        )
    lines += [f"warning: {w}" for w in report.get("warnings") or []]
    rows = report["metrics"]
    compared = [r for r in rows if r["status"] != "ignored"]
    ignored = [r["key"] for r in rows if r["status"] == "ignored"]
    counts = {s: sum(r["status"] == s for r in compared) for s in ("ok", "MISMATCH", "missing", "new")}
    if lines:
        lines.append("")
    tol = ""
    if "atol" in report:
        tol = f"; tolerance atol {report['atol']:g} + rtol {report['rtol']:g} * |original|"
    lines.append(
        f"metrics ({len(compared)} compared, {len(ignored)} ignored{tol}): {counts['ok']} ok,"
        f" {counts['MISMATCH']} MISMATCH, {counts['missing']} missing"
        + (f", {counts['new']} only in the reproduction" if counts["new"] else "")
    )
    if compared:
        table = [
            [
                r["key"],
                number(r["original"], ".10g"),
                number(r["reproduced"], ".10g"),
                number(r["abs_diff"], ".3g"),
                number(r["tolerance"], ".3g"),
                r["status"],
            ]
            for r in compared
        ]
        lines += grid(["key", "original", "reproduced", "|diff|", "tolerance", "status"], table, {1, 2, 3, 4})
    if ignored:
        patterns = " | ".join(report.get("ignore") or [])
        lines.append(f"ignored ({len(ignored)}{', matching ' + patterns if patterns else ''}): {', '.join(ignored)}")
    hashes = report["hashes"]
    lines.append("")
    n_eq = sum(r["status"] == "equal" for r in hashes)
    n_info = sum(r["status"] in ("differs", "missing") for r in hashes)
    n_bad = sum(r["status"] == "DIFFERENT" for r in hashes)
    lines.append(
        f"data hashes (dvc.lock outs; required equal: {', '.join(DATA_STAGES)}): {n_eq} equal,"
        f" {n_bad} DIFFERENT, {n_info} differ (informational)"
    )
    if hashes:
        table = [
            [
                r["stage"],
                r["path"],
                _hash(r["original"]),
                _hash(r["reproduced"]),
                r["status"] + ("" if r["required"] or r["status"] == "equal" else " (informational)"),
            ]
            for r in hashes
        ]
        lines += grid(["stage", "out", "original", "reproduced", "status"], table, set())
    else:
        lines.append("  (no outputs compared)")
    if report.get("changed_deps"):
        lines.append(
            "dependencies whose hash differs from the original run's (its uncommitted changes?): "
            + names(report["changed_deps"], 10)
        )
    lines += ["", report["verdict"]]
    return "\n".join(lines)
