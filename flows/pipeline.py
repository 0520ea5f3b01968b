"""`l2o run`: the stages of ``dvc.yaml`` as one Prefect parent flow with an MLflow parent run.

Every stage that DVC reports out of date runs as a Prefect subflow (evaluation fans out as Prefect
tasks) in this one process — so the Prefect API and JAX start once — and is then recorded with
``dvc commit``, which keeps ``dvc status`` clean and ``dvc repro`` in agreement. If DVC reports
nothing out of date, no flow is started at all and the command returns in seconds.
"""

import dataclasses
import time
from pathlib import Path

from components.stages.common import git_commit
from components.stages.params import PipelineParams, params_hash
from flows import dvc_glue
from flows.runners import FANOUT_STAGES, prefect_map, run_as_flow, task_runner
from flows.stage_exec import StageFailed, component_versions, execute_stage, stage_param_keys
from flows.tracking import Tracker, flatten

__all__ = ["PipelineOutcome", "run_pipeline"]


@dataclasses.dataclass
class PipelineOutcome:
    ran: list[str]
    skipped: list[str]
    mlflow_run_id: str | None
    prefect_flow_run_id: str | None
    seconds: float


def run_pipeline(
    root: Path, params: PipelineParams, *, params_file: str, force: bool = False, log=print
) -> PipelineOutcome:
    """Run the out-of-date stages (all with ``force``) of the project at ``root`` (the cwd)."""
    t0 = time.perf_counter()
    repo = dvc_glue.open_repo(root)
    order = dvc_glue.stage_order(repo)
    versions = component_versions(order)  # fails early if dvc.yaml names an unknown stage
    todo = order if force else dvc_glue.changed_stages(repo, order)
    if not todo:
        log(f"l2o: all {len(order)} stages up to date ({', '.join(order)}): nothing to run")
        return PipelineOutcome([], order, None, None, time.perf_counter() - t0)
    log(f"l2o: out of date: {', '.join(todo)}")

    from prefect import flow  # noqa: PLC0415
    from prefect.runtime import flow_run  # noqa: PLC0415

    outcome = PipelineOutcome([], [], None, None, 0.0)

    @flow(name="l2o-pipeline", log_prints=False, persist_result=False)
    def l2o_pipeline(params_file: str, force: bool = False) -> list[str]:
        tracker = Tracker(root, params.experiment_name)
        fr_id = str(flow_run.id)
        tags = {
            "git_commit": git_commit(root),
            "l2o.params_hash": params_hash(params),
            "l2o.params_file": params_file,
            "prefect.flow_run_id": fr_id,
            **{f"l2o.version.{k}": v for k, v in versions.items()},
        }
        parent = tracker.start("pipeline", tags=tags)
        outcome.mlflow_run_id, outcome.prefect_flow_run_id = parent, fr_id
        tracker.log_params(parent, flatten(params.model_dump(mode="json")))
        tracker.log_artifact(parent, root / params_file, "params")
        tracker.log_artifact(parent, root / "params.yaml", "params")

        def run_stage(name: str) -> None:
            execute_stage(
                name,
                params,
                root,
                tracker=tracker,
                param_keys=stage_param_keys(repo, name),
                parent_run_id=parent,
                params_file=params_file,
                map_fn=prefect_map,
                extra_tags={"prefect.flow_run_id": fr_id},
            )

        try:
            for name in order:
                if not force and not dvc_glue.is_changed(repo, name):
                    log(f"l2o: {name}: up to date, skipped")
                    outcome.skipped.append(name)
                    continue
                log(f"l2o: {name}: running")
                runner = task_runner(params) if name in FANOUT_STAGES else None
                run_as_flow(f"stage-{name}", lambda name=name: run_stage(name), runner)
                dvc_glue.commit_stage(repo, name)
                outcome.ran.append(name)
        except StageFailed as exc:
            tracker.finish(parent, "FAILED")
            raise StageFailed(f"{exc} [pipeline MLflow run {parent}, Prefect flow run {fr_id}]") from exc.__cause__
        except BaseException:
            tracker.finish(parent, "FAILED")
            raise
        tracker.set_tags(
            parent, {"l2o.stages_ran": ",".join(outcome.ran), "l2o.stages_skipped": ",".join(outcome.skipped)}
        )
        tracker.log_artifact(parent, root / "dvc.lock", "dvc")
        report = root / "reports"
        if report.is_dir():
            tracker.log_artifact(parent, report, "report")
        tracker.finish(parent)
        return outcome.ran

    l2o_pipeline(params_file, force)
    outcome.seconds = time.perf_counter() - t0
    return outcome
