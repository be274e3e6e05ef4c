"""End to end on real envs with tiny budgets: the runner, MLflow layout, checkpoints and resume."""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from harness import checkpoint
from harness.config import RunConfig
from harness.errors import HarnessError
from harness.reporting import MlflowReporter
from harness.runner import NonFiniteLossError, resume_config, run_stream
from harness.streams import EvalSpec, StreamSpec, TaskSpec
from methods import METHODS
from methods.base import MethodSpec
from methods.random_policy import RandomConfig, RandomMethod
from tasks.base import EnvConfig

TWO_TASKS = StreamSpec("t2", (TaskSpec("cartpole-balance", 400), TaskSpec("reach-v3", 400)), EvalSpec(200, 2))


def _cfg(stream=TWO_TASKS, method="random", obs="proprio", action_repeat=2, **kw):
    return RunConfig(stream=stream, method=method, seed=3,
                     env=EnvConfig(obs_type=obs, render_quality="fast", action_repeat=action_repeat),
                     checkpoint_every_frames=300, log_every_frames=100, video_frames=20, **kw)


def _children(client, run_id):
    run = client.get_run(run_id)
    runs = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    return sorted(runs, key=lambda r: int(r.data.tags["task_index"]))


def test_random_run_reports_everything_to_mlflow(mlflow_uri, tmp_path):
    res = run_stream(_cfg(runs_dir=str(tmp_path / "runs")), echo=lambda *_: None)
    client = MlflowClient(mlflow_uri)
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "stream/t2"
    tags = run.data.tags
    assert tags["method"] == "random" and tags["stream"] == "t2" and tags["seed"] == "3"
    assert tags["git_commit"] and tags["version.torch"] and tags["version.mujoco"] == "3.3.0"
    assert tags["host.cpu"] and tags["host.cpu_flags"]   # the machine: float rounding differs between CPUs
    params = run.data.params
    assert params["stream.tasks"].startswith("[{'name': 'cartpole-balance'")
    assert params["run.env.obs_type"] == "proprio" and params["run.env.action_pad_dim"] == "4"
    # Evaluation on ALL tasks, periodically: a curve per task stepped by global env frames.
    hist = client.get_metric_history(res.run_id, "eval/1-reach-v3/score")
    assert [m.step for m in hist] == [200, 400, 600, 800]
    assert res.R.shape == (2, 2) and np.all((res.R >= 0) & (res.R <= 1))
    for key in ("cl/average_performance", "cl/forgetting", "final/0-cartpole-balance"):
        assert key in run.data.metrics
    assert run.data.metrics["cl/average_performance"] == pytest.approx(res.R[-1].mean())
    arts = {a.path for a in client.list_artifacts(res.run_id)}
    assert {"R_matrix.json", "learning_curves.png", "config.json"} <= arts
    r_json = json.loads(Path(client.download_artifacts(res.run_id, "R_matrix.json", str(tmp_path))).read_text())
    assert np.allclose(np.array(r_json["R"]) / 100, res.R)
    # One nested run per task, with train metrics and an evaluation video.
    kids = _children(client, res.run_id)
    assert [k.data.tags["task"] for k in kids] == ["cartpole-balance", "reach-v3"]
    for k in kids:
        assert k.info.status == "FINISHED"
        assert "train/episode_return" in k.data.metrics or "train/episodes" in k.data.metrics
        videos = [a.path for a in client.list_artifacts(k.info.run_id, "videos")]
        assert len(videos) == 1 and videos[0].endswith(".gif")
    assert "train/episode_success" in kids[1].data.metrics  # Meta-World reports success


