"""MLflow 3 bookkeeping around the learned optimizer: which training run an evaluation used, the headline numbers
on the pipeline's run, and the ``champion`` alias of the registered optimizer.

* **Lineage by content.** The meta_train run tags itself with the sha256 of the weights it wrote
  (``l2o.weights_sha256``). An evaluate run (and the pipeline run around it) looks that hash up for the weights
  in ``models/lopt`` *now* and tags itself with the meta_train run, its model URI (the MLflow 3 LoggedModel) and
  the registered version: right after a partial re-run (only evaluate stale), a DVC run-cache restore or a
  ``dvc repro`` as well, since the match is by content, not by which process ran what.
* **Headline on the pipeline run**: ``metrics/headline.json`` flattened to ``<optimizer>/<rule>/<number>``,
  plus three columns for the runs table (``speedup_iqm``, ``beats_adam_fraction``, ``test_acc``: the fresh
  learned optimizer's speedup IQM and share of tasks beating tuned Adam under the train rule, its mean test
  accuracy under the validation rule).
* **``@champion``**: after an evaluation, the registered version it evaluated becomes its registered model's
  ``champion`` when its speedup IQM over tuned Adam (train rule: the honest headline metric) is higher than the
  current champion's, or when there is none. The score is kept on the version (tag ``l2o.speedup_iqm``), so
  ``models:/<name>@champion`` is the best optimizer of that name evaluated in this store so far. *Inferred*:
  versions evaluated under other params compete on their own evaluation's number (the tag says which params
  hash it came from).
"""

import math
from pathlib import Path

from components.evaluation.summary import flat_numbers
from components.stages.common import read_json, sha256_file
from components.stages.paths import HEADLINE, MODEL_DIR

__all__ = [
    "CHAMPION",
    "WEIGHTS_TAG",
    "headline_metrics",
    "link_evaluation",
    "promote_champion",
    "weights_tags",
]

CHAMPION = "champion"
WEIGHTS_TAG = "l2o.weights_sha256"
SCORE_TAG = "l2o.speedup_iqm"
# the three numbers the MLflow runs table shows first: (metric name, optimizer, rule, key)
TABLE_COLUMNS = (
    ("speedup_iqm", "learned", "train_rule", "speedup_iqm"),
    ("beats_adam_fraction", "learned", "train_rule", "beats_adam_fraction"),
    ("test_acc", "learned", "validation_rule", "mean_test_acc"),
)


def weights_tags(root: Path) -> dict[str, str]:
    """The meta_train run's content tag: the sha256 of the weights it wrote (``{}`` without weights)."""
    path = Path(root) / MODEL_DIR / "weights.safetensors"
    return {WEIGHTS_TAG: sha256_file(path)} if path.exists() else {}


def headline_metrics(root: Path) -> dict[str, float]:
    """``metrics/headline.json`` as flat MLflow metrics (finite numbers only), with the runs-table columns."""
    path = Path(root) / HEADLINE
    if not path.exists():
        return {}
    flat = flat_numbers(read_json(path))
    out = {k: v for k, v in flat.items() if v is not None and math.isfinite(v)}
    for name, opt, rule, key in TABLE_COLUMNS:
        if f"{opt}/{rule}/{key}" in out:
            out[name] = out[f"{opt}/{rule}/{key}"]
    return out


def _trainer(client, experiment_id: str, sha: str):
    """The latest finished meta_train run of the experiment that wrote weights with this hash (or None)."""
    query = f"tags.`{WEIGHTS_TAG}` = '{sha}' and tags.`l2o.stage` = 'meta_train' and attributes.status = 'FINISHED'"
    runs = client.search_runs(
        [experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0] if runs else None


def _registered_version(client, run_id: str):
    """The registered model version logged by run ``run_id`` (or None)."""
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    return max(versions, key=lambda v: int(v.version)) if versions else None


def link_evaluation(tracker, root: Path) -> dict[str, str]:
    """Tags naming the meta_train run, model and registered version whose weights are in ``models/lopt`` now."""
    sha = weights_tags(root).get(WEIGHTS_TAG)
    trainer = _trainer(tracker.client, tracker.experiment_id, sha) if sha else None
    if trainer is None:
        return {}
    tags = {"l2o.meta_train_run_id": trainer.info.run_id, WEIGHTS_TAG: sha}
    if "l2o.model_uri" in trainer.data.tags:
        tags["l2o.model_uri"] = trainer.data.tags["l2o.model_uri"]
    version = _registered_version(tracker.client, trainer.info.run_id)
    if version is not None:
        tags["l2o.registered_model"] = f"models:/{version.name}/{version.version}"
    return tags


def promote_champion(tracker, links: dict[str, str], score: float | None, params_hash: str, log=print) -> str | None:
    """Make the evaluated version its model's ``@champion`` if it scores higher than the current one.

    Args:
      tracker: the :class:`flows.tracking.Tracker` of the run.
      links: what :func:`link_evaluation` found for the evaluated weights.
      score: the evaluation's headline speedup IQM (``headline_metrics(root).get("speedup_iqm")``).
      params_hash: recorded on the version beside its score.

    Returns the champion's ``models:/<name>@champion`` reference when this version is (now) the champion.
    """
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    ref = links.get("l2o.registered_model")
    if score is None or ref is None:
        return None
    name, version = ref.removeprefix("models:/").rsplit("/", 1)
    client = tracker.client
    client.set_model_version_tag(name, version, SCORE_TAG, repr(score))
    client.set_model_version_tag(name, version, "l2o.params_hash", params_hash)
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no champion yet
        current = None
    if current is not None and str(current.version) != str(version):
        best = float(current.tags.get(SCORE_TAG, "-inf"))
        if not score > best:
            log(
                f"evaluate: {ref} scores speedup IQM {score:.3f}; {name}@{CHAMPION} stays version {current.version}"
                f" ({best:.3f})"
            )
            return None
    client.set_registered_model_alias(name, CHAMPION, version)
    log(f"evaluate: {ref} is {name}@{CHAMPION} (speedup IQM {score:.3f} over tuned Adam, train rule)")
    return f"models:/{name}@{CHAMPION}"
