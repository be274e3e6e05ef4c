"""Collecting reward-free, mixed-quality, multi-embodiment offline data (GSA Section 4 "Dataset").

Source policies (the data's quality mix; recorded per episode as metadata, never as reward):

- ``expert`` (Meta-World): the scripted experts of ``metaworld.policies``, with Gaussian action noise of
  std sigma added at every step and the result clipped to [-1, 1]. The paper injects sigma in
  {0.1, 0.3, 0.5, 1.0, 2.0} into its (TD-MPC2) expert agents; the scripted experts stand in for those.
- ``random`` (any suite): uniform actions in [-1, 1] on the embodiment's action dims.
- ``ou`` (any suite): temporally correlated noise, a discretised Ornstein-Uhlenbeck process
  ``x <- x - theta * x + sigma * sqrt(2 theta - theta^2) * eps`` whose stationary std is sigma, clipped to
  [-1, 1]: smooth, exploratory motions that reach farther than white noise.
- ``icm`` (any suite): URLB's ICM agent (``methods.gsa.curiosity``): DDPG (DrQ-v2's learner on the state
  vector) trained on the curiosity reward log(1 + ||s' - f(s, a)||) alone, from its first (uniform) seed
  frames on; every episode of its training is stored, so the data are mixed in quality by construction. The
  paper's kind of DMC data source (URLB, its ref. [28]). About 150 env frames/s with the tiny preset here.
  Its replay and learning state live in ``<dataset>/explorers/<task>-icm/`` (saved whenever a shard is
  committed, and when the collection is stopped): collecting the same task with ``--append`` again continues
  that explorer's training, so a long collection can be stopped and resumed (with ``--workers`` above 1 each
  setting's explorer starts afresh). Remove the folder to start a new explorer.
- ``disagreement`` (any suite): an intrinsic-motivation explorer (``methods.gsa.explorer``): a backbone
  world model learns online and an actor-critic maximises the disagreement of an ensemble of predictors,
  in the spirit of the unsupervised RL agents the paper's DMC data came from. It keeps learning across the
  episodes of its setting. Costly on a CPU (one update per 8 agent steps with the tiny backbone).

Episodes are stored in the replay's convention (``harness.offline``): the observation at every agent
step, the padded action taken there (zeros on the last step), ``is_first``/``is_last``/``is_terminal``.
The run is described in MLflow (experiment ``datasets``): the config, per-setting returns and success
rates (diagnostics only: they are not stored in the dataset), the dataset summary and a sheet of first
frames.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.errors import HarnessError, check_int
from harness.lifecycle import guarded
from harness.offline import COMPRESSIONS, MANIFEST_FILE, DatasetWriter, _read_manifest, image_grid, open_dataset

POLICIES = ("expert", "random", "ou", "icm", "disagreement")
LEARNING_POLICIES = ("icm", "disagreement")   # explorers that learn as they collect; they read the state
PAPER_NOISE = (0.1, 0.3, 0.5, 1.0, 2.0)   # GSA Sec. 4: Gaussian noise injected into the expert agents
OU_NOISE = (0.3, 0.6, 1.0)                 # ours: stationary std of the OU actions (no paper value)
METAWORLD_STATE_DIM = 39                   # the scripted experts read Meta-World's 39-d state


@dataclass(frozen=True)
class CollectConfig:
    tasks: tuple[str, ...]                 # registered task names (`cli.py tasks list`)
    episodes: int = 10                     # episodes per (task, policy, noise) setting
    policies: tuple[str, ...] = ()         # () = per suite: Meta-World expert; DMC random and ou
    noise: tuple[float, ...] = ()          # () = per policy: expert PAPER_NOISE, ou OU_NOISE; random has none
    ou_theta: float = 0.15                 # OU mean reversion per agent step (the classic DDPG value)
    explorer_preset: str = "tiny"          # icm and disagreement explorers: tiny (CPU) or debug (tests)
    obs_type: str = "pixels"               # stored observations: pixels (the paper), proprio or both
    render_quality: str = "paper"          # paper | fast (tasks/render.py)
    action_repeat: int = 2                 # Table 5: action repeat 2 (data at the agent's step rate)
    episode_frames: int | None = None      # None: the task default (DMC 1000, Meta-World 200 as in ncrl)
    action_pad_dim: int | None = None      # None: the largest action dim of the tasks (or the dataset's, appending)
    proprio_pad_dim: int | None = None     # None: the largest state dim of the tasks (or the dataset's)
    seed: int = 0
    shard_steps: int = 20_000              # stored steps per shard (~80 MB of zlib pixels)
    compression: str = "zlib"              # pixel columns: zlib chunks (2-7x smaller) or none
    chunk_steps: int = 16                  # rows per compressed chunk (a 64-step window decodes ~79 rows)
    append: bool = False                   # add to an existing dataset (same schema)
    workers: int = 1                       # settings collected in parallel processes (the dataset is the same)
    threads: int = 0                       # torch threads of the learning explorers here (0: auto_threads; workers: 1)
    device: str = "auto"                   # where the learning explorers train: auto (cuda if any), cpu, cuda, cuda:N

    def validate(self) -> "CollectConfig":
        from tasks.base import OBS_TYPES, RENDER_QUALITIES
        from tasks.catalog import TASKS
        if not self.tasks:
            raise HarnessError("give at least one task (--tasks a,b,c; see `cli.py tasks list`)")
        for t in self.tasks:
            TASKS.get(t)  # unknown names: a clear error with suggestions
        check_int(self.episodes, "--episodes", 1)
        check_int(self.action_repeat, "--action-repeat", 1, 1000)
        check_int(self.seed, "--seed", 0, 2**63 - 1)
        check_int(self.shard_steps, "--shard-steps", 1)
        check_int(self.chunk_steps, "chunk_steps", 1)
        check_int(self.workers, "--workers", 1, 1024)
        check_int(self.threads, "--threads", 0, 1024)
        for option, value in (("--episode-frames", self.episode_frames), ("--action-pad-dim", self.action_pad_dim),
                              ("--proprio-pad-dim", self.proprio_pad_dim)):
            if value is not None:
                check_int(value, option, 1, 10**9 if option == "--episode-frames" else 65_536)
        bad = [p for p in self.policies if p not in POLICIES]
        if bad:
            raise HarnessError(f"unknown policy {bad[0]!r}; valid: {', '.join(POLICIES)}")
        if any(not (s >= 0 and math.isfinite(s)) for s in self.noise):
            raise HarnessError(f"noise levels must be finite and >= 0, got {list(self.noise)}")
        if self.obs_type not in OBS_TYPES:
            raise HarnessError(f"unknown obs type {self.obs_type!r}; valid: {', '.join(OBS_TYPES)}")
        if self.render_quality not in RENDER_QUALITIES:
            raise HarnessError(f"unknown render quality {self.render_quality!r}; valid: {', '.join(RENDER_QUALITIES)}")
        if self.compression not in COMPRESSIONS:
            raise HarnessError(f"unknown compression {self.compression!r}; valid: {', '.join(COMPRESSIONS)}")
        if not 0 < self.ou_theta <= 1:   # nan fails this too
            raise HarnessError(f"ou_theta must be in (0, 1], got {self.ou_theta}")
        if self.explorer_preset not in ("tiny", "debug"):
            raise HarnessError(f"unknown explorer preset {self.explorer_preset!r}; valid: tiny, debug")
        if any(p in LEARNING_POLICIES for p in self.policies):
            from harness.provenance import resolve_device
            resolve_device(self.device)   # unknown names, or cuda where there is none: a clear error, nothing written
        return self


def expand_tasks(items: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Task names from ``--tasks`` items: a task, ``stream:NAME`` (the distinct tasks of a stream) or
    ``suite:NAME`` (every task of a suite: ``suite:metaworld`` is all 50 Meta-World tasks). Order kept,
    duplicates dropped."""
    from tasks.catalog import TASKS
    out: list[str] = []
    for item in items:
        kind, sep, name = item.partition(":")
        if not sep:
            out.append(item)
        elif kind == "stream":
            from harness.streams import get_stream
            out += [t.name for t in get_stream(name).tasks]
        elif kind == "suite":
            suites = sorted({TASKS.get(e.name).suite for e in TASKS})
            if name not in suites:
                raise HarnessError(f"unknown suite {name!r} in --tasks {item}; valid: {', '.join(suites)}")
            out += [e.name for e in TASKS if TASKS.get(e.name).suite == name]
        else:
            raise HarnessError(f"--tasks item {item!r}: give a task name, stream:NAME or suite:NAME")
    return tuple(dict.fromkeys(out))


