"""Diagnostic: per task, what the offline data hold for execution guidance, before any run.

    .venv/bin/python benchmarks/diag_bc_tasks.py --pretrained benchmarks/work/evidence/pretrained-metaworld \
        --tasks push-v3,reach-v3 [--episodes 10] [--retrieve-k 25] [--out benchmarks/results/bc_prior_tasks]

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


def diagnose(task_name: str, pretrained: Path, a: argparse.Namespace) -> dict:
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
    out: dict = {"task": task_name, "suite": info.suite, "episodes": a.episodes, "retrieve_k": a.retrieve_k,
                 "bc_grad_updates": cfg.bc.grad_updates}
    with tempfile.TemporaryDirectory() as tmp:
        ctx = MethodContext(task_names=(info.name,), obs_spec=spec, action_dim=int(env_cfg.action_pad_dim),
                            seed=a.seed, device="cpu", workdir=Path(tmp), log_json=None)
        out["random"] = score_of(evaluate(RandomMethod(RandomConfig(), ctx), task, info, env_cfg, a.episodes, a.seed))
        if info.suite == "metaworld":
            out["expert"] = {str(s): score_of(evaluate(ExpertActor(task_name, s, a.seed), task, info, env_cfg,
                                                       a.episodes, a.seed)) for s in SIGMAS}
        gsa = GSA(cfg, ctx)
        gsa.on_task_start(task)
        env = make_env(task_name, env_cfg, a.seed)
        first = env.reset()
        env.close()
        t0 = time.perf_counter()
        gsa._retrieve({k: v[None] for k, v in first.items()})
        metas = {m.uid: m for m in gsa.dataset().subset(gsa.retrieved_uids).episodes}
        same = float(np.mean([metas[u].task == task_name for u in gsa.retrieved_uids]))
        out["retrieved"] = {"count": len(gsa.retrieved_uids), "same_task_fraction": same,
                            "bc_loss": gsa.bc_loss, "seconds": time.perf_counter() - t0}
        out["bc_retrieved"] = score_of(evaluate(gsa.prior, task, info, env_cfg, a.episodes, a.seed))
        for cap in sorted({float(x) for x in a.own_max_noise.split(",")}, reverse=True):
            own = [m.uid for m in gsa.dataset().episodes if m.task == task_name and (m.noise or 0.0) <= cap]
            if not own:
                continue
            gsa.retrieved_uids = own
            torch.manual_seed(a.seed)
            loss = gsa._train_bc()
            key = "" if cap >= max(SIGMAS) else f"<={cap}"
            out[f"own{key}"] = {"count": len(own), "bc_loss": loss, "max_noise": cap}
            out[f"bc_own{key}"] = score_of(evaluate(gsa.prior, task, info, env_cfg, a.episodes, a.seed))
    return out


def table(rows: list[dict]) -> str:
    def s(d: dict | None) -> str:
        return "" if d is None else f"{d['score']:.1f}"
    head = ("| task | random | " + " | ".join(f"expert σ={x}" for x in SIGMAS)
            + " | π_bc (retrieved) | same-task share | π_bc (task's own data) |")
    caps = sorted({k.removeprefix("own<=") for r in rows for k in r if k.startswith("own<=")}, key=float)
    head += "".join(f" π_bc (own data, σ <= {c}) |" for c in caps)
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ex = r.get("expert", {})
        lines.append(f"| {r['task']} | {s(r['random'])} | " + " | ".join(s(ex.get(str(x))) for x in SIGMAS)
                     + f" | {s(r['bc_retrieved'])} | {r['retrieved']['same_task_fraction']:.2f} "
                       f"(k={r['retrieved']['count']}) | {s(r.get('bc_own'))}"
                       + (f" ({r['own']['count']} eps)" if 'own' in r else "") + " |"
                       + "".join(f" {s(r.get(f'bc_own<={c}'))} |" for c in caps))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrained", required=True, help="a pre-training directory with its index (pretrain --build-index)")
    ap.add_argument("--tasks", required=True, help="comma-separated task names")
    ap.add_argument("--episodes", type=int, default=10, help="evaluation episodes per policy")
    ap.add_argument("--retrieve-k", type=int, default=25)
    ap.add_argument("--bc-updates", type=int, default=0, help="π_bc gradient updates (0: the preset's)")
    ap.add_argument("--own-max-noise", default="2.0",
                    help="π_bc on the task's own episodes up to each of these noise sigmas (comma-separated)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    a = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch
    torch.set_num_threads(1)
    rows = []
    for t in a.tasks.split(","):
        rows.append(diagnose(t, Path(a.pretrained), a))
        print(json.dumps(rows[-1]), flush=True)
    text = (f"π_bc and the data's policies alone, {a.episodes} evaluation episodes each (same env seeds), seed "
            f"{a.seed}; score 0-100 (DMC return / 10, Meta-World success x 100); π_bc with {rows[0]['bc_grad_updates']} "
            f"updates (`benchmarks/diag_bc_tasks.py`, pre-training `{a.pretrained}`)\n\n" + table(rows) + "\n")
    print(text)
    if a.out:
        Path(a.out).with_suffix(".md").write_text(text)
        Path(a.out).with_suffix(".json").write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
