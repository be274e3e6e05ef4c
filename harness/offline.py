"""Offline, non-curated datasets (GSA Section 3.1/4 "Dataset"): storage, streaming reads, sampling.

Two on-disk layouts are read; one is written.

**gsa-offline (ours)**: episodes appended to shards, with a manifest::

    DIR/manifest.json                  format, schema (obs shapes, padded action dim), committed shards
    DIR/shards/shard-000000/shard.json this shard's schema, storage and episode table (metadata)
    DIR/shards/shard-000000/<key>.npy  one column per key, rows = stored steps, episodes back to back
    DIR/shards/shard-000000/pixels.zlib + pixels.zindex.npy   (compressed columns: zlib chunks + offsets)

Columns: ``pixels`` uint8 (3, H, W) and/or ``proprio`` float32 (D,); ``action`` float32 (A,) zero-padded
(the action taken at that step, zeros on the last step: the replay's convention); ``is_first``, ``is_last``,
``is_terminal`` bool. No reward is stored. Per episode, the shard's table records embodiment, task, source
policy, noise sigma, native action dim (the action mask is its first ``action_dim`` entries), seed and
where its rows lie. A shard is written in ``shard-N.tmp/`` and renamed when complete, then the manifest
is replaced atomically, so a crashed collection leaves a loadable dataset of its completed shards.

Reads are positioned reads (``os.pread``) of just the rows a sequence needs: nothing is memory-mapped or
loaded whole, so resident memory does not grow with the dataset (``benchmarks/bench_offline_data.py``).
Compressed pixel columns hold zlib chunks of ``chunk_steps`` rows; a sequence decompresses the chunks it
touches.

**ncrl (the paper code's public data)**: one ``.npz`` per episode named
``{YYYYmmddTHHMMSS}-{uuid hex}-{idx}-{len}.npz`` with ``observation`` uint8 (len+1, C, H, W), ``action``
(len+1, A) (row t is the action that led to observation t; row 0 is a dummy), ``reward`` and ``discount``
(len+1, 1), under ``dmcontrol/<domain>/`` and ``metaworld/<task>/`` (anchors.md section 1). The embodiment
comes from those folder names, so walker and cheetah (both 6-d) are told apart. Rewards are ignored.

Damaged data: an unreadable, truncated or inconsistent episode is skipped with a
:class:`DamagedEpisodeWarning` and counted (``dataset.damaged``); the rest loads. A dataset with no usable
episode, or whose parts disagree on the schema, is a :class:`~harness.errors.HarnessError`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import threading
import time
import uuid
import warnings
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from harness.errors import HarnessError

FORMAT = "gsa-offline"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SHARDS_DIR = "shards"
SHARD_FILE = "shard.json"
OBS_KEYS = ("pixels", "proprio")
FLAG_KEYS = ("is_first", "is_last", "is_terminal")
COMPRESSIONS = ("zlib", "none")
SAMPLE_EXTRAS = ("action_mask", "episode_id")
NCRL_NAME = re.compile(r"^(\d{8}T\d{6})-([0-9a-fA-F]+)-(\d+)-(\d+)\.npz$")
_NPY_HEADER_BYTES = 128      # fixed-size .npy header, rewritten with the final row count on commit
_MAX_WARNINGS = 20           # damaged episodes warned about one by one; later ones only counted


class DamagedEpisodeWarning(UserWarning):
    """An episode (or shard, or file) could not be read and was skipped."""


class DamagedData(Exception):
    """Internal: raised by a store when an episode's bytes are unreadable."""


@dataclass(frozen=True)
class EpisodeMeta:
    uid: str              # stable trajectory id (uuid hex); the retrieval index stores these
    embodiment: str       # DMC domain, "sawyer" for Meta-World; "unknown" when an ncrl path does not say
    task: str             # the env it was collected on (metadata only: the data is reward-free)
    policy: str           # source policy: expert, random, ou, ... ("unknown" for ncrl files)
    noise: float | None   # action-noise sigma of the source policy (metadata only)
    action_dim: int       # native action dim; the action mask is the first action_dim padded entries
    length: int           # stored steps, including the reset observation
    seed: int | None      # env seed of the collecting run
    source: str           # shard name, or the ncrl file path relative to the dataset root
    offset: int           # first row in the shard (0 for ncrl files)


# ============================================================================ columns on disk

