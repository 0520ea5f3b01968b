"""`l2o reproduce`: the pure comparison helpers, the bad-input errors (on runs made with MlflowClient in a temp
SQLite store, no pipeline). Its reproduction of the tiny pipeline end to end is in test_pipeline_e2e.py, beside the
other tests of the shared smoke run."""

import argparse
import json
import math
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.tables import to_json
from flows.team.reproduce import add_arguments, cmd_reproduce
from flows.team.reproduce_checks import DEFAULT_IGNORE, compare_lock_hashes, compare_metrics, verdict
from flows.team.reproduce_report import format_report

# ------------------------------------------------------------------------------------------------ pure helpers


def _statuses(rows) -> dict[str, str]:
    return {r["key"]: r["status"] for r in rows}


def test_metrics_within_and_beyond_tolerance():
    original = {"a": 1.0, "b": 100.0, "c": 0.0, "d": 2.0}
    reproduced = {"a": 1.0 + 5e-6, "b": 100.0 + 2e-3, "c": 5e-9, "d": 2.0}
    rows = compare_metrics(original, reproduced, rtol=1e-5, atol=1e-8)
    assert _statuses(rows) == {"a": "ok", "b": "MISMATCH", "c": "ok", "d": "ok"}
    b = next(r for r in rows if r["key"] == "b")
    assert b["abs_diff"] == pytest.approx(2e-3) and b["tolerance"] == pytest.approx(1e-8 + 1e-3)
    ok, line = verdict(rows, [])
    assert not ok and line.startswith("NOT reproduced: 1 metric(s) beyond tolerance (b)")
    ok, line = verdict([r for r in rows if r["key"] != "b"], [])
    assert ok and line == "reproduced: 3 metrics within tolerance, data hashes equal"


def test_nan_and_infinity_equal_themselves():
    nan, inf = math.nan, math.inf
    rows = compare_metrics({"n": nan, "i": inf, "j": -inf, "m": nan}, {"n": nan, "i": inf, "j": inf, "m": 1.0})
    assert _statuses(rows) == {"i": "ok", "j": "MISMATCH", "m": "MISMATCH", "n": "ok"}
    assert next(r for r in rows if r["key"] == "n")["abs_diff"] == 0.0


def test_ignored_keys_are_listed_not_compared():
    original = {"meta_train/seconds": 9.0, "meta_train/inner_steps_per_second": 41.0, "x/compile_time": 1.0, "k": 1}
    reproduced = {"meta_train/seconds": 19.0, "meta_train/inner_steps_per_second": 4.0, "x/compile_time": 3.0, "k": 1}
    rows = compare_metrics(original, reproduced)
    assert _statuses(rows) == {
        "k": "ok",
        "meta_train/inner_steps_per_second": "ignored",
        "meta_train/seconds": "ignored",
        "x/compile_time": "ignored",
    }
    ok, line = verdict(rows, [])
    assert ok and line == "reproduced: 1 metrics within tolerance, data hashes equal (3 ignored)"
    assert _statuses(compare_metrics({"k": 1.0}, {"k": 2.0}, ignore=["^k$"])) == {"k": "ignored"}
    # the step costs of flows.timings, on the pipeline run and the evaluate run
    costs = [
        "stage_seconds/evaluate",
        "step_us/learned",
        "evaluate/a/adam/step_us",
        "evaluate/timing/b/step_us",
    ]
    cost_rows = compare_metrics(
        {**dict.fromkeys(costs, 1.0), "speedup_iqm": 2.0}, {**dict.fromkeys(costs, 3.0), "speedup_iqm": 2.0}
    )
    assert _statuses(cost_rows) == {**dict.fromkeys(costs, "ignored"), "speedup_iqm": "ok"}
    assert _statuses(compare_metrics({"s/seconds": 1.0}, {"s/seconds": 2.0}, ignore=[])) == {"s/seconds": "MISMATCH"}
    text = format_report({"metrics": rows, "hashes": [], "verdict": line, "ignore": list(DEFAULT_IGNORE)})
    assert "metrics (1 compared, 3 ignored" in text and "ignored (3, matching " in text
    ignored_line = next(line for line in text.splitlines() if line.startswith("ignored ("))
    assert "meta_train/seconds" in ignored_line and "  meta_train/seconds" not in text  # listed, not a table row


