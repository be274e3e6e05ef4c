"""The whole GSA pipeline in one call (``cli.py pipeline STREAM``): collect -> pretrain -> build-index ->
run-stream gsa, then the comparison with the baselines already in the store.

Every stage writes under one work directory (default ``pipeline/<stream>-<obs>-<preset>/``) and is skipped
when its output is already complete, so a killed pipeline is continued by running the same command again:

    data/         the reward-free offline dataset (`collect`)
    pretrained/   the pre-trained world model and its retrieval index (`pretrain --build-index`)

Runs go to MLflow as usual (experiments ``collect``, ``pretrain`` and ``stream/<name>``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.errors import HarnessError


@dataclass(frozen=True)
class PipelineConfig:
    stream: str
    obs_type: str = "proprio"           # proprio: what learns on a CPU; pixels is the paper's setting
    preset: str = "tiny"                # CPU-sized model, π_bc and schedule (methods/gsa/agent.py)
    seed: int = 0
    data_tasks: tuple[str, ...] = ()    # () = the stream's own tasks (their embodiments must be covered)
    episodes: int = 4                   # episodes per (task, policy, noise) setting; collect's default is 10
    episode_frames: int | None = None   # None: the task default
    pretrain_steps: int = 2_000         # gradient updates; the tiny preset's 20k is ~1 h here, Table 5's 200k
    frames_per_task: int | None = None  # None: the stream's budget
    eval_every: int | None = None
    eval_episodes: int | None = None
    method: str = "gsa"
    overrides: tuple[tuple[str, str], ...] = ()   # --set for the method
    render_quality: str = "fast"        # CPU-friendly; `paper` matches the paper's images
    threads: int = 0
    workdir: str | None = None
    video_frames: int = 0
    pretrained: str | None = None       # a pre-training folder or models:/NAME/VERSION: skips collect/pretrain/index


def _workdir(cfg: PipelineConfig) -> Path:
    return Path(cfg.workdir or f"pipeline/{cfg.stream}-{cfg.obs_type}-{cfg.preset}").resolve()


def run_pipeline(cfg: PipelineConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    from harness.config import RunConfig
    from harness.reporting import MlflowReporter, ui_command
    from harness.runner import run_stream
    from harness.streams import stream_with_overrides
    from methods import METHODS
    from tasks.base import EnvConfig

    stream = stream_with_overrides(cfg.stream, cfg.frames_per_task, cfg.eval_every, cfg.eval_episodes)
    METHODS.entry(cfg.method)
    if cfg.obs_type not in ("pixels", "proprio", "both"):
        raise HarnessError(f"unknown observation type {cfg.obs_type!r}; valid: pixels, proprio, both")
    work = _workdir(cfg)
    work.mkdir(parents=True, exist_ok=True)
    data, pre = work / "data", work / "pretrained"
    tasks = cfg.data_tasks or tuple(dict.fromkeys(t.name for t in stream.tasks))

    model_tags: tuple[tuple[str, str], ...] = ()
    if cfg.pretrained:
        pre, model_tags = _given_pretrained(cfg.pretrained, echo)
    else:
        _collect_pretrain_index(cfg, tasks, data, pre, echo)

    echo(f"[4/4] run-stream {stream.name} --method {cfg.method} --preset {cfg.preset} --obs {cfg.obs_type}")
    run_cfg = RunConfig(stream=stream, method=cfg.method, seed=cfg.seed, preset=cfg.preset,
                        overrides=(("pretrained", str(pre)), *cfg.overrides),
                        env=EnvConfig(obs_type=cfg.obs_type, render_quality=cfg.render_quality),
                        torch_threads=cfg.threads, video_frames=cfg.video_frames, tags=model_tags)
    rep = MlflowReporter()
    result = run_stream(run_cfg, echo=echo, reporter=rep)
    out: dict[str, Any] = {"workdir": str(work), "run_id": result.run_id, "summary": result.summary}
    out["comparison"] = _compare_with_baselines(stream.name, cfg, echo)
    echo(f"look at the results with: {ui_command(rep.uri)}")
    return out


def _given_pretrained(value: str, echo: Callable[[str], None]) -> tuple[Path, tuple[tuple[str, str], ...]]:
    """``--pretrained``: a pre-training folder or a registered model (``models:/...``); stages 1-3 are skipped."""
    from harness.registry_models import is_model_uri, resolve_pretrained
    from methods.gsa.pretrain import WORLD_MODEL_FILE
    echo(f"[1-3/4] collect, pretrain, build-index: skipped, the pre-trained model is given: {value}")
    folder = Path(resolve_pretrained(value, echo=lambda line: echo(f"      {line}"))).resolve()
    if not (folder / WORLD_MODEL_FILE).is_file():
        raise HarnessError(f"--pretrained {value}: no {WORLD_MODEL_FILE} in {folder}")
    return folder, ((("pretrained_model", value),) if is_model_uri(value) else ())


def _collect_pretrain_index(cfg: PipelineConfig, tasks: tuple[str, ...], data: Path, pre: Path,
                            echo: Callable[[str], None]) -> None:
    """Stages 1-3, each skipped when its output is complete."""
    from harness.collect import CollectConfig, collect
    from harness.offline import MANIFEST_FILE
    from harness.pretraining import pretrain, resume_pretrain
    from methods.gsa.pretrain import CHECKPOINT_FILE, PRETRAIN_FILE, WORLD_MODEL_FILE, make_config
    from methods.gsa.retrieval import INDEX_DIR, build_index
    echo(f"[1/4] collect: reward-free data of {', '.join(tasks)} -> {data}")
    if (data / MANIFEST_FILE).is_file():
        echo("      already there; reusing it (delete the folder to collect again)")
    else:
        collect(data, CollectConfig(tasks=tasks, episodes=cfg.episodes, obs_type=cfg.obs_type,
                                    render_quality=cfg.render_quality, episode_frames=cfg.episode_frames,
                                    seed=cfg.seed), echo=echo)

    echo(f"[2/4] pretrain: {cfg.preset} world model, {cfg.pretrain_steps:,} gradient updates -> {pre}")
    if (pre / PRETRAIN_FILE).is_file():
        info = json.loads((pre / PRETRAIN_FILE).read_text())
        from methods.backbone.checkpoint import load
        done = int(load(pre / CHECKPOINT_FILE)["grad_updates"])
        if done < int(info["config"]["grad_updates"]):
            echo(f"      continuing at update {done}")
            resume_pretrain(str(pre), threads=cfg.threads or None, echo=echo)
        else:
            echo(f"      already trained ({done} updates); reusing it")
    else:
        pcfg = make_config(cfg.preset, {"grad_updates": str(cfg.pretrain_steps)})
        pretrain(data, pcfg, preset=cfg.preset, out=pre, obs_keys=None if cfg.obs_type == "both" else [cfg.obs_type],
                 seed=cfg.seed, threads=cfg.threads, echo=echo)
    if not (pre / WORLD_MODEL_FILE).is_file():
        raise HarnessError(f"pre-training left no {pre / WORLD_MODEL_FILE}")

    echo(f"[3/4] build-index: first-frame features of every trajectory -> {pre / INDEX_DIR}")
    if (pre / INDEX_DIR / "index.json").is_file():
        echo("      already built; reusing it")
    else:
        build_index(pre, echo=echo)


def _compare_with_baselines(stream: str, cfg: PipelineConfig, echo: Callable[[str], None]) -> str | None:
    """The run against the shipped reference results of this stream and settings, and against any other method
    already run on this stream (``dreamer``), when there are any; else the commands that make a Dreamer run."""
    from harness.compare import SIGNATURE_KEYS, collect_runs, compare
    from harness.references import find
    from harness.reporting import MlflowReporter
    runs = collect_runs(MlflowReporter(), stream)[0]   # the gsa run just made exists: no error here
    others = sorted(m for m in runs if m != cfg.method)
    ref = find(stream, dict(zip(SIGNATURE_KEYS, next(iter(runs.values()))[0].signature)))
    if not others:
        budget = f" --frames-per-task {cfg.frames_per_task}" if cfg.frames_per_task else ""
        echo(f"no other method has finished runs on {stream} here; for a Dreamer-from-scratch run of your own:\n"
             f"  python cli.py run-stream {stream} --method dreamer --preset {cfg.preset} --obs {cfg.obs_type} "
             f"--render-quality {cfg.render_quality} --seed {cfg.seed}{budget}\n"
             f"  python cli.py compare {stream} --reference auto")
        if ref is None:
            return None
    comp = compare(stream, [cfg.method, *others], reference="auto")
    text = comp.markdown()
    if ref is not None:
        echo(f"your run{'s' if others else ''} against the reference results in {ref['path']} (rows ref:*):")
    echo(text)
    for e in comp.excluded:
        echo(f"excluded: {e}")
    echo(f"curves: {comp.out_dir / 'learning_curves.png'}")
    return text
