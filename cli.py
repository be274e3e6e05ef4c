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
def run_stream_cmd(stream: str | None, method_name: str, seed: int, preset: str | None, overrides: tuple[str, ...],
                   stream_file: str | None, frames_per_task: int | None, eval_every: int | None,
                   eval_episodes: int | None, obs_type: str, render_quality: str, action_repeat: int,
                   device: str, threads: int, checkpoint_every: int, video_frames: int, runs_dir: str,
                   resume: str | None) -> None:
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
    cfg = RunConfig(stream=spec, method=method_name, seed=seed, preset=preset,
                    overrides=_parse_overrides(overrides),
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


if __name__ == "__main__":
    main()
