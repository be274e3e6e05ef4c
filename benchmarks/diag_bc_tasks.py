"""Diagnostic: per task, what the offline data hold for execution guidance, before any run.

    .venv/bin/python benchmarks/diag_bc_tasks.py --pretrained benchmarks/work/evidence/pretrained-metaworld \
        --tasks push-v3,reach-v3 [--episodes 10] [--retrieve-k 25] [--seeds 0,1,2] [--out benchmarks/results/bc_prior_tasks]
    .venv/bin/python benchmarks/diag_bc_tasks.py --merge a.json b.json --out c   # earlier --out files together

With several seeds (each its own retrieval query, π_bc training and evaluation episodes) a table per task shows
π_bc from retrieval at every seed: whether it is good, or one retrieval was lucky (it can swing 60 -> 0).

For each task:

- **the data's own policies** (Meta-World only): the scripted expert with each of the paper's noise levels
  sigma, as ``collect --policies expert`` runs it, evaluated like an agent (success rate, score 0-100);
- **π_bc as GSA trains it** (``methods/gsa/agent.py``: Eq. 4's retrieval on the task's first training
  observation, ``retrieve_k`` nearest trajectories of the embodiment, then π_bc on them with the preset's
  BC settings), acting alone; with the share of the retrieved trajectories that are of the task itself;
- **π_bc on the task's own trajectories** (all of the task's episodes in the dataset, the same BC): what
  perfect retrieval would give; with ``--own-max-noise 0.3,0.5,2.0`` also on those up to each sigma (which
  noise levels a π_bc fit by MSE can take);
- ``random`` on the same evaluation episodes (``harness.evaluation``: same env seeds).

It tells which tasks can show execution guidance at all: π_bc can only help where it beats the exploration it
replaces. Nothing is written to MLflow. One torch thread.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIGMAS = (0.1, 0.3, 0.5, 1.0, 2.0)   # the paper's Meta-World noise levels (Sec. 4, "Dataset")


class ExpertActor:
    """``collect``'s noisy scripted expert behind the ``act`` of a method (a batch of envs)."""

    def __init__(self, task: str, sigma: float, seed: int):
        import numpy as np

        from harness.collect import ExpertPolicy
        self.policy = ExpertPolicy(task, sigma, np.random.default_rng([seed, int(sigma * 100)]))

    def act(self, obs, state, task, explore):
        import numpy as np
        rows = [self.policy.act({"proprio": p}) for p in obs["proprio"]]
        out = np.zeros((len(rows), len(task.action_mask)), np.float32)
        out[:, : rows[0].shape[0]] = np.stack(rows)
        return out, state


def score_of(result) -> dict:
    return {"score": result.score, "return": result.mean_return, "success": result.success_rate}


def diagnose(task_name: str, pretrained: Path, a: argparse.Namespace, seed: int) -> dict:
    import numpy as np
    import torch

    from harness.evaluation import evaluate
    from harness.runner import _mask, _obs_spec
    from methods import METHODS
    from methods.base import MethodContext, TaskContext, resolve_config
    from methods.gsa.agent import GSA, setup
    from methods.random_policy import RandomConfig, RandomMethod
    from tasks.base import EnvConfig, make_env
    from tasks.catalog import TASKS

    info = TASKS.get(task_name)
    overrides = {"pretrained": str(pretrained), "retrieve_k": str(a.retrieve_k)}
    if a.bc_updates:
        overrides["bc.grad_updates"] = str(a.bc_updates)
    cfg = resolve_config(METHODS.load("gsa"), "gsa", a.preset, overrides)
    env_cfg = setup(cfg, [info], EnvConfig(obs_type="proprio", render_quality="fast"))
    spec = _obs_spec(env_cfg)
    task = TaskContext(index=0, name=info.name, embodiment=info.embodiment, suite=info.suite, frames=0,
                       action_mask=_mask(info, int(env_cfg.action_pad_dim)), action_repeat=env_cfg.action_repeat)
    out: dict = {"task": task_name, "seed": seed, "suite": info.suite, "episodes": a.episodes, "retrieve_k": a.retrieve_k,
                 "bc_grad_updates": cfg.bc.grad_updates}
    with tempfile.TemporaryDirectory() as tmp:
        ctx = MethodContext(task_names=(info.name,), obs_spec=spec, action_dim=int(env_cfg.action_pad_dim),
                            seed=seed, device="cpu", workdir=Path(tmp), log_json=None)
        out["random"] = score_of(evaluate(RandomMethod(RandomConfig(), ctx), task, info, env_cfg, a.episodes, seed))
        if info.suite == "metaworld":
            out["expert"] = {str(s): score_of(evaluate(ExpertActor(task_name, s, seed), task, info, env_cfg,
                                                       a.episodes, seed)) for s in SIGMAS}
        gsa = GSA(cfg, ctx)
        gsa.on_task_start(task)
        env = make_env(task_name, env_cfg, seed)
        first = env.reset()
        env.close()
        t0 = time.perf_counter()
        gsa._retrieve({k: v[None] for k, v in first.items()})
        metas = {m.uid: m for m in gsa.dataset().subset(gsa.retrieved_uids).episodes}
        same = float(np.mean([metas[u].task == task_name for u in gsa.retrieved_uids]))
        noise = Counter(str(metas[u].noise) for u in gsa.retrieved_uids)   # which sigmas π_bc imitates
        out["retrieved"] = {"count": len(gsa.retrieved_uids), "same_task_fraction": same, "by_noise": dict(noise),
                            "bc_loss": gsa.bc_loss, "seconds": time.perf_counter() - t0}
        out["bc_retrieved"] = score_of(evaluate(gsa.prior, task, info, env_cfg, a.episodes, seed))
        for cap in sorted({float(x) for x in a.own_max_noise.split(",")}, reverse=True):
            own = [m.uid for m in gsa.dataset().episodes if m.task == task_name and (m.noise or 0.0) <= cap]
            if not own:
                continue
            gsa.retrieved_uids = own
            torch.manual_seed(seed)
            loss = gsa._train_bc()
            key = "" if cap >= max(SIGMAS) else f"<={cap}"
            out[f"own{key}"] = {"count": len(own), "bc_loss": loss, "max_noise": cap}
            out[f"bc_own{key}"] = score_of(evaluate(gsa.prior, task, info, env_cfg, a.episodes, seed))
    return out


