"""The gsa-offline format: names, the episode record, the manifest and its checks.

A manifest (``DIR/manifest.json``) names the format and version, the schema (one entry per column: row
shape and dtype), ``action_pad_dim`` and the committed shards. Each shard's ``shard.json`` repeats the
schema; :func:`check_shard_schema` makes a disagreement a :class:`~harness.errors.HarnessError` that names
the two files, the field and both values.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    provenance: dict[str, Any] | None = None   # how a learning source policy made it (collect's explorers)


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


def _schema_diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    diffs = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            diffs.append(f"{k}: {a.get(k)} there, {b.get(k)} here")
    return "; ".join(diffs)


def schema_conflicts(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(field, value in a, value in b)`` for every schema field that differs, e.g.
    ``("schema.action.shape", [6], [21])``; a column missing on one side shows as ``(absent)``."""
    out = []
    for k in sorted(set(a) | set(b)):
        ca, cb = a.get(k), b.get(k)
        if ca == cb:
            continue
        if not isinstance(ca, dict) or not isinstance(cb, dict):
            out.append((f"schema.{k}", "(absent)" if ca is None else ca, "(absent)" if cb is None else cb))
            continue
        for f in sorted(set(ca) | set(cb)):
            if ca.get(f) != cb.get(f):
                out.append((f"schema.{k}.{f}", ca.get(f, "(absent)"), cb.get(f, "(absent)")))
    return out


def check_shard_schema(root: Path, shard_file: Path, shard_schema: Any, manifest_schema: dict[str, Any]) -> None:
    """A shard whose schema contradicts the manifest's makes the dataset unusable: a clear error."""
    if not isinstance(shard_schema, dict):
        raise HarnessError(f"inconsistent dataset {root}: {shard_file} has no schema (got {shard_schema!r})")
    conflicts = schema_conflicts(shard_schema, manifest_schema)
    if conflicts:
        what = "; ".join(f"{field} is {sv} in {shard_file.name}, {mv} in {MANIFEST_FILE}"
                         for field, sv, mv in conflicts)
        raise HarnessError(f"inconsistent dataset {root}: {shard_file} contradicts {root / MANIFEST_FILE}: {what}")


def _check_manifest(path: Path, m: dict[str, Any]) -> None:
    """The manifest's own fields must be well formed and agree with each other."""
    schema = m.get("schema")
    if not isinstance(schema, dict):
        raise HarnessError(f"{path}: field 'schema' is missing or not a mapping (got {schema!r})")
    for key in ("action", *FLAG_KEYS):
        if key not in schema:
            raise HarnessError(f"{path}: field 'schema' lacks the column {key!r}")
    if not any(k in schema for k in OBS_KEYS):
        raise HarnessError(f"{path}: field 'schema' holds no observation column ({', '.join(OBS_KEYS)})")
    unknown = set(schema) - {*OBS_KEYS, "action", *FLAG_KEYS}
    if unknown:
        raise HarnessError(f"{path}: field 'schema' has unknown columns {sorted(unknown)}")
    for key, col in schema.items():
        shape = col.get("shape") if isinstance(col, dict) else None
        if not isinstance(shape, list) or not all(isinstance(x, int) and x >= 1 for x in shape):
            raise HarnessError(f"{path}: field 'schema.{key}.shape' must be a list of positive integers, got {shape!r}")
        try:
            np.dtype(col.get("dtype"))
        except TypeError:
            raise HarnessError(f"{path}: field 'schema.{key}.dtype' is not a dtype: {col.get('dtype')!r}") from None
    pad = m.get("action_pad_dim")
    action_shape = schema["action"]["shape"]
    if not isinstance(pad, int) or pad < 1:
        raise HarnessError(f"{path}: field 'action_pad_dim' must be a positive integer, got {pad!r}")
    if action_shape != [pad]:
        raise HarnessError(f"{path} contradicts itself: field 'action_pad_dim' is {pad}, but 'schema.action.shape' "
                           f"(the shape the shards are written with) is {action_shape}")
    if not isinstance(m.get("shards", []), list):
        raise HarnessError(f"{path}: field 'shards' must be a list, got {type(m.get('shards')).__name__}")


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
    _check_manifest(path, m)
    return m
