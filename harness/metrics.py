"""Continual-learning metrics as pure numpy functions (definitions: anchors.md section 3, Continual World).

Conventions: ``R[i, j]`` is the performance on task j (stream position) after training task i, as a
fraction in [0, 1] (normalised score / 100: Meta-World success rate, DMC return / 1000).
"""
from __future__ import annotations

import numpy as np


def _square(R: np.ndarray) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    assert R.ndim == 2 and R.shape[0] == R.shape[1], f"R must be square (tasks x tasks), got shape {R.shape}"
    return R


def average_performance(R: np.ndarray) -> float:
    """Mean over tasks of the performance at the end of the whole run: mean_j R[N-1, j]."""
    return float(_square(R)[-1].mean())


def forgetting_per_task(R: np.ndarray) -> np.ndarray:
    """F_i = R[i, i] - R[N-1, i]: performance at the end of task i's training minus at the end of the run.
    The last task has F = 0 by definition."""
    R = _square(R)
    return np.diag(R) - R[-1]


def forgetting(R: np.ndarray) -> float:
    """Average forgetting over all tasks (Continual World)."""
    return float(forgetting_per_task(R).mean())


def just_trained(R: np.ndarray) -> float:
    """Mean over tasks of the performance at the end of each task's own training: mean_i R[i, i]. Plasticity
    without forgetting: how well each task was learnt when it was learnt (Riemer et al. 2019's "learning
    accuracy"); the GSA paper's Fig. 5 compares the methods by each task's returns during its own training."""
    return float(np.diag(_square(R)).mean())


def auc(curve: np.ndarray) -> float:
    """Area under a task's own training curve, as the mean of its evaluation scores in that window."""
    curve = np.asarray(curve, dtype=np.float64)
    assert curve.ndim == 1 and curve.size > 0, f"a curve needs at least one point, got shape {curve.shape}"
    return float(curve.mean())


def forward_transfer_per_task(auc_cl: np.ndarray, auc_ref: np.ndarray) -> np.ndarray:
    """FT_i = (AUC_i - AUC_i^b) / (1 - AUC_i^b), with AUC^b from a single-task run from scratch with the
    same budget. NaN where no reference exists (NaN given) or where the reference is perfect (AUC^b = 1)."""
    a, b = np.asarray(auc_cl, np.float64), np.asarray(auc_ref, np.float64)
    assert a.shape == b.shape, f"AUC shapes differ: {a.shape} vs {b.shape}"
    with np.errstate(divide="ignore", invalid="ignore"):
        ft = (a - b) / (1.0 - b)
    return np.where(np.isclose(b, 1.0), np.nan, ft)


def forward_transfer(auc_cl: np.ndarray, auc_ref: np.ndarray) -> float:
    """Mean FT over tasks that have a reference; NaN when none has."""
    ft = forward_transfer_per_task(auc_cl, auc_ref)
    return float(np.nanmean(ft)) if np.isfinite(ft).any() else float("nan")


def bootstrap_ci(values: np.ndarray, confidence: float = 0.90, n_resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (Continual World reports 90% CIs)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = rng.choice(v, size=(n_resamples, v.size), replace=True).mean(axis=1)
    lo, hi = np.percentile(means, [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100])
    return float(lo), float(hi)


def summarize(R: np.ndarray, curves: list[np.ndarray] | None = None,
              ref_aucs: np.ndarray | None = None) -> dict[str, float]:
    """All stream-level metrics in one dict (keys are MLflow metric names)."""
    R = _square(R)
    out = {"cl/average_performance": average_performance(R), "cl/forgetting": forgetting(R),
           "cl/just_trained": just_trained(R)}
    if curves is not None:
        aucs = np.array([auc(c) for c in curves])
        out["cl/auc"] = float(aucs.mean())
        if ref_aucs is not None and np.isfinite(ref_aucs).any():
            out["cl/forward_transfer"] = forward_transfer(aucs, ref_aucs)
    return out
