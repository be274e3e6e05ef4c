"""`cli.py doctor` (harness/doctor.py): what decides results here, a real render of a DMC and a Meta-World frame,
and a failing or hanging renderer reported with what to do and a non-zero exit (no traceback)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")


def doctor(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, CLI, "doctor", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env}, check=False)


def test_doctor_reports_versions_backend_threads_and_renders_both_suites():
    r = doctor()
    assert r.returncode == 0, r.stdout + r.stderr
    for key in ("python", "torch", "GPU visible", "mujoco", "dm_control", "metaworld", "gymnasium", "mlflow", "faiss",
                "GL backend", "renderer", "cores", "torch threads", "evaluation workers"):
        assert any(line.startswith(key) for line in r.stdout.splitlines()), key
    assert "CUDA" in r.stdout and "MUJOCO_GL=egl" in r.stdout
    assert "render walker-walk  frame (3, 64, 64) ok" in r.stdout
    assert "Meta-World reward function v2" in r.stdout
    assert r.stdout.rstrip().endswith("ok: this machine renders and runs the harness's tasks")


def test_a_broken_gl_backend_says_what_to_do_and_fails():
    r = doctor(MUJOCO_GL="bogus")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "PROBLEM: rendering with MUJOCO_GL=bogus failed" in r.stdout and "use egl, osmesa or glfw" in r.stdout


def test_a_hanging_renderer_is_reported_not_waited_for():
    r = doctor("--timeout", "0.05")
    assert r.returncode == 1
    assert "did not finish in 0 s" in r.stdout and "MUJOCO_GL=osmesa" in r.stdout and "libosmesa6" in r.stdout
