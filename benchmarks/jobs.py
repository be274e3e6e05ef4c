"""Run benchmark jobs (``cli.py`` command lines) a few at a time, each with its own log file.

Used by the benchmarks that launch many single runs (``bench_gsa.py``, ``bench_ant.py``). Two cores here:
keep ``parallel`` at 2 with one torch thread per run (anchors.md section 6: never oversubscribe).
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence


def run_parallel(jobs: Sequence[tuple[str, list[str]]], parallel: int, logs: Path,
                 echo: Callable[[str], None] = print) -> dict[str, tuple[int, float]]:
    """Run ``(label, command)`` jobs, ``parallel`` at once, in order; returns ``{label: (exit code, wall s)}``.

    A failed job is reported with its log and does not stop the others.
    """
    logs.mkdir(parents=True, exist_ok=True)
    pending = list(jobs)
    running: list[tuple[str, subprocess.Popen, float]] = []
    done: dict[str, tuple[int, float]] = {}
    while pending or running:
        while pending and len(running) < max(1, parallel):
            label, cmd = pending.pop(0)
            with open(logs / f"{label}.log", "w") as log:
                running.append((label, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), time.time()))
            time.sleep(2)   # stagger MLflow run creation (sqlite)
        time.sleep(5)
        for item in list(running):
            label, proc, start = item
            if proc.poll() is None:
                continue
            running.remove(item)
            done[label] = (proc.returncode, time.time() - start)
            status = "ok" if proc.returncode == 0 else f"FAILED ({proc.returncode}), see {logs / (label + '.log')}"
            echo(f"  {label}: {status} in {done[label][1] / 60:.1f} min")
    return done


def prepare_pretrained(cli: list[str], work: Path, data_tasks: str, episodes: int, preset: str, steps: int,
                       threads: int, episode_frames: int | None = None) -> tuple[Path, Path]:
    """``collect`` proprio data into ``work/data`` and ``pretrain --build-index`` into ``work/pretrained``,
    each skipped when its output is already there; returns (data, pretrained)."""
    data, pre = work / "data", work / "pretrained"
    if (data / "manifest.json").is_file():   # reused: it must hold the tasks asked for, no more, no fewer
        from harness.offline import open_dataset
        ds = open_dataset(data, ["proprio"])
        have = sorted({m.task for m in ds.episodes})
        ds.close()
        if have != sorted(data_tasks.split(",")):
            raise SystemExit(f"{data} holds data of {','.join(have)}, not of the --data-tasks asked for "
                             f"({data_tasks}); pass those --data-tasks, or another --workdir")
    else:
        subprocess.run(cli + ["collect", str(data), "--tasks", data_tasks, "--episodes", str(episodes), "--obs",
                              "proprio", "--render-quality", "fast"]
                       + (["--episode-frames", str(episode_frames)] if episode_frames else []), check=True)
    if not (pre / "index" / "index.json").is_file():
        subprocess.run(cli + ["pretrain", "--data", str(data), "--preset", preset, "--obs", "proprio", "--steps",
                              str(steps), "--out", str(pre), "--threads", str(threads), "--build-index"], check=True)
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


def run_stream_command(cli: list[str], stream: list[str], method: str, seed: int | str, *, preset: str,
                       sets: Sequence[str], pretrained: Path, runs_dir: Path, extra: Sequence[str] = ()) -> list[str]:
    """One benchmark run: ``cli.py run-stream`` with proprio observations, fast rendering, no videos and one
    torch thread; ``stream`` is the stream's name or ``["--stream-file", PATH]``. ``random`` takes no preset or
    ``--set``; gsa and jsrl-bc get ``--pretrained``."""
    cmd = cli + ["run-stream", *stream, "--method", method, "--seed", str(seed), "--obs", "proprio",
                 "--render-quality", "fast", "--threads", "1", "--video-frames", "0", "--runs-dir", str(runs_dir),
                 *extra]
    if method != "random":
        cmd += ["--preset", preset] + [x for o in sets for x in ("--set", o)]
    if method.startswith(("gsa", "jsrl")):
        cmd += ["--pretrained", str(pretrained)]
    return cmd
