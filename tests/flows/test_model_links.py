"""flows.model_links on a real MLflow SQLite store: an evaluation finds its training run by the weights' hash, the
pipeline run gets the headline numbers, and ``@champion`` moves only to a version that scores higher."""

import json
from pathlib import Path

import pytest

from flows.model_links import (
    CHAMPION,
    WEIGHTS_TAG,
    headline_metrics,
    link_evaluation,
    promote_champion,
    weights_tags,
)
from flows.tracking import Tracker


def _headline(speedup: float) -> dict:
    return {
        "learned": {
            "train_rule": {"speedup_iqm": speedup, "beats_adam_fraction": 0.5, "speedup_iqm_lower_bound": 0},
            "validation_rule": {"mean_test_acc": 0.9, "algoperf_score": None},
        },
        "adam": {"train_rule": {"speedup_iqm": 1.0}},
    }


def _write(root: Path, weights: bytes, speedup: float) -> None:
    (root / "models" / "lopt").mkdir(parents=True, exist_ok=True)
    (root / "models" / "lopt" / "weights.safetensors").write_bytes(weights)
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "headline.json").write_text(json.dumps(_headline(speedup)))


def _train(tracker: Tracker, root: Path, name: str = "small_fc_lopt") -> tuple[str, str]:
    """A finished meta_train run tagged like execute_stage tags it, with a registered version; (run id, version)."""
    run_id = tracker.start("meta_train", tags={"l2o.stage": "meta_train", "l2o.model_uri": f"models:/m-{len(name)}"})
    tracker.set_tags(run_id, weights_tags(root))
    tracker.finish(run_id)
    client = tracker.client
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run_id}/learned_optimizer", run_id=run_id)
    return run_id, str(version.version)


def _promote(tracker, root, params_hash, log):
    """What the pipeline does when it finishes: link the weights, then promote on the headline speedup."""
    score = headline_metrics(root).get("speedup_iqm")
    return promote_champion(tracker, link_evaluation(tracker, root), score, params_hash, log=log)


@pytest.fixture
def tracker(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Tracker(tmp_path, "links-test")


def test_headline_metrics_are_flat_finite_numbers_with_the_table_columns(tmp_path):
    _write(tmp_path, b"w", 1.25)
    metrics = headline_metrics(tmp_path)
    assert metrics["speedup_iqm"] == 1.25 and metrics["learned/train_rule/speedup_iqm"] == 1.25
    assert metrics["beats_adam_fraction"] == 0.5 and metrics["test_acc"] == 0.9
    assert "learned/validation_rule/algoperf_score" not in metrics  # null: not a metric
    assert headline_metrics(tmp_path / "nowhere") == {}


def test_evaluation_links_to_the_run_that_wrote_the_weights(tracker, tmp_path):
    _write(tmp_path, b"first weights", 0.5)
    first, v1 = _train(tracker, tmp_path)
    _write(tmp_path, b"second weights", 0.5)
    second, v2 = _train(tracker, tmp_path)
    assert link_evaluation(tracker, tmp_path)["l2o.meta_train_run_id"] == second
    _write(tmp_path, b"first weights", 0.5)  # e.g. a DVC checkout of the older result
    links = link_evaluation(tracker, tmp_path)
    assert links["l2o.meta_train_run_id"] == first and links["l2o.registered_model"] == f"models:/small_fc_lopt/{v1}"
    assert links[WEIGHTS_TAG] == weights_tags(tmp_path)[WEIGHTS_TAG] and links["l2o.model_uri"].startswith("models:/")
    _write(tmp_path, b"weights no run wrote", 0.5)
    assert link_evaluation(tracker, tmp_path) == {}
    assert v2 != v1


def test_champion_moves_only_to_a_higher_speedup(tracker, tmp_path):
    client = tracker.client
    _write(tmp_path, b"a", 0.4)
    _, v1 = _train(tracker, tmp_path)
    assert _promote(tracker, tmp_path, "hash-a", log=lambda _: None) == f"models:/small_fc_lopt@{CHAMPION}"
    assert str(client.get_model_version_by_alias("small_fc_lopt", CHAMPION).version) == v1
    _write(tmp_path, b"b", 0.3)  # worse: the alias stays, the score is recorded on the new version
    _, v2 = _train(tracker, tmp_path)
    said = []
    assert _promote(tracker, tmp_path, "hash-b", log=said.append) is None
    assert str(client.get_model_version_by_alias("small_fc_lopt", CHAMPION).version) == v1
    assert client.get_model_version("small_fc_lopt", v2).tags["l2o.speedup_iqm"] == "0.3" and "stays" in said[0]
    _write(tmp_path, b"c", 1.7)  # better: the alias moves
    _, v3 = _train(tracker, tmp_path)
    _promote(tracker, tmp_path, "hash-c", log=lambda _: None)
    champion = client.get_model_version_by_alias("small_fc_lopt", CHAMPION)
    assert str(champion.version) == v3 and champion.tags["l2o.params_hash"] == "hash-c"
    _write(tmp_path, b"c", 1.1)  # the champion re-evaluated lower keeps the alias and its new score
    _promote(tracker, tmp_path, "hash-c2", log=lambda _: None)
    champion = client.get_model_version_by_alias("small_fc_lopt", CHAMPION)
    assert str(champion.version) == v3 and champion.tags["l2o.speedup_iqm"] == "1.1"
