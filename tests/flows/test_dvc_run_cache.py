"""DVC run-cache glue (flows/dvc_glue.py) on a real two-state DVC repository: a stage is restored only
when its current inputs ran before, with exactly the outputs of that run, and the lock then matches."""

import subprocess

from conftest import BIN, project_env

from flows import dvc_glue

CMD = "cat in.txt in.txt > out.txt"  # out.txt: the input twice


def _repo(tmp_path, mirror):
    root = tmp_path / "repo"
    root.mkdir()
    env = project_env(root, mirror)
    (root / "in.txt").write_text("1")
    (root / "dvc.yaml").write_text(f"stages:\n  double:\n    cmd: {CMD}\n    deps: [in.txt]\n    outs: [out.txt]\n")
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"], [str(BIN / "dvc"), "repro", "-q"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return root, env


def test_restore_only_what_ran_with_the_same_inputs(tmp_path, mirror, monkeypatch):
    root, env = _repo(tmp_path, mirror)
    monkeypatch.chdir(root)
    assert (root / "out.txt").read_text() == "11"
    first = dvc_glue.run_cache_key(dvc_glue.open_repo(root), "double")
    assert first

    (root / "in.txt").write_text("2")  # new inputs: nothing cached, the old outputs must stay put
    repo = dvc_glue.open_repo(root)
    second = dvc_glue.run_cache_key(repo, "double")
    assert second and second != first
    assert dvc_glue.is_changed(repo, "double")
    assert not dvc_glue.restore_stage(repo, "double")
    assert (root / "out.txt").read_text() == "11"
    subprocess.run([str(BIN / "dvc"), "repro", "-q"], cwd=root, env=env, check=True, capture_output=True)
    assert (root / "out.txt").read_text() == "22"

    (root / "in.txt").write_text("1")  # back to the first inputs: restored, not run
    repo = dvc_glue.open_repo(root)
    assert dvc_glue.run_cache_key(repo, "double") == first
    assert dvc_glue.restore_stage(repo, "double")
    assert (root / "out.txt").read_text() == "11"
    assert not dvc_glue.is_changed(dvc_glue.open_repo(root), "double")  # dvc.lock records it
