"""Diagnostic: how good is a GSA run's behaviour-cloning prior π_bc when it acts alone?

    .venv/bin/python benchmarks/diag_bc_prior.py RUN_ID [RUN_ID ...] [--episodes 10]

For each finished or stopped GSA run (an MLflow run id, or its checkpoint directory) this loads π_bc from the
run's checkpoint (the prior of the task the checkpoint was at, trained on what was retrieved for it) and
evaluates it alone on that task, next to ``random`` on the same evaluation episodes (``harness.evaluation``:
same env seeds). Execution guidance can only help when π_bc is better than the exploration it replaces;
this says whether it is. It also gives the spread of the actions each policy took on the embodiment's
action dims (the std over steps and episodes, averaged over dims; uniform random: 0.58): π_bc is fit by MSE,
so on random or OU data it predicts their conditional mean, near zero, and explores less than what it
imitates. Nothing is written to MLflow; the table is printed (and saved with ``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_dir_of(ref: str) -> Path:
    from harness.errors import HarnessError
    if Path(ref).is_dir():
        return Path(ref)
    from harness.reporting import MlflowReporter
    try:
        run = MlflowReporter().client.get_run(ref)
    except Exception:
        raise HarnessError(f"{ref!r} is neither a run directory nor an MLflow run id") from None
    return Path(run.data.tags["checkpoint_dir"])


def show(lines: list[str], rows: list[dict], out: str | None) -> None:
    """A diagnostic's table printed, and with ``out`` also saved as ``out.md`` and its numbers as ``out.json``."""
    text = "\n".join(lines)
    print(text)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".md").write_text(text + "\n")
        path.with_suffix(".json").write_text(json.dumps(rows, indent=1))


class ActionRecorder:
    """A policy's ``act`` with every action it returns kept (for the action spread)."""

    def __init__(self, policy):
        self.policy, self.actions = policy, []

    def act(self, obs, state, task, explore):
        a, state = self.policy.act(obs, state, task, explore)
        self.actions.append(a[:, task.action_mask > 0])
        return a, state

    def spread(self) -> float:
        import numpy as np
        return float(np.concatenate(self.actions).std(0).mean())

    def saturated(self) -> float:
        """The share of action entries at the bounds (|a| > 0.999): 1.0 is a bang-bang policy."""
        import numpy as np
        return float((np.abs(np.concatenate(self.actions)) > 0.999).mean())


def diagnose(ref: str, episodes: int) -> dict:
    import torch

    from harness import checkpoint
    from harness.config import RunConfig
    from harness.errors import HarnessError
    from harness.evaluation import evaluate
    from harness.runner import _obs_spec
    from methods import METHODS
    from methods.base import MethodContext, TaskContext, resolve_config
    from methods.gsa.bc import BCPolicy, PriorActor
    from methods.random_policy import RandomConfig, RandomMethod
    from tasks.catalog import TASKS
    run_dir = run_dir_of(ref)
    cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    state = checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)["method"]
    if not isinstance(state, dict) or "bc" not in state:
        raise HarnessError(f"run {ref} ({cfg.method}) has no behaviour-cloning prior: not a GSA run")
    if state["bc"] is None:
        raise HarnessError(f"run {ref} ({cfg.method}) trained no π_bc (guidance off, or stopped before its first task)")
    method_cfg = resolve_config(METHODS.load(cfg.method), cfg.method, cfg.preset, dict(cfg.overrides))
    spec = _obs_spec(cfg.env)
    bc = BCPolicy(method_cfg.bc, spec, int(cfg.env.action_pad_dim))
    bc.load_state_dict(state["bc"])
    bc.eval()
    t = state["task"]
    info = TASKS.get(t["name"])
    task = TaskContext(t["index"], t["name"], t["embodiment"], t["suite"], t["frames"],
                       torch.tensor(t["action_mask"]).numpy(), t["action_repeat"])
    prior_actor = ActionRecorder(PriorActor(bc))
    prior = evaluate(prior_actor, task, info, cfg.env, episodes, cfg.seed)
    ctx = MethodContext(task_names=(info.name,), obs_spec=spec, action_dim=int(cfg.env.action_pad_dim),
                        seed=cfg.seed, device="cpu", workdir=run_dir, log_json=None)
    rand_actor = ActionRecorder(RandomMethod(RandomConfig(), ctx))
    rand = evaluate(rand_actor, task, info, cfg.env, episodes, cfg.seed)
    return {"run": ref, "method": cfg.method, "seed": cfg.seed, "task": info.name, "bc_loss": state["bc_loss"],
            "retrieved": len(state["retrieved_uids"]), "episodes": episodes,
            "prior": {"score": prior.score, "return": prior.mean_return, "success": prior.success_rate,
                      "action_std": prior_actor.spread()},
            "random": {"score": rand.score, "return": rand.mean_return, "success": rand.success_rate,
                       "action_std": rand_actor.spread()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="MLflow run ids or checkpoint directories of GSA runs")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the table (.md) and the numbers (.json) here")
    a = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch
    torch.set_num_threads(a.threads)
    from harness.errors import HarnessError
    try:
        rows = [diagnose(r, a.episodes) for r in a.runs]
    except HarnessError as exc:
        sys.exit(f"error: {exc}")
    lines = [f"π_bc alone vs random, {a.episodes} evaluation episodes each (same env seeds); score 0-100 "
             "(DMC return/10, Meta-World success x 100)", "",
             "| run | method | seed | task | retrieved | bc loss | π_bc score | random score | π_bc action std | "
             "random action std |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {Path(r['run']).name[:8]} | {r['method']} | {r['seed']} | {r['task']} | {r['retrieved']} | "
                     f"{r['bc_loss']:.3f} | {r['prior']['score']:.1f} | {r['random']['score']:.1f} | "
                     f"{r['prior']['action_std']:.2f} | {r['random']['action_std']:.2f} |")
    show(lines, rows, a.out)


if __name__ == "__main__":
    main()
