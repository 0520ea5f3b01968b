"""`l2o compare`: metric differences between two runs of a real MLflow SQLite store (pipeline runs with stage runs)."""

import json
import os

import pytest

from flows.cli import main
from flows.compare import collect_metrics
from flows.tables import MISSING

NAN = float("nan")

# (stage tag or None -> run name only, run name, metrics) of each pipeline's child runs
STAGES_A = [("meta_train", "meta_train", {"final_loss": 1.0, "steps": 100.0}), (None, "evaluate", {})]
STAGES_B = [("meta_train", "meta_train", {"final_loss": 1.25, "steps": 100.0}), (None, "evaluate", {})]
EVAL_A = {"loss": 0.5, "accuracy": 0.8, "only_a": 3.0}
EVAL_B = {"loss": 0.5, "accuracy": 0.9}
PARAMS_A = {"seed": "0", "meta_train.lr": "0.001", "evaluate.num_seeds": "3"}
PARAMS_B = {"seed": "0", "meta_train.lr": "0.002", "evaluate.num_seeds": "3", "evaluate.suite": "heldout"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A project folder (dvc.yaml only) and a SQLite tracking store with two pipeline runs of two stage runs each."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("project")
    (root / "dvc.yaml").write_text("stages: {}\n")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    exp = client.create_experiment("l2o-test", artifact_location=(root / "art").as_uri())
    ids = {}
    for side, stages, evaluate, params, commit in (
        ("a", STAGES_A, EVAL_A, PARAMS_A, "aaaa111"),
        ("b", STAGES_B, EVAL_B, PARAMS_B, "bbbb222"),
    ):
        parent = client.create_run(
            exp, run_name="pipeline", tags={"git_commit": commit, "l2o.params_hash": f"hash-{side}"}
        ).info.run_id
        for k, v in params.items():
            client.log_param(parent, k, v)
        client.log_metric(parent, "wall_seconds", 10.0 if side == "a" else 12.0)
        client.log_metric(parent, "grad_norm", NAN)
        for stage, name, metrics in stages:
            tags = {"mlflow.parentRunId": parent, **({"l2o.stage": stage} if stage else {})}
            child = client.create_run(exp, run_name=name, tags=tags).info.run_id
            for k, v in (metrics or evaluate).items():
                client.log_metric(child, k, v)
            client.set_terminated(child)
            ids[f"{side}/{name}"] = child
        client.set_terminated(parent)
        ids[side] = parent
    return {"root": root, "uri": uri, "client": client, "ids": ids}


@pytest.fixture
def cli(store, monkeypatch, capsys):
    """Run `l2o compare ...` in the project with the store as MLFLOW_TRACKING_URI: (exit code, stdout, stderr)."""
    monkeypatch.setattr(os, "environ", dict(os.environ))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    monkeypatch.chdir(store["root"])

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["compare", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _rows(out: str) -> dict[str, list[str]]:
    """The metric table's rows: key -> [A, B, B-A, rel %]."""
    table = out.split("\nmetrics (", 1)[1].splitlines()[2:]  # after the summary and header lines
    return {cells[0]: cells[1:] for cells in (line.split() for line in table) if cells[0] != "..."}


def test_collect_metrics_keys_children_by_stage_tag_or_run_name(store):
    metrics = collect_metrics(store["client"], store["ids"]["a"])
    assert metrics.pop("grad_norm") != metrics.get("grad_norm")  # NaN
    assert metrics == {
        "wall_seconds": 10.0,
        "meta_train/final_loss": 1.0,
        "meta_train/steps": 100.0,
        "evaluate/loss": 0.5,
        "evaluate/accuracy": 0.8,
        "evaluate/only_a": 3.0,
    }
    assert collect_metrics(store["client"], store["ids"]["a/evaluate"]) == EVAL_A  # a stage run: its own only


def test_table_shows_differences_markers_and_params(store, cli):
    a, b = store["ids"]["a"], store["ids"]["b"]
    code, out, err = cli(a, b, "--all")
    assert code == 0, err
    rows = _rows(out)
    assert list(rows) == sorted(rows)
    assert rows["meta_train/final_loss"] == ["1", "1.25", "+0.25", "+25%"]
    assert rows["wall_seconds"] == ["10", "12", "+2", "+20%"]
    assert rows["evaluate/accuracy"] == ["0.8", "0.9", "+0.1", "+12.5%"]
    assert rows["evaluate/loss"] == ["0.5", "0.5", "+0", "+0%"]
    assert rows["grad_norm"] == ["nan", "nan", "nan", "n/a"]  # NaN == NaN: not a change (see --changed)
    assert rows["evaluate/only_a"] == ["3", MISSING, MISSING, MISSING]
    assert "metrics (7): 3 changed, 3 equal, 1 only in A, 0 only in B (rtol 1e-09)" in out
    # header: both runs with name, git commit, params hash and stage runs
    assert f"A  {a}  pipeline  FINISHED  started " in out and f"B  {b}  pipeline" in out
    assert "git_commit aaaa111  l2o.params_hash hash-a  stage runs: meta_train, evaluate" in out
    assert "git_commit bbbb222  l2o.params_hash hash-b" in out
    # params: only those that differ, a missing one marked
    params = out.split("params that differ (2 of 4):\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split() for line in params] == [
        ["key", "A", "B"],
        ["evaluate.suite", MISSING, "heldout"],
        ["meta_train.lr", "0.001", "0.002"],
    ]


def test_changed_hides_equal_rows_and_filter_restricts_keys(store, cli):
    a, b = store["ids"]["a"], store["ids"]["b"]
    code, out, _ = cli(a, b, "--changed")
    assert code == 0
    assert set(_rows(out)) == {"wall_seconds", "meta_train/final_loss", "evaluate/accuracy", "evaluate/only_a"}
    code, out, _ = cli(a, b, "--filter", "^meta_train/", "--filter", "only", "--all")
    assert code == 0
    assert set(_rows(out)) == {"meta_train/final_loss", "meta_train/steps", "evaluate/only_a"}
    code, out, _ = cli(a, b, "--filter", "evaluate/", "--changed")
    assert set(_rows(out)) == {"evaluate/accuracy", "evaluate/only_a"}
    assert "metrics (3; matching evaluate/; changed only, 2 shown): 1 changed, 1 equal, 1 only in A" in out
    code, out, _ = cli(a, b, "--rtol", "0.19", "--changed")  # 0.1 of 0.9 and 2 of 12 are within 19%, 0.25 of 1.25 not
    assert set(_rows(out)) == {"meta_train/final_loss", "evaluate/only_a"}


def test_default_is_concise_the_largest_changes_first(store, cli):
    a, b = store["ids"]["a"], store["ids"]["b"]
    code, out, _ = cli(a, b)  # changed only: 3 changed + 1 only in A
    assert code == 0
    assert set(_rows(out)) == {"wall_seconds", "meta_train/final_loss", "evaluate/accuracy", "evaluate/only_a"}
    code, out, _ = cli(a, b, "--limit", "2")  # only in A first, then +25% before +20% and +12.5%
    assert list(_rows(out)) == ["evaluate/only_a", "meta_train/final_loss"]
    assert "... 2 more (the 2 largest relative changes are shown): --changed lists every changed metric" in out
    code, out, _ = cli(a, b, "--limit", "2", "--changed")  # --changed: all of them, in key order
    assert list(_rows(out)) == sorted(["wall_seconds", "meta_train/final_loss", "evaluate/accuracy", "evaluate/only_a"])


def test_json_has_exact_numbers(store, cli):
    a, b = store["ids"]["a"], store["ids"]["b"]
    code, out, _ = cli(a, b, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["tracking_uri"] == store["uri"]
    assert data["runs"]["a"]["run_id"] == a and data["runs"]["b"]["git_commit"] == "bbbb222"
    assert [s["stage"] for s in data["runs"]["a"]["stage_runs"]] == ["meta_train", "evaluate"]
    rows = {r["key"]: r for r in data["metrics"]}
    assert rows["meta_train/final_loss"] == {
        "key": "meta_train/final_loss",
        "a": 1.0,
        "b": 1.25,
        "delta": 0.25,
        "rel_change_pct": 25.0,
        "only_in": None,
        "changed": True,
    }
    assert rows["evaluate/only_a"]["only_in"] == "a" and rows["evaluate/only_a"]["b"] is None
    assert rows["evaluate/loss"]["changed"] is False and rows["evaluate/loss"]["delta"] == 0.0
    assert rows["grad_norm"]["a"] == "NaN" and rows["grad_norm"]["changed"] is False  # strict JSON
    assert data["params"] == [
        {"key": "evaluate.suite", "a": None, "b": "heldout"},
        {"key": "meta_train.lr", "a": "0.001", "b": "0.002"},
    ]
    assert data["summary"] == {"total": 7, "changed": 3, "equal": 3, "only_in_a": 1, "only_in_b": 0}


def test_stage_runs_and_id_prefixes(store, cli):
    code, out, _ = cli(store["ids"]["a/meta_train"][:8], store["ids"]["b/meta_train"][:10], "--all")
    assert code == 0
    assert _rows(out) == {"final_loss": ["1", "1.25", "+0.25", "+25%"], "steps": ["100", "100", "+0", "+0%"]}
    assert "stage meta_train" in out and f"parent run {store['ids']['a']}" in out
    assert "params: none logged on either run" in out


def test_unknown_run_id_exits_2_with_a_message(store, cli):
    unknown = "0123456789abcdef0123456789abcdef"
    code, out, err = cli(store["ids"]["a"], unknown)
    assert code == 2 and out == ""
    assert unknown in err and store["uri"] in err and "l2o ui" in err and "mlflow runs list" in err
    assert "l2o-test" in err and "Traceback" not in err
    code, _, err = cli("nonsense", store["ids"]["b"])
    assert code == 2 and "'nonsense'" in err


def test_usage_errors_exit_2(store, cli, monkeypatch, tmp_path):
    a, b = store["ids"]["a"], store["ids"]["b"]
    code, _, err = cli(a, b, "--filter", "(")
    assert code == 2 and "not a regular expression" in err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'none.db'}")
    code, _, err = cli(a, b)
    assert code == 2 and "no MLflow tracking store" in err
    assert not (tmp_path / "none.db").exists()  # not created by looking