def table(rows: list[dict]) -> str:
    def s(d: dict | None) -> str:
        return "" if d is None else f"{d['score']:.1f}"
    head = ("| task | random | " + " | ".join(f"expert σ={x}" for x in SIGMAS)
            + " | π_bc (retrieved) | same-task share | π_bc (task's own data) |")
    caps = sorted({k.removeprefix("own<=") for r in rows for k in r if k.startswith("own<=")}, key=float)
    head += "".join(f" π_bc (own data, σ <= {c}) |" for c in caps)
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    several = len({r.get("seed") for r in rows}) > 1
    for r in rows:
        ex = r.get("expert", {})
        name = f"{r['task']} (seed {r['seed']})" if several else r["task"]
        lines.append(f"| {name} | {s(r['random'])} | " + " | ".join(s(ex.get(str(x))) for x in SIGMAS)
                     + f" | {s(r['bc_retrieved'])} | {r['retrieved']['same_task_fraction']:.2f} "
                       f"(k={r['retrieved']['count']}) | {s(r.get('bc_own'))}"
                       + (f" ({r['own']['count']} eps)" if 'own' in r else "") + " |"
                       + "".join(f" {s(r.get(f'bc_own<={c}'))} |" for c in caps))
    return "\n".join(lines)


def robustness(rows: list[dict]) -> str:
    """Per task, π_bc from retrieval at each seed (the seed moves the retrieval query, π_bc's training and the
    evaluation episodes): whether a task's π_bc is good, or was one lucky retrieval."""
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    lines = ["| task | seeds | π_bc (retrieved) per seed | mean | π_bc (task's own data) per seed | random mean |",
             "|---|---|---|---|---|---|"]
    for t, rs in by_task.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        ret = [r["bc_retrieved"]["score"] for r in rs]
        own = [r["bc_own"]["score"] for r in rs if "bc_own" in r]
        lines.append(f"| {t} | {','.join(str(r['seed']) for r in rs)} | {' / '.join(f'{x:.0f}' for x in ret)} | "
                     f"{sum(ret) / len(ret):.1f} | {' / '.join(f'{x:.0f}' for x in own)} | "
                     f"{sum(r['random']['score'] for r in rs) / len(rs):.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrained", default=None, help="a pre-training directory with its index (pretrain --build-index)")
    ap.add_argument("--tasks", default=None, help="comma-separated task names")
    ap.add_argument("--episodes", type=int, default=10, help="evaluation episodes per policy")
    ap.add_argument("--retrieve-k", type=int, default=25)
    ap.add_argument("--bc-updates", type=int, default=0, help="π_bc gradient updates (0: the preset's)")
    ap.add_argument("--own-max-noise", default="2.0",
                    help="π_bc on the task's own episodes up to each of these noise sigmas (comma-separated)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seeds", "--seed", default="0",
                    help="comma-separated seeds, each one retrieval query, π_bc and set of evaluation episodes")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="no new measurement: the tables of earlier --out JSON files together (e.g. seeds run apart)")
    ap.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    a = ap.parse_args()
    if not a.merge and not (a.pretrained and a.tasks):
        ap.error("--pretrained and --tasks are required (or --merge earlier outputs)")
    try:
        seed_list = [int(x) for x in str(a.seeds).split(",")]
    except ValueError:
        ap.error(f"--seeds takes comma-separated integers, got {a.seeds!r}")
    if a.merge:
        rows = []
        for f in a.merge:
            try:
                d = json.loads(Path(f).read_text())
            except (OSError, ValueError) as exc:
                ap.error(f"--merge {f}: cannot read it ({exc})")
            if not isinstance(d, dict) or not {"rows", "args"} <= set(d):
                ap.error(f"--merge {f}: not an --out JSON of this script (it has no 'rows' and 'args')")
            seed = int(str(d["args"].get("seeds", d["args"].get("seed", 0))).split(",")[0])
            rows += [{"seed": seed} | r for r in d["rows"]]   # files from before rows had their seed
            a.pretrained = a.pretrained or d["args"].get("pretrained")
    else:
        os.environ.setdefault("MUJOCO_GL", "egl")
        import torch
        torch.set_num_threads(1)
        rows = []
        for seed in seed_list:
            for t in a.tasks.split(","):
                rows.append(diagnose(t, Path(a.pretrained), a, seed))
                print(json.dumps(rows[-1]), flush=True)
    seeds = sorted({r["seed"] for r in rows})
    text = (f"π_bc and the data's policies alone, {rows[0]['episodes']} evaluation episodes each (same env seeds), "
            f"seeds {','.join(map(str, seeds))}; score 0-100 (DMC return / 10, Meta-World success x 100); π_bc with "
            f"{rows[0]['bc_grad_updates']} updates (`benchmarks/diag_bc_tasks.py`, pre-training `{a.pretrained}`)\n\n"
            + (robustness(rows) + "\n\nEach seed:\n\n" if len(seeds) > 1 else "") + table(rows) + "\n")
    print(text)
    if a.out:
        Path(a.out).with_suffix(".md").write_text(text)
        Path(a.out).with_suffix(".json").write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
