"""One prepared GPU check, sized to finish in under 8 minutes on one GPU (the device tool's budget).

    .venv/bin/python benchmarks/gpu_check.py                 # on the GPU machine
    .venv/bin/python benchmarks/gpu_check.py --smoke         # the same steps on the CPU, tiny sizes (a dry run)

1. The machine: torch and its CUDA, the GPU, the GL backend and the EGL renderer string.
   Then ``tests``: ``pytest tests/test_cuda.py`` (every registered method trains on CUDA; GSA pre-trains there).
2. Seconds per Dreamer update (one world-model + one actor-critic update) and peak GPU memory, pixels, for
   the ``small`` and ``paper`` presets in fp32 and bf16 (``model.amp=true``), on synthetic replay.
3. Whole-run env frames/s: ``run-stream`` with pixels (paper render quality) for 2 minutes, stopped with
   SIGTERM (the run ends KILLED, resumable), frames counted from its last checkpoint.
4. Four concurrent EGL-rendering ``run-stream`` processes on the one GPU for 90 s: each one's env frames/s,
   and whether any hangs in its first render (a known MuJoCo report: 8 EGL processes on one H200 hung).
Results: printed as Markdown and written to benchmarks/results/gpu_check.{json,md}; use them for the packing
defaults of `cli.py sweep` (``--gpus-per-job``). Each step has its own time limit; a failing step is reported
and the next one runs. ``--steps tests,updates`` measures only those steps and keeps the others from the last
report, each marked with the commit and date that measured it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results"
CLI = str(ROOT / "cli.py")


def machine() -> dict:
    import torch
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
            if torch.cuda.is_available() else 0, "cpu_cores": len(os.sched_getaffinity(0)),
            "MUJOCO_GL": os.environ.get("MUJOCO_GL")}
    code = ("from tasks.base import make_env, EnvConfig; e = make_env('cartpole-balance', EnvConfig()); e.reset(); "
            "from OpenGL import GL; print(GL.glGetString(GL.GL_RENDERER).decode(), '|', "
            "GL.glGetString(GL.GL_VENDOR).decode()); e.close()")
    try:
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env=os.environ | {"MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
        info["renderer"] = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() \
            else f"failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}"
    except subprocess.TimeoutExpired:
        info["renderer"] = "hung for 60 s in the first render"
    return info


def time_updates(preset: str, amp: bool, device: str, n: int) -> dict:
    """Median s/update and peak memory of Dreamer with pixels on a synthetic replay."""
    import numpy as np
    import torch

    from methods import METHODS
    from methods.base import MethodContext, Step, TaskContext, resolve_config
    spec = METHODS.load("dreamer")
    cfg = resolve_config(spec, "dreamer", preset, {"model.amp": str(amp).lower()})
    with tempfile.TemporaryDirectory() as tmp:
        ctx = MethodContext(("cartpole-balance",), {"pixels": ((3, 64, 64), "uint8")}, 1, 0, device, Path(tmp))
        method = spec.build(cfg, ctx)
        method.on_task_start(TaskContext(0, "cartpole-balance", "cartpole", "dmc", 10**6, np.ones(1, np.float32), 2))
        rng = np.random.default_rng(0)
        length = max(250, cfg.seq_len + 1)
        for _ in range(3):
            for t in range(length + 1):
                method.observe(Step({"pixels": rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)},
                                    rng.uniform(-1, 1, 1).astype(np.float32), float(rng.random()), t == 0,
                                    t == length, False))
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        method.train_step()
        first = time.perf_counter() - t0
        times = []
        for _ in range(n):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            method.train_step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
        del method
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return {"preset": preset, "precision": "bf16" if amp else "fp32", "s_per_update": float(np.median(times)),
            "first_update_s": first, "peak_gpu_memory_gib": peak, "n": n}


def _stream_file(folder: Path, frames: int) -> Path:
    p = folder / "gpu-check.toml"
    p.write_text(f'name = "gpu-check"\n[eval]\nevery_frames = {frames}\nepisodes = 1\n'
                 f'[[tasks]]\nname = "quadruped-walk"\nframes = {frames}\n')
    return p


def _progress(runs_dir: Path) -> dict[str, int]:
    from harness import checkpoint
    out = {}
    for d in runs_dir.glob("*"):
        try:
            out[d.name] = int(checkpoint.load(d / "checkpoint.pt")["progress"]["global_env_frames"])
        except Exception:
            continue
    return out


def runs_for(seconds: float, n: int, method: str, preset: str | None, smoke: bool) -> dict:
    """``n`` run-stream processes with pixels for ``seconds``, then SIGTERM; env frames/s of each."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        stream = _stream_file(folder, 10**7)
        env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "MUJOCO_EGL_DEVICE_ID": "0"}
        # one store per process: this step measures rendering and training, not a shared SQLite file
        procs = []
        for i in range(n):
            cmd = [sys.executable, CLI, "run-stream", "--stream-file", str(stream), "--method", method, "--seed", str(i),
                   "--obs", "pixels", "--render-quality", "paper", "--checkpoint-every", "250", "--video-frames", "0",
                   "--runs-dir", str(folder / f"runs{i}"), "--threads", "1"]
            if preset:
                cmd += ["--preset", preset, "--set", "warmup_env_frames=2000"]
            e = env | {"MLFLOW_TRACKING_URI": f"sqlite:///{folder / f'mlflow{i}.db'}"}
            procs.append(subprocess.Popen(cmd, cwd=folder, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          text=True))
        t0 = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        for p in procs:
            p.send_signal(signal.SIGTERM)
        errors = []
        for p in procs:
            try:
                _, err = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
                err = "did not stop within 60 s of SIGTERM\n" + (err or "")
            if p.returncode not in (143, 0) and err:
                errors.append(err.strip().splitlines()[-1])
        frames = [sum(_progress(folder / f"runs{i}").values()) for i in range(n)]
    return {"processes": n, "method": method, "preset": preset, "seconds": round(elapsed, 1),
            "env_frames": frames, "env_fps": [round(f / elapsed, 1) for f in frames],
            "hung": sum(1 for f in frames if f == 0), "errors": errors}


