"""Command line: `python cli.py --help` (also installed as the `gsa` console script).

Thin: it parses options, builds configs and calls the harness. Heavy libraries (torch, simulators,
mlflow) are imported only by the commands that need them, so listing stays fast.
"""
from __future__ import annotations

import os
import sys

import click

from harness.errors import HarnessError


class _Group(click.Group):
    """Turns HarnessError into a one-line message and exit code 2, without a traceback."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except HarnessError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.secho("interrupted", fg="red", err=True)
            sys.exit(130)


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    click.echo(fmt.format(*header).rstrip())
    click.echo(fmt.format(*("-" * w for w in widths)))
    for r in rows:
        click.echo(fmt.format(*r).rstrip())


@click.group(cls=_Group)
@click.option("--plugin", multiple=True, metavar="MODULE",
              help="Import MODULE first (it may register streams with @stream). Also $GSA_PLUGINS=a,b.")
def main(plugin: tuple[str, ...]) -> None:
    """Continual-RL benchmark harness around GSA (generalist-to-specialist adaptation)."""
    from harness.streams import load_plugins
    load_plugins(plugin)


# ------------------------------------------------------------------------------------ listing

@main.group()
def streams() -> None:
    """List, show and add task streams."""


@streams.command("list")
def streams_list() -> None:
    """All streams: built-in, python-registered and user files."""
    from harness.streams import all_stream_names, get_stream
    rows = []
    for name, kind in sorted(all_stream_names().items(), key=lambda kv: (kv[1] != "built-in", kv[0])):
        try:
            s = get_stream(name)
            rows.append((name, kind, str(len(s.tasks)), f"{s.total_frames:,}", s.description))
        except HarnessError as exc:
            rows.append((name, kind, "?", "?", f"INVALID: {exc}"))
    _table(rows, ("stream", "source", "tasks", "env frames", "description"))


@streams.command("show")
@click.argument("name")
def streams_show(name: str) -> None:
    """The tasks, budgets and evaluation settings of stream NAME."""
    from harness.streams import get_stream
    from tasks.catalog import TASKS
    s = get_stream(name)
    click.echo(f"{s.name}: {s.description}  (source: {s.source})")
    click.echo(f"evaluation: every {s.eval.every_frames:,} env frames, {s.eval.episodes} episodes, on all tasks")
    _table([(str(i), t.name, TASKS.get(t.name).embodiment, f"{t.frames:,}") for i, t in enumerate(s.tasks)],
           ("#", "task", "embodiment", "env frames"))


@streams.command("add")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace a user stream of the same name.")
def streams_add(file: str, force: bool) -> None:
    """Validate a stream TOML FILE and store it in the user streams directory."""
    from harness.streams import add_stream_file
    spec, dest = add_stream_file(file, force)
    click.echo(f"added stream {spec.name!r} ({len(spec.tasks)} tasks) as {dest}")


@main.group()
def tasks() -> None:
    """List tasks."""


@tasks.command("list")
@click.option("--suite", type=click.Choice(["dmc", "metaworld"]), default=None)
def tasks_list(suite: str | None) -> None:
    """All registered tasks (names as stream files use them)."""
    from tasks.catalog import TASKS
    rows = [(e.value.name, e.value.suite, e.value.embodiment, str(e.value.action_dim), str(e.value.proprio_dim),
             str(e.value.episode_frames), e.value.score_kind)
            for e in TASKS if suite is None or e.value.suite == suite]
    _table(rows, ("task", "suite", "embodiment", "action dim", "state dim", "episode frames", "score"))


@main.group()
def methods() -> None:
    """List methods."""


@methods.command("list")
def methods_list() -> None:
    """All registered methods."""
    from methods import METHODS
    _table([(e.name, e.description) for e in METHODS], ("method", "description"))


# ------------------------------------------------------------------------------------ running

def _parse_overrides(items: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HarnessError(f"--set expects KEY=VALUE, got {item!r}")
        out.append((key.strip(), value.strip()))
    return tuple(out)


@main.command("run-stream")
@click.argument("stream", required=False)
@click.option("--method", "method_name", default="random", show_default=True, help="See `methods list`.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--preset", default=None, help="Method preset: debug, tiny, small, paper (default: paper).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a method config field.")
@click.option("--stream-file", type=click.Path(dir_okay=False), default=None, help="Use a stream TOML file.")
@click.option("--frames-per-task", type=int, default=None, help="Override every task's env-frame budget.")
@click.option("--eval-every", type=int, default=None, help="Evaluate all tasks every N env frames.")
@click.option("--eval-episodes", type=int, default=None, help="Episodes per task and evaluation.")
@click.option("--obs", "obs_type", type=click.Choice(["pixels", "proprio", "both"]), default="pixels",
              show_default=True, help="Observations (the paper uses pixels).")
@click.option("--render-quality", type=click.Choice(["paper", "fast"]), default="paper", show_default=True)
@click.option("--action-repeat", type=int, default=2, show_default=True, help="Table 5: 2.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N")
@click.option("--threads", type=int, default=0, help="torch CPU threads (0: torch's default).")
@click.option("--checkpoint-every", type=int, default=25_000, show_default=True, help="Env frames.")
@click.option("--video-frames", type=int, default=200, show_default=True, help="0 disables videos.")
@click.option("--runs-dir", default="runs", show_default=True, help="Where checkpoints are kept.")
@click.option("--resume", default=None, metavar="RUN_ID", help="Continue a killed run (MLflow run id).")
@click.option("--pretrained", default=None, type=click.Path(), metavar="DIR",
              help="GSA methods: the pre-training run (from `pretrain --build-index`).")
@click.option("--offline-data", default=None, type=click.Path(), metavar="DIR",
              help="GSA methods: the offline dataset (default: the one the model was pre-trained on).")
def run_stream_cmd(stream: str | None, method_name: str, seed: int, preset: str | None, overrides: tuple[str, ...],
                   stream_file: str | None, frames_per_task: int | None, eval_every: int | None,
                   eval_episodes: int | None, obs_type: str, render_quality: str, action_repeat: int,
                   device: str, threads: int, checkpoint_every: int, video_frames: int, runs_dir: str,
                   resume: str | None, pretrained: str | None, offline_data: str | None) -> None:
    """Train a method on each task of STREAM in order, evaluating on all tasks; report to MLflow."""
    from harness.config import RunConfig
    from harness.streams import get_stream, load_stream_file
    from methods import METHODS
    from tasks.base import EnvConfig

    os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering on the CPU
    if resume:
        if stream or stream_file:
            raise HarnessError("--resume RUN_ID continues a run with its own stream and config; "
                               "do not pass a stream as well")
        from harness.reporting import MlflowReporter
        from harness.runner import resume_config, run_stream
        rep = MlflowReporter()
        cfg = resume_config(resume, rep)
        run_stream(cfg, resume=resume, echo=click.echo, reporter=rep)
        return
    if bool(stream) == bool(stream_file):
        raise HarnessError("give exactly one of STREAM (see `streams list`) or --stream-file FILE")
    spec = load_stream_file(stream_file) if stream_file else get_stream(stream)  # type: ignore[arg-type]
    spec = spec.with_overrides(frames_per_task, eval_every, eval_episodes)
    METHODS.entry(method_name)  # unknown method: clear error before anything heavy is imported
    parsed = _parse_overrides(overrides)
    for flag, field, value in (("--pretrained", "pretrained", pretrained), ("--offline-data", "offline_data", offline_data)):
        if value is not None:
            import dataclasses
            fields = {f.name for f in dataclasses.fields(METHODS.load(method_name).config_cls())}
            if field not in fields:
                raise HarnessError(f"{flag} is for the methods that fine-tune a pre-trained world model "
                                   f"(gsa, gsa-p, gsa-p-er, gsa-p-g, jsrl-bc), not {method_name!r}")
            parsed += ((field, os.path.abspath(value)),)  # absolute: a resumed run may start elsewhere
    cfg = RunConfig(stream=spec, method=method_name, seed=seed, preset=preset,
                    overrides=parsed,
                    env=EnvConfig(obs_type=obs_type, render_quality=render_quality, action_repeat=action_repeat),
                    device=device, torch_threads=threads, checkpoint_every_frames=checkpoint_every,
                    video_frames=video_frames, runs_dir=runs_dir)
    from harness.runner import run_stream
    run_stream(cfg, echo=click.echo)


# ------------------------------------------------------------------------------------ comparing

@main.command("compare")
@click.argument("stream")
@click.option("--methods", default=None, help="Comma-separated methods (default: all with finished runs).")
@click.option("--seeds", default=None, help="Comma-separated seeds (default: all).")
@click.option("--out", "out_dir", default=None, help="Output folder (default: comparisons/<stream>-<time>).")
def compare_cmd(stream: str, methods: str | None, seeds: str | None, out_dir: str | None) -> None:
    """Compare methods on STREAM from the runs in MLflow: table, curves, R matrices (also logged to MLflow)."""
    from harness.compare import compare
    from harness.reporting import ui_command
    try:
        seed_list = [int(s) for s in seeds.split(",")] if seeds else None
    except ValueError:
        raise HarnessError(f"--seeds expects comma-separated integers, got {seeds!r}") from None
    comp = compare(stream, [m.strip() for m in methods.split(",")] if methods else None, seed_list, out_dir)
    click.echo(comp.markdown())
    for e in comp.excluded:
        click.echo(f"excluded: {e}")
    click.echo(f"written: {', '.join(str(p) for p in comp.files)}")
    click.echo(f"logged as MLflow run {comp.run_id}; look with: {ui_command()}")


# ------------------------------------------------------------------------------------ the whole GSA pipeline

@main.command("pipeline")
@click.argument("stream")
@click.option("--obs", "obs_type", type=click.Choice(["pixels", "proprio", "both"]), default="proprio", show_default=True,
              help="proprio learns on a CPU; pixels is the paper's setting.")
@click.option("--preset", default="tiny", show_default=True, help="World model / GSA preset: debug, tiny, small, paper.")
@click.option("--method", "method_name", default="gsa", show_default=True,
              help="gsa or an ablation: gsa-p, gsa-p-er, gsa-p-g, jsrl-bc.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--data-tasks", default=None, help="Tasks to collect offline data on (default: the stream's tasks).")
@click.option("--episodes", default=4, show_default=True, type=int, help="Episodes per (task, policy, noise).")
@click.option("--episode-frames", type=int, default=None, help="Env frames per collected episode (default: the task's).")
@click.option("--pretrain-steps", default=2_000, show_default=True, type=int,
              help="Pre-training gradient updates (Table 5: 200,000).")
@click.option("--frames-per-task", type=int, default=None, help="Override every task's env-frame budget.")
@click.option("--eval-every", type=int, default=None)
@click.option("--eval-episodes", type=int, default=None)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a GSA config field.")
@click.option("--render-quality", type=click.Choice(["paper", "fast"]), default="fast", show_default=True)
@click.option("--threads", type=int, default=0, help="torch CPU threads (0: torch's default).")
@click.option("--workdir", default=None, help="Where data and the model go (default pipeline/<stream>-<obs>-<preset>).")
def pipeline_cmd(stream: str, obs_type: str, preset: str, method_name: str, seed: int, data_tasks: str | None,
                 episodes: int, episode_frames: int | None, pretrain_steps: int, frames_per_task: int | None,
                 eval_every: int | None, eval_episodes: int | None, overrides: tuple[str, ...], render_quality: str,
                 threads: int, workdir: str | None) -> None:
    """collect -> pretrain -> build-index -> run-stream gsa on STREAM, then compare with what else ran on it.

    Each stage is skipped when its output exists, so rerunning the same command continues a killed pipeline."""
    from harness.pipeline import PipelineConfig, run_pipeline
    os.environ.setdefault("MUJOCO_GL", "egl")
    if pretrain_steps < 1 or episodes < 1:
        raise HarnessError("--pretrain-steps and --episodes must be >= 1")
    run_pipeline(PipelineConfig(stream=stream, obs_type=obs_type, preset=preset, seed=seed, method=method_name,
                                data_tasks=_csv(data_tasks, str, "--data-tasks"), episodes=episodes,
                                episode_frames=episode_frames, pretrain_steps=pretrain_steps,
                                frames_per_task=frames_per_task, eval_every=eval_every, eval_episodes=eval_episodes,
                                overrides=_parse_overrides(overrides), render_quality=render_quality,
                                threads=threads, workdir=workdir), echo=click.echo)


# ------------------------------------------------------------------------------------ offline data and GSA pre-training
# (issue 4) collect, datasets show, pretrain, build-index, retrieve. Library code: harness/offline.py,
# harness/collect.py, methods/gsa/pretrain.py, methods/gsa/retrieval.py.

def _csv(value: str | None, kind: type, what: str) -> tuple:
    if not value:
        return ()
    try:
        return tuple(kind(v.strip()) for v in value.split(",") if v.strip())
    except ValueError:
        raise HarnessError(f"{what}: expected a comma-separated list of {kind.__name__}, got {value!r}") from None


@main.command("collect")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--tasks", "tasks_", required=True, help="Comma-separated task names (see `tasks list`).")
@click.option("--episodes", default=10, show_default=True, type=int, help="Episodes per (task, policy, noise).")
@click.option("--policies", default=None, help="expert, random, ou, disagreement (default: expert for Meta-World, "
                                               "random,ou for DMC).")
@click.option("--noise", default=None, help="Noise sigmas for expert/ou (default expert: 0.1,0.3,0.5,1.0,2.0 "
                                            "as in the paper; ou: 0.3,0.6,1.0).")
@click.option("--obs", "obs_type", type=click.Choice(["pixels", "proprio", "both"]), default="pixels", show_default=True)
@click.option("--render-quality", type=click.Choice(["paper", "fast"]), default="paper", show_default=True)
@click.option("--action-repeat", type=int, default=2, show_default=True, help="Table 5: 2.")
@click.option("--episode-frames", type=int, default=None, help="Env frames per episode (default: the task's).")
@click.option("--action-pad-dim", type=int, default=None, help="Pad actions to this dim (default: the largest "
                                                              "action dim of the tasks; ncrl's model uses 21).")
@click.option("--proprio-pad-dim", type=int, default=None, help="Pad state vectors to this dim.")
@click.option("--shard-steps", type=int, default=20_000, show_default=True, help="Stored steps per shard.")
@click.option("--compression", type=click.Choice(["zlib", "none"]), default="zlib", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--append", is_flag=True, help="Add episodes to an existing dataset (same schema).")
@click.option("--explorer-preset", type=click.Choice(["tiny", "debug"]), default="tiny", show_default=True,
              help="Size of the disagreement explorer's networks.")
def collect_cmd(out: str, tasks_: str, episodes: int, policies: str | None, noise: str | None, obs_type: str,
                render_quality: str, action_repeat: int, episode_frames: int | None, action_pad_dim: int | None,
                proprio_pad_dim: int | None, shard_steps: int, compression: str, seed: int, append: bool,
                explorer_preset: str) -> None:
    """Collect reward-free offline data into dataset directory OUT (shards + manifest); describe it in MLflow."""
    from harness.collect import CollectConfig, collect, plan
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering on the CPU
    cfg = CollectConfig(tasks=_csv(tasks_, str, "--tasks"), episodes=episodes, policies=_csv(policies, str, "--policies"),
                        noise=_csv(noise, float, "--noise"), obs_type=obs_type, render_quality=render_quality,
                        action_repeat=action_repeat, episode_frames=episode_frames, action_pad_dim=action_pad_dim,
                        proprio_pad_dim=proprio_pad_dim, shard_steps=shard_steps, compression=compression, seed=seed,
                        append=append, explorer_preset=explorer_preset).validate()
    settings = plan(cfg)
    click.echo(f"{len(settings)} settings x {episodes} episodes: " +
               ", ".join(f"{s.task}/{s.label}" for s in settings[:12]) + (" ..." if len(settings) > 12 else ""))
    collect(out, cfg, echo=click.echo)


@main.group()
def datasets() -> None:
    """Inspect offline datasets."""


@datasets.command("show")
@click.argument("path", type=click.Path())
@click.option("--verify", is_flag=True, help="Read every episode in full and count the damaged ones.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def datasets_show(path: str, verify: bool, as_json: bool) -> None:
    """Summarise the dataset at PATH (ours or the ncrl layout): episodes, embodiments, policies, size."""
    import json
    import warnings
    from harness.offline import open_dataset
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = open_dataset(path)
        if verify:
            from tqdm import tqdm
            with tqdm(total=ds.num_episodes, unit="episode", desc="verify", disable=None) as bar:
                ds.verify(bar.update)
        summary = ds.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    for w in caught[:5]:
        click.secho(f"warning: {w.message}", fg="yellow", err=True)
    click.echo(f"{summary['path']}  ({summary['format']})")
    obs = ", ".join(f"{k} {tuple(v['shape'])} {v['dtype']}" for k, v in summary["obs"].items())
    click.echo(f"  {summary['episodes']:,} episodes, {summary['stored_steps']:,} stored steps; "
               f"observations {obs}; actions padded to {summary['action_pad_dim']}")
    click.echo(f"  {summary['bytes_on_disk'] / 1e6:,.1f} MB on disk, {summary['bytes_per_million_steps'] / 1e9:.2f} GB "
               f"per million steps ({', '.join(summary['compressed_columns'])})")
    click.echo(f"  damaged parts skipped: {summary['damaged']}" +
               "".join(f"\n    {d}" for d in summary["damaged_examples"]))
    _table([(e, str(v["action_dim"]), f"{v['episodes']:,}", f"{v['stored_steps']:,}",
             ", ".join(f"{t} ({n})" for t, n in list(v["tasks"].items())[:4]) + (" ..." if len(v["tasks"]) > 4 else ""))
            for e, v in summary["embodiments"].items()], ("embodiment", "action dim", "episodes", "steps", "tasks"))
    _table([(p, f"{n:,}") for p, n in summary["policies"].items()], ("source policy", "episodes"))


@main.command("pretrain")
@click.option("--data", default=None, type=click.Path(), help="Dataset directory (ours or the ncrl layout).")
@click.option("--preset", default="paper", show_default=True, help="debug, tiny, small, paper.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field, e.g. model.deter=128 or balance=embodiment.")
@click.option("--steps", type=int, default=None, help="Gradient updates (Table 5: 200,000).")
@click.option("--obs", "obs_type", type=click.Choice(["pixels", "proprio", "both"]), default=None,
              help="Observations to train on (default: pixels if stored, else proprio).")
@click.option("--action-pad-dim", type=int, default=None, help="ncrl data only: pad actions to this dim (ncrl: 21).")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Run directory (default runs/<run id>).")
@click.option("--runs-dir", default="runs", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N")
@click.option("--threads", type=int, default=0, help="torch CPU threads (0: torch's default).")
@click.option("--resume", default=None, metavar="DIR|RUN_ID", help="Continue a pre-training run.")
@click.option("--build-index", "then_index", is_flag=True, help="Build the retrieval index when training ends.")
def pretrain_cmd(data: str | None, preset: str, overrides: tuple[str, ...], steps: int | None, obs_type: str | None,
                 action_pad_dim: int | None, out: str | None, runs_dir: str, seed: int, device: str, threads: int,
                 resume: str | None, then_index: bool) -> None:
    """Task-agnostic world-model pre-training (reconstruction + KL, Eq. 1) on offline data; logs to MLflow."""
    from methods.gsa.pretrain import make_config, pretrain, resume_pretrain
    if resume:
        if data or overrides or out:
            raise HarnessError("--resume continues a run with its own data and config; "
                               "give only --steps (to extend it) or --threads")
        res = resume_pretrain(resume, grad_updates=steps, threads=threads or None, echo=click.echo)
    else:
        if not data:
            raise HarnessError("give --data DIR (a dataset written by `cli.py collect`, or the ncrl layout)")
        over = dict(_parse_overrides(overrides))
        if steps is not None:
            over["grad_updates"] = str(steps)
        cfg = make_config(preset, over)
        obs_keys = None if obs_type is None else (["pixels", "proprio"] if obs_type == "both" else [obs_type])
        res = pretrain(data, cfg, preset=preset, out=out, runs_dir=runs_dir, obs_keys=obs_keys,
                       action_pad_dim=action_pad_dim, seed=seed, device=device, threads=threads, echo=click.echo)
    if then_index:
        from methods.gsa.retrieval import build_index
        build_index(res.out, echo=click.echo)
    from harness.reporting import ui_command
    click.echo(f"look at the run with: {ui_command()}")


@main.command("build-index")
@click.argument("pretrain_dir", type=click.Path(file_okay=False))
@click.option("--data", default=None, type=click.Path(), help="Dataset to index (default: the pre-training data).")
@click.option("--index-type", type=click.Choice(["flat", "fp16"]), default="flat", show_default=True,
              help="flat: faiss IndexFlatL2 (exact, ncrl); fp16: half the memory and scan time.")
@click.option("--batch", type=int, default=256, show_default=True, help="First frames encoded per forward pass.")
@click.option("--device", default="cpu", show_default=True)
def build_index_cmd(pretrain_dir: str, data: str | None, index_type: str, batch: int, device: str) -> None:
    """Embed every trajectory's first frame with the pre-trained encoder into a faiss index in PRETRAIN_DIR/index."""
    from methods.gsa.retrieval import build_index
    if batch < 1:
        raise HarnessError(f"--batch must be >= 1, got {batch}")
    build_index(pretrain_dir, data, index_type=index_type, batch=batch, device=device, echo=click.echo)


