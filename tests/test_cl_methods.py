"""The continual-learning baselines (methods/cl): L2 / EWC / MAS, A-GEM, reservoir replay, the multi-task
reference, on real envs with debug sizes (state observations)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from episodes import run_episode
from mlflow.tracking import MlflowClient
from scipy import stats
from torch import nn

from harness import checkpoint
from harness.config import RunConfig
from harness.runner import run_stream
from harness.streams import EvalSpec, StreamSpec, TaskSpec, multitask_stream
from methods import METHODS
from methods.base import MethodContext, TaskContext, resolve_config
from methods.cl.agem import AGEM, project
from methods.cl.heads import HeadMap
from methods.cl.learners import TaskDrQV2
from methods.cl.memory import TransitionMemory, task_transitions, valid_starts
from methods.cl.multitask import MultiTask
from methods.cl.regularizers import KINDS, Regularized
from methods.cl.reservoir import Replay
from methods.dreamer import Dreamer
from methods.drqv2 import DrQV2
from tasks.base import EnvConfig, make_env

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASKS = ("cartpole-balance", "cartpole-swingup")
CL_METHODS = ("l2", "ewc", "mas", "agem", "replay", "multitask")
SPEC_NAMES = {"l2": "l2", "ewc": "ewc", "mas": "mas"}


def _setup(tmp_path, tasks=TASKS):
    env_cfg = EnvConfig(obs_type="proprio", render_quality="fast", action_pad_dim=1, proprio_pad_dim=5)
    envs = [make_env(t, env_cfg, seed=i) for i, t in enumerate(tasks)]
    ctx = MethodContext(tuple(tasks), {"proprio": ((5,), "float32")}, 1, 0, "cpu", tmp_path)
    ctxs = [TaskContext(i, t, "cartpole", "dmc", 1000, envs[i].action_mask, 2) for i, t in enumerate(tasks)]
    return envs, ctx, ctxs


def _cfg(method: str, **over: str):
    """The debug config, 40 seed frames (updates start early), plus overrides."""
    warmup = ({"dreamer_config.warmup_env_frames": "40", "dreamer_config.warmup_min_episodes": "0"}
              if over.get("base") == "dreamer" else {"base_config.seed_frames": "40"})
    return resolve_config(METHODS.load(method), method, "debug", {**warmup, **over})


def _train(method, env, task, agent_steps: int = 120):
    method.on_task_start(task)
    run_episode(method, env, task, agent_steps)
    return method.on_task_end(task)


def _close(envs):
    for e in envs:
        e.close()


# ---------------------------------------------------------------------- L2 / EWC / MAS

@pytest.mark.parametrize("kind", KINDS)
def test_a_task_boundary_stores_anchor_and_importances_and_resume_restores_them(kind, tmp_path):
    envs, ctx, tasks = _setup(tmp_path)
    m = Regularized(_cfg(kind), ctx, kind)
    assert m.anchors.tasks == 0 and m.penalty() == 0.0
    end = _train(m, envs[0], tasks[0])
    a = m.anchors
    assert a.tasks == 1 and end["cl/anchored_tasks"] == 1.0
    assert {n.split(".")[0] for n in a.params} == {"actor"}, "proprio DrQ-v2: the actor's weights only"
    assert not any("policy.4" in n for n in a.params), "the per-task heads are not regularised"
    for n, p in a.params.items():
        assert torch.equal(a.anchor[n], p.detach()), f"{n}: anchor is not the weights at the boundary"
    imp = torch.cat([t.flatten() for t in a.importance.values()])
    if kind == "l2":
        assert bool((imp == 1).all())
    else:
        assert float(imp.min()) >= (1e-5 * (1 - 1e-6) if kind == "ewc" else 0.0) and float(imp.max()) > 0
        assert len(torch.unique(imp)) > 10, "importances should differ between weights"
    torch.save(m.state_dict(), tmp_path / "ck.pt")
    state = torch.load(tmp_path / "ck.pt", weights_only=True)
    torch.manual_seed(123)   # another initialisation: everything must come from the checkpoint
    back = Regularized(_cfg(kind), ctx, kind)
    back.load_state_dict(state)
    assert back.anchors.tasks == 1
    for n in a.params:
        assert torch.equal(back.anchors.anchor[n], a.anchor[n]) and torch.equal(back.anchors.importance[n],
                                                                               a.importance[n]), n
        assert torch.equal(back.anchors.params[n], a.params[n]), f"{n}: the weights were not restored"
    # a second boundary adds the new importances (CW sums them) and moves the anchor
    before = {n: t.clone() for n, t in a.importance.items()}
    _train(m, envs[1], tasks[1])
    assert a.tasks == 2
    added = torch.cat([(a.importance[n] - before[n]).flatten() for n in a.params])
    assert float(added.min()) >= 0 and float(added.max()) > 0
    _close(envs)


@pytest.mark.parametrize("kind", KINDS)
def test_the_penalty_is_zero_at_the_anchor_and_grows_away_from_it(kind, tmp_path):
    envs, ctx, tasks = _setup(tmp_path)
    m = Regularized(_cfg(kind), ctx, kind)
    _train(m, envs[0], tasks[0])
    assert m.penalty() == 0.0
    gen = torch.Generator().manual_seed(0)
    direction = {n: torch.randn(p.shape, generator=gen) for n, p in m.anchors.params.items()}
    values = []
    for eps in (1e-3, 2e-3, 4e-3):
        with torch.no_grad():
            for n, p in m.anchors.params.items():
                p.copy_(m.anchors.anchor[n] + eps * direction[n])
        values.append(m.penalty())
    assert 0 < values[0] < values[1] < values[2]
    assert values[1] / values[0] == pytest.approx(4.0, rel=1e-3), "the penalty is quadratic in the distance"
    # the gradient added between backward and step is the penalty's gradient
    params = list(m.anchors.params.values())
    want = torch.autograd.grad(m.cfg.strength * m.anchors.penalty(), params)
    for p in params:
        p.grad = None
    m.anchors.add_gradient(list(m.anchors.params), m.cfg.strength)
    for p, w in zip(params, want):
        torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-6)
    _close(envs)


@pytest.mark.parametrize("kind", KINDS)
def test_the_penalty_holds_the_shared_weights_near_the_anchor_on_the_next_task(kind, tmp_path):
    drift = {}
    for strength in ("0", None):       # None: CW's tuned strength
        envs, ctx, tasks = _setup(tmp_path / str(strength))
        torch.manual_seed(3)
        m = Regularized(_cfg(kind, **({"strength": strength} if strength else {})), ctx, kind)
        _train(m, envs[0], tasks[0])
        m.on_task_start(tasks[1])
        run_episode(m, envs[1], tasks[1], 150)
        assert m.base.grad_updates > 100
        a = m.anchors
        drift[strength] = float(sum(((p.detach() - a.anchor[n]) ** 2).sum() for n, p in a.params.items()))
        _close(envs)
    assert drift[None] < 0.2 * drift["0"], f"the penalty did not restrain the shared weights: {drift}"


def _weights(*modules) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for mod in modules for p in mod.parameters()])


@pytest.mark.parametrize("kind", KINDS)
def test_strength_zero_is_drqv2_bit_for_bit(kind, tmp_path):
    cfg = _cfg(kind, strength="0", heads="shared")
    runs = []
    for which in ("plain", "wrapped"):
        envs, ctx, tasks = _setup(tmp_path / which)
        torch.manual_seed(7)
        m = DrQV2(cfg.base_config, ctx) if which == "plain" else Regularized(cfg, ctx, kind)
        for env, task in zip(envs, tasks):
            _train(m, env, task)
        b = m if which == "plain" else m.base
        probe = {"proprio": np.linspace(-1, 1, 10, dtype=np.float32).reshape(2, 5), "is_first": np.ones(2, bool)}
        runs.append((_weights(b.encoder, b.actor, b.critic, b.critic_target), b.grad_updates,
                     m.act(probe, None, tasks[0], explore=False)[0]))
        _close(envs)
    (w0, n0, a0), (w1, n1, a1) = runs
    assert n0 == n1 > 0
    assert w0.numpy().tobytes() == w1.numpy().tobytes(), "strength 0 changed what DrQ-v2 learns"
    assert a0.tobytes() == a1.tobytes()


def test_a_task_with_its_own_heads_trains_as_drqv2_with_those_heads_as_last_layers(tmp_path):
    cfg = _cfg("l2").base_config
    envs_a, ctx_a, tasks = _setup(tmp_path / "plain")
    envs_b, ctx_b, _ = _setup(tmp_path / "headed")
    torch.manual_seed(7)
    plain = DrQV2(cfg, ctx_a)
    headed = TaskDrQV2(cfg, ctx_b, HeadMap("position", TASKS))
    head = 1                                  # train the second task's head
    with torch.no_grad():                     # same weights: shared layers equal, head 1 = DrQ-v2's last layers
        for dst, src in ((headed.actor, plain.actor), (headed.critic, plain.critic)):
            for (name, p), (_, q) in zip(dst.named_parameters(), src.named_parameters()):
                if ".linear." in name:
                    rows = p.shape[0] // 2
                    p[head * rows:(head + 1) * rows] = q
                else:
                    p.copy_(q)
        headed.critic_target.load_state_dict(headed.critic.state_dict())
    others = {n: p.detach().clone() for n, p in headed.actor.named_parameters() if ".linear." in n}
    task = dataclasses.replace(tasks[1], index=head)
    for m, env in ((plain, envs_a[1]), (headed, envs_b[1])):
        torch.manual_seed(9)
        _train(m, env, task)
    assert plain.grad_updates == headed.grad_updates > 0
    for dst, src in ((headed.actor, plain.actor), (headed.critic, plain.critic)):
        for (name, p), (_, q) in zip(dst.named_parameters(), src.named_parameters()):
            if ".linear." in name:
                rows = p.shape[0] // 2
                assert torch.equal(p[head * rows:(head + 1) * rows], q), name
                assert torch.equal(p[:rows], others.get(name, p)[:rows]), f"{name}: another task's head moved"
            else:
                assert torch.equal(p, q), name
    _close(envs_a + envs_b)


def test_strength_zero_is_dreamer_bit_for_bit(tmp_path):
    cfg = _cfg("ewc", base="dreamer", strength="0", heads="shared")
    runs = []
    for which in ("plain", "wrapped"):
        envs, ctx, tasks = _setup(tmp_path / which)
        torch.manual_seed(7)
        m = Dreamer(cfg.dreamer_config, ctx) if which == "plain" else Regularized(cfg, ctx, "ewc")
        for env, task in zip(envs, tasks):
            _train(m, env, task, 100)
        b = m if which == "plain" else m.base
        runs.append((_weights(b.wm, b.ac), b.grad_updates))
        _close(envs)
    (w0, n0), (w1, n1) = runs
    assert n0 == n1 > 0
    assert w0.numpy().tobytes() == w1.numpy().tobytes(), "strength 0 changed what Dreamer learns"


def test_with_pixels_the_encoder_is_part_of_the_regularised_policy(tmp_path):
    env = make_env("cartpole-balance", EnvConfig(obs_type="pixels", render_quality="fast", action_pad_dim=1), seed=0)
    ctx = MethodContext(TASKS, {"pixels": ((3, 64, 64), "uint8")}, 1, 0, "cpu", tmp_path)
    task = TaskContext(0, TASKS[0], "cartpole", "dmc", 1000, env.action_mask, 2)
    m = Regularized(_cfg("ewc"), ctx, "ewc")
    _train(m, env, task, 60)
    a = m.anchors
    encoder = m.groups["critic"]
    assert encoder and all(n.startswith("encoder.conv.") for n in encoder)
    assert all(float(a.importance[n].max()) > 1e-5 for n in encoder), "the encoder's weights matter to the policy"
    with torch.no_grad():
        for n in a.params:
            a.params[n].add_(1e-3)
    for p in a.params.values():
        p.grad = None
    m._add_penalty_gradient("critic")      # the encoder learns at the critic step: its penalty is added there
    want = torch.autograd.grad(m.cfg.strength * a.penalty(encoder), [a.params[n] for n in encoder])
    for n, w in zip(encoder, want):
        torch.testing.assert_close(a.params[n].grad, w)
    assert all(a.params[n].grad is None for n in m.groups["actor"])
    env.close()


def test_ewc_with_dreamer_regularises_the_actor_only(tmp_path):
    envs, ctx, tasks = _setup(tmp_path)
    m = Regularized(_cfg("ewc", base="dreamer"), ctx, "ewc")
    _train(m, envs[0], tasks[0], 100)
    names = set(m.anchors.params)
    assert names and all(n.startswith("actor.") for n in names) and not any(".out." in n for n in names)
    assert float(torch.cat([t.flatten() for t in m.anchors.importance.values()]).max()) > 1e-5
    m.on_task_start(tasks[1])
    with torch.no_grad():
        for p in m.anchors.params.values():
            p.add_(0.01)
    assert m.penalty() > 0
    _close(envs)


# ---------------------------------------------------------------------- A-GEM

def test_agem_projection_never_increases_the_memory_loss_to_first_order():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    params = list(model.parameters())
    xm, ym = torch.randn(64, 4, dtype=torch.float64), torch.randn(64, 2, dtype=torch.float64)

    def memory_loss() -> torch.Tensor:
        return ((model(xm) - ym) ** 2).mean()

    def along(direction: list[torch.Tensor], eta: float) -> float:
        """d/d eta of the memory loss at a step -eta * direction, by central differences."""
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(eta * d)
            lo = float(memory_loss())
            for p, d in zip(params, direction):
                p.add_(2 * eta * d)
            hi = float(memory_loss())
            for p, d in zip(params, direction):
                p.sub_(eta * d)
        return (lo - hi) / (2 * eta)

    violated = 0
    for trial in range(60):
        xc = torch.randn(64, 4, dtype=torch.float64)
        yc = torch.randn(64, 2, dtype=torch.float64) * 3 + torch.randn(2, dtype=torch.float64) * 3
        g = list(torch.autograd.grad(((model(xc) - yc) ** 2).mean(), params))
        r = list(torch.autograd.grad(memory_loss(), params))
        new, dot = project(g, r)
        assert sum(float((a * b).sum()) for a, b in zip(new, r)) >= -1e-9, "the projection left a conflict"
        assert along(new, 1e-5) <= 1e-8, f"trial {trial}: the projected step raises the memory loss"
        if dot < 0:
            violated += 1
            assert along(g, 1e-5) > 0, "without the projection this step would raise the memory loss"
        else:
            assert all(torch.equal(a, b) for a, b in zip(new, g)), "no conflict: the gradient is left alone"
    assert 5 < violated < 55, f"{violated} conflicts in 60 trials: the test does not exercise both cases"


def test_agem_projects_drqv2_gradients_against_its_episodic_memory(tmp_path):
    envs, ctx, tasks = _setup(tmp_path)
    m = AGEM(_cfg("agem"), ctx)
    end = _train(m, envs[0], tasks[0])
    assert end["agem/memory_rows"] == min(m.cfg.memory_per_task, len(valid_starts(m.base)))
    assert bool((torch.as_tensor(m.memory.data["task"][: len(m.memory)]) == 0).all())
    m.on_task_start(tasks[1])
    run_episode(m, envs[1], tasks[1], 60)     # updates on task 1 run the hook
    b = m.base
    params = m._params("critic")
    states = (m.rng.bit_generator.state, torch.get_rng_state(), b.torch_gen.get_state())

    def restore():
        m.rng.bit_generator.state = states[0]
        torch.set_rng_state(states[1])
        b.torch_gen.set_state(states[2])

    for p in params:
        p.grad = None
    m._memory_loss("critic").backward()
    ref = [p.grad.clone() for p in params]
    mem_batch = m._mem_batch
    # a gradient that opposes the memory's: the hook must project it
    gen = torch.Generator().manual_seed(1)
    for p, r in zip(params, ref):
        p.grad = -r + 0.1 * torch.randn(r.shape, generator=gen) * r.abs().mean()
    raw = [p.grad.clone() for p in params]
    restore()
    out = m._project("critic")
    assert out == {"agem/critic_violation": 1.0}
    new = [p.grad.clone() for p in params]
    assert sum(float((a * r).sum()) for a, r in zip(new, ref)) >= -1e-6 * sum(float((r * r).sum()) for r in ref)

    def memory_loss() -> float:
        torch.set_rng_state(states[1])   # the same target-action noise every time
        with torch.no_grad(), b.selected(mem_batch["task"]):
            return float(b.critic_loss(mem_batch)[0])

    def slope(direction, eta=1e-3) -> float:
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(eta * d)
            lo = memory_loss()
            for p, d in zip(params, direction):
                p.add_(2 * eta * d)
            hi = memory_loss()
            for p, d in zip(params, direction):
                p.sub_(eta * d)
        return (lo - hi) / (2 * eta)

    g_ref_norm = sum(float((r * r).sum()) for r in ref)
    assert slope(raw) > 0.5 * g_ref_norm, "the raw step raises the memory loss"
    assert slope(new) <= 1e-3 * g_ref_norm, "the projected step does not"
    _close(envs)


# ---------------------------------------------------------------------- reservoir replay

def test_the_reservoir_keeps_a_uniform_sample_of_everything_seen_within_its_bound():
    rng = np.random.default_rng(0)
    n_items, capacity, trials = 3000, 300, 300
    kept_count = np.zeros(n_items)
    for _ in range(trials):
        mem = TransitionMemory(capacity)
        seen = 0
        while seen < n_items:
            ids = np.arange(seen, min(n_items, seen + int(rng.integers(1, 700))))
            mem.reservoir_add({"action": ids[:, None].astype(np.float32), "id": ids}, rng)
            seen += len(ids)
            assert len(mem) == min(capacity, seen) and mem.seen == seen
            assert len(mem.keys) <= capacity and all(len(v) <= capacity for v in mem.data.values())
        kept = mem.data["id"][: len(mem)]
        assert len(np.unique(kept)) == capacity
        assert np.array_equal(mem.data["action"][: len(mem), 0], kept.astype(np.float32)), "rows were mixed up"
        kept_count[kept] += 1
    # each item is kept with probability capacity / n_items, wherever it came in the stream
    bins = kept_count.reshape(30, -1).sum(1)
    expected = trials * capacity / 30
    p = stats.chisquare(bins, np.full(30, expected)).pvalue
    assert p > 1e-3, f"inclusion by arrival order is not uniform (p={p:.2g}): {bins}"
    assert abs(kept_count.mean() / trials - capacity / n_items) < 1e-9
    # and the per-item counts spread as Binomial(trials, capacity / n_items)
    assert kept_count.std() == pytest.approx(np.sqrt(trials * 0.1 * 0.9), rel=0.1)


def test_replayed_transitions_keep_their_own_task_reward_head_and_mask(tmp_path):
    envs, ctx, tasks = _setup(tmp_path)
    m = Replay(_cfg("replay", capacity="100000"), ctx)
    _train(m, envs[0], tasks[0])
    starts = valid_starts(m.base)
    mem = m.memory
    assert len(mem) == mem.seen == len(starts) > 0   # nothing evicted: everything of task 0 is there
    assert bool((mem.data["task"][: len(mem)] == 0).all())
    assert np.array_equal(mem.data["mask"][: len(mem)], np.repeat(tasks[0].action_mask[None], len(mem), 0))
    # the stored transitions are exactly those DrQ-v2 samples from task 0's replay (n-step reward, discount)
    stored = {tuple(np.concatenate([mem.data[k][i].ravel() for k in ("proprio", "action", "reward", "discount",
                                                                     "next_proprio")]).tolist())
              for i in range(len(mem))}
    drawn = m.base._sample(64)
    for i in range(64):
        row = tuple(np.concatenate([drawn[k][i].numpy().ravel() for k in ("proprio", "action", "reward",
                                                                           "discount", "next_proprio")]).tolist())
        assert row in stored
    # on task 1, update batches mix both tasks; task-0 rows are memory rows with task 0's head
    m.on_task_start(tasks[1])
    run_episode(m, envs[1], tasks[1], 60)
    batch = m._batch()
    assert batch["action"].shape[0] == m.base.cfg.batch_size == 4 * m.cfg.base_config.batch_size
    heads = batch["task"]
    assert set(heads.tolist()) <= {0, 1} and 0 < m.past_probability() < 1
    for i in torch.nonzero(heads == 0).flatten().tolist():
        row = tuple(np.concatenate([batch[k][i].numpy().ravel() for k in ("proprio", "action", "reward", "discount",
                                                                           "next_proprio")]).tolist())
        assert row in stored, "a task-0 row that is not one of task 0's transitions"
    _close(envs)


def test_task_transitions_label_rows(tmp_path):
    envs, ctx, tasks = _setup(tmp_path)
    m = Replay(_cfg("replay"), ctx)
    m.on_task_start(tasks[0])
    run_episode(m, envs[0], tasks[0], 30)
    starts = valid_starts(m.base)
    rows = task_transitions(m.base, starts[:5], 3, np.array([1.0], np.float32))
    assert rows["task"].tolist() == [3] * 5 and rows["mask"].shape == (5, 1)
    _close(envs)


# ---------------------------------------------------------------------- multi-task reference

def test_multitask_stream_keeps_the_budget_and_visits_tasks_round_robin():
    spec = StreamSpec("s", (TaskSpec("a", 1000), TaskSpec("b", 1000), TaskSpec("a", 1001)), EvalSpec(100, 3))
    mt = multitask_stream(spec, rounds=3)
    assert mt.name == "s-mt" and mt.total_frames == spec.total_frames
    assert mt.task_names() == ["a", "b"] * 3
    assert [t.frames for t in mt.tasks if t.name == "a"] == [667, 667, 667]
    assert mt.eval.every_frames == 667 and mt.eval.episodes == 3


def test_multitask_shares_a_head_and_the_schedule_across_a_tasks_chunks(tmp_path):
    names = ("cartpole-balance", "cartpole-swingup", "cartpole-balance")
    envs, ctx, tasks = _setup(tmp_path, names)
    m = MultiTask(_cfg("multitask"), ctx)
    assert m.base.heads.count == 2
    _train(m, envs[0], tasks[0], 60)
    steps0 = m.base.task_agent_steps
    _train(m, envs[1], tasks[1], 60)
    m.on_task_start(tasks[2])
    assert m.base.head == 0 and m.base.task_agent_steps == steps0, "a task's chunks continue its schedule"
    run_episode(m, envs[2], tasks[2], 60)
    batch = m._batch()
    assert set(batch["task"].tolist()) == {0, 1}, "batches draw every task's data, each with its head"
    _close(envs)


# ---------------------------------------------------------------------- through the runner

def _stream() -> StreamSpec:
    return StreamSpec("cl", (TaskSpec("cartpole-balance", 400), TaskSpec("reach-v3", 400)), EvalSpec(400, 1))


@pytest.mark.parametrize("method,over", [(m, ()) for m in CL_METHODS] +
                         [("ewc", (("base", "dreamer"), ("dreamer_config.warmup_env_frames", "100")))],
                         ids=[*CL_METHODS, "ewc-dreamer"])
def test_every_method_trains_through_the_runner(method, over, mlflow_uri, tmp_path):
    stream = multitask_stream(_stream(), rounds=2) if method == "multitask" else _stream()
    if not over:
        over = (("base_config.seed_frames", "100"),)
    cfg = RunConfig(stream=stream, method=method, preset="debug", seed=0, video_frames=0, overrides=over,
                    env=EnvConfig(obs_type="proprio", render_quality="fast"), runs_dir=str(tmp_path / "runs"),
                    torch_threads=1)
    res = run_stream(cfg, echo=lambda *_: None)      # a non-finite loss would stop it with an error
    n = len(stream.tasks)
    assert res.R.shape == (n, n) and np.isfinite(res.R).all()
    state = checkpoint.load(res.run_dir / "checkpoint.pt")["method"]
    assert state["base"]["grad_updates"] > 0
    client = MlflowClient()
    exp = client.get_run(res.run_id).info.experiment_id
    kids = sorted(client.search_runs([exp], f"tags.mlflow.parentRunId = '{res.run_id}'"),
                  key=lambda r: int(r.data.tags["task_index"]))
    last = kids[-1].data.metrics
    assert all(np.isfinite(v) for k, v in last.items() if "loss" in k)
    assert any(k in last for k in ("critic/loss", "wm/loss"))
    if method in KINDS:
        history = [p.value for p in client.get_metric_history(kids[-1].info.run_id, "cl/penalty")]
        assert history and max(history) > 0, "the penalty is logged, and positive after the first task"
        assert kids[0].data.metrics["task_end/cl/anchored_tasks"] == 1.0
    if method == "agem":
        assert last["task_end/agem/memory_rows"] > 0 and "agem/critic_violation" in last
    if method == "replay":
        assert last["task_end/replay/reservoir_rows"] == 300.0, "debug capacity 300 is the bound"
        assert 0 < last["replay/past_probability"] < 1
