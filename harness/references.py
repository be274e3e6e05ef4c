"""Reference results: finished runs' curves and scores shipped in the repository, to hold new runs against.

As DreamerV3's ``scores/`` and TD-MPC2's ``results/`` do, a reference file keeps, per method, the seeds'
final scores and R matrices, the mean learning curve per task with its 95% bootstrap CI, and the table row
``compare`` made, with the stream's settings (what must match), the commit, the package versions and each
method's resolved config. ``cli.py compare STREAM --save-reference FILE`` writes one from the runs compared;
``cli.py compare STREAM --reference NAME|FILE`` adds its rows to the table (``<method> (reference)``) and its
curves to the plot (dashed), refusing a reference made with other settings. Shipped references live in
``benchmarks/results/reference/<name>.json``; ``--reference auto`` takes the one made on the same stream and
settings, if any.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "reference"
FORMAT = 1


def build(stream: str, signature: dict[str, str], groups: dict[str, Any], rows: list[dict[str, Any]],
          task_names: list[str], sweep: str | None) -> dict[str, Any]:
    """A reference from ``compare``'s groups of runs (``harness.compare.RunData``) and table rows."""
    from harness import metrics
    from harness.provenance import git_commit, versions
    methods: dict[str, Any] = {}
    by_row = {r["method"]: r for r in rows}
    for m, runs in sorted(groups.items()):
        runs = sorted(runs, key=lambda d: (len(d.seed), d.seed))
        curves = {}
        for j, name in enumerate(task_names):
            steps = sorted(set.intersection(*[set(d.curves[j][0].tolist()) for d in runs]))
            ys = np.array([[dict(zip(*d.curves[j]))[s] for s in steps] for d in runs]) if steps else np.zeros((0, 0))
            ci = [metrics.bootstrap_ci(ys[:, k], 0.95) for k in range(len(steps))] if len(runs) > 1 else []
            curves[name] = {"env_frames": [int(s) for s in steps], "mean": ys.mean(0).round(3).tolist() if steps else [],
                            "ci_low": [round(c[0], 3) for c in ci], "ci_high": [round(c[1], 3) for c in ci]}
        methods[m] = {"seeds": [d.seed for d in runs], "run_ids": [d.run_id for d in runs],
                      "final": [(d.R[-1] * 100).round(2).tolist() for d in runs],
                      "R": [(d.R * 100).round(2).tolist() for d in runs], "curves": curves, "row": by_row.get(m, {}),
                      "method_config": runs[0].method_config}
    for r in rows:   # rows with no runs here: the multi-task reference
        if r["method"] not in methods:
            methods[r["method"]] = {"row": r}
    return {"format": FORMAT, "stream": stream, "tasks": task_names, "signature": signature, "sweep": sweep,
            "commit": git_commit(), "versions": versions(), "methods": methods}


def save(ref: dict[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(ref, indent=1, default=str))
    tmp.replace(p)
    return p


def shipped() -> dict[str, Path]:
    return {p.stem: p for p in sorted(REFERENCE_DIR.glob("*.json"))} if REFERENCE_DIR.is_dir() else {}


def load(name_or_path: str | Path) -> dict[str, Any]:
    """A shipped reference by name or a reference file; a clear error naming the shipped ones otherwise."""
    p = Path(name_or_path)
    if not p.is_file():
        names = shipped()
        if str(name_or_path) not in names:
            raise HarnessError(f"no reference {str(name_or_path)!r}: neither a file nor a shipped reference "
                               f"(shipped: {', '.join(names) or 'none'}, in {REFERENCE_DIR})")
        p = names[str(name_or_path)]
    try:
        ref = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HarnessError(f"reference {p}: unreadable ({exc})") from None
    if not isinstance(ref, dict) or ref.get("format") != FORMAT or not isinstance(ref.get("methods"), dict):
        raise HarnessError(f"reference {p}: not a reference file (format {FORMAT}; write one with "
                           "`cli.py compare STREAM --save-reference FILE`)")
    ref["path"] = str(p)
    return ref


def mismatch(ref: dict[str, Any], stream: str, signature: dict[str, str]) -> list[str]:
    """What differs between the reference's stream and settings and the compared runs' (empty: they match)."""
    out = [] if ref.get("stream") == stream else [f"stream {ref.get('stream')!r} (yours: {stream!r})"]
    for k, v in signature.items():
        if ref["signature"].get(k) != v:
            out.append(f"{k}={ref['signature'].get(k)!r} (yours: {v!r})")
    return out


def find(stream: str, signature: dict[str, str]) -> dict[str, Any] | None:
    """The shipped reference made on ``stream`` with the same settings, if there is one."""
    for p in shipped().values():
        try:
            ref = load(p)
        except HarnessError:
            continue
        if not mismatch(ref, stream, signature):
            return ref
    return None
