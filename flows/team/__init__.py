"""The team platform: servers, workers, submitted runs and reproductions, beside the local pipeline.

    common        names, messages and tool runners every module below shares (stdlib only)
    state         the record of what `l2o up` started (.l2o/services.json) and what other commands take from it
    processes     detached processes: start, check, stop (pid + creation time)
    network       hosts, ports, health checks, the Prefect REST calls made without Prefect
    servers       the Prefect and MLflow servers, work pools, the shared DVC remote
    workers       `l2o worker`, and the local workers of `l2o up --workers`
    lifecycle     `l2o up` / `l2o down` / `l2o status`
    submit        `l2o submit`: the pipeline on the workers, followed to its end
    workspace     the pull steps of prefect.yaml: checkout, install, dvc pull
    deployments   the flows prefect.yaml deploys (imports Prefect)
    delegation    stage placement inside a team run: what `l2o run` hands to another pool
    reproduce     `l2o reproduce`, with reproduce_worktree (the re-run), reproduce_checks (the comparison,
                  pure) and reproduce_report (the text)

The local pipeline (:mod:`flows.pipeline`) uses :func:`placement`, :func:`delegate_stage` and :class:`TeamError`,
exported here. Importing this package loads neither Prefect, MLflow, DVC nor JAX.
"""

from flows.team.common import TeamError
from flows.team.delegation import delegate_stage, placement

__all__ = ["TeamError", "placement", "delegate_stage"]
