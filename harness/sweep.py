"""Sweeps: a grid of streams x methods x seeds as `run-stream` jobs, idempotent, on one machine, a Ray
cluster or Slurm, all reporting to one MLflow store.

- **A job is a command.** Each job is the `run-stream` command line of its :class:`~harness.launch.RunOptions`
  (`--dry-run` prints them), run as a subprocess by a small worker (:func:`run_job`) wherever the backend
  puts it. Its stdout and stderr go to a log file that is saved as an artifact of its run (``logs/``).
- **Idempotent.** A job's key is :func:`~harness.launch.run_key` (stream, method, resolved method config,
  env config, seed), recorded on its run with the sweep id (tags ``run_key`` and ``sweep``). Running a sweep
  again looks each job up: FINISHED is skipped; FAILED, KILLED and dead RUNNING runs are continued with
  ``--resume``; a live RUNNING one is left to its process; missing ones start. Killing the driver and starting
  it again continues the sweep. A job whose process is killed (SIGKILL, preemption) is retried with
  ``--resume`` up to ``max_retries`` times; exit code 2 (bad input, a non-finite loss) is not retried.
- **Packing.** The launcher, not the user, sets each job's threads from its CPU share (torch, OMP, MKL:
  jobs x threads <= cores) and, with GPUs, ``CUDA_VISIBLE_DEVICES``, ``MUJOCO_EGL_DEVICE_ID`` and a per-process
  CUDA memory cap (``GSA_CUDA_MEMORY_FRACTION``) matching the job's GPU fraction.
- **One writer per store.** Concurrent processes must not share one SQLite file, so a sweep of more than one
  concurrent job on the embedded store runs through an MLflow server on 127.0.0.1 over that store for the
  sweep's duration (:func:`tracking_server`); a cluster's jobs need a server they can reach
  (``cli.py tracking-server``, ``MLFLOW_TRACKING_URI``). Experiments are created once, before fanning out.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

from harness.errors import HarnessError
from harness.launch import CLI, RunOptions, run_key
from harness.lifecycle import checkpointed, liveness
from harness.reporting import STORE_ENV

BACKENDS = ("local", "ray", "slurm")
SWEEP_TAG = "sweep"
NO_RETRY_EXIT = 2            # a HarnessError: bad input or a non-finite loss; retrying changes nothing


# ----------------------------------------------------------------------------- the grid

@dataclass(frozen=True)
class Job:
    """One run of the sweep: its options (with the sweep tag), its key and a label for logs."""
    options: RunOptions
    key: str
    label: str


@dataclass(frozen=True)
class SweepSpec:
    """streams x methods x seeds, the `run-stream` options every job shares, and per-method extras."""
    streams: tuple[str, ...]                  # names (`streams list`) or stream TOML files
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    run: dict[str, Any] = field(default_factory=dict)                  # RunOptions fields for every job
    per_method: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> RunOptions fields
    name: str | None = None                   # the sweep id (default: a hash of all of the above)

    def sweep_id(self) -> str:
        if self.name is not None:
            return check_sweep_id(self.name)
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return "sweep-" + hashlib.sha256(blob.encode()).hexdigest()[:10]


_OPTION_FIELDS = {f.name for f in dataclasses.fields(RunOptions)} - {"stream", "stream_file", "method", "seed", "tags"}


_VALID_OPTIONS = ", ".join(sorted({n.replace("_", "-") for n in _OPTION_FIELDS - {"overrides"}} | {"set"}))


def _option_name(key: str) -> str | None:
    """The RunOptions field of an option as the CLI spells it (dashes) or as a field (underscores)."""
    name = {"set": "overrides"}.get(key, key).replace("-", "_")
    return name if name in _OPTION_FIELDS else None


def _options(values: dict[str, Any], where: str) -> dict[str, Any]:
    out = {}
    for k, v in values.items():
        name = _option_name(k)
        if name is None:
            raise HarnessError(f"{where}: unknown run-stream option {k!r}; valid: {_VALID_OPTIONS}")
        out[name] = tuple(str(x) for x in (v if isinstance(v, (list, tuple)) else [v])) if name == "overrides" else v
    return out


def expand(spec: SweepSpec, echo: Callable[[str], None] = lambda _: None) -> list[Job]:
    """Every job of the grid, each validated as `run-stream` validates it (nothing is created)."""
    from methods import METHODS
    if not spec.streams or not spec.methods or not spec.seeds:
        raise HarnessError("a sweep needs at least one stream, one method and one seed")
    for m in spec.methods:
        METHODS.entry(m)
    unknown = set(spec.per_method) - set(spec.methods)
    if unknown:
        raise HarnessError(f"per-method options for {', '.join(sorted(unknown))}, which the sweep does not run "
                           f"(methods: {', '.join(spec.methods)})")
    shared = _options(spec.run, "sweep options")
    items = []
    for stream in spec.streams:
        where = {"stream_file": stream} if stream.endswith(".toml") else {"stream": stream}
        for method in spec.methods:
            extra = _options(spec.per_method.get(method, {}), f"options of method {method!r}")
            merged = shared | extra
            if "overrides" in extra:     # per-method --set values come after the shared ones
                merged["overrides"] = shared.get("overrides", ()) + extra["overrides"]
            for seed in spec.seeds:
                name = Path(stream).stem if stream.endswith(".toml") else stream
                items.append((f"{name}.{method}.seed{seed}", RunOptions(**where, method=method, seed=int(seed), **merged)))
    return make_jobs(items, spec.sweep_id())


def make_jobs(items: Sequence[tuple[str, RunOptions]], sweep: str) -> list[Job]:
    """``(label, options)`` as jobs of ``sweep``: each validated as `run-stream` validates it, keyed, tagged."""
    from harness.runner import prepare
    jobs = []
    for label, opts in items:
        opts = dataclasses.replace(opts, tags=tuple(t for t in opts.tags if not t.startswith(f"{SWEEP_TAG}="))
                                   + (f"{SWEEP_TAG}={sweep}",))
        cfg, _, _, method_cfg = prepare(opts.to_config())
        jobs.append(Job(opts, run_key(cfg, method_cfg), label))
    dupes = [k for k, n in Counter(j.key for j in jobs).items() if n > 1]
    if dupes:
        raise HarnessError(f"{len(dupes)} job(s) of the grid are the same run (same stream, method, config, "
                           "seed): remove the duplicates")
    return jobs


def load_sweep_file(path: str | os.PathLike[str]) -> tuple[SweepSpec, dict[str, Any]]:
    """A sweep TOML file (data, never executed): the grid and its options, and the launch settings. Every
    error names the file, the field and its line."""
    from harness.streams import _Lines
    p = Path(path)
    if not p.is_file():
        raise HarnessError(f"sweep file {path}: not a regular file" if p.exists() else f"sweep file {path} does not exist")
    text = p.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HarnessError(f"{path}: not valid TOML ({exc})") from None
    lines = _Lines(text)

    def fail(msg: str, key: str, table: str | None = None) -> HarnessError:
        line = lines.find(key, table)
        return HarnessError(f"{path}:{line}: {msg}" if line else f"{path}: {msg}")

    top = {"name", "streams", "methods", "seeds", "run", "method", "launch"}
    for k in data:
        if k not in top:
            raise fail(f"unknown field {k!r}; valid: {', '.join(sorted(top))}", k)
    for k, kind in (("streams", str), ("methods", str), ("seeds", int)):
        v = data.get(k)
        if not isinstance(v, list) or not v or not all(isinstance(x, kind) and not isinstance(x, bool) for x in v):
            raise fail(f"{k!r} must be a non-empty list of {kind.__name__}s", k)
    launch = data.get("launch", {})
    valid_launch = {"backend", "concurrency", "cpus_per_job", "gpus_per_job", "max_retries", "ray_address",
                    "slurm_partition", "slurm_timeout_min", "slurm_folder"}
    for k in launch:
        if k not in valid_launch:
            raise fail(f"unknown field [launch].{k}; valid: {', '.join(sorted(valid_launch))}", k, "launch")
    tables = [("run", data.get("run", {}))] + [(f"method.{m}", v) for m, v in data.get("method", {}).items()]
    for table, values in tables:
        if not isinstance(values, dict):
            raise fail(f"[{table}] must be a table of run-stream options", table.split(".")[0])
        for k in values:
            if _option_name(k) is None:
                raise fail(f"[{table}]: unknown run-stream option {k!r}; valid: {_VALID_OPTIONS}", k, table)
    run = _options(data.get("run", {}), f"{path} [run]")
    per_method = {m: _options(v, f"{path} [method.{m}]") for m, v in data.get("method", {}).items()}
    base = p.parent
    streams = tuple(str(base / s) if s.endswith(".toml") else s for s in data["streams"])
    return SweepSpec(streams, tuple(data["methods"]), tuple(data["seeds"]), run, per_method, data.get("name")), launch


# ----------------------------------------------------------------------------- where each job stands

def check_sweep_id(sweep: str) -> str:
    """A sweep id is letters, digits and ``. _ -`` (it goes into MLflow's search filters); a HarnessError else."""
    if not sweep or not all(ch.isascii() and (ch.isalnum() or ch in "._-") for ch in sweep):
        raise HarnessError(f"sweep id {sweep!r}: use letters, digits, '.', '_' and '-' only")
    return sweep


def find_runs(client: Any, sweep: str) -> dict[str, Any]:
    """The newest parent run of each job key in ``sweep``, over every experiment of the store."""
    check_sweep_id(sweep)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, filter_string=f"tags.{SWEEP_TAG} = '{sweep}'", max_results=50_000,
                              order_by=["attributes.start_time DESC"]) if exps else []
    out: dict[str, Any] = {}
    for r in runs:
        if "mlflow.parentRunId" not in r.data.tags:
            out.setdefault(r.data.tags.get("run_key", ""), r)
    return out


