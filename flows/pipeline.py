"""`l2o run`: the stages of ``dvc.yaml`` as one Prefect parent flow with an MLflow parent run.

Every stage that DVC reports out of date runs as a Prefect subflow (evaluation fans out as Prefect
tasks) in this one process — so the Prefect API and JAX start once — and is then recorded with
``dvc commit``, which keeps ``dvc status`` clean and ``dvc repro`` in agreement. If DVC reports
nothing out of date, no flow is started at all and the command returns in seconds.

An out-of-date stage whose exact inputs (command, dependencies, params) were run before — here, or
on any machine sharing the DVC remote — is restored from DVC's run-cache instead of run, as
``dvc repro`` does. It still gets an MLflow run under the pipeline run, tagged ``l2o.restored`` and
linked to the run that produced the outputs (``l2o.restored_from_run_id``, found by the
``l2o.run_cache_key`` tag every stage run carries), with that run's metrics. Inside a team run
(``l2o submit``), stages placed on another work pool run there (:func:`flows.team.delegate_stage`).
"""

import dataclasses
import time
from pathlib import Path
from typing import Any

from components.stages.common import git_commit
from components.stages.params import PipelineParams, params_hash
from flows import dvc_glue, timings
from flows.runners import FANOUT_STAGES, prefect_map, run_as_flow, task_runner
from flows.stage_exec import StageFailed, component_versions, execute_stage, stage_param_keys
from flows.tracking import Tracker, flatten

__all__ = ["PipelineOutcome", "run_pipeline", "link_restored", "RUN_CACHE_TAG"]

RUN_CACHE_TAG = "l2o.run_cache_key"


@dataclasses.dataclass
class PipelineOutcome:
    ran: list[str]
    skipped: list[str]
    restored: list[str]
    mlflow_run_id: str | None
    prefect_flow_run_id: str | None
    seconds: float
    stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # the stages that ran or were restored


def run_pipeline(
    root: Path,
    params: PipelineParams,
    *,
    params_file: str,
    force: bool = False,
    run_cache: bool = True,
    log=print,
) -> PipelineOutcome:
    """Run the out-of-date stages (all with ``force``) of the project at ``root`` (the cwd).

    ``run_cache``: restore a stage from DVC's run-cache when its inputs were run before (never with
    ``force``).
    """
    t0 = time.perf_counter()
    repo = dvc_glue.open_repo(root)
    from flows.zoo import materialize  # noqa: PLC0415

    materialize(root, log=log)  # a fresh clone has the zoo's .dvc files, not its weights: check them out first
    # DVC's own lock for the whole run: a `dvc repro` beside it stops at once instead of deleting outputs
    with dvc_glue.RepoLock(repo) as held:
        return _run_holding_the_lock(repo, held, root, params, params_file, force, run_cache, log, t0)


def _run_holding_the_lock(repo, held, root, params, params_file, force, run_cache, log, t0) -> PipelineOutcome:
    order = dvc_glue.stage_order(repo)
    versions = component_versions(order)  # fails early if dvc.yaml names an unknown stage
    todo = order if force else dvc_glue.changed_stages(repo, order)
    if not todo:
        log(f"l2o: all {len(order)} stages up to date ({', '.join(order)}): nothing to run")
        return PipelineOutcome([], order, [], None, None, time.perf_counter() - t0)
    log(f"l2o: out of date: {', '.join(todo)}")

    from prefect import flow  # noqa: PLC0415
    from prefect.runtime import flow_run  # noqa: PLC0415

    from flows import team  # noqa: PLC0415

    outcome = PipelineOutcome([], [], [], None, None, 0.0)
    placed = team.placement()
    remote = dvc_glue.default_remote(repo) is not None

    @flow(name="l2o-pipeline", log_prints=False, persist_result=False)
    def l2o_pipeline(params_file: str, force: bool = False) -> list[str]:
        tracker = Tracker(root, params.experiment_name)
        fr_id = str(flow_run.id)
        parent = _start_parent_run(tracker, root, params, params_file, fr_id, versions)
        outcome.mlflow_run_id, outcome.prefect_flow_run_id = parent, fr_id
        run = _PipelineRun(repo, held, root, params, params_file, tracker, parent, fr_id, placed, remote, log, outcome)
        try:
            for name in order:
                started = time.perf_counter()
                run.stage(name, force=force, run_cache=run_cache)
                if name not in outcome.skipped:
                    outcome.stage_seconds[name] = time.perf_counter() - started
        except (StageFailed, team.TeamError) as exc:
            tracker.finish(parent, "FAILED")
            raise StageFailed(f"{exc} [pipeline MLflow run {parent}, Prefect flow run {fr_id}]") from exc
        except BaseException:
            tracker.finish(parent, "FAILED")
            raise
        _finish_parent_run(tracker, parent, root, outcome, params_hash(params), log)
        return outcome.ran

    l2o_pipeline(params_file, force)
    outcome.seconds = time.perf_counter() - t0
    return outcome


def _start_parent_run(tracker: Tracker, root: Path, params, params_file: str, fr_id: str, versions: dict) -> str:
    """The pipeline's MLflow run, with the params, the params files and every stage's version."""
    tags = {
        "git_commit": git_commit(root),
        "l2o.params_hash": params_hash(params),
        "l2o.params_file": params_file,
        "prefect.flow_run_id": fr_id,
        **{f"l2o.version.{k}": v for k, v in versions.items()},
    }
    parent = tracker.start("pipeline", tags=tags)
    tracker.log_params(parent, flatten(params.model_dump(mode="json")))
    tracker.log_artifact(parent, root / params_file, "params")
    tracker.log_artifact(parent, root / "params.yaml", "params")
    return parent


