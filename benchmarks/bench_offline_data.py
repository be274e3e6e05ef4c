"""Offline data: bytes on disk per million stored steps, sequences/s, and memory while pre-training.

1. Real frames: a few episodes collected at paper render quality (walker, cheetah, quadruped with random and
   OU actions; Meta-World reach and assembly with the noisy scripted experts), written with zlib pixel chunks
   and uncompressed. Reported: bytes per million stored steps, per embodiment and overall.
2. Larger datasets made from those real episodes by copying their shard directories (fresh trajectory ids),
   to logical (decompressed) sizes of --sizes GB. Sequences/s (16 x 64, Table 5) sampled single-threaded,
   first after evicting the dataset's files from the page cache (``posix_fadvise(DONTNEED)``, "cold"), then
   warm; the same for the ncrl layout (one .npz per episode, decoded whole).
3. Memory: ``cli.py pretrain`` machinery (``methods.gsa.pretrain.pretrain``) in a child process, debug-size
   model but the paper's batch shape (16 x 64), for --updates updates on each dataset size, with its address
   space capped by ``RLIMIT_AS`` (--limit-gb, like ``ulimit -v``) below the largest dataset's logical size.
   RSS is sampled every 0.2 s; the peak is the kernel's VmHWM.

    python benchmarks/bench_offline_data.py [--sizes 1,4,16] [--updates 200] [--limit-gb 5] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.offline import MANIFEST_FILE, SHARD_FILE, SHARDS_DIR, DatasetWriter, _atomic_write_json, open_dataset  # noqa: E402

BATCH, SEQ = 16, 64   # Table 5


def collect_real(out: Path, quick: bool) -> Path:
    from harness.collect import CollectConfig, collect
    os.environ.setdefault("MUJOCO_GL", "egl")
    tasks = ("walker-walk", "cheetah-run") if quick else ("walker-walk", "cheetah-run", "quadruped-walk", "reach-v3",
                                                          "assembly-v3")
    cfg = CollectConfig(tasks=tasks, episodes=1 if quick else 2, noise=(0.5,), episode_frames=200,
                        render_quality="fast" if quick else "paper", shard_steps=10**9, seed=0)
    t0 = time.perf_counter()
    collect(out, cfg, echo=lambda *_: None, log_mlflow=False)
    print(f"collected real episodes in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def rewrite(src: Path, dest: Path, compression: str, embodiment: str | None = None) -> int:
    ds = open_dataset(src)
    with DatasetWriter(dest, {"pixels": ((3, 64, 64), np.uint8)}, ds.action_pad_dim, compression=compression,
                       shard_steps=10**9) as w:
        for ep in ds.episode_ids:
            m = ds.meta(int(ep))
            if embodiment is not None and m.embodiment != embodiment:
                continue
            e = ds.episode(int(ep))
            w.add_episode({k: e[k] for k in ("pixels", "action", "is_first", "is_last", "is_terminal")},
                          embodiment=m.embodiment, task=m.task, policy=m.policy, noise=m.noise, action_dim=m.action_dim)
    out = open_dataset(dest).summary()
    return int(out["bytes_on_disk"] - (dest / MANIFEST_FILE).stat().st_size), out["stored_steps"]


def sizes_report(real: Path, work: Path) -> dict:
    ds = open_dataset(real)
    res = {}
    for emb in [*ds.embodiments(), None]:
        row = {}
        for comp in ("zlib", "none"):
            d = work / f"size-{emb}-{comp}"
            nbytes, steps = rewrite(real, d, comp, emb)
            row[comp] = nbytes / steps * 1e6
            shutil.rmtree(d)
        res[emb or "all"] = row
        print(f"  {emb or 'all':<10} zlib {row['zlib'] / 1e9:6.2f} GB per million steps, uncompressed "
              f"{row['none'] / 1e9:6.2f} GB  (ratio {row['none'] / row['zlib']:.1f}x)", flush=True)
    return res


def replicate(src: Path, dest: Path, copies: int) -> None:
    """A dataset of ``copies`` copies of ``src``'s shards, each with fresh trajectory ids."""
    (dest / SHARDS_DIR).mkdir(parents=True)
    manifest = json.loads((src / MANIFEST_FILE).read_text())
    shards = sorted(p for p in (src / SHARDS_DIR).iterdir())
    listed = []
    for _ in range(copies):
        for s in shards:
            name = f"shard-{len(listed):06d}"
            shutil.copytree(s, dest / SHARDS_DIR / name)
            info = json.loads((s / SHARD_FILE).read_text())
            info["name"] = name
            for e in info["episodes"]:
                e["uid"], e["source"] = uuid.uuid4().hex, name
            (dest / SHARDS_DIR / name / SHARD_FILE).write_text(json.dumps(info))
            listed.append({"name": name, "episodes": len(info["episodes"]), "stored_steps": info["stored_steps"]})
    manifest["shards"] = listed
    manifest["episodes"] = sum(s["episodes"] for s in listed)
    manifest["stored_steps"] = sum(s["stored_steps"] for s in listed)
    _atomic_write_json(dest / MANIFEST_FILE, manifest)


