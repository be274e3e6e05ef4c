"""The shard store of the gsa-offline format: :class:`DatasetWriter` writes it, :class:`_ShardStore` reads it.

Episodes are appended to shards of about ``shard_steps`` stored steps. A shard is written in
``shard-N.tmp/`` and renamed when complete (its files fsynced, its ``shard.json`` written last), then the
manifest is replaced atomically, so a crashed collection leaves a loadable dataset of its completed shards.
Opening checks every shard's schema against the manifest (a contradiction is a
:class:`~harness.errors.HarnessError`), every column file against ``shard.json``, and every episode's
is_first/is_last flags against the episode table; a damaged shard or episode is skipped and counted.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from harness.errors import HarnessError
from harness.offline.columns import _Column, _ColumnWriter, _FileCache
from harness.offline.format import (
    COMPRESSIONS,
    FLAG_KEYS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    OBS_KEYS,
    SHARD_FILE,
    SHARDS_DIR,
    DamagedData,
    DamagedEpisodeWarning,
    EpisodeMeta,
    _atomic_write_json,
    _read_manifest,
    _schema,
    _schema_diff,
    check_shard_schema,
)
from harness.offline.store import _Store


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
                diff = _schema_diff(manifest["schema"], self.schema)
                raise HarnessError(f"cannot append to {self.root}: its schema differs ({diff}); "
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
                    noise: float | None, action_dim: int, seed: int | None = None,
                    provenance: dict[str, Any] | None = None) -> EpisodeMeta:
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
                           seed=None if seed is None else int(seed), source=self._dir.name[:-4], offset=self._rows,
                           provenance=provenance)
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


class _ShardStore(_Store):
    format = FORMAT

    def __init__(self, root: Path, obs_keys: Sequence[str], on_damage: Callable[[str], None] | None = None):
        super().__init__(on_damage)
        self.root = root
        self.files = _FileCache()
        try:
            self._open(root, obs_keys)
        except BaseException:
            self.close()
            raise
        self.opened()

    def _open(self, root: Path, obs_keys: Sequence[str]) -> None:
        m = _read_manifest(root)
        schema = m["schema"]
        self.schema = schema
        self.action_pad_dim = int(m["action_pad_dim"])
        self.obs_spec = {k: (tuple(schema[k]["shape"]), np.dtype(schema[k]["dtype"]).name)
                         for k in OBS_KEYS if k in schema}
        self.keys = (*obs_keys, "action", *FLAG_KEYS)
        self.episodes = []
        self._where: list[tuple[dict[str, _Column], int]] = []   # per episode: (columns, row offset)
        self._compression: set[str] = set()
        self._shards_checked: list[bool] = []   # per opened shard: every column read has checksums
        listed = [s["name"] for s in m.get("shards", []) if isinstance(s, dict) and "name" in s]
        on_disk = sorted(p.name for p in (root / SHARDS_DIR).glob("shard-*")
                         if p.is_dir() and not p.name.endswith(".tmp")) if (root / SHARDS_DIR).exists() else []
        for name in on_disk:
            if name not in listed and (root / SHARDS_DIR / name / SHARD_FILE).exists():
                self.report(f"{root}: shard {name} is complete but not in the manifest (a collection stopped "
                            "between the two writes); reading it")
                listed.append(name)
        expected = {s["name"]: s.get("episodes", 0) for s in m.get("shards", []) if isinstance(s, dict) and "name" in s}
        for name in listed:
            self._open_shard(root / SHARDS_DIR / name, expected.get(name, 0))

    def _open_shard(self, d: Path, expected_episodes: int) -> None:
        try:
            info = json.loads((d / SHARD_FILE).read_text())
            if not isinstance(info, dict) or info.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} shard")
            if not isinstance(info.get("columns"), dict) or not isinstance(info.get("episodes"), list):
                raise ValueError("no columns or episode table")
        except (OSError, ValueError) as exc:
            self.damage(str(d), f"{SHARD_FILE} unreadable ({type(exc).__name__}: {exc}); "
                                f"{expected_episodes} episodes skipped")
            return
        check_shard_schema(self.root, d / SHARD_FILE, info.get("schema"), self.schema)
        n_eps = len(info["episodes"])
        cols: dict[str, _Column] = {}
        for k in self.keys:
            col_info = info["columns"].get(k)
            if isinstance(col_info, dict):   # a column's entry must describe the schema's column
                for field in ("shape", "dtype"):
                    if col_info.get(field) != self.schema[k][field]:
                        raise HarnessError(f"inconsistent dataset {self.root}: {d / SHARD_FILE} contradicts itself: "
                                           f"columns.{k}.{field} is {col_info.get(field)}, schema.{k}.{field} is "
                                           f"{self.schema[k][field]}")
            try:
                cols[k] = _Column(d, k, info["columns"][k], self.files)
            except (DamagedData, OSError, KeyError, TypeError, ValueError) as exc:
                why = f"missing entry {exc}" if isinstance(exc, KeyError) else str(exc)
                self.damage(str(d), f"column {k} unusable ({why}); {n_eps} episodes skipped")
                return
            if cols[k].compressed:
                self._compression.add(f"{k}:zlib")
        try:   # flags are tiny: check every episode's boundaries now (a chunk failing its checksum costs its episodes)
            first, bad_first, why_first = cols["is_first"].read_all_tolerant()
            last, bad_last, why_last = cols["is_last"].read_all_tolerant()
        except (DamagedData, OSError) as exc:
            self.damage(str(d), f"flags unreadable ({exc}); {n_eps} episodes skipped")
            return
        bad_flags = bad_first | bad_last
        flag_why = "; ".join((why_first + why_last)[:2])
        readable = min(c.readable_rows for c in cols.values())
        self._shards_checked.append(all(c.checksummed for c in cols.values()))
        for e in info["episodes"]:
            try:
                meta = EpisodeMeta(**e)
                if meta.length < 1 or meta.offset < 0:
                    raise TypeError(f"length {meta.length}, offset {meta.offset}")
            except TypeError as exc:
                self.damage(f"{d.name} episode {e.get('uid', '?') if isinstance(e, dict) else '?'}",
                            f"malformed entry in {SHARD_FILE} ({exc})")
                continue
            where = f"{d.name} episode {meta.uid} (rows {meta.offset}:{meta.offset + meta.length})"
            end = meta.offset + meta.length
            if end > readable:
                self.damage(where, f"truncated: the shard's files hold only {readable} complete rows")
                continue
            if bad_flags[meta.offset:end].any():
                self.damage(where, flag_why)
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
        """The manifest and the shards (not what else lives in the folder, e.g. collect's explorer states)."""
        files = [self.root / MANIFEST_FILE, *(self.root / SHARDS_DIR).rglob("*")]
        return sum(p.stat().st_size for p in files if p.is_file())

    def storage(self) -> dict[str, Any]:
        return {"compressed_columns": sorted(self._compression) or ["none"]}

    def checksums(self) -> str:
        n, checked = len(self._shards_checked), sum(self._shards_checked)
        if n and checked == n:
            return "crc32"
        if not checked:
            return "none"
        return f"crc32 in {checked} of {n} shards (the others were written before checksums)"

    def close(self) -> None:
        self.files.close()
        super().close()
