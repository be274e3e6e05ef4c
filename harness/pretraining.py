"""The pre-training job (``cli.py pretrain``): GSA's world-model pre-training run, in the one run lifecycle.

The method's part (config, :class:`methods.gsa.pretrain.Trainer`, loading the result) lives in
``methods/gsa/pretrain.py``; this module opens and resumes the MLflow run and the run folder around it, as
the stream runner does for ``run-stream`` (``harness/lifecycle.py``): everything is validated before the run
exists, the first checkpoint exists before the run id is printed, an error ends the run FAILED with its
resume hint, one process writes a run at a time, and a FINISHED run is continued only to extend its budget.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

from harness import checkpoint
from harness.errors import HarnessError
from harness.lifecycle import RunLock, Terminated, check_writable_dir, guarded, sigterm_checkpoints
from harness.offline import open_dataset
from harness.provenance import git_commit, machine_tags, resolve_device
from harness.reporting import MlflowReporter, flatten
from methods.gsa.pretrain import (
    CHECKPOINT_FILE,
    EXPERIMENT,
    PRETRAIN_FILE,
    WORLD_MODEL_FILE,
    PretrainConfig,
    PretrainResult,
    Trainer,
    config_from_dict,
    validate_config,
)

__all__ = ["pretrain", "resume_pretrain"]


def _data_ref(data: str | Path) -> str:
    """How a run names its dataset: an absolute path, or ``minari:ID`` for a Minari dataset."""
    from harness.offline.minari import is_minari_ref
    return str(data) if is_minari_ref(data) else str(Path(data).resolve())


def _hint(out_dir: Path) -> str:
    return f"Continue it with: python cli.py pretrain --resume {out_dir}"


def pretrain(data: str | Path, cfg: PretrainConfig, *, preset: str = "paper", out: str | Path | None = None,
             runs_dir: str | Path = "runs", obs_keys: list[str] | None = None, action_pad_dim: int | None = None,
             seed: int = 0, device: str = "auto", threads: int = 0, echo: Callable[[str], None] = print,
             reporter: MlflowReporter | None = None) -> PretrainResult:
    """Pre-train a world model on the dataset at ``data`` (either layout, ``harness.offline``)."""
    import torch
    cfg = validate_config(cfg)
    dev = resolve_device(device)
    if out is not None and (Path(out) / PRETRAIN_FILE).exists():
        raise HarnessError(f"{out} already holds a pre-training run; continue it with --resume {out}")
    check_writable_dir(out if out is not None else runs_dir, "--out" if out is not None else "--runs-dir")
    # Errors now, before any run is made; damage is reported by the trainer, which reads the data.
    with open_dataset(data, obs_keys, action_pad_dim=action_pad_dim, on_damage=lambda line: None) as ds:
        summary, fingerprint, fmt = ds.summary(), ds.fingerprint(), ds.format
        content = ds.content_digest()   # the same data collected again give the same digest (uids do not)
        keys, pad = list(ds.obs_keys), ds.action_pad_dim
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rep = reporter or MlflowReporter()
    data_ref = _data_ref(data)
    tags = {"kind": "pretrain", "preset": preset, "dataset_path": data_ref, "seed": str(seed),
            "obs_keys": ",".join(keys), "git_commit": git_commit(),
            "dataset_sha256": content, **machine_tags()}
    params = flatten({"pretrain": dataclasses.asdict(cfg),
                      "data": {"path": data_ref, "format": fmt, "episodes": summary["episodes"],
                               "stored_steps": summary["stored_steps"], "embodiments": ",".join(summary["embodiments"]),
                               "action_pad_dim": pad, "obs_keys": ",".join(keys)},
                      "run": {"seed": seed, "device": dev, "threads": threads, "preset": preset}})
    run_id = rep.start(EXPERIMENT, f"{data_ref.rstrip('/').rsplit('/', 1)[-1]}-{preset}", tags, params)
    out_dir = (Path(out) if out is not None else Path(runs_dir) / run_id).resolve()
    lock: RunLock | None = None
    try:
        with guarded(rep, lambda: _hint(out_dir), echo):
            out_dir.mkdir(parents=True, exist_ok=True)
            lock = RunLock(out_dir, run_id).acquire()
            info = {"data": data_ref, "obs_keys": keys,
                    "action_pad_dim": action_pad_dim if fmt in ("ncrl", "minari") else None,
                    "dataset_fingerprint": fingerprint, "dataset_sha256": content, "seed": seed, "device": dev,
                    "threads": threads, "preset": preset, "run_id": run_id, "config": dataclasses.asdict(cfg)}
            checkpoint.write_text_atomic(out_dir / PRETRAIN_FILE, json.dumps(info, indent=1))
            rep.set_tags({"pretrain_dir": str(out_dir), "checkpoint_dir": str(out_dir)})
            rep.log_json(summary, "dataset_summary.json")
            rep.log_json(info, PRETRAIN_FILE)
            trainer = Trainer(cfg, info, out_dir, rep, echo)
            trainer.save()   # the first checkpoint exists before the run id is printed
            echo(f"MLflow run {run_id} (experiment '{EXPERIMENT}'); pre-training into {out_dir}")
            per_emb = ", ".join(f"{k} ({v['episodes']})" for k, v in summary["embodiments"].items())
            echo(f"data: {summary['episodes']} episodes, {summary['stored_steps']:,} steps of {per_emb}")
            return _train(trainer, info, out_dir, rep, echo)
    finally:
        if lock is not None:
            lock.release()


def _train(trainer: Trainer, info: dict[str, Any], out_dir: Path, rep: MlflowReporter,
           echo: Callable[[str], None]) -> PretrainResult:
    with sigterm_checkpoints() as stop_requested:   # SIGTERM: a checkpoint after the current update, then KILLED
        metrics = trainer.train(stop_requested)
        if getattr(trainer, "stopped", False):
            raise Terminated(f"signal 15; a checkpoint was saved at gradient update {trainer.step}")
    rep.log_artifact(out_dir / WORLD_MODEL_FILE, "model")
    rep.close("FINISHED")
    echo(f"done: {trainer.step} gradient updates; world model in {out_dir / WORLD_MODEL_FILE}")
    return PretrainResult(info["run_id"], out_dir, trainer.step, metrics)


def _pretrain_dir(target: str, rep: MlflowReporter) -> Path:
    out_dir = Path(target)
    if (out_dir / PRETRAIN_FILE).is_file():
        return out_dir
    try:
        run = rep.client.get_run(target)
    except Exception:
        raise HarnessError(f"--resume {target!r}: neither a pre-training directory (with {PRETRAIN_FILE}) "
                           f"nor an MLflow run id in {rep.uri}") from None
    if "pretrain_dir" not in run.data.tags:
        raise HarnessError(f"MLflow run {target!r} is not a pre-training run")
    out_dir = Path(run.data.tags["pretrain_dir"])
    if not (out_dir / PRETRAIN_FILE).is_file():
        raise HarnessError(f"run {target!r}: missing {out_dir / PRETRAIN_FILE}; was the directory moved?")
    return out_dir


def resume_pretrain(target: str, *, grad_updates: int | None = None, threads: int | None = None,
                    device: str | None = None, echo: Callable[[str], None] = print,
                    reporter: MlflowReporter | None = None) -> PretrainResult:
    """Continue a pre-training run: ``target`` is its directory or its MLflow run id.
    ``grad_updates`` may extend the budget (also of a FINISHED run); ``threads`` replaces its torch thread count;
    ``device`` the device it trained on (a run killed on a GPU node continues on a CPU one with ``cpu``)."""
    import torch

    from methods.backbone.checkpoint import load
    rep = reporter or MlflowReporter()
    out_dir = _pretrain_dir(target, rep)
    try:
        info = json.loads((out_dir / PRETRAIN_FILE).read_text())
        cfg = config_from_dict(info["config"])
    except (ValueError, TypeError, KeyError) as exc:
        raise HarnessError(f"{out_dir / PRETRAIN_FILE} is damaged ({type(exc).__name__}: {exc})") from None
    if grad_updates is not None:
        if grad_updates < 1:
            raise HarnessError(f"--steps must be >= 1, got {grad_updates}")
        cfg = validate_config(dataclasses.replace(cfg, grad_updates=grad_updates))
    started_on = info.get("device", "cpu")
    new_device = resolve_device(device or started_on)   # a clear error now if cuda is asked where there is none
    done = int(load(out_dir / CHECKPOINT_FILE)["grad_updates"])   # a clear error now if missing or corrupt
    if done >= cfg.grad_updates:
        raise HarnessError(f"{out_dir} already finished {done} of {cfg.grad_updates} gradient updates; "
                           "pass --steps N (N > done) to train longer")
    rep.check_resumable(info["run_id"], allow_finished=True)
    with open_dataset(info["data"], info["obs_keys"], action_pad_dim=info.get("action_pad_dim"),
                      on_damage=lambda line: None) as ds:   # the trainer reports damage
        if ds.fingerprint() != info["dataset_fingerprint"]:
            echo(f"note: the dataset at {info['data']} changed since this run started (episodes added or damaged)")
    lock = RunLock(out_dir, info["run_id"]).acquire()
    try:
        rep.resume(info["run_id"], allow_finished=True)   # a finished pre-training may be extended
        with guarded(rep, lambda: _hint(out_dir), echo):
            if threads is not None:
                info["threads"] = int(threads)
            if device is not None and new_device != started_on:
                info["device"] = new_device
                echo(f"continuing on --device {info['device']} (it was started on {started_on})")
                rep.set_tags({f"resumed_on_device.{int(time.time())}": info["device"]})
            if info.get("threads", 0) > 0:
                torch.set_num_threads(info["threads"])
            info["config"] = dataclasses.asdict(cfg)
            checkpoint.write_text_atomic(out_dir / PRETRAIN_FILE, json.dumps(info, indent=1))
            if grad_updates is not None:
                rep.set_tags({"grad_updates_extended_to": str(grad_updates)})
            trainer = Trainer(cfg, info, out_dir, rep, echo)
            trainer.load()
            echo(f"resuming at gradient update {trainer.step} of {cfg.grad_updates}")
            return _train(trainer, info, out_dir, rep, echo)
    finally:
        lock.release()
