"""The dataset view: :func:`open_dataset` (either layout) and :class:`OfflineDataset` (facts, views, sampling).

``sample`` draws windows of ``length`` consecutive steps uniformly over all windows that lie inside one
episode (Table 5: uniform sampling). Every read goes through the store, which checks what it reads (the
chunks' crc32 checksums in the gsa-offline layout, zip's crc32 in the ncrl layout); an episode found damaged
is skipped from then on (warned once and counted), and the draw is repeated. :meth:`OfflineDataset.damage_report`
says what reading met so far: episodes and steps still in use, what was read, what was skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from harness.errors import HarnessError
from harness.offline.format import (
    FLAG_KEYS,
    MANIFEST_FILE,
    NCRL_NAME,
    OBS_KEYS,
    SAMPLE_EXTRAS,
    DamagedData,
    EpisodeMeta,
    _read_manifest,
)
from harness.offline.ncrl import _NcrlStore
from harness.offline.shards import _ShardStore
from harness.offline.store import _Store

_EXAMPLES = 5                # damaged parts listed by summary() and damage_report()


def open_dataset(path: str | Path, obs_keys: Sequence[str] | str | None = None, *, action_pad_dim: int | None = None,
                 cache_bytes: int = 256 << 20, on_damage: Callable[[str], None] | None = None) -> "OfflineDataset":
    """Open an offline dataset directory of either layout (see ``harness.offline``).

    ``obs_keys``: which observations to read (default: pixels if stored, else proprio; ``"all"``: every
    stored one, e.g. to verify the whole dataset).
    ``action_pad_dim``: ncrl layout only (its files hold native actions): pad to this dim (default: the
    largest action dim in the data; ncrl's model uses 21).
    ``on_damage``: called with one readable line per damaged part found (at opening and while reading),
    instead of a :class:`DamagedEpisodeWarning`.
    ``path`` may also be ``minari:ID``: the Minari dataset ID in ``$MINARI_DATASETS_PATH`` (``harness.offline.minari``).
    The dataset holds open files: close it (``close()``, or use it as a context manager)."""
    if isinstance(path, str) and path.startswith("minari:"):
        from harness.offline.minari import _MinariStore
        minari_store = _MinariStore(path[len("minari:"):], obs_keys, action_pad_dim, cache_bytes, on_damage)
        if not minari_store.episodes:
            minari_store.close()
            raise HarnessError(f"Minari dataset {path[len('minari:'):]} holds no usable episode")
        return OfflineDataset(minari_store, minari_store.keys)
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
        store = _ShardStore(root, keys, on_damage)
    elif any(NCRL_NAME.match(p.name) for p in root.rglob("*.npz")):
        keys = _choose_obs(obs_keys, ["pixels"], root)
        store = _NcrlStore(root, keys, action_pad_dim, cache_bytes, on_damage)
    else:
        raise HarnessError(f"{root} is not an offline dataset: it has no {MANIFEST_FILE} (written by `cli.py collect`) "
                           "and no episode files of the ncrl layout ({time}-{uuid}-{idx}-{len}.npz)")
    if not store.episodes:
        store.close()
        dmg = f"; {len(store.damaged)} damaged parts were skipped" if store.damaged else ""
        raise HarnessError(f"dataset {root} holds no usable episode{dmg}")
    return OfflineDataset(store, keys)


def _choose_obs(obs_keys: Sequence[str] | str | None, stored: list[str], root: Path) -> tuple[str, ...]:
    if obs_keys is None:
        return ("pixels",) if "pixels" in stored else tuple(stored[:1])
    if obs_keys == "all":
        return tuple(k for k in OBS_KEYS if k in stored)
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
    ``is_terminal`` bool (B, T). ``subset`` and ``filter`` give views sharing the same files (and the same
    bookkeeping of damage). ``close()`` (or leaving a ``with`` block) closes those files."""

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

    def content_digest(self) -> str:
        """sha256 over what this view's episodes hold (their task, policy, the observations it reads, actions and
        flags, in episode order), not over how they are stored: the same data collected again give the same
        digest, on any machine and in any shard layout (``fingerprint`` names the episodes, whose uids are new
        each time). Reads every episode once; damaged ones are left out (and so change the digest)."""
        import hashlib
        h, keys = hashlib.sha256(), (*self.obs_keys, "action", *FLAG_KEYS)
        for i in self._live():
            meta = self._store.episodes[int(i)]
            h.update(f"{meta.embodiment}|{meta.task}|{meta.policy}|{meta.noise}|{meta.seed}|{meta.length}|".encode())
            rows = self._read(int(i), 0, meta.length, keys)
            if rows is None:
                continue
            for k in keys:
                a = np.ascontiguousarray(rows[k])
                h.update(f"{k}|{a.dtype}|{a.shape}|".encode())
                h.update(a.tobytes())
        return h.hexdigest()

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
        """Rows [a, b) of episode ``ep``, checked by the store; None (and the episode skipped) if damaged."""
        try:
            rows = self._store.read(int(ep), a, b, keys)
        except (DamagedData, OSError) as exc:
            self._damaged(int(ep), exc)
            return None
        self._store.count_read(int(ep), b - a)
        return rows

    def _damaged(self, ep: int, exc: BaseException) -> None:
        meta = self._store.episodes[ep]
        why = str(exc) if isinstance(exc, DamagedData) else f"{type(exc).__name__}: {exc}"
        self._store.damage(f"{meta.source} episode {meta.uid}", why, episode=ep)

    def episode(self, ep: int) -> dict[str, np.ndarray]:
        """One whole episode (store-wide id) with ``prev_action`` and ``action_mask`` (T, A)."""
        meta = self._store.episodes[ep]
        rows = self._read(ep, 0, meta.length, (*self.obs_keys, "action", *FLAG_KEYS))
        if rows is None:
            raise HarnessError(f"episode {meta.uid} ({meta.source}) is damaged: "
                               f"{self._store.why_bad.get(int(ep), 'see dataset.damaged')}")
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
                    self._damaged(int(ep), exc)
                    continue
                self._store.count_read(int(ep), 1)
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
            "damaged": len(self._store.damaged),
            "damaged_examples": [f"{w}: {y}" for w, y in self._store.damaged[:_EXAMPLES]],
            "checksums": self._store.checksums(),
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

    def damage_report(self) -> dict[str, Any]:
        """What reading this view has met so far (live counters; cheap enough for every log interval).

        ``episodes_used`` / ``steps_used``: the view's episodes (and their stored steps) still drawn from, i.e.
        not found damaged; ``episodes_read``: how many of them were read at least once; ``steps_read``: rows
        read from the dataset (all views); ``episodes_skipped``: the view's episodes found damaged while
        reading; ``damaged``: damaged parts of the dataset found so far (``damaged_at_open`` at opening, the
        rest while reading), ``damaged_examples`` the first of them; ``checksums``: how reads are checked."""
        st = self._store
        with st._lock:
            damaged = list(st.damaged)
            bad = set(st.bad)
            steps_read = st.rows_read
        if st.lengths is None or len(st.lengths) != len(st.episodes):
            st.lengths = np.array([e.length for e in st.episodes], np.int64)
        used = self._ids[~np.isin(self._ids, np.fromiter(bad, np.int64, len(bad)))] if bad else self._ids
        touched = np.frombuffer(bytes(st.touched), np.uint8) if len(st.touched) else np.zeros(0, np.uint8)
        return {
            "episodes": len(self._ids),
            "episodes_used": len(used),
            "steps_used": int(st.lengths[used].sum()),
            "episodes_read": int(np.count_nonzero(touched[used])) if len(touched) else 0,
            "steps_read": int(steps_read),
            "episodes_skipped": len(self._ids) - len(used),
            "damaged": len(damaged),
            "damaged_at_open": st.damaged_at_open,
            "damaged_while_reading": len(damaged) - st.damaged_at_open,
            "damaged_examples": [f"{w}: {y}" for w, y in damaged[:_EXAMPLES]],
            "checksums": st.checksums(),
        }

    def close(self) -> None:
        """Close the dataset's files (shared by all its views); reading again reopens them."""
        self._store.close()

    def __enter__(self) -> "OfflineDataset":
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
