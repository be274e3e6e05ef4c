"""Episode replay for online data, with uniform sequence sampling and incremental persistence.

``EpisodeReplay`` keeps every step in one flat, growable buffer per key (so sampling a (B, T) batch is
one fancy-indexing operation per key, no Python loop over the batch) and writes each finished episode
to ``<directory>/<index:06d>-<length>.npz``. Its ``state_dict()`` holds only the number of finished
episodes; ``load_state_dict`` reloads exactly those files (later files, written after the checkpoint,
are ignored). The steps of the open (unfinished) episode travel inside ``state_dict()`` itself, so a run
resumed in the middle of an episode continues it exactly.

Steps follow the runner's DreamerV3 convention (``harness.steps.Step``): ``reward`` arrived with ``obs``,
``action`` is taken from ``obs``. Each stored step also gets ``prev_action`` (the action that led to
``obs``; zero at episode starts), which is what a world model consumes.

Sequences are drawn uniformly over all stored steps and may cross episode boundaries (``is_first``
marks where the model must restart), as DreamerV3 samples them (Table 5: uniform sampling, unlimited
capacity).

Mixing sources: anything with ``sample(batch, length, rng) -> dict[str, np.ndarray]`` is a
:class:`SequenceSource`; :class:`MixedSampler` draws fixed fractions of each batch from several sources
(GSA: 0.75 online, 0.25 retrieved offline) and labels the rows with ``source`` so a method can, e.g.,
train its reward head on online rows only.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from harness.steps import Step

FLAG_KEYS = ("is_first", "is_last", "is_terminal")
_FILE = re.compile(r"^(\d{6,})-(\d+)\.npz$")


class SequenceSource(Protocol):
    def __len__(self) -> int: ...
    def sample(self, batch: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]: ...


class EpisodeReplay:
    """Online replay of one data stream (e.g. one task's episodes)."""

    def __init__(self, directory: str | Path | None = None, initial_capacity: int = 4096):
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._initial = max(int(initial_capacity), 1)
        self._data: dict[str, np.ndarray] = {}
        self.size = 0              # steps in memory (finished episodes + the open one)
        self.episodes = 0          # finished episodes (each persisted as a file when a directory is set)
        self._ep_start = 0         # index of the open episode's first step
        self._open = False

    # ------------------------------------------------------------------ writing
    def __len__(self) -> int:
        return self.size

    def _row(self, step: Step) -> dict[str, Any]:
        prev = np.zeros_like(step.action) if step.is_first or not self._open else self._data["action"][self.size - 1]
        return {**step.obs, "action": step.action, "prev_action": prev, "reward": step.reward,
                "is_first": step.is_first, "is_last": step.is_last, "is_terminal": step.is_terminal}

    def _allocate(self, row: dict[str, Any]) -> None:
        for k, v in row.items():
            v = np.asarray(v)
            dtype = bool if k in FLAG_KEYS else (np.float32 if v.dtype == np.float64 else v.dtype)
            self._data[k] = np.zeros((self._initial, *v.shape), dtype)

    def _grow(self, need: int) -> None:
        cap = len(next(iter(self._data.values())))
        if need <= cap:
            return
        new = max(need, 2 * cap)
        for k, v in self._data.items():
            grown = np.zeros((new, *v.shape[1:]), v.dtype)
            grown[: self.size] = v[: self.size]
            self._data[k] = grown

    def add(self, step: Step) -> None:
        """Append one step; a step with ``is_last`` closes the episode and writes it to disk."""
        if step.is_first and self._open:
            self.size = self._ep_start  # an episode that never got is_last: drop it (not persisted)
            self._open = False
        if not step.is_first and not self._open:
            raise ValueError("replay: the first step of an episode must have is_first=True")
        row = self._row(step)
        if not self._data:
            self._allocate(row)
        self._grow(self.size + 1)
        for k, v in row.items():
            self._data[k][self.size] = v
        if step.is_first:
            self._ep_start, self._open = self.size, True
        self.size += 1
        if step.is_last:
            self._finish_episode()

    def add_episode(self, episode: dict[str, np.ndarray]) -> None:
        """Append a whole finished episode given as arrays (T, ...) in the same keys and convention."""
        n = len(episode["is_first"])
        if not self._data:
            self._allocate({k: v[0] for k, v in episode.items()})
        if self._open:
            self.size = self._ep_start
            self._open = False
        self._grow(self.size + n)
        for k in self._data:
            self._data[k][self.size: self.size + n] = episode[k]
        self._ep_start, self._open = self.size, True
        self.size += n
        self._finish_episode()

    def _finish_episode(self) -> None:
        start, end = self._ep_start, self.size
        if self.directory is not None:
            path = self.directory / f"{self.episodes:06d}-{end - start}.npz"
            tmp = path.with_name(path.stem + ".tmp.npz")
            np.savez(tmp, **{k: v[start:end] for k, v in self._data.items()})
            tmp.replace(path)
            for stale in self.directory.glob(f"{self.episodes:06d}-*.npz"):   # written after an older checkpoint
                if stale != path and _FILE.match(stale.name):
                    stale.unlink()
        self.episodes += 1
        self._open = False

    # ------------------------------------------------------------------ reading
    def keys(self) -> list[str]:
        return list(self._data)

    def sample(self, batch: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``batch`` windows of ``length`` consecutive steps, starts uniform over the stored steps."""
        if self.size < length:
            raise ValueError(f"replay holds {self.size} steps, fewer than the sequence length {length}")
        starts = rng.integers(0, self.size - length + 1, size=batch)
        idx = starts[:, None] + np.arange(length)[None]
        return {k: v[idx] for k, v in self._data.items()}

    def windows(self, starts: np.ndarray, length: int, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The windows of ``length`` consecutive steps that begin at the step indices ``starts`` (N,), as
        ``sample`` draws them (all keys, or only ``keys``); every window must lie inside the stored steps."""
        starts = np.asarray(starts, np.int64)
        if len(starts) and (starts.min() < 0 or starts.max() + length > self.size):
            raise ValueError(f"replay holds {self.size} steps; windows of {length} from {starts.min()}..{starts.max()}")
        idx = starts[:, None] + np.arange(length)[None]
        return {k: v[idx] for k, v in self._data.items() if keys is None or k in keys}

    def episode_arrays(self) -> list[dict[str, np.ndarray]]:
        """The finished episodes in memory (copies), oldest first."""
        out, starts = [], np.flatnonzero(self._data["is_first"][: self.size]) if self._data else []
        for s in starts:
            ends = np.flatnonzero(self._data["is_last"][s: self.size])
            if len(ends):
                out.append({k: v[s: s + ends[0] + 1].copy() for k, v in self._data.items()})
        return out

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Finished episodes by count (they are files), the open episode's steps as tensors."""
        import torch
        open_steps = None
        if self._open:
            open_steps = {k: torch.from_numpy(v[self._ep_start: self.size].copy()) for k, v in self._data.items()}
        return {"episodes": self.episodes, "steps": self._ep_start if self._open else self.size,
                "open": open_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Reload the first ``state['episodes']`` episode files; files written later are ignored."""
        n = int(state["episodes"])
        self._data, self.size, self.episodes, self._ep_start, self._open = {}, 0, 0, 0, False
        if n > 0:
            self._reload_files(n, state)
        if state.get("open") is not None:
            steps = {k: v.numpy() for k, v in state["open"].items()}
            count = len(steps["is_first"])
            if not self._data:
                self._allocate({k: v[0] for k, v in steps.items()})
            self._grow(self.size + count)
            for k in self._data:
                self._data[k][self.size: self.size + count] = steps[k]
            self._ep_start, self._open = self.size, True
            self.size += count

    def _reload_files(self, n: int, state: dict[str, Any]) -> None:
        if self.directory is None:
            raise ValueError("replay has no directory to reload its episodes from")
        files = {}
        for p in self.directory.iterdir():
            m = _FILE.match(p.name)
            if m and int(m.group(1)) < n:
                files[int(m.group(1))] = p
        missing = sorted(set(range(n)) - set(files))
        if missing:
            raise FileNotFoundError(f"replay {self.directory}: the checkpoint expects {n} episode files; "
                                    f"missing indices {missing[:10]}")
        saved_dir, self.directory = self.directory, None  # reloading must not rewrite the files
        try:
            for i in range(n):
                with np.load(files[i]) as f:
                    self.add_episode({k: f[k] for k in f.files})
        finally:
            self.directory = saved_dir
        if "steps" in state and int(state["steps"]) != self.size:
            raise ValueError(f"replay {saved_dir}: reloaded {self.size} steps, the checkpoint recorded {state['steps']}")


class ReplayUnion:
    """Several replays as one source, sequences uniform over all their steps (each within one replay)."""

    def __init__(self, replays: Sequence[SequenceSource]):
        self.replays = list(replays)

    def __len__(self) -> int:
        return sum(len(r) for r in self.replays)

    def sample(self, batch: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        sizes = np.array([len(r) for r in self.replays], float)
        counts = np.bincount(rng.choice(len(self.replays), size=batch, p=sizes / sizes.sum()),
                             minlength=len(self.replays))
        parts = [r.sample(int(n), length, rng) for r, n in zip(self.replays, counts) if n > 0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class MixedSampler:
    """Batches drawn from several sources at fixed fractions, rows labelled by ``source`` (int, (B,)).

    Keys missing from a source are filled with zeros (e.g. ``reward`` of reward-free offline data);
    use the ``source`` column to mask them out of the losses."""

    def __init__(self, sources: Sequence[tuple[SequenceSource, float]]):
        fracs = [f for _, f in sources]
        if not sources or any(f < 0 for f in fracs) or abs(sum(fracs) - 1.0) > 1e-6:
            raise ValueError(f"source fractions must be >= 0 and sum to 1, got {fracs}")
        self.sources = list(sources)

    def rows(self, batch: int) -> list[int]:
        counts = [int(round(f * batch)) for _, f in self.sources]
        counts[0] += batch - sum(counts)
        return counts

    def sample(self, batch: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        parts = [(i, src.sample(n, length, rng)) for i, ((src, _), n) in enumerate(zip(self.sources, self.rows(batch)))
                 if n > 0]
        keys = list(dict.fromkeys(k for _, p in parts for k in p))
        out: dict[str, np.ndarray] = {}
        for k in keys:
            ref = next(p[k] for _, p in parts if k in p)
            out[k] = np.concatenate([p[k] if k in p else np.zeros((len(next(iter(p.values()))), *ref.shape[1:]), ref.dtype)
                                     for _, p in parts])
        out["source"] = np.concatenate([np.full(len(next(iter(p.values()))), i, np.int64) for i, p in parts])
        return out
