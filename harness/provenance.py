"""What every run records and fixes before it starts: the code's commit, the package versions, the
device, the seeds, and the global RNG state (saved in checkpoints, restored on resume).

Shared by the stream runner, offline collection and world-model pre-training, so each records the
same tags and resolves devices and seeds the same way. torch is imported inside the functions that
need it, so importing this module stays cheap.
"""
from __future__ import annotations

import ctypes
import os
import platform
import random
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError

# The packages whose versions a run records (tags ``version.<name>``), besides python.
PACKAGES = ("torch", "numpy", "mujoco", "dm_control", "metaworld", "gymnasium", "faiss-cpu", "mlflow",
            "click", "avalanche-lib")

_REPO_DIR = Path(__file__).parent
_GIT_TIMEOUT_S = 5


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=_REPO_DIR, capture_output=True, text=True, timeout=_GIT_TIMEOUT_S)


def git_commit() -> str:
    """HEAD's hash, with ``-dirty`` when tracked files have uncommitted changes; ``unknown`` outside git."""
    try:
        head = _git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = _git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty else "")


def versions() -> dict[str, str]:
    """python's version and each of PACKAGES' installed version (``missing`` when not installed)."""
    out = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "missing"
    return out


# The vector extensions whose presence changes which kernels torch, MKL and numpy pick, and so the low bits of
# float results: two machines that differ in them may train a different model from the same seed and data.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile")


def host() -> dict[str, str]:
    """The CPU this process runs on: ``cpu`` (its model name) and ``cpu_flags`` (which of CPU_FLAGS it has),
    recorded as tags ``host.*`` beside the versions, so that runs that differ only by machine can be told
    apart (a generalist trained again on another CPU, ``benchmarks/bench_gsa_evidence.py``)."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:   # not Linux: the model name as the platform gives it, no flags
        pass
    model = model or platform.processor() or platform.machine()
    return {"cpu": model or "unknown", "cpu_flags": ",".join(f for f in CPU_FLAGS if f in flags) or "unknown"}


def machine_tags() -> dict[str, str]:
    """The run tags that say what software and machine made a run: ``version.<package>`` and ``host.<key>``."""
    return {f"version.{k}": v for k, v in versions().items()} | {f"host.{k}": v for k, v in host().items()}


def resolve_device(name: str) -> str:
    """``auto`` -> cuda when available, else cpu; ``cpu``, ``cuda`` and ``cuda:N`` as given, cuda
    only when CUDA is available here."""
    if not (name in ("auto", "cpu") or name.startswith("cuda")):
        raise HarnessError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N")
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HarnessError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    return name


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # glibc mallopt parameters (malloc.h)


def keep_freed_memory(trim_bytes: int = 1 << 30, mmap_bytes: int = 32 << 20) -> bool:
    """Keep freed memory in the process heap (glibc): allocations up to 32 MiB come from the heap instead of
    fresh mmap()s, and the heap is not trimmed below 1 GiB, so the same tensors of every update reuse pages
    instead of faulting them in again (a tiny pixel update: 88k minor page faults -> 25k,
    ``benchmarks/bench_backbone_speed.py --malloc``). Results are unchanged. Called at the CLI's entry, never
    at import; ``GSA_MALLOC_TUNING=0`` leaves malloc alone. Returns whether it applied (glibc only)."""
    if os.environ.get("GSA_MALLOC_TUNING", "1") == "0" or not platform.libc_ver()[0] == "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_bytes)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_bytes))


def auto_threads() -> int:
    """torch CPU threads for a process that was not told: ``OMP_NUM_THREADS`` when a launcher set it, else the
    cores this process may use that the last minute's load left free, and 1 on a busy machine. Measured here
    (anchors.md section 6): 2 threads are 1.4-1.9x faster than 1 on a free 2-core machine and 4-45x slower
    beside one other busy process (OpenMP threads spin), so a shared machine gets 1."""
    import os
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    free = cores - os.getloadavg()[0]
    return max(1, int(free)) if free >= 1.5 else 1


def seed_everything(seed: int, threads: int) -> None:
    """Seed python's, numpy's and torch's global RNGs; ``threads > 0`` also sets torch's thread count."""
    import torch
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)


def rng_state() -> dict[str, Any]:
    """The global RNG states (python, numpy, torch CPU) as plain values a checkpoint can hold."""
    import torch
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [int(x) for x in np_state[1]], "numpy_pos": int(np_state[2]),
            "numpy_gauss": [int(np_state[3]), float(np_state[4])]}   # the cached second normal draw


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (also after a JSON/pickle round trip turned tuples into lists)."""
    import torch
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    has_gauss, gauss_value = state.get("numpy_gauss", (0, 0.0))
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], int(has_gauss),
                         float(gauss_value)))
