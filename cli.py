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
        except KeyboardInterrupt as exc:
            from harness.lifecycle import Terminated
            term = isinstance(exc, Terminated)
            click.secho("terminated (SIGTERM)" if term else "interrupted", fg="red", err=True)
            sys.exit(143 if term else 130)
        except Exception as exc:
            from harness.errors import STORE_UNREACHABLE_EXIT, unreachable_store
            cause = unreachable_store(exc)
            if cause is None:
                raise
            where = os.environ.get("MLFLOW_TRACKING_URI") or "the tracking store"
            first = str(cause).splitlines()[0][:300] if str(cause) else type(cause).__name__
            click.secho(f"error: the MLflow tracking server {where} cannot be reached ({first}). What it recorded "
                        "stays; a run that was training keeps its last checkpoint: when the server is back, continue "
                        "it with `python cli.py run-stream --resume RUN_ID` (`python cli.py runs gc` ends runs "
                        "left RUNNING)", fg="red", err=True)
            sys.exit(STORE_UNREACHABLE_EXIT)


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
    from harness.lifecycle import handle_sigterm
    from harness.provenance import keep_freed_memory
    from harness.streams import load_plugins
    handle_sigterm()   # a scheduler's SIGTERM ends the run KILLED with its resume hint, not RUNNING forever
    # MLflow draws a progress bar per downloaded artifact (compare reads one per run): noise in a terminal's output
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    keep_freed_memory()   # fewer page faults per update (harness/provenance.py)
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

def _check_options(*options: tuple[str, int | None, int]) -> None:
    """``(--option, value, lowest valid)`` for integer options (None: not given); a clear error if out of range."""
    from harness.errors import MAX_INT, MAX_THREADS, check_int
    high = {"--threads": MAX_THREADS, "--seed": 2**63 - 1}
    for option, value, low in options:
        if value is not None:
            check_int(value, option, low, high.get(option, MAX_INT))


def _given(option: str) -> bool:
    """Whether ``option`` was given on the command line (not left at its default)."""
    return click.get_current_context().get_parameter_source(option) != click.core.ParameterSource.DEFAULT


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
@click.option("--threads", type=int, default=0,
              help="torch CPU threads (0: auto: the free cores, 1 on a machine other processes keep busy).")
@click.option("--checkpoint-every", type=int, default=25_000, show_default=True, help="Env frames.")
@click.option("--video-frames", type=int, default=200, show_default=True, help="0 disables videos.")
@click.option("--runs-dir", default="runs", show_default=True, help="Where checkpoints are kept.")
@click.option("--resume", default=None, metavar="RUN_ID", help="Continue a killed run (MLflow run id).")
@click.option("--pretrained", default=None, type=click.Path(), metavar="DIR|URI",
              help="GSA methods: the pre-training run (from `pretrain --build-index`), or a registered model "
                   "models:/NAME/VERSION or models:/NAME@ALIAS.")
@click.option("--offline-data", default=None, type=click.Path(), metavar="DIR",
              help="GSA methods: the offline dataset (default: the one the model was pre-trained on).")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="An extra MLflow tag on the run.")
@click.option("--ft-reference", default=None, metavar="METHOD",
              help="Forward transfer against single-task runs of METHOD (Continual World: the base learner, "
                   "e.g. drqv2), not of the run's own method.")
def run_stream_cmd(stream: str | None, method_name: str, seed: int, preset: str | None, overrides: tuple[str, ...],
                   stream_file: str | None, frames_per_task: int | None, eval_every: int | None,
                   eval_episodes: int | None, obs_type: str, render_quality: str, action_repeat: int,
                   device: str, threads: int, checkpoint_every: int, video_frames: int, runs_dir: str,
                   resume: str | None, pretrained: str | None, offline_data: str | None, tags: tuple[str, ...],
                   ft_reference: str | None) -> None:
    """Train a method on each task of STREAM in order, evaluating on all tasks; report to MLflow."""
    from harness.launch import RunOptions

    os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering on the CPU
    if resume:
        if stream or stream_file:
            raise HarnessError("--resume RUN_ID continues a run with its own stream and config; "
                               "do not pass a stream as well")
        from harness.reporting import MlflowReporter
        from harness.runner import resume_config, run_stream
        rep = MlflowReporter()
        cfg = resume_config(resume, rep)   # refuses task runs, FINISHED runs, live runs, damaged folders
        import dataclasses
        if threads:
            cfg = dataclasses.replace(cfg, torch_threads=threads)
        if _given("device"):
            if device != cfg.device:   # e.g. a run killed on a GPU node, continued on a CPU one
                click.echo(f"continuing on --device {device} (the run was started with --device {cfg.device})")
            cfg = dataclasses.replace(cfg, device=device)
        run_stream(cfg, resume=resume, echo=click.echo, reporter=rep)
        return
    cfg = RunOptions(stream=stream, stream_file=stream_file, method=method_name, seed=seed, preset=preset,
                     overrides=overrides, frames_per_task=frames_per_task, eval_every=eval_every,
                     eval_episodes=eval_episodes, obs=obs_type, render_quality=render_quality,
                     action_repeat=action_repeat, device=device, threads=threads, checkpoint_every=checkpoint_every,
                     video_frames=video_frames, runs_dir=runs_dir, pretrained=pretrained, offline_data=offline_data,
                     tags=tags, ft_reference=ft_reference).to_config()
    from harness.runner import run_stream
    run_stream(cfg, echo=click.echo)


