"""Experience retrieval (GSA Section 3.3, Eq. 4; Algorithm 1 "Experience Retrieval").

Building: the pre-trained encoder e_theta embeds the FIRST observation of every offline trajectory; the
features go into a faiss ``IndexFlatL2`` (ncrl's choice: exact L2) stored next to the checkpoint, in
``<pretrain dir>/index/``:

    index.faiss        the faiss index; vector i is trajectory i of trajectories.npz
    trajectories.npz   uid, embodiment, task, action_dim, length per vector (sorted by embodiment)
    index.json         feature dim, encoder fingerprint, dataset path and fingerprint, embodiment ranges

Querying: embed an observation (the online env's reset observation) and return the k nearest trajectories,
D = ||e(o_on) - e(o_off)||_2. Filtering keeps one embodiment (metadata: walker and cheetah are told apart,
unlike ncrl's action-dim filter) and/or the trajectories whose action mask matches (ncrl's rule).

The encoder fingerprint (a hash of its weights) is stored with the index; a query through a world model
whose encoder differs is refused, since its features live in another space.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from harness.errors import HarnessError
from methods.base import ranged

INDEX_DIR = "index"
INDEX_FORMAT = "gsa-retrieval"
INDEX_VERSION = 1
INDEX_TYPES = ("flat", "fp16")


@dataclass(frozen=True)
class RetrievalConfig:
    k: int = ranged(500, ge=1, le=1_000_000)  # ncrl: keep the 500 nearest trajectories
    # ncrl: faiss IndexFlatL2 (exact). "fp16": half the memory and scan, ~exact
    index_type: str = ranged("flat", one_of=("flat", "fp16"))
    # faiss.cvar.distance_compute_blas_threshold: queries below it use the SIMD scan instead of BLAS (anchors.md
    # section 6: 7x faster for 100 queries with faiss's old default of 20; 1.15.1's default is 128000)
    blas_threshold: int = ranged(20_000, ge=0, le=2**31 - 1)
    # faiss OpenMP threads (0: faiss's default, all cores). 1: retrieval runs beside training, and a second thread
    # pool oversubscribes the cores (benchmarks/bench_retrieval.py: 2 threads were 3-4x slower here)
    threads: int = ranged(1, ge=0, le=1024)


def encoder_fingerprint(wm: Any) -> str:
    """A hash of the encoder weights: an index is only valid for features of the same encoder."""
    h = hashlib.sha256()
    for name, tensor in sorted(wm.encoders.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def embed(wm: Any, obs: dict[str, np.ndarray], batch: int = 256) -> np.ndarray:
    """Encoder features e_theta(o) (N, E) float32 for observations (N, ...) of the model's keys."""
    import torch
    keys = list(wm.obs_shapes)
    missing = [k for k in keys if k not in obs]
    if missing:
        raise HarnessError(f"observation lacks {missing}: the world model encodes {keys}")
    n = len(obs[keys[0]])
    out = np.empty((n, wm.embed_dim), np.float32)
    with torch.inference_mode():
        for i in range(0, n, batch):
            part = {k: torch.as_tensor(np.ascontiguousarray(obs[k][i:i + batch]), device=wm.device) for k in keys}
            out[i:i + batch] = wm.encode(part).float().cpu().numpy()
    return out


@contextlib.contextmanager
def faiss_settings(blas_threshold: int | None, threads: int) -> Iterator[None]:
    """Set faiss's BLAS threshold and thread count for a block, then restore them."""
    import faiss
    old_thr = faiss.cvar.distance_compute_blas_threshold
    old_threads = faiss.omp_get_max_threads()
    if blas_threshold is not None:
        faiss.cvar.distance_compute_blas_threshold = int(blas_threshold)
    if threads > 0:
        faiss.omp_set_num_threads(int(threads))
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = old_thr
        faiss.omp_set_num_threads(old_threads)


def new_index(dim: int, index_type: str) -> Any:
    import faiss
    if index_type == "flat":
        return faiss.IndexFlatL2(dim)
    if index_type == "fp16":
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2)
    raise HarnessError(f"unknown index type {index_type!r}; valid: {', '.join(INDEX_TYPES)}")


# ============================================================================ building