def test_missing_metric_fails():
    rows = compare_metrics({"a": 1.0, "gone": 2.0}, {"a": 1.0, "new": 3.0})
    assert _statuses(rows) == {"a": "ok", "gone": "missing", "new": "new"}
    gone = next(r for r in rows if r["key"] == "gone")
    assert gone["original"] == 2.0 and gone["reproduced"] is None
    ok, line = verdict(rows, [])
    assert not ok and "1 metric(s) missing in the reproduction (gone)" in line
    # a metric only the reproduction has (a stage the original run skipped as up to date) does not fail
    ok, line = verdict([r for r in rows if r["key"] != "gone"], [])
    assert ok and line.endswith("data hashes equal (1 only in the reproduction)")


def _lock(**outs: str) -> dict:
    """A dvc.lock with one output per stage: ``stage="path:md5"``."""
    stages = {}
    for stage, spec in outs.items():
        path, md5 = spec.split(":")
        stages[stage] = {"cmd": f"l2o stage {stage}", "outs": [{"path": path, "hash": "md5", "md5": md5}]}
    return {"schema": "2.0", "stages": stages}


def test_data_hash_mismatch_fails_model_difference_does_not():
    original = _lock(prepare_data="data/prepared:aaa.dir", meta_train="models/lopt:bbb.dir", report="reports:ccc")
    model_differs = _lock(prepare_data="data/prepared:aaa.dir", meta_train="models/lopt:BBB.dir", report="reports:ccc")
    rows = compare_lock_hashes(original, model_differs)
    assert [(r["stage"], r["path"], r["status"], r["required"]) for r in rows] == [
        ("prepare_data", "data/prepared", "equal", True),
        ("meta_train", "models/lopt", "differs", False),
        ("report", "reports", "equal", False),
    ]
    metrics = compare_metrics({"a": 1.0}, {"a": 1.0})
    ok, line = verdict(metrics, rows)
    assert ok and line == (
        "reproduced: 1 metrics within tolerance, data hashes equal (1 other output(s) differ, informational:"
        " models/lopt)"
    )
    data_differs = _lock(prepare_data="data/prepared:XXX.dir", meta_train="models/lopt:bbb.dir", report="reports:ccc")
    rows = compare_lock_hashes(original, data_differs)
    assert rows[0]["status"] == "DIFFERENT"
    ok, line = verdict(metrics, rows)
    assert not ok and "data hashes differ (data/prepared)" in line
    # a data output the reproduction lacks fails too; an informational one is "missing"
    rows = compare_lock_hashes(original, _lock(meta_train="models/lopt:bbb.dir"))
    assert [r["status"] for r in rows] == ["DIFFERENT", "equal", "missing"]


def test_report_text_and_json():
    rows = compare_metrics({"evaluate/acc": 0.5, "nan": math.nan}, {"evaluate/acc": 0.6, "nan": math.nan})
    hashes = compare_lock_hashes(_lock(prepare_data="data/prepared:" + "a" * 32 + ".dir"), _lock())
    ok, line = verdict(rows, hashes)
    report = {"rtol": 1e-5, "atol": 1e-8, "metrics": rows, "hashes": hashes, "verdict": line, "reproduced_ok": ok}
    text = format_report(report)
    lines = text.splitlines()
    header = next(i for i, s in enumerate(lines) if s.split()[:2] == ["key", "original"])
    assert lines[header].split() == ["key", "original", "reproduced", "|diff|", "tolerance", "status"]
    assert lines[header + 1].split() == ["evaluate/acc", "0.5", "0.6", "0.1", "5.01e-06", "MISMATCH"]
    assert lines[header + 2].split() == ["nan", "nan", "nan", "0", "1e-08", "ok"]
    assert re.search(r"prepare_data\s+data/prepared\s+a{12}\.dir\s+—\s+DIFFERENT", text)
    assert lines[-1] == line and line.startswith("NOT reproduced")
    parsed = json.loads(to_json(report))
    assert parsed["metrics"][1]["original"] == "NaN" and parsed["reproduced_ok"] is False


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="l2o")
    add_arguments(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["reproduce", *argv])