def check_output_dir(out: str | Path) -> Path:
    """The dataset directory ``out`` exists as a directory (it is created here) and can be written: a file,
    or a place no directory can be made (``/proc/...``), is a clear error before anything is collected."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HarnessError(f"the dataset path {out} exists and is not a directory; give a directory for OUT")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HarnessError(f"cannot create the dataset directory {out}: {exc.strerror or exc}"
                           + (f" ({exc.filename})" if exc.filename and str(exc.filename) != str(out) else "")) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise HarnessError(f"the dataset directory {out} is not writable")
    return out


@dataclass(frozen=True)
class Setting:
    task: str
    policy: str
    noise: float | None

    @property
    def label(self) -> str:
        return self.policy if self.noise is None else f"{self.policy}-{self.noise:g}"


def plan(cfg: CollectConfig) -> list[Setting]:
    """Every (task, policy, noise) setting the config asks for, in order."""
    from tasks.catalog import TASKS
    out = []
    for name in cfg.tasks:
        suite = TASKS.get(name).suite
        policies = cfg.policies or (("expert",) if suite == "metaworld" else ("random", "ou"))
        for p in policies:
            if p == "expert" and suite != "metaworld":
                raise HarnessError(f"policy 'expert' exists for Meta-World tasks only (metaworld.policies); "
                                   f"{name} is a {suite} task: use random or ou")
            if p == "random" or p in LEARNING_POLICIES:
                out.append(Setting(name, p, None))
                continue
            for s in cfg.noise or (PAPER_NOISE if p == "expert" else OU_NOISE):
                out.append(Setting(name, p, float(s)))
    return out


# ============================================================================ policies

class RandomPolicy:
    def __init__(self, action_dim: int, rng: np.random.Generator):
        self.dim, self.rng = action_dim, rng

    def reset(self) -> None:
        pass

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, self.dim).astype(np.float32)


class OUPolicy:
    """Ornstein-Uhlenbeck actions with stationary std ``sigma``; each episode starts from the stationary law."""

    def __init__(self, action_dim: int, sigma: float, theta: float, rng: np.random.Generator):
        self.dim, self.sigma, self.theta, self.rng = action_dim, sigma, theta, rng
        self.scale = sigma * math.sqrt(2 * theta - theta * theta)
        self.x = np.zeros(action_dim)

    def reset(self) -> None:
        self.x = self.rng.normal(0.0, self.sigma, self.dim)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        a = np.clip(self.x, -1.0, 1.0).astype(np.float32)
        self.x = self.x - self.theta * self.x + self.scale * self.rng.standard_normal(self.dim)
        return a


class ExpertPolicy:
    """A Meta-World scripted expert plus Gaussian noise N(0, sigma^2), clipped to [-1, 1]."""

    def __init__(self, task: str, sigma: float, rng: np.random.Generator):
        from metaworld.policies import ENV_POLICY_MAP
        if task not in ENV_POLICY_MAP:
            raise HarnessError(f"metaworld.policies has no expert for {task!r}")
        self.policy, self.sigma, self.rng = ENV_POLICY_MAP[task](), sigma, rng

    def reset(self) -> None:
        pass

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = np.asarray(obs["proprio"][:METAWORLD_STATE_DIM], np.float64)
        with warnings.catch_warnings():   # the experts warn that their gains exceed [-1, 1]; we clip
            warnings.simplefilter("ignore", UserWarning)
            a = np.asarray(self.policy.get_action(state), np.float64)
        if self.sigma > 0:
            a = a + self.rng.normal(0.0, self.sigma, a.shape)
        return np.clip(a, -1.0, 1.0).astype(np.float32)


def make_policy(setting: Setting, cfg: CollectConfig, action_dim: int, action_pad: int, proprio_pad: int,
                rng: np.random.Generator, explorer_dir: Path | None = None) -> Any:
    """``action_dim``: the embodiment's native action dim; policies return native actions. ``explorer_dir``:
    where a resumable explorer (icm) keeps its replay and state."""
    if setting.policy == "expert":
        return ExpertPolicy(setting.task, float(setting.noise or 0.0), rng)
    if setting.policy == "ou":
        return OUPolicy(action_dim, float(setting.noise or 0.0), cfg.ou_theta, rng)
    from harness.provenance import resolve_device
    if setting.policy == "icm":
        from methods.gsa.curiosity import DEBUG as ICM_DEBUG
        from methods.gsa.curiosity import TINY as ICM_TINY
        from methods.gsa.curiosity import ICMExplorer
        icm = ICM_DEBUG if cfg.explorer_preset == "debug" else ICM_TINY
        return ICMExplorer(icm, proprio_pad, action_pad, action_dim, rng, cfg.action_repeat,
                           device=resolve_device(cfg.device), workdir=explorer_dir)
    if setting.policy == "disagreement":
        from methods.gsa.explorer import DEBUG, DisagreementExplorer, ExplorerConfig
        return DisagreementExplorer(DEBUG if cfg.explorer_preset == "debug" else ExplorerConfig(), proprio_pad,
                                    action_pad, action_dim, rng, device=resolve_device(cfg.device))
    return RandomPolicy(action_dim, rng)


# ============================================================================ collection

@dataclass
class CollectResult:
    path: Path
    run_id: str | None
    episodes: int
    stored_steps: int
    env_frames: int
    summary: dict[str, Any]
    settings: list[dict[str, Any]]


def _pads(cfg: CollectConfig, out: Path) -> tuple[int, int]:
    from tasks.catalog import TASKS
    infos = [TASKS.get(t) for t in cfg.tasks]
    need_a = max(i.action_dim for i in infos)
    need_p = max(i.proprio_dim for i in infos)
    a, p = cfg.action_pad_dim, cfg.proprio_pad_dim
    if cfg.append and (out / MANIFEST_FILE).exists():
        m = _read_manifest(out)
        a = a or int(m["action_pad_dim"])
        if p is None and "proprio" in m["schema"]:
            p = int(m["schema"]["proprio"]["shape"][0])
    a, p = a or need_a, p or need_p
    if a < need_a:
        raise HarnessError(f"action pad dim {a} is smaller than the largest action dim of the tasks ({need_a}); "
                           f"use --action-pad-dim {need_a} or more (ncrl uses 21)")
    if p < need_p and cfg.obs_type != "pixels":
        raise HarnessError(f"proprio pad dim {p} is smaller than the largest state dim of the tasks ({need_p})")
    return a, max(p, need_p)


def _run_episode(env: Any, policy: Any, pad: int, stored: tuple[str, ...]) -> tuple[dict[str, np.ndarray], float, float, int]:
    """One episode: (arrays in the stored convention, return, success, env frames)."""
    obs = env.reset()
    policy.reset()
    rows: dict[str, list[np.ndarray]] = {k: [obs[k]] for k in stored}
    actions, ret, success, frames, terminated = [], 0.0, 0.0, 0, False
    while True:
        native = policy.act(obs)
        action = np.zeros(pad, np.float32)
        action[:len(native)] = native
        res = env.step(action)
        if hasattr(policy, "observe"):   # a learning explorer
            policy.observe(action, res.obs, res.terminated or res.truncated, res.terminated)
        actions.append(action)
        ret += res.reward
        success = max(success, float(res.info.get("success", 0.0)))
        frames += res.env_frames
        obs = res.obs
        for k in stored:
            rows[k].append(obs[k])
        if res.terminated or res.truncated:
            terminated = res.terminated
            break
    t = len(actions) + 1
    actions.append(np.zeros(pad, np.float32))
    ep = {k: np.stack(v) for k, v in rows.items()}
    ep["action"] = np.stack(actions)
    ep["is_first"] = np.zeros(t, bool)
    ep["is_last"] = np.zeros(t, bool)
    ep["is_terminal"] = np.zeros(t, bool)
    ep["is_first"][0] = ep["is_last"][-1] = True
    ep["is_terminal"][-1] = terminated
    return ep, ret, success, frames


def info_of(s: Setting) -> Any:
    from tasks.catalog import TASKS
    return TASKS.get(s.task)


def _seeds(cfg: CollectConfig, existing: int, si: int) -> tuple[int, int]:
    """(env seed, policy seed) of setting ``si``: fixed by the config and the episodes already in the dataset,
    whichever process collects it."""
    seq = np.random.SeedSequence([cfg.seed, existing, si])
    env_seed, pol_seed = (int(x) for x in seq.generate_state(2))
    return env_seed, pol_seed


EXPLORERS_DIR = "explorers"   # in the dataset folder: the learning explorers' replays and states


def explorer_dir(out: Path, s: Setting) -> Path:
    """Where the explorer of setting ``s`` keeps its replay and state inside the dataset folder ``out``."""
    return out / EXPLORERS_DIR / f"{s.task}-{s.label}"


def collect_setting(si: int, s: Setting, cfg: CollectConfig, existing: int, action_pad: int, proprio_pad: int,
                    stored: tuple[str, ...], sink: Callable[..., Any], state_dir: Path | None = None,
                    echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Collect every episode of one (task, policy, noise) setting, handing each to ``sink(episode, return,
    success, env_frames, provenance)`` as it ends; returns the setting's row of diagnostics. Runs in the
    collecting process or in a worker process.

    ``state_dir`` (in the collecting process only): a resumable explorer (icm) continues from the state it
    saved there, saves it again whenever ``sink`` says the dataset committed its episodes (returns True), and
    when the collection is stopped (Ctrl-C, SIGTERM): collecting again continues the same explorer's
    training instead of starting a new one."""
    from tasks.base import EnvConfig, make_env
    info = info_of(s)
    env_obs = cfg.obs_type
    if (s.policy == "expert" or s.policy in LEARNING_POLICIES) and env_obs == "pixels":
        env_obs = "both"   # these policies read the state; only pixels are stored
    env_seed, pol_seed = _seeds(cfg, existing, si)
    resumable = state_dir is not None and s.policy == "icm"
    policy = make_policy(s, cfg, info.action_dim, action_pad, proprio_pad, np.random.default_rng(pol_seed),
                         explorer_dir=state_dir if resumable else None)
    resumed = resumable and policy.load()
    if resumed and echo is not None:
        echo(f"  {s.task} {s.label}: continuing the explorer saved in {state_dir} ({policy.steps:,} agent steps, "
             f"{policy.updates:,} updates of training so far)")
    continued = resumed and policy.env_seed is not None   # the env stream of its first collection, where it was left
    if continued:
        env_seed = policy.env_seed
    env = make_env(s.task, EnvConfig(obs_type=env_obs, render_quality=cfg.render_quality,
                                     action_repeat=cfg.action_repeat, episode_frames=cfg.episode_frames,
                                     action_pad_dim=action_pad, proprio_pad_dim=proprio_pad), seed=env_seed)
    for _ in range(policy.episodes if continued else 0):   # a reset draws an episode's start: replay the stream
        env.reset()
    if resumable:
        policy.env_seed = env_seed
    returns, successes = [], []
    ended = None    # a resumable explorer's state at the end of its last complete episode
    try:
        for _ in range(cfg.episodes):
            ep, ret, success, frames = _run_episode(env, policy, action_pad, stored)
            committed = sink(ep, ret, success, frames, policy.provenance() if hasattr(policy, "provenance") else None)
            if resumable:
                policy.episodes += 1
                ended = policy.snapshot()
                if committed:
                    policy.save(ended)
            returns.append(ret)
            successes.append(success)
        if resumable:
            policy.save(ended)
    except KeyboardInterrupt:   # Ctrl-C or SIGTERM: the writer keeps the complete episodes, and the explorer is
        if ended is not None:   # kept as it was at the last one's end (not mid-episode): continuing is exact
            policy.save(ended)
        raise
    finally:
        env.close()
    row = {"task": s.task, "embodiment": info.embodiment, "policy": s.policy, "noise": s.noise,
           "episodes": len(returns), "mean_return": float(np.mean(returns))}
    if info.score_kind == "success":
        row["success_rate"] = float(np.mean(successes))
    if getattr(policy, "metrics", None):
        row |= {f"explorer_{k}": v for k, v in policy.metrics.items()} | {"explorer_updates": policy.updates}
    return row


