"""What a dataset view reads through: a store of episodes on disk, with its bookkeeping of damage.

A store lists its usable episodes (:class:`~harness.offline.format.EpisodeMeta`) and reads rows of one of
them; it counts what was read, and records every damaged part it meets (at opening, and while reading: an
episode found damaged is never read again). Each damaged part is reported once, as one readable line: a
:class:`~harness.offline.format.DamagedEpisodeWarning`, or a call of the ``on_damage`` callback when one
is given (``pretrain`` prints and logs them itself).
"""
from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from harness.offline.format import DamagedEpisodeWarning, EpisodeMeta

_MAX_WARNINGS = 20           # damaged parts reported one by one; later ones only counted


def _one_line(text: str) -> str:
    return " ".join(str(text).split("\n")).strip()


class _Store:
    """Episodes of one dataset on disk; ``read`` returns stored rows in the replay's convention."""
    format: str
    root: Path
    obs_spec: dict[str, tuple[tuple[int, ...], str]]
    action_pad_dim: int
    episodes: list[EpisodeMeta]

    def __init__(self, on_damage: Callable[[str], None] | None = None) -> None:
        self.damaged: list[tuple[str, str]] = []     # (where, why)
        self.damaged_at_open = 0                     # how many of them were found while opening
        self.bad: set[int] = set()                   # episode ids found damaged after opening
        self.why_bad: dict[int, str] = {}            # episode id -> why
        self.generation = 0                          # bumps when an episode is found damaged
        self.rows_read = 0                           # stored rows handed to a view
        self.touched = bytearray(0)                  # 1 per episode read at least once
        self.lengths: np.ndarray | None = None       # episode lengths, for the view's counters
        self.on_damage = on_damage
        self._lock = threading.Lock()
        self.uid_to_id: dict[str, int] = {}

    def opened(self) -> None:
        """Called by a store at the end of its constructor."""
        self.damaged_at_open = len(self.damaged)
        self.touched = bytearray(len(self.episodes))

    def damage(self, where: str, why: str, episode: int | None = None) -> None:
        where, why = _one_line(where), _one_line(why)
        with self._lock:
            if episode is not None:
                if episode in self.bad:
                    return
                self.bad.add(episode)
                self.why_bad[episode] = why
                self.generation += 1
            self.damaged.append((where, why))
            n = len(self.damaged)
        if n <= _MAX_WARNINGS:
            self.report(f"skipping damaged data: {where}: {why}")
        elif n == _MAX_WARNINGS + 1:
            self.report(f"more damaged data in {self.root}; further cases are only counted (dataset.damaged)")

    def report(self, line: str) -> None:
        """One line about the data: to ``on_damage`` if given, else a :class:`DamagedEpisodeWarning`."""
        if self.on_damage is not None:
            self.on_damage(line)
        else:
            warnings.warn(line, DamagedEpisodeWarning, stacklevel=4)

    def count_read(self, ep: int, rows: int) -> None:
        self.touched[ep] = 1
        with self._lock:
            self.rows_read += rows

    def read(self, ep: int, a: int, b: int, keys: Sequence[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def bytes_on_disk(self) -> int:
        raise NotImplementedError

    def storage(self) -> dict[str, Any]:
        return {}

    def checksums(self) -> str:
        """How reads are verified: ``crc32`` (every chunk), ``none`` (written before checksums), or a mix."""
        return "none"

    def close(self) -> None:
        pass


class _WholeEpisodeStore(_Store):
    """A store that decodes whole episodes at a time (ncrl's npz files, Minari's storage): the decoded
    episodes are kept in an LRU cache of up to ``cache_bytes``; a subclass gives ``_decode(ep)``."""

    def __init__(self, cache_bytes: int, on_damage: Callable[[str], None] | None = None) -> None:
        super().__init__(on_damage)
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._cached = 0

    def _decode(self, ep: int) -> dict[str, np.ndarray]:
        """Every stored key of episode ``ep`` in the replay's convention; DamagedData when unreadable."""
        raise NotImplementedError

    def _load(self, ep: int) -> dict[str, np.ndarray]:
        with self._lock:
            hit = self._cache.get(ep)
            if hit is not None:
                self._cache.move_to_end(ep)
                return hit
        out = self._decode(ep)
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

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
            self._cached = 0
        super().close()
