"""``cli.py doctor``: what decides results on this machine, and whether it renders.

It prints the versions that change numbers (python, torch and its CUDA, mujoco, dm_control, metaworld and the
reward-function version its envs use, gymnasium, mlflow, faiss, minari), the GL backend and the renderer's
vendor string, the cores, torch threads and evaluation workers the harness will use, and whether a GPU is
visible. Then it renders one frame of a DMC and of a Meta-World task and times their steps, in a child process
with a time limit (``python -m harness.doctor --probe``), so a hanging EGL is reported instead of freezing the
command. When the probe fails it says what to do, and ``doctor`` exits non-zero.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

PROBE_TASKS = ("walker-walk", "reach-v3")     # one DMC, one Meta-World
PROBE_STEPS = 20
PROBE_TIMEOUT_S = 180.0
PACKAGES = ("torch", "numpy", "mujoco", "dm_control", "metaworld", "gymnasium", "mlflow", "minari")


@dataclass
class Report:
    facts: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)      # each with what to do

    @property
    def ok(self) -> bool:
        return not self.problems


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "missing"


def _torch_facts() -> list[tuple[str, str]]:
    import torch
    cuda = torch.version.cuda or "none (CPU build)"
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return [("torch", f"{torch.__version__} (CUDA {cuda}, cuDNN {torch.backends.cudnn.version() or 'none'})"),
            ("GPU visible", f"yes: {', '.join(gpus)}" if gpus else "no (torch.cuda.is_available() is False)")]


def _threads_facts() -> list[tuple[str, str]]:
    from harness.evaluation import available_cores, eval_workers
    from harness.provenance import auto_threads
    threads = auto_threads()
    cores = available_cores()
    omp = os.environ.get("OMP_NUM_THREADS")
    workers_setting = os.environ.get("GSA_EVAL_WORKERS", "auto")
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        workers = eval_workers(5, "pixels")
    finally:
        torch.set_num_threads(before)
    return [("cores", f"{cores} usable (CPU affinity) of {os.cpu_count()}; load {os.getloadavg()[0]:.1f}"),
            ("torch threads", f"{threads} (run-stream --threads 0: auto" + (f"; OMP_NUM_THREADS={omp}" if omp else "")
             + "; --threads N to fix it)"),
            ("evaluation workers", f"{workers} env worker processes for a 5-episode pixel evaluation "
                                   f"(GSA_EVAL_WORKERS={workers_setting})")]


def gl_backend() -> str:
    """The GL backend MuJoCo will use: MUJOCO_GL as the harness sets it (egl unless the user chose)."""
    return os.environ.get("MUJOCO_GL", "egl")


def collect_facts() -> list[tuple[str, str]]:
    facts = [("python", f"{platform.python_version()} ({sys.executable})"),
             ("platform", platform.platform())]
    facts += _torch_facts()
    for package in PACKAGES[1:]:
        facts.append((package, _version(package)))
    try:
        import faiss
        facts.append(("faiss", f"{faiss.__version__} (threads {faiss.omp_get_max_threads()})"))
    except ImportError:
        facts.append(("faiss", "missing"))
    mujoco_gl = gl_backend()
    pyopengl = os.environ.get("PYOPENGL_PLATFORM")
    facts.append(("GL backend", f"MUJOCO_GL={mujoco_gl}" + (f", PYOPENGL_PLATFORM={pyopengl}" if pyopengl else "")
                  + ("" if "MUJOCO_GL" in os.environ else " (the harness's default; set MUJOCO_GL to change it)")))
    facts += _threads_facts()
    return facts


# ============================================================================ the render probe (child process)

def probe() -> dict[str, Any]:
    """In the child: render one frame of each probe task, time its steps, read the GL strings."""
    import numpy as np

    from tasks.base import EnvConfig, make_env
    out: dict[str, Any] = {"gl_backend": gl_backend(), "tasks": {}}
    for name in PROBE_TASKS:
        t0 = time.perf_counter()
        env = make_env(name, EnvConfig(obs_type="pixels", render_quality="paper"), seed=0)
        try:
            obs = env.reset()
            made = time.perf_counter() - t0
            action = np.zeros(env.action_dim, np.float32)
            t1 = time.perf_counter()
            for _ in range(PROBE_STEPS):
                res = env.step(action)
                if res.terminated or res.truncated:
                    env.reset()
            step_ms = 1e3 * (time.perf_counter() - t1) / PROBE_STEPS
            frame = obs["pixels"]
            info: dict[str, Any] = {"frame": list(frame.shape), "frame_std": float(frame.std()),
                                    "make_and_reset_s": round(made, 3), "step_ms": round(step_ms, 2),
                                    "frames_per_step": env.config.action_repeat}
            if hasattr(env, "_physics") and "gl" not in out:
                out["gl"] = _gl_strings(env._physics)
            if hasattr(env, "_env") and hasattr(getattr(env._env, "unwrapped", None), "reward_function_version"):
                info["reward_function_version"] = env._env.unwrapped.reward_function_version
            out["tasks"][name] = info
        finally:
            env.close()
    return out


def _gl_strings(physics: Any) -> dict[str, str]:
    """GL_VENDOR / GL_RENDERER / GL_VERSION of the context dm_control renders with."""
    try:
        from OpenGL import GL
        with physics.contexts.gl.make_current() as ctx:
            def read() -> dict[str, str]:
                return {k: (GL.glGetString(v) or b"?").decode(errors="replace")
                        for k, v in (("vendor", GL.GL_VENDOR), ("renderer", GL.GL_RENDERER),
                                     ("version", GL.GL_VERSION))}
            return ctx.call(read)
    except Exception as exc:   # noqa: BLE001  (the frame rendered; the strings are a nicety)
        return {"vendor": f"unknown ({type(exc).__name__}: {exc})"}


def _advice(backend: str, text: str) -> str:
    low = text.lower()
    if backend == "egl":
        return ("headless EGL failed. On a CPU machine install Mesa's EGL (Debian/Ubuntu: apt-get install "
                "libegl1 libegl-mesa0 libgl1-mesa-dri); on a GPU node the NVIDIA driver's EGL (libnvidia-egl) and "
                "MUJOCO_EGL_DEVICE_ID=<visible GPU>. Or render in software: MUJOCO_GL=osmesa "
                "(apt-get install libosmesa6), then run `cli.py doctor` again.")
    if backend == "osmesa":
        return ("OSMesa failed: install it (Debian/Ubuntu: apt-get install libosmesa6) and keep "
                "PYOPENGL_PLATFORM unset or osmesa; or try MUJOCO_GL=egl.")
    if backend == "glfw" or "display" in low:
        return ("glfw needs a display (an X server and DISPLAY); on a headless machine use MUJOCO_GL=egl "
                "(GPU or Mesa) or MUJOCO_GL=osmesa.")
    return f"MUJOCO_GL={backend} is not one MuJoCo knows: use egl, osmesa or glfw."


def run_probe(timeout_s: float = PROBE_TIMEOUT_S) -> tuple[dict[str, Any] | None, str | None]:
    """The probe in a child process: (its result, None) or (None, what went wrong and what to do)."""
    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "egl")
    backend = env["MUJOCO_GL"]
    try:
        proc = subprocess.run([sys.executable, "-m", "harness.doctor", "--probe"], capture_output=True, text=True,
                              timeout=timeout_s, env=env, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return None, (f"rendering with MUJOCO_GL={backend} did not finish in {timeout_s:.0f} s (a hanging GL "
                      f"driver). " + _advice(backend, "hang"))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " | ".join(line for line in (proc.stderr or proc.stdout).strip().splitlines()[-3:])
        return None, f"rendering with MUJOCO_GL={backend} failed (exit {proc.returncode}: {tail}). " + \
            _advice(backend, proc.stderr + proc.stdout)
    return json.loads(lines[-1]), None


def diagnose(timeout_s: float = PROBE_TIMEOUT_S) -> Report:
    rep = Report(collect_facts())
    result, problem = run_probe(timeout_s)
    if problem:
        rep.problems.append(problem)
        return rep
    assert result is not None
    gl = result.get("gl", {})
    rep.facts.append(("renderer", " / ".join(gl.get(k, "?") for k in ("vendor", "renderer", "version"))))
    for name, info in result["tasks"].items():
        fps = 1e3 * info["frames_per_step"] / info["step_ms"] if info["step_ms"] > 0 else float("inf")
        extra = f"; Meta-World reward function {info['reward_function_version']}" \
            if "reward_function_version" in info else ""
        rep.facts.append((f"render {name}", f"frame {tuple(info['frame'])} ok, {info['step_ms']:.1f} ms per agent "
                                            f"step with pixels ({fps:,.0f} env frames/s, paper quality){extra}"))
        if info["frame_std"] == 0.0:
            rep.problems.append(f"{name} rendered a blank frame (every pixel the same): the GL driver renders "
                                f"nothing. " + _advice(result["gl_backend"], "blank"))
    return rep


def print_report(rep: Report, echo: Callable[[str], None] = print) -> None:
    width = max(len(k) for k, _ in rep.facts)
    for key, value in rep.facts:
        echo(f"{key:<{width}}  {value}")
    for problem in rep.problems:
        echo(f"PROBLEM: {problem}")
    echo("ok: this machine renders and runs the harness's tasks" if rep.ok else
         f"{len(rep.problems)} problem(s); fix them and run `cli.py doctor` again")


if __name__ == "__main__" and sys.argv[1:] == ["--probe"]:
    print(json.dumps(probe()), flush=True)
