"""One run lifecycle for every command that writes an MLflow run (run-stream, collect, pretrain).

The guarantees, in the order a run lives them:

1. **Validate before creating.** Callers check everything they can (configs, device, output folders:
   :func:`check_writable_dir`) before :meth:`MlflowReporter.start`; a refused command leaves nothing.
2. **Never orphaned.** :func:`guarded` wraps everything after creation: an exception ends the parent and
   its open task run FAILED (KILLED for Ctrl-C or SIGTERM) and prints the one-line resume hint.
3. **Found when dead.** A run that dies where no Python runs (SIGKILL, OOM, node loss) stays RUNNING in
   MLflow. Every writer records a heartbeat on its run (host, pid, the pid's start time, unix time;
   :meth:`MlflowReporter.heartbeat`), so :func:`liveness` can tell: same host, process gone (or the pid
   now belongs to another process): dead; another host: dead once the heartbeat is older than
   ``stale_after`` seconds. ``cli.py runs list`` shows it, ``cli.py runs gc`` marks dead runs KILLED,
   ``compare`` names them, and ``--resume`` continues them.
4. **One writer.** :class:`RunLock` holds an exclusive ``flock`` on the run folder for the life of the
   process (the kernel releases it when the process dies, however it dies): a second ``--resume`` of the
   same run refuses.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from harness.errors import HarnessError

STALE_AFTER_S = 2 * 3600   # another host's run is presumed dead after this long without a heartbeat
HEARTBEAT_EVERY_S = 30
LOCK_FILE = "run.lock"


class Terminated(KeyboardInterrupt):
    """SIGTERM (Slurm preemption, ``kill``, a job scheduler's stop), raised in the main thread so that the
    run is closed KILLED with its resume hint instead of being left RUNNING."""


class _Sigterm:
    """Whether SIGTERM is deferred now (inside a training loop that checkpoints on it) and whether one came."""
    deferring = 0
    requested = False


def handle_sigterm() -> None:
    """Install at a command's entry (never at import): SIGTERM -> :class:`Terminated`; inside
    :func:`sigterm_checkpoints`, the first SIGTERM only asks the loop to save a checkpoint and stop."""
    def _raise(signum: int, frame: Any) -> None:
        if _Sigterm.deferring and not _Sigterm.requested:
            _Sigterm.requested = True      # the loop saves its checkpoint at the end of this step, then stops
            return
        raise Terminated(f"signal {signum}")
    with contextlib.suppress(ValueError):   # not the main thread: leave the default
        signal.signal(signal.SIGTERM, _raise)


@contextlib.contextmanager
def sigterm_checkpoints() -> Iterator[Callable[[], bool]]:
    """Around a run's training: a SIGTERM (a scheduler's preemption, a sweep being stopped) no longer raises at
    once; the run asks the yielded ``stop_requested()`` where a checkpoint can be written (the end of a
    training step, a task boundary), saves it there and raises :class:`Terminated`, so the work since the last
    periodic checkpoint is kept. A second SIGTERM raises at once; one that came and was not acted on when the
    block ends raises there."""
    _Sigterm.deferring += 1
    try:
        yield lambda: _Sigterm.requested
    finally:
        _Sigterm.deferring -= 1
        requested, _Sigterm.requested = _Sigterm.requested, False
    if requested:
        raise Terminated("signal 15")


# ----------------------------------------------------------------------------- validation helpers

def check_writable_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Refuse, creating nothing, a folder that cannot be created or written: a file, ``/proc``, a
    read-only mount. Probes the folder (or its nearest existing parent) with a temporary folder."""
    p = Path(path).expanduser().absolute()
    probe_in = p
    while not probe_in.exists():
        if probe_in.is_symlink():
            raise HarnessError(f"{what} {str(path)!r}: {probe_in} is a broken symbolic link")
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise HarnessError(f"{what} {str(path)!r}: {probe_in} is not a folder")
    try:
        tempfile.TemporaryDirectory(dir=probe_in, prefix=".gsa-write-probe-").cleanup()
    except OSError as exc:
        raise HarnessError(f"{what} {str(path)!r} is not writable ({exc.strerror or exc}); "
                           "choose a folder you can write to") from None
    return p


# ----------------------------------------------------------------------------- heartbeat and liveness

def _pid_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with the pid it
    names one process, even after the pid is reused. '' where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]


def heartbeat_tags() -> dict[str, str]:
    pid = os.getpid()
    return {"heartbeat.host": socket.gethostname(), "heartbeat.pid": str(pid),
            "heartbeat.pid_start": _pid_start(pid), "heartbeat.time": str(int(time.time()))}


