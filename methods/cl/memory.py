"""A memory of earlier tasks' n-step transitions: A-GEM's episodic memory and reservoir replay's buffer.

A row is one DrQ-v2 n-step transition as ``DrQV2.transitions`` makes it (observation and frame stack,
action, n-step reward, discount, next observation) plus the head (``task``) and the action mask
(``mask``) of the task it came from, so a replayed row keeps its own task's reward, head and action
space. :func:`task_transitions` reads them from a task's episode replay at the task's end.

Filling:
- ``append``: rows are added as they come (A-GEM: a fixed number per task, Continual World's
  ``episodic_mem_per_task``);
- ``reservoir_add``: reservoir sampling over everything ever offered, bounded by ``capacity``. Every row
  gets an independent uniform key and the memory keeps the ``capacity`` rows with the largest keys: a
  uniform random subset of all rows seen (the random-key form of reservoir sampling, the algorithm of
  avalanche-lib's ``ReservoirSamplingBuffer``; that class itself holds an AvalancheDataset subset that is
  indexed one item at a time, far too slow for drawing a 1024-row batch at every update, and draws its
  keys from torch's global generator, which would shift the learner's random stream and break exact
  resume, so the memory is plain numpy arrays with the caller's generator).

Persistence: the memory changes only at task boundaries, so :meth:`save` writes it to one ``.npz`` per
boundary and a method's ``state_dict`` names the file (the two newest are kept: a run killed between a
boundary's file and its checkpoint resumes from the previous one and writes the new one again, identical).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

CHUNK = 4096        # transitions gathered from a replay at once (bounds the memory of pixel frame stacks)


class TransitionMemory:
    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.data: dict[str, np.ndarray] = {}
        self.keys = np.zeros(0, np.float64)   # reservoir keys of the stored rows
        self.size = 0                          # rows stored
        self.seen = 0                          # rows ever offered

    def __len__(self) -> int:
        return self.size

    # ------------------------------------------------------------------ filling
    def _reserve(self, n: int, like: dict[str, np.ndarray]) -> None:
        """Room for ``n`` rows (arrays grow by doubling up to ``capacity``)."""
        have = len(self.keys)
        if n <= have:
            return
        new = min(self.capacity, max(n, 2 * have, 1024))
        for k, v in like.items():
            grown = np.zeros((new, *v.shape[1:]), v.dtype)
            if k in self.data:
                grown[: self.size] = self.data[k][: self.size]
            self.data[k] = grown
        keys = np.zeros(new, np.float64)
        keys[: self.size] = self.keys[: self.size]
        self.keys = keys

    def _put(self, slots: np.ndarray, rows: dict[str, np.ndarray], which: np.ndarray) -> None:
        if self.data and set(rows) != set(self.data):
            raise ValueError(f"memory rows have keys {sorted(rows)}, the memory holds {sorted(self.data)}")
        for k, v in rows.items():
            self.data[k][slots] = v[which]

    def append(self, rows: dict[str, np.ndarray]) -> None:
        """Add every row (they must fit in ``capacity``)."""
        n = len(rows["action"])
        if self.size + n > self.capacity:
            raise ValueError(f"memory of {self.capacity} rows holds {self.size}; {n} more do not fit")
        self._reserve(self.size + n, rows)
        self._put(np.arange(self.size, self.size + n), rows, np.arange(n))
        self.size += n
        self.seen += n

    def reservoir_add(self, rows: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        """Offer ``rows`` to the reservoir: afterwards it holds a uniform random subset of all rows offered so
        far, of size min(capacity, seen)."""
        n = len(rows["action"])
        new_keys = rng.random(n)
        self.seen += n
        if self.size == self.capacity:       # full: only keys above the smallest stored one can enter
            enter = np.flatnonzero(new_keys > self.keys[: self.size].min())
        else:
            enter = np.arange(n)
        if not len(enter):
            return
        self._reserve(min(self.capacity, self.size + len(enter)), rows)
        all_keys = np.concatenate([self.keys[: self.size], new_keys[enter]])
        if len(all_keys) <= self.capacity:
            keep_new = np.arange(len(enter))
            slots = np.arange(self.size, self.size + len(enter))
        else:
            keep = np.argpartition(all_keys, len(all_keys) - self.capacity)[len(all_keys) - self.capacity:]
            keep_new = np.sort(keep[keep >= self.size] - self.size)
            dropped = np.setdiff1d(np.arange(self.size), keep[keep < self.size], assume_unique=True)
            slots = np.concatenate([dropped, np.arange(self.size, self.capacity)])[: len(keep_new)]
        self._put(slots, rows, enter[keep_new])
        self.keys[slots] = new_keys[enter[keep_new]]
        self.size = min(self.capacity, self.size + len(enter))

    # ------------------------------------------------------------------ reading
    def sample(self, n: int, rng: np.random.Generator, replace: bool = True) -> dict[str, np.ndarray]:
        """``n`` rows drawn uniformly (without replacement when ``replace`` is False: at most all rows)."""
        if not self.size:
            raise ValueError("the memory is empty")
        idx = rng.choice(self.size, size=min(n, self.size), replace=False) if not replace else \
            rng.integers(0, self.size, size=n)
        return {k: v[idx] for k, v in self.data.items()}

    def tensors(self, rows: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v, device=device) for k, v in rows.items()}

    # ------------------------------------------------------------------ persistence
    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, __keys=self.keys[: self.size], __meta=np.array([self.size, self.seen, self.capacity]),
                 **{f"d_{k}": v[: self.size] for k, v in self.data.items()})
        tmp.replace(path)

    def load(self, path: Path) -> None:
        with np.load(path) as f:
            size, seen, capacity = (int(x) for x in f["__meta"])
            if capacity != self.capacity:
                raise ValueError(f"{path}: a memory of capacity {capacity}, this one has {self.capacity}")
            self.data = {k[2:]: f[k] for k in f.files if k.startswith("d_")}
            self.keys = f["__keys"].copy()
        self.size, self.seen = size, seen

    def state(self, directory: Path, boundary: int) -> dict[str, Any]:
        """Save the memory as boundary ``boundary``'s file and return what a state_dict needs to reload it."""
        name = f"memory-{boundary:04d}.npz"
        self.save(directory / name)
        for old in directory.glob("memory-*.npz"):
            if old.name < f"memory-{max(boundary - 1, 0):04d}.npz":
                old.unlink()
        return {"file": name, "size": self.size, "seen": self.seen}

    def restore(self, directory: Path, state: dict[str, Any]) -> None:
        if not state.get("file"):
            self.data, self.keys, self.size, self.seen = {}, np.zeros(0, np.float64), 0, 0
            return
        self.load(directory / state["file"])
        if (self.size, self.seen) != (int(state["size"]), int(state["seen"])):
            raise ValueError(f"{directory / state['file']}: holds {self.size} of {self.seen} rows, the checkpoint "
                             f"recorded {state['size']} of {state['seen']}")


# ---------------------------------------------------------------------- transitions of a task

def valid_starts(learner: Any) -> np.ndarray:
    """Start indices of every valid n-step window in the learner's current replay (DrQ-v2's rule)."""
    length, _ = learner.window
    n = len(learner.replay) - length + 1
    if n <= 0:
        return np.zeros(0, np.int64)
    flags = learner.replay.windows(np.arange(n), length, keys=("is_first", "is_last"))
    return np.flatnonzero(learner.valid_windows(flags))


def task_transitions(learner: Any, starts: np.ndarray, head: int, mask: np.ndarray) -> dict[str, np.ndarray]:
    """The transitions at window ``starts`` of the learner's replay, labelled with ``head`` and ``mask``."""
    length, _ = learner.window
    rows = learner.transitions(learner.replay.windows(starts, length))
    n = len(starts)
    rows["task"] = np.full(n, head, np.int64)
    rows["mask"] = np.repeat(np.asarray(mask, np.float32)[None], n, 0)
    return rows
