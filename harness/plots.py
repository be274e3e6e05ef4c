"""Figures logged as MLflow artifacts (matplotlib, headless Agg backend)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def learning_curves(curves: list[dict[str, Any]], task_names: list[str], boundaries: list[int],
                    title: str, path: Path) -> Path:
    """Normalised score of every stream task against global env frames; dashed lines at task ends."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    if curves:
        x = np.array([c["global_env_frames"] for c in curves])
        scores = np.array([c["scores"] for c in curves])
        for j, name in enumerate(task_names):
            ax.plot(x, scores[:, j], marker="o", ms=3, label=f"{j}: {name}")
    for b in boundaries:
        ax.axvline(b, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("env frames (global)")
    ax.set_ylabel("normalised score (0-100)")
    ax.set_title(title)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def save_gif(frames: list[np.ndarray], path: Path, fps: int = 25) -> Path:
    import imageio.v2 as imageio
    imageio.mimsave(path, [np.asarray(f, dtype=np.uint8) for f in frames], duration=1.0 / fps, loop=0)
    return path