@main.command("retrieve")
@click.argument("pretrain_dir", type=click.Path(file_okay=False))
@click.option("--task", "task_name", required=True, help="Reset this task's env and query with its first observation.")
@click.option("-k", "k", type=int, default=10, show_default=True, help="Trajectories to return (GSA uses 500).")
@click.option("--filter", "filter_by", type=click.Choice(["embodiment", "action-mask", "none"]), default="embodiment",
              show_default=True, help="embodiment: same embodiment (metadata); action-mask: same action dim (ncrl).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--render-quality", type=click.Choice(["paper", "fast"]), default="paper", show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="faiss threads (0: faiss's default).")
def retrieve_cmd(pretrain_dir: str, task_name: str, k: int, filter_by: str, seed: int, render_quality: str,
                 threads: int) -> None:
    """Query the retrieval index with a live env's reset frame (Eq. 4): the K nearest offline trajectories."""
    import time
    from methods.gsa.retrieval import RetrievalConfig, Retriever
    from tasks.base import EnvConfig, make_env
    from tasks.catalog import TASKS
    os.environ.setdefault("MUJOCO_GL", "egl")
    if k < 1:
        raise HarnessError(f"-k must be >= 1, got {k}")
    info = TASKS.get(task_name)
    ret = Retriever(pretrain_dir, cfg=RetrievalConfig(threads=threads))
    keys = list(ret.wm.obs_shapes)
    obs_type = "both" if len(keys) == 2 else keys[0]
    proprio = ret.wm.obs_shapes.get("proprio", (None,))[0]
    env = make_env(task_name, EnvConfig(obs_type=obs_type, render_quality=render_quality,
                                        action_pad_dim=ret.wm.action_dim, proprio_pad_dim=proprio), seed=seed)
    try:
        obs = env.reset()
        mask = env.action_mask
    finally:
        env.close()
    t0 = time.perf_counter()
    hits = ret.query(obs, k, embodiment=info.embodiment if filter_by == "embodiment" else None,
                     action_mask=mask if filter_by == "action-mask" else None)[0]
    ms = 1e3 * (time.perf_counter() - t0)
    click.echo(f"{len(hits.uids)} nearest of {len(ret.index):,} trajectories to {task_name}'s reset frame "
               f"(filter: {filter_by}; {ms:.1f} ms including encoding)")
    _table([(str(i), u, e, t, f"{d:.3f}") for i, (u, e, t, d) in
            enumerate(zip(hits.uids, hits.embodiments, hits.tasks, hits.distances))],
           ("#", "trajectory", "embodiment", "task", "distance"))


if __name__ == "__main__":
    main()
