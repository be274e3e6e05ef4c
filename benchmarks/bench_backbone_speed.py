"""Speed of the world-model backbone and the Dreamer method on this machine.

    .venv/bin/python benchmarks/bench_backbone_speed.py                 # the table (several minutes)
    .venv/bin/python benchmarks/bench_backbone_speed.py --count         # parameter counts only
    .venv/bin/python benchmarks/bench_backbone_speed.py --options       # what each speed option gives
    .venv/bin/python benchmarks/bench_backbone_speed.py --ab HEAD~1     # this tree against a revision

For each preset (tiny, small) and observation type (proprio, pixels):
- grad updates/s: ``Dreamer.train_step`` (one world-model + one actor-critic update) on a replay filled
  with synthetic episodes of the right shapes, median of N timed updates after 2 untimed ones;
- env frames/s of a whole training run: the real runner (``run_stream``) on cartpole-balance, warm-up
  then training at the preset's train ratio, including acting, env stepping (rendering for pixels),
  replay writes and one final 1-episode evaluation, divided into total env frames.
Results: printed, and written to benchmarks/results/backbone_speed.{md,json}. Run it when the machine is
otherwise idle: a second busy process on 2 cores distorts everything (anchors.md section 6).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results"


def _obs_spec(obs: str) -> dict:
    spec = {}
    if obs in ("pixels", "both"):
        spec["pixels"] = ((3, 64, 64), "uint8")
    if obs in ("proprio", "both"):
        spec["proprio"] = ((5,), "float32")
    return spec


def build(preset: str, obs: str, overrides: dict[str, str] | None = None, workdir: Path | None = None):
    import numpy as np

    from methods import METHODS
    from methods.base import MethodContext, TaskContext, resolve_config
    spec = METHODS.load("dreamer")
    cfg = resolve_config(spec, "dreamer", preset, overrides or {})
    ctx = MethodContext(("cartpole-balance",), _obs_spec(obs), 1, 0, "cpu",
                        workdir or Path(tempfile.mkdtemp(prefix="bench-speed-")))
    method = spec.build(cfg, ctx)
    task = TaskContext(0, "cartpole-balance", "cartpole", "dmc", 10**6, np.ones(1, np.float32), 2)
    method.on_task_start(task)
    return method, task


def fill(method, obs: str, episodes: int = 3, length: int = 250) -> None:
    """Synthetic episodes (random observations) of the right shapes: enough to sample batches."""
    import numpy as np

    from methods.base import Step
    rng = np.random.default_rng(0)
    for _ in range(episodes):
        for t in range(length + 1):
            o = {}
            if obs in ("pixels", "both"):
                o["pixels"] = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
            if obs in ("proprio", "both"):
                o["proprio"] = rng.standard_normal(5).astype(np.float32)
            method.observe(Step(o, rng.uniform(-1, 1, 1).astype(np.float32), float(rng.random()), t == 0,
                                t == length, False))


def time_updates(preset: str, obs: str, n: int, overrides: dict[str, str] | None = None) -> dict:
    import numpy as np
    method, _ = build(preset, obs, overrides)
    fill(method, obs, length=max(250, method.cfg.seq_len + 1))
    t0 = time.perf_counter()
    method.train_step()  # includes one-off costs (first-call kernels; compilation when compile=True)
    first = time.perf_counter() - t0
    method.train_step()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        method.train_step()
        times.append(time.perf_counter() - t0)
    s = float(np.median(times))
    return {"s_per_update": s, "updates_per_s": 1.0 / s, "first_update_s": first, "n": n}


def time_act(preset: str, obs: str, batch: int, mode: str, n: int = 50) -> float:
    """Seconds per act() call on a batch, under inference_mode (the method's choice) or plain no_grad /
    autograd-enabled, to show what inference mode buys."""
    import numpy as np
    import torch
    method, task = build(preset, obs)
    method.task_agent_steps = 10**9  # past the warm-up: the policy acts
    method.task_episodes = 10**9
    rng = np.random.default_rng(0)
    o = {"is_first": np.zeros(batch, bool)}
    if obs in ("pixels", "both"):
        o["pixels"] = rng.integers(0, 256, (batch, 3, 64, 64), dtype=np.uint8)
    if obs in ("proprio", "both"):
        o["proprio"] = rng.standard_normal((batch, 5)).astype(np.float32)
    orig = torch.inference_mode
    ctx = {"inference": orig, "no_grad": lambda: torch.no_grad(), "grad": lambda: contextlib.nullcontext()}[mode]
    torch.inference_mode = ctx  # type: ignore[assignment]  (benchmark-only swap, restored below)
    try:
        state = None
        for _ in range(3):
            _, state = method.act(o, state, task, explore=True)
        t0 = time.perf_counter()
        for _ in range(n):
            _, state = method.act(o, state, task, explore=True)
        return (time.perf_counter() - t0) / n
    finally:
        torch.inference_mode = orig  # type: ignore[assignment]


def time_run(preset: str, obs: str, warmup_frames: int, train_frames: int, threads: int,
             overrides: dict[str, str] | None = None) -> dict:
    """A whole (short) training run through the real runner; env frames per wall-clock second."""
    from harness.config import RunConfig
    from harness.reporting import MlflowReporter
    from harness.runner import run_stream
    from harness.streams import EvalSpec, StreamSpec, TaskSpec
    from tasks.base import EnvConfig
    frames = warmup_frames + train_frames
    ov = {"warmup_env_frames": str(warmup_frames), "warmup_min_episodes": "1", **(overrides or {})}
    with tempfile.TemporaryDirectory() as tmp:
        stream = StreamSpec("speed", (TaskSpec("cartpole-balance", frames),), EvalSpec(frames, 1))
        cfg = RunConfig(stream=stream, method="dreamer", preset=preset, overrides=tuple(ov.items()),
                        env=EnvConfig(obs_type=obs, episode_frames=min(1000, warmup_frames)),
                        torch_threads=threads, video_frames=0, runs_dir=str(Path(tmp) / "runs"),
                        checkpoint_every_frames=10**9)
        rep = MlflowReporter(f"sqlite:///{tmp}/mlflow.db")
        t0 = time.perf_counter()
        res = run_stream(cfg, echo=lambda *_: None, reporter=rep)
        wall = time.perf_counter() - t0
        fps_hist = rep.client.get_metric_history(
            [r for r in rep.client.search_runs([rep.client.get_run(res.run_id).info.experiment_id])
             if r.data.tags.get("mlflow.parentRunId") == res.run_id][0].info.run_id, "perf/env_fps")
    return {"env_frames": frames, "warmup_frames": warmup_frames, "wall_s": wall, "env_fps": frames / wall,
            "train_phase_fps_last_log": fps_hist[-1].value if fps_hist else None}


def fault_probe(preset: str, obs: str, n: int) -> dict:
    """Minor page faults and seconds per update in this process (malloc as the environment left it)."""
    import resource

    import numpy as np

    from harness.provenance import keep_freed_memory
    tuned = keep_freed_memory()
    method, _ = build(preset, obs)
    fill(method, obs, length=max(250, method.cfg.seq_len + 1))
    method.train_step()
    method.train_step()
    r0, times = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, []
    for _ in range(n):
        t0 = time.perf_counter()
        method.train_step()
        times.append(time.perf_counter() - t0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"malloc_tuned": tuned, "minor_faults_per_update": (r1.ru_minflt - r0) / n,
            "s_per_update": float(np.median(times)), "max_rss_mb": r1.ru_maxrss / 1024}


def malloc_table(presets: list[str], obs_types: list[str], n: int, threads: int) -> list[dict]:
    """Each cell in two fresh processes, GSA_MALLOC_TUNING=0 and 1 (harness.provenance.keep_freed_memory)."""
    import subprocess
    rows = []
    for preset in presets:
        for obs in obs_types:
            for tuning in ("0", "1"):
                env = os.environ | {"GSA_MALLOC_TUNING": tuning, "OMP_NUM_THREADS": str(threads)}
                out = subprocess.run([sys.executable, __file__, "--fault-probe", f"{preset},{obs},{n}",
                                      "--threads", str(threads)], env=env, capture_output=True, text=True, check=True)
                rows.append({"preset": preset, "obs": obs} | json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def ab_table(rev: str, presets: list[str], obs_types: list[str], n: int, threads: int, rounds: int) -> list[dict]:
    """This tree against git revision ``rev`` (a temporary worktree), each cell in fresh processes that
    alternate between the two ``rounds`` times, so that a change of load hits both alike."""
    import shutil
    import subprocess
    other = Path(tempfile.mkdtemp(prefix="bench-ab-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(other), rev], check=True,
                   capture_output=True)
    try:
        rows = []
        for preset in presets:
            for obs in obs_types:
                times: dict[str, list[float]] = {rev: [], "this tree": []}
                for _ in range(rounds):
                    for name, tree in ((rev, other), ("this tree", ROOT)):
                        out = subprocess.run([sys.executable, str(tree / "benchmarks" / "bench_backbone_speed.py"),
                                              "--fault-probe", f"{preset},{obs},{n}", "--threads", str(threads)],
                                             env=os.environ | {"OMP_NUM_THREADS": str(threads)}, cwd=tree,
                                             capture_output=True, text=True, check=True)
                        times[name].append(json.loads(out.stdout.strip().splitlines()[-1])["s_per_update"])
                import numpy as np
                old, new = float(np.median(times[rev])), float(np.median(times["this tree"]))
                rows.append({"preset": preset, "obs": obs, "rev": rev, "rev_s": old, "this_s": new,
                             "speedup": old / new, "rounds": rounds, "updates_per_round": n})
                print(json.dumps(rows[-1]), flush=True)
        return rows
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)], check=False)
        shutil.rmtree(other.parent, ignore_errors=True)


def count() -> list[tuple[str, float, float]]:
    import torch

    from methods.backbone.actor_critic import ActorCritic
    from methods.backbone.config import DEBUG_AC, DEBUG_MODEL, PAPER_AC, PAPER_MODEL, SMALL_AC, SMALL_MODEL, TINY_AC, TINY_MODEL
    from methods.backbone.nets import count_parameters
    from methods.backbone.world_model import WorldModel
    rows = []
    table5 = dataclasses.replace(PAPER_MODEL, deter=PAPER_MODEL.hidden, hidden=PAPER_MODEL.deter)
    for name, m, a in (("paper (ncrl: deter 12288, hidden 1536)", PAPER_MODEL, PAPER_AC),
                       ("paper as Table 5 prints it (deter 1536, hidden 12288)", table5, PAPER_AC),
                       ("small", SMALL_MODEL, SMALL_AC), ("tiny", TINY_MODEL, TINY_AC), ("debug", DEBUG_MODEL, DEBUG_AC)):
        with torch.device("meta"):  # shapes only: no memory, no time
            wm = WorldModel(m, {"pixels": ((3, 64, 64), "uint8")}, 21)
            ac = ActorCritic(a, m.feat_dim, 21)
        rows.append((name, count_parameters(wm) / 1e6, (count_parameters(ac.actor) + count_parameters(ac.critic)) / 1e6))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", action="store_true", help="parameter counts only")
    ap.add_argument("--options", action="store_true", help="compare speed options (channels-last, compile, ...)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--obs", default="proprio,pixels")
    ap.add_argument("--updates", type=int, default=5, help="timed updates per cell")
    ap.add_argument("--run-train-frames", type=int, default=400, help="training frames of each whole-run timing")
    ap.add_argument("--run-warmup-frames", type=int, default=1000)
    ap.add_argument("--skip-runs", action="store_true")
    ap.add_argument("--malloc", action="store_true",
                    help="page faults and s/update with and without keeping freed memory in the heap")
    ap.add_argument("--fault-probe", default=None, help=argparse.SUPPRESS)   # PRESET,OBS,N: one --malloc cell
    ap.add_argument("--ab", metavar="REV", default=None,
                    help="s/update of this tree against git revision REV, in alternating fresh processes")
    ap.add_argument("--rounds", type=int, default=3, help="alternations per cell for --ab")
    a = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch
    torch.set_num_threads(a.threads)
    if a.fault_probe:
        preset, obs, n = a.fault_probe.split(",")
        print(json.dumps(fault_probe(preset, obs, int(n))))
        return
    if a.ab:
        table = ab_table(a.ab, a.presets.split(","), a.obs.split(","), a.updates, a.threads, a.rounds)
        lines = [f"This tree against {a.ab}, {a.threads} thread(s), median over {a.rounds} alternating processes of "
                 f"the median of {a.updates} updates, load average at start {os.getloadavg()[0]:.1f}:", "",
                 f"| preset | obs | {a.ab} s / update | this tree s / update | speed-up |", "|---|---|---|---|---|"]
        lines += [f"| {r['preset']} | {r['obs']} | {r['rev_s']:.3f} | {r['this_s']:.3f} | {r['speedup']:.2f}x |"
                  for r in table]
        print("\n".join(lines))
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "backbone_speed_ab.md").write_text("\n".join(lines) + "\n")
        (OUT / "backbone_speed_ab.json").write_text(json.dumps(table, indent=1))
        return
    if a.malloc:
        table = malloc_table(a.presets.split(","), a.obs.split(","), a.updates, a.threads)
        lines = [f"Keeping freed memory in the heap (harness.provenance.keep_freed_memory), {a.threads} thread(s), "
                 f"median of {a.updates} updates, load average at start {os.getloadavg()[0]:.1f}:", "",
                 "| preset | obs | malloc tuned | minor page faults / update | s / update | max RSS (MB) |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {r['preset']} | {r['obs']} | {r['malloc_tuned']} | {r['minor_faults_per_update']:,.0f} | "
                  f"{r['s_per_update']:.3f} | {r['max_rss_mb']:,.0f} |" for r in table]
        print("\n".join(lines))
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "backbone_speed_malloc.md").write_text("\n".join(lines) + "\n")
        (OUT / "backbone_speed_malloc.json").write_text(json.dumps(table, indent=1))
        return
    rows = count()
    print("parameters (world model for 64x64 pixels, 21-d padded actions; actor + critic):")
    for name, wm, ac in rows:
        print(f"  {name:<55} world model {wm:8.2f}M   actor+critic {ac:6.2f}M")
    if a.count:
        return
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": a.threads,
            "torch": torch.__version__, "load_avg_at_start": os.getloadavg()}
    if a.options:
        return options(a, meta)
    results = []
    for preset in a.presets.split(","):
        for obs in a.obs.split(","):
            n = a.updates if not (preset == "small" and obs == "pixels") else max(2, a.updates // 2)
            up = time_updates(preset, obs, n)
            row = {"preset": preset, "obs": obs, **up}
            if not a.skip_runs:
                train = a.run_train_frames if not (preset == "small" and obs == "pixels") else a.run_train_frames // 2
                row["run"] = time_run(preset, obs, a.run_warmup_frames, train, a.threads)
            row["load_avg_after"] = os.getloadavg()
            results.append(row)
            print(json.dumps(row), flush=True)
    lines = [f"Dreamer speed on this CPU ({meta['cpus']} cores, {a.threads} torch thread(s), torch {meta['torch']}).",
             "", "| preset | obs | s/update | grad updates/s | whole-run env frames/s | run (warm-up + train frames) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        run = r.get("run")
        lines.append(f"| {r['preset']} | {r['obs']} | {r['s_per_update']:.3f} | {r['updates_per_s']:.2f} | "
                     + (f"{run['env_fps']:.1f} | {run['warmup_frames']} + {run['env_frames'] - run['warmup_frames']} |"
                        if run else "- | - |"))
    text = "\n".join(lines)
    print(text)
    (OUT / "backbone_speed.md").write_text(text + "\n")
    (OUT / "backbone_speed.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))


def options(a, meta) -> None:
    """Each speed option on and off, for one representative cell each."""
    out = []

    def rec(what, value, unit):
        out.append({"option": what, "value": value, "unit": unit})
        print(f"{what:<70} {value:10.4f} {unit}", flush=True)

    n = a.updates
    for cl in ("true", "false"):
        r = time_updates("tiny", "pixels", n, {"model.channels_last": cl})
        rec(f"tiny pixels update, channels_last={cl}", r["s_per_update"], "s/update")
    for comp in ("false", "true"):
        r = time_updates("tiny", "proprio", n, {"compile": comp})
        rec(f"tiny proprio update, compile={comp} (first update {r['first_update_s']:.0f} s)", r["s_per_update"],
            "s/update")
    for starts in ("0", "128"):
        r = time_updates("tiny", "proprio", n, {"imag_starts": starts})
        rec(f"tiny proprio update, imag_starts={starts} (0 = all 512)", r["s_per_update"], "s/update")
    for mode in ("inference", "no_grad"):
        rec(f"tiny pixels act() batch 1, {mode}", time_act("tiny", "pixels", 1, mode) * 1e3, "ms/call")
    b1 = time_act("tiny", "pixels", 1, "inference")
    b5 = time_act("tiny", "pixels", 5, "inference")
    rec("tiny pixels evaluation acting: 5 episodes batched (one act on 5)", b5 * 1e3, "ms/step")
    rec("tiny pixels evaluation acting: 5 episodes one by one (5 acts on 1)", 5 * b1 * 1e3, "ms/step")
    (OUT / "backbone_speed_options.json").write_text(json.dumps({"meta": meta, "results": out}, indent=1))


if __name__ == "__main__":
    main()
