"""Compare methods on a stream from the runs recorded in MLflow (`cli.py compare`).

Reads every finished parent run of the stream's experiment, groups them by method, and writes a
table (average performance, forgetting, forward transfer, final normalised score per task, IQM and
optimality gap with 95% stratified-bootstrap CIs via rliable), learning curves with CIs and the R
matrix per method, as PNG/CSV/Markdown, logged as artifacts of a "comparison" run.
Runs whose stream, budgets or observation settings differ are reported, never mixed.

When finished ``multitask`` runs of the stream's multi-task reference (``<stream>-mt``: the same tasks and
per-task budgets, all learnt at once) exist with the same env settings, the table ends with their row
(Continual World's upper bound): its final score per task is the mean of that task's columns in the last R
row; forgetting and forward transfer do not apply to it.
"""
from __future__ import annotations

import csv
import json
import re
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness import metrics
from harness.errors import HarnessError
from harness.lifecycle import guarded
from harness.reporting import MlflowReporter

# What must agree for runs to be compared: the stream's tasks and budgets, and the env settings.
SIGNATURE_KEYS = ("stream.tasks", "stream.eval.every_frames", "stream.eval.episodes", "run.env.obs_type",
                  "run.env.action_repeat", "run.env.image_size", "run.env.render_quality")


@dataclass
class RunData:
    run_id: str
    method: str
    seed: str
    signature: tuple[str, ...]
    R: np.ndarray                                   # fractions 0..1, (tasks, tasks)
    curves: dict[int, tuple[np.ndarray, np.ndarray]]  # task j -> (global env frames, score 0..100)
    run_metrics: dict[str, float]
    method_config: dict[str, str] = field(default_factory=dict)   # the run's resolved config (flattened params)


@dataclass
class Comparison:
    stream: str
    task_names: list[str]
    rows: list[dict[str, Any]]
    excluded: list[str]
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    run_id: str | None = None

    def markdown(self) -> str:
        cols = list(self.rows[0])
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in self.rows]
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not np.isfinite(v) else f"{v:.3f}"
    return str(v)


def _load_run(client: Any, run: Any, tmp: Path) -> RunData:
    rid = run.info.run_id
    path = client.download_artifacts(rid, "R_matrix.json", str(tmp))
    rj = json.loads(Path(path).read_text())
    names = rj["tasks"]
    curves = {}
    for j, name in enumerate(names):
        hist = sorted(client.get_metric_history(rid, f"eval/{j}-{name}/score"), key=lambda m: (m.step, m.timestamp))
        by_step = {m.step: m.value for m in hist}  # a resumed run may log a step twice: keep the last
        curves[j] = (np.array(list(by_step)), np.array(list(by_step.values())))
    sig = tuple(run.data.params.get(k, "?") for k in SIGNATURE_KEYS)
    config = {k.removeprefix("method_config."): v for k, v in run.data.params.items() if k.startswith("method_config.")}
    return RunData(rid, run.data.tags["method"], run.data.tags.get("seed", "?"), sig,
                   np.array(rj["R"], dtype=np.float64) / 100.0, curves, dict(run.data.metrics), config)


