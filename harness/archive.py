"""Finished runs as plain files and back: a run's record outlives the MLflow store it was made in.

A sweep's evidence is its store's finished runs, and a store on a machine that is lost takes them all with it
(the first ``gsa-evidence`` store went so, with 28 runs). :func:`export_runs` writes each FINISHED parent run of
a sweep, with its task runs, as one JSON record (params, tags, every metric's whole history, status and times)
into a folder that can be committed or copied; :func:`import_runs` puts records into a store as new runs, each
once (the original run id in tag ``archive_run_id``). The sweep's job keys (tags ``sweep`` and ``run_key``) come
with them, so a sweep run again on a fresh store skips the imported runs, and ``compare`` and the reports use
them as the originals. Of the artifacts only the small JSON ones are carried (``compare`` reads the R matrix);
checkpoints, videos and plots are not: a record is for comparing and reporting, and a run in flight is continued
from its checkpoint, not from here.

    python cli.py runs export --sweep gsa-evidence --out benchmarks/results/runs/gsa-evidence
    python cli.py runs import benchmarks/results/runs/gsa-evidence
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from harness.errors import HarnessError

FORMAT = 1
ARCHIVE_TAG = "archive_run_id"
JSON_ARTIFACT_MAX_BYTES = 1 << 20
_BATCH = 1000          # MLflow's log_batch limit on metrics (params 100, tags 100)


def run_record(client: Any, run: Any) -> dict[str, Any]:
    """One run (and, for a parent, its task runs) as a JSON-ready dict."""
    metrics = {}
    for key in sorted(run.data.metrics):
        hist = client.get_metric_history(run.info.run_id, key)
        metrics[key] = [[int(m.step), int(m.timestamp), float(m.value)] for m in
                        sorted(hist, key=lambda m: (m.step, m.timestamp))]
    rec = {"run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
           "start_time": run.info.start_time, "end_time": run.info.end_time,
           "params": dict(sorted(run.data.params.items())), "tags": dict(sorted(run.data.tags.items())),
           "metrics": metrics, "artifacts": _json_artifacts(client, run.info.run_id)}
    if "mlflow.parentRunId" not in run.data.tags:
        kids = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'",
                                  max_results=10_000, order_by=["attributes.start_time ASC"])
        rec["children"] = [run_record(client, k) for k in kids]
    return rec


def _json_artifacts(client: Any, run_id: str, folder: str | None = None) -> dict[str, str]:
    """The run's small JSON artifacts (the R matrix ``compare`` reads, retrieval records), by path."""
    import tempfile
    out = {}
    for f in client.list_artifacts(run_id, folder):
        if f.is_dir:
            out |= _json_artifacts(client, run_id, f.path)
        elif f.path.endswith(".json") and (f.file_size or 0) <= JSON_ARTIFACT_MAX_BYTES:
            with tempfile.TemporaryDirectory() as tmp:
                out[f.path] = Path(client.download_artifacts(run_id, f.path, tmp)).read_text()
    return out


