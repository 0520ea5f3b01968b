"""report stage: ``reports/index.html`` with learning curves, speedup plot and the summary table."""

import json
import shutil
from pathlib import Path

import matplotlib.pyplot as plt

from components.reporting import (
    LABELS,
    meta_loss_figure,
    render_report,
    speedup_figure,
    task_curves_figure,
)
from components.stages.calibrate import SAFEGUARD
from components.stages.common import (
    Logger,
    MapFn,
    StageResult,
    atomic_dir,
    print_logger,
    serial_map,
)
from components.stages.evaluate import CURVES_DIR
from components.stages.evaluate import METRICS as EVAL_METRICS
from components.stages.meta_train import METRICS as META_METRICS
from components.stages.meta_train import MODEL_DIR
from components.stages.params import PipelineParams

__all__ = ["VERSION", "REPORT_DIR", "run"]

VERSION = "1"
REPORT_DIR = Path("reports")


def run(params: PipelineParams, root: Path, *, log: Logger = print_logger, map_fn: MapFn = serial_map) -> StageResult:
    del map_fn
    root = Path(root)
    evaluation = json.loads((root / EVAL_METRICS).read_text())
    meta = json.loads((root / META_METRICS).read_text())
    safeguard = json.loads((root / SAFEGUARD).read_text())
    meta_curves = json.loads((root / MODEL_DIR / "curves.json").read_text())
    with atomic_dir(root / REPORT_DIR) as out:
        figures = {}

        def save(fig, name):
            fig.savefig(out / name, dpi=110)
            plt.close(fig)
            return name

        figures["meta_loss"] = save(meta_loss_figure(meta_curves), "meta_training.png")
        figures["speedup"] = save(speedup_figure(evaluation["tasks"]), "speedup.png")
        for task in evaluation["tasks"]:
            curves = json.loads((root / CURVES_DIR / f"{task}.json").read_text())
            figures[f"task:{task}"] = save(task_curves_figure(curves), f"curves_{task}.png")
        page = render_report(
            title=params.report.title,
            evaluation=evaluation,
            meta_train=meta,
            safeguard=safeguard,
            figures=figures,
            params=params.model_dump(mode="json"),
            labels=LABELS,
        )
        (out / "index.html").write_text(page)
        shutil.copy(root / EVAL_METRICS, out / "evaluation.json")
    log(f"report: wrote {REPORT_DIR / 'index.html'} with {len(figures)} figures")
    return StageResult(stage="report", version=VERSION, artifacts=[REPORT_DIR])