def evict(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def seqs_per_s(ds, seconds: float) -> float:
    rng = np.random.default_rng(0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        ds.sample(BATCH, SEQ, rng)
        n += BATCH
    return n / (time.perf_counter() - t0)


def prefetched_seqs_per_s(ds, seconds: float, workers: int) -> float:
    from harness.offline import Prefetcher
    n = 0
    with Prefetcher(lambda rng: ds.sample(BATCH, SEQ, rng), seed=0, depth=2 * workers, workers=workers) as pf:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            pf.next()
            n += BATCH
        return n / (time.perf_counter() - t0)


def write_ncrl_copy(src: Path, dest: Path, episodes: int) -> None:
    import datetime
    ds = open_dataset(src)
    ts = datetime.datetime(2024, 5, 1).strftime("%Y%m%dT%H%M%S")
    for i in range(episodes):
        ep = int(ds.episode_ids[i % ds.num_episodes])
        m, e = ds.meta(ep), ds.episode(ep)
        folder = dest / ("metaworld" if m.embodiment == "sawyer" else "dmcontrol") / (
            m.task if m.embodiment == "sawyer" else m.embodiment)
        folder.mkdir(parents=True, exist_ok=True)
        t = len(e["pixels"])
        act = np.zeros((t, m.action_dim), np.float32)
        act[1:] = e["action"][:-1, :m.action_dim]
        np.savez_compressed(folder / f"{ts}-{uuid.uuid4().hex}-{i}-{t - 1}.npz", observation=e["pixels"], action=act,
                            reward=np.zeros((t, 1), np.float32), discount=np.ones((t, 1), np.float32))


# ----------------------------------------------------------------------------- the memory child

def child(data: str, updates: int, limit_gb: float, out: str) -> None:
    if limit_gb > 0:
        lim = int(limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def rss() -> int:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
        return 0

    def watch() -> None:
        t0 = time.perf_counter()
        while not stop.is_set():
            samples.append((time.perf_counter() - t0, rss()))
            time.sleep(0.2)
    threading.Thread(target=watch, daemon=True).start()
    import torch
    torch.set_num_threads(1)
    from harness.pretraining import pretrain
    from methods.gsa.pretrain import make_config
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(out).parent / 'mlflow.db'}"
    cfg = make_config("debug", {"grad_updates": str(updates), "batch_size": str(BATCH), "seq_len": str(SEQ),
                                "log_every": str(max(updates // 4, 1)), "checkpoint_every": str(updates),
                                "openloop_every": str(updates)})
    t0 = time.perf_counter()
    res = pretrain(data, cfg, preset="debug", out=Path(out) / "run", echo=lambda *_: None)
    dt = time.perf_counter() - t0
    stop.set()
    hwm = 0
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            hwm = int(line.split()[1]) * 1024
    vals = [r for _, r in samples]
    q = lambda f: vals[min(int(f * len(vals)), len(vals) - 1)]   # noqa: E731
    print(json.dumps({"peak_rss": hwm, "rss_at_10pct": q(0.1), "rss_at_50pct": q(0.5), "rss_at_end": vals[-1],
                      "seconds": dt, "updates": res.grad_updates,
                      "data_wait_fraction": res.metrics.get("perf/data_wait_fraction"),
                      "updates_per_s": res.metrics.get("perf/updates_per_s")}))


def memory_runs(datasets: list[tuple[float, Path]], updates: int, limit_gb: float, work: Path) -> list[dict]:
    rows = []
    for gb, path in datasets:
        out = work / f"mem-{gb:g}"
        out.mkdir()
        r = subprocess.run([sys.executable, __file__, "--child", str(path), "--updates", str(updates),
                            "--limit-gb", str(limit_gb), "--child-out", str(out)], capture_output=True, text=True,
                           timeout=3600)
        if r.returncode != 0:
            print(r.stderr[-3000:])
            raise SystemExit(f"memory child failed on the {gb} GB dataset")
        row = json.loads(r.stdout.strip().splitlines()[-1]) | {"dataset_gb": gb}
        rows.append(row)
        print(f"  {gb:>5g} GB logical dataset (address space capped at {limit_gb:g} GB): peak RSS "
              f"{row['peak_rss'] / 2**20:6.0f} MiB; RSS at 10% / 50% / end of the run {row['rss_at_10pct'] / 2**20:.0f} / "
              f"{row['rss_at_50pct'] / 2**20:.0f} / {row['rss_at_end'] / 2**20:.0f} MiB; {row['updates']} updates "
              f"in {row['seconds']:.0f} s ({row['updates_per_s']:.1f}/s at the end, data wait "
              f"{100 * (row['data_wait_fraction'] or 0):.0f}%)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,4,16", help="Logical dataset sizes in GB for the speed/memory runs.")
    ap.add_argument("--updates", type=int, default=200)
    ap.add_argument("--limit-gb", type=float, default=5.0, help="RLIMIT_AS of the pre-training child (0: none).")
    ap.add_argument("--seconds", type=float, default=10.0, help="Per sequences/s measurement.")
    ap.add_argument("--work", default=None, help="Scratch directory (default: a temp dir, removed at the end).")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.updates, args.limit_gb, args.child_out)
        return
    sizes = [0.1, 0.4] if args.quick else [float(s) for s in args.sizes.split(",")]
    updates = 20 if args.quick else args.updates
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-offline-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"offline data benchmark in {work}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
          flush=True)
    try:
        real = collect_real(work / "real", args.quick)
        print("bytes on disk per million stored steps (64x64 RGB pixels + 4-12-d padded action + flags):")
        sizes_report(real, work)
        summary = open_dataset(real).summary()
        per_copy = summary["stored_steps"] * 3 * 64 * 64
        datasets = []
        print(f"sequences/s ({BATCH} x {SEQ}, one thread), datasets built from {summary['episodes']} real episodes:")
        for gb in sizes:
            d = work / f"ds-{gb:g}GB"
            replicate(real, d, max(1, round(gb * 1e9 / per_copy)))
            ds = open_dataset(d)
            s = ds.summary()
            evict(d)
            cold = seqs_per_s(ds, args.seconds)
            warm = seqs_per_s(ds, args.seconds)
            two = prefetched_seqs_per_s(ds, args.seconds, 2)
            print(f"  {s['stored_steps'] * 3 * 64 * 64 / 1e9:6.1f} GB logical ({s['bytes_on_disk'] / 1e9:5.1f} GB on disk, "
                  f"{s['episodes']:,} episodes, {s['stored_steps'] / 1e6:.2f}M steps): {cold:7.0f} sequences/s cold, "
                  f"{warm:7.0f} warm (one thread); {two:7.0f} with the 2-worker prefetcher", flush=True)
            ds.close()
            datasets.append((gb, d))
        ncrl = work / "ncrl"
        write_ncrl_copy(real, ncrl, 64)
        for cache_mb in (0, 256):
            ds = open_dataset(ncrl, cache_bytes=cache_mb << 20)
            evict(ncrl)
            print(f"  ncrl layout (64 episode .npz files, decoded-episode cache {cache_mb} MB): "
                  f"{seqs_per_s(ds, args.seconds):7.0f} sequences/s", flush=True)
        print(f"pre-training memory ({updates} updates of a debug-size model at batch {BATCH} x {SEQ}):")
        memory_runs(datasets, updates, args.limit_gb, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
