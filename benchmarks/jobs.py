"""The benchmarks' runs as sweep jobs (``harness/sweep.py``), and their shared data preparation.

Used by the benchmarks that launch many single runs (``bench_gsa.py``, ``bench_ant.py``). Two cores here:
keep ``parallel`` at 2 with one torch thread per run (anchors.md section 6: never oversubscribe).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.launch import RunOptions


def run_jobs(items: Sequence[tuple[str, RunOptions]], sweep: str, parallel: int, logs: Path,
             echo: Callable[[str], None] = print, archive: Path | None = None) -> dict[str, Any]:
    """Run ``(label, run-stream options)`` through the sweep API (``harness/sweep.py``: idempotent, killed jobs
    resumed, one MLflow writer), ``parallel`` at once with one thread each; returns ``{label: JobResult}``.
    Run the benchmark again and its finished runs are skipped (their JobResult says SKIPPED, wall 0).

    SIGTERM to the benchmark (``kill``, a scheduler's stop) then stops its jobs as it does ``cli.py sweep``'s
    driver: each job checkpoints and ends KILLED, the sweep's tracking server goes too, and the next run
    continues them. Without the handler (the CLI installs it at its entry; a script must too) Python died at
    once and left its job processes and the server running.

    ``archive``: a folder of run records (``harness/archive.py``, committed with the results). Its records are
    imported into the store first, so jobs finished on a store that is gone are skipped, and each run that
    finishes is exported to it at once."""
    from harness.archive import keep_records
    from harness.lifecycle import handle_sigterm
    from harness.reporting import MlflowReporter
    from harness.sweep import make_backend, make_jobs, run_sweep
    handle_sigterm()
    on_result = keep_records(MlflowReporter().client, sweep, archive, echo) if archive is not None else lambda _: None
    jobs = make_jobs([(label, dataclasses.replace(o, threads=1)) for label, o in items], sweep)
    report = run_sweep(jobs, sweep, make_backend("local", concurrency=max(1, parallel), cpus_per_job=1),
                       log_dir=str(logs), echo=echo, on_result=on_result)
    return {r.label: r for r in report.results}


def sync_archive(sweep: str, archive: Path, echo: Callable[[str], None] = print) -> None:
    """The store and the folder of run records ``archive`` made to agree on ``sweep``'s finished runs: records
    not in the store imported, finished runs not in the folder exported (before a report, which reads the store)."""
    from harness.archive import export_runs, import_runs
    from harness.reporting import MlflowReporter
    client = MlflowReporter().client
    n, _ = import_runs(client, [archive]) if archive.is_dir() else (0, 0)
    written = export_runs(client, sweep, archive)
    echo(f"run records in {archive}: {n} imported into the store, {len(written)} exported from it")


def check_grid(ap: argparse.ArgumentParser, *, tasks: str | None = None, methods: str | None = None,
               seeds: str | None = None, positive: dict[str, int] | None = None) -> tuple[list[str], list[str], list[int]]:
    """A benchmark's grid arguments checked before anything runs or is rewritten: comma-separated task and
    method names that exist (the registries' messages list the valid ones), seeds that are integers >= 0, no
    name twice, and the ``positive`` options (``{"--frames": a.frames}``) above 0. A bad one ends the benchmark
    through ``ap.error`` (its usage, the message, exit 2). Returns (tasks, methods, seeds), each [] if not given."""
    from harness.errors import HarnessError
    from methods import METHODS
    from tasks.catalog import TASKS

    def names(flag: str, text: str | None, registry: Any) -> list[str]:
        if text is None:
            return []
        items = [x.strip() for x in text.split(",")]
        if not all(items):
            ap.error(f"{flag} takes comma-separated names, got {text!r}")
        if len(set(items)) < len(items):
            ap.error(f"{flag} names one twice: {text!r}")
        for x in items:
            try:
                registry.entry(x)
            except HarnessError as exc:
                ap.error(f"{flag}: {exc}")
        return items
    out_seeds: list[int] = []
    if seeds is not None:
        try:
            out_seeds = [int(x) for x in seeds.split(",")]
        except ValueError:
            ap.error(f"--seeds takes comma-separated integers >= 0, got {seeds!r}")
        if min(out_seeds) < 0 or len(set(out_seeds)) < len(out_seeds):
            ap.error(f"--seeds takes distinct integers >= 0, got {seeds!r}")
    for flag, value in (positive or {}).items():
        if value <= 0:
            ap.error(f"{flag} must be > 0, got {value}")
    return names("--tasks", tasks, TASKS), names("--methods", methods, METHODS), out_seeds


def run_main(main: Callable[[], None]) -> None:
    """A benchmark's entry: a SIGTERM or Ctrl-C (its jobs and children already stopped and checkpointed by
    :func:`run_jobs` / :func:`run_child`) ends it with one line and exit code 143 or 130, and a
    :class:`HarnessError` (bad input found on the way, e.g. by the sweep's validation of every job) with
    ``error: ...`` and exit code 2, as ``cli.py`` does, instead of a traceback; running the same command
    again continues it."""
    import sys

    from harness.errors import HarnessError
    from harness.lifecycle import Terminated
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # as cli.py: no bar per download
    try:
        main()
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        term = isinstance(exc, Terminated)
        print(f"{'terminated (SIGTERM)' if term else 'interrupted'}: what finished is kept and the stopped runs "
              "saved checkpoints; run the same command again to continue", file=sys.stderr, flush=True)
        sys.exit(143 if term else 130)


def run_child(cmd: Sequence[str], stop_wait_s: float = 600.0) -> None:
    """``subprocess.run(cmd, check=True)`` for a benchmark's preparation (``collect``, ``pretrain``) that passes a
    SIGTERM on: the child runs in its own session (a signal to the benchmark's process group reaches it once,
    from here), gets SIGTERM, stops as the CLI does (complete episodes, the explorer's or pre-training's
    checkpoint kept) and is waited for before the benchmark ends; a rerun continues from there. Without this a
    killed benchmark left its child running alone to the end."""
    from harness.lifecycle import Terminated, handle_sigterm
    handle_sigterm()
    proc = subprocess.Popen(list(cmd), start_new_session=True)
    try:
        rc = proc.wait()
    except BaseException:    # SIGTERM (Terminated) or Ctrl-C here: stop the child the same way, then leave
        proc.terminate()
        try:
            proc.wait(timeout=stop_wait_s)
        except (subprocess.TimeoutExpired, Terminated):
            proc.kill()
            proc.wait()
        raise
    if rc:
        raise subprocess.CalledProcessError(rc, list(cmd))


def icm_top_up(cli: list[str], data: Path, task: str, have: int, episodes: int, args: list[str]) -> None:
    """Collect ``task``'s missing ICM episodes (``have`` of ``episodes`` there) into ``data``: a stopped
    collection's explorer continues from its saved state (``collect``'s ``<data>/explorers/``)."""
    if have >= episodes:
        return
    print(f"ICM on {task}: {have} of {episodes} episodes there; collecting the rest", flush=True)
    run_child(cli + ["collect", str(data), *(["--append"] if (data / "manifest.json").is_file() else []),
                     "--tasks", task, "--policies", "icm", "--episodes", str(episodes - have), "--seed", str(have),
                     *args])


def prepare_pretrained(cli: list[str], work: Path, data_tasks: str, episodes: int, preset: str, steps: int,
                       threads: int, episode_frames: int | None = None,
                       policies: str | None = None) -> tuple[Path, Path]:
    """``collect`` proprio data into ``work/data`` and ``pretrain --build-index`` into ``work/pretrained``,
    each skipped when its output is already there; returns (data, pretrained).

    ``policies``: ``collect --policies`` (default: collect's random and OU exploration). With ``icm`` the data
    are every episode of URLB's ICM explorer learning on each task, ``episodes`` of them per task; a collection
    that was stopped is completed before pre-training, by the same explorer from its last saved state."""
    data, pre = work / "data", work / "pretrained"
    common = ["--obs", "proprio", "--render-quality", "fast"] + (["--episode-frames", str(episode_frames)]
                                                                 if episode_frames else [])
    if (data / "manifest.json").is_file():   # reused: it must hold the tasks asked for, no more, no fewer
        from harness.offline import open_dataset
        with open_dataset(data, ["proprio"]) as ds:
            have = sorted({m.task for m in ds.episodes})
            icm = {t: sum(1 for m in ds.episodes if m.task == t and m.policy == "icm") for t in have}
        if have != sorted(data_tasks.split(",")):
            raise SystemExit(f"{data} holds data of {','.join(have)}, not of the --data-tasks asked for "
                             f"({data_tasks}); pass those --data-tasks, or another --workdir")
        if policies == "icm":
            for task, n in icm.items():
                icm_top_up(cli, data, task, n, episodes, common)
    else:
        run_child(cli + ["collect", str(data), "--tasks", data_tasks, "--episodes", str(episodes), *common]
                  + (["--policies", policies] if policies else []))
    if not (pre / "index" / "index.json").is_file():
        run_child(cli + ["pretrain", "--data", str(data), "--preset", preset, "--obs", "proprio", "--steps",
                         str(steps), "--out", str(pre), "--threads", str(threads), "--build-index"])
    return data, pre


# Table 5's guidance schedules as shares of the paper's fine-tuning budget of 150k samples (agent steps) per
# task (Sec. 4.1; Sec. 4.2's Ant tasks: 300k env frames at action repeat 2, the same): DMC decays over 50k
# agent steps, a third of a task; Meta-World over 150k, all of it.
PAPER_GUIDANCE_SHARE = {"dmc": 50_000 / 150_000, "metaworld": 150_000 / 150_000}


def guidance_sets(frames_per_task: int, share: float | None = None, action_repeat: int = 2) -> list[str]:
    """gsa's ``--set`` values that give its guidance schedule the paper's share of a shortened task of
    ``frames_per_task`` env frames (``share``: one share for both suites instead; 0: none, the preset's
    fixed lengths stay). The ``tiny`` preset's 6k agent steps are 3x a 4k-frame task, so without this the BC
    probability would never fall below 0.67 within it."""
    if share == 0:
        return []
    agent_steps = frames_per_task / action_repeat
    return [f"guidance_{suite}_agent_steps={max(1, round(agent_steps * (share if share is not None else s)))}"
            for suite, s in PAPER_GUIDANCE_SHARE.items()]


def run_stream_options(stream: str | Path, method: str, seed: int, *, preset: str, sets: Sequence[str],
                       pretrained: Path | None, runs_dir: Path, obs: str = "proprio", **extra: Any) -> RunOptions:
    """One benchmark run: ``run-stream`` with (by default) proprio observations, fast rendering, no videos;
    ``stream`` is a stream's name or a stream file (``.toml``). ``random`` takes no preset or ``--set``; gsa and
    jsrl-bc get ``--pretrained``."""
    where = {"stream_file": str(stream)} if str(stream).endswith(".toml") else {"stream": str(stream)}
    opts = RunOptions(**where, method=method, seed=int(seed), obs=obs, render_quality="fast", video_frames=0,
                      runs_dir=str(runs_dir), **extra)
    if method != "random":
        opts = dataclasses.replace(opts, preset=preset, overrides=tuple(sets))
    if method.startswith(("gsa", "jsrl")):
        opts = dataclasses.replace(opts, pretrained=str(pretrained))
    return opts
