"""THE training loop: train a method on each task of a stream in order, evaluate on all tasks,
report to MLflow, checkpoint, and resume exactly.

Resume is exact on the CPU with state observations: a run killed at any moment and resumed gives the
same R matrix, bit for bit, as the run that was never stopped. A checkpoint holds the runner's position,
the global RNGs, the method's ``state_dict()`` (its replay's open episode included), the acting state
the runner carries between agent steps, and the open training episode: how often the task's env was
reset and the actions taken since the last reset. On resume the env is rebuilt with its seed and that
history replayed, which restores its physics and RNG exactly for any deterministic simulator, so no
simulator-specific state is needed (the replayed observation is checked against a checksum).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tempfile
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness import checkpoint, metrics, plots
from harness.config import RunConfig
from harness.errors import HarnessError, NonFiniteLossError
from harness.evaluation import evaluate
from harness.launch import run_key
from harness.lifecycle import CHECKPOINT_FRAMES_TAG, RunLock, Terminated, check_writable_dir, guarded, sigterm_checkpoints
from harness.provenance import auto_threads, git_commit, machine_tags, resolve_device, rng_state, seed_everything, set_rng_state
from harness.reporting import PARENT, TASK, MlflowReporter, flatten, ui_command
from methods import METHODS
from methods.base import MethodContext, MethodSpec, Step, TaskContext, resolve_config
from tasks.base import EnvConfig, TaskInfo, make_env, normalized_score
from tasks.catalog import TASKS

__all__ = ["NonFiniteLossError", "Progress", "RunResult", "prepare", "resume_config", "run_stream"]


@dataclass
class Progress:
    """The runner's position; saved in every checkpoint. Scores are normalised, 0..100."""
    task_index: int = 0                 # stream position being trained (== len(tasks) when done)
    task_env_frames: int = 0            # env frames spent on that task so far
    global_env_frames: int = 0
    episodes: int = 0
    R: list[list[float]] = field(default_factory=list)          # R[i][j]: score on j after training i
    curves: list[dict[str, Any]] = field(default_factory=list)  # every evaluation, on all tasks
    boundaries: list[int] = field(default_factory=list)         # global env frames at each task end
    episode: dict[str, Any] = field(default_factory=dict)       # the open training episode (OpenEpisode)


@dataclass
class OpenEpisode:
    """The training episode in progress, enough to rebuild the env exactly where it was."""
    env_resets: int = 0                     # reset() calls on this task's env so far
    actions: list[list[float]] = field(default_factory=list)   # actions since the last reset
    ret: float = 0.0                        # return so far
    success: float = 0.0
    reward: float = 0.0                     # the reward that came with the current observation
    is_first: bool = True
    obs_crc: int = 0                        # crc32 of the current observation (checked after a replay)


@dataclass
class RunResult:
    run_id: str
    R: np.ndarray                   # fractions 0..1
    summary: dict[str, float]
    run_dir: Path


# ----------------------------------------------------------------------------- setup

def prepare(cfg: RunConfig) -> tuple[RunConfig, list[TaskInfo], MethodSpec, Any]:
    """Validate everything before anything is written: tasks, method, preset, overrides, env config, the
    device and the runs folder."""
    cfg.validate()
    infos = [TASKS.get(t.name) for t in cfg.stream.tasks]
    spec: MethodSpec = METHODS.load(cfg.method)
    method_cfg = resolve_config(spec, cfg.method, cfg.preset, dict(cfg.overrides))
    # One shared action space and state vector for the whole stream: zero-padded to the largest in use.
    act_pad = max(i.action_dim for i in infos)
    prop_pad = max(i.proprio_dim for i in infos)
    for what, given, need in (("action_pad_dim", cfg.env.action_pad_dim, act_pad),
                              ("proprio_pad_dim", cfg.env.proprio_pad_dim, prop_pad)):
        if given is not None and given < need:
            raise HarnessError(f"{what}={given} is smaller than the stream needs ({need})")
    env = dataclasses.replace(cfg.env, action_pad_dim=cfg.env.action_pad_dim or act_pad,
                              proprio_pad_dim=cfg.env.proprio_pad_dim or prop_pad)
    if spec.setup is not None:
        env = spec.setup(method_cfg, infos, env)
    resolve_device(cfg.device)
    check_writable_dir(cfg.runs_dir, "--runs-dir")
    return dataclasses.replace(cfg, env=env), infos, spec, method_cfg