def _worker_setting(args: tuple[Any, ...]) -> tuple[list[Any], dict[str, Any]]:
    import torch
    torch.set_num_threads(1)   # one thread per worker process (never oversubscribe the cores)
    episodes: list[Any] = []
    row = collect_setting(*args, sink=lambda *e: episodes.append(e))
    return episodes, row


def _collect_settings(settings: list[Setting], cfg: CollectConfig, existing: int, action_pad: int,
                      proprio_pad: int, stored: tuple[str, ...], write: Callable[..., bool], out: Path,
                      echo: Callable[[str], None]) -> Any:
    """Yield (index, setting, row) in the settings' order after ``write(index, setting, *episode)`` got each of
    its episodes: collected here (``workers`` 1: each episode written as it ends, explorers resumable) or by a
    pool of worker processes (a setting's episodes written when it ends; explorers start afresh); either way
    the dataset is the same."""
    args = [(si, s, cfg, existing, action_pad, proprio_pad, stored) for si, s in enumerate(settings)]
    if cfg.workers == 1 or len(settings) == 1:
        import torch

        from harness.provenance import auto_threads
        before = torch.get_num_threads()
        # The learning explorers train here: one thread on a shared machine (two OpenMP threads beside another
        # busy process ran the ICM explorer about 8x slower, 15 vs 124 env frames/s).
        torch.set_num_threads(cfg.threads or auto_threads())
        try:
            for a in args:
                yield a[0], a[1], collect_setting(*a, sink=lambda *e, a=a: write(a[0], a[1], *e),
                                                  state_dir=explorer_dir(out, a[1]), echo=echo)
        finally:
            torch.set_num_threads(before)
        return
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")   # no fork of a process holding simulators and threads
    with ctx.Pool(min(cfg.workers, len(settings))) as pool:
        for a, (episodes, row) in zip(args, pool.imap(_worker_setting, args)):
            for e in episodes:
                write(a[0], a[1], *e)
            yield a[0], a[1], row