def build_index(pretrain_dir: str | Path, data: str | Path | None = None, *, index_type: str = "flat",
                batch: int = 256, device: str = "cpu", echo: Callable[[str], None] = print) -> Path:
    """Embed the first frame of every trajectory of the dataset (default: the one the model was pre-trained
    on) with the pre-trained encoder and write the index into ``<pretrain_dir>/index/``."""
    from tqdm import tqdm

    from harness.offline import MANIFEST_FILE, open_dataset
    from methods.gsa.pretrain import PRETRAIN_FILE, load_pretrained
    pdir = Path(pretrain_dir)
    if not pdir.is_dir():
        raise HarnessError(f"pre-training directory {pdir} does not exist")
    if index_type not in INDEX_TYPES:
        raise HarnessError(f"unknown index type {index_type!r}; valid: {', '.join(INDEX_TYPES)}")
    wm, payload = load_pretrained(pdir, device)
    info = json.loads((pdir / PRETRAIN_FILE).read_text()) if (pdir / PRETRAIN_FILE).is_file() else {}
    data = data or payload.get("dataset") or info.get("data")
    if not data:
        raise HarnessError(f"{pdir} does not say which dataset it was trained on; pass --data DIR")
    ncrl = not (Path(data) / MANIFEST_FILE).exists()   # ncrl files hold native actions: pad them as the model does
    ds = open_dataset(data, list(wm.obs_shapes), action_pad_dim=int(wm.action_dim) if ncrl else None)
    if ds.action_pad_dim != wm.action_dim:
        raise HarnessError(f"dataset {data} pads actions to {ds.action_pad_dim}, the world model to {wm.action_dim}")
    t0 = time.perf_counter()
    eps = {int(i): ds.meta(int(i)) for i in ds.episode_ids}
    ids = sorted(eps, key=lambda i: (eps[i].embodiment, i))   # embodiments contiguous
    index = new_index(wm.embed_dim, index_type)
    kept: list[int] = []
    bar = tqdm(total=len(ids), unit="trajectory", desc="embedding first frames", disable=None)
    for i in range(0, len(ids), batch):
        obs, ok = ds.first_observations(ids[i:i + batch])
        if len(ok):
            index.add(embed(wm, obs, batch))
            kept.extend(ok.tolist())
        bar.update(len(ids[i:i + batch]))
    bar.close()
    if not kept:
        raise HarnessError(f"no readable trajectory in {data} to index")
    meta = write_index(pdir / INDEX_DIR, index, uids=[eps[i].uid for i in kept],
                       embodiments=[eps[i].embodiment for i in kept], tasks=[eps[i].task for i in kept],
                       action_dims=[eps[i].action_dim for i in kept], lengths=[eps[i].length for i in kept],
                       meta={"obs_keys": list(wm.obs_shapes), "encoder_fingerprint": encoder_fingerprint(wm),
                             "world_model": str((pdir / "world_model.pt").resolve()),
                             "grad_updates": payload.get("grad_updates"), "dataset": str(Path(data).resolve()),
                             "dataset_fingerprint": ds.fingerprint(), "skipped_damaged": len(ids) - len(kept),
                             "build_seconds": time.perf_counter() - t0})
    final, ranges = pdir / INDEX_DIR, meta["embodiment_ranges"]
    ds.close()
    echo(f"indexed {len(kept)} trajectories ({', '.join(f'{k}: {v[1] - v[0]}' for k, v in ranges.items())}) "
         f"with {meta['feature_dim']}-d features in {meta['build_seconds']:.1f} s -> {final}")
    return final