def _obs_spec(env_cfg: EnvConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    spec: dict[str, tuple[tuple[int, ...], str]] = {}
    if env_cfg.obs_type in ("pixels", "both"):
        spec["pixels"] = ((3, env_cfg.image_size, env_cfg.image_size), "uint8")
    if env_cfg.obs_type in ("proprio", "both"):
        spec["proprio"] = ((int(env_cfg.proprio_pad_dim),), "float32")
    return spec


def _task_ctx(i: int, cfg: RunConfig, info: TaskInfo, mask: np.ndarray) -> TaskContext:
    return TaskContext(index=i, name=info.name, embodiment=info.embodiment, suite=info.suite,
                       frames=cfg.stream.tasks[i].frames, action_mask=mask, action_repeat=cfg.env.action_repeat)


def _mask(info: TaskInfo, pad: int) -> np.ndarray:
    m = np.zeros(pad, np.float32)
    m[: info.action_dim] = 1.0
    return m


def _obs_crc(obs: dict[str, np.ndarray]) -> int:
    crc = 0
    for k in sorted(obs):
        crc = zlib.crc32(np.ascontiguousarray(obs[k]).tobytes(), crc)
    return crc


def learning_problem(cfg: RunConfig, method_cfg: Any, task_index: int) -> str:
    """A hash of everything that changes the learning problem of one task of the run: the method and its
    resolved config, the observations, action repeat, image size, render quality, episode length, camera
    and the task's env-frame budget. Single-task reference runs for forward transfer must match it."""
    env = cfg.env
    key = {"method": cfg.method, "method_config": dataclasses.asdict(method_cfg), "task": cfg.stream.tasks[task_index].name,
           "frames": cfg.stream.tasks[task_index].frames, "obs_type": env.obs_type, "action_repeat": env.action_repeat,
           "image_size": env.image_size, "render_quality": env.render_quality, "camera": env.camera,
           "episode_frames": env.episode_frames or TASKS.get(cfg.stream.tasks[task_index].name).episode_frames}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the loop

class _Run:
    """The state of one run while it trains; `run_stream` below drives it."""

    def __init__(self, cfg: RunConfig, infos: list[TaskInfo], method: Any, reporter: MlflowReporter,
                 run_dir: Path, progress: Progress, echo: Any, device: str):
        self.cfg, self.infos, self.method, self.rep = cfg, infos, method, reporter
        self.run_dir, self.p, self.echo, self.device = run_dir, progress, echo, device
        self.masks = [_mask(i, cfg.env.action_pad_dim) for i in infos]
        self.ctxs = [_task_ctx(i, cfg, info, self.masks[i]) for i, info in enumerate(infos)]
        self.ep = OpenEpisode(**progress.episode) if progress.episode else OpenEpisode()
        self.act_state: Any = None          # what method.act returned last, carried to its next call
        self.stop_requested: Callable[[], bool] = lambda: False   # set by run_stream (lifecycle.sigterm_checkpoints)

    # -- checkpoints
    def save(self) -> None:
        self.rep.flush()  # everything the checkpoint has seen is in MLflow before it is written
        self.p.episode = dataclasses.asdict(self.ep)
        checkpoint.save(self.run_dir / checkpoint.CHECKPOINT_FILE,
                        {"progress": dataclasses.asdict(self.p), "method": self.method.state_dict(),
                         "act_state": checkpoint.to_plain(self.act_state), "rng": rng_state()})
        self.rep.set_tags({CHECKPOINT_FRAMES_TAG: str(self.p.global_env_frames)})   # `runs list`, `sweep status`

    # -- evaluation on every task of the stream
    def evaluate_all(self, video_for: int | None = None) -> list[float]:
        scores, logged = [], {}
        for j, info in enumerate(self.infos):
            video = self.cfg.video_frames if j == video_for else 0
            res = evaluate(self.method, self.ctxs[j], info, self.cfg.env, self.cfg.stream.eval.episodes,
                           self.cfg.seed, video)
            scores.append(res.score)
            key = f"eval/{j}-{info.name}"
            logged |= {f"{key}/score": res.score, f"{key}/return": res.mean_return}
            if info.score_kind == "success":
                logged[f"{key}/success"] = res.success_rate
            if video and res.frames:
                with tempfile.TemporaryDirectory() as tmp:
                    gif = plots.save_gif(res.frames, Path(tmp) / f"{j}-{info.name}.gif")
                    self.rep.log_artifact(gif, "videos", run=TASK)
        logged["eval/mean_score"] = float(np.mean(scores))
        self.rep.log_metrics(logged, self.p.global_env_frames, run=PARENT)
        self.p.curves.append({"global_env_frames": self.p.global_env_frames, "task_index": self.p.task_index,
                              "task_env_frames": self.p.task_env_frames, "scores": scores})
        return scores

    # -- the env of one task, and its open episode
    def _reset(self, env: Any) -> dict[str, np.ndarray]:
        obs = env.reset()
        self.ep = OpenEpisode(env_resets=self.ep.env_resets + 1, obs_crc=_obs_crc(obs))
        self.act_state = None
        return obs

    def _replay_open_episode(self, env: Any, i: int) -> dict[str, np.ndarray]:
        """Resume mid-task: the env re-created with its seed, reset as often as before and the open
        episode's actions taken again. Deterministic simulators end where they were."""
        for _ in range(self.ep.env_resets):
            obs = env.reset()
        for a in self.ep.actions:
            obs = env.step(np.asarray(a, np.float32)).obs
        if _obs_crc(obs) != self.ep.obs_crc:
            warnings.warn(f"task {i} ({self.infos[i].name}): replaying the open episode did not reproduce its "
                          "observation exactly (a renderer or simulator that is not deterministic here); the "
                          "resumed run continues from the replayed state and will differ from an uninterrupted one",
                          RuntimeWarning, stacklevel=2)
        return obs

    def _env_seed(self, i: int) -> int:
        return int(np.random.SeedSequence([self.cfg.seed, i, 0x7EA1]).generate_state(1)[0])

    # -- one task
    def train_task(self, i: int) -> None:
        from tqdm import tqdm
        cfg, info, ctx, spec = self.cfg, self.infos[i], self.ctxs[i], self.cfg.stream.tasks[i]
        env = make_env(info.name, cfg.env, seed=self._env_seed(i))
        every = cfg.stream.eval.every_frames
        next_eval = (self.p.task_env_frames // every + 1) * every
        next_ckpt = self.p.global_env_frames + cfg.checkpoint_every_frames
        next_log = (self.p.task_env_frames // cfg.log_every_frames + 1) * cfg.log_every_frames
        bar = tqdm(total=spec.frames, initial=self.p.task_env_frames, unit="frame", dynamic_ncols=True,
                   desc=f"[{i + 1}/{len(self.infos)}] {info.name}", leave=True, mininterval=1.0,
                   disable=None)  # None: a bar on a terminal, none in logs
        pending: dict[str, list[float]] = {}
        try:
            if self.p.task_env_frames == 0:  # a resumed run in the middle of the task has it in state_dict
                self.method.on_task_start(ctx)
                self.ep = OpenEpisode()
                obs = self._reset(env)
            else:
                obs = self._replay_open_episode(env, i)
            ep, t0, frames0 = self.ep, time.monotonic(), self.p.task_env_frames
            while self.p.task_env_frames < spec.frames:
                batch = {k: v[None] for k, v in obs.items()} | {"is_first": np.array([ep.is_first])}
                actions, self.act_state = self.method.act(batch, self.act_state, ctx, explore=True)
                assert actions.shape == (1, cfg.env.action_pad_dim), (
                    f"act() returned shape {actions.shape}, expected (1, {cfg.env.action_pad_dim})")
                action = np.asarray(actions[0], np.float32)
                self.method.observe(Step(obs, action, ep.reward, ep.is_first, False, False))
                res = env.step(action)
                ep.actions.append(action.tolist())
                self.p.task_env_frames += res.env_frames
                self.p.global_env_frames += res.env_frames
                ep.ret += res.reward
                ep.success = max(ep.success, float(res.info.get("success", 0.0)))
                obs, ep.reward, ep.is_first, ep.obs_crc = res.obs, res.reward, False, _obs_crc(res.obs)
                budget_done = self.p.task_env_frames >= spec.frames
                if res.terminated or res.truncated or budget_done:
                    self.method.observe(Step(obs, np.zeros_like(action), ep.reward, False, True, res.terminated))
                    self.p.episodes += 1
                    logged = {"train/episode_return": ep.ret, "train/episode_score":
                              normalized_score(info, ep.ret, ep.success), "train/episodes": self.p.episodes}
                    if info.score_kind == "success":
                        logged["train/episode_success"] = ep.success
                    self.rep.log_metrics(logged, self.p.global_env_frames, run=TASK)
                    fps = (self.p.task_env_frames - frames0) / max(time.monotonic() - t0, 1e-6)
                    bar.set_postfix(ret=f"{ep.ret:.1f}", fps=f"{fps:.0f}")
                    if not budget_done:
                        obs = self._reset(env)
                        ep = self.ep
                try:
                    updated = self.method.update(self.p.global_env_frames)
                    for k, v in updated.items():
                        if "loss" in k and not math.isfinite(v):
                            raise NonFiniteLossError(f"non-finite {k}={v}")
                except NonFiniteLossError as exc:   # raised where the value arose (an update) or here
                    raise NonFiniteLossError(
                        f"{exc} at global env frame {self.p.global_env_frames} (task {i} {info.name}); the run "
                        f"stopped. The last good checkpoint is {self.run_dir / checkpoint.CHECKPOINT_FILE}") from None
                for k, v in updated.items():
                    pending.setdefault(k, []).append(v)
                bar.update(res.env_frames)
                if self.p.task_env_frames >= next_log:
                    fps = (self.p.task_env_frames - frames0) / max(time.monotonic() - t0, 1e-6)
                    self.rep.log_metrics({k: float(np.mean(v)) for k, v in pending.items()} |
                                         {"perf/env_fps": fps}, self.p.global_env_frames, run=TASK)
                    pending.clear()
                    next_log += cfg.log_every_frames
                if self.p.task_env_frames >= next_eval and not budget_done:
                    scores = self.evaluate_all()
                    bar.write(f"  eval @ {self.p.global_env_frames} env frames: " +
                              " ".join(f"{s:.1f}" for s in scores))
                    next_eval += every
                if self.p.global_env_frames >= next_ckpt and not budget_done:
                    self.save()
                    next_ckpt = self.p.global_env_frames + cfg.checkpoint_every_frames
                if self.stop_requested() and not budget_done:
                    self.save()
                    raise Terminated(f"signal 15; a checkpoint was saved at global env frame "
                                     f"{self.p.global_env_frames}")
            if pending:  # what the last partial logging interval gathered
                self.rep.log_metrics({k: float(np.mean(v)) for k, v in pending.items()}, self.p.global_env_frames,
                                     run=TASK)
        finally:
            bar.close()
            env.close()

    def finish_task(self, i: int) -> None:
        """End of task i: the R row (evaluation on all tasks), a video, the method's hook, a checkpoint."""
        # The method finishes the task first (PackNet prunes and freezes here), then R[i] is measured.
        end_metrics = self.method.on_task_end(self.ctxs[i]) or {}
        row = self.evaluate_all(video_for=i)
        self.p.R.append(row)
        self.p.boundaries.append(self.p.global_env_frames)
        self.rep.log_metrics({f"task_end/{k}": v for k, v in end_metrics.items()} |
                             {f"R/{j}-{n.name}": s for j, (n, s) in enumerate(zip(self.infos, row))},
                             self.p.global_env_frames, run=TASK)
        self.echo(f"task {i} ({self.infos[i].name}) done at {self.p.global_env_frames} env frames; "
                  f"scores on all tasks: " + ", ".join(f"{s:.1f}" for s in row))
        self.p.task_index, self.p.task_env_frames = i + 1, 0
        self.ep, self.act_state = OpenEpisode(), None
        self.save()            # from here on a resume starts the next task; the rest is idempotent
        self.log_stream_artifacts()
        self.rep.end_task("FINISHED")

    def log_stream_artifacts(self) -> None:
        names = [info.name for info in self.infos]
        self.rep.log_json({"tasks": names, "R": self.p.R, "units": "normalised score 0-100",
                           "definition": "R[i][j] = score on task j after training task i"}, "R_matrix.json")
        with tempfile.TemporaryDirectory() as tmp:
            png = plots.learning_curves(self.p.curves, names, self.p.boundaries,
                                        f"{self.cfg.method} on {self.cfg.stream.name} (seed {self.cfg.seed})",
                                        Path(tmp) / "learning_curves.png")
            self.rep.log_artifact(png)

    def aucs(self) -> list[np.ndarray]:
        """Each task's curve over its own training window (its evaluations, ending with its R row)."""
        return [np.array([c["scores"][i] for c in self.p.curves if c["task_index"] == i] or [self.p.R[i][i]]) / 100
                for i in range(len(self.infos))]


def _reference_aucs(rep: MlflowReporter, cfg: RunConfig, method_cfg: Any) -> np.ndarray:
    """Forward transfer's baselines: FINISHED single-task runs (streams of one task) of the same learning
    problem (:func:`learning_problem`: method and config, observations, env settings, budget), from any
    experiment in the store. The matched run ids are recorded on the run (tags ``ft_reference.<j>``)."""
    method = cfg.ft_reference_method or cfg.method
    ref_cfg = dataclasses.replace(cfg, method=method)
    if method != cfg.method:   # another method's reference runs: its config at the run's preset
        method_cfg = resolve_config(METHODS.load(method), method, cfg.preset, {})
    experiments = [e.experiment_id for e in rep.client.search_experiments()]
    out, matched = [], {}
    for j, t in enumerate(cfg.stream.tasks):
        runs = rep.client.search_runs(
            experiments, filter_string=(f"tags.single_task = '{t.name}' and "
                                        f"tags.learning_problem = '{learning_problem(ref_cfg, method_cfg, j)}' and "
                                        "attributes.status = 'FINISHED'"), max_results=50)
        runs = [r for r in runs if "cl/auc" in r.data.metrics and r.info.run_id != rep.run_ids[PARENT]]
        out.append(float(np.mean([r.data.metrics["cl/auc"] for r in runs])) if runs else np.nan)
        matched[f"ft_reference.{j}-{t.name}"] = ",".join(r.info.run_id for r in runs) or "none"
    rep.set_tags(matched)
    return np.array(out)


def _note_same_runs(rep: MlflowReporter, key: str, echo: Any) -> None:
    """Before a new run: say so when the same run (same ``run_key``) was started before and did not finish,
    dead processes included, so that a killed week of training is resumed rather than repeated."""
    from harness.lifecycle import liveness
    exps = [e.experiment_id for e in rep.client.search_experiments()]
    if not exps:
        return
    for r in rep.client.search_runs(exps, filter_string=f"tags.run_key = '{key}' and attributes.status != 'FINISHED'",
                                    max_results=20):
        lv = liveness(r)
        state = f"RUNNING ({lv.state}: {lv.reason})" if lv.state != "ended" else r.info.status
        echo(f"note: the same run was started before as {r.info.run_id} and is {state}; "
             f"continue it instead with: python cli.py run-stream --resume {r.info.run_id}")


def _resume_hint(run_id: str | None) -> str:
    return f"Continue it with: python cli.py run-stream --resume {run_id}"


def _start(cfg: RunConfig, spec: MethodSpec, method_cfg: Any, rep: MlflowReporter) -> str:
    names = [t.name for t in cfg.stream.tasks]
    tags = {"method": cfg.method, "stream": cfg.stream.name, "seed": str(cfg.seed),
            "preset": cfg.preset or spec.default_preset, "obs_type": cfg.env.obs_type,
            "git_commit": git_commit(), "tasks": ",".join(names), "budget_frames": str(cfg.stream.total_frames),
            "runs_dir": str(Path(cfg.runs_dir).resolve()), "run_key": run_key(cfg, method_cfg),
            "torch_threads": str(cfg.torch_threads or auto_threads())} | dict(cfg.tags)
    tags |= machine_tags()
    if getattr(method_cfg, "pretrained", ""):   # which generalist: the same weights give the same digest anywhere
        from methods.gsa.pretrain import generalist_tags
        tags |= generalist_tags(method_cfg.pretrained)
    if len(names) == 1:
        tags["single_task"] = names[0]
        tags["learning_problem"] = learning_problem(cfg, method_cfg, 0)
    params = flatten({"run": {k: v for k, v in cfg.to_dict().items() if k != "stream"},
                      "stream": cfg.stream.to_dict(), "method_config": dataclasses.asdict(method_cfg)})
    return rep.start(f"stream/{cfg.stream.name}", f"{cfg.method}-seed{cfg.seed}", tags, params)


def run_stream(cfg: RunConfig, resume: str | None = None, echo: Any = print,
               reporter: MlflowReporter | None = None) -> RunResult:
    """Train ``cfg.method`` on every task of ``cfg.stream`` in order. ``resume`` is an MLflow run id (its
    config comes from :func:`resume_config`)."""
    cfg, infos, spec, method_cfg = prepare(cfg)          # nothing exists yet: a refused run leaves nothing
    device = resolve_device(cfg.device)
    rep = reporter or MlflowReporter()
    locks: list[RunLock] = []
    try:
        return _run(cfg, infos, spec, method_cfg, device, rep, resume, echo, locks)
    finally:
        for lock in locks:
            lock.release()


def _run(cfg: RunConfig, infos: list[TaskInfo], spec: MethodSpec, method_cfg: Any, device: str,
         rep: MlflowReporter, resume: str | None, echo: Any, locks: list[RunLock]) -> RunResult:
    if resume:
        rep.check_resumable(resume)
        run_dir = _run_dir(rep.client.get_run(resume), resume)
        locks.append(RunLock(run_dir, resume).acquire())
        rep.resume(resume)
    else:
        _note_same_runs(rep, run_key(cfg, method_cfg), echo)
        run_id = _start(cfg, spec, method_cfg, rep)
        run_dir = Path(cfg.runs_dir).resolve() / run_id

    with guarded(rep, lambda: _resume_hint(rep.run_ids[PARENT]), echo):
        ckpt = run_dir / checkpoint.CHECKPOINT_FILE
        payload = None
        if resume:
            if ckpt.is_file():
                payload = checkpoint.load(ckpt)
            elif rep.task_runs():   # resume_config refuses this case before anything changes
                raise HarnessError(f"run {resume}: its checkpoint {ckpt} is missing although tasks were trained; "
                                   "it was moved or deleted")
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            locks.append(RunLock(run_dir, run_id).acquire())
            checkpoint.write_text_atomic(run_dir / "config.json", cfg.to_json())
            rep.set_tags({"checkpoint_dir": str(run_dir)})
            rep.log_json(cfg.to_dict() | {"method_config": dataclasses.asdict(method_cfg)}, "config.json")
        progress = Progress(**payload["progress"]) if payload else Progress()

        seed_everything(cfg.seed, cfg.torch_threads or auto_threads())
        _cap_gpu_memory(device)
        ctx = MethodContext(task_names=tuple(t.name for t in cfg.stream.tasks), obs_spec=_obs_spec(cfg.env),
                            action_dim=int(cfg.env.action_pad_dim), seed=cfg.seed, device=device,
                            workdir=run_dir / "method", log_json=lambda obj, name: rep.log_json(obj, name, run=TASK))
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        method = spec.build(method_cfg, ctx)
        run = _Run(cfg, infos, method, rep, run_dir, progress, echo, device)
        if payload:
            method.load_state_dict(payload["method"])
            set_rng_state(payload["rng"])
            run.act_state = checkpoint.from_plain(payload.get("act_state"), device)
            rep.end_stale_tasks(progress.task_index)
            if progress.task_index < len(infos):
                rep.start_task(progress.task_index, infos[progress.task_index].name, _task_tags(cfg))
            rep.skip_logged_from(progress.global_env_frames)   # what the killed process logged after it
            rep.set_tags({f"resumed_at_env_frames.{int(time.time())}": str(progress.global_env_frames)})
            echo(f"resuming run {resume} at task {progress.task_index}, "
                 f"{progress.task_env_frames} env frames into it ({progress.global_env_frames} in all)")
            if progress.task_index > 0 and progress.task_env_frames == 0:
                run.log_stream_artifacts()   # a kill may have cut their upload short
        else:
            run.save()  # the first checkpoint exists before the run id is printed
            echo(f"resuming run {resume} from its start (it was stopped before its first checkpoint)" if resume else
                 f"MLflow run {rep.run_ids[PARENT]} (experiment 'stream/{cfg.stream.name}'); checkpoints in {run_dir}")

        with sigterm_checkpoints() as run.stop_requested:   # SIGTERM: a checkpoint first, then KILLED
            for i in range(progress.task_index, len(infos)):
                if rep.run_ids[TASK] is None:
                    rep.start_task(i, infos[i].name, _task_tags(cfg))
                run.train_task(i)
                run.finish_task(i)
                if run.stop_requested():
                    raise Terminated(f"signal 15 at the end of task {i}; its boundary checkpoint is saved")
        R = np.array(progress.R) / 100.0
        summary = metrics.summarize(R, run.aucs(), _reference_aucs(rep, cfg, method_cfg))
        summary |= {f"final/{j}-{info.name}": float(progress.R[-1][j]) for j, info in enumerate(infos)}
        rep.log_metrics(summary, progress.global_env_frames, run=PARENT)
        run.log_stream_artifacts()
        rep.close("FINISHED")
    echo(f"done: {cfg.method} on {cfg.stream.name}, seed {cfg.seed}, {progress.global_env_frames:,} env frames")
    for k, v in summary.items():
        echo(f"  {k:<40} {v:8.3f}")
    echo(f"look at the results with: {ui_command(rep.uri)}")
    return RunResult(rep.run_ids[PARENT] or "", R, summary, run_dir)


def _cap_gpu_memory(device: str) -> None:
    """``GSA_CUDA_MEMORY_FRACTION`` (set by `sweep` when it packs several runs on one GPU): this process's cap."""
    import os
    fraction = os.environ.get("GSA_CUDA_MEMORY_FRACTION")
    if fraction and device.startswith("cuda"):
        import torch
        torch.cuda.set_per_process_memory_fraction(float(fraction), torch.device(device))


def _task_tags(cfg: RunConfig) -> dict[str, str]:
    return {"method": cfg.method, "stream": cfg.stream.name, "seed": str(cfg.seed)}


def _run_dir(run: Any, run_id: str) -> Path:
    ckpt_dir = run.data.tags.get("checkpoint_dir")
    if not ckpt_dir:
        if "runs_dir" in run.data.tags:
            raise HarnessError(f"run {run_id!r} was stopped before its folder was made: nothing was trained. "
                               "Start a new run (`cli.py runs gc` marks this one KILLED)")
        raise HarnessError(f"run {run_id!r} has no checkpoint_dir tag: it was not started by run-stream")
    return Path(ckpt_dir)


def resume_config(run_id: str, reporter: MlflowReporter) -> RunConfig:
    """The config of run ``run_id``, read from its checkpoint directory; clear errors for every run that
    cannot be resumed (unknown, a task run, FINISHED, alive elsewhere, moved or damaged). Writes nothing."""
    run = reporter.check_resumable(run_id)
    cfg_path = _run_dir(run, run_id) / "config.json"
    if not cfg_path.is_file():
        raise HarnessError(f"run {run_id!r}: missing {cfg_path}; the checkpoint directory was moved or deleted")
    try:
        cfg = RunConfig.from_dict(json.loads(cfg_path.read_text()))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise HarnessError(f"run {run_id!r}: {cfg_path} is damaged ({type(exc).__name__}: {exc}); "
                           "it must be the config.json that run-stream wrote") from None
    ckpt = cfg_path.parent / checkpoint.CHECKPOINT_FILE
    if ckpt.exists():
        checkpoint.load(ckpt)  # clear error now if corrupt
    elif reporter.task_runs(run_id):
        raise HarnessError(f"missing checkpoint {ckpt} of run {run_id!r}, which trained tasks already: "
                           "the checkpoint directory was moved or damaged")
    return cfg