def _tensors(state, prefix=""):
    """Every tensor of a (nested) method state, by path."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, list) else ()
    return {k: v for key, sub in items for k, v in _tensors(sub, f"{prefix}/{key}").items()}


@pytest.mark.parametrize("method,frames,kw", [
    ("random", 200, {}),
    ("drqv2", 400, {"preset": "debug"}),                                            # updates after 100 frames
    ("dreamer", 400, {"preset": "debug", "overrides": (("warmup_min_episodes", "0"),)}),  # ... after 200
])
def test_same_seed_same_results(mlflow_uri, tmp_path, method, frames, kw):
    """A seed fixes a run on the CPU, learning included: the same scores and bit-identical weights."""
    stream = StreamSpec("det", (TaskSpec("cartpole-swingup", frames),), EvalSpec(frames, 2))
    a, b = (run_stream(_cfg(stream, method, runs_dir=str(tmp_path / d), torch_threads=1, **kw), echo=lambda *_: None)
            for d in ("a", "b"))
    assert np.array_equal(a.R, b.R)
    sa, sb = (checkpoint.load(r.run_dir / checkpoint.CHECKPOINT_FILE)["method"] for r in (a, b))
    assert method == "random" or sa["grad_updates"] > 0, "the run must have learned something"
    wa, wb = _tensors(sa), _tensors(sb)
    assert wa.keys() == wb.keys() and (method == "random" or len(wa) > 10)
    assert not [k for k in wa if not torch.equal(wa[k], wb[k])], "weights differ between two runs of one seed"


@dataclass(frozen=True)
class _CrashConfig:
    crash_at_global_frames: int = 10**9
    nan_at_global_frames: int = 10**9


class _CrashingRandom(RandomMethod):
    """The real random method, made to fail at a given frame (a crash or a NaN loss)."""

    def __init__(self, cfg, ctx):
        super().__init__(RandomConfig(), ctx)
        self.crash_cfg = cfg
        self.task_starts: list[int] = []

    def on_task_start(self, task):
        self.task_starts.append(task.index)

    def update(self, env_frames):
        if env_frames >= self.crash_cfg.crash_at_global_frames:
            raise RuntimeError("simulated crash")
        return {"fake_loss": float("nan") if env_frames >= self.crash_cfg.nan_at_global_frames else 0.5}


@pytest.fixture
def crashing_method():
    METHODS.register("crashing-random", MethodSpec(_CrashConfig, _CrashingRandom))
    yield "crashing-random"
    METHODS.unregister("crashing-random")


def test_crash_then_resume_continues_the_same_run(mlflow_uri, tmp_path, crashing_method):
    cfg = _cfg(method=crashing_method, overrides=(("crash_at_global_frames", "600"),),
               runs_dir=str(tmp_path / "runs"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_stream(cfg, echo=lambda *_: None)
    client = MlflowClient(mlflow_uri)
    (parent,) = [r for r in client.search_runs([client.get_experiment_by_name("stream/t2").experiment_id],
                                               "tags.method = 'crashing-random'")
                 if "mlflow.parentRunId" not in r.data.tags]
    run_id = parent.info.run_id
    assert parent.info.status == "FAILED"
    kids = _children(client, run_id)
    assert [k.info.status for k in kids] == ["FINISHED", "FAILED"]  # task 0's results are intact
    ckpt = checkpoint.load(Path(parent.data.tags["checkpoint_dir"]) / "checkpoint.pt")
    assert ckpt["progress"]["task_index"] == 1 and len(ckpt["progress"]["R"]) == 1

    # Resume with the crash moved out of the way: the config comes from the run, not the command line.
    rep = MlflowReporter()
    resumed = resume_config(run_id, rep)
    assert resumed.stream == TWO_TASKS.__class__(**{**TWO_TASKS.__dict__, "source": resumed.stream.source})
    resumed = resumed.__class__(**{**resumed.__dict__, "overrides": ()})
    res = run_stream(resumed, resume=run_id, reporter=rep, echo=lambda *_: None)
    assert res.run_id == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    kids = _children(client, run_id)
    assert len(kids) == 2 and all(k.info.status == "FINISHED" for k in kids)
    assert res.R.shape == (2, 2)
    steps = [m.step for m in client.get_metric_history(run_id, "eval/0-cartpole-balance/score")]
    assert steps == [200, 400, 600, 800]  # task 0 was not trained or evaluated again


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(mlflow_uri, tmp_path, crashing_method):
    cfg = _cfg(method=crashing_method, overrides=(("nan_at_global_frames", "500"),),
               runs_dir=str(tmp_path / "runs"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite fake_loss=nan at global env frame 50\d.*last good checkpoint"):
        run_stream(cfg, echo=lambda *_: None)
    (run_dir,) = (tmp_path / "runs").iterdir()
    ckpt = checkpoint.load(run_dir / "checkpoint.pt")
    assert ckpt["progress"]["task_index"] == 1  # the task-0 boundary checkpoint survives


def test_missing_or_corrupt_checkpoint_is_a_clear_error(mlflow_uri, tmp_path):
    res = run_stream(_cfg(StreamSpec("one", (TaskSpec("cartpole-balance", 200),), EvalSpec(200, 1)),
                          runs_dir=str(tmp_path / "runs")), echo=lambda *_: None)
    with pytest.raises(HarnessError, match="FINISHED already; there is nothing to resume"):
        resume_config(res.run_id, MlflowReporter())
    MlflowClient(mlflow_uri).set_terminated(res.run_id, "FAILED")   # as if it had crashed at its end
    ckpt = res.run_dir / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(HarnessError, match="unreadable.*truncated"):
        resume_config(res.run_id, MlflowReporter())
    ckpt.unlink()
    with pytest.raises(HarnessError, match="missing checkpoint"):
        resume_config(res.run_id, MlflowReporter())
    with pytest.raises(HarnessError, match="no MLflow run 'deadbeef'"):
        resume_config("deadbeef", MlflowReporter())


def test_bad_method_config_fails_before_mlflow(mlflow_uri, tmp_path):
    with pytest.raises(HarnessError, match="unknown config field 'lr' for method 'random'; valid: low, high"):
        run_stream(_cfg(overrides=(("lr", "1"),)), echo=lambda *_: None)
    with pytest.raises(HarnessError, match="unknown preset 'huge'"):
        run_stream(_cfg(preset="huge"), echo=lambda *_: None)
    assert not (tmp_path / "mlflow.db").exists()


def test_every_registered_method_imports():
    for entry in METHODS:
        spec = METHODS.load(entry.name)
        assert isinstance(spec, MethodSpec), entry.name


def test_forward_transfer_uses_single_task_reference_runs(mlflow_uri, tmp_path):
    quiet = lambda *_: None  # noqa: E731
    first = run_stream(_cfg(runs_dir=str(tmp_path / "runs")), echo=quiet)
    assert "cl/forward_transfer" not in MlflowClient(mlflow_uri).get_run(first.run_id).data.metrics
    for t in TWO_TASKS.tasks:  # single-task references with the same budget, from scratch
        run_stream(_cfg(StreamSpec(f"ref-{t.name}", (t,), TWO_TASKS.eval), runs_dir=str(tmp_path / "runs")),
                   echo=quiet)
    res = run_stream(_cfg(runs_dir=str(tmp_path / "runs")), echo=quiet)
    ft = MlflowClient(mlflow_uri).get_run(res.run_id).data.metrics.get("cl/forward_transfer")
    assert ft is not None and np.isfinite(ft)


def test_forward_transfer_matches_only_references_of_the_same_learning_problem(mlflow_uri, tmp_path):
    quiet = lambda *_: None  # noqa: E731
    runs = str(tmp_path / "runs")
    for t in TWO_TASKS.tasks:   # same task and budget, but another action repeat or method config: no match
        run_stream(_cfg(StreamSpec(f"ref-{t.name}", (t,), TWO_TASKS.eval), runs_dir=runs, action_repeat=4),
                   echo=quiet)
        run_stream(_cfg(StreamSpec(f"ref-{t.name}", (t,), TWO_TASKS.eval), runs_dir=runs,
                        overrides=(("low", "-0.5"),)), echo=quiet)
    res = run_stream(_cfg(runs_dir=runs), echo=quiet)
    run = MlflowClient(mlflow_uri).get_run(res.run_id)
    assert "cl/forward_transfer" not in run.data.metrics
    assert run.data.tags["ft_reference.0-cartpole-balance"] == "none"
    ref = run_stream(_cfg(StreamSpec("ref-cartpole-balance", (TWO_TASKS.tasks[0],), TWO_TASKS.eval), runs_dir=runs),
                     echo=quiet)
    res = run_stream(_cfg(runs_dir=runs), echo=quiet)
    tags = MlflowClient(mlflow_uri).get_run(res.run_id).data.tags
    assert tags["ft_reference.0-cartpole-balance"] == ref.run_id
    assert tags["ft_reference.1-reach-v3"] == "none"