STEPS = ("tests", "updates", "whole_run", "egl_x4")


def cuda_tests(seconds: int) -> dict:
    """``pytest tests/test_cuda.py``: every method trains on CUDA (xdist when the machine has it)."""
    import importlib.util
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_cuda.py"), "-q", "-p", "no:cacheprovider", "-rfE"]
    if importlib.util.find_spec("xdist"):
        cmd += ["-n", str(min(8, max(1, len(os.sched_getaffinity(0)) // 2)))]
    t0 = time.time()
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds)
        text, rc = out.stdout + out.stderr, out.returncode
    except subprocess.TimeoutExpired as exc:
        text, rc = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), "timeout"
    lines = text.strip().splitlines()
    summary = [x for x in lines if any(w in x for w in (" passed", " failed", " skipped", " error"))]
    return {"rc": rc, "seconds": round(time.time() - t0, 1), "summary": summary[-1] if summary else (lines or [""])[-1],
            "failed": [x for x in lines if x.startswith(("FAILED", "ERROR"))][:40]}


def _markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# GPU check ({m['gpu']}, torch {m['torch']}, CUDA {m['cuda']}; renderer {m['renderer']})", "",
             f"Commit {report.get('commit', '?')}, {report.get('date', '?')}; steps measured earlier and kept: "
             f"{', '.join(f'{k} ({v})' for k, v in report.get('kept', {}).items()) or 'none'}.", ""]
    if "tests" in report:
        t = report["tests"]
        lines += [f"CUDA tests (tests/test_cuda.py): {t['summary']} in {t['seconds']} s."]
        lines += [f"- {f}" for f in t["failed"]] + [""]
    if report.get("updates"):
        lines += ["| preset | precision | s/update | peak GPU memory (GiB) |", "|---|---|---|---|"]
        lines += [f"| {r['preset']} | {r['precision']} | {r['s_per_update']:.3f} | {r['peak_gpu_memory_gib']:.2f} |"
                  for r in report["updates"]] + [""]
    if "whole_run" in report:
        w = report["whole_run"]
        lines += [f"Whole run (dreamer {w['preset']}, pixels, paper rendering): {w['env_fps'][0]} env frames/s over "
                  f"{w['seconds']} s" + (f"; errors: {w['errors']}" if w["errors"] else "") + "."]
    if "egl_x4" in report:
        e = report["egl_x4"]
        lines += [f"4 concurrent EGL run-stream processes (random, pixels): {e['env_fps']} env frames/s; "
                  f"{e['hung']} hung" + (f"; errors: {e['errors']}" if e["errors"] else "") + "."]
    lines += [f"Total {report['total_s']} s."]
    if report["steps_failed"]:
        lines += ["", "Failed steps:"] + [f"- {f}" for f in report["steps_failed"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, short durations: checks the script")
    ap.add_argument("--updates", type=int, default=10)
    ap.add_argument("--steps", default=",".join(STEPS),
                    help=f"comma-separated subset of {','.join(STEPS)}; the others keep their values from the last "
                         "report, marked as kept (device time is short: measure only what changed)")
    ap.add_argument("--commit", default=None, help="label the report with this commit where the tree has no .git "
                                                    "(a device machine gets a copy of the working tree)")
    a = ap.parse_args()
    steps = [x.strip() for x in a.steps.split(",") if x.strip()]
    if bad := [x for x in steps if x not in STEPS]:
        ap.error(f"unknown step(s) {bad}; valid: {', '.join(STEPS)}")
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    from harness.provenance import git_commit
    device = "cpu" if a.smoke or not torch.cuda.is_available() else "cuda"
    presets = ("debug",) if a.smoke else ("small", "paper")
    long_s, multi_s = (45, 45) if a.smoke else (120, 90)
    stem = "gpu_check_smoke" if a.smoke else "gpu_check"
    t0 = time.time()
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    report: dict = {"machine": machine(), "device": device, "commit": a.commit or git_commit(), "date": date, "kept": {},
                    "steps_failed": []}
    print(json.dumps(report["machine"], indent=1), flush=True)
    previous = OUT / f"{stem}.json"
    if previous.exists():
        old = json.loads(previous.read_text())
        for step in STEPS:
            if step not in steps and step in old:
                report[step] = old[step]
                report["kept"][step] = old.get("kept", {}).get(step) or f"{old.get('commit', '?')}, {old.get('date', '?')}"
    if "tests" in steps:
        report["tests"] = cuda_tests(240)
        print(f"CUDA tests: {report['tests']['summary']}", *report["tests"]["failed"], sep="\n", flush=True)
    if "updates" in steps:
        report["updates"] = []
        for preset in presets:
            for amp in (False, True):
                try:
                    r = time_updates(preset, amp, device, 3 if a.smoke else a.updates)
                    report["updates"].append(r)
                    print(f"update {preset} {r['precision']}: {r['s_per_update']:.3f} s/update, peak "
                          f"{r['peak_gpu_memory_gib']:.2f} GiB (first {r['first_update_s']:.1f} s)", flush=True)
                except Exception as exc:   # e.g. out of memory: report it, go on
                    report["steps_failed"].append(f"update {preset} amp={amp}: {type(exc).__name__}: {exc}"[:300])
                    print(report["steps_failed"][-1], flush=True)
    if "whole_run" in steps:
        report["whole_run"] = runs_for(long_s, 1, "dreamer", "debug" if a.smoke else "small", a.smoke)
        print(f"whole run (dreamer, pixels, {long_s} s): {report['whole_run']['env_fps']} env frames/s "
              f"{report['whole_run']['errors']}", flush=True)
    if "egl_x4" in steps:
        report["egl_x4"] = runs_for(multi_s, 4, "random", None, a.smoke)
        print(f"4 EGL processes ({multi_s} s): {report['egl_x4']['env_fps']} env frames/s, hung: "
              f"{report['egl_x4']['hung']}", flush=True)
    report["total_s"] = round(time.time() - t0, 1)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (OUT / f"{stem}.md").write_text(_markdown(report))
    print(_markdown(report))


if __name__ == "__main__":
    main()
