"""What offline datasets hold: state coverage per embodiment, compared on equal numbers of states.

    .venv/bin/python benchmarks/bench_data_coverage.py LABEL=DATASET [LABEL=DATASET ...] [--states 20000]
    .venv/bin/python benchmarks/bench_data_coverage.py noise=data/ou "icm-late=data/evidence?policy=icm&min_agent_steps=75000"

``DATASET?policy=P&min_agent_steps=N`` takes only the episodes of source policy P and, for a learning explorer,
those it collected after N agent steps of its training (``provenance.train_agent_steps``).

For each embodiment present in every dataset, the same number of stored states is drawn from each
(``--states``, uniformly over their steps, fixed seed) and measured in one frame, the pooled states
standardised per dimension:
- **cells**: occupied cells of a 10-bin grid over the pooled states' top 3 principal components (of 1,000),
  and the entropy (nats) of the visits over them: how much of the reachable state space the data spans;
- **kNN entropy**: the mean log distance to the 12th nearest neighbour among the dataset's own states
  (exact, float64), the particle estimator APT (Liu & Abbeel 2021) maximises, up to constants: higher is
  more spread out; **piled up**: the share of states with 12 others within 0.05 (standardised units), where
  an explorer sat still;
- **range**: per state dimension, the share of the pooled 1st-99th percentile range the dataset reaches,
  averaged over dimensions;
- **action spread**: the std of the stored actions over the embodiment's action dims (uniform random: 0.58),
  and the share of saturated actions (|a| > 0.99).
Writes ``benchmarks/results/data_coverage.json`` and ``.md`` (``--out``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GRID_BINS, GRID_DIMS, KNN_K = 10, 3, 12


def selector(spec: str) -> tuple[str, Any]:
    """``PATH?policy=P&min_agent_steps=N`` -> (PATH, a predicate on episode metadata)."""
    from urllib.parse import parse_qs
    path, _, query = spec.partition("?")
    q = {k: v[-1] for k, v in parse_qs(query, strict_parsing=bool(query)).items()}
    unknown = set(q) - {"policy", "min_agent_steps"}
    if unknown:
        raise SystemExit(f"{spec}: unknown selector {sorted(unknown)}; valid: policy, min_agent_steps")
    policy, min_steps = q.get("policy"), int(q.get("min_agent_steps", 0))

    def keep(m: Any) -> bool:
        if policy is not None and m.policy != policy:
            return False
        return not min_steps or bool(m.provenance) and m.provenance["train_agent_steps"][0] >= min_steps
    return path, keep


def sample_states(spec: str, embodiment: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """(n, state dims) states and (n, action dims) actions of ``embodiment`` drawn uniformly over the dataset's
    stored steps (those ``spec``'s selector keeps), and what the dataset holds of it (episodes, steps, policies)."""
    from harness.offline import open_dataset
    from tasks.catalog import TASKS
    path, keep = selector(spec)
    ds = open_dataset(path, ["proprio"])
    eps = [i for i, m in enumerate(ds.episodes) if m.embodiment == embodiment and keep(m)]
    if not eps:
        raise SystemExit(f"{spec}: no {embodiment} episodes selected")
    dim = TASKS.get(ds.episodes[eps[0]].task).proprio_dim   # the embodiment's own dims (datasets pad differently)
    lengths = np.array([ds.episodes[i].length for i in eps])
    rng = np.random.default_rng(seed)
    pick = rng.choice(lengths.sum(), size=min(n, int(lengths.sum())), replace=False)
    owner = np.searchsorted(np.cumsum(lengths), pick, side="right")
    states, actions = [], []
    adim = ds.episodes[eps[0]].action_dim
    for k in np.unique(owner):
        ep = ds.episode(eps[k])
        rows = pick[owner == k] - (lengths[:k].sum() if k else 0)
        states.append(ep["proprio"][rows, :dim])
        acts = ep["action"][rows[rows < len(ep["action"]) - 1], :adim]   # the last step's action is padding
        actions.append(acts)
    policies: dict[str, int] = {}
    for i in eps:
        label = ds.episodes[i].policy + ("" if ds.episodes[i].noise is None else f"-{ds.episodes[i].noise:g}")
        policies[label] = policies.get(label, 0) + 1
    info = {"episodes": len(eps), "stored_steps": int(lengths.sum()), "policies": policies}
    ds.close()
    return np.concatenate(states).astype(np.float64), np.concatenate(actions), info


def knn_distances(x: np.ndarray, k: int = KNN_K, chunk: int = 1024) -> np.ndarray:
    """Each point's distance to its k-th nearest other point, exact in float64 (faiss's float32 L2 turns the
    near-duplicates a stuck explorer makes into zeros)."""
    sq = (x ** 2).sum(1)
    out = np.empty(len(x))
    for a in range(0, len(x), chunk):
        d2 = sq[a:a + chunk, None] + sq[None] - 2.0 * x[a:a + chunk] @ x.T
        d2[np.arange(len(d2)), np.arange(a, a + len(d2))] = np.inf          # not itself
        out[a:a + chunk] = np.sqrt(np.maximum(np.partition(d2, k - 1, axis=1)[:, k - 1], 0.0))
    return out


def measure(states: dict[str, np.ndarray], actions: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    pooled = np.concatenate(list(states.values()))
    keep = pooled.std(0) > 1e-8                   # padded or constant dims carry nothing
    mu, sd = pooled[:, keep].mean(0), pooled[:, keep].std(0)
    z = {k: (v[:, keep] - mu) / sd for k, v in states.items()}
    zp = np.concatenate(list(z.values()))
    _, _, vt = np.linalg.svd(zp - zp.mean(0), full_matrices=False)
    proj = {k: v @ vt[:GRID_DIMS].T for k, v in z.items()}
    pp = np.concatenate(list(proj.values()))
    edges = [np.quantile(pp[:, d], np.linspace(0, 1, GRID_BINS + 1)[1:-1]) for d in range(GRID_DIMS)]
    lo, hi = np.percentile(zp, 1, axis=0), np.percentile(zp, 99, axis=0)
    out = {}
    for k in states:
        cells = np.stack([np.searchsorted(edges[d], proj[k][:, d]) for d in range(GRID_DIMS)], 1)
        ids = (cells * GRID_BINS ** np.arange(GRID_DIMS)).sum(1)
        _, counts = np.unique(ids, return_counts=True)
        p = counts / counts.sum()
        reach = (np.minimum(np.percentile(z[k], 99, axis=0), hi) - np.maximum(np.percentile(z[k], 1, axis=0), lo))
        knn = knn_distances(z[k])
        out[k] = {"cells": int(len(counts)), "cell_entropy": float(-(p * np.log(p)).sum()),
                  "knn_entropy": float(np.mean(np.log(np.maximum(knn, 1e-12)))),
                  "piled_up": float(np.mean(knn < 0.05)),
                  "range_share": float(np.mean(np.clip(reach / (hi - lo), 0, 1))),
                  "action_spread": float(actions[k].std(0).mean()),
                  "saturated_actions": float(np.mean(np.abs(actions[k]) > 0.99))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+", metavar="LABEL=DATASET")
    ap.add_argument("--states", type=int, default=20_000, help="states drawn from each dataset per embodiment")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_coverage"))
    a = ap.parse_args()
    from harness.offline import open_dataset
    named = dict(d.split("=", 1) for d in a.datasets)
    embodiments = None
    for spec in named.values():
        path, keep = selector(spec)
        ds = open_dataset(path, ["proprio"])
        have = {m.embodiment for m in ds.episodes if keep(m)}
        ds.close()
        embodiments = have if embodiments is None else embodiments & have
    result = {"states_per_dataset": a.states, "datasets": named, "embodiments": {}}
    lines = [f"State coverage on equal samples ({a.states:,} states per dataset and embodiment; "
             f"`benchmarks/bench_data_coverage.py`)", "",
             "| embodiment | dataset | episodes | policies | cells (of 1000) | cell entropy | kNN entropy | piled up "
             "| range share | action spread | saturated actions |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for emb in sorted(embodiments or ()):
        states, actions, infos = {}, {}, {}
        for label, path in named.items():
            states[label], actions[label], infos[label] = sample_states(path, emb, a.states)
        n = min(len(v) for v in states.values())
        states = {k: v[:n] for k, v in states.items()}
        m = measure(states, actions)
        result["embodiments"][emb] = {k: m[k] | infos[k] | {"states": n} for k in m}
        for k in m:
            pol = ", ".join(f"{p} x{c}" for p, c in sorted(infos[k]["policies"].items()))
            lines.append(f"| {emb} | {k} | {infos[k]['episodes']} | {pol} | {m[k]['cells']} | {m[k]['cell_entropy']:.2f} "
                         f"| {m[k]['knn_entropy']:.2f} | {m[k]['piled_up']:.2f} | {m[k]['range_share']:.2f} "
                         f"| {m[k]['action_spread']:.2f} | {m[k]['saturated_actions']:.2f} |")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