def _write_atomic(path: Path, text: str) -> None:
    """Whole or not at all: a kill mid-write leaves the old record (or none), never half of one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise HarnessError(f"cannot write the run record {path}: {exc.strerror or exc}") from exc


def export_runs(client: Any, sweep: str, out_dir: str | os.PathLike[str],
                echo: Callable[[str], None] = lambda _: None) -> list[Path]:
    """Each FINISHED parent run of ``sweep`` (the newest per job key) as ``out_dir/<run_key>.json``; a file that
    already holds the same run is left as it is. Returns the files written."""
    from harness.sweep import find_runs
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HarnessError(f"cannot write run records to {out}: {exc.strerror or exc}; give a writable folder") from exc
    written = []
    for key, run in sorted(find_runs(client, sweep).items()):
        if run.info.status != "FINISHED":
            continue
        path = out / f"{key or run.info.run_id}.json"
        if path.is_file() and _kept_id(path) == _original_id({"run_id": run.info.run_id, "tags": run.data.tags}):
            continue
        exp = client.get_experiment(run.info.experiment_id).name
        rec = {"format": FORMAT, "experiment": exp, "sweep": sweep, "run_key": key, "run": run_record(client, run)}
        _write_atomic(path, json.dumps(rec, separators=(",", ":")) + "\n")
        written.append(path)
        echo(f"exported {run.data.tags.get('method', '?')} seed {run.data.tags.get('seed', '?')} "
             f"({run.info.run_id}) to {path}")
    return written


def _kept_id(path: Path) -> str | None:
    """The original run id of the record in ``path``; None when it is not a readable record (then rewritten)."""
    try:
        return _original_id(read_record(path)["run"])
    except (HarnessError, KeyError):
        return None


def _original_id(run: dict[str, Any]) -> str:
    """The id a run was first made under: its own, or the one its import recorded."""
    return run.get("tags", {}).get(ARCHIVE_TAG) or run["run_id"]


def read_record(path: Path) -> dict[str, Any]:
    """A record written by :func:`export_runs`, checked whole (a HarnessError names what is wrong)."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HarnessError(f"{path} is not a run record (a JSON file written by `runs export`): {exc}") from exc
    if not isinstance(rec, dict) or rec.get("format") != FORMAT or not isinstance(rec.get("run"), dict):
        raise HarnessError(f"{path} is not a run record of format {FORMAT} (written by `runs export`); "
                           f"found keys {sorted(rec) if isinstance(rec, dict) else type(rec).__name__}")
    if not isinstance(rec.get("experiment"), str) or not rec["experiment"]:
        raise HarnessError(f"{path}: the record names no experiment")
    _check_run(rec["run"], path, "run")
    return rec


_ENDED = ("FINISHED", "FAILED", "KILLED")


def _check_run(run: Any, path: Path, where: str) -> None:
    """A record's run as ``run_record`` writes it, or a HarnessError naming the file and the part that is wrong."""
    def bad(what: str) -> HarnessError:
        return HarnessError(f"{path}: {where}: {what} (a record written by `runs export` has it)")
    if not isinstance(run, dict):
        raise bad("not a run")
    rid = run.get("run_id")
    if not isinstance(rid, str) or not rid or not all(ch.isalnum() or ch in "-_" for ch in rid):
        raise bad(f"run_id {rid!r} is not a run id")
    if run.get("status") not in _ENDED:
        raise bad(f"status {run.get('status')!r} is not one of {', '.join(_ENDED)}")
    if not isinstance(run.get("start_time"), int):
        raise bad("no start_time (ms)")
    for part in ("params", "tags", "artifacts"):
        d = run.get(part, {})
        if not isinstance(d, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in d.items()):
            raise bad(f"{part} must map names to strings")
    tag = run.get("tags", {}).get(ARCHIVE_TAG)
    if tag is not None and not all(ch.isalnum() or ch in "-_" for ch in tag):
        raise bad(f"tag {ARCHIVE_TAG}={tag!r} is not a run id")
    metrics = run.get("metrics")
    if not isinstance(metrics, dict):
        raise bad("no metrics")
    for key, hist in metrics.items():
        if not isinstance(hist, list) or not all(isinstance(h, list) and len(h) == 3 and isinstance(h[0], int)
                                                 and isinstance(h[1], int) and isinstance(h[2], (int, float))
                                                 for h in hist):
            raise bad(f"metric {key!r} is not a list of [step, timestamp, value]")
    kids = run.get("children", [])
    if not isinstance(kids, list):
        raise bad("children must be a list of runs")
    for i, kid in enumerate(kids):
        _check_run(kid, path, f"{where}.children[{i}]")