def state_of(run: Any | None) -> str:
    """start, finished, running (alive elsewhere), or resume (FAILED, KILLED, dead RUNNING)."""
    if run is None:
        return "start"
    if run.info.status == "FINISHED":
        return "finished"
    if run.info.status == "RUNNING" and liveness(run).state == "alive":
        return "running"
    return "resume"


# ----------------------------------------------------------------------------- one job, on any backend

@dataclass(frozen=True)
class JobResult:
    label: str
    key: str
    status: str               # FINISHED, FAILED, SKIPPED (finished before), RUNNING (alive elsewhere)
    run_id: str | None
    attempts: int
    wall_s: float
    error: str = ""


class _Stop:
    """The driver's stop: once set (SIGTERM or Ctrl-C in the driver), no job or retry starts and the running
    job processes get SIGTERM, so each ends KILLED with its resume hint and the next `sweep` continues it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.lock = threading.Lock()
        self.children: set[subprocess.Popen[bytes]] = set()

    def set(self) -> None:
        self.event.set()
        with self.lock:
            for p in self.children:
                with contextlib.suppress(ProcessLookupError):
                    p.terminate()

    def run(self, argv: list[str], **kwargs: Any) -> int:
        with self.lock:
            if self.event.is_set():
                return -15
            p = subprocess.Popen(argv, **kwargs)
            self.children.add(p)
        try:
            return p.wait()
        finally:
            with self.lock:
                self.children.discard(p)


STOP = _Stop()


def run_job(job: Job, env: dict[str, str], log_dir: str, max_retries: int = 2) -> JobResult:
    """Run (or continue) one job to its end as a `run-stream` subprocess; picklable for Ray and submitit."""
    from harness.reporting import MlflowReporter
    t0, attempts, error = time.monotonic(), 0, ""
    sweep = dict(t.split("=", 1) for t in job.options.tags)[SWEEP_TAG]
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    while True:
        rep = MlflowReporter(env.get("MLFLOW_TRACKING_URI"))
        run = find_runs(rep.client, sweep).get(job.key)
        state = state_of(run)
        if STOP.event.is_set() and state != "finished":
            return JobResult(job.label, job.key, "STOPPED", run and run.info.run_id, attempts, time.monotonic() - t0,
                             "the sweep was stopped; run it again to continue")
        if state in ("finished", "running") or attempts > max_retries:
            status = {"finished": "SKIPPED" if attempts == 0 else "FINISHED", "running": "RUNNING"}.get(state, "FAILED")
            return JobResult(job.label, job.key, status, run and run.info.run_id, attempts,
                             time.monotonic() - t0, "" if state == "finished" else error)
        threads = str(job.options.threads)
        argv = ([sys.executable, CLI, "run-stream", "--resume", run.info.run_id, "--threads", threads]
                if state == "resume" else job.options.argv())
        log = Path(log_dir) / f"{job.label}.attempt{attempts}.log"
        with open(log, "w") as f:
            f.write(" ".join(argv) + "\n")
            f.flush()
            rc = STOP.run(argv, env=os.environ | env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        attempts += 1
        run = find_runs(rep.client, sweep).get(job.key)
        if run is not None:
            with contextlib.suppress(Exception):   # the log is a convenience: never fail the job on it
                rep.client.log_artifact(run.info.run_id, str(log), "logs")
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        error = f"exit code {rc}: {lines[-1] if lines else ''}"[:500]
        if rc == NO_RETRY_EXIT:
            return JobResult(job.label, job.key, "FAILED", run and run.info.run_id, attempts,
                             time.monotonic() - t0, error)


# ----------------------------------------------------------------------------- backends

@dataclass(frozen=True)
class Slot:
    """What a job may use: its CPU threads and, with GPUs, its device and memory share."""
    threads: int
    gpu: int | None = None
    gpu_fraction: float = 0.0

    def env(self, tracking: dict[str, str]) -> dict[str, str]:
        out = dict(tracking) | {"MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
                                "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        if self.gpu is not None:
            out |= {"CUDA_VISIBLE_DEVICES": str(self.gpu), "MUJOCO_EGL_DEVICE_ID": str(self.gpu)}
            if 0 < self.gpu_fraction < 1:
                out["GSA_CUDA_MEMORY_FRACTION"] = f"{self.gpu_fraction:.4f}"
        return out


class Backend(Protocol):
    """Runs jobs on ``slots`` workers; ``tracking`` holds the environment variables that say where they report."""
    name: str
    slots: int

    def run(self, jobs: Sequence[Job], tracking: dict[str, str], log_dir: str, max_retries: int,
            done: Callable[[JobResult], None]) -> list[JobResult]: ...


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _with_threads(job: Job, threads: int) -> Job:
    return dataclasses.replace(job, options=dataclasses.replace(job.options, threads=threads))


@dataclass
class LocalBackend:
    """A pool of processes on this machine: ``concurrency`` jobs at once, cores shared out among them."""
    concurrency: int = 1
    cpus_per_job: int | None = None            # default: cores // concurrency
    gpus_per_job: float = 0.0
    name: str = "local"

    @property
    def slots(self) -> int:
        return self.concurrency

    def _slots(self) -> list[Slot]:
        threads = self.cpus_per_job or max(1, _cores() // self.concurrency)
        if not self.gpus_per_job:
            return [Slot(threads)] * self.concurrency
        import torch
        n = torch.cuda.device_count()
        if n == 0:
            raise HarnessError(f"--gpus-per-job {self.gpus_per_job} but no GPU is visible here")
        per_gpu = max(1, math.floor(1 / self.gpus_per_job))
        if self.concurrency > n * per_gpu:
            raise HarnessError(f"--concurrency {self.concurrency} jobs at {self.gpus_per_job} GPU each need "
                               f"{math.ceil(self.concurrency / per_gpu)} GPUs; {n} visible")
        return [Slot(threads, i // per_gpu, min(1.0, self.gpus_per_job)) for i in range(self.concurrency)]

    def run(self, jobs: Sequence[Job], tracking: dict[str, str], log_dir: str, max_retries: int,
            done: Callable[[JobResult], None]) -> list[JobResult]:
        import queue
        free: queue.Queue[Slot] = queue.Queue()
        for s in self._slots():
            free.put(s)

        def work(job: Job) -> JobResult:
            slot = free.get()
            try:
                res = run_job(_with_threads(job, slot.threads), slot.env(tracking), log_dir, max_retries)
            finally:
                free.put(slot)
            done(res)
            return res
        pool = ThreadPoolExecutor(self.concurrency)
        try:
            futures = [pool.submit(work, j) for j in jobs]
            return [f.result() for f in futures]
        except BaseException:     # SIGTERM (Terminated) or Ctrl-C in the driver: stop the jobs, then leave
            STOP.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _ray_job(job: Job, env: dict[str, str], log_dir: str, max_retries: int, gpus: float) -> JobResult:
    import ray
    if gpus:
        ids = [str(int(i)) for i in ray.get_gpu_ids()]   # Ray has set CUDA_VISIBLE_DEVICES for this worker
        env = env | {"CUDA_VISIBLE_DEVICES": ",".join(ids), "MUJOCO_EGL_DEVICE_ID": ids[0] if ids else "0"}
        if gpus < 1:
            env["GSA_CUDA_MEMORY_FRACTION"] = f"{gpus:.4f}"
    return run_job(job, env, log_dir, max_retries)


@dataclass
class RayBackend:
    """Ray Core tasks with resource requests, against ``address`` (or $RAY_ADDRESS), else a local Ray
    started for the sweep. A task whose worker dies is re-run by Ray; the job then resumes its run."""
    address: str | None = None
    cpus_per_job: int = 1
    gpus_per_job: float = 0.0
    worker_retries: int = 2
    name: str = "ray"

    @property
    def slots(self) -> int:
        return max(1, _cores() // self.cpus_per_job)

    def check(self) -> None:
        """A Ray address that does not answer is a clear error within seconds."""
        address = self.address or os.environ.get("RAY_ADDRESS")
        if not address or address in ("auto", "local"):
            return
        hostport = address.removeprefix("ray://")
        host, _, port = hostport.rpartition(":")
        try:
            with socket.create_connection((host or hostport, int(port or 6379)), timeout=3):
                pass
        except (OSError, ValueError) as exc:
            raise HarnessError(f"Ray address {address!r} does not answer ({exc}); start the cluster with "
                               "`ray start --head`, or leave --ray-address unset for a local Ray") from None

    def run(self, jobs: Sequence[Job], tracking: dict[str, str], log_dir: str, max_retries: int,
            done: Callable[[JobResult], None]) -> list[JobResult]:
        import ray
        address = self.address or os.environ.get("RAY_ADDRESS")
        started = not ray.is_initialized()
        if started:
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "runtime_env": {"env_vars": {"PYTHONPATH": str(Path(CLI).parent)}}}
            if address:
                ray.init(address=address, **kw)
            else:
                ray.init(num_cpus=_cores(), **kw)
        try:
            remote = ray.remote(_ray_job).options(num_cpus=self.cpus_per_job, num_gpus=self.gpus_per_job,
                                                  max_retries=self.worker_retries)
            env = Slot(self.cpus_per_job).env(tracking)
            refs = {remote.remote(_with_threads(j, self.cpus_per_job), env, log_dir, max_retries,
                                  self.gpus_per_job): j for j in jobs}
            results: dict[str, JobResult] = {}
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    job = refs[ref]
                    try:
                        res = ray.get(ref)
                    except Exception as exc:   # the worker died more often than Ray retries it
                        res = JobResult(job.label, job.key, "FAILED", None, 0, 0.0, f"ray: {type(exc).__name__}: {exc}"[:500])
                    results[job.key] = res
                    done(res)
            return [results[j.key] for j in jobs]
        finally:
            if started:
                ray.shutdown()


class _SubmititJob:
    """A submitit callable that requeues itself on preemption or timeout; the retried call resumes the run."""

    def __init__(self, env: dict[str, str], log_dir: str, max_retries: int):
        self.env, self.log_dir, self.max_retries = env, log_dir, max_retries

    def __call__(self, job: Job) -> JobResult:
        return run_job(job, self.env, self.log_dir, self.max_retries)

    def checkpoint(self, job: Job) -> Any:
        from submitit.helpers import DelayedSubmission
        return DelayedSubmission(self, job)


@dataclass
class SlurmBackend:
    """submitit's AutoExecutor: one Slurm job array (``map_array``), each task requeued after preemption;
    ``cluster="local"`` runs the same jobs as local processes (tests)."""
    folder: str = "slurm"
    partition: str | None = None
    timeout_min: int = 24 * 60
    cpus_per_job: int = 1
    gpus_per_job: int = 0
    concurrency: int = 64                       # the array's parallelism
    cluster: str | None = None                  # None: Slurm when available; "local": this machine
    name: str = "slurm"

    @property
    def slots(self) -> int:
        return self.concurrency

    def run(self, jobs: Sequence[Job], tracking: dict[str, str], log_dir: str, max_retries: int,
            done: Callable[[JobResult], None]) -> list[JobResult]:
        import submitit
        ex = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        params: dict[str, Any] = {"timeout_min": self.timeout_min, "cpus_per_task": self.cpus_per_job,
                                  "slurm_array_parallelism": self.concurrency}
        if self.gpus_per_job:
            params["gpus_per_node"] = self.gpus_per_job
        if self.partition:
            params["slurm_partition"] = self.partition
        ex.update_parameters(**params)
        env = Slot(self.cpus_per_job).env(tracking)
        fn = _SubmititJob(env, log_dir, max_retries)
        handles = ex.map_array(fn, [_with_threads(j, self.cpus_per_job) for j in jobs])
        results = []
        for job, h in zip(jobs, handles):
            try:
                res = h.result()
            except Exception as exc:
                res = JobResult(job.label, job.key, "FAILED", None, 0, 0.0, f"submitit: {exc}"[-500:])
            results.append(res)
            done(res)
        return results


def make_backend(name: str, *, concurrency: int = 1, cpus_per_job: int | None = None, gpus_per_job: float = 0.0,
                 ray_address: str | None = None, slurm_partition: str | None = None, slurm_timeout_min: int = 1440,
                 slurm_folder: str = "slurm", slurm_cluster: str | None = None) -> Backend:
    if name not in BACKENDS:
        raise HarnessError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    if concurrency < 1 or (cpus_per_job is not None and cpus_per_job < 1) or not 0 <= gpus_per_job <= 8:
        raise HarnessError(f"--concurrency and --cpus-per-job must be >= 1 and --gpus-per-job in [0, 8]; got "
                           f"{concurrency}, {cpus_per_job}, {gpus_per_job}")
    if name == "local":
        return LocalBackend(concurrency, cpus_per_job, gpus_per_job)
    if name == "ray":
        backend = RayBackend(ray_address, cpus_per_job or 1, gpus_per_job)
        backend.check()
        return backend
    if gpus_per_job and gpus_per_job != int(gpus_per_job):
        raise HarnessError("slurm: --gpus-per-job must be a whole number (Slurm allocates whole GPUs)")
    return SlurmBackend(slurm_folder, slurm_partition, slurm_timeout_min, cpus_per_job or 1, int(gpus_per_job),
                        concurrency, slurm_cluster)


# ----------------------------------------------------------------------------- the tracking store

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(backend_store_uri: str, artifact_root: str, host: str = "127.0.0.1", port: int = 5000,
                   workers: int = 1) -> list[str]:
    """`mlflow server` over a backend store, artifacts written directly under ``artifact_root`` (one writer
    process for SQLite: ``workers=1``)."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
            "--default-artifact-root", artifact_root, "--no-serve-artifacts", "--host", host, "--port", str(port),
            "--workers", str(workers)]