def collect_runs(rep: MlflowReporter, stream: str, methods: list[str] | None = None,
                 seeds: list[int] | None = None, sweep: str | None = None
                 ) -> tuple[dict[str, list[RunData]], list[str], list[str]]:
    """Finished parent runs of ``stream`` (of one sweep's, when ``sweep`` is given) grouped by method, the
    excluded runs (with the reason), and the task names."""
    exp = rep.client.get_experiment_by_name(f"stream/{stream}")
    if exp is None:
        raise HarnessError(f"no runs of stream {stream!r} in {rep.uri} (no experiment 'stream/{stream}')")
    runs = rep.client.search_runs([exp.experiment_id], max_results=5000)
    parents = [r for r in runs if "method" in r.data.tags and "mlflow.parentRunId" not in r.data.tags]
    if sweep is not None:
        parents = [r for r in parents if r.data.tags.get("sweep") == sweep]
        if not parents:
            raise HarnessError(f"no runs of sweep {sweep!r} on stream {stream!r} in {rep.uri}")
    finished = [r for r in parents if r.info.status == "FINISHED"]
    have = sorted({r.data.tags["method"] for r in finished})
    if methods:
        missing = [m for m in methods if m not in have]
        if missing:
            raise HarnessError(f"no finished runs of method(s) {', '.join(missing)} on stream {stream!r}; "
                               f"methods with finished runs: {', '.join(have) or '(none)'}")
        finished = [r for r in finished if r.data.tags["method"] in methods]
    if seeds is not None:
        finished = [r for r in finished if r.data.tags.get("seed") in {str(s) for s in seeds}]
    if not finished:
        raise HarnessError(f"no finished runs to compare on stream {stream!r}"
                           + (f" for seeds {seeds}" if seeds is not None else ""))
    excluded = [f"{r.info.run_id} ({r.data.tags['method']}, seed {r.data.tags.get('seed')}): {_unfinished(r)}"
                for r in parents if r.info.status != "FINISHED" and (not methods or r.data.tags["method"] in methods)]
    # A (method, seed) run again (after a code change, say) replaces the earlier one: only the newest counts.
    newest: dict[tuple[str, str | None], str] = {}
    for r in sorted(finished, key=lambda r: r.info.start_time, reverse=True):
        key = (r.data.tags["method"], r.data.tags.get("seed"))
        if key in newest:
            excluded.append(f"{r.info.run_id} ({key[0]}, seed {key[1]}): superseded by the newer run {newest[key]}")
        else:
            newest[key] = r.info.run_id
    finished = [r for r in finished if r.info.run_id in newest.values()]
    with tempfile.TemporaryDirectory() as tmp:
        data = [_load_run(rep.client, r, Path(tmp)) for r in finished]
    reference = Counter(d.signature for d in data).most_common(1)[0][0]
    groups: dict[str, list[RunData]] = defaultdict(list)
    for d in data:
        if d.signature == reference:
            groups[d.method].append(d)
        else:
            diff = [f"{k}={a!r} (vs {b!r})" for k, a, b in zip(SIGNATURE_KEYS, d.signature, reference) if a != b]
            excluded.append(f"{d.run_id} ({d.method}, seed {d.seed}): different settings: {'; '.join(diff)}")
    names = [t["name"] for t in _tasks_of(reference)]
    return dict(groups), excluded, names


REFERENCE = "multitask (reference)"


