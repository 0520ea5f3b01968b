"""What ``l2o run`` / ``l2o stage`` print: each problem once, library chatter only with ``--verbose``.

A failing stage raises once inside the stage's Prefect flow and once more in the pipeline's; Prefect's engine
logs every failed flow run at ERROR with its traceback, MLflow logs its store migrations at INFO. By default
the console gets the command's own lines and, for a failure, one ``l2o: error:`` line that names the stage,
the cause and the fix (:func:`report_failure`); ``--verbose`` restores the libraries' INFO lines and adds the
full traceback.
"""

import logging
import os
import sys
import traceback

__all__ = ["configure", "report_failure"]

VERBOSE_ENV = "L2O_VERBOSE"  # stages run by `dvc repro` inherit --verbose through it


class _NoTracebacks(logging.Filter):
    """Drops the records that carry an exception (the command reports the failure itself, once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None and "Encountered exception during execution" not in record.getMessage()


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def configure(verbose_flag: bool) -> None:
    """Set the console up for a run (``verbose_flag``: the command's ``--verbose``)."""
    if verbose_flag:
        os.environ[VERBOSE_ENV] = "1"
    if verbose():
        os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"
        return
    # nothing imported here (Prefect creates its home folder on import; a no-op run never imports it): MLflow
    # reads its level from the environment when imported, and logger filters survive Prefect's dictConfig
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # "Failed to resolve installed pip version" on every registered model: the venv is uv's, without pip
    logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)
    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.engine"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTracebacks) for f in logger.filters):
            logger.addFilter(_NoTracebacks())


def report_failure(exc: BaseException) -> None:
    """One ``l2o: error:`` line (the message names the stage, the cause and the fix); the traceback only with
    ``--verbose``."""
    if verbose():
        traceback.print_exception(exc, file=sys.stderr)
    else:
        print("l2o: (the full traceback: re-run with --verbose)", file=sys.stderr)
    print(f"l2o: error: {exc}", file=sys.stderr)