def _pretrained_folder(value: str | None) -> tuple[str | None, tuple[str, ...]]:
    """A pre-training folder as given, or a registered model's (models:/...) downloaded folder with the run
    tag that names it."""
    from harness.registry_models import is_model_uri, resolve_pretrained
    if not is_model_uri(value):
        return value, ()
    return resolve_pretrained(value, echo=click.echo), (f"pretrained_model={value}",)


# ------------------------------------------------------------------------------------ runs and their processes

@main.group()
def runs() -> None:
    """List runs with whether their process is alive; mark dead ones KILLED; export and import finished runs."""


def _parent_runs(rep, experiment: str | None, status: str | None) -> list:
    exps = [e for e in rep.client.search_experiments() if experiment is None or e.name == experiment]
    if experiment is not None and not exps:
        names = ", ".join(sorted(e.name for e in rep.client.search_experiments()))
        raise HarnessError(f"no experiment {experiment!r} in {rep.uri}; valid: {names or '(none)'}")
    filt = f"attributes.status = '{status}'" if status else ""
    out = []
    for e in exps:
        out += [r for r in rep.client.search_runs([e.experiment_id], filter_string=filt, max_results=5000)
                if "mlflow.parentRunId" not in r.data.tags]
    return out


_STATUSES = click.Choice(["RUNNING", "FINISHED", "FAILED", "KILLED", "SCHEDULED"])


@runs.command("list")
@click.option("--experiment", default=None, help="Only this experiment (e.g. stream/ant, datasets, pretrain).")
@click.option("--status", type=_STATUSES, default=None, help="Only runs in this MLflow status.")
@click.option("--stale-after", type=float, default=None, metavar="SECONDS",
              help="A run on another host is dead after this long without a heartbeat (default 7200).")
def runs_list(experiment: str | None, status: str | None, stale_after: float | None) -> None:
    """Parent runs, newest first, with their status and, for RUNNING ones, whether the process lives."""
    import time

    from harness.lifecycle import STALE_AFTER_S, checkpointed, liveness
    from harness.reporting import MlflowReporter
    rep = MlflowReporter()
    rows = []
    for r in sorted(_parent_runs(rep, experiment, status), key=lambda r: -r.info.start_time):
        lv = liveness(r, STALE_AFTER_S if stale_after is None else stale_after)
        exp = rep.client.get_experiment(r.info.experiment_id).name
        state = r.info.status if lv.state == "ended" else f"RUNNING ({lv.state})"
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.info.start_time / 1000))
        rows.append((r.info.run_id, exp, r.info.run_name or "", state, started, checkpointed(r),
                     "" if lv.state == "ended" else lv.reason))
    _table(rows, ("run", "experiment", "name", "status", "started", "checkpointed env frames", "process"))
    dead = sum(1 for r in rows if r[3] == "RUNNING (dead)")
    if dead:
        click.echo(f"{dead} dead run(s): continue one with `run-stream --resume RUN_ID`, or mark them KILLED "
                   "with `runs gc`")


@runs.command("gc")
@click.option("--experiment", default=None, help="Only this experiment.")
@click.option("--stale-after", type=float, default=None, metavar="SECONDS",
              help="A run on another host is dead after this long without a heartbeat (default 7200).")
@click.option("--dry-run", is_flag=True, help="Say what would be marked, change nothing.")
def runs_gc(experiment: str | None, stale_after: float | None, dry_run: bool) -> None:
    """Mark RUNNING runs whose process is dead (SIGKILL, OOM, a lost node) KILLED, with their task runs.
    They stay resumable with `run-stream --resume RUN_ID`."""
    from harness.lifecycle import STALE_AFTER_S, end_dead_runs
    from harness.reporting import MlflowReporter
    if stale_after is not None and stale_after < 0:
        raise HarnessError(f"--stale-after must be >= 0 seconds, got {stale_after}")
    rep = MlflowReporter()
    dead = end_dead_runs(rep, _parent_runs(rep, experiment, "RUNNING"), click.echo, dry_run,
                         STALE_AFTER_S if stale_after is None else stale_after)
    click.echo(f"{len(dead)} dead run(s) {'found' if dry_run else 'marked KILLED'}")


