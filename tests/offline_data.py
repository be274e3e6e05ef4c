"""Tiny real datasets shared by the offline-data, pre-training and retrieval tests (collected once per session).

Tests must not modify them: copy first (``copy_dataset``)."""
from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.collect import CollectConfig, collect
from harness.offline import open_dataset

TASKS = ("walker-walk", "cheetah-run", "reach-v3")
EPISODE_FRAMES = 40     # 20 agent steps + the reset observation = 21 stored steps per episode
_CACHE: dict[str, Path] = {}


def collected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """walker and cheetah (random, OU 0.5) and reach-v3 (expert, sigma 0.3), 2 episodes per setting, pixels
    and proprio, several shards; its MLflow run in ``<dir>/../mlflow.db``."""
    if "shards" not in _CACHE:
        root = tmp_path_factory.mktemp("offline")
        uri = f"sqlite:///{root / 'mlflow.db'}"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", uri)
            mp.chdir(root)
            collect(root / "ds", CollectConfig(tasks=TASKS, episodes=2, noise=(0.5,), obs_type="both",
                                               episode_frames=EPISODE_FRAMES, render_quality="fast", shard_steps=60,
                                               chunk_steps=8, seed=1), echo=lambda *_: None)
        _CACHE["shards"] = root / "ds"
    return _CACHE["shards"]


def pretrain_debug(data: Path, root: Path, updates: int, obs_keys: list[str] | None = None) -> Path:
    """A debug-size world model pre-trained on ``data`` for a few updates (1 torch thread), with its index;
    its MLflow runs in ``root/mlflow.db``. Returns the pre-training directory."""
    import torch

    from harness.pretraining import pretrain
    from methods.gsa.pretrain import make_config
    from methods.gsa.retrieval import build_index
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
            res = pretrain(data, make_config("debug", {"grad_updates": str(updates), "openloop_every": "100"}),
                           out=root / "pt", obs_keys=obs_keys, echo=lambda *_: None)
        build_index(res.out, echo=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    return res.out


def synthetic_episode(rng: np.random.Generator, t: int, action_dim: int, pad: int = 6, size: int = 8,
                      proprio: int = 5) -> dict[str, np.ndarray]:
    """One episode of random pixels (3, size, size), proprio (proprio,) and actions padded to ``pad``."""
    from harness.offline import FLAG_KEYS
    a = np.zeros((t, pad), np.float32)
    a[:-1, :action_dim] = rng.uniform(-1, 1, (t - 1, action_dim))
    flags = {k: np.zeros(t, bool) for k in FLAG_KEYS}
    flags["is_first"][0] = flags["is_last"][-1] = True
    return {"pixels": rng.integers(0, 255, (t, 3, size, size), dtype=np.uint8),
            "proprio": rng.standard_normal((t, proprio)).astype(np.float32), "action": a, **flags}


def synthetic(path: Path, lengths: tuple[int, ...] = (16, 24, 16, 24, 16, 24), *,
              obs: tuple[str, ...] = ("pixels", "proprio"), compression: str = "zlib", chunk_steps: int = 8,
              shard_steps: int = 1000, seed: int = 0) -> tuple[Path, list[dict[str, np.ndarray]]]:
    """A dataset written directly (no simulator, milliseconds): episodes alternate sawyer on reach-v3
    (4-d actions) and walker on walker-walk (6-d), padded to 6. With lengths that are multiples of
    ``chunk_steps``, checksum chunks never span two episodes. Returns the directory and the episodes."""
    from harness.offline import DatasetWriter
    rng = np.random.default_rng(seed)
    eps = [synthetic_episode(rng, t, 6 if i % 2 else 4) for i, t in enumerate(lengths)]
    spec = {k: v for k, v in {"pixels": ((3, 8, 8), np.uint8), "proprio": ((5,), np.float32)}.items() if k in obs}
    with DatasetWriter(path, spec, 6, shard_steps=shard_steps, compression=compression, chunk_steps=chunk_steps) as w:
        for i, e in enumerate(eps):
            w.add_episode({k: v for k, v in e.items() if k not in {"pixels", "proprio"} - set(obs)},
                          embodiment="walker" if i % 2 else "sawyer", task="walker-walk" if i % 2 else "reach-v3",
                          policy="random", noise=None, action_dim=6 if i % 2 else 4, seed=i)
    return path, eps


def copy_dataset(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def write_ncrl(src: Path, dest: Path) -> Path:
    """The same episodes in the paper code's layout: dmcontrol/<domain>/, metaworld/<task>/, one .npz each,
    ``{time}-{uuid}-{idx}-{len}.npz``, action row t = the action that led to observation t (row 0 dummy)."""
    ds = open_dataset(src, ["pixels"])
    ts = datetime.datetime(2024, 5, 1, 12, 0, 0).strftime("%Y%m%dT%H%M%S")
    for idx, ep in enumerate(ds.episode_ids):
        meta = ds.meta(int(ep))
        e = ds.episode(int(ep))
        folder = dest / ("metaworld" if meta.embodiment == "sawyer" else "dmcontrol") / (
            meta.task if meta.embodiment == "sawyer" else meta.embodiment)
        folder.mkdir(parents=True, exist_ok=True)
        t = len(e["pixels"])
        action = np.zeros((t, meta.action_dim), np.float32)
        action[1:] = e["action"][:-1, :meta.action_dim]
        np.savez_compressed(folder / f"{ts}-{meta.uid}-{idx}-{t - 1}.npz", observation=e["pixels"], action=action,
                            reward=np.zeros((t, 1), np.float32), discount=np.ones((t, 1), np.float32))
    ds.close()
    return dest


def ncrl_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.npz"))


def truncate(path: Path, keep_fraction: float) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * keep_fraction))


def flip_bytes(path: Path, offset: int, n: int = 64) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        data = bytearray(f.read(n))
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    """Flip one bit of a file in place (what a failing disk or a bad copy does)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def env_uri(monkeypatch: pytest.MonkeyPatch, root: Path) -> str:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri

