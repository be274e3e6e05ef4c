"""The paper code's public data (ncrl): one compressed ``.npz`` per episode.

Files are named ``{YYYYmmddTHHMMSS}-{uuid hex}-{idx}-{len}.npz`` and hold ``observation`` uint8
(len+1, C, H, W), ``action`` (len+1, A) (row t is the action that led to observation t; row 0 is a dummy),
``reward`` and ``discount`` (len+1, 1), under ``dmcontrol/<domain>/`` and ``metaworld/<task>/``
(anchors.md section 1). The embodiment comes from those folder names, so walker and cheetah (both 6-d) are
told apart. Rewards are ignored. Integrity: zip's own crc32 of each member, checked when a member is read
whole (an episode is decoded whole); every file opened is closed, also when it turns out to be damaged.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from harness.errors import HarnessError
from harness.offline.columns import _read_npy_header
from harness.offline.format import NCRL_NAME, DamagedData, EpisodeMeta
from harness.offline.store import _WholeEpisodeStore


def _npz_member_prefix(path: Path, key: str, rows: int) -> tuple[tuple[int, ...], np.dtype, np.ndarray | None]:
    """Shape, dtype and the first ``rows`` rows of ``key`` in an .npz, decompressing only that prefix."""
    with zipfile.ZipFile(path) as z:
        with z.open(f"{key}.npy") as f:
            shape, dtype = _read_npy_header(f)
            if rows == 0:
                return shape, dtype, None
            row = int(np.prod(shape[1:], dtype=np.int64))
            n = min(rows, shape[0])
            raw = f.read(n * row * dtype.itemsize)
    if len(raw) != n * row * dtype.itemsize:
        raise DamagedData(f"{path}: {key} is truncated")
    return shape, dtype, np.frombuffer(raw, dtype).reshape(n, *shape[1:])


class _NcrlStore(_WholeEpisodeStore):
    """The paper code's layout: one compressed .npz per episode. Decoded episodes are cached (LRU by bytes)."""
    format = "ncrl"

    def __init__(self, root: Path, obs_keys: Sequence[str], action_pad_dim: int | None, cache_bytes: int,
                 on_damage: Callable[[str], None] | None = None):
        super().__init__(cache_bytes, on_damage)
        from tasks.catalog import DMC_DOMAINS, METAWORLD_ACTION_DIM, METAWORLD_TASKS
        self.root = root
        if set(obs_keys) - {"pixels"}:
            raise HarnessError(f"ncrl datasets hold pixels only; asked for {list(obs_keys)}")
        files = sorted(p for p in root.rglob("*.npz") if NCRL_NAME.match(p.name))
        mw_names = {t[:-3] for t in METAWORLD_TASKS} | set(METAWORLD_TASKS)
        metas: list[EpisodeMeta] = []
        probe: dict[Path, tuple[int, tuple[int, ...]]] = {}   # folder -> (action dim, obs row shape)
        for p in files:
            parts = p.relative_to(root).parts[:-1]
            folder = parts[-1] if parts else ""
            embodiment, task = "unknown", folder or "unknown"
            if "dmcontrol" in parts and parts.index("dmcontrol") + 1 < len(parts):
                embodiment = parts[parts.index("dmcontrol") + 1]
            elif "metaworld" in parts or folder in mw_names or re.sub(r"-v\d$", "", folder) in mw_names:
                embodiment = "sawyer"
            elif folder in DMC_DOMAINS:
                embodiment = folder
            m = NCRL_NAME.match(p.name)
            assert m
            length = int(m.group(4)) + 1   # the name counts transitions; the file has a dummy first step
            if p.parent not in probe:
                probe[p.parent] = self._probe(p.parent, files)
            if probe[p.parent][0] < 0:
                self.damage(str(p), "no readable episode in its folder to learn the action dim from")
                continue
            action_dim = probe[p.parent][0]
            if embodiment in DMC_DOMAINS:
                action_dim_known = DMC_DOMAINS[embodiment][0]
            elif embodiment == "sawyer":
                action_dim_known = METAWORLD_ACTION_DIM
            else:
                action_dim_known = action_dim
            if action_dim != action_dim_known:
                raise HarnessError(f"inconsistent ncrl dataset: {p.parent} holds {action_dim}-d actions, but "
                                   f"{embodiment} has {action_dim_known}")
            metas.append(EpisodeMeta(uid=m.group(2).lower(), embodiment=embodiment, task=task, policy="unknown",
                                     noise=None, action_dim=action_dim, length=length, seed=None,
                                     source=str(p.relative_to(root)), offset=0))
        shapes = {v[1] for v in probe.values() if v[0] >= 0}
        if len(shapes) > 1:
            raise HarnessError(f"inconsistent ncrl dataset {root}: observation shapes differ between folders: "
                               f"{sorted(shapes)}")
        self.obs_shape = shapes.pop() if shapes else (3, 64, 64)
        self.obs_spec = {"pixels": (self.obs_shape, "uint8")}
        needed = max((e.action_dim for e in metas), default=1)
        if action_pad_dim is not None and action_pad_dim < needed:
            raise HarnessError(f"action_pad_dim {action_pad_dim} is smaller than the dataset's largest action dim {needed}")
        self.action_pad_dim = int(action_pad_dim or needed)
        self.episodes = metas
        self.uid_to_id = {e.uid: i for i, e in enumerate(metas)}
        self.opened()

    def _probe(self, folder: Path, files: list[Path]) -> tuple[int, tuple[int, ...]]:
        for p in (f for f in files if f.parent == folder):
            try:
                a_shape, _, _ = _npz_member_prefix(p, "action", 0)
                o_shape, o_dtype, _ = _npz_member_prefix(p, "observation", 0)
                if len(a_shape) != 2 or len(o_shape) != 4 or o_dtype != np.uint8:
                    raise DamagedData(f"action {a_shape}, observation {o_dtype} {o_shape}")
                return int(a_shape[1]), tuple(int(x) for x in o_shape[1:])
            except Exception:   # a damaged probe file: the next one in the folder may do; it is caught at read
                continue
        return -1, ()

    def _path(self, ep: int) -> Path:
        return self.root / self.episodes[ep].source

    def _decode(self, ep: int) -> dict[str, np.ndarray]:
        meta, path = self.episodes[ep], self._path(ep)
        try:
            # np.load(path) leaves its file open when the zip is unreadable: open (and close) it here.
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
                obs, act = f["observation"], f["action"]
                disc = f["discount"] if "discount" in f.files else np.ones((len(obs), 1), np.float32)
        except Exception as exc:
            raise DamagedData(f"unreadable ({type(exc).__name__}: {exc})") from None
        t = meta.length
        if obs.shape != (t, *self.obs_shape) or obs.dtype != np.uint8:
            raise DamagedData(f"observation is {obs.dtype} {obs.shape}, expected uint8 {(t, *self.obs_shape)}")
        if act.shape != (t, meta.action_dim) or len(disc) != t:
            raise DamagedData(f"action {act.shape} / discount {disc.shape} do not match {t} steps")
        action = np.zeros((t, self.action_pad_dim), np.float32)
        action[:-1, :meta.action_dim] = act[1:]          # ncrl row t+1 = the action taken at step t
        flags = np.zeros((3, t), bool)
        flags[0, 0] = flags[1, -1] = True
        flags[2, -1] = float(np.asarray(disc).reshape(-1)[-1]) == 0.0
        out = {"pixels": obs, "action": action, "is_first": flags[0], "is_last": flags[1], "is_terminal": flags[2]}
        return out

    def first(self, ep: int) -> np.ndarray:
        """The first observation without decompressing the whole episode."""
        try:
            shape, dtype, rows = _npz_member_prefix(self._path(ep), "observation", 1)
        except DamagedData:
            raise
        except Exception as exc:
            raise DamagedData(f"unreadable ({type(exc).__name__}: {exc})") from None
        if tuple(shape[1:]) != self.obs_shape or dtype != np.uint8 or rows is None:
            raise DamagedData(f"observation is {dtype} {shape}")
        return rows[0]

    def bytes_on_disk(self) -> int:
        return sum((self.root / e.source).stat().st_size for e in self.episodes)

    def storage(self) -> dict[str, Any]:
        return {"compressed_columns": ["npz (zip deflate) per episode"]}

    def checksums(self) -> str:
        return "zip crc32 per file"


