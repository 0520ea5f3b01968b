"""The zoo of pretrained learned optimizers: make entries, list them, track them with DVC, register them in MLflow.

An entry is ``models/zoo/<name>/``: an ordinary checkpoint (``weights.safetensors`` + ``config.json``, written
atomically by ``components.optimizers.save``) whose ``config.json`` carries the lineage under ``"zoo"``: the
params, the git commit(s) that trained it (``+dirty`` when the tree was modified), the data hashes (the
``prepare_data`` manifest's sha256, as the ``meta_train`` stage records them), the meta-training curves, the
outer steps done of those planned, the wall time in seconds, the device and the date. ``load("zoo:<name>")``
reads it in any optax loop (:mod:`components.optimizers.zoo`).

Making one takes two commands, so that a meta-training of hours or days can be shipped part-way:

* ``l2o zoo train NAME --params FILE [--resume]`` (:func:`train`) runs the ``prepare_data`` stage (when its data
  params changed), the ``pretrain`` stage (only for a fine-tuning ``meta_train.task_family.task``) and the
  ``meta_train`` stage, with their own code, in the workspace ``.l2o/zoo/NAME/`` (git-ignored): the committed
  results of the default experiment are never touched. ``meta_train.checkpoint_every`` is required; ``--resume``
  continues from the last checkpoint. Each session's wall time (every second spent, including work lost to an
  interruption after the last checkpoint), git commit and device are recorded in ``zoo_train.json``.
* ``l2o zoo add NAME [--from PATH]`` (:func:`add`) packages the current state: from the workspace (default) or one
  of its checkpoints (``checkpoints/meta_train/<phase>.npz``) -- the meta-parameters of the latest checkpoint,
  ``outer_steps_done`` < ``outer_steps_planned`` while it runs -- or from any finished ``meta_train`` output
  directory (e.g. ``models/lopt``). Then ``models/zoo/index.json`` is rewritten, the entry is ``dvc add``-ed
  (``models/zoo/<name>.dvc``) and pushed to the default DVC remote when there is one.

*Inferred*: the issue asks for a DVC-tracked zoo. One ``.dvc`` file per entry (not a ``dvc.yaml`` output: the zoo is
an input of the pipeline, no stage produces it) keeps ``dvc status`` clean and lets entries be added one at a
time. ``models/zoo/index.json`` (the listing's rows: lineage summary and weights sha256) and the ``.dvc`` files are
in git, so ``models/zoo`` exists in every clone -- the ``evaluate`` stage depends on the whole folder even when the
zoo has no entries, and a ``git diff`` shows what an ``l2o zoo add`` changed.
"""

from pathlib import Path

import jax
import numpy as np

from components.optimizers import create_learned, save
from components.optimizers import zoo as zoo_lib
from components.optimizers.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load
from components.stages import meta_train as meta_train_stage
from components.stages.common import atomic_write_json, atomic_write_text, git_commit, read_run_log, sha256_file
from components.stages.params import PipelineParams, params_hash
from components.stages.paths import CHECKPOINT_DIR, MANIFEST, META_METRICS, MODEL_DIR
from flows.zoo_train import RECORD, WORKSPACES, ZooError, device_string, now, read_json, train, workspace

__all__ = [
    "WORKSPACES",
    "RECORD",
    "ZooError",
    "workspace",
    "device_string",
    "train",
    "add",
    "list_entries",
    "format_listing",
    "write_index",
    "track",
    "materialize",
    "ZOO_REMOTE",
    "register",
]

INDEX = "index.json"
ZOO_REMOTE = "zoo"  # the DVC remote the entries are pinned to, where the repository defines it
ZOO_STORE = Path("models/zoo-store")  # this project's: committed to git, so a clone has the zoo offline


# --- l2o zoo add -------------------------------------------------------------------------------------------------


def _meta_params_from_checkpoint(path: Path, lopt):
    """The meta-parameters of a meta-training loop checkpoint: its first leaves (the loop state is
    ``(meta_params, outer optimizer state, estimator states)``, flattened in that order)."""
    template = jax.eval_shape(lopt.init_meta_params, jax.random.key(0))
    leaves, treedef = jax.tree_util.tree_flatten(template)
    with np.load(path, allow_pickle=False) as f:
        names = sorted(k for k in f.files if k.startswith("leaf_"))
        if len(names) < len(leaves):
            raise ZooError(f"checkpoint {path} holds {len(names)} arrays, fewer than {lopt.name}'s meta-parameters")
        names = names[: len(leaves)]
        values = [np.asarray(f[n]) for n in names]
    for v, t, n in zip(values, leaves, names, strict=True):
        if v.shape != t.shape or v.dtype != t.dtype:
            raise ZooError(
                f"checkpoint {path}: array {n} is {v.dtype}{list(v.shape)}, but {lopt.name} with these params expects"
                f" {t.dtype}{list(t.shape)}: the checkpoint was written with other meta_train settings"
            )
    return jax.tree_util.tree_unflatten(treedef, [jax.numpy.asarray(v) for v in values])


def _from_workspace(ws: Path, only: Path | None) -> tuple:
    """``(lopt, meta_params, lineage)`` of the latest checkpoint of a workspace (or of checkpoint ``only``)."""
    from components.meta.checkpoint import read_header  # noqa: PLC0415

    record = read_json(ws / RECORD)
    if record is None:
        raise ZooError(f"{ws} has no {RECORD}: it is not an `l2o zoo train` workspace")
    params = PipelineParams.model_validate(record["params"])
    mt = params.meta_train
    phases = mt.phase_list()
    curves: dict = {}
    done, latest, offset, rows = 0, None, 0, []
    for phase in phases:  # phases run in order, each from the previous one's end
        steps = mt.phase_steps(phase)
        ckpt = ws / CHECKPOINT_DIR / f"{phase.name}.npz"
        if not ckpt.is_file():
            break
        header = read_header(ckpt)
        step = int(header["step"])
        for k, pts in header["curves"].items():
            curves.setdefault(k, []).extend([offset + s, v] for s, v in pts)
        done, latest = offset + step, (phase, ckpt)
        rows.append({"name": phase.name, "first_step": offset + 1, "last_step": done, "planned": steps})
        if ckpt == only or step < steps:
            break
        offset += steps
    if latest is None:
        raise ZooError(f"{ws} has no meta-training checkpoint yet ({ws / CHECKPOINT_DIR}): let `l2o zoo train` run")
    if only is not None and latest[1] != only:
        raise ZooError(
            f"--from {only}: not the checkpoint of a phase this workspace has reached"
            f" ({[r['name'] for r in rows]}); pass the workspace {ws} to take its latest state"
        )
    phase, ckpt = latest
    lopt = create_learned(mt.lopt, **mt.phase_hyperparams(phase))
    meta_params = _meta_params_from_checkpoint(ckpt, lopt)
    manifest = read_json(ws / MANIFEST)
    if manifest is None:
        raise ZooError(f"{ws} has no {MANIFEST}: its data were never prepared; run `l2o zoo train` there again")
    sessions = record["sessions"]
    lineage = {
        "source": "l2o zoo train workspace",
        "checkpoint": str(ckpt.relative_to(ws)),
        "params_file": record["params_file"],
        "params": record["params"],
        "params_hash": params_hash(params),
        "git_commit": sessions[-1]["git_commit"],
        "git_commits": sorted({s["git_commit"] for s in sessions}),
        # what the meta_train stage records in its checkpoint, from the same helper
        "data_hashes": meta_train_stage.data_hashes(params, manifest),
        "curves": curves,
        "phases": rows,
        "outer_steps_done": done,
        "outer_steps_planned": record["outer_steps_planned"],
        "wall_time_seconds": round(sum(float(s["seconds"]) for s in sessions), 3),
        "sessions": len(sessions),
        "device": sessions[-1]["device"],
    }
    return lopt, meta_params, lineage


def _from_model_dir(path: Path) -> tuple:
    """``(lopt, meta_params, lineage)`` of a finished meta_train output directory (e.g. ``models/lopt``)."""
    lopt, meta_params, config = load(path)
    mt = config.get("meta_train") or {}
    phases = config.get("phases") or []
    planned = phases[-1]["last_step"] if phases else mt.get("num_outer_steps")
    curves_file = path / "curves.json"
    curves = read_json(curves_file) or {}
    # the meta_train stage's run log (.l2o/runs/meta_train.json, beside models/lopt) holds the wall time and
    # commit of the run that wrote it (older outputs: the metrics file and config.json held them)
    project = path.parent.parent
    facts = {}
    if path.name == MODEL_DIR.name:
        facts = read_run_log(project, "meta_train") or read_json(project / META_METRICS) or {}
    commit = facts.get("git_commit") or config.get("git_commit", "unknown")
    backend = config.get("backend")
    lineage = {
        "source": "meta_train output directory",
        "checkpoint": str(path),
        "params": {"seed": config.get("seed"), "meta_train": mt},
        "params_hash": config.get("params_hash"),
        "git_commit": commit,
        "git_commits": [commit],
        "data_hashes": config.get("data_hashes", {}),
        "curves": {k: [list(p) for p in v] for k, v in curves.items()},
        "phases": phases,
        "outer_steps_done": planned,
        "outer_steps_planned": planned,
        "wall_time_seconds": float(facts["seconds"]) if "seconds" in facts else None,
        "sessions": 1,
        "device": f"{backend}: {config.get('devices')} device(s)" if backend else "unknown",
    }
    return lopt, meta_params, lineage


def add(root: Path, name: str, source: Path | None = None, *, force: bool = False, log=print) -> Path:
    """Package ``source`` (default: the workspace of ``l2o zoo train NAME``) as ``models/zoo/<name>``; returns it.

    Raises:
      ZooError: the entry exists (and not ``force``), or ``source`` is not a workspace, a loop checkpoint or a
        checkpoint directory.
    """
    root = Path(root)
    zoo_lib.check_name(name)
    source = Path(source) if source is not None else workspace(root, name)
    if not source.is_absolute():
        source = (root / source).resolve() if not source.exists() else source.resolve()
    if source.is_file() and source.suffix == ".npz":
        lopt, meta_params, lineage = _from_workspace(source.parents[2], source)
    elif (source / RECORD).is_file():
        lopt, meta_params, lineage = _from_workspace(source, None)
    elif (source / CONFIG_FILE).is_file() and (source / WEIGHTS_FILE).is_file():
        lopt, meta_params, lineage = _from_model_dir(source)
    else:
        raise ZooError(
            f"--from {source}: not an `l2o zoo train` workspace (no {RECORD}), a meta-training checkpoint (.npz) or"
            f" a checkpoint directory ({CONFIG_FILE} + {WEIGHTS_FILE}, e.g. models/lopt)"
        )
    target = root / zoo_lib.ZOO_SUBDIR / name
    if (target / CONFIG_FILE).exists() and not force:
        raise ZooError(f"zoo entry {name!r} exists ({target}): pass --force to replace it with the current state")
    done, planned = lineage["outer_steps_done"], lineage["outer_steps_planned"]
    lineage = {
        "name": name,
        **lineage,
        "complete": done is not None and done == planned,
        "packaged": now(),
        "packaged_at_commit": git_commit(root),
    }
    save(target, lopt, meta_params, {"zoo": lineage})
    log(f"zoo add {name}: {lopt.name}, {done}/{planned} outer steps -> {target.relative_to(root)}")
    return target


# --- l2o zoo (list), index, DVC ----------------------------------------------------------------------------------


def list_entries(root: Path) -> list[dict]:
    """One summary per entry of ``<root>/models/zoo``: name, optimizer, steps, wall time, device, commit, date."""
    zoo = Path(root) / zoo_lib.ZOO_SUBDIR
    rows = []
    for name in zoo_lib.entries(zoo):
        config = zoo_lib.read_lineage(name, zoo)
        z = config.get("zoo") or {}
        rows.append(
            {
                "name": name,
                "optimizer": config["architecture"],
                "outer_steps_done": z.get("outer_steps_done"),
                "outer_steps_planned": z.get("outer_steps_planned"),
                "complete": z.get("complete"),
                "wall_time_seconds": z.get("wall_time_seconds"),
                "device": z.get("device", "unknown"),
                "git_commit": z.get("git_commit", config.get("git_commit", "unknown")),
                "packaged": z.get("packaged"),
                "weights_sha256": sha256_file(zoo / name / WEIGHTS_FILE),
            }
        )
    return rows


