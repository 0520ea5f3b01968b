"""The `l2o` command line: every command, its options and help text (:func:`parser`); `flows.cli` runs them."""

import argparse

from flows import zoo_cli

__all__ = ["parser"]

VERBOSE_HELP = "show the libraries' INFO lines (Prefect, MLflow) and a failure's full traceback"
RESUME_HELP = "meta_train continues from its last checkpoint (meta_train.checkpoint_every) instead of starting over"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l2o", description="Learned-optimizer experiment pipeline.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "run",
        help="run the pipeline (only the stages DVC reports out of date)",
        description="Run the pipeline's stages (dvc.yaml) as one Prefect flow: those DVC reports out of date, in"
        " order, each tracked as an MLflow run under one pipeline run, then recorded in dvc.lock. Writes the"
        " resolved params to params.yaml first. Another params file than params/default.yaml runs in its own"
        " workspace .l2o/experiments/<name>/ when this repository's dvc.lock is committed (--in-place: here)."
        " Exit 0 done, 1 a stage failed, 2 invalid params, 3 a server does"
        " not answer or another l2o/dvc command holds the repository.",
    )
    r.add_argument("--params", default="params/default.yaml", help="params YAML (default: %(default)s)")
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one param, e.g. --set evaluate.num_seeds=5 (repeatable)",
    )
    r.add_argument("--force", action="store_true", help="run every stage even if up to date")
    r.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    r.add_argument(
        "--resume",
        action="store_true",
        help=RESUME_HELP,
    )
    r.add_argument(
        "--no-run-cache",
        dest="run_cache",
        action="store_false",
        help="run out-of-date stages even when DVC's run-cache holds outputs of the same inputs",
    )
    r.add_argument(
        "--in-place",
        action="store_true",
        help="run a params file other than params/default.yaml in this repository, overwriting its committed"
        " results (default: in its own workspace .l2o/experiments/<name>/ when dvc.lock is committed)",
    )
    s = sub.add_parser(
        "stage",
        help="run one stage of dvc.yaml (what `dvc repro` calls)",
        description="Run one stage of dvc.yaml in this process, tracked as an MLflow run (nested under"
        " $L2O_MLFLOW_PARENT_RUN_ID when set). It does not update dvc.lock: `dvc repro` calls it and records the"
        " result itself.",
    )
    s.add_argument("name", help="a stage name of dvc.yaml: prepare_data, pretrain, meta_train, calibrate, ...")
    s.add_argument("--params", default="params.yaml", help="resolved params (default: %(default)s)")
    s.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    s.add_argument(
        "--resume",
        action="store_true",
        help=RESUME_HELP,
    )
    u = sub.add_parser(
        "ui",
        help="start the MLflow UI on the project's tracking store",
        description="Serve the MLflow UI on the project's store (MLFLOW_TRACKING_URI, else .mlflow/mlflow.db) at"
        " http://HOST:PORT until Ctrl-C.",
    )
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=5000)
    sub.add_parser(
        "optimizers",
        help="list every optimizer name usable in params files, with its hyperparameters",
        description="List every optimizer name usable in params files (baselines, learned optimizers, hybrids and"
        " safeguards), each with its hyperparameters and their defaults.",
    )
    t = sub.add_parser(
        "tasks",
        help="list the tasks of a params file (or of a named suite) with parameter counts and their relation to"
        " the meta-training distribution (a suite: Celo's preset)",
    )
    group = t.add_mutually_exclusive_group()
    group.add_argument("--params", default=None, help="params YAML (default: params/default.yaml)")
    group.add_argument("--suite", default=None, help="a task suite of components.tasks.SUITES instead")
    c = sub.add_parser(
        "compare",
        help="print the metric differences (B-A) between two MLflow runs, with the params that differ",
        description=(
            "Compare the metrics of two MLflow runs of the tracking store (MLFLOW_TRACKING_URI, else"
            " .mlflow/mlflow.db of the project). A pipeline run is compared with its stage runs (their metrics keyed"
            " <stage>/<metric>); a stage run by itself. Prints the two runs, the params that differ, and one row per"
            " changed metric (by default the --limit largest relative changes; --changed: all of them, in key"
            " order; --all: every metric): A, B, B-A and the change in % of |A| (\u2014: a metric only one run"
            " has). Exit 0 whatever"
            " the differences, 2 for an unknown run id."
        ),
    )
    c.add_argument("run_a", metavar="RUN_A", help="MLflow run id (or a unique prefix of at least 8 characters)")
    c.add_argument("run_b", metavar="RUN_B", help="the run compared with RUN_A: differences are B - A")
    c.add_argument(
        "--filter",
        dest="filters",
        action="append",
        default=[],
        metavar="REGEX",
        help="only metric keys matching REGEX (re.search, e.g. 'evaluate/' or 'loss$'); repeatable: a key matching"
        " any is shown",
    )
    shown = c.add_mutually_exclusive_group()
    shown.add_argument(
        "--changed",
        action="store_true",
        help="only metrics whose values differ beyond --rtol (and those only one run has), every one of them"
        " (default: the same, at most --limit rows, the largest relative changes first)",
    )
    shown.add_argument("--all", action="store_true", help="every metric, equal ones included, in key order")
    c.add_argument(
        "--limit",
        type=int,
        default=20,
        metavar="N",
        help="by default, show at most N changed metrics (default: %(default)s; 0: no limit)",
    )
    c.add_argument(
        "--rtol",
        type=float,
        default=1e-9,
        help="relative tolerance: A and B are equal when |B-A| <= rtol * max(|A|, |B|) (default: %(default)g)",
    )
    c.add_argument(
        "--json",
        action="store_true",
        help='print the comparison as JSON instead (non-finite numbers as "NaN", "Infinity", "-Infinity")',
    )
    zoo_cli.add_arguments(sub)
    from flows.team import lifecycle, reproduce, submit, workers  # noqa: PLC0415

    lifecycle.add_arguments(sub)
    workers.add_arguments(sub)
    submit.add_arguments(sub)
    reproduce.add_arguments(sub)
    return p
