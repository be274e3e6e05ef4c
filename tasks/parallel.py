"""Task envs stepped in worker processes: the parallel half of ``harness.evaluation``.

A :class:`WorkerPool` holds ``n`` processes (``python -m tasks.parallel``: a clean interpreter, no inherited
EGL context or torch thread pool, and the caller's main script is not run again as multiprocessing's
``spawn`` would), each owning some envs that it builds with ``tasks.base.make_env`` and
steps on request, the way the evaluation loop in the main process steps its own: the same env, seed and
actions give the same results in either place. The pool lives as long as the process that made it (the
workers' simulator imports are paid once), and is shut down at exit or when a worker fails.

Messages (main -> worker, one reply each): ``("make", task, EnvConfig, [seeds])``, ``("reset",)``,
``("step", [(k, action), ...])``, ``("render", k)``, ``("close",)``; ``None`` ends the worker.
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from harness.errors import HarnessError
from tasks.base import EnvConfig, StepResult, TaskEnv, make_env

_TIMEOUT_S = 600.0   # one request (building envs, one step of all of them); a hung worker is an error


def _serve(conn: Any) -> None:
    """The worker loop: build, reset and step envs as asked; errors are sent back, never raised."""
    envs: list[TaskEnv] = []
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            break
        if msg is None:
            break
        try:
            kind = msg[0]
            if kind == "make":
                for env in envs:
                    env.close()
                envs = []
                _, task, config, seeds = msg
                for seed in seeds:
                    envs.append(make_env(task, config, seed))
                reply: Any = [env.action_dim for env in envs]
            elif kind == "reset":
                reply = [env.reset() for env in envs]
            elif kind == "step":
                reply = [envs[k].step(action) for k, action in msg[1]]
            elif kind == "render":
                reply = envs[msg[1]].render()
            elif kind == "close":
                for env in envs:
                    env.close()
                envs, reply = [], None
            else:
                raise ValueError(f"unknown request {kind!r}")
            conn.send(("ok", reply))
        except HarnessError as exc:   # bad input: the same clear error in the main process
            conn.send(("input", str(exc)))
        except Exception as exc:      # a bug or a broken simulator: reported with where it happened
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    for env in envs:
        env.close()


class WorkerError(RuntimeError):
    """A worker failed or died; the pool is shut down."""


class WorkerPool:
    def __init__(self, n: int):
        self.conns: list[Connection] = []
        self.procs: list[subprocess.Popen] = []
        for _ in range(n):
            parent, child = socket.socketpair()
            proc = subprocess.Popen([sys.executable, "-m", "tasks.parallel", str(child.fileno())],
                                    pass_fds=(child.fileno(),), env=dict(os.environ), stdin=subprocess.DEVNULL)
            child.close()
            self.conns.append(Connection(parent.detach()))
            self.procs.append(proc)

    def __len__(self) -> int:
        return len(self.conns)

    def _gone(self, w: int, what: str) -> WorkerError:
        code = self.procs[w].poll() if w < len(self.procs) else None
        self.shutdown()
        return WorkerError(f"env worker {w} {what}" + (f" (exit code {code})" if code is not None else ""))

    def send(self, w: int, msg: Any) -> None:
        if w >= len(self.conns):
            raise WorkerError("the env worker pool was shut down")
        try:
            self.conns[w].send(msg)
        except (OSError, EOFError):
            raise self._gone(w, "is gone") from None

    def recv(self, w: int) -> Any:
        if w >= len(self.conns):
            raise WorkerError("the env worker pool was shut down")
        conn = self.conns[w]
        try:
            if not conn.poll(_TIMEOUT_S):
                raise self._gone(w, f"did not answer in {_TIMEOUT_S:.0f} s")
            status, value = conn.recv()
        except (OSError, EOFError):
            raise self._gone(w, "died") from None
        if status == "input":
            raise HarnessError(value)
        if status != "ok":
            self.shutdown()
            raise WorkerError(f"env worker {w} failed: {value}")
        return value

    @property
    def alive(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p in self.procs)

    def shutdown(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except (OSError, EOFError):
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for conn in self.conns:
            conn.close()
        self.conns, self.procs = [], []


_POOL: WorkerPool | None = None


def worker_pool(n: int) -> WorkerPool:
    """This process's pool of ``n`` workers (made, or remade when ``n`` changed or a worker died)."""
    global _POOL
    if _POOL is not None and (len(_POOL) != n or not _POOL.alive):
        _POOL.shutdown()
        _POOL = None
    if _POOL is None:
        _POOL = WorkerPool(n)
        atexit.register(_POOL.shutdown)
    return _POOL