@contextlib.contextmanager
def tracking_server(uri: str, needed: bool, echo: Callable[[str], None] = print,
                    timeout_s: float = 90) -> Iterator[str]:
    """The URI jobs report to: ``uri`` itself, or (``needed`` and ``uri`` an SQLite file) an MLflow server on
    127.0.0.1 over that file for the duration of the block."""
    if not (needed and uri.startswith("sqlite:")):
        yield uri
        return
    import urllib.request
    port = _free_port()
    root = Path(uri.removeprefix("sqlite:///")).parent / "mlruns"
    cmd = server_command(uri, root.resolve().as_uri(), port=port)
    log = open(Path(uri.removeprefix("sqlite:///")).parent / f".mlflow-server-{port}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise HarnessError(f"the MLflow server for the sweep exited ({proc.returncode}); see {log.name}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - t0 > timeout_s:
                raise HarnessError(f"the MLflow server for the sweep did not answer within {timeout_s:.0f} s")
            time.sleep(0.5)
        echo(f"tracking: an MLflow server at {url} over {uri} for this sweep (one writer for the SQLite file)")
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        if proc.poll() is None:
            proc.kill()
        log.close()


def _experiment_names(jobs: Sequence[Job]) -> list[str]:
    from harness.streams import load_stream_file
    return sorted({f"stream/{j.options.stream or load_stream_file(str(j.options.stream_file)).name}" for j in jobs})


# ----------------------------------------------------------------------------- the driver

@dataclass
class SweepReport:
    sweep: str
    planned: dict[str, int]
    results: list[JobResult]
    wall_s: float

    @property
    def ok(self) -> bool:
        return all(r.status in ("FINISHED", "SKIPPED") for r in self.results)


def run_sweep(jobs: Sequence[Job], sweep: str, backend: Backend, *, max_retries: int = 2, log_dir: str | None = None,
              echo: Callable[[str], None] = print, uri: str | None = None,
              on_result: Callable[[JobResult], None] = lambda _: None) -> SweepReport:
    """Run what is left of the sweep's jobs on ``backend``; returns what became of each. ``on_result`` is called
    with each job's result as it ends (e.g. to export a finished run at once: ``harness/archive.py``)."""
    from harness.reporting import MlflowReporter, tracking_uri
    t0 = time.monotonic()
    STOP.event.clear()
    uri = uri or tracking_uri()
    rep = MlflowReporter(uri)
    runs = find_runs(rep.client, sweep)
    states = {j.key: state_of(runs.get(j.key)) for j in jobs}
    planned = dict(Counter(states.values()))
    echo(f"sweep {sweep}: {len(jobs)} jobs: " + ", ".join(f"{n} to {s}" if s in ("start", "resume") else f"{n} {s}"
                                                          for s, n in sorted(planned.items())))
    todo = [j for j in jobs if states[j.key] in ("start", "resume")]
    results = [JobResult(j.label, j.key, "SKIPPED" if states[j.key] == "finished" else "RUNNING", None, 0, 0.0)
               for j in jobs if states[j.key] not in ("start", "resume")]
    if todo:
        for name in _experiment_names(todo):   # created once, before any job can race to create it
            if rep.client.get_experiment_by_name(name) is None:
                rep.client.create_experiment(name)
        logs = log_dir or str(Path("sweeps") / sweep / "logs")
        needed = backend.name != "local" or min(backend.slots, len(todo)) > 1
        with tracking_server(uri, needed, echo) as job_uri:
            tracking = {"MLFLOW_TRACKING_URI": job_uri}
            if job_uri != uri:   # the server goes with the sweep: a job's log names the store behind it
                tracking[STORE_ENV] = uri
            def ended(r: JobResult) -> None:
                echo(f"  {r.label}: {r.status} after {r.attempts} attempt(s), {r.wall_s / 60:.1f} min"
                     + (f"; {r.error}" if r.error else ""))
                on_result(r)
            results += backend.run(todo, tracking, str(Path(logs).resolve()), max_retries, ended)
    report = SweepReport(sweep, planned, results, time.monotonic() - t0)
    counts = Counter(r.status for r in results)
    echo(f"sweep {sweep}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
         + f" in {report.wall_s / 60:.1f} min; status: python cli.py sweep status {sweep}")
    return report


def status(sweep: str, uri: str | None = None) -> dict[str, Any]:
    """Counts per state and per method, and the failed jobs with their last error line."""
    from harness.reporting import MlflowReporter
    rep = MlflowReporter(uri)
    runs = list(find_runs(rep.client, sweep).values())
    if not runs:
        raise HarnessError(f"no runs of sweep {sweep!r} in {rep.uri}")
    per_state: Counter[str] = Counter()
    per_method: dict[str, Counter[str]] = defaultdict(Counter)
    failed, running = [], []
    for r in runs:
        s = r.info.status
        if s == "RUNNING":
            s = f"RUNNING ({liveness(r).state})"
        per_state[s] += 1
        per_method[r.data.tags.get("method", "?")][s] += 1
        if s == "FINISHED":
            continue
        job = {"run_id": r.info.run_id, "method": r.data.tags.get("method"), "seed": r.data.tags.get("seed"),
               "stream": r.data.tags.get("stream"), "status": s, "checkpointed_env_frames": checkpointed(r)}
        if s == "RUNNING (alive)":
            running.append(job)
        else:
            failed.append(job | {"error": r.data.tags.get("error", "(no error recorded: killed)")})
    return {"sweep": sweep, "runs": len(runs), "states": dict(per_state),
            "methods": {m: dict(c) for m, c in sorted(per_method.items())}, "running": running, "failed": failed}
