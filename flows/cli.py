"""The `l2o` command: run the pipeline, run one stage (what dvc.yaml's cmds call), open the MLflow UI.

    l2o run   [--params params/default.yaml] [--set section.key=value ...] [--force] [--resume] [--verbose]
    l2o stage NAME [--params params.yaml] [--resume] [--verbose]
    l2o ui    [--host 127.0.0.1] [--port 5000]
    l2o optimizers   (every optimizer name usable in params files, with its hyperparameters)
    l2o tasks [--params params/default.yaml | --suite heldout]   (tasks, parameter counts, in/out of distribution)
    l2o compare RUN_A RUN_B [--filter REGEX ...] [--changed] [--rtol 1e-9] [--json]   (metric differences B-A)
    l2o up / down / status / worker POOL   (Prefect + MLflow servers on this machine, process workers)
    l2o submit --params FILE [--place meta_train=gpu]   (a run on the workers, followed to its end)
    l2o reproduce RUN_ID   (re-run an MLflow run's commit and params in a clean worktree, compare metrics)
    l2o zoo [list | train NAME --params FILE [--resume] | add NAME [--from PATH] [--force] | track]
                           (the zoo of pretrained learned optimizers, models/zoo: flows/zoo.py)

Exit codes: 0 success, 1 a stage failed (or a reproduction differs), 2 invalid params or usage,
3 a configured server does not answer, or another l2o run (or a dvc command) holds this repository.
"""

import os
import sys
from pathlib import Path

from flows import console, zoo_cli
from flows.cli_parser import parser as _parser

__all__ = ["main"]