class ShardedEnvs:
    """``episodes`` envs of one task, episode i in shard ``i % (workers + 1)``: shard 0 here, shard s in worker
    s - 1. ``reset``/``step`` keep the episodes' order, so a caller sees what a plain list of envs would give."""

    def __init__(self, task: str, config: EnvConfig, seeds: list[int], pool: WorkerPool | None):
        self.pool = pool
        shards = 1 + (len(pool) if pool is not None else 0)
        self.where = [(i % shards, i // shards) for i in range(len(seeds))]   # episode -> (shard, index there)
        self.local: list[TaskEnv] = []
        remote = {s: [seed for i, seed in enumerate(seeds) if i % shards == s] for s in range(1, shards)}
        self.remote = [s for s, v in remote.items() if v]
        self._inflight: set[int] = set()    # shards sent a request whose reply is not read yet
        self._made: set[int] = set()        # shards holding envs of this object
        try:
            for s in self.remote:
                self._send(s, ("make", task, config, remote[s]))
                self._made.add(s)
            self.local = [make_env(task, config, seed) for i, seed in enumerate(seeds) if i % shards == 0]
            for s in self.remote:
                self._recv(s)
        except BaseException:
            self.close()
            raise
        self.action_dim = self.local[0].action_dim

    def _send(self, s: int, msg: Any) -> None:
        assert self.pool is not None
        self.pool.send(s - 1, msg)
        self._inflight.add(s)

    def _recv(self, s: int) -> Any:
        assert self.pool is not None
        value = self.pool.recv(s - 1)
        self._inflight.discard(s)
        return value

    def reset(self) -> list[dict[str, np.ndarray]]:
        for s in self.remote:
            self._send(s, ("reset",))
        got = {0: [env.reset() for env in self.local]}
        got |= {s: self._recv(s) for s in self.remote}
        return [got[s][k] for s, k in self.where]

    def step(self, actions: np.ndarray, episodes: list[int]) -> dict[int, StepResult]:
        """Step the given episodes with their rows of ``actions``; results by episode."""
        requests: dict[int, list[tuple[int, int]]] = {}
        for i in episodes:
            s, k = self.where[i]
            requests.setdefault(s, []).append((i, k))
        for s, items in requests.items():
            if s:
                self._send(s, ("step", [(k, actions[i]) for i, k in items]))
        out = {i: self.local[k].step(actions[i]) for i, k in requests.get(0, [])}
        for s, items in requests.items():
            if s:
                out |= dict(zip((i for i, _ in items), self._recv(s)))
        return out

    def render(self, i: int) -> np.ndarray:
        s, k = self.where[i]
        if s == 0:
            return self.local[k].render()
        self._send(s, ("render", k))
        return self._recv(s)

    def close(self) -> None:
        """Close every env; a worker left mid-request (an error or Ctrl-C here) is drained, or the pool is
        shut down, so the next evaluation finds the workers in step."""
        for env in self.local:
            env.close()
        self.local = []
        pool = self.pool
        if pool is None or not (self._made or self._inflight) or not pool.alive:
            self._made, self._inflight = set(), set()
            return
        try:
            for s in list(self._inflight):
                try:
                    self._recv(s)
                except HarnessError:   # its bad-input error: the caller is raising one already
                    self._inflight.discard(s)
            for s in self._made:
                self._send(s, ("close",))
            for s in list(self._made):
                self._recv(s)
        except BaseException:
            pool.shutdown()
            raise
        finally:
            self._made, self._inflight = set(), set()


if __name__ == "__main__":   # a worker: python -m tasks.parallel FD
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the main process's to handle; it ends us
    _serve(Connection(int(sys.argv[1])))
