"""GSA fine-tuning (Algorithm 1) and its ablations, on real collected data, a real pre-trained world model
(debug size), a real faiss index, real environments and a real MLflow store."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from offline_data import collected, pretrain_debug

from harness import checkpoint
from harness.config import RunConfig
from harness.errors import HarnessError
from harness.offline import open_dataset
from harness.runner import prepare, run_stream
from harness.streams import EvalSpec, StreamSpec, TaskSpec
from methods import METHODS
from methods.backbone.checkpoint import CheckpointMismatchError, save_world_model
from methods.backbone.world_model import WorldModel
from methods.base import MethodContext, Step, TaskContext, resolve_config
from methods.gsa.pretrain import load_pretrained
from tasks.base import EnvConfig, make_env
from tasks.catalog import TASKS

ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(echo=lambda *_: None)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """walker/cheetah/sawyer data (tests/offline_data.py), a debug world model on its proprio states, the index."""
    return pretrain_debug(collected(tmp_path_factory), tmp_path_factory.mktemp("gsa-pretrained"), updates=6,
                          obs_keys=["proprio"])


def _stream(*tasks, frames=600, every=600):
    return StreamSpec("gsa-test", tuple(TaskSpec(t, frames) for t in tasks), EvalSpec(every, 1))


def _cfg(pretrained, method="gsa", tasks=("walker-stand", "reach-v3"), overrides=(), obs="proprio", preset="debug",
         **kw):
    return RunConfig(stream=_stream(*tasks), method=method, preset=preset,
                     overrides=(("pretrained", str(pretrained)), ("agent.warmup_min_episodes", "0"), *overrides),
                     env=EnvConfig(obs_type=obs, render_quality="fast"), torch_threads=1, video_frames=0, **kw)


def _method(pretrained, tmp_path, method="gsa", tasks=("walker-stand",), overrides=()):
    """A GSA-family method built as the runner builds it (same env padding), and the task contexts."""
    cfg, infos, spec, mcfg = prepare(_cfg(pretrained, method, tasks, overrides))
    env_cfg = cfg.env
    ctx = MethodContext(tuple(tasks), {"proprio": ((env_cfg.proprio_pad_dim,), "float32")}, env_cfg.action_pad_dim, 0,
                        "cpu", tmp_path / "work")
    tctx = []
    for i, info in enumerate(infos):
        mask = np.zeros(env_cfg.action_pad_dim, np.float32)
        mask[: info.action_dim] = 1
        tctx.append(TaskContext(i, info.name, info.embodiment, info.suite, 600, mask, 2))
    return spec.build(mcfg, ctx), tctx, env_cfg


def _drive(m, task, env_cfg, steps, seed=0):
    """Real env steps through act/observe/update, as the runner does; returns the first observation."""
    env = make_env(task.name, env_cfg, seed=seed)
    obs, reward, first, state, first_obs = env.reset(), 0.0, True, None, None
    first_obs = obs
    try:
        for _ in range(steps):
            a, state = m.act({k: v[None] for k, v in obs.items()} | {"is_first": np.array([first])}, state, task, True)
            m.observe(Step(obs, a[0], reward, first, False, False))
            res = env.step(a[0])
            obs, reward, first = res.obs, res.reward, False
            if res.terminated or res.truncated:
                m.observe(Step(obs, np.zeros_like(a[0]), reward, False, True, res.terminated))
                obs, reward, first, state = env.reset(), 0.0, True, None
            m.update(0)
    finally:
        env.close()
    return first_obs


# ----------------------------------------------------------------------------- the whole method, through the runner

def test_gsa_stream_logs_retrieval_bc_and_guidance_to_mlflow(mlflow_uri, pretrained, tmp_path):
    res = run_stream(_cfg(pretrained), **QUIET)
    client = mlflow.MlflowClient(mlflow_uri)
    children = {r.info.run_name: r for r in client.search_runs(
        [client.get_experiment_by_name("stream/gsa-test").experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{res.run_id}'")}
    assert set(children) == {"0-walker-stand", "1-reach-v3"}
    for name, run in children.items():
        index, task = name.split("-", 1)
        m = run.data.metrics
        # k = 8 (debug); the data holds 4 walker and 2 sawyer trajectories (tests/offline_data.py)
        n = {"walker-stand": 4, "reach-v3": 2}[task]
        assert m["retrieval/count"] == n and m["retrieval/distance_min"] <= m["retrieval/distance_max"]
        assert np.isfinite(m["bc/final_loss"]) and 0 < m["task_end/bc_share"] <= 1
        assert "guidance/bc_step" in m and "guidance/prob" in m
        path = client.download_artifacts(run.info.run_id, f"retrieval/task{int(index):02d}-{task}.json", str(tmp_path))
        got = json.loads(Path(path).read_text())
        # Retrieval returns the task's embodiment only (walker-stand: walker, never cheetah; reach: sawyer).
        assert {t["embodiment"] for t in got["trajectories"]} == {TASKS.get(task).embodiment}
        assert got["count"] == len(got["trajectories"]) == n and sum(got["by_policy"].values()) == n
    # The rehearsal rows did enter world-model batches after warm-up.
    assert children["1-reach-v3"].data.metrics["task_end/grad_updates"] > 0
    # The generalist it started from, by its weights: the same digest for the same model saved elsewhere.
    from methods.gsa.pretrain import WORLD_MODEL_FILE, weights_digest
    digest = client.get_run(res.run_id).data.tags["pretrained.weights_sha256"]
    moved = tmp_path / "moved" / "wm.pt"
    moved.parent.mkdir()
    torch.save(torch.load(Path(pretrained) / WORLD_MODEL_FILE, weights_only=True), moved)
    assert len(digest) == 64 and weights_digest(moved) == digest
    payload = torch.load(moved, weights_only=True)
    next(iter(payload["world_model"].values())).view(-1)[0] += 1   # one weight changed: another model
    torch.save(payload, moved)
    assert weights_digest(moved) != digest
    # ... and the content of the data it was pre-trained on (pretrain.json), the same for the same data anywhere
    info = json.loads((Path(pretrained) / "pretrain.json").read_text())
    with open_dataset(info["data"], info["obs_keys"]) as ds:
        assert client.get_run(res.run_id).data.tags["pretrained.data_sha256"] == info["dataset_sha256"] == \
            ds.content_digest()
    # The diagnostic of benchmarks/diag_bc_prior.py: the checkpoint's π_bc (the last task's) acting alone.
    from benchmarks.diag_bc_prior import diagnose
    d = diagnose(str(res.run_dir), episodes=1)
    assert (d["task"], d["retrieved"], d["method"]) == ("reach-v3", 2, "gsa")
    assert 0 <= d["prior"]["score"] <= 100 and 0 <= d["random"]["score"] <= 100 and np.isfinite(d["prior"]["return"])
    # The action spread on reach's 4 action dims: uniform random's std is 1/sqrt(3) = 0.58.
    assert abs(d["random"]["action_std"] - 0.577) < 0.1 and 0 <= d["prior"]["action_std"] <= 1
    # benchmarks/diag_final_eval.py: the final policy (world model + actor) rebuilt from the checkpoint and
    # evaluated again on every task of the stream; its sampled latents are seeded, so a second call repeats it.
    from benchmarks.diag_final_eval import final_eval
    again = final_eval(str(res.run_dir), episodes=1)
    assert set(again["tasks"]) == {"walker-stand", "reach-v3"} and again["method"] == "gsa"
    assert all(0 <= v["score"] <= 100 and np.isfinite(v["return"]) for v in again["tasks"].values())
    assert all(0 <= v["saturated"] <= 1 and 0 <= v["action_std"] <= 1 for v in again["tasks"].values())
    assert final_eval(str(res.run_dir), episodes=1)["tasks"] == again["tasks"]
    half = tmp_path / "half"   # a checkpoint taken before the last task ended is not the final policy: refused
    shutil.copytree(res.run_dir, half)
    payload = checkpoint.load(half / checkpoint.CHECKPOINT_FILE)
    payload["progress"]["task_index"] = 1
    checkpoint.save(half / checkpoint.CHECKPOINT_FILE, payload)
    with pytest.raises(HarnessError, match="finished 1 of its 2 tasks"):
        final_eval(str(half), episodes=1)


# ----------------------------------------------------------------------------- the pieces

def test_world_model_batches_mix_at_the_configured_ratio_and_reward_sees_online_rows_only(pretrained, tmp_path):
    m, (task,), env_cfg = _method(pretrained, tmp_path, overrides=(("agent.batch_size", "16"),))
    m.on_task_start(task)
    _drive(m, task, env_cfg, 40)
    assert m.agent.rehearsal is not None and m.agent.rehearsal_fraction == 0.25
    batch = m.agent.sample_batch()
    assert batch["source"].shape == (16,) and int((batch["source"] == 1).sum()) == 4   # 0.25 x 16
    assert not batch["reward"][batch["source"] == 1].any()   # offline data is reward-free
    # train_step hands the world model a reward mask that is exactly the online rows...
    seen = {}
    loss = m.agent.wm.loss

    def spy(b, **kw):
        seen["mask"] = kw["reward_mask"].cpu().numpy().copy()
        seen["batch"] = b
        return loss(b, **kw)
    m.agent.wm.loss = spy
    m.agent.train_step()
    assert seen["mask"].sum() == 12 and seen["mask"].shape == (16,)
    # ... and with it the reward loss does not depend on the offline rows' rewards at all.
    b = {k: v.clone() for k, v in seen["batch"].items()}
    mask = torch.as_tensor(seen["mask"])
    with torch.no_grad():
        torch.manual_seed(0)   # the posterior samples its latents
        before = loss(b, reward_mask=mask)[1]["wm/reward_loss"]
        b["reward"][~mask] = 1e3
        torch.manual_seed(0)
        after = loss(b, reward_mask=mask)[1]["wm/reward_loss"]
    assert torch.equal(before, after)


def test_warmup_is_driven_by_the_bc_prior_and_evaluation_by_the_rl_policy(pretrained, tmp_path):
    m, (task,), env_cfg = _method(pretrained, tmp_path, overrides=(("agent.warmup_env_frames", "1000000"),))
    m.on_task_start(task)
    _drive(m, task, env_cfg, 30)
    assert m.task_bc_steps == m.task_steps == 30    # warm-up: π_bc for whole episodes, no random actions
    obs = make_env(task.name, env_cfg, seed=3).reset()
    batch = {k: v[None] for k, v in obs.items()} | {"is_first": np.array([True])}
    with torch.no_grad():
        bc = m.bc({"proprio": torch.as_tensor(obs["proprio"][None])}).numpy()
    a, _ = m.act(batch, None, task, explore=False)
    assert a.shape == (1, env_cfg.action_pad_dim) and not np.allclose(a, bc * task.action_mask)


def test_resume_restores_the_retrieved_set_and_the_bc_prior(pretrained, tmp_path):
    m, (task,), env_cfg = _method(pretrained, tmp_path)
    m.on_task_start(task)
    _drive(m, task, env_cfg, 20)
    checkpoint.save(tmp_path / "ckpt.pt", {"method": m.state_dict()})
    fresh, _, _ = _method(pretrained, tmp_path)
    fresh.load_state_dict(checkpoint.load(tmp_path / "ckpt.pt")["method"])   # weights_only=True
    assert fresh.retrieved_task == 0 and fresh.retrieved_uids == m.retrieved_uids and len(m.retrieved_uids) == 4
    assert sorted(e.uid for e in fresh.agent.rehearsal.episodes) == sorted(m.retrieved_uids)
    x = {"proprio": torch.randn(5, env_cfg.proprio_pad_dim)}
    with torch.no_grad():
        assert torch.equal(fresh.bc(x), m.bc(x))
    assert fresh.schedule == m.schedule and fresh.episode_steps == m.episode_steps == 500
    # Resumed mid-task, the first act() does not retrieve again (on_task_start is not called on resume).
    uids = list(fresh.retrieved_uids)
    _drive(fresh, task, env_cfg, 2)
    assert fresh.retrieved_uids == uids


def test_ablation_switches(pretrained, tmp_path):
    pre, _ = load_pretrained(pretrained)
    ref = pre.state_dict()

    def same_as_pretrained(m):
        return all(torch.equal(v, ref[k]) for k, v in m.agent.wm.state_dict().items())

    p, (task,), env_cfg = _method(pretrained, tmp_path, "gsa-p")
    assert same_as_pretrained(p) and not p.cfg.needs_retrieval
    p.on_task_start(task)
    _drive(p, task, env_cfg, 5)
    assert p.retrieved_uids == [] and p.bc is None and p.agent.rehearsal is None
    er, _, _ = _method(pretrained, tmp_path, "gsa-p-er")
    er.on_task_start(task)
    _drive(er, task, env_cfg, 5)
    assert er.agent.rehearsal is not None and er.bc is None
    g, _, _ = _method(pretrained, tmp_path, "gsa-p-g")
    g.on_task_start(task)
    _drive(g, task, env_cfg, 5)
    assert g.agent.rehearsal is None and g.bc is not None
    jsrl, _, _ = _method(pretrained, tmp_path, "jsrl-bc")
    assert not same_as_pretrained(jsrl) and jsrl.cfg.guidance_anchor == "start"
    jsrl.on_task_start(task)
    rng = np.random.default_rng(0)
    windows = [jsrl.schedule.window(0, 500, rng) for _ in range(50)]
    assert all(w[0] == 0 for w in windows) and any(w[1] > 0 for w in windows)


# ----------------------------------------------------------------------------- bad input, before anything is written

def _no_runs(uri):
    client = mlflow.MlflowClient(uri)
    return all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


def test_bad_pretrained_inputs_are_clear_errors_before_any_run(mlflow_uri, pretrained, tmp_path):
    cases = []
    # another encoder: same sizes, other weights -> the index no longer matches
    other = tmp_path / "other"
    shutil.copytree(pretrained, other)
    wm, payload = load_pretrained(pretrained)
    fresh = WorldModel(wm.cfg, {k: (v, "float32") for k, v in wm.obs_shapes.items()}, wm.action_dim)
    save_world_model(other / "world_model.pt", fresh, {k: v for k, v in payload.items() if k != "world_model"})
    cases.append((_cfg(other), "index/encoder mismatch"))
    cases.append((_cfg(tmp_path / "nowhere"), "missing pre-trained world model"))
    cases.append((_cfg(pretrained, tasks=("cartpole-balance",)), "no trajectory of cartpole-balance's embodiment 'cartpole'"))
    cases.append((_cfg(pretrained, tasks=("quadruped-stand",)), "takes 6-d actions, but quadruped-stand needs 12"))
    cases.append((_cfg(pretrained, preset="tiny"), "deter=32 in the checkpoint but 256 in this preset"))
    cases.append((_cfg(pretrained, obs="pixels"), "takes proprio observations; run with --obs proprio"))
    for cfg, message in cases:
        with pytest.raises(HarnessError, match=message.replace("(", r"\(")):
            run_stream(cfg, **QUIET)
    with pytest.raises(CheckpointMismatchError):
        prepare(_cfg(pretrained, preset="tiny"))
    assert _no_runs(mlflow_uri)


def test_cli_without_pretrained_names_the_commands_that_make_one(mlflow_uri, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "run-stream", "quick", "--method", "gsa", "--obs",
                        "proprio"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "python cli.py collect data/offline --tasks cartpole-balance,reach-v3,walker-stand --obs proprio" in r.stderr
    assert "python cli.py pretrain --data data/offline --preset tiny --obs proprio --build-index" in r.stderr
    assert "python cli.py pipeline" in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "run-stream", "quick", "--method", "dreamer",
                        "--pretrained", "x"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and "--pretrained is for the methods that fine-tune" in r.stderr
    assert _no_runs(mlflow_uri)


def test_all_gsa_methods_are_registered_with_paper_defaults():
    for name in ("gsa", "gsa-p", "gsa-p-er", "gsa-p-g", "jsrl-bc"):
        cfg = resolve_config(METHODS.load(name), name, None)
        assert cfg.offline_fraction == 0.25 and cfg.retrieve_k == 500 and cfg.bc.grad_updates == 150_000
        assert cfg.guidance_dmc_agent_steps == 50_000 and cfg.guidance_metaworld_agent_steps == 150_000
        assert cfg.agent.warmup_env_frames == 15_000 and not cfg.agent.reset_replay_each_task
    assert (cfg.use_pretrained, cfg.rehearsal, cfg.guidance) == (False, False, True)   # jsrl-bc


def test_pipeline_runs_collect_pretrain_index_and_gsa_and_continues(mlflow_uri, tmp_path):
    args = [sys.executable, str(ROOT / "cli.py"), "pipeline", "quick", "--preset", "debug", "--episodes", "1",
            "--episode-frames", "60", "--pretrain-steps", "4", "--frames-per-task", "200", "--eval-every", "200",
            "--eval-episodes", "1", "--threads", "1", "--workdir", "pl", "--set", "agent.warmup_min_episodes=0"]
    r = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in ("[1/4] collect", "[2/4] pretrain", "[3/4] build-index", "[4/4] run-stream quick --method gsa"):
        assert stage in r.stdout
    assert "mlflow ui --backend-store-uri" in r.stdout and "--method dreamer" in r.stdout
    assert (tmp_path / "pl" / "pretrained" / "index" / "index.json").is_file()
    # Again: the data, model and index are reused, and a second gsa run is made.
    r = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("reusing it") == 3
