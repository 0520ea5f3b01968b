"""Where every stage's files live, relative to the project root: the one list of the pipeline's artifacts.

Not a stage: every stage (and ``dvc.yaml``, whose ``deps`` / ``outs`` name the same paths) reads its inputs
and writes its outputs here, so no stage imports another stage for a path.

======================  ==============  ==============================================================
path                    written by      what
======================  ==============  ==============================================================
``PREPARED_DIR``        prepare_data    ``<name>.npz`` per prepared dataset and ``manifest.json``
``CACHE_DIR``           prepare_data    downloads (unused with a data mirror)
``PRETRAINED_DIR``      pretrain        ``<task>.npz`` per fine-tuning task and ``index.json``
``MODEL_DIR``           meta_train      the learned-optimizer checkpoint (+ ``curves.json``)
``CHECKPOINT_DIR``      meta_train      resumable loop state, ``<phase>.npz`` (not a DVC output)
``META_METRICS``        meta_train      summary metrics
``META_PLOT``           meta_train      the meta-loss curve for ``dvc plots``
``SAFEGUARD``           calibrate       the guard and its learning rate per selection rule
``ZOO_DIR``             l2o zoo add     pretrained learned optimizers, ``<name>/`` (an input of evaluate)
``EVAL_METRICS``        evaluate        per-task results, aggregates, claim tables
``HEADLINE``            evaluate        the flat headline numbers (``dvc metrics``)
``CURVES_DIR``          evaluate        ``<task>.json`` learning curves
``EVAL_PLOTS_DIR``      evaluate        ``<task>.json`` smoothed training loss for ``dvc plots``
``REPORT_DIR``          report          ``index.html`` and its figures
``RUN_LOG_DIR``         every stage     ``<stage>.json``: wall times, rates, resume points, host, git commit
                                        of the last run (git-ignored, not a DVC output: DVC-tracked files
                                        hold no wall-clock values, so identical runs hash alike)
======================  ==============  ==============================================================
"""

from pathlib import Path

__all__ = [
    "PREPARED_DIR",
    "MANIFEST",
    "CACHE_DIR",
    "PRETRAINED_DIR",
    "PRETRAINED_INDEX",
    "MODEL_DIR",
    "CHECKPOINT_DIR",
    "META_METRICS",
    "META_PLOT",
    "SAFEGUARD",
    "ZOO_DIR",
    "EVAL_METRICS",
    "HEADLINE",
    "CURVES_DIR",
    "EVAL_PLOTS_DIR",
    "REPORT_DIR",
    "RUN_LOG_DIR",
]

PREPARED_DIR = Path("data/prepared")
MANIFEST = PREPARED_DIR / "manifest.json"
CACHE_DIR = Path("data") / "raw"
PRETRAINED_DIR = Path("models/pretrained")
PRETRAINED_INDEX = PRETRAINED_DIR / "index.json"
MODEL_DIR = Path("models/lopt")
CHECKPOINT_DIR = Path("checkpoints/meta_train")
META_METRICS = Path("metrics/meta_train.json")
META_PLOT = Path("plots/meta_train.json")
SAFEGUARD = Path("models/safeguard.json")
ZOO_DIR = Path("models/zoo")  # = components.optimizers.zoo.ZOO_SUBDIR
EVAL_METRICS = Path("metrics/evaluation.json")
HEADLINE = Path("metrics/headline.json")
CURVES_DIR = Path("metrics/curves")
EVAL_PLOTS_DIR = Path("plots/evaluation")
REPORT_DIR = Path("reports")
RUN_LOG_DIR = Path(".l2o/runs")
