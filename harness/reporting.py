"""MLflow reporting. The runner owns the reporter; methods only return metric dicts.

Layout: one experiment per stream, one parent run per (method, seed), one nested run per task.
Metrics are stepped by global env frames and sent in batches (``MlflowClient.log_batch``: about
30x faster than separate calls on the sqlite store, anchors.md section 6).
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

PARENT = "parent"
TASK = "task"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the embedded sqlite store ``./mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


# Set by a sweep for its jobs when they report through its temporary server (gone when the sweep ends): the store
# behind that server, which the jobs' "look at the results" line names instead.
STORE_ENV = "GSA_SWEEP_STORE_URI"


def ui_command(uri: str | None = None) -> str:
    uri = uri or tracking_uri()
    if os.environ.get(STORE_ENV) and uri == os.environ.get("MLFLOW_TRACKING_URI"):
        uri = os.environ[STORE_ENV]
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri}"
    return f"open {uri} in a browser"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///path`` URI; None for other stores and in-memory databases."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)  # sqlite:////abs -> /abs; sqlite:///rel -> rel


def _client(uri: str) -> Any:
    """An ``MlflowClient`` whose store exists. On the embedded sqlite store the first process creates the tables
    while holding an ``flock`` on the database's folder (no lock file is left behind): two processes opening a
    fresh store at once (a sweep driver and a user's query, two jobs) otherwise race in MLflow's migrations
    ("table ... already exists")."""
    from mlflow.tracking import MlflowClient  # mlflow sets its loggers up on import: quiet them after
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    db = _sqlite_path(uri)
    if db is None or not db.parent.is_dir():
        return MlflowClient(uri)
    import fcntl
    try:
        fd = os.open(db.parent, os.O_RDONLY)
    except OSError:  # an unreadable folder: go without the lock
        return MlflowClient(uri)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)  # creates (or upgrades) the tables now, under the lock
    finally:
        os.close(fd)
    return client


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b": "value"} for MLflow params (values cut to MLflow's 6000 chars)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


class MlflowReporter:
    def __init__(self, uri: str | None = None):
        self.uri = uri or tracking_uri()
        self.client = _client(self.uri)
        self.run_ids: dict[str, str | None] = {PARENT: None, TASK: None}
        self._buffer: dict[str, list[Any]] = {PARENT: [], TASK: []}
        self._logged: dict[str, set[tuple[str, int]]] = {PARENT: set(), TASK: set()}  # see skip_logged_from
        self._last_flush = self._last_beat = time.monotonic()

    # ------------------------------------------------------------ runs
    def start(self, experiment: str, run_name: str, tags: dict[str, str], params: dict[str, str]) -> str:
        """Create the parent run (with its first heartbeat). Validate everything before calling this."""
        from harness.lifecycle import heartbeat_tags
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                exp_id = self.client.create_experiment(experiment)
            except Exception:  # another process created it in between
                exp = self.client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
        run = self.client.create_run(exp_id, run_name=run_name, tags=tags | heartbeat_tags())
        self.run_ids[PARENT] = run.info.run_id
        self.experiment_id = exp_id
        self._last_beat = time.monotonic()
        self.log_params(params)
        return run.info.run_id

    def check_resumable(self, run_id: str, stale_after: float | None = None, allow_finished: bool = False) -> Any:
        """The MLflow run ``run_id`` if ``--resume`` may continue it; a clear error otherwise (a task run,
        a FINISHED run, a run whose process is still alive). Changes nothing."""
        from harness.lifecycle import STALE_AFTER_S, liveness
        try:
            run = self.client.get_run(run_id)
        except Exception:  # mlflow raises MlflowException / RestException for unknown ids
            raise HarnessError(f"no MLflow run {run_id!r} in {self.uri}; list runs with `cli.py runs list`") from None
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent:
            raise HarnessError(f"run {run_id!r} is the task run {run.data.tags.get('task', '?')!r} (stream "
                               f"position {run.data.tags.get('task_index', '?')}) of run {parent!r}; "
                               f"resume its parent: --resume {parent}")
        if run.info.status == "FINISHED" and not allow_finished:
            raise HarnessError(f"run {run_id!r} FINISHED already; there is nothing to resume "
                               "(start a new run to train again)")
        if run.info.status == "RUNNING":
            lv = liveness(run, STALE_AFTER_S if stale_after is None else stale_after)
            if lv.state == "alive":
                raise HarnessError(f"run {run_id!r} is RUNNING and its process looks alive ({lv.reason}); "
                                   "one process per run. If it is dead, `cli.py runs gc --stale-after 0` "
                                   "marks it KILLED")
        return run

    def resume(self, run_id: str, allow_finished: bool = False) -> Any:
        """Reopen a resumable parent run (see :meth:`check_resumable`) as RUNNING, with a new heartbeat.
        ``allow_finished``: a FINISHED run may be continued too (pre-training extended to more updates)."""
        from harness.lifecycle import heartbeat_tags
        run = self.check_resumable(run_id, stale_after=float("inf"), allow_finished=allow_finished)
        self.run_ids[PARENT] = run_id
        self.experiment_id = run.info.experiment_id
        self.client.update_run(run_id, "RUNNING")
        self.set_tags(heartbeat_tags())
        if "error" in run.data.tags:   # the error that stopped it last time is history now
            self.client.delete_tag(run_id, "error")
        self._last_beat = time.monotonic()
        return run

    def heartbeat(self, force: bool = False) -> None:
        """Refresh the parent run's heartbeat tags (at most every HEARTBEAT_EVERY_S unless forced)."""
        from harness.lifecycle import HEARTBEAT_EVERY_S, heartbeat_tags
        if self.run_ids[PARENT] and (force or time.monotonic() - self._last_beat > HEARTBEAT_EVERY_S):
            from mlflow.entities import RunTag
            self.client.log_batch(self.run_ids[PARENT], tags=[RunTag(k, v) for k, v in heartbeat_tags().items()])
            self._last_beat = time.monotonic()

    def skip_logged_from(self, step: int) -> int:
        """After a resume from a checkpoint at ``step``: metric points (key, step >= ``step``) already in the
        parent or open task run are not logged again (the resumed run recomputes them). Returns how many."""
        n = 0
        for run in (PARENT, TASK):
            run_id = self.run_ids[run]
            if run_id is None:
                continue
            for key in self.client.get_run(run_id).data.metrics:
                for m in self.client.get_metric_history(run_id, key):
                    if m.step >= step:
                        self._logged[run].add((key, int(m.step)))
                        n += 1
        return n

    def start_task(self, index: int, name: str, tags: dict[str, str]) -> str:
        """The nested run of stream position ``index``; an existing one (from a resumed run) is reused."""
        parent = self.run_ids[PARENT]
        existing = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.task_index = '{index}'")
        if existing:
            run_id = existing[0].info.run_id
            if existing[0].info.status != "RUNNING":
                self.client.update_run(run_id, "RUNNING")
        else:
            run = self.client.create_run(
                self.experiment_id, run_name=f"{index}-{name}",
                tags={**tags, "mlflow.parentRunId": parent, "task_index": str(index), "task": name})
            run_id = run.info.run_id
        self.run_ids[TASK] = run_id
        return run_id

    def task_runs(self, parent: str | None = None) -> list[Any]:
        """The nested task runs of ``parent`` (default: this reporter's parent run)."""
        parent = parent or self.run_ids[PARENT]
        exp = self.experiment_id if parent == self.run_ids[PARENT] else self.client.get_run(parent).info.experiment_id
        return self.client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'")

    def end_stale_tasks(self, before: int) -> None:
        """On resume: task runs of stream positions < ``before`` are FINISHED (their R row is in the checkpoint,
        whatever a kill left them as); later positions cannot exist yet, and one left RUNNING is KILLED."""
        for r in self.task_runs():
            index = int(r.data.tags.get("task_index", -1))
            if index < before and r.info.status != "FINISHED":
                self.client.set_terminated(r.info.run_id, "FINISHED")
            elif index > before and r.info.status == "RUNNING":
                self.client.set_terminated(r.info.run_id, "KILLED")

    def end_task(self, status: str = "FINISHED") -> None:
        self.flush()
        if self.run_ids[TASK]:
            self.client.set_terminated(self.run_ids[TASK], status)
            self.run_ids[TASK] = None
            self._logged[TASK].clear()

    def close(self, status: str = "FINISHED") -> None:
        self.end_task(status)
        if self.run_ids[PARENT]:
            self.client.set_terminated(self.run_ids[PARENT], status)

    # ------------------------------------------------------------ logging
    def log_params(self, params: dict[str, str], run: str = PARENT) -> None:
        from mlflow.entities import Param
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params
            self.client.log_batch(self.run_ids[run], params=items[i:i + 100])

    def set_tags(self, tags: dict[str, str], run: str = PARENT) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_ids[run], k, v)

    def log_metrics(self, metrics: dict[str, float], step: int, run: str = PARENT) -> None:
        """Buffered; non-finite values are kept out of MLflow (they are reported by the runner)."""
        from mlflow.entities import Metric
        if self.run_ids[run] is None:
            return
        now, done = int(time.time() * 1000), self._logged[run]
        self._buffer[run].extend(Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                                 if v is not None and math.isfinite(float(v)) and (k, int(step)) not in done)
        if time.monotonic() - self._last_flush > 10 or len(self._buffer[run]) > 800:
            self.flush()

    def flush(self) -> None:
        for run, metrics in self._buffer.items():
            if metrics and self.run_ids[run]:
                for i in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
                    self.client.log_batch(self.run_ids[run], metrics=metrics[i:i + 1000])
            metrics.clear()
        self._last_flush = time.monotonic()
        self.heartbeat()

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None,
                     run: str = PARENT) -> None:
        self.client.log_artifact(self.run_ids[run], str(path), artifact_path)

    def log_json(self, obj: Any, filename: str, run: str = PARENT) -> None:
        """``filename`` may name an artifact folder too: ``retrieval/task00.json``."""
        folder, _, name = filename.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / name
            p.write_text(json.dumps(obj, indent=2, default=str))
            self.log_artifact(p, folder or None, run=run)

    def find_runs(self, experiment: str, filter_string: str) -> list[Any]:
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            return []
        return self.client.search_runs([exp.experiment_id], filter_string=filter_string, max_results=200)
