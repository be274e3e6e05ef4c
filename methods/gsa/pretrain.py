"""Task-agnostic world-model pre-training on non-curated offline data (GSA Section 3.2, Algorithm 1).

The shared world model (``methods.backbone``) is trained with reconstruction + KL only (Eq. 1: no reward
or continue head), on sequences drawn uniformly from a reward-free dataset of several embodiments, with
actions zero-padded to the dataset's action dim (Section 3.2 (ii)).

A run writes into its directory (default ``runs/<mlflow run id>/``):

    pretrain.json     config, dataset, observation keys, MLflow run id (what ``--resume`` reads)
    checkpoint.pt     the training state (weights, optimiser, step, RNG), replaced atomically
    world_model.pt    the pre-trained weights with their config (``load_pretrained``; what GSA fine-tunes)
    openloop/         open-loop prediction sheets per embodiment (also in MLflow)
    index/            the retrieval index (``methods.gsa.retrieval.build_index``)

The run itself (its MLflow run, folder, lock and resume) is ``harness/pretraining.py``'s: this module is the
method's part (config, the trainer, loading the result) and imports nothing of the drive or of MLflow.

MLflow (experiment ``pretrain``): losses stepped by gradient updates, data-loading and update speed,
open-loop pixel error and images per embodiment, the dataset summary (taken before reading), what reading
met (``data/*`` metrics at each log interval: episodes and steps used and read, damaged parts skipped;
the final report as ``data_damage.json``), and the model as an artifact.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from harness.errors import HarnessError, NonFiniteLossError
from methods.backbone.config import DEBUG_MODEL, SMALL_MODEL, TINY_MODEL, WorldModelConfig
from methods.base import MAX_BATCH, MAX_COUNT, MAX_LENGTH, MethodSpec, check_config, ranged, resolve_config

PRETRAIN_FILE = "pretrain.json"
CHECKPOINT_FILE = "checkpoint.pt"
WORLD_MODEL_FILE = "world_model.pt"
CHECKPOINT_FORMAT = "gsa-pretrain"
CHECKPOINT_VERSION = 1
EXPERIMENT = "pretrain"


@dataclass(frozen=True)
class PretrainConfig:
    model: WorldModelConfig = field(default_factory=WorldModelConfig)  # Table 5 / ncrl (methods/backbone/config.py)
    # Table 5: pretrain steps 200,000 (ncrl: 200k gradient steps)
    grad_updates: int = ranged(200_000, ge=1, le=MAX_COUNT)
    batch_size: int = ranged(16, ge=1, le=MAX_BATCH)  # Table 5: batch size 16 (ncrl's pretrain config uses 32)
    seq_len: int = ranged(64, ge=2, le=MAX_LENGTH)  # Table 5 / ncrl: sequence length 64
    # Table 5: uniform sampling over all windows; "embodiment": equal share each
    balance: str = ranged("uniform", one_of=("uniform", "embodiment"))
    log_every: int = ranged(100, ge=1, le=MAX_COUNT)  # ours: gradient updates between logged (averaged) metrics
    checkpoint_every: int = ranged(5_000, ge=1, le=MAX_COUNT)  # ours: gradient updates between checkpoints
    # ours: gradient updates between open-loop prediction images
    openloop_every: int = ranged(10_000, ge=1, le=MAX_COUNT)
    # < seq_len; DreamerV3's video prediction: 5 observed steps, then open loop
    openloop_context: int = ranged(5, ge=1, le=MAX_LENGTH)
    prefetch: int = ranged(4, ge=1, le=1024)  # ours: batches sampled ahead of training
    prefetch_workers: int = ranged(2, ge=1, le=256)  # ours: threads sampling (and decompressing) batches in parallel


PRESETS: dict[str, dict[str, Any]] = {
    # debug: tests only; seconds per run.
    "debug": dict(model=DEBUG_MODEL, grad_updates=20, batch_size=4, seq_len=8, log_every=5, checkpoint_every=10,
                  openloop_every=10, openloop_context=3),
    # tiny: this 2-core CPU (anchors.md section 6: ~0.8 s per update at 16 x 32).
    "tiny": dict(model=TINY_MODEL, grad_updates=20_000, seq_len=32, log_every=50, checkpoint_every=1_000,
                 openloop_every=2_000),
    # small: DreamerV3 "S" nets, the paper's batch and budget.
    "small": dict(model=SMALL_MODEL),
    "paper": {},
}


def _not_a_stream_method(cfg: Any, ctx: Any) -> Any:
    raise HarnessError("pre-training is run with `cli.py pretrain`, not as a stream method")


SPEC = MethodSpec(PretrainConfig, _not_a_stream_method, presets=PRESETS, default_preset="paper")


def make_config(preset: str | None = None, overrides: dict[str, str] | None = None) -> PretrainConfig:
    """Defaults, then the preset, then ``KEY=VALUE`` overrides (``model.deter=128``), as ``run-stream --set``."""
    cfg = resolve_config(SPEC, "pretrain", preset, overrides)
    return validate_config(cfg)


def validate_config(cfg: PretrainConfig) -> PretrainConfig:
    check_config(cfg, "pretrain")   # every field's range (methods.base.ranged), the model's included
    if not 1 <= cfg.openloop_context < cfg.seq_len:
        raise HarnessError(f"openloop_context must be in 1..seq_len-1 ({cfg.seq_len - 1}), got {cfg.openloop_context}")
    return cfg


def config_from_dict(d: dict[str, Any]) -> PretrainConfig:
    d = dict(d)
    model = WorldModelConfig(**d.pop("model"))
    return PretrainConfig(model=model, **d)


# ============================================================================ loading a pre-trained model

def load_pretrained(path: str | Path, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """The world model saved by a pre-training run (a run directory or its ``world_model.pt``).

    Returns ``(world_model, payload)``; the payload holds ``config``, ``obs_keys``, ``grad_updates``,
    ``dataset`` and the shape ``meta``."""
    from methods.backbone.checkpoint import load, load_world_model
    from methods.backbone.world_model import WorldModel
    p = Path(path)
    file = p / WORLD_MODEL_FILE if p.is_dir() else p
    if not file.is_file():
        hint = f" (a pre-training run writes {WORLD_MODEL_FILE} at its first checkpoint)" if p.is_dir() else ""
        raise HarnessError(f"missing pre-trained world model {file}{hint}")
    payload = load(file)
    if "config" not in payload or "meta" not in payload:
        raise HarnessError(f"{file} is not a pre-trained world model written by `cli.py pretrain`")
    cfg = WorldModelConfig(**payload["config"])
    meta = payload["meta"]
    obs_spec = {k: (tuple(shape), "uint8" if k == "pixels" else "float32") for k, shape in meta["obs"].items()}
    wm = WorldModel(cfg, obs_spec, int(meta["action_dim"]))
    load_world_model(file, wm)
    return wm.to(device).eval(), payload


WEIGHTS_DIGEST_TAG = "pretrained.weights_sha256"   # the run tag that carries weights_digest of its generalist
DATA_DIGEST_TAG = "pretrained.data_sha256"         # ... and the content digest of the data it was pre-trained on


def generalist_tags(path: str | Path) -> dict[str, str]:
    """The tags a run that fine-tunes the pre-trained model at ``path`` records: its weights digest and, when its
    pre-training recorded it (``dataset_sha256`` in pretrain.json), the content digest of its data. Two
    generalists with different weights and the same data digest differ in pre-training, not in data."""
    tags = {WEIGHTS_DIGEST_TAG: weights_digest(path)}
    info = Path(path) / PRETRAIN_FILE
    if info.is_file():
        data = json.loads(info.read_text()).get("dataset_sha256")
        if data:
            tags[DATA_DIGEST_TAG] = str(data)
    return tags


def weights_digest(path: str | Path) -> str:
    """sha256 over the pre-trained world model's weights (names, dtypes, shapes, values in name order): the same
    for the same model whatever file it was saved in. Recorded on the runs that fine-tune it, so runs made on a
    generalist trained again (another machine, a lost one) show whether it is the same model."""
    import hashlib

    import torch

    from methods.backbone.checkpoint import load
    p = Path(path)
    file = p / WORLD_MODEL_FILE if p.is_dir() else p
    if not file.is_file():
        raise HarnessError(f"missing pre-trained world model {file}")
    weights = load(file).get("world_model")
    if not isinstance(weights, dict):
        raise HarnessError(f"{file} is not a pre-trained world model written by `cli.py pretrain`")
    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name]
        assert isinstance(t, torch.Tensor), f"{file}: world_model[{name!r}] is a {type(t).__name__}, not a tensor"
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ============================================================================ open-loop predictions

def openloop(wm: Any, batch: dict[str, np.ndarray], context: int) -> dict[str, np.ndarray]:
    """Observe ``context`` steps, then predict the rest from the recorded actions alone (the prior).

    Returns ``pixels_true`` / ``pixels_pred`` uint8 (B, T, 3, H, W) when the model sees pixels, and the
    per-row mean squared error of the open-loop part: ``mse`` (B,) on pixels in [0, 1] (else on symlog
    proprio)."""
    import torch

    from methods.backbone.nets import symlog
    dev = wm.device
    t = {k: torch.as_tensor(np.ascontiguousarray(v), device=dev) for k, v in batch.items()}
    keys = list(wm.obs_shapes)
    with torch.no_grad():
        post, _ = wm.observe({k: t[k][:, :context] for k in keys}, t["prev_action"][:, :context],
                             t["is_first"][:, :context])
        feats = [wm.features(post)]
        state = {k: v[:, -1] for k, v in post.items()}
        for i in range(context, t["prev_action"].shape[1]):
            state = wm.rssm.img_step(state, t["prev_action"][:, i], sample=False)
            feats.append(wm.features(state)[:, None])
        feat = torch.cat(feats, 1)
        b, n = feat.shape[:2]
        out: dict[str, np.ndarray] = {}
        if "pixels" in keys:
            pred = wm.decoders["pixels"](feat.reshape(b * n, -1)).float().reshape(b, n, *wm.obs_shapes["pixels"])
            pred = (pred + 0.5).clamp(0, 1)
            true = t["pixels"].float() / 255.0
            out["mse"] = (pred[:, context:] - true[:, context:]).pow(2).mean((1, 2, 3, 4)).cpu().numpy()
            out["pixels_pred"] = (pred * 255).round().to(torch.uint8).cpu().numpy()
            out["pixels_true"] = batch["pixels"]
        else:
            pred = wm.decoders["proprio"](feat.reshape(b * n, -1)).float().reshape(b, n, -1)
            target = symlog(t["proprio"].float())
            out["mse"] = (pred[:, context:] - target[:, context:]).pow(2).mean((1, 2)).cpu().numpy()
    return out


def openloop_sheet(true: np.ndarray, pred: np.ndarray, context: int, max_cols: int = 16) -> np.ndarray:
    """One sequence as a PNG-ready sheet: rows truth / prediction / error; a red bar marks open-loop frames."""
    from harness.offline import image_grid
    n = true.shape[0]
    cols = np.unique(np.linspace(0, n - 1, min(n, max_cols)).round().astype(int))
    err = np.abs(true[cols].astype(np.int16) - pred[cols].astype(np.int16)).clip(0, 255).astype(np.uint8)
    pr = pred[cols].copy()
    pr[np.asarray(cols) >= context, 0, :2, :] = 255   # open-loop frames: a red line on top
    pr[np.asarray(cols) >= context, 1:, :2, :] = 0
    return image_grid(np.concatenate([true[cols], pr, err]), ncols=len(cols))


# ============================================================================ training

@dataclass
class PretrainResult:
    run_id: str
    out: Path
    grad_updates: int
    metrics: dict[str, float]


class Trainer:
    """One pre-training run: the model, its optimiser, the data and the MLflow reporter."""

    def __init__(self, cfg: PretrainConfig, info: dict[str, Any], out: Path, rep: Any, echo: Callable[[str], None]):
        import torch

        from harness.offline import open_dataset
        from methods.backbone.nets import Optimizer
        from methods.backbone.world_model import WorldModel
        self.cfg, self.info, self.out, self.rep, self.echo = cfg, info, out, rep, echo
        # Damage met while reading (at opening, or a chunk failing its checksum while sampling) is printed
        # once per damaged part, as one line, and counted in the data/* metrics and data_damage.json.
        self.ds = open_dataset(info["data"], info["obs_keys"], action_pad_dim=info.get("action_pad_dim"),
                               on_damage=lambda line: self.echo(f"  warning: {line}"))
        self.device = torch.device(info["device"])
        self.wm = WorldModel(cfg.model, self.ds.obs_spec, self.ds.action_pad_dim).to(self.device)
        m = cfg.model
        self.opt = Optimizer(self.wm.parameters(), m.lr, m.eps, m.weight_decay, m.grad_clip, name="wm/loss")
        self.step = 0
        self.stopped = False          # train() stopped early on request (SIGTERM), a checkpoint saved
        self.last: dict[str, float] = {}
        self._eval_batches: dict[str, dict[str, np.ndarray]] | None = None

    # -- state
    def save(self) -> None:
        import torch

        from methods.backbone.checkpoint import describe, save, save_world_model
        meta = describe(self.cfg.model.sizes(), self.wm.obs_shapes, self.wm.action_dim)
        save(self.out / CHECKPOINT_FILE, {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "meta": meta,
            "world_model": self.wm.state_dict(), "optimizer": self.opt.state_dict(), "grad_updates": self.step,
            "torch_rng": torch.get_rng_state()})
        save_world_model(self.out / WORLD_MODEL_FILE, self.wm, extra={
            "config": dataclasses.asdict(self.cfg.model), "grad_updates": self.step,
            "obs_keys": list(self.info["obs_keys"]), "dataset": str(self.info["data"]),
            "dataset_fingerprint": self.info["dataset_fingerprint"], "mlflow_run_id": self.info["run_id"]})

    def load(self) -> None:
        import torch

        from methods.backbone.checkpoint import check_compatible, describe, load, load_module
        path = self.out / CHECKPOINT_FILE
        payload = load(path)
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise HarnessError(f"{path} is not a pre-training checkpoint")
        check_compatible(payload["meta"], describe(self.cfg.model.sizes(), self.wm.obs_shapes, self.wm.action_dim),
                         f"pre-training checkpoint {path}")
        load_module(self.wm, payload["world_model"], f"pre-training checkpoint {path}")
        self.opt.load_state_dict(payload["optimizer"])
        self.step = int(payload["grad_updates"])
        torch.set_rng_state(payload["torch_rng"])

    # -- pieces
    def _tensors(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch
        return {k: torch.from_numpy(v).to(self.device, non_blocking=True) for k, v in batch.items()}

    def eval_batches(self) -> dict[str, dict[str, np.ndarray]]:
        """Fixed sequences per embodiment for the open-loop predictions (the same at every evaluation)."""
        if self._eval_batches is None:
            self._eval_batches = {}
            for emb in self.ds.embodiments():
                sub = self.ds.filter(embodiment=emb)
                try:
                    self._eval_batches[emb] = sub.sample(2, self.cfg.seq_len, np.random.default_rng([self.info["seed"], 7]))
                except HarnessError:
                    continue   # no episode of this embodiment is long enough
        return self._eval_batches

    def log_openloop(self) -> dict[str, float]:
        import torch
        # The predictions draw latents: fork the RNG so that training does not depend on when they are made
        # (a resumed run then matches an uninterrupted one exactly).
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return self._log_openloop()

    def _log_openloop(self) -> dict[str, float]:
        import imageio.v2 as imageio
        self.wm.eval()
        metrics: dict[str, float] = {}
        folder = self.out / "openloop"
        folder.mkdir(exist_ok=True)
        for emb, batch in self.eval_batches().items():
            res = openloop(self.wm, batch, self.cfg.openloop_context)
            metrics[f"openloop/{emb}/{'pixels' if 'pixels_pred' in res else 'proprio'}_mse"] = float(res["mse"].mean())
            if "pixels_pred" in res:
                sheet = openloop_sheet(res["pixels_true"][0], res["pixels_pred"][0], self.cfg.openloop_context)
                path = folder / f"{emb}-{self.step:07d}.png"
                imageio.imwrite(path, sheet)
                self.rep.log_artifact(path, "openloop")
        self.wm.train()
        return metrics

    # -- what reading the data met
    def data_metrics(self) -> dict[str, float]:
        """The dataset's live counters (``OfflineDataset.damage_report``) as ``data/*`` metrics."""
        r = self.ds.damage_report()
        return {f"data/{k}": float(r[k]) for k in ("episodes_used", "steps_used", "episodes_read", "steps_read",
                                                   "episodes_skipped", "damaged", "damaged_while_reading")}

    @contextlib.contextmanager
    def data_report(self) -> Iterator[None]:
        """On leaving (also on an error, e.g. too many damaged episodes): the final ``data/*`` metrics and
        ``data_damage.json`` in the run, then the dataset's files are closed."""
        ok = False
        try:
            yield
            ok = True
        finally:
            try:
                report = self.ds.damage_report()
                self.rep.log_metrics(self.data_metrics(), self.step)
                self.rep.log_json(report, "data_damage.json")
                if report["damaged_while_reading"] or report["damaged_at_open"]:
                    self.echo(f"data: {report['episodes_used']} of {report['episodes']} episodes used; "
                              f"{report['damaged']} damaged parts skipped ({report['damaged_while_reading']} found "
                              f"while reading, {report['episodes_skipped']} episodes)")
                self.ds.close()
            except Exception:
                if ok:
                    raise   # else the error that stopped training is the one to see

    # -- the loop
    def train(self, stop_requested: Callable[[], bool] = lambda: False) -> dict[str, float]:
        """Train to ``grad_updates``; when ``stop_requested()`` turns true (a SIGTERM, see
        harness.lifecycle.sigterm_checkpoints), save a checkpoint after the current update and return early
        (``self.stopped``)."""
        import torch

        from harness.offline import Prefetcher
        from methods.backbone.world_model import metrics_to_floats
        cfg = self.cfg
        ds = self.ds

        def sample(rng: np.random.Generator) -> dict[str, np.ndarray]:
            return ds.sample(cfg.batch_size, cfg.seq_len, rng, balance=cfg.balance)

        sums: dict[str, Any] = {}
        count, wait_s, t_last, step_last = 0, 0.0, time.perf_counter(), self.step
        self.wm.train()
        with self.data_report(), Prefetcher(sample, seed=self.info["seed"], start=self.step, depth=cfg.prefetch,
                                            workers=cfg.prefetch_workers) as pf:
            while self.step < cfg.grad_updates:
                batch, waited = pf.next()
                wait_s += waited
                loss, metrics, _ = self.wm.loss(self._tensors(batch), use_reward=False, use_cont=False)
                try:
                    grad_norm = self.opt.step(loss, metrics)["grad_norm"]
                except NonFiniteLossError as exc:
                    raise NonFiniteLossError(f"{exc} at gradient update {self.step + 1} of pre-training; stopped. The "
                                             f"last good checkpoint is {self.out / CHECKPOINT_FILE}") from None
                self.step += 1
                metrics["wm/grad_norm"] = torch.tensor(grad_norm)
                for k, v in metrics.items():
                    sums[k] = sums[k] + v if k in sums else v.clone()
                count += 1
                final = self.step == cfg.grad_updates
                if self.step % cfg.log_every == 0 or final:
                    dt = time.perf_counter() - t_last
                    n = self.step - step_last
                    logged = {f"pretrain/{k.split('/', 1)[-1]}": v / count for k, v in metrics_to_floats(sums).items()}
                    logged |= {"perf/updates_per_s": n / max(dt, 1e-9),
                               "perf/sequences_per_s_trained": n * cfg.batch_size / max(dt, 1e-9),
                               "perf/data_wait_fraction": wait_s / max(dt, 1e-9)}
                    logged |= self.data_metrics()
                    self.rep.log_metrics(logged, self.step)
                    self.last = logged
                    recon = sum(logged.get(f"pretrain/{k}_loss", 0.0) for k in ("pixels", "proprio"))
                    self.echo(f"  update {self.step:>7}/{cfg.grad_updates}: loss {logged['pretrain/loss']:.3f} "
                              f"(recon {recon:.3f}, kl {logged.get('pretrain/kl', float('nan')):.3f}), "
                              f"{logged['perf/updates_per_s']:.2f} updates/s, "
                              f"data wait {100 * logged['perf/data_wait_fraction']:.0f}%")
                    sums, count, wait_s, t_last, step_last = {}, 0, 0.0, time.perf_counter(), self.step
                if self.step % cfg.openloop_every == 0 or final:
                    ol = self.log_openloop()
                    self.rep.log_metrics(ol, self.step)
                    self.last |= ol
                if self.step % cfg.checkpoint_every == 0 or final:
                    self.save()
                elif stop_requested():
                    self.save()
                    self.stopped = True
                    break
        self.rep.flush()
        return self.last
