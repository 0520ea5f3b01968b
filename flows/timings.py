"""Wall-clock cost of one ``l2o run``: per stage, and per optimizer step (from the evaluate stage's metrics).

Wall-clock values never go into DVC-tracked files (identical runs must give identical hashes), so the report
does not hold them: they are on the pipeline's MLflow run, as metrics (``stage_seconds/<stage>``,
``step_us/<optimizer>``) and as the artifact ``timings/timings.md``, and the console prints one line.

The per-optimizer numbers are :func:`components.stages.evaluate.timing_metrics`: the execution time of each
optimizer's evaluation runs per training step (compilation apart; the median over tasks), with the seconds spent
running and compiling. They come from the evaluate run of this pipeline run (ran, restored from the run-cache or
handed to a work pool); when evaluate was up to date the table says so and gives stage times only.
"""

import tempfile
from pathlib import Path

__all__ = ["record"]

ARTIFACT_DIR = "timings"


def record(tracker, parent: str, stage_seconds: dict[str, float], skipped: list[str], log=print) -> None:
    """Log the stage times and the evaluate run's per-optimizer step cost on ``parent``; print one line."""
    optimizers = _optimizer_costs(tracker, parent)
    tracker.log_metrics(
        parent,
        {
            **{f"stage_seconds/{k}": v for k, v in stage_seconds.items()},
            **{f"step_us/{o}": row["step_us"] for o, row in optimizers.items() if "step_us" in row},
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "timings.md"
        path.write_text(markdown(stage_seconds, skipped, optimizers))
        tracker.log_artifact(parent, path, ARTIFACT_DIR)
    log(console_line(stage_seconds, optimizers))


def _optimizer_costs(tracker, parent: str) -> dict[str, dict[str, float]]:
    """``optimizer -> {step_us, run_seconds, compile_seconds}`` from this pipeline run's evaluate run."""
    found = tracker.client.search_runs(
        [tracker.experiment_id],
        f"tags.mlflow.parentRunId = '{parent}' and tags.`l2o.stage` = 'evaluate'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not found:
        return {}
    out: dict[str, dict[str, float]] = {}
    for key, value in found[0].data.metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "timing":
            out.setdefault(parts[1], {})[parts[2]] = value
    return out


def markdown(stage_seconds: dict[str, float], skipped: list[str], optimizers: dict[str, dict[str, float]]) -> str:
    """The timings table of one pipeline run (the ``timings.md`` artifact)."""
    lines = ["# Wall-clock cost of this pipeline run", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in stage_seconds.items()]
    lines += [f"| {k} | up to date (not run) |" for k in skipped]
    lines += [f"| total | {sum(stage_seconds.values()):.1f} |", ""]
    if not optimizers:
        lines.append("Evaluate did not run in this pipeline run: no per-optimizer step cost.")
        return "\n".join(lines) + "\n"
    lines += [
        "Per optimizer: the execution time of its evaluation runs per training step of one run (the median over",
        "tasks; the task's forward and backward pass and the periodic evaluations included, compilation apart).",
        "Adam's grid runs longer and evaluates its tail less often, so its evaluations weigh less per step;",
        "`benchmarks/optimizer_step.py` compares the optimizers' updates alone.",
        "",
        "| optimizer | µs per step | running (s, all tasks) | compiling (s, all tasks) |",
        "|---|---:|---:|---:|",
    ]
    for o in sorted(optimizers, key=lambda o: optimizers[o].get("step_us", float("inf"))):
        row = optimizers[o]
        us = f"{row['step_us']:.1f}" if "step_us" in row else "–"
        lines.append(f"| {o} | {us} | {row.get('run_seconds', 0.0):.1f} | {row.get('compile_seconds', 0.0):.1f} |")
    return "\n".join(lines) + "\n"


def console_line(stage_seconds: dict[str, float], optimizers: dict[str, dict[str, float]]) -> str:
    """One line: the time of each stage that ran, and each optimizer's microseconds per evaluation step."""
    stages = ", ".join(f"{k} {v:.0f}s" for k, v in stage_seconds.items()) or "none ran"
    line = f"l2o: wall-clock per stage: {stages}"
    steps = {o: r["step_us"] for o, r in optimizers.items() if "step_us" in r}
    if steps:
        line += "; µs per evaluation step: " + ", ".join(
            f"{o} {v:.0f}" for o, v in sorted(steps.items(), key=lambda x: x[1])
        )
    return line