@runs.command("export")
@click.option("--sweep", "sweep_id", required=True, help="The sweep whose finished runs to write.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The folder of run records.")
def runs_export(sweep_id: str, out: str) -> None:
    """Write each FINISHED run of a sweep, with its task runs and whole metric histories, as a JSON record in
    OUT (one per job; kept records are not rewritten). The records outlive the store: commit or copy them, and
    `runs import` puts them into another (harness/archive.py)."""
    from harness.archive import export_runs
    from harness.reporting import MlflowReporter
    rep = MlflowReporter()
    written = export_runs(rep.client, sweep_id, out, click.echo)
    click.echo(f"{len(written)} run(s) of sweep {sweep_id!r} written to {out}")


@runs.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def runs_import(paths: tuple[str, ...]) -> None:
    """Put run records (files, or folders of them, written by `runs export`) into the store as finished runs;
    runs the store holds already are skipped. A sweep run again then skips the imported jobs."""
    from harness.archive import import_runs
    from harness.reporting import MlflowReporter
    rep = MlflowReporter()
    imported, skipped = import_runs(rep.client, list(paths), click.echo)
    click.echo(f"{imported} run(s) imported into {rep.uri}, {skipped} already there")


# ------------------------------------------------------------------------------------ sweeps

class _DefaultGroup(click.Group):
    """`sweep STREAMS ...` runs a sweep; `sweep status SWEEP` (a subcommand) reports on one."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_DefaultGroup)
def sweep() -> None:
    """Run a grid of streams x methods x seeds as run-stream jobs (`sweep STREAMS --methods ... --seeds ...`),
    or report on one (`sweep status SWEEP`). Running the same sweep again continues it."""


def _int_list(value: str | None, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in value.split(",") if x.strip()) if value else ()
    except ValueError:
        raise HarnessError(f"{what} expects comma-separated integers, got {value!r}") from None


@sweep.command("run")
@click.argument("streams", required=False)
@click.option("--file", "sweep_file", type=click.Path(dir_okay=False), default=None,
              help="A sweep TOML file (the grid, run-stream options, [method.NAME] extras, [launch]).")
@click.option("--methods", default=None, help="Comma-separated methods (see `methods list`).")
@click.option("--seeds", default=None, help="Comma-separated seeds, e.g. 0,1,2.")
@click.option("--name", default=None, help="The sweep id (default: a hash of the grid and its options).")
@click.option("--preset", default=None)
@click.option("--set", "overrides", multiple=True, metavar="[METHOD:]KEY=VALUE",
              help="A method config override for every method, or only for METHOD.")
@click.option("--frames-per-task", type=int, default=None)
@click.option("--eval-every", type=int, default=None)
@click.option("--eval-episodes", type=int, default=None)
@click.option("--obs", "obs_type", type=click.Choice(["pixels", "proprio", "both"]), default=None)
@click.option("--render-quality", type=click.Choice(["paper", "fast"]), default=None)
@click.option("--action-repeat", type=int, default=None)
@click.option("--device", default=None)
@click.option("--checkpoint-every", type=int, default=None)
@click.option("--video-frames", type=int, default=None)
@click.option("--runs-dir", default=None)
@click.option("--pretrained", default=None, type=click.Path(), help="For the GSA methods of the grid.")
@click.option("--ft-reference", default=None, metavar="METHOD",
              help="Forward transfer against single-task runs of METHOD (see run-stream --help).")
@click.option("--backend", default=None, help="local (default), ray or slurm.")
@click.option("--concurrency", type=int, default=None, help="Jobs at once (local, slurm array); default: the cores.")
@click.option("--cpus-per-job", type=int, default=None, help="Cores (and torch/OMP threads) per job.")
@click.option("--gpus-per-job", type=float, default=None, help="GPU share per job (0.25: four runs per GPU).")
@click.option("--max-retries", type=int, default=None, help="Resumes of a job whose process was killed (default 2).")
@click.option("--ray-address", default=None, help="A Ray cluster (default $RAY_ADDRESS, else a local Ray).")
@click.option("--slurm-partition", default=None)
@click.option("--slurm-timeout-min", type=int, default=None)
@click.option("--slurm-folder", default=None, help="submitit's folder for job scripts and logs (default slurm/).")
@click.option("--archive", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Keep the finished runs as records in DIR too (`runs export`; commit or copy it): its records "
                   "are imported first, so a sweep on a fresh store skips the jobs they hold.")
@click.option("--dry-run", is_flag=True, help="Print the run-stream commands of the jobs left to run; run nothing.")
def sweep_run(streams: str | None, sweep_file: str | None, methods: str | None, seeds: str | None, name: str | None,
              preset: str | None, overrides: tuple[str, ...], frames_per_task: int | None, eval_every: int | None,
              eval_episodes: int | None, obs_type: str | None, render_quality: str | None, action_repeat: int | None,
              device: str | None, checkpoint_every: int | None, video_frames: int | None, runs_dir: str | None,
              pretrained: str | None, ft_reference: str | None, backend: str | None, concurrency: int | None,
              cpus_per_job: int | None,
              gpus_per_job: float | None, max_retries: int | None, ray_address: str | None,
              slurm_partition: str | None, slurm_timeout_min: int | None, slurm_folder: str | None,
              archive: str | None, dry_run: bool) -> None:
    """Run STREAMS (comma-separated names or stream files) x --methods x --seeds, or a --file sweep."""
    import dataclasses
    import shlex

    from harness.reporting import MlflowReporter
    from harness.sweep import SweepSpec, expand, find_runs, load_sweep_file, make_backend, run_sweep, state_of
    os.environ.setdefault("MUJOCO_GL", "egl")
    if sweep_file:
        spec, launch = load_sweep_file(sweep_file)
    elif streams:
        spec, launch = SweepSpec(tuple(x.strip() for x in streams.split(",") if x.strip()),
                                 tuple(m.strip() for m in (methods or "").split(",") if m.strip()),
                                 _int_list(seeds, "--seeds") or (0,)), {}
        if not spec.methods:
            raise HarnessError("give --methods a,b (see `methods list`)")
    else:
        raise HarnessError("give STREAMS (comma-separated, see `streams list`) or --file SWEEP.toml")
    run = dict(spec.run)
    per_method = {m: dict(v) for m, v in spec.per_method.items()}
    for key, value in (("preset", preset), ("frames_per_task", frames_per_task), ("eval_every", eval_every),
                       ("eval_episodes", eval_episodes), ("obs", obs_type), ("render_quality", render_quality),
                       ("action_repeat", action_repeat), ("device", device), ("checkpoint_every", checkpoint_every),
                       ("video_frames", video_frames), ("runs_dir", runs_dir), ("ft_reference", ft_reference)):
        if value is not None:
            run[key] = value
    for o in overrides:
        head, colon, rest = o.partition(":")
        if colon and "=" not in head:
            per_method.setdefault(head, {}).setdefault("overrides", ())
            per_method[head]["overrides"] = tuple(per_method[head]["overrides"]) + (rest,)
        else:
            run["overrides"] = tuple(run.get("overrides", ())) + (o,)
    if pretrained:
        for m in spec.methods:
            if m.startswith(("gsa", "jsrl")):
                per_method.setdefault(m, {})["pretrained"] = pretrained
    spec = dataclasses.replace(spec, run=run, per_method=per_method, name=name or spec.name)
    launch = {k: v for k, v in launch.items()} | {k: v for k, v in (
        ("backend", backend), ("concurrency", concurrency), ("cpus_per_job", cpus_per_job),
        ("gpus_per_job", gpus_per_job), ("max_retries", max_retries), ("ray_address", ray_address),
        ("slurm_partition", slurm_partition), ("slurm_timeout_min", slurm_timeout_min),
        ("slurm_folder", slurm_folder)) if v is not None}
    retries = int(launch.pop("max_retries", 2))
    if retries < 0:
        raise HarnessError(f"--max-retries must be >= 0, got {retries}")
    backend_name = launch.pop("backend", "local")
    cores = len(os.sched_getaffinity(0))
    be = make_backend(backend_name, concurrency=int(launch.pop("concurrency", cores)), **launch)
    jobs = expand(spec)                 # every job validated before anything is created
    sweep_id = spec.sweep_id()
    if dry_run:
        from harness.reporting import tracking_uri
        uri = tracking_uri()
        store_missing = uri.startswith("sqlite:///") and not os.path.exists(uri.removeprefix("sqlite:///"))
        runs = {} if store_missing else find_runs(MlflowReporter().client, sweep_id)   # creates no store
        for j in jobs:
            state = state_of(runs.get(j.key))
            argv = j.options.argv() if state == "start" else ["#", state, runs[j.key].info.run_id]
            click.echo(f"{j.label}: " + shlex.join(argv))
        click.echo(f"sweep {sweep_id}: {len(jobs)} jobs on backend {backend_name}; nothing was run (--dry-run)")
        return
    from harness.archive import keep_records
    on_result = keep_records(MlflowReporter().client, sweep_id, archive, click.echo) if archive else (lambda _: None)
    report = run_sweep(jobs, sweep_id, be, max_retries=retries, echo=click.echo, on_result=on_result)
    if not report.ok:
        raise HarnessError(f"sweep {sweep_id}: some jobs did not finish; see `python cli.py sweep status {sweep_id}` "
                           "and run the same command again to continue them")


@sweep.command("status")
@click.argument("sweep_id", metavar="SWEEP")
@click.option("--json", "as_json", is_flag=True)
def sweep_status(sweep_id: str, as_json: bool) -> None:
    """Runs of SWEEP per state and per method; the running jobs, and the failed ones with their last error line, each
    with where its checkpoint stands (global env frames of its budget)."""
    import json

    from harness.sweep import status
    st = status(sweep_id)
    if as_json:
        click.echo(json.dumps(st, indent=1))
        return
    click.echo(f"sweep {sweep_id}: {st['runs']} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(st["states"].items())))
    states = sorted(st["states"])
    _table([(m, *(str(c.get(s, 0)) for s in states)) for m, c in st["methods"].items()], ("method", *states))
    def where(job: dict) -> str:
        at = job["checkpointed_env_frames"]
        return f"checkpointed at {at} env frames" if at else "no checkpoint recorded"

    for j in st["running"]:
        click.echo(f"{j['status']}: {j['run_id']} ({j['stream']}, {j['method']}, seed {j['seed']}): {where(j)}")
    for f in st["failed"]:
        click.echo(f"{f['status']}: {f['run_id']} ({f['stream']}, {f['method']}, seed {f['seed']}): {f['error']}; "
                   f"{where(f)}")


@main.command("tracking-server")
@click.option("--backend-store-uri", default=None, help="Default: the embedded store (sqlite:///./mlflow.db).")
@click.option("--artifact-root", default=None, help="Default: ./mlruns next to the store.")
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to serve a cluster's nodes.")
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Server processes (1 for an SQLite store).")
def tracking_server_cmd(backend_store_uri: str | None, artifact_root: str | None, host: str, port: int,
                        workers: int) -> None:
    """An MLflow tracking server for many concurrent runs (sweeps, clusters); set MLFLOW_TRACKING_URI to its URL."""
    import subprocess
    from pathlib import Path

    from harness.reporting import tracking_uri
    from harness.sweep import server_command
    uri = backend_store_uri or (tracking_uri() if tracking_uri().startswith("sqlite:") else
                                f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    if not 0 < port < 65536 or workers < 1:
        raise HarnessError(f"--port must be in 1..65535 and --workers >= 1; got {port}, {workers}")
    if uri.startswith("sqlite:") and workers > 1:
        raise HarnessError("an SQLite store takes one writer: use --workers 1, or a PostgreSQL/MySQL store")
    root = artifact_root or (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").resolve().as_uri()
    cmd = server_command(uri, root, host, port, workers)
    click.echo(f"MLflow server over {uri}, artifacts under {root}\n"
               f"  export MLFLOW_TRACKING_URI=http://{'127.0.0.1' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}")
    proc = subprocess.Popen(cmd)
    try:
        raise SystemExit(proc.wait())
    finally:   # Ctrl-C or SIGTERM here: the server goes with us
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


# ------------------------------------------------------------------------------------ comparing

@main.command("compare")
@click.argument("stream")
@click.option("--methods", default=None, help="Comma-separated methods (default: all with finished runs).")
@click.option("--seeds", default=None, help="Comma-separated seeds (default: all).")
@click.option("--out", "out_dir", default=None, help="Output folder (default: comparisons/<stream>-<time>).")
@click.option("--sweep", "sweep_id", default=None, help="Only the runs of this sweep (see `sweep status`).")
@click.option("--reference", default=None, metavar="NAME|FILE|auto",
              help="Show reference results beside the runs: a shipped reference (benchmarks/results/reference/), "
                   "a reference file, or auto (the shipped one made with the same stream and settings).")
@click.option("--save-reference", type=click.Path(dir_okay=False), default=None,
              help="Write the compared runs as a reference file (curves, scores, R matrices, configs, commit).")
def compare_cmd(stream: str, methods: str | None, seeds: str | None, out_dir: str | None, sweep_id: str | None,
                reference: str | None, save_reference: str | None) -> None:
    """Compare methods on STREAM from the runs in MLflow: table, curves, R matrices (also logged to MLflow)."""
    from harness.compare import compare
    from harness.reporting import ui_command
    try:
        seed_list = [int(s) for s in seeds.split(",")] if seeds else None
    except ValueError:
        raise HarnessError(f"--seeds expects comma-separated integers, got {seeds!r}") from None
    comp = compare(stream, [m.strip() for m in methods.split(",")] if methods else None, seed_list, out_dir,
                   sweep=sweep_id, reference=reference, save_reference=save_reference)
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
@click.option("--pretrained", default=None, metavar="DIR|URI",
              help="Use this pre-training folder or registered model (models:/NAME/VERSION, models:/NAME@ALIAS) "
                   "and skip collect, pretrain and build-index.")
def pipeline_cmd(stream: str, obs_type: str, preset: str, method_name: str, seed: int, data_tasks: str | None,
                 episodes: int, episode_frames: int | None, pretrain_steps: int, frames_per_task: int | None,
                 eval_every: int | None, eval_episodes: int | None, overrides: tuple[str, ...], render_quality: str,
                 threads: int, workdir: str | None, pretrained: str | None) -> None:
    """collect -> pretrain -> build-index -> run-stream gsa on STREAM, then compare with what else ran on it.

    Each stage is skipped when its output exists, so rerunning the same command continues a killed pipeline."""
    from harness.pipeline import PipelineConfig, run_pipeline
    from methods import METHODS
    from methods.base import resolve_config
    from methods.gsa.pretrain import make_config
    os.environ.setdefault("MUJOCO_GL", "egl")
    _check_options(("--seed", seed, 0), ("--threads", threads, 0), ("--episodes", episodes, 1),
                   ("--episode-frames", episode_frames, 1), ("--pretrain-steps", pretrain_steps, 1),
                   ("--frames-per-task", frames_per_task, 1), ("--eval-every", eval_every, 1),
                   ("--eval-episodes", eval_episodes, 1))
    # the configs of the later stages, checked before the first stage runs (--set, --preset)
    make_config(preset, {"grad_updates": str(pretrain_steps)})
    resolve_config(METHODS.load(method_name), method_name, preset, dict(_parse_overrides(overrides)))
    run_pipeline(PipelineConfig(stream=stream, obs_type=obs_type, preset=preset, seed=seed, method=method_name,
                                data_tasks=_csv(data_tasks, str, "--data-tasks"), episodes=episodes,
                                episode_frames=episode_frames, pretrain_steps=pretrain_steps,
                                frames_per_task=frames_per_task, eval_every=eval_every, eval_episodes=eval_episodes,
                                overrides=_parse_overrides(overrides), render_quality=render_quality,
                                threads=threads, workdir=workdir, pretrained=pretrained), echo=click.echo)


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
@click.option("--tasks", "tasks_", required=True,
              help="Comma-separated task names (see `tasks list`), stream:NAME (a stream's tasks) or suite:NAME "
                   "(suite:metaworld: all 50 Meta-World tasks).")
@click.option("--episodes", default=10, show_default=True, type=int, help="Episodes per (task, policy, noise).")
@click.option("--policies", default=None, help="expert, random, ou, icm, disagreement (default: expert for "
                                               "Meta-World, random,ou for DMC). icm: URLB's curiosity agent, learning "
                                               "over all --episodes, each stored.")
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
              help="Size of the icm and disagreement explorers' networks.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Settings (task x policy x noise) collected in parallel processes, one thread each; the "
                   "dataset is the same for any number.")
@click.option("--threads", type=int, default=0, show_default=True,
              help="torch threads of the learning explorers (icm, disagreement) with --workers 1 (0: the free "
                   "cores, 1 on a busy machine).")
@click.option("--device", default="auto", show_default=True,
              help="Where the learning explorers (icm, disagreement) train: auto, cpu, cuda, cuda:N.")
def collect_cmd(out: str, tasks_: str, episodes: int, policies: str | None, noise: str | None, obs_type: str,
                render_quality: str, action_repeat: int, episode_frames: int | None, action_pad_dim: int | None,
                proprio_pad_dim: int | None, shard_steps: int, compression: str, seed: int, append: bool,
                explorer_preset: str, workers: int, threads: int, device: str) -> None:
    """Collect reward-free offline data into dataset directory OUT (shards + manifest); describe it in MLflow."""
    from harness.collect import CollectConfig, collect, expand_tasks, plan
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering on the CPU
    cfg = CollectConfig(tasks=expand_tasks(_csv(tasks_, str, "--tasks")), episodes=episodes,
                        policies=_csv(policies, str, "--policies"),
                        noise=_csv(noise, float, "--noise"), obs_type=obs_type, render_quality=render_quality,
                        action_repeat=action_repeat, episode_frames=episode_frames, action_pad_dim=action_pad_dim,
                        proprio_pad_dim=proprio_pad_dim, shard_steps=shard_steps, compression=compression, seed=seed,
                        append=append, explorer_preset=explorer_preset, workers=workers, threads=threads,
                        device=device).validate()
    settings = plan(cfg)
    click.echo(f"{len(settings)} settings x {episodes} episodes: " +
               ", ".join(f"{s.task}/{s.label}" for s in settings[:12]) + (" ..." if len(settings) > 12 else ""))
    collect(out, cfg, echo=click.echo)


@main.group()
def datasets() -> None:
    """Inspect offline datasets."""


@datasets.command("show")
@click.argument("path", type=click.Path())
@click.option("--verify", is_flag=True, help="Read every episode in full (checking its checksums) and count the "
                                             "damaged ones.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def datasets_show(path: str, verify: bool, as_json: bool) -> None:
    """Summarise the dataset at PATH (ours or the ncrl layout): episodes, embodiments, policies, size."""
    import json
    import warnings

    from harness.offline import DamagedEpisodeWarning, open_dataset
    lines: list[str] = []   # damage and other notes about the data, one line each, printed once
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_dataset(path, "all" if verify else None, on_damage=lines.append) as ds:
            found = 0
            if verify:
                from tqdm import tqdm
                with tqdm(total=ds.num_episodes, unit="episode", desc="verify", disable=None) as bar:
                    found = ds.verify(bar.update)
            summary = ds.summary()
            damaged = [f"{w}: {y}" for w, y in ds.damaged]
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    # Damaged parts are listed below; other notes (a shard missing from the manifest) and warnings here.
    notes = [line for line in lines if not line.startswith(("skipping damaged data: ", "more damaged data"))]
    notes += [f"{w.category.__name__}: {w.message}" for w in caught
              if not issubclass(w.category, DamagedEpisodeWarning)]
    for line in list(dict.fromkeys(notes))[:10]:
        click.secho(f"warning: {line}", fg="yellow", err=True)
    click.echo(f"{summary['path']}  ({summary['format']})")
    obs = ", ".join(f"{k} {tuple(v['shape'])} {v['dtype']}" for k, v in summary["obs"].items())
    click.echo(f"  {summary['episodes']:,} episodes, {summary['stored_steps']:,} stored steps; "
               f"observations {obs}; actions padded to {summary['action_pad_dim']}")
    click.echo(f"  {summary['bytes_on_disk'] / 1e6:,.1f} MB on disk, {summary['bytes_per_million_steps'] / 1e9:.2f} GB "
               f"per million steps ({', '.join(summary['compressed_columns'])})")
    checks = summary["checksums"]
    unverified = " (Minari stores none" if summary["format"] == "minari" else " (written before checksums"
    click.echo(f"  checksums: {checks}" + (f"{unverified}: reads are not verified)" if checks == "none"
                                           else "; checked by every read"))
    click.echo(f"  damaged parts skipped: {summary['damaged']}"
               + (f" ({found} episode{'' if found == 1 else 's'} found damaged by --verify)" if verify else "")
               + "".join(f"\n    {d}" for d in damaged[:20])
               + (f"\n    ... and {len(damaged) - 20} more" if len(damaged) > 20 else ""))
    _table([(e, str(v["action_dim"]), f"{v['episodes']:,}", f"{v['stored_steps']:,}",
             ", ".join(f"{t} ({n})" for t, n in list(v["tasks"].items())[:4]) + (" ..." if len(v["tasks"]) > 4 else ""))
            for e, v in summary["embodiments"].items()], ("embodiment", "action dim", "episodes", "steps", "tasks"))
    _table([(p, f"{n:,}") for p, n in summary["policies"].items()], ("source policy", "episodes"))


@datasets.command("export")
@click.argument("path", type=click.Path())
@click.option("--minari", "minari_id", required=True, metavar="ID",
              help="Minari dataset id, (namespace/)name-vN, written under $MINARI_DATASETS_PATH (default ~/.minari/datasets).")
@click.option("--author", default=None, help="Recorded in the Minari metadata.")
@click.option("--author-email", default=None, help="Recorded in the Minari metadata.")
@click.option("--description", default=None, help="Recorded in the Minari metadata (default: what the data is).")
def datasets_export(path: str, minari_id: str, author: str | None, author_email: str | None,
                    description: str | None) -> None:
    """Write the dataset at PATH as a Minari dataset (rewards NaN: absent; per-episode metadata kept).
    Read it back anywhere a dataset is read with minari:ID (pretrain --data, build-index --data)."""
    from harness.offline.minari import export_minari
    export_minari(path, minari_id, author=author, author_email=author_email, description=description, echo=click.echo)
    click.echo(f"use it with: --data minari:{minari_id}")


@main.command("pretrain")
@click.option("--data", default=None, type=click.Path(),
              help="Dataset directory (ours or the ncrl layout), or minari:ID for a Minari dataset.")
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
@click.option("--register", "register_name", default=None, metavar="NAME",
              help="Then register the world model, its index (built if missing) and provenance as a new version "
                   "of NAME in the MLflow model registry (use it as --pretrained models:/NAME/VERSION).")
@click.option("--alias", "aliases", multiple=True, metavar="ALIAS", help="With --register: point models:/NAME@ALIAS at it.")
def pretrain_cmd(data: str | None, preset: str, overrides: tuple[str, ...], steps: int | None, obs_type: str | None,
                 action_pad_dim: int | None, out: str | None, runs_dir: str, seed: int, device: str, threads: int,
                 resume: str | None, then_index: bool, register_name: str | None, aliases: tuple[str, ...]) -> None:
    """Task-agnostic world-model pre-training (reconstruction + KL, Eq. 1) on offline data; logs to MLflow."""
    from harness.pretraining import pretrain, resume_pretrain
    from methods.gsa.pretrain import make_config
    _check_options(("--steps", steps, 1), ("--seed", seed, 0), ("--threads", threads, 0),
                   ("--action-pad-dim", action_pad_dim, 1))
    if aliases and not register_name:
        raise HarnessError("--alias names a version made by --register NAME; give --register too")
    if register_name:
        from harness.registry_models import check_names
        check_names(register_name, aliases)   # before training, not after it
    if resume:
        if data or overrides or out:
            raise HarnessError("--resume continues a run with its own data and config; "
                               "give only --steps (to extend it), --threads or --device")
        res = resume_pretrain(resume, grad_updates=steps, threads=threads or None,
                              device=device if _given("device") else None, echo=click.echo)
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
    from methods.gsa.retrieval import INDEX_DIR
    if then_index or (register_name and not (res.out / INDEX_DIR / "index.json").is_file()):
        from methods.gsa.retrieval import build_index
        build_index(res.out, echo=click.echo)
    if register_name:
        from harness.registry_models import register_pretrained
        register_pretrained(res.out, register_name, aliases=aliases, echo=click.echo)
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
@click.argument("pretrain_dir", type=click.Path(file_okay=False))   # or models:/NAME/VERSION
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

    from methods.base import check_config
    from methods.gsa.retrieval import RetrievalConfig, Retriever
    from tasks.base import EnvConfig, make_env
    from tasks.catalog import TASKS
    os.environ.setdefault("MUJOCO_GL", "egl")
    _check_options(("-k", k, 1), ("--seed", seed, 0), ("--threads", threads, 0))
    pretrain_dir = _pretrained_folder(pretrain_dir)[0] or pretrain_dir
    info = TASKS.get(task_name)
    ret = Retriever(pretrain_dir, cfg=check_config(RetrievalConfig(threads=threads), "retrieval"))
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


# ------------------------------------------------------------------------------------ this machine

@main.command("doctor")
@click.option("--timeout", type=float, default=180.0, show_default=True,
              help="Seconds the render check may take before it is reported as hanging.")
def doctor_cmd(timeout: float) -> None:
    """Versions that decide results, the GL backend and renderer, cores and threads, GPU; renders a DMC and a
    Meta-World frame and times a step. Exits 1 (saying what to do) when rendering fails."""
    from harness.doctor import diagnose, print_report
    if timeout <= 0:
        raise HarnessError(f"--timeout must be > 0 seconds, got {timeout}")
    rep = diagnose(timeout)
    print_report(rep, click.echo)
    if not rep.ok:
        sys.exit(1)


# ------------------------------------------------------------------------------------ registered world models

@main.group()
def models() -> None:
    """Pre-trained world models in the MLflow model registry (models:/NAME/VERSION, models:/NAME@ALIAS)."""


@models.command("register")
@click.argument("pretrain_dir", type=click.Path(file_okay=False))
@click.argument("name")
@click.option("--alias", "aliases", multiple=True, metavar="ALIAS", help="Point models:/NAME@ALIAS at the new version.")
def models_register(pretrain_dir: str, name: str, aliases: tuple[str, ...]) -> None:
    """Register the pre-training run in PRETRAIN_DIR (world model, index, provenance) as a version of NAME."""
    from harness.registry_models import register_pretrained
    register_pretrained(pretrain_dir, name, aliases=aliases, echo=click.echo)


@models.command("pull")
@click.argument("uri")
def models_pull(uri: str) -> None:
    """Download a registered model (models:/NAME/VERSION or models:/NAME@ALIAS) and print its local folder."""
    from harness.registry_models import is_model_uri, resolve_pretrained
    if not is_model_uri(uri):
        raise HarnessError(f"{uri!r} is not a model URI: models:/NAME/VERSION or models:/NAME@ALIAS")
    click.echo(resolve_pretrained(uri, echo=lambda *_: None))


if __name__ == "__main__":
    main()
