"""Retrieval speed: index build time and query latency over 60k trajectories (the paper's dataset size).

Synthetic features at the encoder feature sizes of the backbone presets (tiny, small, paper); the vectors
are random, which does not change the cost of an exact (flat) search. Everything goes through the product
code: ``write_index`` / ``RetrievalIndex.search`` (methods/gsa/retrieval.py), k = 500 (ncrl).

Measured: building (adding the vectors to a faiss IndexFlatL2), writing and loading the index; the latency
of 1 and of 100 queries with faiss's BLAS threshold at 20 (faiss's historical default: 100 queries go
through BLAS), 20000 (anchors.md section 6) and faiss 1.15.1's own default (128000), with 1 and 2 faiss
threads; a query filtered to one embodiment; and the fp16 index. Each figure is the median of --repeats
runs (best in brackets). Other processes on the machine slow these down: the load average is printed.

    python benchmarks/bench_retrieval.py [--n 60000] [--presets tiny,small,paper] [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods.backbone.config import PAPER_MODEL, SMALL_MODEL, TINY_MODEL  # noqa: E402
from methods.gsa.retrieval import RetrievalConfig, RetrievalIndex, new_index, write_index  # noqa: E402

PRESETS = {"tiny": TINY_MODEL, "small": SMALL_MODEL, "paper": PAPER_MODEL}
# The paper's mix: 50k Meta-World (Sawyer) trajectories, 10k DMC over 5 embodiments.
MIX = (("cheetah", 6, 2000), ("hopper", 4, 2000), ("quadruped", 12, 2000), ("sawyer", 4, 50000),
       ("walker", 6, 2000), ("humanoid", 21, 2000))


def feature_dim(cfg) -> int:
    from methods.backbone.nets import ConvEncoder
    return ConvEncoder((3, 64, 64), cfg.cnn_depth, cfg.cnn_stages, cfg.cnn_kernel, False).out_dim


def timed(fn, repeats: int) -> tuple[float, float]:
    fn()   # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), float(np.min(ts))


def bench_dim(name: str, dim: int, n: int, repeats: int, index_type: str, threads_list: list[int]) -> list[dict]:
    import faiss
    scale = n / sum(c for _, _, c in MIX)
    counts = [max(1, int(round(c * scale))) for _, _, c in MIX]
    counts[3] += n - sum(counts)
    rng = np.random.default_rng(0)
    embs, dims, uids = [], [], []
    for (emb, adim, _), c in zip(MIX, counts):
        embs += [emb] * c
        dims += [adim] * c
    uids = [f"{i:032x}" for i in range(n)]
    index = new_index(dim, index_type)
    t_add, chunk = 0.0, 4096
    queries = np.empty((100, dim), np.float32)
    for i in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - i), dim), dtype=np.float32)
        if i == 0:
            queries[:] = x[:100] + 0.01 * rng.standard_normal((100, dim), dtype=np.float32)
        t0 = time.perf_counter()
        index.add(x)
        t_add += time.perf_counter() - t0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_index(Path(tmp) / "index", index, uids=uids, embodiments=embs, tasks=embs, action_dims=dims,
                    lengths=[101] * n, meta={"encoder_fingerprint": "synthetic"})
        t_write = time.perf_counter() - t0
        del index
        t0 = time.perf_counter()
        idx = RetrievalIndex(Path(tmp) / "index")
        t_load = time.perf_counter() - t0
    hits = idx.search(queries[:1], 500, cfg=RetrievalConfig(threads=1))[0]
    assert hits.positions[0] == 0, "the nearest neighbour of a perturbed row 0 must be row 0"
    base = dict(preset=name, dim=dim, n=n, index=index_type, index_mb=n * dim * (4 if index_type == "flat" else 2) / 1e6,
                add_s=t_add, write_s=t_write, load_s=t_load)
    print(f"\n{name}: {n:,} x {dim}-d {index_type} index ({base['index_mb']:,.0f} MB): add {t_add:.2f} s, "
          f"write {t_write:.2f} s, load {t_load:.2f} s", flush=True)
    lib_default = faiss.cvar.distance_compute_blas_threshold
    for threads in threads_list:
        for thr in (20, 20_000, lib_default):
            cfg = RetrievalConfig(blas_threshold=thr, threads=threads)
            q1 = timed(lambda cfg=cfg: idx.search(queries[:1], 500, cfg=cfg), repeats)
            q100 = timed(lambda cfg=cfg: idx.search(queries, 500, cfg=cfg), max(2, repeats // 2))
            f1 = timed(lambda cfg=cfg: idx.search(queries[:1], 500, embodiment="walker", cfg=cfg), repeats)
            row = base | dict(threads=threads, blas_threshold=thr, q1_ms=1e3 * q1[0], q1_best_ms=1e3 * q1[1],
                              q100_ms=1e3 * q100[0], q100_best_ms=1e3 * q100[1], q1_walker_ms=1e3 * f1[0])
            rows.append(row)
            print(f"  threads {threads}, blas threshold {thr:>6}: 1 query {row['q1_ms']:7.1f} ms "
                  f"[{row['q1_best_ms']:.1f}], 100 queries {row['q100_ms']:8.1f} ms [{row['q100_best_ms']:.1f}], "
                  f"1 query filtered to walker {row['q1_walker_ms']:6.1f} ms", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60_000)
    ap.add_argument("--presets", default="tiny,small,paper")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--fp16", action="store_true", help="Also measure the fp16 index.")
    ap.add_argument("--quick", action="store_true", help="tiny preset, 1 thread, 3 repeats")
    args = ap.parse_args()
    presets = ["tiny"] if args.quick else args.presets.split(",")
    threads = [1] if args.quick else [int(t) for t in args.threads.split(",")]
    repeats = 3 if args.quick else args.repeats
    print(f"faiss retrieval benchmark: load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    for name in presets:
        dim = feature_dim(PRESETS[name])
        bench_dim(name, dim, args.n, repeats, "flat", threads)
        if args.fp16:
            bench_dim(name, dim, args.n, repeats, "fp16", threads)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