def _environment(root: Path) -> None:
    """Embedded defaults for the local stack; anything already set in the environment wins."""
    defaults = {
        "PREFECT_HOME": str(root / ".prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "DVC_NO_ANALYTICS": "1",
        # Dask (evaluate.runner.kind: dask) logs every worker start and stop at INFO
        "DASK_LOGGING__DISTRIBUTED": "warning",
        # compiled XLA programs are reused across processes (dvc repro, re-runs): same results, less waiting
        "JAX_COMPILATION_CACHE_DIR": str(root / ".jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    for k, v in defaults.items():
        os.environ.setdefault(k, v)


def _load(path: str, overrides: list[str]):
    from flows.params_io import ParamsError, load_params  # noqa: PLC0415

    try:
        return load_params(path, overrides)
    except ParamsError as exc:
        print(f"l2o: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _cmd_run(args, root: Path) -> int:
    from flows.workspace import run_in_workspace, workspace_for  # noqa: PLC0415

    params = _load(args.params, args.overrides)
    ws = workspace_for(root, args.params, args.in_place)
    if ws is not None:  # not the committed experiment: its own workspace, the committed results untouched
        argv = ["run", "--params", args.params, *(a for o in args.overrides for a in ("--set", o))]
        flags = (("--force", args.force), ("--resume", args.resume), ("--no-run-cache", not args.run_cache))
        argv += [flag for flag, on in flags if on] + (["--verbose"] if args.verbose else [])
        return run_in_workspace(root, ws, args.params, argv)
    with _repository_lock(root):
        return _run_locked(args, root, params)


def _repository_lock(root: Path):
    from flows.preflight import repository_lock  # noqa: PLC0415

    return repository_lock(root, " ".join(sys.argv[1:]) or "run")


def _run_locked(args, root: Path, params) -> int:
    from components.stages.common import atomic_write_text  # noqa: PLC0415
    from flows.params_io import RESOLVED_PARAMS, dump_params  # noqa: PLC0415

    text = dump_params(params, args.params + "".join(f" --set {o}" for o in args.overrides))
    target = root / RESOLVED_PARAMS
    old = target.read_text() if target.exists() else None
    if old is None or _body(old) != _body(text):
        atomic_write_text(target, text)
    from flows.pipeline import run_pipeline  # noqa: PLC0415
    from flows.stage_exec import StageFailed  # noqa: PLC0415

    try:
        outcome = run_pipeline(root, params, params_file=args.params, force=args.force, run_cache=args.run_cache)
    except StageFailed as exc:
        console.report_failure(exc)
        return 1
    print(
        f"l2o: done in {outcome.seconds:.1f}s; ran: {', '.join(outcome.ran) or 'nothing'};"
        + (f" restored from run-cache: {', '.join(outcome.restored)};" if outcome.restored else "")
        + f" up to date: {', '.join(outcome.skipped) or 'none'}"
        + (f"; MLflow run {outcome.mlflow_run_id}" if outcome.mlflow_run_id else "")
        + ("; report: reports/index.html" if (root / "reports" / "index.html").exists() else "")
    )
    return 0


def _body(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def _cmd_stage(args, root: Path) -> int:
    from flows import dvc_glue  # noqa: PLC0415

    params = _load(args.params, [])
    repo = dvc_glue.open_repo(root)
    order = dvc_glue.stage_order(repo)
    if args.name not in order:
        print(f"l2o: error: unknown stage {args.name!r}; dvc.yaml declares: {', '.join(order)}", file=sys.stderr)
        return 2
    with _repository_lock(root):
        return _stage_locked(args, root, params, repo)


def _stage_locked(args, root: Path, params, repo) -> int:
    from flows import dvc_glue  # noqa: PLC0415
    from flows.runners import FANOUT_STAGES, prefect_map, run_as_flow, task_runner  # noqa: PLC0415
    from flows.stage_exec import StageFailed, execute_stage, stage_param_keys  # noqa: PLC0415
    from flows.tracking import Tracker  # noqa: PLC0415

    tracker = Tracker(root, params.experiment_name)
    from flows.pipeline import RUN_CACHE_TAG  # noqa: PLC0415

    key = dvc_glue.run_cache_key(repo, args.name)

    def run_stage(map_fn=None) -> None:
        execute_stage(
            args.name,
            params,
            root,
            tracker=tracker,
            param_keys=stage_param_keys(repo, args.name),
            parent_run_id=os.environ.get("L2O_MLFLOW_PARENT_RUN_ID"),
            params_file=args.params,
            extra_tags={RUN_CACHE_TAG: key} if key else None,
            **({"map_fn": map_fn} if map_fn else {}),
        )

    try:
        if args.name in FANOUT_STAGES:  # its work items are Prefect tasks on evaluate.runner's task runner
            run_as_flow(f"stage-{args.name}", lambda: run_stage(prefect_map), task_runner(params))
        else:
            run_stage()
    except StageFailed as exc:
        console.report_failure(exc)
        return 1
    return 0


def _cmd_ui(args, root: Path) -> int:
    from flows.tracking import configure  # noqa: PLC0415

    uri = configure(root)
    if uri.startswith(("http://", "https://")):  # a tracking server (l2o up, MLFLOW_TRACKING_URI) serves its own UI
        print(f"l2o: the MLflow tracking server {uri} serves the UI: open {uri} (unset MLFLOW_TRACKING_URI or")
        print("     `l2o down` to serve the project's local store instead)")
        return 0
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        "1",
    ]
    base = f"http://{args.host}:{args.port}"
    print(f"l2o: MLflow UI on {base} (store {uri}); Ctrl-C to stop", flush=True)
    for line in _experiment_links(uri, base):
        print(line, flush=True)
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached


def _experiment_links(uri: str, base: str) -> list[str]:
    """One line per l2o experiment of the store: the URL of its runs table (classic view, headline columns)."""
    from mlflow.tracking import MlflowClient  # noqa: PLC0415

    from flows.tracking import VIEW_TAG, experiment_url  # noqa: PLC0415

    exps = [e for e in MlflowClient(uri, uri).search_experiments() if VIEW_TAG in e.tags]
    lines = [f"     {e.name}: {experiment_url(base, e.experiment_id)}" for e in exps]
    if lines:
        models = f"{base}/#/models?workflowType=machine_learning"
        lines.append(f"     registered optimizers (aliases such as @champion): {models}")
    return lines


def _cmd_optimizers(args, root: Path) -> int:
    del args, root
    from components.optimizers import registry  # noqa: PLC0415

    for kind, names in registry.available().items():
        print(f"{kind}:")
        for name in names:
            print(f"  {name:<16} {', '.join(registry.spec_hyperparameters(name))}")
    return 0


def _cmd_tasks(args, root: Path) -> int:
    del root
    from components.tasks import celo_distribution  # noqa: PLC0415
    from components.tasks.suite import SUITES, describe, describe_tasks  # noqa: PLC0415

    if args.suite is not None:
        if args.suite not in SUITES:
            print(f"l2o: error: unknown suite {args.suite!r}; choose one of {sorted(SUITES)}", file=sys.stderr)
            return 2
        dist = celo_distribution()
        rows = describe(args.suite, dist)
        title = f"suite {args.suite}: {len(rows)} tasks, relation to the Celo preset's meta-training (no params file)"
    else:
        from components.stages.distribution import evaluated_spec, meta_train_distribution  # noqa: PLC0415

        path = args.params or "params/default.yaml"
        params = _load(path, [])
        ev = params.evaluate
        dist = meta_train_distribution(params)
        # each task at the horizon and batch size the evaluate stage will use (params override the tasks' own)
        rows = describe_tasks([evaluated_spec(params, n) for n in ev.tasks], dist)
        fam = params.meta_train.task_family
        print(f"meta_train: {params.meta_train.lopt}" + (f" (preset {fam.preset})" if fam.preset else ""))
        title = f"evaluation tasks of {path}" + (f" (suite {ev.suite})" if ev.suite else "") + f": {len(rows)} tasks"
    inside = sum(r["in_distribution"] for r in rows)
    print(f"meta-training distribution ({dist.name}): {dist.summary()}")
    print(f"{title}; {inside} in distribution")
    header = f"  {'task':<40} {'kind':<18} {'dataset':<42} {'params':>10} {'steps':>6} {'batch':>5}  relation"
    print(header)
    for r in rows:
        data = r["dataset"] + (f" <- {r['pretrain_dataset']}" if r.get("pretrain_dataset") else "")
        relation = "in-distribution" if r["in_distribution"] else "OOD: " + ", ".join(r["ood"])
        if r.get("declared_ood"):  # components.tasks.ood: declared out of the zoo's distribution
            relation += "  [declared OOD: " + ", ".join(r["declared_ood"]["axes"]) + "]"
        print(
            f"  {r['name']:<40} {r['kind']:<18} {data:<42} {r['num_params']:>10,}"
            f" {r['num_steps']:>6} {r['batch_size']:>5}  {relation}"
        )
    return 0


def _cmd_compare(args, root: Path) -> int:
    import re  # noqa: PLC0415

    from flows.compare import CompareError, compare_runs, describe_store, format_table  # noqa: PLC0415
    from flows.tables import to_json  # noqa: PLC0415
    from flows.tracking import tracking_uri  # noqa: PLC0415

    if not args.rtol >= 0:
        print(f"l2o: error: --rtol must be >= 0, not {args.rtol}", file=sys.stderr)
        return 2
    uri = tracking_uri(root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        print(
            f"l2o: error: no MLflow tracking store at {uri}: nothing tracked yet (`l2o run` creates it),"
            " or set MLFLOW_TRACKING_URI to the store holding the runs",
            file=sys.stderr,
        )
        return 2
    from mlflow.exceptions import MlflowException  # noqa: PLC0415
    from mlflow.tracking import MlflowClient  # noqa: PLC0415

    client = MlflowClient(uri, uri)
    try:
        changed_only = args.changed or not (args.all or args.json)  # JSON: every metric unless --changed
        comparison = compare_runs(
            client, args.run_a, args.run_b, patterns=args.filters, changed_only=changed_only, rtol=args.rtol
        )
    except re.error as exc:
        print(f"l2o: error: --filter {exc.pattern!r} is not a regular expression: {exc}", file=sys.stderr)
        return 2
    except CompareError as exc:
        experiments = describe_store(client)
        print(
            f"l2o: error: {exc} in the MLflow tracking store {uri}"
            + (f" (experiments: {experiments})" if experiments else "")
            + "; list the runs with `l2o ui`, or `mlflow runs list --experiment-id ID`"
            f" with MLFLOW_TRACKING_URI={uri}",
            file=sys.stderr,
        )
        return 2
    except MlflowException as exc:
        print(f"l2o: error: cannot read the runs from the MLflow tracking store {uri}: {exc.message}", file=sys.stderr)
        return 2
    comparison = {"tracking_uri": uri, **comparison}
    limit = None if (args.all or args.changed or args.limit <= 0) else args.limit  # the concise default
    print(to_json(comparison) if args.json else format_table(comparison, limit=limit))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from flows.dvc_glue import find_root  # noqa: PLC0415

    try:
        root = find_root()
    except FileNotFoundError as exc:
        print(f"l2o: error: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "params", None):
        # params paths are relative to where the user stands; the stages run from the root
        resolved = Path(args.params).resolve()
        args.params = os.path.relpath(resolved, root) if resolved.is_relative_to(root) else str(resolved)
    if getattr(args, "source", None):  # l2o zoo add --from: relative to where the user stands
        args.source = str(Path(args.source).resolve())
    os.chdir(root)
    _environment(root)
    if getattr(args, "resume", False):
        os.environ["L2O_RESUME"] = "1"  # flows.stage_exec.RESUME_ENV (read when it builds the stage context)
    import logging  # noqa: PLC0415

    logging.getLogger("dvc").setLevel(logging.WARNING)
    from flows import preflight  # noqa: PLC0415
    from flows.team import lifecycle, reproduce, state, submit, workers  # noqa: PLC0415

    if args.command not in ("up", "down", "status", "worker"):
        state.apply_recorded_services(root)  # the servers `l2o up` started here, unless env says otherwise
    handler = {
        "run": _cmd_run,
        "stage": _cmd_stage,
        "ui": _cmd_ui,
        "optimizers": _cmd_optimizers,
        "tasks": _cmd_tasks,
        "compare": _cmd_compare,
        "zoo": zoo_cli.cmd_zoo,
        "up": lifecycle.cmd_up,
        "down": lifecycle.cmd_down,
        "status": lifecycle.cmd_status,
        "worker": workers.cmd_worker,
        "submit": submit.cmd_submit,
        "reproduce": reproduce.cmd_reproduce,
    }[args.command]
    if args.command not in ("run", "stage"):
        return handler(args, root)
    console.configure(args.verbose)
    # a run writes outputs, dvc.lock and checkpoints: servers checked first, then one run at a time per
    # repository (the lock is taken once the params are valid: bad params leave no trace)
    from flows.dvc_glue import DvcBusy  # noqa: PLC0415
    from flows.tracking import StoreUnsafe  # noqa: PLC0415

    try:
        preflight.check_services(root)
        return handler(args, root)
    except (preflight.ServiceUnavailable, preflight.RepositoryBusy, DvcBusy, StoreUnsafe) as exc:
        print(f"l2o: error: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
