"""The meta-training loop at scale: checkpoints and exact resume after a kill, several families,
multi-step compiled calls, sharding the population over several (host CPU) devices, progress."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from components.meta import CheckpointError, MetaTrainConfig, NonFiniteMetaParamsError, meta_train
from components.meta.checkpoint import read_header
from components.optimizers.registry import create_learned
from components.tasks import stack_datasets

REPO = Path(__file__).resolve().parents[3]

# A real learned optimizer (small_fc_lopt) on real PES state (image-MLP tasks on synthetic data):
# the checkpoint must carry Task pytrees, optimizer states and accumulators, not just the meta-params.
SETUP = textwrap.dedent(
    """
    import numpy as np, jax
    from components.meta import MetaTrainConfig, meta_train
    from components.optimizers.registry import create_learned
    from components.tasks import ImageMLPFamily, stack_datasets

    def problem(**overrides):
        rng = np.random.default_rng(0)
        x = rng.random((256, 4, 4, 1)).astype(np.float32)
        y = np.argmax(x.reshape(256, -1) @ rng.normal(size=(16, 10)), -1).astype(np.int32)
        family = ImageMLPFamily(("synthetic",), (8,), (4, 4, 1), 10, 16)
        cfg = dict(num_outer_steps=8, num_tasks=4, trunc_length=4, min_unroll=8, max_unroll=24, sigma=0.05,
                   outer_lr=1e-2, log_every=2, checkpoint_every=2)
        cfg.update(overrides)
        lopt = create_learned("small_fc_lopt", hidden_size=4)
        return lopt, family, stack_datasets([x], [y]), MetaTrainConfig(**cfg)
    """
)


def _problem(**overrides):
    scope: dict = {}
    exec(SETUP, scope)  # noqa: S102 - the same code the subprocesses run
    return scope["problem"](**overrides)


def _run_script(body: str, env_extra: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **env_extra}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run(
        [sys.executable, "-c", SETUP + textwrap.dedent(body)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_a_killed_run_resumes_to_the_same_meta_params(tmp_path):
    ckpt = tmp_path / "ckpt.npz"
    # 1. killed by SIGKILL (from the on_outer_step hook) after outer step 5: the last checkpoint is
    # step 4, step 5 is lost
    killed = _run_script(
        f"""
        import os, signal

        def kill_at_5(done, total):
            if 5 <= done < total:
                print(f"killing this process at outer step {{done}}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

        lopt, fam, data, cfg = problem()
        meta_train(lopt, fam, data, cfg, key=jax.random.PRNGKey(0), checkpoint_path={str(ckpt)!r}, fingerprint="f",
                   on_outer_step=kill_at_5)
        """,
        {},
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert "killing this process at outer step 5" in killed.stdout  # after step 5, before checkpoint 6
    assert read_header(ckpt)["step"] == 4
    assert not ckpt.with_name(ckpt.name + ".tmp").exists()
    # 2. resumed in a new process, it finishes the run
    resumed = _run_script(
        f"""
        lopt, fam, data, cfg = problem()
        r = meta_train(lopt, fam, data, cfg, key=jax.random.PRNGKey(0), checkpoint_path={str(ckpt)!r},
                       fingerprint="f", resume=True)
        np.savez({str(tmp_path / "resumed.npz")!r}, *[np.asarray(x) for x in jax.tree_util.tree_leaves(r.meta_params)])
        import json; print("CURVES", json.dumps(r.curves)); print("FROM", r.resumed_from)
        """,
        {},
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "FROM 4" in resumed.stdout and "resumed from" in resumed.stdout
    # 3. an uninterrupted run (here, in this process)
    lopt, fam, data, cfg = _problem()
    full = meta_train(lopt, fam, data, cfg, key=jax.random.PRNGKey(0), log=lambda m: None)
    with np.load(tmp_path / "resumed.npz") as f:
        got = [f[f"arr_{i}"] for i in range(len(f.files))]
    want = _leaves(full.meta_params)
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)  # bit-for-bit on CPU
    curves = json.loads(resumed.stdout.split("CURVES ", 1)[1].splitlines()[0])
    assert curves["meta_loss"] == [list(p) for p in full.curves["meta_loss"]]


def test_on_outer_step_is_called_after_every_compiled_call_and_its_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt.npz"
    lopt, fam, data, cfg = _problem(num_outer_steps=6, steps_per_call=2, log_every=2, checkpoint_every=4)
    calls = []

    def hook(done, total):
        calls.append((done, total, read_header(ckpt)["step"] if ckpt.exists() else None))

    meta_train(
        lopt, fam, data, cfg, key=jax.random.PRNGKey(0), log=lambda m: None, checkpoint_path=ckpt, on_outer_step=hook
    )
    # one call per compiled call of 2 outer steps; the checkpoints of steps 4 and 6 (the last) are
    # on disk when the hook runs
    assert calls == [(2, 6, None), (4, 6, 4), (6, 6, 6)]


def test_resume_refuses_a_checkpoint_of_other_settings_and_a_corrupt_file(tmp_path):
    ckpt = tmp_path / "ckpt.npz"
    lopt, fam, data, cfg = _problem(num_outer_steps=2)
    meta_train(
        lopt, fam, data, cfg, key=jax.random.PRNGKey(0), log=lambda m: None, checkpoint_path=ckpt, fingerprint="a"
    )
    with pytest.raises(CheckpointError, match="other settings"):
        meta_train(
            lopt,
            fam,
            data,
            cfg,
            key=jax.random.PRNGKey(0),
            log=lambda m: None,
            checkpoint_path=ckpt,
            fingerprint="b",
            resume=True,
        )
    with pytest.raises(CheckpointError, match="different configuration"):
        meta_train(
            create_learned("small_fc_lopt", hidden_size=8),
            fam,
            data,
            cfg,
            key=jax.random.PRNGKey(0),
            log=lambda m: None,
            checkpoint_path=ckpt,
            fingerprint="a",
            resume=True,
        )
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=str(ckpt)):
        meta_train(
            lopt,
            fam,
            data,
            cfg,
            key=jax.random.PRNGKey(0),
            log=lambda m: None,
            checkpoint_path=ckpt,
            fingerprint="a",
            resume=True,
        )


def test_several_outer_steps_per_call_and_several_families():
    lopt, fam, data, cfg = _problem(checkpoint_every=None, log_every=4)
    lines: list[str] = []
    one = meta_train(lopt, fam, data, cfg, key=jax.random.PRNGKey(1), log=lambda m: None)
    four = meta_train(
        lopt,
        fam,
        data,
        MetaTrainConfig(**{**cfg.__dict__, "steps_per_call": 4}),
        key=jax.random.PRNGKey(1),
        log=lines.append,
    )
    for a, b in zip(_leaves(one.meta_params), _leaves(four.meta_params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert one.inner_steps == four.inner_steps == 8 * 4 * 2 * 4
    assert any("4 outer step(s) per compiled call" in line for line in lines)
    bar = [line for line in lines if "outer/s" in line]
    assert bar and "inner/s" in bar[-1] and "ETA" in bar[-1] and "8/8 outer" in bar[-1]
    # two families (e.g. Celo's one per dataset): one estimator each, gradients averaged
    rng = np.random.default_rng(1)
    x2 = rng.random((128, 4, 4, 1)).astype(np.float32)
    data2 = stack_datasets([x2], [rng.integers(0, 10, 128).astype(np.int32)])
    two = meta_train(lopt, [fam, fam], [data, data2], cfg, key=jax.random.PRNGKey(1), log=lambda m: None)
    assert two.inner_steps == 2 * one.inner_steps
    assert all(np.all(np.isfinite(v)) for v in _leaves(two.meta_params))
    with pytest.raises(ValueError, match="one data per family"):
        meta_train(lopt, [fam, fam], [data], cfg, key=jax.random.PRNGKey(1), log=lambda m: None)


def test_the_population_is_sharded_over_several_host_devices():
    """Four host CPU devices: the PES state is split over them, and training matches one device."""
    out = _run_script(
        """
        from components.meta import PES, task_mesh
        assert jax.device_count() == 4, jax.devices()
        lopt, fam, data, cfg = problem(checkpoint_every=None, num_outer_steps=4)
        mesh = task_mesh(cfg.num_tasks)
        est = PES(cfg.num_tasks, cfg.trunc_length, cfg.min_unroll, cfg.max_unroll, cfg.sigma, mesh=mesh)
        theta = lopt.init_meta_params(jax.random.PRNGKey(0))
        st = est.init_state(lopt, theta, fam, jax.random.PRNGKey(1))
        g, st, aux = jax.jit(lambda s, k: est.gradient(lopt, theta, fam, s, data, k))(st, jax.random.PRNGKey(2))
        leaf = jax.tree_util.tree_leaves(st.inner.params)[0]
        print("DEVICES", len(leaf.sharding.device_set), leaf.sharding.shard_shape(leaf.shape))
        a = meta_train(lopt, fam, data, cfg, key=jax.random.PRNGKey(0), log=print)
        import dataclasses
        one_device = dataclasses.replace(cfg, shard_population=False)
        b = meta_train(lopt, fam, data, one_device, key=jax.random.PRNGKey(0), log=print)
        for x, y in zip(jax.tree_util.tree_leaves(a.meta_params), jax.tree_util.tree_leaves(b.meta_params)):
            # the same sums in another order: equal up to float rounding, amplified a little by Adam
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-3, atol=1e-5)
        print("MATCH")
        """,
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "DEVICES 4 (1," in out.stdout  # 4 tasks over 4 devices: one task per device
    assert "population sharded over 4 cpu devices" in out.stdout
    assert "MATCH" in out.stdout


def test_a_population_the_devices_do_not_divide_is_a_clear_error():
    from components.meta.sharding import task_mesh

    devices = [jax.devices()[0]] * 3  # stands for three devices
    with pytest.raises(ValueError, match="multiple of the 3 local devices"):
        task_mesh(4, devices)


def test_non_finite_meta_params_stop_the_run_before_they_are_checkpointed(tmp_path):
    lopt, family, data, cfg = _problem(outer_lr=3e38, num_outer_steps=6, checkpoint_every=1)
    path = tmp_path / "ckpt.npz"
    with pytest.raises(NonFiniteMetaParamsError, match=r"meta-parameters are inf/nan after outer step \d+/6") as err:
        meta_train(lopt, family, data, cfg, key=jax.random.PRNGKey(0), log=lambda _: None, checkpoint_path=path)
    assert "meta_train.outer_lr" in str(err.value) and "nothing was saved or registered" in str(err.value)
    failed_at = int(str(err.value).split("after outer step ")[1].split("/")[0])
    # checkpoints stop at the last finite step: the diverged meta-params are never written
    assert not path.exists() or read_header(path)["step"] == failed_at - 1