def test_arguments_and_defaults():
    args = _parse("abcdef12")
    assert (args.run_id, args.rtol, args.atol, args.ignore, args.keep, args.json) == (
        "abcdef12",
        1e-5,
        1e-8,
        [],
        False,
        False,
    )
    args = _parse("abcdef12", "--ignore", "loss$", "--ignore", "acc", "--rtol", "0.1", "--workdir", "/x", "--keep")
    assert args.ignore == ["loss$", "acc"] and args.rtol == 0.1 and args.workdir == "/x" and args.keep
    assert _parse("abcdef12").ignore == []  # the default list is not shared between parses


# ------------------------------------------------------------------------------------------------ bad input


def _git(cwd: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args]
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A git repository with one commit and an MLflow store in it holding fake pipeline and stage runs."""
    root = tmp_path_factory.mktemp("reproduce_errors") / "repo"
    root.mkdir()
    (root / "dvc.yaml").write_text("stages: {}\n")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "one")
    head = _git(root, "rev-parse", "HEAD")
    uri = f"sqlite:///{root / '.mlflow' / 'mlflow.db'}"
    (root / ".mlflow").mkdir()
    client = MlflowClient(uri, uri)
    exp = client.create_experiment("errors", artifact_location=(root / ".mlflow" / "artifacts").as_uri())
    foreign = client.create_run(exp, run_name="pipeline", tags={"git_commit": uuid.uuid4().hex + "abcdef12"}).info
    stage = client.create_run(
        exp, run_name="evaluate", tags={"mlflow.parentRunId": foreign.run_id, "l2o.stage": "evaluate"}
    ).info
    local = client.create_run(exp, run_name="pipeline", tags={"git_commit": head + "+dirty"}).info
    return {"root": root, "foreign": foreign.run_id, "stage": stage.run_id, "local": local.run_id, "head": head}


def _reproduce(store, capsys, monkeypatch, *argv: str) -> tuple[int, str]:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code = cmd_reproduce(_parse(*argv), store["root"])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_unknown_run_id_exits_2(store, capsys, monkeypatch):
    code, text = _reproduce(store, capsys, monkeypatch, "0123456789abcdef")
    assert code == 2
    assert "l2o: error: no run with id '0123456789abcdef'" in text and "experiments: errors" in text


def test_commit_not_in_the_repository_exits_2_naming_git_fetch(store, capsys, monkeypatch):
    # a stage run's id stands for its pipeline run, whose commit is unknown here
    code, text = _reproduce(store, capsys, monkeypatch, store["stage"][:10])
    assert code == 2
    assert f"reproducing its pipeline run {store['foreign']}" in text
    assert "is not in the git repository" in text and "`git fetch`" in text
    assert not list(store["root"].parent.glob("l2o-reproduce-*"))


def test_missing_artifacts_and_workdir_inside_the_repo_exit_2(store, capsys, monkeypatch, tmp_path):
    code, text = _reproduce(store, capsys, monkeypatch, store["local"], "--workdir", str(store["root"] / "wt"))
    assert code == 2 and "is inside the repository" in text and "--workdir" in text
    code, text = _reproduce(store, capsys, monkeypatch, store["local"], "--workdir", str(tmp_path / "wt"))
    assert code == 2 and "has no artifact params/params.yaml" in text
    assert "uncommitted changes" in text  # the +dirty warning came first
    assert not (tmp_path / "wt").exists() and _git(store["root"], "worktree", "list").count("\n") == 0
    code, text = _reproduce(store, capsys, monkeypatch, store["local"], "--ignore", "(")
    assert code == 2 and "--ignore '(' is not a regular expression" in text