def _budgets(tasks: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in tasks:
        out[t["name"]] = out.get(t["name"], 0) + int(t["frames"])
    return out


def multitask_reference(rep: MlflowReporter, stream: str, signature: tuple[str, ...], task_names: list[str],
                        seeds: list[int] | None = None) -> tuple[np.ndarray | None, list[str], list[str]]:
    """The multi-task reference's final scores for the tasks of ``stream``: (runs, tasks) fractions from the
    newest FINISHED ``multitask`` run per seed of ``<stream>-mt`` whose per-task budgets and env settings
    match ``signature``; also their seeds and the runs left out (with why). None when there is none."""
    exp = rep.client.get_experiment_by_name(f"stream/{stream}-mt")
    if exp is None:
        return None, [], []
    runs = rep.client.search_runs([exp.experiment_id], filter_string="tags.method = 'multitask' and "
                                  "attributes.status = 'FINISHED'", max_results=5000,
                                  order_by=["attributes.start_time DESC"])
    want = _budgets(_tasks_of(signature))
    finals, used, left_out, seen = [], [], [], set()
    for r in runs:
        if "mlflow.parentRunId" in r.data.tags:
            continue
        seed = r.data.tags.get("seed", "?")
        if (seeds is not None and seed not in {str(s) for s in seeds}) or seed in seen:
            continue
        sig = tuple(r.data.params.get(k, "?") for k in SIGNATURE_KEYS)
        if _budgets(_tasks_of(sig)) != want or sig[3:] != signature[3:]:
            left_out.append(f"{r.info.run_id} (multitask, seed {seed}): its budgets per task or env settings "
                            f"differ from the compared runs'")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            rj = json.loads(Path(rep.client.download_artifacts(r.info.run_id, "R_matrix.json", tmp)).read_text())
        last = np.asarray(rj["R"], dtype=np.float64)[-1] / 100.0
        cols = {n: [k for k, m in enumerate(rj["tasks"]) if m == n] for n in task_names}
        if not all(cols.values()):
            continue
        finals.append([float(last[cols[n]].mean()) for n in task_names])
        used.append(seed)
        seen.add(seed)
    return (np.array(finals) if finals else None), used, left_out


def _unfinished(run: Any) -> str:
    """Why a parent run is not compared, with what to do about it."""
    from harness.lifecycle import liveness
    hint = f"continue it with `run-stream --resume {run.info.run_id}`"
    if run.info.status != "RUNNING":
        return f"status {run.info.status}; {hint}"
    lv = liveness(run)
    if lv.state == "dead":
        return f"dead: RUNNING in MLflow but {lv.reason}; {hint}, or mark it KILLED with `runs gc`"
    return f"still running ({lv.reason})"


def _tasks_of(signature: tuple[str, ...]) -> list[dict[str, Any]]:
    import ast
    return ast.literal_eval(signature[0])  # the params value is the repr of a list of plain dicts


CL_CONFIDENCE = 0.90   # Continual World reports 90% bootstrap CIs of its metrics; IQM and OG use rliable's 95%


def _ci(values: np.ndarray) -> tuple[float, float]:
    return metrics.bootstrap_ci(values, CL_CONFIDENCE)


def summarize(groups: dict[str, list[RunData]], task_names: list[str], reps: int = 2000,
              reference: tuple[np.ndarray, list[str]] | None = None) -> list[dict[str, Any]]:
    """One row per method: average performance, forgetting, forward transfer, just-trained performance (each
    task at the end of its own training) and AUC (each task's curve during its own training; both what the GSA
    paper's Fig. 5 shows) as means over runs with 90% bootstrap CIs, IQM and optimality gap of the final scores
    (95% stratified bootstrap CIs), the final score per task; ``reference`` (the multi-task runs' final scores
    and seeds) adds its row last."""
    from rliable import library as rly
    from rliable import metrics as rm

    finals = {m: np.stack([d.R[-1] for d in runs]) for m, runs in groups.items()}  # (runs, tasks), 0..1
    if reference is not None:
        finals[REFERENCE] = reference[0]
    agg = lambda x: np.array([rm.aggregate_iqm(x), rm.aggregate_optimality_gap(x)])  # noqa: E731
    point, ci = rly.get_interval_estimates(finals, agg, reps=reps)
    rows = []
    per_method = {m: (np.array([metrics.average_performance(d.R) for d in runs]),
                      np.array([metrics.forgetting(d.R) for d in runs]),
                      np.array([d.run_metrics.get("cl/forward_transfer", np.nan) for d in runs]),
                      np.array([metrics.just_trained(d.R) for d in runs]),
                      np.array([d.run_metrics.get("cl/auc", np.nan) for d in runs]),
                      sorted(d.seed for d in runs)) for m, runs in sorted(groups.items())}
    if reference is not None:
        nan = np.full(len(reference[1]), np.nan)
        per_method[REFERENCE] = (reference[0].mean(1), nan, nan, nan, nan, sorted(reference[1]))
    for m, (ap, fg, ft, jt, au, seeds) in per_method.items():
        row: dict[str, Any] = {"method": m, "runs": len(seeds), "seeds": ",".join(seeds)}
        for name, v in (("avg_performance", ap), ("forgetting", fg), ("forward_transfer", ft),
                        ("just_trained", jt), ("auc", au)):
            lo, hi = _ci(v)
            row |= {name: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan"),
                    f"{name}_ci_low": lo, f"{name}_ci_high": hi}
        row |= {"iqm": float(point[m][0]), "iqm_ci_low": float(ci[m][0, 0]), "iqm_ci_high": float(ci[m][1, 0]),
                "optimality_gap": float(point[m][1]), "og_ci_low": float(ci[m][0, 1]), "og_ci_high": float(ci[m][1, 1])}
        for j, name in enumerate(task_names):
            row[f"final {j}-{name}"] = float(finals[m][:, j].mean() * 100)
        rows.append(row)
    return rows


def plot_curves(groups: dict[str, list[RunData]], task_names: list[str], path: Path,
                reference: dict[str, Any] | None = None) -> Path:
    """Mean score per task over global env frames with 95% CIs; a reference's curves dashed."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    n = len(task_names)
    cols = min(3, n)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.2 * ((n + cols - 1) // cols)),
                             squeeze=False, dpi=100)
    for j, name in enumerate(task_names):
        ax = axes[j // cols][j % cols]
        for m, runs in sorted(groups.items()):
            steps = sorted(set.intersection(*[set(d.curves[j][0].tolist()) for d in runs]))
            if not steps:
                continue
            ys = np.array([[dict(zip(*d.curves[j]))[s] for s in steps] for d in runs])
            mean = ys.mean(0)
            ax.plot(steps, mean, label=f"{m} (n={len(runs)})")
            if len(runs) > 1:
                lo, hi = zip(*[metrics.bootstrap_ci(ys[:, k], 0.95) for k in range(len(steps))])
                ax.fill_between(steps, lo, hi, alpha=0.2)
        for m, entry in sorted((reference or {}).get("methods", {}).items()):
            c = entry.get("curves", {}).get(name)
            if c and c["env_frames"]:
                line, = ax.plot(c["env_frames"], c["mean"], linestyle="--", label=f"ref:{m} (n={len(entry['seeds'])})")
                if c.get("ci_low"):
                    ax.fill_between(c["env_frames"], c["ci_low"], c["ci_high"], alpha=0.08, color=line.get_color())
        ax.set_title(f"{j}: {name}", fontsize=9)
        ax.set_xlabel("env frames (global)", fontsize=8)
        ax.set_ylabel("score (0-100)", fontsize=8)
        ax.grid(alpha=0.3)
    for k in range(n, axes.size):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("evaluation score per task (mean, 95% bootstrap CI over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_R(groups: dict[str, list[RunData]], task_names: list[str], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    ms = sorted(groups)
    n = len(task_names)
    fig, axes = plt.subplots(1, len(ms), figsize=(max(3.5, 0.5 * n + 2) * len(ms), max(3.0, 0.45 * n + 1.5)),
                             squeeze=False, dpi=100)
    for ax, m in zip(axes[0], ms):
        R = np.mean([d.R for d in groups[m]], axis=0) * 100
        ax.imshow(R, vmin=0, vmax=100, cmap="viridis")
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{R[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if R[i, j] < 60 else "black")
        ax.set_title(f"{m}: R[i, j] (n={len(groups[m])})", fontsize=9)
        ax.set_xlabel("evaluated task j", fontsize=8)
        ax.set_ylabel("after training task i", fontsize=8)
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _reference_rows(ref: dict[str, Any], columns: list[str]) -> list[dict[str, Any]]:
    rows = []
    for m, entry in sorted(ref["methods"].items()):
        row = {c: entry.get("row", {}).get(c, float("nan")) for c in columns}
        if "just_trained" not in entry.get("row", {}) and entry.get("R"):   # a reference made before the column
            jt = np.array([metrics.just_trained(np.asarray(R, np.float64) / 100.0) for R in entry["R"]])
            lo, hi = _ci(jt)
            row |= {"just_trained": float(jt.mean()), "just_trained_ci_low": lo, "just_trained_ci_high": hi}
        rows.append(row | {"method": f"ref:{m}"})
    return rows


def compare(stream: str, methods: list[str] | None = None, seeds: list[int] | None = None,
            out_dir: str | Path | None = None, reporter: MlflowReporter | None = None,
            sweep: str | None = None, reference: str | None = None,
            save_reference: str | Path | None = None) -> Comparison:
    """Compare the finished runs of ``stream``; ``reference``: a shipped reference's name, a reference file, or
    "auto" (the shipped one made with the same stream and settings, if any) whose rows and curves are shown
    beside the runs; ``save_reference``: write the compared runs as a reference file there."""
    from harness import references
    from harness.lifecycle import check_writable_dir
    if save_reference is not None:   # refused before any work: a folder, or a place that cannot be written
        if Path(save_reference).is_dir():
            raise HarnessError(f"--save-reference {save_reference}: a folder; give a file name (e.g. my-stream.json)")
        check_writable_dir(Path(save_reference).absolute().parent, "--save-reference")
    # a named reference is read (and refused when it is not one) before the runs are looked for
    ref = references.load(reference) if reference not in (None, "auto") else None
    rep = reporter or MlflowReporter()
    groups, excluded, names = collect_runs(rep, stream, methods, seeds, sweep)
    signature = next(iter(groups.values()))[0].signature
    settings = dict(zip(SIGNATURE_KEYS, signature))
    if reference == "auto":
        ref = references.find(stream, settings)
    elif ref is not None:
        diff = references.mismatch(ref, stream, settings)
        if diff:
            raise HarnessError(f"reference {ref['path']} was made with other settings than these runs: "
                               f"{'; '.join(diff)}; run with those settings to compare with it")
    if ref is not None and methods:   # the reference's rows and curves of the methods compared (and its multi-task row)
        ref = ref | {"methods": {m: e for m, e in ref["methods"].items() if m in methods or m == REFERENCE}}
    mt, mt_seeds, left_out = (None, [], []) if methods and "multitask" in methods else \
        multitask_reference(rep, stream, signature, names, seeds)
    excluded += left_out
    rows = summarize(groups, names, reference=(mt, mt_seeds) if mt is not None else None)
    if save_reference is not None:
        references.save(references.build(stream, settings, groups, rows, names, sweep), save_reference)
    if ref is not None:
        rows += _reference_rows(ref, list(rows[0]))
    out = Path(out_dir or Path("comparisons") / f"{stream}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    comp = Comparison(stream, names, rows, excluded, out)
    with open(out / "comparison.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    md = (f"# {stream}\n\n{comp.markdown()}\n\nMeans over runs; CIs: average performance, forgetting, forward "
          f"transfer, just_trained and auc {CL_CONFIDENCE:.0%} bootstrap (Continual World), IQM and optimality gap 95% "
          "stratified bootstrap (rliable); scores are fractions (final: 0-100). just_trained: each task's score at "
          "the end of its own training (mean of R's diagonal); auc: the mean of each task's evaluations during its "
          "own training.\n")
    if ref is not None:
        md += (f"\n`ref:*` rows and dashed curves: the reference results in `{ref['path']}` (commit "
               f"{str(ref.get('commit'))[:12]}, sweep {ref.get('sweep')}), made with the same stream and settings.\n")
    if mt is not None:
        md += (f"\n`{REFERENCE}`: finished `multitask` runs of `{stream}-mt` (seeds {','.join(sorted(mt_seeds))}), "
               "all tasks learnt at once on the same budget per task; forgetting and forward transfer do not apply.\n")
    if excluded:
        md += "\nExcluded runs:\n" + "".join(f"- {e}\n" for e in excluded)
    (out / "comparison.md").write_text(md)
    comp.files = [out / "comparison.csv", out / "comparison.md", plot_curves(groups, names, out / "learning_curves.png", ref),
                  plot_R(groups, names, out / "R_matrices.png")]
    rep.start(f"stream/{stream}", "comparison",
              {"run_type": "comparison", "stream": stream, "methods": ",".join(sorted(groups)),
               "compared_runs": ",".join(d.run_id for runs in groups.values() for d in runs)}
              | ({"compared_sweep": sweep} if sweep else {}), {})
    with guarded(rep, lambda: "The comparison's files are in " + str(out), print):
        for p in comp.files:
            rep.log_artifact(p)
        for r in rows:
            name = re.sub(r"[^\w\-. /]", "-", r["method"].replace(" (reference)", "-reference"))  # MLflow's charset
            rep.log_metrics({f"{name}/{k}": v for k, v in r.items() if isinstance(v, float)}, 0)
        rep.close("FINISHED")
    comp.run_id = rep.run_ids["parent"]
    return comp
