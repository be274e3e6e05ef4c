"""Batches sampled ahead of training by background threads, in a fixed order."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np


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

