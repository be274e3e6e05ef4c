"""The shared world-model backbone (debug sizes): shapes, learning on a fixed batch, checkpoints, the
reward-free pre-training loss, two-hot / lambda-return maths, action masks, and the replay."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from harness.replay import EpisodeReplay, MixedSampler
from methods.backbone.actor_critic import ActorCritic, lambda_returns
from methods.backbone.checkpoint import CheckpointMismatchError, load_world_model, save_world_model
from methods.backbone.config import DEBUG_AC, DEBUG_MODEL, PAPER_MODEL, TINY_MODEL
from methods.backbone.nets import Optimizer, TwoHot, count_parameters, symexp, symlog
from methods.backbone.world_model import WorldModel
from methods.base import Step

A = 4  # padded action dim


pytestmark = pytest.mark.usefixtures("one_torch_thread")


SPECS = {
    "pixels": {"pixels": ((3, 64, 64), "uint8")},
    "proprio": {"proprio": ((7,), "float32")},
    "both": {"pixels": ((3, 64, 64), "uint8"), "proprio": ((7,), "float32")},
}


def make_batch(spec, b=3, t=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = {"prev_action": torch.rand(b, t, A, generator=g) * 2 - 1, "reward": torch.randn(b, t, generator=g),
             "is_first": torch.zeros(b, t, dtype=torch.bool), "is_terminal": torch.zeros(b, t, dtype=torch.bool)}
    batch["is_first"][:, 0] = True
    batch["prev_action"][:, 0] = 0
    if "pixels" in spec:
        batch["pixels"] = torch.randint(0, 256, (b, t, 3, 64, 64), dtype=torch.uint8, generator=g)
    if "proprio" in spec:
        batch["proprio"] = torch.randn(b, t, 7, generator=g)
    return batch


@pytest.mark.parametrize("kind", list(SPECS))
def test_shapes(kind):
    torch.manual_seed(0)
    cfg = DEBUG_MODEL
    wm = WorldModel(cfg, SPECS[kind], A)
    batch = make_batch(SPECS[kind])
    post, prior = wm.observe({k: batch[k] for k in SPECS[kind]}, batch["prev_action"], batch["is_first"])
    assert post["deter"].shape == (3, 6, cfg.deter)
    assert post["stoch"].shape == prior.shape == (3, 6, cfg.stoch, cfg.classes)
    assert wm.features(post).shape == (3, 6, cfg.feat_dim)
    assert torch.allclose(post["stoch"].sum(-1), torch.ones(3, 6, cfg.stoch))  # one-hot samples
    start = {k: v.reshape(18, *v.shape[2:]) for k, v in post.items()}
    states, actions = wm.imagine(lambda f: torch.zeros(f.shape[0], A), start, 5)
    assert states["deter"].shape == (18, 6, cfg.deter) and actions.shape == (18, 5, A)
    loss, metrics, _ = wm.loss(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert {"wm/loss", "wm/dyn_loss", "wm/rep_loss", "wm/reward_loss", "wm/cont_loss"} <= set(metrics)
    assert {f"wm/{k}_loss" for k in SPECS[kind]} <= set(metrics)
    with pytest.raises(AssertionError, match="expected"):
        wm.loss({**batch, "prev_action": batch["prev_action"][..., :2]})


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    wm = WorldModel(DEBUG_MODEL, SPECS["both"], A)
    opt = Optimizer(wm.parameters(), 1e-3, 1e-5, 0.0, 100.0)
    batch = make_batch(SPECS["both"])
    first = None
    for _ in range(40):
        loss, _, _ = wm.loss(batch)
        first = first if first is not None else float(loss.detach())
        opt.step(loss)
    assert float(wm.loss(batch)[0].detach()) < 0.8 * first


def test_actor_critic_update_decreases_critic_loss_and_respects_the_mask():
    torch.manual_seed(0)
    wm = WorldModel(DEBUG_MODEL, SPECS["proprio"], A)
    ac = ActorCritic(dataclasses.replace(DEBUG_AC, critic_lr=3e-3), DEBUG_MODEL.feat_dim, A)
    batch = make_batch(SPECS["proprio"])
    _, _, post = wm.loss(batch)
    start = {k: v.detach().reshape(18, *v.shape[2:]) for k, v in post.items()}
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0])
    losses = [float(ac.train_step(wm, start, torch.ones(18), mask)["critic/loss"]) for _ in range(30)]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    wm_grads = [p.grad for p in wm.parameters() if p.grad is not None]
    assert not wm_grads, "the actor-critic update must not write world-model gradients"
    feat = wm.features(start)
    for explore in (True, False):
        a = ac.act(feat, mask, explore)
        assert a.shape == (18, A) and torch.all(a[:, 2:] == 0) and torch.all(a.abs() <= 1)
    _, std = ac.policy_dist(feat)
    ent_all = ac.entropy(std, torch.ones(A))
    ent_masked = ac.entropy(std, mask)
    assert torch.allclose(ent_masked, ac.entropy(std[:, :2], torch.ones(2)))
    assert torch.all(ent_masked < ent_all)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    wm = WorldModel(DEBUG_MODEL, SPECS["both"], A)
    batch = make_batch(SPECS["both"])
    opt = Optimizer(wm.parameters(), 1e-3, 1e-5, 0.0, 100.0)
    for _ in range(3):  # move away from the initialisation
        opt.step(wm.loss(batch)[0])
    save_world_model(tmp_path / "wm.pt", wm)
    torch.manual_seed(1)
    other = WorldModel(DEBUG_MODEL, SPECS["both"], A)
    load_world_model(tmp_path / "wm.pt", other)
    obs = {k: batch[k][:, 0] for k in SPECS["both"]}
    first = torch.ones(3, dtype=torch.bool)
    with torch.no_grad():
        s1 = wm.obs_step(wm.initial(3), batch["prev_action"][:, 0], obs, first, sample=False)
        s2 = other.obs_step(other.initial(3), batch["prev_action"][:, 0], obs, first, sample=False)
        assert torch.equal(s1["deter"], s2["deter"]) and torch.equal(s1["logits"], s2["logits"])
        f1, f2 = wm.features(s1), other.features(s2)
        assert torch.equal(wm.decoders["pixels"](f1), other.decoders["pixels"](f2))
        assert torch.equal(wm.reward(f1), other.reward(f2))
        torch.manual_seed(5)
        l1 = wm.loss(batch)[0]
        torch.manual_seed(5)
        l2 = other.loss(batch)[0]
    assert torch.equal(l1, l2)


def test_checkpoint_from_other_sizes_is_a_clear_error(tmp_path):
    wm = WorldModel(DEBUG_MODEL, SPECS["proprio"], A)
    save_world_model(tmp_path / "wm.pt", wm)
    bigger = WorldModel(dataclasses.replace(DEBUG_MODEL, deter=64), SPECS["proprio"], A)
    with pytest.raises(CheckpointMismatchError, match=r"sizes\.deter=32 in the checkpoint but 64 here"):
        load_world_model(tmp_path / "wm.pt", bigger)
    more_actions = WorldModel(DEBUG_MODEL, SPECS["proprio"], 6)
    with pytest.raises(CheckpointMismatchError, match=r"embodiment.*action_dim=4 in the checkpoint but 6 here"):
        load_world_model(tmp_path / "wm.pt", more_actions)


def test_pretraining_loss_uses_no_reward():
    torch.manual_seed(0)
    wm = WorldModel(DEBUG_MODEL, SPECS["pixels"], A)
    batch = make_batch(SPECS["pixels"])
    other = {**batch, "reward": batch["reward"] * 100 + 7}
    del other["is_terminal"]
    torch.manual_seed(3)
    loss1, metrics, _ = wm.loss(batch, use_reward=False, use_cont=False)
    torch.manual_seed(3)
    loss2, _, _ = wm.loss(other, use_reward=False, use_cont=False)
    assert torch.equal(loss1, loss2)
    assert "wm/reward_loss" not in metrics and "wm/cont_loss" not in metrics
    loss1.backward()
    assert all(p.grad is None for p in wm.reward_head.parameters())
    assert any(p.grad is not None for p in wm.rssm.parameters())


def test_reward_mask_selects_rows():
    torch.manual_seed(0)
    wm = WorldModel(DEBUG_MODEL, SPECS["proprio"], A)
    batch = make_batch(SPECS["proprio"])
    mask = torch.tensor([True, False, True])
    garbage = {**batch, "reward": batch["reward"].clone()}
    garbage["reward"][1] = 1e4
    r1 = wm.loss(batch, reward_mask=mask)[1]["wm/reward_loss"]
    r2 = wm.loss(garbage, reward_mask=mask)[1]["wm/reward_loss"]
    assert torch.allclose(r1, r2)


def test_two_hot_and_symlog():
    x = torch.tensor([-1000.0, -3.0, 0.0, 0.5, 12.0, 2e5])
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-5)
    logits = torch.zeros(6, 255)
    dist = TwoHot(logits, 20.0)
    assert torch.allclose(dist.mean(), torch.zeros(6), atol=1e-4)
    # a distribution that puts the two-hot weights on the bins recovers the target as its mean
    targets = torch.tensor([-7.3, 0.0, 1.0, 3.7, 250.0, -0.01])
    for y in targets:
        best = torch.zeros(1, 255, requires_grad=True)
        opt = torch.optim.Adam([best], lr=0.5)
        for _ in range(300):
            opt.zero_grad()
            (-TwoHot(best, 20.0).log_prob(y[None])).sum().backward()
            opt.step()
        assert torch.allclose(TwoHot(best, 20.0).mean(), y[None], rtol=0.05, atol=0.05)


def test_lambda_returns_by_hand():
    reward = torch.tensor([[1.0, 2.0]])
    disc = torch.tensor([[0.5, 0.5]])
    value = torch.tensor([[10.0, 20.0, 40.0]])
    lam = 0.8
    v1 = 2.0 + 0.5 * 40.0
    v0 = 1.0 + 0.5 * ((1 - lam) * 20.0 + lam * v1)
    assert torch.allclose(lambda_returns(reward, disc, value, lam), torch.tensor([[v0, v1]]))


def test_paper_preset_is_about_280m_parameters():
    with torch.device("meta"):
        wm = WorldModel(PAPER_MODEL, {"pixels": ((3, 64, 64), "uint8")}, 21)
    assert 260e6 < count_parameters(wm) < 320e6
    with torch.device("meta"):
        tiny = WorldModel(TINY_MODEL, {"pixels": ((3, 64, 64), "uint8")}, 6)
    assert count_parameters(tiny) < 10e6


# ----------------------------------------------------------------------------- replay

def _episode(replay, length, rng, reward=1.0, proprio=3):
    for t in range(length + 1):
        obs = {"proprio": rng.standard_normal(proprio).astype(np.float32)}
        last = t == length
        action = np.zeros(2, np.float32) if last else rng.uniform(-1, 1, 2).astype(np.float32)
        replay.add(Step(obs, action, 0.0 if t == 0 else reward, t == 0, last, False))


def test_replay_samples_sequences_with_previous_actions(tmp_path):
    rng = np.random.default_rng(0)
    replay = EpisodeReplay(tmp_path / "r", initial_capacity=4)  # forces the buffer to grow
    for _ in range(3):
        _episode(replay, 10, rng)
    assert len(replay) == 33 and replay.episodes == 3
    batch = replay.sample(5, 7, rng)
    assert batch["proprio"].shape == (5, 7, 3) and batch["action"].shape == (5, 7, 2)
    assert batch["is_first"].dtype == bool and batch["reward"].dtype == np.float32
    # prev_action[t] is action[t-1] inside an episode and zero at its start
    inside = ~batch["is_first"][:, 1:]
    assert np.array_equal(batch["prev_action"][:, 1:][inside], batch["action"][:, :-1][inside])
    assert np.all(batch["prev_action"][batch["is_first"]] == 0)
    with pytest.raises(ValueError, match="fewer than the sequence length"):
        replay.sample(1, 100, rng)


def test_replay_reload_takes_exactly_the_checkpointed_episodes(tmp_path):
    rng = np.random.default_rng(0)
    replay = EpisodeReplay(tmp_path / "r")
    for _ in range(2):
        _episode(replay, 5, rng)
    state = replay.state_dict()
    saved = {k: v[: len(replay)].copy() for k, v in replay._data.items()}
    _episode(replay, 5, rng)  # written after the "checkpoint": must be ignored
    for _ in range(3):  # an unfinished episode is never persisted
        replay.add(Step({"proprio": np.zeros(3, np.float32)}, np.zeros(2, np.float32), 0.0, _ == 0, False, False))
    fresh = EpisodeReplay(tmp_path / "r")
    fresh.load_state_dict(state)
    assert fresh.episodes == 2 and len(fresh) == 12
    for k, v in saved.items():
        assert np.array_equal(fresh._data[k][: len(fresh)], v), k
    assert len(list((tmp_path / "r").glob("*.npz"))) == 3  # reloading rewrote nothing
    _episode(fresh, 7, rng)   # episode 2 again, of another length: the file left by the old run goes
    assert sorted(p.name for p in (tmp_path / "r").glob("*.npz")) == ["000000-6.npz", "000001-6.npz", "000002-8.npz"]
    again = EpisodeReplay(tmp_path / "r")
    again.load_state_dict(fresh.state_dict())
    assert again.episodes == 3 and len(again) == 20


def test_mixed_sampler_draws_fractions_and_labels_rows(tmp_path):
    rng = np.random.default_rng(0)
    online, offline = EpisodeReplay(), EpisodeReplay()
    _episode(online, 20, rng, reward=1.0)
    _episode(offline, 20, rng, reward=5.0)
    batch = MixedSampler([(online, 0.75), (offline, 0.25)]).sample(16, 8, rng)
    assert batch["proprio"].shape == (16, 8, 3)
    assert list(batch["source"]) == [0] * 12 + [1] * 4
    with pytest.raises(ValueError, match="sum to 1"):
        MixedSampler([(online, 0.5), (offline, 0.25)])


def test_bf16_autocast_path_runs(monkeypatch):
    """The AMP path (bf16 autocast, used on CUDA) exercised on the CPU: no dtype errors, finite losses."""
    torch.manual_seed(0)
    wm = WorldModel(DEBUG_MODEL, SPECS["both"], A)
    ac = ActorCritic(DEBUG_AC, DEBUG_MODEL.feat_dim, A)
    monkeypatch.setattr(wm, "autocast", lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    opt = Optimizer(wm.parameters(), 1e-3, 1e-5, 0.0, 100.0)
    loss, metrics, post = wm.loss(make_batch(SPECS["both"]))
    assert torch.isfinite(loss) and opt.step(loss)["grad_norm"] > 0
    start = {k: v.detach().reshape(18, *v.shape[2:]) for k, v in post.items()}
    out = ac.train_step(wm, start, torch.ones(18), torch.ones(A))
    assert all(torch.isfinite(v) for v in out.values())


def test_one_critic_pass_gives_each_optimizer_its_own_gradients_only():
    """The critic runs once on the imagined features: the actor's loss reaches the critic's weights through the
    bootstrap values, but the actor's step must not write them, and the critic's loss must not move the actor
    (as if the critic had seen detached features)."""
    torch.manual_seed(0)
    wm = WorldModel(DEBUG_MODEL, SPECS["proprio"], A)
    ac = ActorCritic(DEBUG_AC, DEBUG_MODEL.feat_dim, A)
    _, _, post = wm.loss(make_batch(SPECS["proprio"]))
    start = {k: v.detach().reshape(18, *v.shape[2:]) for k, v in post.items()}
    torch.manual_seed(1)
    actor_loss, critic_loss, _ = ac.loss(wm, start, torch.ones(18), torch.ones(A))
    ac.actor_opt.opt.step = lambda: None   # look at the gradients, move nothing
    ac.critic_opt.opt.step = lambda: None
    ac.actor_opt.step(actor_loss, retain_graph=True)
    assert all(p.grad is None for p in ac.critic.parameters()), "the actor's step wrote critic gradients"
    actor_grads = [p.grad.clone() for p in ac.actor.parameters()]
    assert any(float(g.abs().sum()) > 0 for g in actor_grads)
    ac.critic_opt.step(critic_loss)
    assert all(torch.equal(p.grad, g) for p, g in zip(ac.actor.parameters(), actor_grads)), \
        "the critic's step changed the actor's gradients"
    assert all(p.grad is not None for p in ac.critic.parameters())
    assert all(p.grad is None for p in wm.parameters()), "the actor-critic update wrote world-model gradients"


def test_compiled_rssm_steps_match_eager_ones():
    """``compile_steps`` (the Dreamer ``compile`` option) compiles the deterministic part of the prior and
    posterior steps only: the same samples, the same states to float rounding, and gradients still flow."""
    torch.manual_seed(0)
    wm = WorldModel(DEBUG_MODEL, SPECS["proprio"], A)
    batch = make_batch(SPECS["proprio"])
    obs = {"proprio": batch["proprio"]}

    def run():
        torch.manual_seed(3)
        post, prior = wm.observe(obs, batch["prev_action"], batch["is_first"])
        start = {k: v.reshape(18, *v.shape[2:]) for k, v in post.items()}
        states, _ = wm.imagine(lambda f: torch.tanh(f[:, :A]), start, 4)
        return post, prior, states
    eager = run()
    wm.rssm.compile_steps()
    compiled = run()
    for a, b in ((eager[0], compiled[0]), (eager[2], compiled[2])):
        assert torch.equal(a["stoch"].argmax(-1), b["stoch"].argmax(-1)), "compiled steps drew other samples"
        assert torch.allclose(a["stoch"], b["stoch"], atol=1e-5)   # straight-through: sample + p - p.detach()
        assert torch.allclose(a["deter"], b["deter"], atol=1e-5) and torch.allclose(a["logits"], b["logits"], atol=1e-5)
    assert torch.allclose(eager[1], compiled[1], atol=1e-5)
    compiled[2]["deter"].sum().backward()
    assert any(p.grad is not None for p in wm.rssm.core.parameters())
