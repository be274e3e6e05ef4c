"""Exact resume: a run killed at any moment and resumed gives the R matrix of the run that was never stopped,
bit for bit (CPU, state observations), for every method; and the lifecycle around it."""
from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from offline_data import collected, pretrain_debug

import harness.runner as runner
from harness import checkpoint
from harness.config import RunConfig
from harness.errors import HarnessError
from harness.lifecycle import RunLock
from harness.reporting import MlflowReporter
from harness.runner import resume_config, run_stream
from harness.streams import EvalSpec, StreamSpec, TaskSpec
from tasks.base import EnvConfig

QUIET = dict(echo=lambda *_: None)
# 100-frame episodes: several episodes per task, so a kill lands after env resets and mid-episode.
ENV = EnvConfig(obs_type="proprio", render_quality="fast", episode_frames=100)


class Kill(BaseException):
    """Stands for the process dying at that point (raised outside every handler of ordinary errors)."""


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return pretrain_debug(collected(tmp_path_factory), tmp_path_factory.mktemp("resume-pretrained"), updates=4,
                          obs_keys=["proprio"])


def _cfg(method: str, tmp_path, pretrained=None) -> RunConfig:
    tasks = ("walker-stand", "reach-v3") if method == "gsa" else ("cartpole-balance", "reach-v3")
    over: tuple[tuple[str, str], ...] = ()
    if method == "gsa":
        over = (("pretrained", str(pretrained)), ("agent.warmup_min_episodes", "0"))
    return RunConfig(stream=StreamSpec("exact", tuple(TaskSpec(t, 400) for t in tasks), EvalSpec(200, 2)),
                     method=method, seed=5, preset="debug", overrides=over, env=ENV, torch_threads=1,
                     checkpoint_every_frames=60, log_every_frames=50, video_frames=0, runs_dir=str(tmp_path / "runs"))


def _kill_at_env_step(monkeypatch, n: int) -> None:
    """Training envs raise Kill at their n-th step() (counted over the whole run)."""
    count = [0]
    make = runner.make_env

    def make_env(*a, **kw):
        env = make(*a, **kw)
        step = env.step

        def killing_step(action):
            count[0] += 1
            if count[0] == n:
                raise Kill(f"env step {n}")
            return step(action)
        env.step = killing_step
        return env
    monkeypatch.setattr(runner, "make_env", make_env)


def _kill_at_call(monkeypatch, owner, name: str, n: int) -> None:
    """``owner.name`` raises Kill at its n-th call."""
    count, original = [0], getattr(owner, name)

    def wrapped(*a, **kw):
        count[0] += 1
        if count[0] == n:
            raise Kill(f"{name} call {n}")
        return original(*a, **kw)
    monkeypatch.setattr(owner, name, wrapped)


def _resume(run_id: str):
    rep = MlflowReporter()
    return run_stream(resume_config(run_id, rep), resume=run_id, reporter=rep, **QUIET)


def _run_id(tmp_path) -> str:
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir.name


@pytest.mark.parametrize("method", ["random", "drqv2", "dreamer", "packnet", "gsa",
                                    "l2", "ewc", "mas", "agem", "replay", "multitask"])