def _finish_parent_run(tracker: Tracker, parent: str, root: Path, outcome: PipelineOutcome, phash: str, log) -> None:
    tracker.set_tags(
        parent,
        {
            "l2o.stages_ran": ",".join(outcome.ran),
            "l2o.stages_restored": ",".join(outcome.restored),
            "l2o.stages_skipped": ",".join(outcome.skipped),
        },
    )
    from flows.model_links import headline_metrics, link_evaluation, promote_champion  # noqa: PLC0415

    # the results the project holds now (ran, restored or up to date): the runs table compares pipeline runs
    headline, links = headline_metrics(root), link_evaluation(tracker, root)
    tracker.log_metrics(parent, headline)
    tracker.set_tags(parent, links)
    # also when evaluate was up to date (a fresh clone's `make run` re-trains and keeps the committed evaluation)
    promote_champion(tracker, links, headline.get("speedup_iqm"), phash, log=log)
    timings.record(tracker, parent, outcome.stage_seconds, outcome.skipped, log=log)
    tracker.log_artifact(parent, root / "dvc.lock", "dvc")
    report = root / "reports"
    if report.is_dir():
        tracker.log_artifact(parent, report, "report")
    tracker.finish(parent)


@dataclasses.dataclass
class _PipelineRun:
    """What the stages of one ``l2o run`` share: the DVC repo, the params, the MLflow parent run, the outcome."""

    repo: Any
    held: dvc_glue.RepoLock  # DVC's lock of the repository, held for the whole run
    root: Path
    params: PipelineParams
    params_file: str
    tracker: Tracker
    parent: str
    fr_id: str
    placed: dict
    remote: bool
    log: Any
    outcome: PipelineOutcome

    def stage(self, name: str, *, force: bool, run_cache: bool) -> None:
        """Skip stage ``name`` if up to date, else hand it to its work pool, restore it from the run-cache or run it."""
        from flows import team  # noqa: PLC0415

        repo, log, outcome = self.repo, self.log, self.outcome
        if not force and not dvc_glue.is_changed(repo, name):
            log(f"l2o: {name}: up to date, skipped")
            outcome.skipped.append(name)
            return
        if name in self.placed:
            log(f"l2o: {name}: handing it to work pool {self.placed[name]}")
            text = (self.root / "params.yaml").read_text()
            with self.held.released():  # the hand-over pushes and pulls with DVC commands of its own
                team.delegate_stage(repo, self.root, name, self.placed[name], text, self.parent, log)
            outcome.ran.append(name)
            return
        key = dvc_glue.run_cache_key(repo, name)
        if run_cache and not force and key and dvc_glue.restore_stage(repo, name, pull=self.remote):
            source = link_restored(self.tracker, self.parent, name, key, self.params, self.fr_id)
            log(f"l2o: {name}: restored from DVC's run-cache" + (f" (MLflow run {source})" if source else ""))
            outcome.restored.append(name)
            return
        log(f"l2o: {name}: running")
        runner = task_runner(self.params) if name in FANOUT_STAGES else None
        run_as_flow(f"stage-{name}", lambda: self._execute(name, key), runner)
        dvc_glue.commit_stage(repo, name)
        outcome.ran.append(name)

    def _execute(self, name: str, key: str | None) -> None:
        execute_stage(
            name,
            self.params,
            self.root,
            materialize_zoo=False,  # run_pipeline did, before it took DVC's lock
            tracker=self.tracker,
            param_keys=stage_param_keys(self.repo, name),
            parent_run_id=self.parent,
            params_file=self.params_file,
            map_fn=prefect_map,
            extra_tags={"prefect.flow_run_id": self.fr_id, **({RUN_CACHE_TAG: key} if key else {})},
        )


def link_restored(tracker: Tracker, parent: str, name: str, key: str, params: PipelineParams, fr_id: str) -> str | None:
    """An MLflow run for a stage restored from the run-cache, linked to the run that produced it.

    The producing run is the newest finished stage run tagged with the same run-cache key (any
    experiment of the store); its metrics are copied so the pipeline run shows the stage's numbers.
    Returns its id (None when the outputs came from a run this store never saw, e.g. ``dvc repro``
    elsewhere: the restored run then says so in ``l2o.restored_from_run_id``).
    """
    client = tracker.client
    found = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        f"tags.`{RUN_CACHE_TAG}` = '{key}' and tags.`l2o.stage` = '{name}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=5,
    )
    source = next((r for r in found if r.data.tags.get("l2o.restored") != "true"), None)
    tags = {
        "l2o.stage": name,
        "l2o.restored": "true",
        "l2o.restored_from_run_id": source.info.run_id if source else "unknown (not in this tracking store)",
        RUN_CACHE_TAG: key,
        "l2o.params_hash": params_hash(params),
        "prefect.flow_run_id": fr_id,
    }
    if source is not None:
        for k in ("l2o.component_version", "git_commit", "l2o.model_uri", "lopt", "registered_name"):
            if k in source.data.tags:
                tags[f"l2o.restored_from.{k}" if k == "git_commit" else k] = source.data.tags[k]
    run_id = tracker.start(f"{name} (restored)", parent=parent, tags=tags)
    if source is not None:
        tracker.log_metrics(run_id, dict(source.data.metrics))
    tracker.finish(run_id)
    return source.info.run_id if source else None