CHECKPOINT_FRAMES_TAG = "checkpoint.env_frames"   # a run-stream run's global env frames at its last checkpoint


def checkpointed(run: Any) -> str:
    """Where a resume of a run-stream ``run`` continues, of its budget: '40,000/120,000' global env frames
    (tags ``checkpoint.env_frames`` and ``budget_frames``); '' for other runs and before the first checkpoint."""
    done, budget = run.data.tags.get(CHECKPOINT_FRAMES_TAG), run.data.tags.get("budget_frames")
    if not (done or "").isdigit():
        return ""
    return f"{int(done):,}/{int(budget):,}" if (budget or "").isdigit() else f"{int(done):,}"


@dataclass(frozen=True)
class Liveness:
    state: str       # "alive", "dead", or "ended" (not RUNNING)
    reason: str


def liveness(run: Any, stale_after: float = STALE_AFTER_S, now: float | None = None) -> Liveness:
    """Whether the process writing a RUNNING MLflow run still exists (see the module doc)."""
    if run.info.status != "RUNNING":
        return Liveness("ended", run.info.status)
    tags, now = run.data.tags, time.time() if now is None else now
    host, pid, start = tags.get("heartbeat.host"), tags.get("heartbeat.pid"), tags.get("heartbeat.pid_start", "")
    beat = float(tags.get("heartbeat.time") or run.info.start_time / 1000)
    age = now - beat
    if host == socket.gethostname() and pid:
        if not _pid_exists(int(pid)):
            return Liveness("dead", f"process {pid} on {host} is gone (last heartbeat {age:.0f} s ago)")
        if start and _pid_start(int(pid)) not in ("", start):
            return Liveness("dead", f"process {pid} on {host} ended; the pid now belongs to another process")
        return Liveness("alive", f"process {pid} on {host}, heartbeat {age:.0f} s ago")
    where = f"process {pid} on {host}" if host else "no heartbeat recorded (an older harness)"
    if age > stale_after:
        return Liveness("dead", f"{where}: no heartbeat for {age:.0f} s (> {stale_after:.0f} s)")
    return Liveness("alive", f"{where}, heartbeat {age:.0f} s ago (another host: presumed alive)")


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------- one writer per run

class RunLock:
    """An exclusive ``flock`` on ``<folder>/run.lock``, held until :meth:`release` or the process ends."""

    def __init__(self, folder: str | os.PathLike[str], run_id: str):
        self.path, self.run_id = Path(folder) / LOCK_FILE, run_id
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise HarnessError(f"run {self.run_id} is being written by {holder} right now (lock {self.path}); "
                               "one process per run: wait for it to end, or stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)   # closing the descriptor releases the flock
            self._fd = None


# ----------------------------------------------------------------------------- the guarded body

@contextlib.contextmanager
def guarded(rep: Any, hint: Callable[[], str], echo: Callable[[str], None] = print) -> Iterator[None]:
    """Everything after a run exists runs inside this. On success the caller closes the run FINISHED
    (``rep.close``); on any exception the run and its open task run end FAILED (KILLED for Ctrl-C and
    SIGTERM), ``hint()`` is printed and the exception goes on."""
    try:
        yield
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        told = False
        with contextlib.suppress(Exception):   # a store that is down must not hide the first error
            rep.set_tags({"error": what.splitlines()[0][:500] if what else status})
            rep.close(status)
            told = True
        where = "" if told else "; MLflow could not be told, so it shows the run RUNNING until `cli.py runs gc`"
        echo(f"run {rep.run_ids.get('parent')} ended {status} ({what.splitlines()[0][:500]}{where}). {hint()}")
        raise


def end_dead_runs(rep: Any, runs: list[Any], echo: Callable[[str], None] = print, dry_run: bool = False,
                  stale_after: float = STALE_AFTER_S) -> list[tuple[Any, Liveness]]:
    """Mark the dead RUNNING runs among ``runs`` KILLED, their RUNNING task runs too. Returns them."""
    dead = [(r, lv) for r in runs if (lv := liveness(r, stale_after)).state == "dead"]
    for r, lv in dead:
        echo(f"{'would mark' if dry_run else 'marking'} {r.info.run_id} ({r.info.run_name}) KILLED: {lv.reason}")
        if dry_run:
            continue
        children = rep.client.search_runs(
            [r.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{r.info.run_id}' and "
                                                  "attributes.status = 'RUNNING'")
        for c in children:
            rep.client.set_terminated(c.info.run_id, "KILLED")
        rep.client.set_terminated(r.info.run_id, "KILLED")
        rep.client.set_tag(r.info.run_id, "ended_by", f"runs gc: {lv.reason}")
    return dead