def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version 1.0 .npy header padded to exactly ``_NPY_HEADER_BYTES`` (np.load reads it as usual)."""
    text = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                 "shape": tuple(int(s) for s in shape)})
    body = _NPY_HEADER_BYTES - 10
    if len(text) + 1 > body:
        raise ValueError(f"npy header too long for shape {shape}")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", body) + (text.ljust(body - 1) + "\n").encode("latin1")


def _read_npy_header(f: Any) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if fortran or dtype.hasobject:
        raise ValueError("fortran-ordered or object arrays are not accepted")
    return tuple(shape), dtype


class _ColumnWriter:
    """Appends rows of one key to a column file; ``finish`` makes it complete."""

    def __init__(self, directory: Path, key: str, row_shape: tuple[int, ...], dtype: np.dtype,
                 compression: str, chunk_steps: int):
        self.key, self.row_shape, self.dtype = key, tuple(row_shape), np.dtype(dtype)
        self.compressed = compression == "zlib"
        self.rows = 0
        self.chunk_steps = chunk_steps
        if self.compressed:
            self.path = directory / f"{key}.zlib"
            self.f = open(self.path, "wb")
            self.offsets = [0]
            self.pending: list[np.ndarray] = []
            self.pending_rows = 0
        else:
            self.path = directory / f"{key}.npy"
            self.f = open(self.path, "wb")
            self.f.write(_npy_header(self.dtype, (0, *self.row_shape)))

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        assert rows.shape[1:] == self.row_shape, f"{self.key}: rows {rows.shape[1:]} vs column {self.row_shape}"
        self.rows += len(rows)
        if not self.compressed:
            self.f.write(rows.tobytes())
            return
        self.pending.append(rows)
        self.pending_rows += len(rows)
        while self.pending_rows >= self.chunk_steps:
            self._flush_chunk(self.chunk_steps)

    def _flush_chunk(self, n: int) -> None:
        block = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        chunk, rest = block[:n], block[n:]
        blob = zlib.compress(chunk.tobytes(), 1)   # level 1: 2-7x on rendered frames, fast to write
        self.f.write(blob)
        self.offsets.append(self.offsets[-1] + len(blob))
        self.pending = [rest] if len(rest) else []
        self.pending_rows = len(rest)

    def finish(self) -> dict[str, Any]:
        if self.compressed:
            if self.pending_rows:
                self._flush_chunk(self.pending_rows)
            np.save(self.path.with_name(f"{self.key}.zindex.npy"), np.asarray(self.offsets, np.int64))
        else:
            self.f.seek(0)
            self.f.write(_npy_header(self.dtype, (self.rows, *self.row_shape)))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        return {"storage": "zlib" if self.compressed else "npy", "rows": self.rows,
                "shape": list(self.row_shape), "dtype": self.dtype.str,
                **({"chunk_steps": self.chunk_steps} if self.compressed else {})}

    def abort(self) -> None:
        if not self.f.closed:
            self.f.close()


class _FileCache:
    """At most ``max_open`` read-only file descriptors, least recently used closed first.

    Reads happen under the lock, so a descriptor is never closed while another thread reads it."""

    def __init__(self, max_open: int = 128):
        self.max_open = max_open
        self._fds: OrderedDict[str, int] = OrderedDict()
        self.lock = threading.Lock()

    def pread(self, path: Path, nbytes: int, offset: int) -> bytes:
        key = str(path)
        with self.lock:
            fd = self._fds.get(key)
            if fd is None:
                fd = os.open(key, os.O_RDONLY)
                self._fds[key] = fd
                while len(self._fds) > self.max_open:
                    os.close(self._fds.popitem(last=False)[1])
            else:
                self._fds.move_to_end(key)
            data = os.pread(fd, nbytes, offset)
        if len(data) != nbytes:
            raise DamagedData(f"{path}: short read ({len(data)} of {nbytes} bytes at offset {offset})")
        return data

    def close(self) -> None:
        with self.lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


class _Column:
    """Reads rows [a, b) of one key of one shard with positioned reads."""

    def __init__(self, directory: Path, key: str, info: dict[str, Any], files: _FileCache):
        self.key, self.files = key, files
        self.row_shape = tuple(int(x) for x in info["shape"])
        self.dtype = np.dtype(info["dtype"])
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.rows = int(info["rows"])
        self.compressed = info["storage"] == "zlib"
        if self.compressed:
            self.path = directory / f"{key}.zlib"
            self.chunk = int(info["chunk_steps"])
            index_path = directory / f"{key}.zindex.npy"
            try:
                self.offsets = np.load(index_path, allow_pickle=False)
            except Exception as exc:
                raise DamagedData(f"{index_path} unreadable ({type(exc).__name__}: {exc})") from None
            size = self.path.stat().st_size if self.path.exists() else 0
            complete = int(np.searchsorted(self.offsets, size, side="right")) - 1  # whole chunks on disk
            self.readable_rows = min(self.rows, max(complete, 0) * self.chunk)
        else:
            self.path = directory / f"{key}.npy"
            if not self.path.exists():
                raise DamagedData(f"{self.path} is missing")
            with open(self.path, "rb") as f:
                try:
                    shape, dtype = _read_npy_header(f)
                except Exception as exc:
                    raise DamagedData(f"{self.path}: bad .npy header ({exc})") from None
                self.data_offset = f.tell()
            if tuple(shape[1:]) != self.row_shape or dtype != self.dtype:
                raise DamagedData(f"{self.path} holds {dtype} {shape}, shard.json says {self.dtype} {self.row_shape}")
            size = self.path.stat().st_size
            self.readable_rows = min(self.rows, shape[0], (size - self.data_offset) // max(self.row_bytes, 1))

    def read(self, a: int, b: int) -> np.ndarray:
        if b > self.readable_rows:
            raise DamagedData(f"{self.path}: rows {a}:{b} lie beyond the {self.readable_rows} readable rows")
        if not self.compressed:
            raw = self.files.pread(self.path, (b - a) * self.row_bytes, self.data_offset + a * self.row_bytes)
            return np.frombuffer(raw, self.dtype).reshape(b - a, *self.row_shape)
        c0, c1 = a // self.chunk, (b - 1) // self.chunk
        lo, hi = int(self.offsets[c0]), int(self.offsets[c1 + 1])
        raw = self.files.pread(self.path, hi - lo, lo)
        parts = []
        for c in range(c0, c1 + 1):
            s, e = int(self.offsets[c]) - lo, int(self.offsets[c + 1]) - lo
            try:
                parts.append(zlib.decompress(raw[s:e]))   # releases the GIL: prefetch threads overlap
            except zlib.error as exc:
                raise DamagedData(f"{self.path}: chunk {c} is corrupt ({exc})") from None
        buf = b"".join(parts) if len(parts) > 1 else parts[0]
        skip = (a - c0 * self.chunk) * self.row_bytes
        out = np.frombuffer(buf, self.dtype, count=(b - a) * int(np.prod(self.row_shape, dtype=np.int64)),
                            offset=skip)
        return out.reshape(b - a, *self.row_shape)

    def read_all(self) -> np.ndarray:
        return self.read(0, self.readable_rows) if self.readable_rows else np.zeros((0, *self.row_shape), self.dtype)


# ============================================================================ writing

def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _schema(obs_spec: dict[str, tuple[tuple[int, ...], Any]], action_pad_dim: int) -> dict[str, Any]:
    cols = {k: {"shape": [int(x) for x in obs_spec[k][0]], "dtype": np.dtype(obs_spec[k][1]).str}
            for k in OBS_KEYS if k in obs_spec}
    cols["action"] = {"shape": [int(action_pad_dim)], "dtype": np.dtype(np.float32).str}
    for k in FLAG_KEYS:
        cols[k] = {"shape": [], "dtype": np.dtype(bool).str}
    return cols


class DatasetWriter:
    """Writes episodes into shards of about ``shard_steps`` stored steps, committing each atomically.

    ``obs_spec``: ``{"pixels": ((3, 64, 64), uint8), "proprio": ((D,), float32)}`` (either or both).
    Use as a context manager: leaving it (also on an exception or Ctrl-C) commits the open shard, which
    holds only complete episodes."""

    def __init__(self, root: str | Path, obs_spec: dict[str, tuple[tuple[int, ...], Any]], action_pad_dim: int,
                 *, shard_steps: int = 20_000, compression: str = "zlib", chunk_steps: int = 16,
                 append: bool = False, description: str = ""):
        self.root = Path(root)
        unknown = set(obs_spec) - set(OBS_KEYS)
        if unknown or not obs_spec:
            raise HarnessError(f"observation keys {sorted(obs_spec)}: expected pixels and/or proprio")
        if compression not in COMPRESSIONS:
            raise HarnessError(f"unknown compression {compression!r}; valid: {', '.join(COMPRESSIONS)}")
        if shard_steps < 1 or chunk_steps < 1 or action_pad_dim < 1:
            raise HarnessError(f"shard_steps, chunk_steps and action_pad_dim must be >= 1 "
                               f"(got {shard_steps}, {chunk_steps}, {action_pad_dim})")
        self.schema = _schema(obs_spec, action_pad_dim)
        self.obs_keys = tuple(k for k in OBS_KEYS if k in obs_spec)
        self.action_pad_dim = int(action_pad_dim)
        self.shard_steps, self.chunk_steps = int(shard_steps), int(chunk_steps)
        self.compression = compression
        manifest_path = self.root / MANIFEST_FILE
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        if manifest_path.exists():
            manifest = _read_manifest(self.root)
            if not append:
                raise HarnessError(f"{self.root} already holds a dataset ({manifest.get('episodes', '?')} episodes); "
                                   "pass --append to add episodes to it, or choose a new directory")
            if manifest["schema"] != self.schema:
                raise HarnessError(f"cannot append to {self.root}: its schema differs ({_schema_diff(manifest['schema'], self.schema)}); "
                                   "use the same --obs, --action-pad-dim and --proprio-pad-dim as the first collection")
            self.manifest = manifest
        else:
            if self.root.exists() and any(self.root.iterdir()):
                raise HarnessError(f"{self.root} exists, is not empty and has no {MANIFEST_FILE}: "
                                   "choose a new directory for the dataset")
            self.manifest = {"format": FORMAT, "version": FORMAT_VERSION, "created_at": now,
                             "description": description, "schema": self.schema,
                             "action_pad_dim": self.action_pad_dim, "shards": [], "episodes": 0, "stored_steps": 0}
        shards = self.root / SHARDS_DIR
        shards.mkdir(parents=True, exist_ok=True)
        for stale in sorted(shards.glob("*.tmp")):
            warnings.warn(f"removing {stale}: an unfinished shard of an interrupted collection", DamagedEpisodeWarning,
                          stacklevel=2)
            shutil.rmtree(stale)
        existing = [int(p.name.split("-")[1]) for p in shards.glob("shard-*") if p.is_dir()]
        self._next = max(existing, default=-1) + 1
        if not manifest_path.exists():
            _atomic_write_json(manifest_path, self.manifest)
        self._cols: dict[str, _ColumnWriter] | None = None
        self._dir: Path | None = None
        self._episodes: list[dict[str, Any]] = []
        self._rows = 0
        self.episodes_written = 0
        self.steps_written = 0

    # ---------------------------------------------------------------- episodes
    def add_episode(self, episode: dict[str, np.ndarray], *, embodiment: str, task: str, policy: str,
                    noise: float | None, action_dim: int, seed: int | None = None) -> EpisodeMeta:
        """Append one complete episode: obs keys, ``action`` (T, A) padded, ``is_first``/``is_last``/``is_terminal``."""
        missing = [k for k in self.schema if k not in episode]
        if missing:
            raise HarnessError(f"episode lacks {missing}; the dataset stores {list(self.schema)}")
        t = len(episode["is_first"])
        for k, col in self.schema.items():
            v = np.asarray(episode[k])
            if v.shape != (t, *col["shape"]):
                raise HarnessError(f"episode[{k!r}] has shape {v.shape}, expected {(t, *col['shape'])}")
        if t < 1 or not episode["is_first"][0] or not episode["is_last"][-1] or episode["is_first"][1:].any() \
                or episode["is_last"][:-1].any():
            raise HarnessError("an episode must start with is_first and end with is_last, with neither inside")
        if not 1 <= action_dim <= self.action_pad_dim:
            raise HarnessError(f"action_dim {action_dim} must be in 1..{self.action_pad_dim} (the padded action dim)")
        if np.any(np.asarray(episode["action"])[:, action_dim:]):
            raise HarnessError(f"episode actions are non-zero beyond the native action dim {action_dim}")
        if self._cols is None:
            self._open_shard()
        assert self._cols is not None and self._dir is not None
        for k, w in self._cols.items():
            w.append(np.asarray(episode[k]))
        meta = EpisodeMeta(uid=uuid.uuid4().hex, embodiment=embodiment, task=task, policy=policy,
                           noise=None if noise is None else float(noise), action_dim=int(action_dim), length=t,
                           seed=None if seed is None else int(seed), source=self._dir.name[:-4], offset=self._rows)
        self._episodes.append(asdict(meta))
        self._rows += t
        if self._rows >= self.shard_steps:
            self.commit()
        return meta

    def _open_shard(self) -> None:
        self._dir = self.root / SHARDS_DIR / f"shard-{self._next:06d}.tmp"
        self._dir.mkdir(parents=True)
        self._cols = {}
        for k, col in self.schema.items():
            compression = self.compression if k == "pixels" else "none"   # only pixels are worth compressing
            self._cols[k] = _ColumnWriter(self._dir, k, tuple(col["shape"]), np.dtype(col["dtype"]), compression,
                                          self.chunk_steps)
        self._episodes, self._rows = [], 0

    def commit(self) -> None:
        """Close the open shard: finish its files, rename it into place, then update the manifest."""
        if self._cols is None or self._dir is None:
            return
        if not self._episodes:
            for w in self._cols.values():
                w.abort()
            shutil.rmtree(self._dir)
            self._cols = self._dir = None
            return
        columns = {k: w.finish() for k, w in self._cols.items()}
        name = self._dir.name[:-4]
        _atomic_write_json(self._dir / SHARD_FILE, {"format": FORMAT, "version": FORMAT_VERSION, "name": name,
                                                    "schema": self.schema, "columns": columns,
                                                    "stored_steps": self._rows, "episodes": self._episodes})
        final = self._dir.with_name(name)
        os.replace(self._dir, final)
        nbytes = sum(p.stat().st_size for p in final.iterdir())
        m = self.manifest
        m["shards"].append({"name": name, "episodes": len(self._episodes), "stored_steps": self._rows, "bytes": nbytes})
        m["episodes"] = sum(s["episodes"] for s in m["shards"])
        m["stored_steps"] = sum(s["stored_steps"] for s in m["shards"])
        m["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        _atomic_write_json(self.root / MANIFEST_FILE, m)
        self.episodes_written += len(self._episodes)
        self.steps_written += self._rows
        self._next += 1
        self._cols = self._dir = None
        self._episodes, self._rows = [], 0

    def close(self) -> None:
        self.commit()

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _schema_diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    diffs = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            diffs.append(f"{k}: {a.get(k)} there, {b.get(k)} here")
    return "; ".join(diffs)


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST_FILE
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"{path} is unreadable ({type(exc).__name__}: {exc}); the dataset cannot be opened") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise HarnessError(f"{path} is not a {FORMAT} manifest")
    if m.get("version") != FORMAT_VERSION:
        raise HarnessError(f"{path} has format version {m.get('version')}; this harness reads version {FORMAT_VERSION}")
    return m


# ============================================================================ stores (reading)

class _Store:
    """Episodes of one dataset on disk; ``read`` returns stored rows in the replay's convention."""
    format: str
    root: Path
    obs_spec: dict[str, tuple[tuple[int, ...], str]]
    action_pad_dim: int
    episodes: list[EpisodeMeta]

    def __init__(self) -> None:
        self.damaged: list[tuple[str, str]] = []     # (where, why)
        self.bad: set[int] = set()                   # episode ids found damaged after opening
        self.generation = 0                          # bumps when an episode is found damaged
        self._lock = threading.Lock()
        self.uid_to_id: dict[str, int] = {}

    def damage(self, where: str, why: str, episode: int | None = None) -> None:
        with self._lock:
            if episode is not None:
                if episode in self.bad:
                    return
                self.bad.add(episode)
                self.generation += 1
            self.damaged.append((where, why))
            n = len(self.damaged)
        if n <= _MAX_WARNINGS:
            warnings.warn(f"skipping damaged data: {where}: {why}", DamagedEpisodeWarning, stacklevel=3)
        elif n == _MAX_WARNINGS + 1:
            warnings.warn(f"more damaged data in {self.root}; further cases are only counted (dataset.damaged)",
                          DamagedEpisodeWarning, stacklevel=3)

    def read(self, ep: int, a: int, b: int, keys: Sequence[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def bytes_on_disk(self) -> int:
        raise NotImplementedError

    def storage(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


class _ShardStore(_Store):
    format = FORMAT

    def __init__(self, root: Path, obs_keys: Sequence[str]):
        super().__init__()
        self.root = root
        m = _read_manifest(root)
        schema = m["schema"]
        self.schema = schema
        self.action_pad_dim = int(m["action_pad_dim"])
        self.obs_spec = {k: (tuple(schema[k]["shape"]), np.dtype(schema[k]["dtype"]).name)
                         for k in OBS_KEYS if k in schema}
        self.keys = (*obs_keys, "action", *FLAG_KEYS)
        self.files = _FileCache()
        self.episodes = []
        self._where: list[tuple[dict[str, _Column], int]] = []   # per episode: (columns, row offset)
        self._compression: set[str] = set()
        listed = [s["name"] for s in m.get("shards", [])]
        on_disk = sorted(p.name for p in (root / SHARDS_DIR).glob("shard-*")
                         if p.is_dir() and not p.name.endswith(".tmp")) if (root / SHARDS_DIR).exists() else []
        for name in on_disk:
            if name not in listed and (root / SHARDS_DIR / name / SHARD_FILE).exists():
                warnings.warn(f"{root}: shard {name} is complete but not in the manifest (a collection stopped "
                              "between the two writes); reading it", DamagedEpisodeWarning, stacklevel=3)
                listed.append(name)
        expected = {s["name"]: s.get("episodes", 0) for s in m.get("shards", [])}
        for name in listed:
            self._open_shard(root / SHARDS_DIR / name, expected.get(name, 0))

    def _open_shard(self, d: Path, expected_episodes: int) -> None:
        try:
            info = json.loads((d / SHARD_FILE).read_text())
            if info.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} shard")
        except (OSError, ValueError) as exc:
            self.damage(str(d), f"{SHARD_FILE} unreadable ({type(exc).__name__}: {exc}); "
                                f"{expected_episodes} episodes skipped")
            return
        if info["schema"] != self.schema:
            raise HarnessError(f"inconsistent dataset {self.root}: shard {d.name} has another schema than the "
                               f"manifest ({_schema_diff(self.schema, info['schema'])})")
        cols: dict[str, _Column] = {}
        for k in self.keys:
            try:
                cols[k] = _Column(d, k, info["columns"][k], self.files)
            except (DamagedData, OSError, KeyError) as exc:
                self.damage(str(d), f"column {k} unusable ({exc}); {len(info['episodes'])} episodes skipped")
                return
            if cols[k].compressed:
                self._compression.add(f"{k}:zlib")
        try:   # flags are tiny: check every episode's boundaries now
            first = cols["is_first"].read_all()
            last = cols["is_last"].read_all()
        except DamagedData as exc:
            self.damage(str(d), f"flags unreadable ({exc}); {len(info['episodes'])} episodes skipped")
            return
        readable = min(c.readable_rows for c in cols.values())
        for e in info["episodes"]:
            try:
                meta = EpisodeMeta(**e)
            except TypeError as exc:
                self.damage(f"{d.name} episode {e.get('uid', '?') if isinstance(e, dict) else '?'}",
                            f"malformed entry in {SHARD_FILE} ({exc})")
                continue
            where = f"{d.name} episode {meta.uid} (rows {meta.offset}:{meta.offset + meta.length})"
            end = meta.offset + meta.length
            if end > readable:
                self.damage(where, f"truncated: the shard's files hold only {readable} complete rows")
                continue
            if not first[meta.offset] or not last[end - 1] or first[meta.offset + 1:end].any() \
                    or last[meta.offset:end - 1].any():
                self.damage(where, "is_first/is_last flags do not match the episode table")
                continue
            self.uid_to_id[meta.uid] = len(self.episodes)
            self.episodes.append(meta)
            self._where.append((cols, meta.offset))

    def read(self, ep: int, a: int, b: int, keys: Sequence[str]) -> dict[str, np.ndarray]:
        cols, off = self._where[ep]
        return {k: cols[k].read(off + a, off + b) for k in keys}

    def bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def storage(self) -> dict[str, Any]:
        return {"compressed_columns": sorted(self._compression) or ["none"]}

    def close(self) -> None:
        self.files.close()


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


class _NcrlStore(_Store):
    """The paper code's layout: one compressed .npz per episode. Decoded episodes are cached (LRU by bytes)."""
    format = "ncrl"

    def __init__(self, root: Path, obs_keys: Sequence[str], action_pad_dim: int | None, cache_bytes: int):
        super().__init__()
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
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._cached = 0

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

    def _load(self, ep: int) -> dict[str, np.ndarray]:
        with self._lock:
            hit = self._cache.get(ep)
            if hit is not None:
                self._cache.move_to_end(ep)
                return hit
        meta, path = self.episodes[ep], self._path(ep)
        try:
            with np.load(path, allow_pickle=False) as f:
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
        size = sum(v.nbytes for v in out.values())
        with self._lock:
            self._cache[ep] = out
            self._cached += size
            while self._cached > self.cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached -= sum(v.nbytes for v in old.values())
        return out

    def read(self, ep: int, a: int, b: int, keys: Sequence[str]) -> dict[str, np.ndarray]:
        full = self._load(ep)
        return {k: full[k][a:b] for k in keys}

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


# ============================================================================ the dataset

def open_dataset(path: str | Path, obs_keys: Sequence[str] | None = None, *, action_pad_dim: int | None = None,
                 cache_bytes: int = 256 << 20) -> "OfflineDataset":
    """Open an offline dataset directory of either layout (see the module docstring).

    ``obs_keys``: which observations to read (default: pixels if stored, else proprio).
    ``action_pad_dim``: ncrl layout only (its files hold native actions): pad to this dim (default: the
    largest action dim in the data; ncrl's model uses 21)."""
    root = Path(path)
    if not root.exists():
        raise HarnessError(f"dataset directory {root} does not exist")
    if not root.is_dir():
        raise HarnessError(f"{root} is not a directory; a dataset is a directory written by `cli.py collect`")
    store: _Store
    if (root / MANIFEST_FILE).exists():
        m = _read_manifest(root)
        stored = [k for k in OBS_KEYS if k in m["schema"]]
        keys = _choose_obs(obs_keys, stored, root)
        if action_pad_dim is not None and action_pad_dim != m["action_pad_dim"]:
            raise HarnessError(f"{root} stores actions padded to {m['action_pad_dim']}; "
                               f"action_pad_dim={action_pad_dim} applies to ncrl datasets only")
        store = _ShardStore(root, keys)
    elif any(NCRL_NAME.match(p.name) for p in root.rglob("*.npz")):
        keys = _choose_obs(obs_keys, ["pixels"], root)
        store = _NcrlStore(root, keys, action_pad_dim, cache_bytes)
    else:
        raise HarnessError(f"{root} is not an offline dataset: it has no {MANIFEST_FILE} (written by `cli.py collect`) "
                           "and no episode files of the ncrl layout ({time}-{uuid}-{idx}-{len}.npz)")
    if not store.episodes:
        dmg = f"; {len(store.damaged)} damaged parts were skipped" if store.damaged else ""
        raise HarnessError(f"dataset {root} holds no usable episode{dmg}")
    return OfflineDataset(store, keys)


def _choose_obs(obs_keys: Sequence[str] | None, stored: list[str], root: Path) -> tuple[str, ...]:
    if obs_keys is None:
        return ("pixels",) if "pixels" in stored else tuple(stored[:1])
    keys = tuple(obs_keys)
    bad = [k for k in keys if k not in stored]
    if bad or not keys:
        raise HarnessError(f"dataset {root} stores {', '.join(stored)}; cannot read {', '.join(bad) or '(nothing)'}")
    return tuple(k for k in OBS_KEYS if k in keys)


class OfflineDataset:
    """A view on the episodes of a dataset; a :class:`harness.replay.SequenceSource` (``sample``, ``len``).

    ``sample`` draws windows of ``length`` consecutive steps uniformly over all windows that lie inside one
    episode (Table 5: uniform sampling). Keys and dtypes are the online replay's, without ``reward``: the
    observation keys, ``action`` and ``prev_action`` float32 (B, T, A), ``is_first`` / ``is_last`` /
    ``is_terminal`` bool (B, T). ``subset`` and ``filter`` give views sharing the same files."""

    def __init__(self, store: _Store, obs_keys: tuple[str, ...], ids: np.ndarray | None = None):
        self._store = store
        self.obs_keys = obs_keys
        self._ids = np.arange(len(store.episodes), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        self._pools: dict[tuple[int, str | None], tuple[int, np.ndarray, np.ndarray, np.ndarray]] = {}

    # ---------------------------------------------------------------- facts
    @property
    def root(self) -> Path:
        return self._store.root

    @property
    def format(self) -> str:
        return self._store.format

    @property
    def action_pad_dim(self) -> int:
        return self._store.action_pad_dim

    @property
    def obs_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """The observations this view reads (shape without batch, dtype name): a world model's obs_spec."""
        return {k: self._store.obs_spec[k] for k in self.obs_keys}

    @property
    def damaged(self) -> list[tuple[str, str]]:
        """(where, why) of every damaged part found so far (at opening and while reading)."""
        return list(self._store.damaged)

    def _live(self) -> np.ndarray:
        bad = self._store.bad
        return self._ids if not bad else np.array([i for i in self._ids if i not in bad], np.int64)

    @property
    def episodes(self) -> list[EpisodeMeta]:
        return [self._store.episodes[i] for i in self._live()]

    @property
    def episode_ids(self) -> np.ndarray:
        """Store-wide integer ids of this view's episodes (stable while the dataset is open)."""
        return self._live()

    def meta(self, ep: int) -> EpisodeMeta:
        """The metadata of a store-wide episode id."""
        return self._store.episodes[int(ep)]

    def __len__(self) -> int:
        """Stored steps in this view."""
        return int(sum(self._store.episodes[i].length for i in self._live()))

    @property
    def num_episodes(self) -> int:
        return len(self._live())

    def embodiments(self) -> list[str]:
        return sorted({e.embodiment for e in self.episodes})

    def fingerprint(self) -> str:
        """Identifies this set of episodes (uids), e.g. to check an index was built on it."""
        import hashlib
        h = hashlib.sha256()
        for i in self._ids:
            h.update(self._store.episodes[i].uid.encode())
        return h.hexdigest()[:16]

    # ---------------------------------------------------------------- views
    def subset(self, episodes: Iterable[str | int]) -> "OfflineDataset":
        """A view on the given episodes: uids (str) or store-wide ids (int). Unknown uids are an error."""
        ids = []
        for e in episodes:
            if isinstance(e, (int, np.integer)):
                if not 0 <= int(e) < len(self._store.episodes):
                    raise HarnessError(f"episode id {e} out of range 0..{len(self._store.episodes) - 1}")
                ids.append(int(e))
            else:
                if e not in self._store.uid_to_id:
                    raise HarnessError(f"trajectory {e!r} is not in dataset {self.root} (was the index built on "
                                       "another dataset?)")
                ids.append(self._store.uid_to_id[e])
        return OfflineDataset(self._store, self.obs_keys, np.asarray(ids, np.int64))

    def filter(self, embodiment: str | Sequence[str] | None = None, action_dim: int | None = None) -> "OfflineDataset":
        wanted = {embodiment} if isinstance(embodiment, str) else set(embodiment or ())
        eps = self._store.episodes
        ids = [i for i in self._ids if (not wanted or eps[i].embodiment in wanted)
               and (action_dim is None or eps[i].action_dim == action_dim)]
        if not ids:
            raise HarnessError(f"no trajectory of embodiment {sorted(wanted) or 'any'}"
                               f"{'' if action_dim is None else f' with action dim {action_dim}'} in {self.root}; "
                               f"embodiments there: {', '.join(self.embodiments())}")
        return OfflineDataset(self._store, self.obs_keys, np.asarray(ids, np.int64))

    # ---------------------------------------------------------------- reading
    def _read(self, ep: int, a: int, b: int, keys: Sequence[str]) -> dict[str, np.ndarray] | None:
        try:
            return self._store.read(int(ep), a, b, keys)
        except (DamagedData, OSError) as exc:
            meta = self._store.episodes[int(ep)]
            self._store.damage(f"{meta.source} episode {meta.uid}", str(exc), episode=int(ep))
            return None

    def episode(self, ep: int) -> dict[str, np.ndarray]:
        """One whole episode (store-wide id) with ``prev_action`` and ``action_mask`` (T, A)."""
        meta = self._store.episodes[ep]
        rows = self._read(ep, 0, meta.length, (*self.obs_keys, "action", *FLAG_KEYS))
        if rows is None:
            raise HarnessError(f"episode {meta.uid} ({meta.source}) is damaged: {self._store.damaged[-1][1]}")
        out = {k: np.array(v) for k, v in rows.items()}
        out["prev_action"] = np.concatenate([np.zeros_like(out["action"][:1]), out["action"][:-1]])
        out["action_mask"] = np.broadcast_to(self.action_mask(meta.action_dim), out["action"].shape).copy()
        return out

    def action_mask(self, action_dim: int) -> np.ndarray:
        m = np.zeros(self.action_pad_dim, np.float32)
        m[:action_dim] = 1.0
        return m

    def first_observations(self, ids: Sequence[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The first observation of each episode id, as arrays (N, ...); also the ids that were readable."""
        out: dict[str, list[np.ndarray]] = {k: [] for k in self.obs_keys}
        ok = []
        first = getattr(self._store, "first", None)
        for ep in ids:
            if first is not None:
                try:
                    row = {"pixels": first(int(ep))}
                except (DamagedData, OSError) as exc:
                    meta = self._store.episodes[int(ep)]
                    self._store.damage(f"{meta.source} episode {meta.uid}", str(exc), episode=int(ep))
                    continue
            else:
                r = self._read(int(ep), 0, 1, self.obs_keys)
                if r is None:
                    continue
                row = {k: v[0] for k, v in r.items()}
            for k in self.obs_keys:
                out[k].append(np.array(row[k]))
            ok.append(int(ep))
        arrays = {k: (np.stack(v) if v else np.zeros((0, *self.obs_spec[k][0]), self.obs_spec[k][1]))
                  for k, v in out.items()}
        return arrays, np.asarray(ok, np.int64)

    def _pool(self, length: int, embodiment: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Episodes with at least ``length`` steps, their window counts and cumulative counts."""
        key = (length, embodiment)
        cached = self._pools.get(key)
        if cached is not None and cached[0] == self._store.generation:
            return cached[1], cached[2], cached[3]
        eps = self._store.episodes
        ids = np.array([i for i in self._live() if eps[i].length >= length
                        and (embodiment is None or eps[i].embodiment == embodiment)], np.int64)
        if not len(ids):
            longest = max((eps[i].length for i in self._live()), default=0)
            raise HarnessError(f"no usable episode{'' if embodiment is None else f' of {embodiment}'} in {self.root} "
                               f"has {length} steps or more (longest: {longest}); use a shorter sequence length")
        windows = np.array([eps[i].length - length + 1 for i in ids], np.int64)
        cum = np.cumsum(windows)
        self._pools[key] = (self._store.generation, ids, windows, cum)
        return ids, windows, cum

    def sample(self, batch: int, length: int, rng: np.random.Generator, *, balance: str = "uniform",
               extras: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """``batch`` windows of ``length`` steps. ``balance="embodiment"``: each row first draws an embodiment
        uniformly. ``extras``: ``action_mask`` (B, T, A) and/or ``episode_id`` (B,)."""
        if balance not in ("uniform", "embodiment"):
            raise HarnessError(f"unknown balance {balance!r}; valid: uniform, embodiment")
        bad = set(extras) - set(SAMPLE_EXTRAS)
        if bad:
            raise HarnessError(f"unknown extras {sorted(bad)}; valid: {', '.join(SAMPLE_EXTRAS)}")
        spec = self.obs_spec
        out: dict[str, np.ndarray] = {k: np.empty((batch, length, *spec[k][0]), spec[k][1]) for k in self.obs_keys}
        a = self.action_pad_dim
        out["action"] = np.empty((batch, length, a), np.float32)
        out["prev_action"] = np.empty((batch, length, a), np.float32)
        for k in FLAG_KEYS:
            out[k] = np.empty((batch, length), bool)
        ep_ids = np.empty(batch, np.int64)
        keys = (*self.obs_keys, "action", *FLAG_KEYS)
        embodiments = self.embodiments() if balance == "embodiment" else [None]
        row = 0
        for _attempt in range(batch + 1000):
            if row == batch:
                break
            emb = embodiments[int(rng.integers(len(embodiments)))] if balance == "embodiment" else None
            ids, windows, cum = self._pool(length, emb)
            r = int(rng.integers(0, cum[-1]))
            j = int(np.searchsorted(cum, r, side="right"))
            ep, start = int(ids[j]), r - int(cum[j] - windows[j])
            lo = max(start - 1, 0)
            got = self._read(ep, lo, start + length, keys)
            if got is None:
                continue   # damaged: skipped (warned and counted), draw again
            skip = start - lo
            for k in keys:
                out[k][row] = got[k][skip:]
            out["prev_action"][row, 1:] = got["action"][skip:skip + length - 1]
            out["prev_action"][row, 0] = got["action"][0] if skip else 0.0
            ep_ids[row] = ep
            row += 1
        if row < batch:
            raise HarnessError(f"could not read {batch} sequences from {self.root}: too many damaged episodes "
                               f"({len(self._store.damaged)} so far)")
        if "action_mask" in extras:
            masks = np.stack([self.action_mask(self._store.episodes[e].action_dim) for e in ep_ids])
            out["action_mask"] = np.broadcast_to(masks[:, None], (batch, length, a)).copy()
        if "episode_id" in extras:
            out["episode_id"] = ep_ids
        return out

    def verify(self, progress: Callable[[int], None] | None = None) -> int:
        """Read every episode of the view in full; damaged ones are warned about, counted and skipped later.
        Returns the number found damaged by this pass."""
        before = len(self._store.bad)
        for ep in self._live():
            self._read(int(ep), 0, self._store.episodes[int(ep)].length, (*self.obs_keys, "action", *FLAG_KEYS))
            if progress:
                progress(1)
        return len(self._store.bad) - before

    # ---------------------------------------------------------------- description
    def summary(self, disk: bool = True) -> dict[str, Any]:
        eps = self.episodes
        steps = int(sum(e.length for e in eps))
        by_emb: dict[str, dict[str, Any]] = {}
        policies: dict[str, int] = {}
        for e in eps:
            d = by_emb.setdefault(e.embodiment, {"episodes": 0, "stored_steps": 0, "action_dim": e.action_dim,
                                                 "tasks": {}})
            d["episodes"] += 1
            d["stored_steps"] += e.length
            d["tasks"][e.task] = d["tasks"].get(e.task, 0) + 1
            label = e.policy if e.noise is None else f"{e.policy} sigma={e.noise:g}"
            policies[label] = policies.get(label, 0) + 1
        out: dict[str, Any] = {
            "path": str(self.root), "format": self.format, "episodes": len(eps), "stored_steps": steps,
            "damaged": len(self._store.damaged), "damaged_examples": [f"{w}: {y}" for w, y in self._store.damaged[:5]],
            "obs": {k: {"shape": list(s), "dtype": d} for k, (s, d) in self._store.obs_spec.items()},
            "action_pad_dim": self.action_pad_dim,
            "episode_length": {"min": min(e.length for e in eps), "max": max(e.length for e in eps),
                               "mean": steps / len(eps)} if eps else {},
            "embodiments": dict(sorted(by_emb.items())), "policies": dict(sorted(policies.items())),
            **self._store.storage()}
        if disk:
            nbytes = self._store.bytes_on_disk()
            out["bytes_on_disk"] = nbytes
            out["bytes_per_million_steps"] = nbytes / max(steps, 1) * 1e6
        return out

    def close(self) -> None:
        self._store.close()


# ============================================================================ prefetching

class Prefetcher:
    """Batches sampled by ``workers`` background threads, up to ``depth`` ahead of the consumer.

    Batch ``i`` is drawn with ``np.random.default_rng([seed, i])`` and batches are handed out in order, so the
    sequence of batches depends neither on timing nor on the number of workers, and a resumed run
    (``start=i``) sees the same batches. Several workers decompress in parallel (zlib releases the GIL).
    Errors in a worker are re-raised by :meth:`next`."""

    def __init__(self, sample: Callable[[np.random.Generator], dict[str, np.ndarray]], seed: int, start: int = 0,
                 depth: int = 2, workers: int = 1):
        self._sample, self.seed, self.index = sample, int(seed), int(start)
        self.depth = max(int(depth), 1, int(workers))
        self._next_job = self.index
        self._done: dict[int, Any] = {}
        self._cv = threading.Condition()
        self._stop = False
        self._threads = [threading.Thread(target=self._run, name=f"offline-prefetch-{w}", daemon=True)
                         for w in range(max(int(workers), 1))]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stop and self._next_job >= self.index + self.depth:
                    self._cv.wait()
                if self._stop:
                    return
                i = self._next_job
                self._next_job += 1
            try:
                item: Any = self._sample(np.random.default_rng([self.seed, i]))
            except BaseException as exc:   # handed to the consumer
                item = exc
            with self._cv:
                self._done[i] = item
                self._cv.notify_all()

    def next(self) -> tuple[dict[str, np.ndarray], float]:
        """The next batch and the seconds spent waiting for it."""
        t0 = time.perf_counter()
        with self._cv:
            while self.index not in self._done:
                self._cv.wait()
            item = self._done.pop(self.index)
            self.index += 1
            self._cv.notify_all()
        if isinstance(item, BaseException):
            raise item
        return item, time.perf_counter() - t0

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=10)
        self._done.clear()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ============================================================================ pictures

def image_grid(images: np.ndarray, ncols: int = 8, pad: int = 1) -> np.ndarray:
    """uint8 images (N, 3, H, W) -> one uint8 (rows*(H+pad), cols*(W+pad), 3) sheet for a PNG."""
    images = np.asarray(images)
    n, c, h, w = images.shape
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    sheet = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        sheet[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = \
            images[i].transpose(1, 2, 0)
    return sheet