def test_killed_anywhere_and_resumed_gives_the_same_R_bit_for_bit(method, mlflow_uri, tmp_path, monkeypatch,
                                                                 request):
    pre = request.getfixturevalue("pretrained") if method == "gsa" else None
    whole = run_stream(_cfg(method, tmp_path / "whole", pre), **QUIET)

    cfg = _cfg(method, tmp_path / "killed", pre)
    # 1. mid-task, mid-episode (after two env resets), between two checkpoints
    with monkeypatch.context() as m:
        _kill_at_env_step(m, 130)
        with pytest.raises(Kill):
            run_stream(cfg, **QUIET)
    run_id = _run_id(tmp_path / "killed")
    ckpt = checkpoint.load(tmp_path / "killed" / "runs" / run_id / "checkpoint.pt")["progress"]
    assert ckpt["task_index"] == 0 and 0 < ckpt["task_env_frames"] < 260 and ckpt["episode"]["actions"], ckpt
    # 2. right after the task-0 boundary checkpoint, before its artifacts and the task run's end
    with monkeypatch.context() as m:
        _kill_at_call(m, runner._Run, "log_stream_artifacts", 1)
        with pytest.raises(Kill):
            _resume(run_id)
    assert checkpoint.load(tmp_path / "killed" / "runs" / run_id / "checkpoint.pt")["progress"]["task_index"] == 1
    # 3. during an evaluation: task 1's first, on its second task
    with monkeypatch.context() as m:
        _kill_at_call(m, runner, "evaluate", 2)
        with pytest.raises(Kill):
            _resume(run_id)
    res = _resume(run_id)

    assert res.R.tobytes() == whole.R.tobytes(), f"{method}: resumed R\n{res.R}\n!= uninterrupted R\n{whole.R}"
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "FINISHED"
    kids = client.search_runs([client.get_run(run_id).info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert sorted(k.data.tags["task_index"] for k in kids) == ["0", "1"]
    assert all(k.info.status == "FINISHED" for k in kids)
    # nothing logged twice: one point per (key, step) for evaluation and R rows
    for key in ("eval/0-" + cfg.stream.tasks[0].name + "/score", "eval/mean_score"):
        steps = [p.step for p in client.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)
    whole_steps = [p.step for p in client.get_metric_history(whole.run_id, "eval/mean_score")]
    assert [p.step for p in client.get_metric_history(run_id, "eval/mean_score")] == whole_steps


def test_a_kill_before_the_first_checkpoint_still_resumes(mlflow_uri, tmp_path, monkeypatch):
    cfg = _cfg("random", tmp_path)
    with monkeypatch.context() as m:
        _kill_at_call(m, runner._Run, "save", 1)
        with pytest.raises(Kill):
            run_stream(cfg, **QUIET)
    run_id = _run_id(tmp_path)
    assert not (tmp_path / "runs" / run_id / "checkpoint.pt").exists()
    res = _resume(run_id)
    assert res.R.tobytes() == run_stream(_cfg("random", tmp_path / "b"), **QUIET).R.tobytes()


def test_one_writer_per_run(mlflow_uri, tmp_path, monkeypatch):
    cfg = _cfg("random", tmp_path)
    with monkeypatch.context() as m:
        _kill_at_env_step(m, 50)
        with pytest.raises(Kill):
            run_stream(cfg, **QUIET)
    run_id = _run_id(tmp_path)
    lock = RunLock(tmp_path / "runs" / run_id, run_id).acquire()   # another process resuming it right now
    try:
        with pytest.raises(HarnessError, match=f"run {run_id} is being written by pid"):
            _resume(run_id)
    finally:
        lock.release()
    # a RUNNING run whose heartbeat names a live process (this one) is refused before anything changes
    client = MlflowClient()
    client.update_run(run_id, "RUNNING")
    with pytest.raises(HarnessError, match="RUNNING and its process looks alive"):
        resume_config(run_id, MlflowReporter())
    client.set_terminated(run_id, "FAILED")
    assert _resume(run_id).R.shape == (2, 2)
    with pytest.raises(HarnessError, match="FINISHED already"):
        _resume(run_id)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_run_started_on_a_gpu_continues_on_a_cpu_node_with_device(mlflow_uri, tmp_path, monkeypatch):
    """A run killed on a GPU node and resumed where there is none: the error names --device cpu, which
    --resume honours; nothing is lost in between."""
    import json

    from click.testing import CliRunner

    import cli
    with monkeypatch.context() as m:
        _kill_at_env_step(m, 130)
        with pytest.raises(Kill):
            run_stream(_cfg("drqv2", tmp_path), **QUIET)
    run_id = _run_id(tmp_path)
    config = tmp_path / "runs" / run_id / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"device": "cuda"}))   # as a GPU node wrote it
    res = CliRunner().invoke(cli.main, ["run-stream", "--resume", run_id])
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit), res.output
    assert "CUDA is not available here; use --device cpu" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli.main, ["run-stream", "--resume", run_id, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "continuing on --device cpu (the run was started with --device cuda)" in res.output
    assert f"resuming run {run_id} at task 1" in res.output or f"resuming run {run_id} at task 0" in res.output
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"


def test_resume_of_a_task_run_names_its_parent(mlflow_uri, tmp_path):
    res = run_stream(_cfg("random", tmp_path), **QUIET)
    client = MlflowClient()
    kid = client.search_runs([client.get_run(res.run_id).info.experiment_id],
                             f"tags.mlflow.parentRunId = '{res.run_id}'")[0]
    with pytest.raises(HarnessError, match=f"task run .* of run '{res.run_id}'; resume its parent: --resume {res.run_id}"):
        resume_config(kid.info.run_id, MlflowReporter())


def test_a_damaged_config_json_is_a_clear_error(mlflow_uri, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        _kill_at_env_step(m, 50)
        with pytest.raises(Kill):
            run_stream(_cfg("random", tmp_path), **QUIET)
    run_id = _run_id(tmp_path)
    (tmp_path / "runs" / run_id / "config.json").write_text('{"stream": ')
    with pytest.raises(HarnessError, match="config.json is damaged"):
        resume_config(run_id, MlflowReporter())


def test_replay_keeps_the_open_episode_across_a_checkpoint(tmp_path):
    from harness.replay import EpisodeReplay
    from harness.steps import Step
    r = EpisodeReplay(tmp_path / "r")
    for t in range(5):
        r.add(Step({"proprio": np.full(3, t, np.float32)}, np.full(2, t, np.float32), float(t), t == 0, t == 4, False))
    for t in range(3):   # an open episode
        r.add(Step({"proprio": np.full(3, 10 + t, np.float32)}, np.full(2, t, np.float32), 1.0, t == 0, False, False))
    saved = r.state_dict()
    back = EpisodeReplay(tmp_path / "r")
    back.load_state_dict(saved)
    assert len(back) == 8 and back.episodes == 1
    for k in r.keys():
        assert np.array_equal(back._data[k][:8], r._data[k][:8]), k
    step = Step({"proprio": np.zeros(3, np.float32)}, np.zeros(2, np.float32), 0.0, False, True, False)
    r.add(step)
    back.add(step)
    assert np.array_equal(back._data["prev_action"][:9], r._data["prev_action"][:9])
