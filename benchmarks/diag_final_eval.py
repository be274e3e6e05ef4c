"""Diagnostic: a finished run's final policy evaluated again, on more episodes than the run's own evaluation.

    .venv/bin/python benchmarks/diag_final_eval.py RUN_ID [RUN_ID ...] [--episodes 20] [--out FILE]

A run's final score is one evaluation of a few episodes (the evidence sweep: 5) at its last frame. On a task
whose success the policy only sometimes reaches, or whose start state varies, that number moves a lot from
one evaluation to the next, and a spread over seeds mixes two things: how different the seeds' policies are,
and how noisy a 5-episode evaluation of one policy is. This loads each run's checkpoint (the state at its end:
the run must have finished every task), builds the method as the run did and evaluates it on every task of
its stream for ``--episodes`` episodes. The evaluation seeds are the run's own (``harness.evaluation``), so the
first episodes are those of the run's last evaluation (the policy's sampled latents are drawn anew, seeded
by the run's seed, so the numbers repeat on every call). The run's folder is only read (its replays are
reloaded as a resume reloads them); nothing is written to MLflow; the table is printed (and saved with
``--out``).

Beside each score: the share of the policy's action entries at the bounds (|a| > 0.999, on the embodiment's
own dims) and the actions' spread over the evaluation's states (the mean per-dim standard deviation). A
deterministic actor-critic whose tanh outputs have saturated shows 1.0 and a spread near 0: the same
action on every state, and no gradient through tanh to change it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.diag_bc_prior import ActionRecorder, run_dir_of, show  # noqa: E402


def final_eval(ref: str, episodes: int, draws: int = 1) -> dict:
    """``{"run", "method", "seed", "episodes", "tasks": {task: {"score", "return", "success", "saturated",
    "action_std"}}}`` of ``ref``'s
    final policy (an MLflow run id or a checkpoint directory) over ``episodes`` evaluation episodes per task.
    ``draws`` > 1: the same evaluation repeated with the policy's latents drawn from seeds seed, seed + 1, ...
    (the same env episodes each time); each task then also has ``draws``: every draw's score, and ``score`` is
    the first's."""
    from harness import checkpoint
    from harness.config import RunConfig
    from harness.errors import HarnessError
    from harness.evaluation import evaluate
    from harness.runner import _mask, _obs_spec, _task_ctx, prepare
    from methods.base import MethodContext
    run_dir = run_dir_of(ref)
    if not (run_dir / "config.json").is_file():
        raise HarnessError(f"{run_dir} has no config.json: not a run's checkpoint directory")
    cfg, infos, spec, method_cfg = prepare(RunConfig.from_dict(json.loads((run_dir / "config.json").read_text())))
    payload = checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)
    done = int(payload["progress"]["task_index"])
    if done < len(infos):
        raise HarnessError(f"run {ref} has finished {done} of its {len(infos)} tasks: its checkpoint is not its final "
                           "policy (resume it first: cli.py run-stream --resume)")
    # the run's own method folder: its replays are reloaded from there (read only; acting writes nothing)
    ctx = MethodContext(task_names=tuple(i.name for i in infos), obs_spec=_obs_spec(cfg.env),
                        action_dim=int(cfg.env.action_pad_dim), seed=cfg.seed, device="cpu", workdir=run_dir / "method",
                        log_json=None)
    method = spec.build(method_cfg, ctx)
    method.load_state_dict(payload["method"])
    import torch
    out = {}
    for i, info in enumerate(infos):
        results, actor = [], ActionRecorder(method)
        for d in range(draws):
            torch.manual_seed(cfg.seed + d)   # the policy's sampled latents: the same numbers on every call
            results.append(evaluate(actor if d == 0 else method, _task_ctx(i, cfg, info, _mask(info, cfg.env.action_pad_dim)),
                                    info, cfg.env, episodes, cfg.seed))
        res = results[0]
        out[info.name] = {"score": res.score, "return": res.mean_return, "success": res.success_rate,
                          "saturated": actor.saturated(), "action_std": actor.spread()}
        if draws > 1:
            out[info.name]["draws"] = [r.score for r in results]
    return {"run": ref, "method": cfg.method, "seed": cfg.seed, "episodes": episodes, "tasks": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="MLflow run ids or checkpoint directories of finished runs")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--draws", type=int, default=1,
                    help="repeat each evaluation with this many seeds of the policy's sampled latents (same env "
                         "episodes): how much one evaluation of the same policy moves")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the table (.md) and the numbers (.json) here")
    a = ap.parse_args()
    if min(a.episodes, a.threads, a.draws) < 1:
        ap.error("--episodes, --draws and --threads must be >= 1")
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch
    torch.set_num_threads(a.threads)
    from harness.errors import HarnessError
    try:
        rows = [final_eval(r, a.episodes, a.draws) for r in a.runs]
    except HarnessError as exc:
        sys.exit(f"error: {exc}")
    lines = [f"Final policies evaluated again, {a.episodes} episodes per task (the run's own evaluation seeds first); "
             "score 0-100 (DMC return/10, Meta-World success x 100)", "",
             "| run | method | seed | task | score | actions at +-1 | action spread |"
             + (f" over {a.draws} draws: mean | min | max | draws |" if a.draws > 1 else ""),
             "|---|---|---|---|---|---|---|" + ("---|---|---|---|" if a.draws > 1 else "")]
    for r in rows:
        for t, v in r["tasks"].items():
            row = (f"| {Path(r['run']).name[:8]} | {r['method']} | {r['seed']} | {t} | {v['score']:.1f} | "
                   f"{v['saturated']:.2f} | {v['action_std']:.3f} |")
            if "draws" in v:
                x = v["draws"]
                row += f" {sum(x) / len(x):.1f} | {min(x):.1f} | {max(x):.1f} | {' '.join(f'{y:.1f}' for y in x)} |"
            lines.append(row)
    show(lines, rows, a.out)


if __name__ == "__main__":
    main()