def collect(out: str | Path, cfg: CollectConfig, *, echo: Callable[[str], None] = print,
            reporter: Any | None = None, log_mlflow: bool = True) -> CollectResult:
    """Collect the episodes ``cfg`` asks for into the dataset at ``out`` and describe it in MLflow."""
    from tqdm import tqdm


    cfg = cfg.validate()
    out = Path(out)
    settings = plan(cfg)
    action_pad, proprio_pad = _pads(cfg, out)
    stored = ("pixels",) if cfg.obs_type == "pixels" else ("proprio",) if cfg.obs_type == "proprio" else ("pixels", "proprio")
    obs_spec: dict[str, tuple[tuple[int, ...], Any]] = {}
    if "pixels" in stored:
        obs_spec["pixels"] = ((3, 64, 64), np.uint8)
    if "proprio" in stored:
        obs_spec["proprio"] = ((proprio_pad,), np.float32)
    check_output_dir(out)
    created = not (out / MANIFEST_FILE).exists()
    writer = DatasetWriter(out, obs_spec, action_pad, shard_steps=cfg.shard_steps, compression=cfg.compression,
                           chunk_steps=cfg.chunk_steps, append=cfg.append,
                           description=f"collected by cli.py collect: {', '.join(cfg.tasks)}")
    existing = int(writer.manifest.get("episodes", 0))

    rep, run_id = None, None
    if log_mlflow:
        from harness.provenance import machine_tags, resolve_device
        from harness.reporting import MlflowReporter, flatten
        rep = reporter or MlflowReporter()
        learns = any(s.policy in LEARNING_POLICIES for s in settings)
        params = flatten({"collect": dataclasses.asdict(cfg) | {"action_pad_dim": action_pad,
                                                                 "proprio_pad_dim": proprio_pad,
                                                                 "device": resolve_device(cfg.device) if learns else "cpu"}})
        try:
            run_id = rep.start("datasets", out.resolve().name,
                               {"kind": "collect", "dataset_path": str(out.resolve()), "append": str(cfg.append),
                                **machine_tags()}, params)
        except BaseException:
            if created and writer.episodes_written == 0:
                import shutil
                shutil.rmtree(out, ignore_errors=True)   # the store refused the run: leave no empty dataset
            raise
        echo(f"MLflow run {run_id} (experiment 'datasets'); writing {out}")
    # one lifecycle (harness/lifecycle.py): an error or a kill ends the run FAILED/KILLED with this hint
    guard = (guarded(rep, lambda: f"Its {writer.episodes_written} committed episodes are kept in {out}; collect more "
                                  "into it with --append.", echo) if rep is not None else contextlib.nullcontext())

    total = len(settings) * cfg.episodes
    bar = tqdm(total=total, unit="episode", desc="collect", dynamic_ncols=True, disable=None)
    per_setting: list[dict[str, Any]] = []
    first_frames: list[np.ndarray] = []
    env_frames, episodes_done, t0 = 0, 0, time.monotonic()
    status = "FAILED"
    with guard:
        try:
            with writer:
                done_in: dict[int, int] = {}

                def write(si: int, s: Setting, ep: dict[str, np.ndarray], ret: float, success: float, frames: int,
                          prov: Any) -> bool:
                    """Add one episode; True when this committed the episodes so far to disk."""
                    nonlocal env_frames, episodes_done
                    info = info_of(s)
                    committed_before = writer.episodes_written
                    writer.add_episode(ep, embodiment=info.embodiment, task=s.task, policy=s.policy, noise=s.noise,
                                       action_dim=info.action_dim, seed=_seeds(cfg, existing, si)[0], provenance=prov)
                    if "pixels" in ep and len(first_frames) < 64 and si not in done_in:
                        first_frames.append(ep["pixels"][0])
                    done_in[si] = done_in.get(si, 0) + 1
                    env_frames += frames
                    episodes_done += 1
                    bar.update(1)
                    bar.set_postfix(task=s.task, policy=s.label,
                                    fps=f"{env_frames / max(time.monotonic() - t0, 1e-6):.0f}")
                    return writer.episodes_written != committed_before

                for si, s, row in _collect_settings(settings, cfg, existing, action_pad, proprio_pad, stored, write,
                                                    out, bar.write):
                    per_setting.append(row)
                    bar.write(f"  [{si + 1}/{len(settings)}] {s.task} {s.label}: {row['episodes']} episodes, mean return "
                              f"{row['mean_return']:.1f}"
                              + (f", success {row['success_rate']:.2f}" if "success_rate" in row else ""))
                    if rep is not None:
                        key = f"collect/{s.task}/{s.label}"
                        rep.log_metrics({f"{key}/mean_return": row["mean_return"],
                                         **({f"{key}/success_rate": row["success_rate"]} if "success_rate" in row else {}),
                                         **{f"{key}/{k}": v for k, v in row.items() if k.startswith("explorer_")},
                                         "collect/episodes": episodes_done, "collect/env_frames": env_frames,
                                         "collect/env_fps": env_frames / max(time.monotonic() - t0, 1e-6)},
                                        step=episodes_done)
            status = "FINISHED"
        finally:
            bar.close()
            if status != "FINISHED":
                echo(f"collection stopped: {writer.episodes_written} complete episodes were committed to {out}")
                if created and writer.episodes_written == 0:
                    import shutil
                    shutil.rmtree(out, ignore_errors=True)   # nothing collected: leave no empty dataset behind
            summary: dict[str, Any] = {}
            try:
                ds = open_dataset(out, list(stored))
                summary = ds.summary() | {"content_sha256": ds.content_digest()}   # equal for data collected again
                ds.close()
            except HarnessError:
                pass   # nothing committed (an early failure): nothing to describe
            if rep is not None:   # what was committed is described even when the collection failed
                quiet = contextlib.suppress(Exception) if status != "FINISHED" else contextlib.nullcontext()
                with quiet:   # a failing store must not hide the error that stopped the collection
                    _describe(rep, summary, per_setting, first_frames, episodes_done)
        if rep is not None:
            rep.close("FINISHED")
    echo(f"collected {episodes_done} episodes ({env_frames:,} env frames) into {out}: "
         f"{summary.get('episodes', 0)} episodes, {summary.get('stored_steps', 0):,} stored steps in all, "
         f"{summary.get('bytes_per_million_steps', 0) / 1e9:.2f} GB per million steps"
         + (f"; content sha256 {summary['content_sha256'][:12]}" if summary.get("content_sha256") else ""))
    return CollectResult(out, run_id, episodes_done, writer.steps_written, env_frames, summary, per_setting)


def _describe(rep: Any, summary: dict[str, Any], per_setting: list[dict[str, Any]], first_frames: list[np.ndarray],
              episodes_done: int) -> None:
    if summary:
        rep.log_metrics({"dataset/episodes": summary["episodes"], "dataset/stored_steps": summary["stored_steps"],
                         "dataset/bytes_on_disk": summary["bytes_on_disk"],
                         "dataset/bytes_per_million_steps": summary["bytes_per_million_steps"],
                         "dataset/damaged": summary["damaged"]}, step=episodes_done)
        rep.log_json(summary, "dataset_summary.json")
        if summary.get("content_sha256"):
            rep.set_tags({"dataset_sha256": summary["content_sha256"]})
    rep.log_json(per_setting, "collect_settings.json")
    if first_frames:
        _log_first_frames(rep, first_frames)


def _log_first_frames(rep: Any, frames: list[np.ndarray]) -> None:
    import tempfile

    import imageio.v2 as imageio
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "first_frames.png"
        imageio.imwrite(path, image_grid(np.stack(frames), ncols=8))
        rep.log_artifact(path)