def write_index(final: Path, index: Any, *, uids: Sequence[str], embodiments: Sequence[str], tasks: Sequence[str],
                action_dims: Sequence[int], lengths: Sequence[int], meta: dict[str, Any]) -> dict[str, Any]:
    """Write an index directory atomically (``final.tmp`` renamed into place); rows must be sorted by embodiment."""
    import faiss
    ranges: dict[str, list[int]] = {}
    for j, e in enumerate(embodiments):
        if e in ranges and ranges[e][1] != j:
            raise ValueError(f"index rows are not grouped by embodiment ({e} appears twice)")
        ranges.setdefault(e, [j, j + 1])[1] = j + 1
    index_type = "flat" if isinstance(index, faiss.IndexFlatL2) else "fp16"
    meta = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "index_type": index_type, "metric": "L2",
            "feature_dim": int(index.d), "ntotal": int(index.ntotal), **meta, "embodiment_ranges": ranges,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    faiss.write_index(index, str(tmp / "index.faiss"))
    np.savez(tmp / "trajectories.npz", uid=np.array(uids), embodiment=np.array(embodiments), task=np.array(tasks),
             action_dim=np.array(action_dims, np.int64), length=np.array(lengths, np.int64))
    (tmp / "index.json").write_text(json.dumps(meta, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return meta


# ============================================================================ querying

@dataclass
class Neighbours:
    """The k nearest trajectories of one query, nearest first."""
    uids: list[str]
    distances: np.ndarray      # ||e(o_query) - e(o_first)||_2 (Eq. 4)
    embodiments: list[str]
    tasks: list[str]
    positions: np.ndarray      # rows of the index


class RetrievalIndex:
    """The stored index: faiss vectors plus per-trajectory metadata."""

    def __init__(self, directory: str | Path):
        import faiss
        d = Path(directory)
        if d.is_dir() and (d / INDEX_DIR / "index.json").is_file():
            d = d / INDEX_DIR
        meta_path = d / "index.json"
        if not meta_path.is_file():
            raise HarnessError(f"no retrieval index in {directory}: build it with `cli.py build-index {directory}`")
        try:
            self.meta = json.loads(meta_path.read_text())
            if self.meta.get("format") != INDEX_FORMAT or self.meta.get("version") != INDEX_VERSION:
                raise ValueError(f"format {self.meta.get('format')} v{self.meta.get('version')}")
            self.index = faiss.read_index(str(d / "index.faiss"))
            with np.load(d / "trajectories.npz", allow_pickle=False) as f:
                self.uids = f["uid"]
                self.embodiments = f["embodiment"]
                self.tasks = f["task"]
                self.action_dims = f["action_dim"]
        except Exception as exc:
            raise HarnessError(f"retrieval index {d} is unreadable ({type(exc).__name__}: {exc}); "
                               "rebuild it with `cli.py build-index`") from None
        if self.index.ntotal != len(self.uids) or self.index.d != self.meta["feature_dim"]:
            raise HarnessError(f"retrieval index {d} is inconsistent ({self.index.ntotal} vectors of dim {self.index.d}, "
                               f"{len(self.uids)} trajectories, feature dim {self.meta['feature_dim']}); rebuild it")
        self.directory = d
        self.ranges = {k: tuple(v) for k, v in self.meta["embodiment_ranges"].items()}

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def check_encoder(self, fingerprint: str, dim: int) -> None:
        if dim != self.dim:
            raise HarnessError(f"index/encoder mismatch: the index in {self.directory} holds {self.dim}-d features, "
                               f"this encoder makes {dim}-d ones; rebuild it with `cli.py build-index`")
        if fingerprint != self.meta["encoder_fingerprint"]:
            raise HarnessError(f"index/encoder mismatch: the index in {self.directory} was built with encoder "
                               f"{self.meta['encoder_fingerprint']}, this world model's encoder is {fingerprint} "
                               f"(trained further or another checkpoint); rebuild it with `cli.py build-index`")

    def allowed(self, embodiment: str | Sequence[str] | None = None,
                action_mask: np.ndarray | None = None) -> tuple[int, int] | np.ndarray | None:
        """The rows a query may return: a (lo, hi) range, an id array, or None for all."""
        rows: tuple[int, int] | np.ndarray | None = None
        if embodiment is not None:
            wanted = [embodiment] if isinstance(embodiment, str) else list(embodiment)
            unknown = [e for e in wanted if e not in self.ranges]
            if unknown:
                raise HarnessError(f"no trajectory of embodiment {', '.join(unknown)} in the index; "
                                   f"embodiments there: {', '.join(sorted(self.ranges))}")
            if len(wanted) == 1:
                rows = self.ranges[wanted[0]]
            else:
                rows = np.concatenate([np.arange(*self.ranges[e]) for e in wanted])
        if action_mask is not None:
            mask = np.asarray(action_mask).reshape(-1) > 0
            dim = int(mask.sum())
            if not mask[:dim].all():
                raise HarnessError(f"action mask {mask.astype(int).tolist()} is not a prefix mask")
            ids = np.flatnonzero(self.action_dims == dim)
            if isinstance(rows, tuple):
                ids = ids[(ids >= rows[0]) & (ids < rows[1])]
            elif rows is not None:
                ids = np.intersect1d(ids, rows)
            if not len(ids):
                what = f"embodiment {embodiment} with " if embodiment is not None else ""
                raise HarnessError(f"no trajectory of {what}action dim {dim} in the index; action dims there: "
                                   f"{sorted(set(self.action_dims.tolist()))}")
            rows = (int(ids[0]), int(ids[-1]) + 1) if ids[-1] - ids[0] + 1 == len(ids) else ids
        return rows

    def search(self, features: np.ndarray, k: int, *, embodiment: str | Sequence[str] | None = None,
               action_mask: np.ndarray | None = None, cfg: RetrievalConfig = RetrievalConfig()) -> list[Neighbours]:
        """The ``k`` nearest trajectories of each feature row (N, d), within the filter."""
        import faiss
        x = np.ascontiguousarray(np.asarray(features, np.float32).reshape(-1, self.dim))
        rows = self.allowed(embodiment, action_mask)
        if rows is None:
            n_allowed, params = len(self), None
        else:
            params = faiss.SearchParameters()
            if isinstance(rows, tuple):
                n_allowed = rows[1] - rows[0]
                params.sel = faiss.IDSelectorRange(rows[0], rows[1])
            else:
                n_allowed = len(rows)
                params.sel = faiss.IDSelectorBatch(np.ascontiguousarray(rows, np.int64))
        k_eff = max(1, min(int(k), n_allowed))
        with faiss_settings(cfg.blas_threshold, cfg.threads):
            dist, idx = self.index.search(x, k_eff, params=params)
        out = []
        for d, i in zip(dist, idx):
            keep = i >= 0
            i, d = i[keep], d[keep]
            out.append(Neighbours(uids=self.uids[i].tolist(), distances=np.sqrt(np.maximum(d, 0.0)),
                                  embodiments=self.embodiments[i].tolist(), tasks=self.tasks[i].tolist(), positions=i))
        return out


class Retriever:
    """The pre-trained encoder and its index: observation in, nearest offline trajectories out."""

    def __init__(self, pretrain_dir: str | Path, *, device: str = "cpu", cfg: RetrievalConfig = RetrievalConfig(),
                 world_model: Any | None = None):
        from methods.gsa.pretrain import load_pretrained
        self.cfg = cfg
        self.directory = Path(pretrain_dir)
        self.index = RetrievalIndex(self.directory)
        self.wm = world_model if world_model is not None else load_pretrained(self.directory, device)[0]
        self.index.check_encoder(encoder_fingerprint(self.wm), int(self.wm.embed_dim))

    def features(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """e_theta for one observation (unbatched, as ``env.reset()`` returns it) or a batch (N, ...)."""
        keys = list(self.wm.obs_shapes)
        batched = {}
        for k in keys:
            if k not in obs:
                raise HarnessError(f"observation lacks {k!r}: the pre-trained encoder takes {keys}")
            v = np.asarray(obs[k])
            shape = self.wm.obs_shapes[k]
            if v.shape == shape:
                v = v[None]
            if v.shape[1:] != shape:
                raise HarnessError(f"observation {k!r} has shape {v.shape}; the encoder takes {shape} "
                                   f"(or a batch of them)")
            batched[k] = v
        return embed(self.wm, batched)

    def query(self, obs: dict[str, np.ndarray], k: int | None = None, *, embodiment: str | Sequence[str] | None = None,
              action_mask: np.ndarray | None = None) -> list[Neighbours]:
        """Eq. 4: the ``k`` (default ``cfg.k``) trajectories whose first frames are nearest to ``obs``."""
        return self.index.search(self.features(obs), k or self.cfg.k, embodiment=embodiment,
                                 action_mask=action_mask, cfg=self.cfg)

    def retrieve(self, obs: dict[str, np.ndarray], dataset: Any, k: int | None = None, *,
                 embodiment: str | Sequence[str] | None = None, action_mask: np.ndarray | None = None) -> Any:
        """The retrieved trajectories of ``dataset`` as an :class:`~harness.offline.OfflineDataset` view
        (a SequenceSource for experience rehearsal)."""
        hits = self.query(obs, k, embodiment=embodiment, action_mask=action_mask)[0]
        return dataset.subset(hits.uids)