def _hours(seconds) -> str:
    return "?" if seconds is None else (f"{seconds / 3600:.1f}h" if seconds >= 3600 else f"{seconds:.0f}s")


def format_listing(rows: list[dict], zoo: Path) -> str:
    if not rows:
        return f"the zoo ({zoo}) is empty: `l2o zoo train NAME --params FILE`, then `l2o zoo add NAME`"
    lines = [f"{len(rows)} zoo entr{'y' if len(rows) == 1 else 'ies'} in {zoo}:"]
    for r in rows:
        steps = f"{r['outer_steps_done']}/{r['outer_steps_planned']} outer steps" + (
            "" if r["complete"] else " (partial)"
        )
        lines.append(
            f"  {r['name']:<24} {r['optimizer']:<16} {steps:<30} {_hours(r['wall_time_seconds']):>7}"
            f"  {r['device']}  commit {r['git_commit'][:12]}{'+dirty' if r['git_commit'].endswith('+dirty') else ''}"
        )
    return "\n".join(lines)


def write_index(root: Path) -> Path:
    """``models/zoo/index.json``: the listing's rows (deterministic: no timestamps of its own)."""
    path = Path(root) / zoo_lib.ZOO_SUBDIR / INDEX
    atomic_write_json(path, {"entries": list_entries(root)})
    return path


def _pin_remote(dvc_file: Path, remote: str) -> None:
    """Set ``remote: <remote>`` on the outputs of ``dvc_file``, so a plain ``dvc push`` / ``dvc pull`` uses it."""
    import yaml  # noqa: PLC0415

    doc = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))
    if all(out.get("remote") == remote for out in doc["outs"]):
        return
    for out in doc["outs"]:
        out["remote"] = remote
    atomic_write_text(dvc_file, yaml.safe_dump(doc, sort_keys=False))


def track(root: Path, names: list[str] | None = None, log=print) -> dict:
    """Rewrite ``models/zoo/index.json``, ``dvc add`` each entry (``models/zoo/<name>.dvc``) and push it.

    Where the repository has a DVC remote named :data:`ZOO_REMOTE` (this project's: ``models/zoo-store``,
    committed to git, so every clone has the zoo offline), each entry's output is pinned to it (``remote:`` in
    its ``.dvc`` file) and pushed there; otherwise it is pushed to the default remote when there is one.

    Returns ``{"dvc_files": [...], "pushed": n or None, "remote": name or None}``.
    """
    from flows import dvc_glue  # noqa: PLC0415

    root = Path(root)
    index = write_index(root)
    zoo = root / zoo_lib.ZOO_SUBDIR
    names = zoo_lib.entries(zoo) if names is None else names
    repo = dvc_glue.open_repo(root)
    remote = ZOO_REMOTE if ZOO_REMOTE in repo.config.get("remote", {}) else dvc_glue.default_remote(repo)
    for n in names:
        dvc_glue._quiet(repo.add, str(zoo / n))
        if remote == ZOO_REMOTE:
            _pin_remote(zoo / f"{n}.dvc", ZOO_REMOTE)
    dvc_files = [str((zoo / f"{n}.dvc").relative_to(root)) for n in names]
    out = {"dvc_files": dvc_files, "pushed": None, "remote": remote}
    if names and remote:
        repo = dvc_glue.open_repo(root)  # re-read the pinned .dvc files
        out["pushed"] = dvc_glue._quiet(repo.push, targets=[str(root / f) for f in dvc_files])
        log(f"zoo: pushed {out['pushed']} object(s) to the DVC remote {remote!r}")
    elif names:
        log("zoo: no default DVC remote configured: `dvc remote add -d NAME URL`, then `dvc push models/zoo/*.dvc`")
    extra = [str(ZOO_STORE)] if remote == ZOO_REMOTE else []
    git_files = " ".join([str(index.relative_to(root)), *dvc_files, str(zoo_lib.ZOO_SUBDIR / ".gitignore"), *extra])
    log(f"zoo: {len(names)} entr{'y' if len(names) == 1 else 'ies'} tracked by DVC; commit them: git add {git_files}")
    return out


