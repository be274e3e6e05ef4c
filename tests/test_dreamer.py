"""Dreamer end to end through the real runner and real envs (debug preset, tiny budgets)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from harness import checkpoint
from harness.config import RunConfig
from harness.errors import HarnessError
from harness.runner import NonFiniteLossError, run_stream
from harness.streams import EvalSpec, StreamSpec, TaskSpec
from methods import METHODS
from methods.backbone.checkpoint import CheckpointMismatchError
from methods.base import MethodContext, TaskContext, resolve_config
from methods.dreamer import Dreamer, DreamerConfig
from tasks.base import EnvConfig

# Short episodes (200 frames = 100 agent steps) so the debug warm-up (1 episode) ends early.
ENV = dict(render_quality="fast", episode_frames=200)
TWO_TASKS = StreamSpec("d2", (TaskSpec("cartpole-balance", 600), TaskSpec("reacher-easy", 600)), EvalSpec(300, 2))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(tmp_path, obs="proprio", stream=TWO_TASKS, overrides=(), **kw):
    return RunConfig(stream=stream, method="dreamer", preset="debug", seed=1, overrides=overrides,
                     env=EnvConfig(obs_type=obs, **ENV), runs_dir=str(tmp_path / "runs"), torch_threads=1,
                     checkpoint_every_frames=400, log_every_frames=100, video_frames=0, **kw)


@pytest.mark.parametrize("obs", ["proprio", "pixels"])
def test_dreamer_trains_on_a_two_task_stream(mlflow_uri, tmp_path, obs):
    res = run_stream(_cfg(tmp_path, obs), echo=lambda *_: None)
    assert res.R.shape == (2, 2) and np.all(np.isfinite(res.R))
    client = MlflowClient(mlflow_uri)
    kids = client.search_runs([client.get_run(res.run_id).info.experiment_id],
                              f"tags.mlflow.parentRunId = '{res.run_id}'")
    for kid in kids:
        metrics = kid.data.metrics
        for key in ("wm/loss", "actor/loss", "critic/loss", "wm/reward_loss", f"wm/{obs}_loss"):
            assert key in metrics and math.isfinite(metrics[key]), (key, sorted(metrics))
        assert metrics["train/grad_updates"] > 0
    assert client.get_run(res.run_id).data.params["method_config.model.deter"] == "32"
    # each task's finished episodes are on disk in the method's work dir
    replay = res.run_dir / "method" / "replay"
    assert sorted(p.name for p in replay.iterdir()) == ["task000", "task001"]
    assert len(list((replay / "task001").glob("*.npz"))) == 3  # 600 frames = 3 episodes of 200


def test_checkpoint_round_trip_reloads_weights_and_replay(mlflow_uri, tmp_path):
    res = run_stream(_cfg(tmp_path, stream=StreamSpec("d1", (TaskSpec("cartpole-balance", 800),), EvalSpec(800, 1))),
                     echo=lambda *_: None)
    payload = checkpoint.load(res.run_dir / checkpoint.CHECKPOINT_FILE)  # torch.load(weights_only=True)
    spec = METHODS.load("dreamer")
    cfg = resolve_config(spec, "dreamer", "debug")
    ctx = MethodContext(("cartpole-balance",), {"proprio": ((5,), "float32")}, 1, 1, "cpu", res.run_dir / "method")
    task = TaskContext(0, "cartpole-balance", "cartpole", "dmc", 800, np.ones(1, np.float32), 2)
    a, b = Dreamer(cfg, ctx), Dreamer(cfg, ctx)
    a.load_state_dict(payload["method"])
    a.on_task_start(task)  # the same task again: a resumed run keeps its replay
    assert a.replay is not None and a.replay.episodes == 4 and len(a.replay) == 4 * 101
    state = a.state_dict()
    torch.save(state, tmp_path / "m.pt")
    b.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    obs = {"proprio": np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32),
           "is_first": np.ones(3, bool)}
    torch.manual_seed(0)  # latents are sampled when acting
    act_a, _ = a.act(obs, None, task, explore=False)
    torch.manual_seed(0)
    act_b, _ = b.act(obs, None, task, explore=False)
    assert np.array_equal(act_a, act_b) and act_a.shape == (3, 1)
    assert b.grad_updates == a.grad_updates > 0


def test_checkpoint_from_another_preset_or_embodiment_set_is_a_clear_error(tmp_path):
    spec = METHODS.load("dreamer")
    ctx = MethodContext(("cartpole-balance",), {"proprio": ((5,), "float32")}, 1, 0, "cpu", tmp_path)
    state = Dreamer(resolve_config(spec, "dreamer", "debug"), ctx).state_dict()
    wider = Dreamer(resolve_config(spec, "dreamer", "debug", {"model.deter": "64"}), ctx)
    with pytest.raises(CheckpointMismatchError, match=r"model\.deter=32 in the checkpoint but 64 here"):
        wider.load_state_dict(state)
    other = dataclasses.replace(ctx, action_dim=6, obs_spec={"proprio": ((24,), "float32")})
    with pytest.raises(CheckpointMismatchError, match=r"action_dim=1 in the checkpoint but 6 here.*proprio"):
        Dreamer(resolve_config(spec, "dreamer", "debug"), other).load_state_dict(state)


def test_nan_loss_stops_the_run_and_keeps_the_checkpoint(mlflow_uri, tmp_path):
    cfg = _cfg(tmp_path, stream=StreamSpec("dnan", (TaskSpec("cartpole-balance", 800),), EvalSpec(800, 1)),
               overrides=(("model.lr", "1e30"),))
    pattern = r"non-finite (wm|actor|critic)/loss=(nan|inf).*at global env frame .*last good checkpoint"
    with pytest.raises(NonFiniteLossError, match=pattern):
        run_stream(cfg, echo=lambda *_: None)
    (run_dir,) = (tmp_path / "runs").iterdir()
    payload = checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)
    weights = payload["method"]["world_model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_config_defaults_are_the_papers():
    cfg = DreamerConfig()
    assert (cfg.batch_size, cfg.seq_len, cfg.train_ratio, cfg.warmup_env_frames) == (16, 64, 256.0, 15_000)
    assert cfg.updates_per_agent_step == 0.25
    ac = cfg.ac
    assert (ac.horizon, ac.gamma, ac.lam, ac.entropy, ac.slow_critic_fraction) == (16, 0.99, 0.95, 1e-4, 0.02)
    assert (ac.actor_lr, ac.critic_lr, cfg.model.lr, cfg.model.eps, cfg.model.grad_clip) == (8e-5, 8e-5, 1e-4, 1e-5, 100.0)
    assert (cfg.model.stoch, cfg.model.classes, cfg.model.blocks, cfg.model.cnn_depth) == (32, 96, 8, 96)


def test_continual_replay_keeps_earlier_tasks_for_the_world_model_but_not_the_reward_head(mlflow_uri, tmp_path):
    """reset_replay_each_task=False (GSA's continual setting): task 0's replay is kept, restored from the
    checkpoint, fills past_fraction of each batch, and its rows (rewards of another task) get no reward loss."""
    from harness.runner import _obs_spec, prepare
    cfg = _cfg(tmp_path, overrides=(("reset_replay_each_task", "False"),))
    res = run_stream(cfg, echo=lambda *_: None)
    state = checkpoint.load(res.run_dir / checkpoint.CHECKPOINT_FILE)["method"]
    assert [r["dir"] for r in state["past_replays"]] == ["replay/task000"]
    cfg, infos, spec, mcfg = prepare(cfg)
    ctx = MethodContext(("cartpole-balance", "reacher-easy"), _obs_spec(cfg.env), int(cfg.env.action_pad_dim), 1,
                        "cpu", res.run_dir / "method")
    d = spec.build(mcfg, ctx)
    d.load_state_dict(state)
    assert len(d.past) == 1 and len(d.past[0]) == len(d.replay) == 3 * 101   # 3 episodes of 100 agent steps each
    batch = d.sample_batch()
    past = batch["source"] == 1
    assert batch["source"].shape == (4,) and past.sum() == 1            # debug batch 4 x 0.25
    # The past row is cartpole's (5-d state zero-padded to reacher's 6), the others reacher's.
    assert not batch["proprio"][past][..., 5].any() and batch["proprio"][~past][..., 5].any()
    seen = {}
    loss = d.wm.loss

    def spy(b, **kw):
        seen["mask"] = kw["reward_mask"].cpu().numpy().copy()
        return loss(b, **kw)
    d.wm.loss = spy
    metrics = d.train_step()
    assert seen["mask"].tolist().count(True) == 3 and metrics["wm/past_rows"] == 1.0
    with pytest.raises(HarnessError, match="past_fraction"):
        DreamerConfig(past_fraction=1.0)
