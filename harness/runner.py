"""THE training loop: train a method on each task of a stream in order, evaluate on all tasks,
report to MLflow, checkpoint, and resume."""
from __future__ import annotations

import dataclasses
import json
import math
import platform
import random
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from harness import checkpoint, metrics, plots
from harness.config import RunConfig
from harness.errors import HarnessError
from harness.evaluation import evaluate
from harness.reporting import PARENT, TASK, MlflowReporter, flatten, ui_command
from methods import METHODS
from methods.base import MethodContext, MethodSpec, Step, TaskContext, resolve_config
from tasks.base import EnvConfig, TaskInfo, make_env, normalized_score
from tasks.catalog import TASKS

PACKAGES = ("torch", "numpy", "mujoco", "dm_control", "metaworld", "gymnasium", "faiss-cpu", "mlflow",
            "click", "avalanche-lib")


class NonFiniteLossError(HarnessError):
    pass


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


@dataclass
class RunResult:
    run_id: str
    R: np.ndarray                   # fractions 0..1
    summary: dict[str, float]
    run_dir: Path


# ----------------------------------------------------------------------------- setup

def prepare(cfg: RunConfig) -> tuple[RunConfig, list[TaskInfo], MethodSpec, Any]:
    """Validate everything before anything is written: tasks, method, preset, overrides, env config."""
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
    return dataclasses.replace(cfg, env=env), infos, spec, method_cfg


def _obs_spec(env_cfg: EnvConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    spec: dict[str, tuple[tuple[int, ...], str]] = {}
    if env_cfg.obs_type in ("pixels", "both"):
        spec["pixels"] = ((3, env_cfg.image_size, env_cfg.image_size), "uint8")
    if env_cfg.obs_type in ("proprio", "both"):
        spec["proprio"] = ((int(env_cfg.proprio_pad_dim),), "float32")
    return spec


def _device(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HarnessError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    return name


def _seed_everything(seed: int, threads: int) -> None:
    import torch
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "missing"
    return out


def _task_ctx(i: int, cfg: RunConfig, info: TaskInfo, mask: np.ndarray) -> TaskContext:
    return TaskContext(index=i, name=info.name, embodiment=info.embodiment, suite=info.suite,
                       frames=cfg.stream.tasks[i].frames, action_mask=mask, action_repeat=cfg.env.action_repeat)


def _mask(info: TaskInfo, pad: int) -> np.ndarray:
    m = np.zeros(pad, np.float32)
    m[: info.action_dim] = 1.0
    return m


def _rng_state() -> dict[str, Any]:
    import torch
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [int(x) for x in np.random.get_state()[1]], "numpy_pos": int(np.random.get_state()[2])}


def _set_rng_state(s: dict[str, Any]) -> None:
    import torch
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))
    torch.set_rng_state(s["torch"])
    np.random.set_state(("MT19937", np.array(s["numpy"], dtype=np.uint32), s["numpy_pos"], 0, 0.0))


# ----------------------------------------------------------------------------- the loop