def materialize(root: Path, names: list[str] | None = None, log=print) -> list[str]:
    """Check out (from the DVC cache or the entry's remote) the entries of ``names`` (default: every entry with a
    ``.dvc`` file) missing from ``models/zoo``.

    A fresh clone has each entry's ``.dvc`` file but not its files; ``dvc pull`` of that file restores them
    offline from ``models/zoo-store``. The pipeline checks out every entry, not only those ``evaluate.zoo``
    names: the ``evaluate`` stage depends on the whole ``models/zoo`` folder, whose hash must not depend on which
    entries a clone happens to hold. Entries without a ``.dvc`` file are left alone (loading them then fails
    with the list of available entries). Returns the names restored.
    """
    from flows import dvc_glue  # noqa: PLC0415

    zoo = Path(root) / zoo_lib.ZOO_SUBDIR
    names = sorted(p.stem for p in zoo.glob("*.dvc")) if names is None else names
    missing = [n for n in names if not (zoo / n / CONFIG_FILE).is_file() and (zoo / f"{n}.dvc").is_file()]
    if missing:
        repo = dvc_glue.open_repo(Path(root))
        dvc_glue._quiet(repo.pull, targets=[str(zoo / f"{n}.dvc") for n in missing])
        log(f"zoo: checked out {', '.join(missing)} (dvc pull models/zoo/<name>.dvc)")
    return missing


# --- MLflow: registered on first use -----------------------------------------------------------------------------

SHA_TAG = "l2o.zoo.weights_sha256"


def registered_name(name: str) -> str:
    return f"zoo-{zoo_lib.check_name(name)}"


def register(root: Path, name: str, *, experiment: str = "l2o-zoo", log=print) -> str:
    """The MLflow model URI of zoo entry ``name``, registering it (as ``zoo-<name>``) the first time it is used.

    An entry counts as registered when a version of ``zoo-<name>`` carries the sha256 of its weights, so a
    replaced entry (``l2o zoo add --force``) gets a new version. The registering run (experiment ``l2o-zoo``)
    holds the lineage as params and the meta-training curves as metric histories.
    """
    from flows.mlflow_models import log_learned_optimizer  # noqa: PLC0415
    from flows.tracking import Tracker, flatten  # noqa: PLC0415

    path = zoo_lib.entry_dir(name, Path(root) / zoo_lib.ZOO_SUBDIR)
    sha = sha256_file(path / WEIGHTS_FILE)
    tracker = Tracker(root, experiment)
    model = registered_name(name)
    for v in tracker.client.search_model_versions(f"name='{model}'"):
        if v.tags.get(SHA_TAG) == sha:
            return f"models:/{model}/{v.version}"
    config = zoo_lib.read_lineage(name, path.parent)
    z = dict(config.get("zoo") or {})
    curves = z.pop("curves", {})
    run_id = tracker.start(f"zoo:{name}", tags={"l2o.zoo.entry": name, SHA_TAG: sha, "git_commit": z.get("git_commit")})
    tracker.log_params(run_id, flatten({"architecture": config["architecture"], **z}))
    tracker.log_metrics(run_id, {}, {f"meta_train/{k}": [tuple(p) for p in v] for k, v in curves.items()})
    log_learned_optimizer(run_id, path, model)
    tracker.finish(run_id)
    version = max(tracker.client.search_model_versions(f"name='{model}'"), key=lambda v: int(v.version))
    tracker.client.set_model_version_tag(model, version.version, SHA_TAG, sha)
    log(f"zoo: registered {name!r} in MLflow as models:/{model}/{version.version}")
    return f"models:/{model}/{version.version}"
