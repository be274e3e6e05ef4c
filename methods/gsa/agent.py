"""GSA fine-tuning on a stream (paper Section 3.3, Algorithm 1 "Task-Specific Training"), and its ablations.

For every task of the stream:

1. **Experience retrieval.** The first training observation of the task goes through the *pre-trained*
   encoder (a frozen copy: the index was built with it) and the faiss index returns the ``retrieve_k``
   nearest offline trajectories of the task's embodiment (Eq. 4). What was retrieved is logged to MLflow:
   count, distances, source tasks and policies (metrics ``retrieval/*`` and ``retrieval/task<i>.json``).
2. **Behaviour-cloning prior.** π_bc (Appendix G.1, ``methods/gsa/bc.py``) is trained from scratch on the
   retrieved trajectories with the action MSE masked to the embodiment's action dims.
3. **Fine-tuning.** The Dreamer agent (``methods/dreamer.py``) starts from the pre-trained world model and
   fine-tunes all of it. World-model batches mix online replay and retrieved data at ``offline_fraction``
   (Table 5: 0.25); the reward head learns from online rows only; the actor-critic imagines from the
   posterior states of the whole mixed batch.
4. **Execution guidance.** At each episode start a linear schedule (Table 5) decides whether π_bc acts; if it
   does, it acts inside a window of random start and length (``methods/gsa/guidance.py``) and the RL policy
   acts elsewhere. During warm-up π_bc acts for whole episodes, replacing random exploration.
5. **Continual streams.** The agent keeps its weights and all online experience across tasks (Section 4.2);
   retrieval and π_bc are redone for each task.

The ablations of the paper's Fig. 6 and JSRL-BC are the same class with switches (registered in
``methods/__init__.py``): ``gsa-p`` (P: pre-training only), ``gsa-p-er`` (P+ER), ``gsa-p-g`` (P+G),
``gsa`` (P+ER+G) and ``jsrl-bc`` (no pre-trained weights, no rehearsal; π_bc rolls in from step 0 of the
episode, as JSRL's guide policy does).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.errors import HarnessError
from methods.backbone.checkpoint import CheckpointMismatchError
from methods.base import MAX_COUNT, MethodContext, MethodSpec, Step, TaskContext, check_config, ranged
from methods.dreamer import PRESETS as DREAMER_PRESETS
from methods.dreamer import Dreamer, DreamerConfig
from methods.gsa.bc import BCConfig, BCPolicy, PriorActor, bc_step
from methods.gsa.guidance import GuidanceSchedule, schedule_for


def _agent(preset: str) -> DreamerConfig:
    # Continual (Section 4.2): earlier tasks' experience is kept; it trains the world model (past_fraction of
    # every batch) but never the reward head.
    return DreamerConfig(**DREAMER_PRESETS[preset], reset_replay_each_task=False)


@dataclass(frozen=True)
class GSAConfig:
    agent: DreamerConfig = field(default_factory=lambda: _agent("paper"))  # Table 5 "Fine-tuning" (methods/dreamer.py)
    bc: BCConfig = field(default_factory=BCConfig)          # Appendix G.1 / ncrl (methods/gsa/bc.py)
    pretrained: str = ""            # pre-training run directory (world_model.pt + index/): `cli.py pretrain`
    offline_data: str = ""          # offline dataset; "" = the one the model was pre-trained on
    use_pretrained: bool = True     # P: start from the pre-trained world model (False: from scratch)
    rehearsal: bool = True          # ER: mix retrieved trajectories into world-model batches
    guidance: bool = True           # G: π_bc acts in scheduled windows and during warm-up
    # GSA: windows start anywhere; "start": at step 0 (JSRL-BC)
    guidance_anchor: str = ranged("random", one_of=("random", "start"))
    retrieve_k: int = ranged(500, ge=1, le=1_000_000)  # ncrl: the 500 nearest trajectories
    retrieval_filter: str = ranged("embodiment", one_of=("embodiment", "action-mask"))
                                    # ours: the task's embodiment (walker != cheetah); "action-mask": ncrl's
                                    # rule, same action dim
    offline_fraction: float = ranged(0.25, ge=0, lt=1)  # Table 5: offline data mix ratio 0.25
    guidance_dmc_agent_steps: int = ranged(50_000, ge=0, le=MAX_COUNT)  # Table 5: linear(1, 0, 50000) for DMC
    # Table 5: linear(1, 0, 150000) for Meta-World
    guidance_metaworld_agent_steps: int = ranged(150_000, ge=0, le=MAX_COUNT)
    guidance_prob_end: float = ranged(0.0, ge=0, le=1)  # Table 5: decays to 0 (ncrl's code: 0.1)

    def validate(self) -> None:
        if self.offline_fraction + self.agent.past_fraction >= 1.0:
            raise HarnessError(f"offline_fraction={self.offline_fraction} + agent.past_fraction="
                               f"{self.agent.past_fraction} must be < 1: the current task's rows need a share of "
                               "every batch")

    @property
    def needs_retrieval(self) -> bool:
        return self.rehearsal or self.guidance


PRESETS: dict[str, dict[str, Any]] = {
    # debug: tests only.
    "debug": dict(agent=_agent("debug"), bc=BCConfig(grad_updates=20, batch_size=16), retrieve_k=8,
                  guidance_dmc_agent_steps=200, guidance_metaworld_agent_steps=200),
    # tiny: this CPU. Agent = dreamer's tiny preset; π_bc 2k updates instead of 150k (its loss flattens
    # within ~1k on CPU-sized retrieved sets); the guidance schedule decays over 6k agent steps (12k env
    # frames) instead of 50k/150k: the same share of a 20k-frame CPU task as of the paper's budgets.
    "tiny": dict(agent=_agent("tiny"), bc=BCConfig(grad_updates=2_000),
                 guidance_dmc_agent_steps=6_000, guidance_metaworld_agent_steps=6_000),
    "small": dict(agent=_agent("small")),
    "paper": {},
}


# ============================================================================ the pre-trained assets

def pretrain_dir(path: str) -> Path:
    p = Path(path).expanduser()
    return p.parent if p.is_file() else p


def missing_pretrained(method: str, infos: list[Any], obs_type: str) -> HarnessError:
    tasks = ",".join(dict.fromkeys(i.name for i in infos))
    obs = "proprio" if obs_type == "proprio" else obs_type
    return HarnessError(
        f"method {method!r} fine-tunes a pre-trained world model: pass --pretrained DIR. Make one with\n"
        f"  python cli.py collect data/offline --tasks {tasks} --obs {obs}\n"
        f"  python cli.py pretrain --data data/offline --preset tiny --obs {obs} --build-index --out runs/pretrained\n"
        f"then add --pretrained runs/pretrained --preset tiny to this command; or run all of it with\n"
        f"  python cli.py pipeline STREAM --obs {obs}")


def _dataset_for(cfg: GSAConfig, directory: Path, obs_keys: list[str]) -> Any:
    from harness.offline import open_dataset
    info_path = directory / "pretrain.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    data = cfg.offline_data or info.get("data")
    if not data:
        raise HarnessError(f"no offline dataset: {directory} does not name one; pass --offline-data DIR")
    return open_dataset(data, obs_keys, action_pad_dim=info.get("action_pad_dim"))


def setup(cfg: GSAConfig, infos: list[Any], env: Any, method: str = "gsa") -> Any:
    """Everything that can be wrong with the inputs, checked before a run is created; returns the env
    config padded like the pre-trained model (its encoder and action head fix the dims)."""
    from methods.gsa.pretrain import load_pretrained
    from methods.gsa.retrieval import Retriever
    if not cfg.pretrained:
        raise missing_pretrained(method, infos, env.obs_type)
    check_config(cfg, method)   # field ranges (resolve_config checked them too; setup may be called alone)
    directory = pretrain_dir(cfg.pretrained)
    wm, _ = load_pretrained(directory)
    if cfg.use_pretrained:
        saved, wanted = wm.cfg.sizes(), cfg.agent.model.sizes()
        diffs = [f"{k}={saved[k]} in the checkpoint but {wanted[k]} in this preset" for k in saved if saved[k] != wanted[k]]
        if diffs:
            raise CheckpointMismatchError(f"pre-trained world model {directory} does not match this preset: "
                                          + "; ".join(diffs) + " (pass the --preset it was pre-trained with)")
    keys = sorted(wm.obs_shapes)
    obs_type = "both" if keys == ["pixels", "proprio"] else keys[0]
    if env.obs_type != obs_type:
        raise HarnessError(f"the pre-trained world model {directory} takes {obs_type} observations; "
                           f"run with --obs {obs_type}")
    if "pixels" in wm.obs_shapes and wm.obs_shapes["pixels"][1] != env.image_size:
        raise HarnessError(f"the pre-trained world model takes {wm.obs_shapes['pixels'][1]}px images, "
                           f"the env renders {env.image_size}px")
    need_act = max(i.action_dim for i in infos)
    if wm.action_dim < need_act:
        big = max(infos, key=lambda i: i.action_dim)
        raise HarnessError(f"the pre-trained world model {directory} takes {wm.action_dim}-d actions, but "
                           f"{big.name} needs {big.action_dim}: pre-train on data that includes that embodiment")
    proprio = None
    if "proprio" in wm.obs_shapes:
        proprio = int(wm.obs_shapes["proprio"][0])
        need = max(infos, key=lambda i: i.proprio_dim)
        if proprio < need.proprio_dim:
            raise HarnessError(f"the pre-trained world model {directory} takes {proprio}-d states, but "
                               f"{need.name} has {need.proprio_dim}: pre-train on data that includes it")
    if cfg.needs_retrieval:
        ret = Retriever(directory, world_model=wm)   # index missing, unreadable or for another encoder: errors
        ds = _dataset_for(cfg, directory, keys)
        try:
            have = set(ds.embodiments())
            for info in infos:
                if cfg.retrieval_filter == "embodiment":
                    if info.embodiment not in ret.index.ranges or info.embodiment not in have:
                        raise HarnessError(
                            f"the offline data has no trajectory of {info.name}'s embodiment {info.embodiment!r} "
                            f"(dataset {ds.root}: {', '.join(sorted(have))}); collect some with "
                            f"`cli.py collect DIR --tasks {info.name} --append` and rebuild the index")
                elif not (ret.index.action_dims == info.action_dim).any():
                    raise HarnessError(f"the index has no trajectory with {info.name}'s action dim {info.action_dim}")
        finally:
            ds.close()
    return dataclasses.replace(env, action_pad_dim=int(wm.action_dim),
                               proprio_pad_dim=proprio if proprio is not None else env.proprio_pad_dim)


# ============================================================================ the method

class GSA:
    def __init__(self, cfg: GSAConfig, ctx: MethodContext):
        from methods.gsa.pretrain import load_pretrained
        if not cfg.pretrained:
            raise HarnessError("GSA needs cfg.pretrained (a pre-training run directory)")
        self.cfg, self.ctx = cfg, ctx
        self.device = torch.device(ctx.device)
        self.directory = pretrain_dir(cfg.pretrained)
        pre, _ = load_pretrained(self.directory)
        self.agent = Dreamer(cfg.agent, ctx)
        if cfg.use_pretrained:
            self.agent.wm.load_state_dict(pre.state_dict())   # all of it is fine-tuned
        self._pretrained_wm = pre          # frozen: retrieval features must match the index
        self._retriever: Any = None
        self._dataset: Any = None
        self.rng = np.random.default_rng([ctx.seed, 0x65A])
        self.prior: PriorActor | None = None   # π_bc acting, with its frame stack (pixels)
        self.bc_loss = float("nan")
        self.task: TaskContext | None = None
        self.schedule: GuidanceSchedule = schedule_for("dmc")
        self.episode_steps = 500
        self.retrieved_task = -1           # task index the current retrieved set belongs to
        self.retrieved_uids: list[str] = []
        self.window = (0, 0)               # [start, end) agent steps of this episode where π_bc acts
        self.t = 0                         # agent steps into the current training episode
        self.last_bc = False
        self.task_bc_steps = 0
        self.task_steps = 0
        self._report: dict[str, float] = {}

    @property
    def bc(self) -> BCPolicy | None:
        """The current task's π_bc (None before its retrieval, or without guidance)."""
        return None if self.prior is None else self.prior.bc

    # ------------------------------------------------------------------ assets
    def retriever(self) -> Any:
        from methods.gsa.retrieval import Retriever
        if self._retriever is None:
            self._retriever = Retriever(self.directory, device=str(self.device), world_model=self._pretrained_wm)
        return self._retriever

    def dataset(self) -> Any:
        if self._dataset is None:
            self._dataset = _dataset_for(self.cfg, self.directory, list(self.agent.wm.obs_shapes))
        return self._dataset

    # ------------------------------------------------------------------ tasks
    def _set_task(self, task: TaskContext) -> None:
        from tasks.catalog import TASKS
        c = self.cfg
        self.task = task
        self.schedule = schedule_for(task.suite, c.guidance_dmc_agent_steps, c.guidance_metaworld_agent_steps,
                                     c.guidance_prob_end, c.guidance_anchor)
        self.episode_steps = max(1, TASKS.get(task.name).episode_frames // max(task.action_repeat, 1))

    def on_task_start(self, task: TaskContext) -> None:
        self.agent.on_task_start(task)
        self._set_task(task)
        # Retrieval and π_bc are redone for every task, at its first training observation (act()).
        self.prior, self.bc_loss = None, float("nan")
        self.agent.rehearsal, self.agent.rehearsal_fraction = None, 0.0
        self.retrieved_task, self.retrieved_uids = -1, []
        self.task_bc_steps = self.task_steps = 0
        self.window, self.t = (0, 0), 0

    def on_task_end(self, task: TaskContext) -> dict[str, float]:
        out = self.agent.on_task_end(task)
        out["bc_share"] = self.task_bc_steps / max(self.task_steps, 1)
        return out

    def _retrieve(self, obs: dict[str, np.ndarray]) -> None:
        """Eq. 4 on the task's first observation, then π_bc on what came back."""
        assert self.task is not None
        task, c = self.task, self.cfg
        t0 = time.perf_counter()
        first = {k: np.asarray(obs[k])[0] for k in self.agent.wm.obs_shapes}
        hits = self.retriever().query(first, c.retrieve_k,
                                      embodiment=task.embodiment if c.retrieval_filter == "embodiment" else None,
                                      action_mask=task.action_mask if c.retrieval_filter == "action-mask" else None)[0]
        self.retrieved_task, self.retrieved_uids = task.index, list(hits.uids)
        self._use_retrieved()
        by_uid = {m.uid: m for m in self.dataset().subset(hits.uids).episodes}
        metas = [by_uid[u] for u in hits.uids if u in by_uid]
        d = hits.distances
        self._report = {"retrieval/count": float(len(hits.uids)), "retrieval/distance_min": float(d.min()),
                        "retrieval/distance_mean": float(d.mean()), "retrieval/distance_max": float(d.max()),
                        "retrieval/same_task_fraction": float(np.mean([m.task == task.name for m in metas])),
                        "retrieval/seconds": time.perf_counter() - t0}
        if c.guidance:
            t1 = time.perf_counter()
            self.bc_loss = self._train_bc()
            self._report |= {"bc/final_loss": self.bc_loss, "bc/seconds": time.perf_counter() - t1}
        if self.ctx.log_json is not None:
            self.ctx.log_json({
                "task": task.name, "task_index": task.index, "k": c.retrieve_k, "filter": c.retrieval_filter,
                "count": len(hits.uids), "by_task": dict(Counter(m.task for m in metas)),
                "by_policy": dict(Counter(f"{m.policy}" + ("" if m.noise is None else f" sigma={m.noise}") for m in metas)),
                "distance": {"min": float(d.min()), "mean": float(d.mean()), "max": float(d.max())},
                "bc_final_loss": self.bc_loss,
                "trajectories": [{"uid": u, "task": m.task, "embodiment": m.embodiment, "policy": m.policy,
                                  "noise": m.noise, "distance": float(x)}
                                 for u, x in zip(hits.uids, d) if (m := by_uid.get(u)) is not None],
            }, f"retrieval/task{task.index:02d}-{task.name}.json")

    def _use_retrieved(self) -> None:
        if self.cfg.rehearsal and self.retrieved_uids:
            self.agent.rehearsal = self.dataset().subset(self.retrieved_uids)
            self.agent.rehearsal_fraction = self.cfg.offline_fraction

    def _bc_batch(self, data: Any, n: int, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        stack = self.cfg.bc.frame_stack if "pixels" in self.agent.wm.obs_shapes else 1
        b = data.sample(n, stack, self.rng)
        out: dict[str, torch.Tensor] = {}
        if "pixels" in b:
            px = b["pixels"]
            out["pixels"] = torch.as_tensor(px.reshape(n, -1, *px.shape[-2:]), device=self.device)
        if "proprio" in b:
            out["proprio"] = torch.as_tensor(b["proprio"][:, -1], device=self.device)
        out["action"] = torch.as_tensor(b["action"][:, -1], device=self.device)
        valid = torch.as_tensor(~b["is_last"][:, -1], device=self.device).float()   # no action is taken there
        out["action_mask"] = mask[None] * valid[:, None]
        return out

    def _train_bc(self) -> float:
        """π_bc from scratch on the retrieved trajectories (ncrl: batch 256, Adam 1e-4, masked MSE)."""
        assert self.task is not None
        c = self.cfg.bc
        data = self.dataset().subset(self.retrieved_uids)
        bc = BCPolicy(c, self.ctx.obs_spec, self.ctx.action_dim).to(self.device)
        opt = torch.optim.Adam(bc.parameters(), lr=c.lr)
        mask = torch.as_tensor(np.asarray(self.task.action_mask, np.float32), device=self.device)
        losses = []
        for _ in range(c.grad_updates):
            losses.append(bc_step(bc, opt, self._bc_batch(data, c.batch_size, mask))["bc/loss"])
        bc.eval()
        self.prior = PriorActor(bc, self.device)
        return float(np.mean(losses[-max(1, len(losses) // 10):]))

    # ------------------------------------------------------------------ acting
    def act(self, obs: dict[str, np.ndarray], state: Any, task: TaskContext,
            explore: bool) -> tuple[np.ndarray, Any]:
        if not explore:
            return self.agent.act(obs, state, task, explore)   # evaluation: the RL policy alone
        if self.cfg.needs_retrieval and self.retrieved_task != task.index:
            self._retrieve(obs)
        if not self.cfg.guidance:
            self.last_bc = False
            return self.agent.act(obs, state, task, explore)
        assert obs["is_first"].shape == (1,), f"guided acting is unbatched (B=1), got {obs['is_first'].shape}"
        assert self.prior is not None, "guidance without π_bc"
        self.prior.push(obs)
        warm = self.agent.warming_up
        if obs["is_first"][0]:
            self.t = 0
            self.window = self.schedule.window(self.agent.task_agent_steps, self.episode_steps, self.rng, warmup=warm)
        use_bc = self.window[0] <= self.t < self.window[1] or warm
        self.t += 1
        self.last_bc = use_bc
        if warm:   # π_bc replaces random exploration during warm-up
            return self.prior.action(obs, task.action_mask), None
        action, state = self.agent.act(obs, state, task, explore)
        if use_bc:
            action = self.prior.action(obs, task.action_mask)
            state = dict(state, action=torch.as_tensor(action, device=self.device))  # the latent sees what was done
        return action, state

    def observe(self, step: Step) -> None:
        self.agent.observe(step)
        if not step.is_last:
            self.task_steps += 1
            self.task_bc_steps += int(self.last_bc)

    def update(self, env_frames: int) -> dict[str, float]:
        out = self.agent.update(env_frames)
        if self.cfg.guidance:
            out["guidance/bc_step"] = float(self.last_bc)   # averaged per log interval: the BC share
            out["guidance/prob"] = self.schedule.prob(self.agent.task_agent_steps)
        if self._report:
            out |= self._report
            self._report = {}
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        t = self.task
        return {"agent": self.agent.state_dict(), "bc": None if self.bc is None else self.bc.state_dict(),
                "bc_loss": self.bc_loss, "retrieved_task": self.retrieved_task, "retrieved_uids": self.retrieved_uids,
                "task": None if t is None else {"index": t.index, "name": t.name, "embodiment": t.embodiment,
                                                "suite": t.suite, "frames": t.frames, "action_repeat": t.action_repeat,
                                                "action_mask": [float(x) for x in t.action_mask]},
                "task_bc_steps": self.task_bc_steps, "task_steps": self.task_steps,
                "rng": self.rng.bit_generator.state,
                # the open training episode: its guidance window, position and π_bc's frame stack
                "episode": {"window": list(self.window), "t": self.t, "last_bc": self.last_bc,
                            "stacks": [] if self.prior is None else
                            [[torch.from_numpy(np.array(f)) for f in s] for s in self.prior.stacks]}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        if state["task"] is not None:
            t = state["task"]
            self._set_task(TaskContext(t["index"], t["name"], t["embodiment"], t["suite"], t["frames"],
                                       np.asarray(t["action_mask"], np.float32), t["action_repeat"]))
        self.retrieved_task, self.retrieved_uids = int(state["retrieved_task"]), list(state["retrieved_uids"])
        self._use_retrieved()
        self.prior, self.bc_loss = None, float(state["bc_loss"])
        if state["bc"] is not None:
            bc = BCPolicy(self.cfg.bc, self.ctx.obs_spec, self.ctx.action_dim).to(self.device)
            bc.load_state_dict(state["bc"])
            bc.eval()
            self.prior = PriorActor(bc, self.device)
        self.task_bc_steps, self.task_steps = int(state["task_bc_steps"]), int(state["task_steps"])
        self.rng.bit_generator.state = state["rng"]
        ep = state.get("episode")
        if ep is not None:
            self.window, self.t, self.last_bc = (int(ep["window"][0]), int(ep["window"][1])), int(ep["t"]), bool(ep["last_bc"])
            if self.prior is not None:
                self.prior.stacks = [[f.numpy() for f in s] for s in ep["stacks"]]


def _spec(name: str, **switches: Any) -> MethodSpec:
    return MethodSpec(functools.partial(GSAConfig, **switches), GSA, presets=PRESETS, default_preset="paper",
                      setup=functools.partial(setup, method=name))


SPEC = _spec("gsa")                                                    # P+ER+G: the full method
SPEC_P = _spec("gsa-p", rehearsal=False, guidance=False)               # P: naive fine-tuning
SPEC_P_ER = _spec("gsa-p-er", guidance=False)                          # P+ER
SPEC_P_G = _spec("gsa-p-g", rehearsal=False)                           # P+G
SPEC_JSRL_BC = _spec("jsrl-bc", use_pretrained=False, rehearsal=False, guidance_anchor="start")  # from scratch