class _Run:
    """The state of one run while it trains; `run_stream` below drives it."""

    def __init__(self, cfg: RunConfig, infos: list[TaskInfo], method: Any, reporter: MlflowReporter,
                 run_dir: Path, progress: Progress, echo: Any):
        self.cfg, self.infos, self.method, self.rep = cfg, infos, method, reporter
        self.run_dir, self.p, self.echo = run_dir, progress, echo
        self.masks = [_mask(i, cfg.env.action_pad_dim) for i in infos]
        self.ctxs = [_task_ctx(i, cfg, info, self.masks[i]) for i, info in enumerate(infos)]

    # -- checkpoints
    def save(self) -> None:
        self.rep.flush()  # everything the checkpoint has seen is in MLflow before it is written
        checkpoint.save(self.run_dir / checkpoint.CHECKPOINT_FILE,
                        {"progress": dataclasses.asdict(self.p), "method": self.method.state_dict(),
                         "rng": _rng_state()})

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

    # -- one task
    def train_task(self, i: int) -> None:
        from tqdm import tqdm
        cfg, info, ctx, spec = self.cfg, self.infos[i], self.ctxs[i], self.cfg.stream.tasks[i]
        env = make_env(info.name, cfg.env, seed=int(np.random.SeedSequence([cfg.seed, i, 0x7EA1]).generate_state(1)[0]))
        every = cfg.stream.eval.every_frames
        next_eval = (self.p.task_env_frames // every + 1) * every
        next_ckpt = self.p.global_env_frames + cfg.checkpoint_every_frames
        next_log = self.p.task_env_frames + cfg.log_every_frames
        bar = tqdm(total=spec.frames, initial=self.p.task_env_frames, unit="frame", dynamic_ncols=True,
                   desc=f"[{i + 1}/{len(self.infos)}] {info.name}", leave=True, mininterval=1.0,
                   disable=None)  # None: a bar on a terminal, none in logs
        pending: dict[str, list[float]] = {}
        try:
            if self.p.task_env_frames == 0:  # not again when a run resumes mid-task (state_dict has it)
                self.method.on_task_start(ctx)
            obs, reward, is_first, state = env.reset(), 0.0, True, None
            ep_return, ep_success, t0, frames0 = 0.0, 0.0, time.monotonic(), self.p.task_env_frames
            while self.p.task_env_frames < spec.frames:
                batch = {k: v[None] for k, v in obs.items()} | {"is_first": np.array([is_first])}
                actions, state = self.method.act(batch, state, ctx, explore=True)
                assert actions.shape == (1, cfg.env.action_pad_dim), (
                    f"act() returned shape {actions.shape}, expected (1, {cfg.env.action_pad_dim})")
                action = np.asarray(actions[0], np.float32)
                self.method.observe(Step(obs, action, reward, is_first, False, False))
                res = env.step(action)
                self.p.task_env_frames += res.env_frames
                self.p.global_env_frames += res.env_frames
                ep_return += res.reward
                ep_success = max(ep_success, float(res.info.get("success", 0.0)))
                obs, reward, is_first = res.obs, res.reward, False
                budget_done = self.p.task_env_frames >= spec.frames
                if res.terminated or res.truncated or budget_done:
                    self.method.observe(Step(obs, np.zeros_like(action), reward, False, True, res.terminated))
                    self.p.episodes += 1
                    ep = {"train/episode_return": ep_return, "train/episode_score":
                          normalized_score(info, ep_return, ep_success), "train/episodes": self.p.episodes}
                    if info.score_kind == "success":
                        ep["train/episode_success"] = ep_success
                    self.rep.log_metrics(ep, self.p.global_env_frames, run=TASK)
                    bar.set_postfix(ret=f"{ep_return:.1f}", fps=f"{(self.p.task_env_frames - frames0) / max(time.monotonic() - t0, 1e-6):.0f}")
                    if not budget_done:
                        obs, reward, is_first, state = env.reset(), 0.0, True, None
                        ep_return, ep_success = 0.0, 0.0
                for k, v in self.method.update(self.p.global_env_frames).items():
                    if "loss" in k and not math.isfinite(v):
                        raise NonFiniteLossError(
                            f"non-finite {k}={v} at global env frame {self.p.global_env_frames} "
                            f"(task {i} {info.name}); the run stopped. The last good checkpoint is "
                            f"{self.run_dir / checkpoint.CHECKPOINT_FILE}")
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
        self.save()
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


def _reference_aucs(rep: MlflowReporter, cfg: RunConfig) -> np.ndarray:
    """Single-task runs (streams of one task) with the same budget, from any experiment in the store."""
    method = cfg.ft_reference_method or cfg.method
    out = []
    for t in cfg.stream.tasks:
        runs = rep.client.search_runs(
            [e.experiment_id for e in rep.client.search_experiments()],
            filter_string=(f"tags.single_task = '{t.name}' and tags.budget_frames = '{t.frames}' and "
                           f"tags.method = '{method}' and attributes.status = 'FINISHED'"), max_results=50)
        vals = [r.data.metrics["cl/auc"] for r in runs if "cl/auc" in r.data.metrics
                and r.info.run_id != rep.run_ids[PARENT]]
        out.append(float(np.mean(vals)) if vals else np.nan)
    return np.array(out)


def run_stream(cfg: RunConfig, resume: str | None = None, echo: Any = print,
               reporter: MlflowReporter | None = None) -> RunResult:
    """Train ``cfg.method`` on every task of ``cfg.stream`` in order. ``resume`` is an MLflow run id."""
    cfg, infos, spec, method_cfg = prepare(cfg)
    rep = reporter or MlflowReporter()
    progress = Progress()
    if resume:
        run = rep.resume(resume)  # validated by the caller (resume_config) before anything changed
        run_dir = Path(run.data.tags["checkpoint_dir"])
        payload = checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)
        progress = Progress(**payload["progress"])
        # Metrics logged after this checkpoint and before the crash stay in MLflow; the resumed run logs
        # those env frames again. This tag says from where, so curves can be read correctly.
        rep.set_tags({f"resumed_at_env_frames.{int(time.time())}": str(progress.global_env_frames)})
        echo(f"resuming run {resume} at task {progress.task_index}, "
             f"{progress.task_env_frames} env frames into it ({progress.global_env_frames} in all)")
    else:
        names = [t.name for t in cfg.stream.tasks]
        tags = {"method": cfg.method, "stream": cfg.stream.name, "seed": str(cfg.seed),
                "preset": cfg.preset or spec.default_preset, "obs_type": cfg.env.obs_type,
                "git_commit": _git_commit(), "tasks": ",".join(names),
                "budget_frames": str(cfg.stream.total_frames)}
        tags |= {f"version.{k}": v for k, v in _versions().items()}
        if len(names) == 1:
            tags["single_task"] = names[0]
        params = flatten({"run": {k: v for k, v in cfg.to_dict().items() if k != "stream"},
                          "stream": cfg.stream.to_dict(), "method_config": dataclasses.asdict(method_cfg)})
        run_id = rep.start(f"stream/{cfg.stream.name}", f"{cfg.method}-seed{cfg.seed}", tags, params)
        run_dir = Path(cfg.runs_dir).resolve() / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(cfg.to_json())
        rep.set_tags({"checkpoint_dir": str(run_dir)})
        rep.log_json(cfg.to_dict() | {"method_config": dataclasses.asdict(method_cfg)}, "config.json")
        echo(f"MLflow run {run_id} (experiment 'stream/{cfg.stream.name}'); checkpoints in {run_dir}")

    _seed_everything(cfg.seed, cfg.torch_threads)
    ctx = MethodContext(task_names=tuple(t.name for t in cfg.stream.tasks), obs_spec=_obs_spec(cfg.env),
                        action_dim=int(cfg.env.action_pad_dim), seed=cfg.seed, device=_device(cfg.device),
                        workdir=run_dir / "method",
                        log_json=lambda obj, name: rep.log_json(obj, name, run=TASK))
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    method = spec.build(method_cfg, ctx)
    if resume:
        method.load_state_dict(payload["method"])
        _set_rng_state(payload["rng"])
    run = _Run(cfg, infos, method, rep, run_dir, progress, echo)
    if not resume:
        run.save()  # a run killed before its first periodic checkpoint can still be resumed
    try:
        for i in range(progress.task_index, len(infos)):
            rep.start_task(i, infos[i].name, {"method": cfg.method, "stream": cfg.stream.name,
                                              "seed": str(cfg.seed)})
            run.train_task(i)
            run.finish_task(i)
        R = np.array(progress.R) / 100.0
        summary = metrics.summarize(R, run.aucs(), _reference_aucs(rep, cfg))
        summary |= {f"final/{j}-{info.name}": float(progress.R[-1][j]) for j, info in enumerate(infos)}
        rep.log_metrics(summary, progress.global_env_frames, run=PARENT)
        run.log_stream_artifacts()
        rep.close("FINISHED")
    except BaseException as exc:
        rep.close("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        echo(f"run {rep.run_ids[PARENT]} stopped at {progress.global_env_frames:,} env frames "
             f"({type(exc).__name__}); earlier tasks' results are kept. Continue it with:\n"
             f"  python cli.py run-stream --resume {rep.run_ids[PARENT]}")
        raise
    echo(f"done: {cfg.method} on {cfg.stream.name}, seed {cfg.seed}, {progress.global_env_frames:,} env frames")
    for k, v in summary.items():
        echo(f"  {k:<40} {v:8.3f}")
    echo(f"look at the results with: {ui_command(rep.uri)}")
    return RunResult(rep.run_ids[PARENT] or "", R, summary, run_dir)


def resume_config(run_id: str, reporter: MlflowReporter) -> RunConfig:
    """The config of run ``run_id``, read from its checkpoint directory (nothing is written)."""
    try:
        run = reporter.client.get_run(run_id)
    except Exception:
        raise HarnessError(f"no MLflow run {run_id!r} in {reporter.uri}") from None
    ckpt_dir = run.data.tags.get("checkpoint_dir")
    if not ckpt_dir:
        raise HarnessError(f"run {run_id!r} has no checkpoint_dir tag: it was not started by run-stream")
    cfg_path = Path(ckpt_dir) / "config.json"
    if not cfg_path.is_file():
        raise HarnessError(f"run {run_id!r}: missing {cfg_path}; the checkpoint directory was moved or deleted")
    cfg = RunConfig.from_dict(json.loads(cfg_path.read_text()))
    checkpoint.load(Path(ckpt_dir) / checkpoint.CHECKPOINT_FILE)  # clear error now if missing or corrupt
    return cfg
