"""report stage: ``reports/index.html``, the learned-optimizer papers' evaluation read at a glance.

Reads ``metrics/evaluation.json`` and ``metrics/curves/<task>.json`` (evaluate stage), ``metrics/meta_train.json``
and ``models/lopt/curves.json`` (meta_train), ``models/safeguard.json`` (calibrate) and
``data/prepared/manifest.json`` (prepare_data), and writes into ``reports/`` (replaced whole, atomically):

* ``index.html``: a static page (no JavaScript, no network) with the provenance of the run (params hash,
  component versions, data hashes; the run's date, git commit and MLflow run are the run's MLflow tags and
  ``.l2o/runs/report.json``, never the page: identical runs write identical reports), the headline table
  (speedup and final-loss ratio IQM with 95% CIs, shares of tasks beating tuned Adam and every competitor,
  divergences, fallback rate), the stability test at k x the horizon, per-task results, learning curves, the
  baselines' learning-rate tuning, meta-training and the safeguard sweep (see :mod:`components.reporting.html`);
* its PNG figures (:mod:`components.reporting.plots`): ``aggregate.png``, ``profile.png``, ``speedup.png``,
  ``long_horizon.png`` (k > 1 only), ``curves_<task>.png`` and ``meta_training.png``;
* ``evaluation.json``, a copy of the metrics the page shows.

``context.run_id`` is the MLflow run the stage is logged under (the pipeline's parent run for ``l2o run``,
the stage's own run for ``l2o stage`` / ``dvc repro``): it goes to the run log, with the date and commit.
"""

import datetime
import shutil
from pathlib import Path

import matplotlib.pyplot as plt

from components.reporting import (
    aggregate_figure,
    algoperf_figure,
    display_order,
    long_horizon_figure,
    meta_loss_figure,
    optimizer_style,
    performance_profile_figure,
    render_report,
    speedup_figure,
    task_curves_figure,
)
from components.reporting.plots import REFERENCE
from components.stages.common import StageContext, StageResult, atomic_dir, read_json, write_run_log
from components.stages.params import PipelineParams
from components.stages.paths import (
    CURVES_DIR,
    EVAL_METRICS,
    MANIFEST,
    META_METRICS,
    MODEL_DIR,
    REPORT_DIR,
    SAFEGUARD,
)

__all__ = ["VERSION", "run", "provenance"]

VERSION = "3"
_DPI = 110
NO_RUN = "unknown (run outside l2o run)"


def _read_json(path: Path) -> dict | None:
    return read_json(path) if path.exists() else None


def provenance(root: Path, evaluation: dict) -> dict:
    """Component versions and prepared-data hashes of the run: what the page states. Nothing that differs
    between identical runs (date, commit, MLflow run id: :func:`run` writes them to the run log)."""
    manifest = _read_json(root / MANIFEST) or {}
    config = _read_json(root / MODEL_DIR / "config.json") or {}
    safeguard = _read_json(root / SAFEGUARD) or {}
    versions = {
        "prepare_data": manifest.get("version"),
        "meta_train": config.get("component_version"),
        "calibrate": safeguard.get("component_version"),
        "evaluate": evaluation.get("component_version"),
        "report": VERSION,
    }
    return {
        "component_versions": {k: v for k, v in versions.items() if v is not None},
        "data_hashes": {name: d.get("sha256", "?") for name, d in (manifest.get("datasets") or {}).items()},
    }


def _figures(out: Path, evaluation: dict, curves: dict, meta_curves: dict, names, colors, labels) -> dict[str, str]:
    """Draw every figure into ``out``; returns figure key -> file name (what :func:`render_report` links)."""
    figures = {}

    def save(fig, key: str, name: str) -> None:
        fig.savefig(out / name, dpi=_DPI)
        plt.close(fig)
        figures[key] = name

    tasks = evaluation["tasks"]
    save(aggregate_figure(evaluation["aggregate"]["train"], names, colors, labels), "aggregate", "aggregate.png")
    save(algoperf_figure(evaluation["aggregate"]["validation"], names, colors, labels), "algoperf", "algoperf.png")
    save(performance_profile_figure(tasks, names, colors, labels), "profile", "profile.png")
    others = [o for o in names if o != REFERENCE]
    save(speedup_figure(tasks, others, colors, labels), "speedup", "speedup.png")
    long_curves = {t: c["long"] for t, c in curves.items() if c.get("long")}
    if evaluation.get("horizon_multiplier", 1) > 1 and long_curves:
        horizons = {t: tasks[t]["num_steps"] for t in long_curves}
        save(long_horizon_figure(long_curves, horizons, names, colors, labels), "long", "long_horizon.png")
    for t, c in curves.items():
        save(task_curves_figure(c, names, colors, labels), f"task:{t}", f"curves_{t}.png")
    save(meta_loss_figure(meta_curves), "meta_loss", "meta_training.png")
    return figures


def run(params: PipelineParams, root: Path, context: StageContext | None = None) -> StageResult:
    """Write ``reports/`` from the outputs of the earlier stages (see the module docstring).

    ``context.run_id`` is the MLflow run the page names; ``context.map_fn`` is not used.
    """
    context = context or StageContext()
    root = Path(root)
    evaluation = read_json(root / EVAL_METRICS)
    meta = read_json(root / META_METRICS)
    safeguard = read_json(root / SAFEGUARD)
    meta_curves = read_json(root / MODEL_DIR / "curves.json")
    config = _read_json(root / MODEL_DIR / "config.json") or {}
    # the evaluate stage's order (learned, HUB, inverted HUB, LGL2O, GL2O, baselines); the file's keys are sorted
    names = evaluation.get("optimizer_order") or display_order(evaluation["optimizers"], params.evaluate.baselines)
    colors, labels = optimizer_style(evaluation["optimizers"], config.get("architecture"))
    colors.setdefault("guard", "#7f7f7f")
    labels.setdefault("guard", f"guard alone ({safeguard.get('guard', 'guard')} at its calibrated rate)")
    curves = {t: read_json(root / CURVES_DIR / f"{t}.json") for t in evaluation["tasks"]}
    with atomic_dir(root / REPORT_DIR) as out:
        out.chmod(0o755)  # a temporary directory is private; the report is meant to be served and shared
        figures = _figures(out, evaluation, curves, meta_curves, names, colors, labels)
        page = render_report(
            title=params.report.title,
            evaluation=evaluation,
            meta_train=meta,
            safeguard=safeguard,
            figures=figures,
            params=params.model_dump(mode="json"),
            colors=colors,
            labels=labels,
            provenance=provenance(root, evaluation),
            order=names,
        )
        (out / "index.html").write_text(page, encoding="utf-8")
        shutil.copy(root / EVAL_METRICS, out / "evaluation.json")
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    write_run_log(root, "report", {"date": date, "mlflow_run_id": context.run_id or NO_RUN})
    context.log(f"report: wrote {REPORT_DIR / 'index.html'} with {len(figures)} figures")
    return StageResult(stage="report", version=VERSION, artifacts=[REPORT_DIR])