def _known(client: Any, exp_id: str, original: str) -> bool:
    """Whether the store holds the run ``original`` already: itself, or an import of it."""
    from mlflow.exceptions import MlflowException
    try:
        client.get_run(original)
        return True
    except MlflowException:   # RESOURCE_DOES_NOT_EXIST
        pass
    return bool(client.search_runs([exp_id], f"tags.{ARCHIVE_TAG} = '{original}'", max_results=1))


def _create(client: Any, exp_id: str, run: dict[str, Any], parent: str | None) -> str:
    tags = {k: v for k, v in run.get("tags", {}).items() if k != "mlflow.parentRunId"}
    tags[ARCHIVE_TAG] = _original_id(run)
    if parent:
        tags["mlflow.parentRunId"] = parent
    rid = client.create_run(exp_id, start_time=run["start_time"], tags=tags, run_name=run.get("run_name")).info.run_id
    try:
        _fill(client, exp_id, rid, run)
    except BaseException:   # no half-imported run left RUNNING: the next import starts it again
        for kid in client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{rid}'", max_results=10_000):
            client.delete_run(kid.info.run_id)
        client.delete_run(rid)
        raise
    return rid


def _fill(client: Any, exp_id: str, rid: str, run: dict[str, Any]) -> None:
    from mlflow.entities import Metric, Param
    params = [Param(k, v) for k, v in run.get("params", {}).items()]
    for i in range(0, len(params), 100):
        client.log_batch(rid, params=params[i:i + 100])
    metrics = [Metric(k, v, ts, step) for k, hist in run["metrics"].items() for step, ts, v in hist]
    for i in range(0, len(metrics), _BATCH):
        client.log_batch(rid, metrics=metrics[i:i + _BATCH])
    for path, text in run.get("artifacts", {}).items():
        client.log_text(rid, text, path)
    for child in run.get("children", []):
        _create(client, exp_id, child, rid)
    client.set_terminated(rid, run["status"], end_time=run.get("end_time"))


def import_runs(client: Any, paths: list[str | os.PathLike[str]],
                echo: Callable[[str], None] = lambda _: None) -> tuple[int, int]:
    """Put the records in ``paths`` (files, or folders of ``*.json`` records) into the store, each as a new run
    in its experiment (created if missing); records whose run the store holds already are skipped. Every record
    is read and checked before the first is imported. Returns (imported, skipped)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.glob("*.json"))
        elif p.is_file():
            files.append(p)
        else:
            raise HarnessError(f"{p}: no such file or folder of run records")
    records = [(f, read_record(f)) for f in files]
    imported = skipped = 0
    for f, rec in records:
        exp = client.get_experiment_by_name(rec["experiment"])
        exp_id = exp.experiment_id if exp else client.create_experiment(rec["experiment"])
        if _known(client, exp_id, _original_id(rec["run"])):
            skipped += 1
            continue
        rid = _create(client, exp_id, rec["run"], None)
        imported += 1
        echo(f"imported {f.name} as run {rid} (experiment {rec['experiment']!r})")
    return imported, skipped


def keep_records(client: Any, sweep: str, folder: str | os.PathLike[str],
                 echo: Callable[[str], None] = print) -> Callable[[Any], None]:
    """A sweep that keeps its runs as records in ``folder``: the records there are imported into the store now
    (so the sweep skips their jobs), and the returned hook (``run_sweep``'s ``on_result``) exports each run as it
    finishes. An export that fails is said and left to the next one: the sweep goes on."""
    import threading
    folder, lock = Path(folder), threading.Lock()
    if folder.is_dir():
        n, _ = import_runs(client, [folder])
        if n:
            echo(f"{n} finished run(s) of {folder} imported into the store: their jobs are skipped")

    def exported(result: Any) -> None:
        if result.status != "FINISHED":
            return
        with lock:     # the local backend ends jobs on several threads
            try:
                export_runs(client, sweep, folder, echo)
            except Exception as exc:
                echo(f"  export of finished runs to {folder} failed ({exc}); the next finished run retries it")
    return exported
