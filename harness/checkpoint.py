"""Checkpoints: written atomically, loaded with ``torch.load(weights_only=True)``.

A checkpoint holds plain data and tensors only: the runner's position, the R matrix and curves so
far, RNG states and the method's ``state_dict()``. Methods keep large state (replay) as files in
their work directory, which lives next to the checkpoint.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

FORMAT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.pt"


def save(path: Path, payload: dict[str, Any]) -> None:
    import torch
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format_version": FORMAT_VERSION, **payload}, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-write leaves the previous checkpoint intact


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file so that a kill leaves either the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any]:
    import torch
    if not path.is_file():
        raise HarnessError(f"missing checkpoint {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle refused by weights_only, ...
        raise HarnessError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); "
                           "it may be truncated or not written by this harness") from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise HarnessError(f"checkpoint {path} has format {payload.get('format_version') if isinstance(payload, dict) else '?'}"
                           f"; this harness reads format {FORMAT_VERSION}")
    return payload


def to_plain(obj: Any) -> Any:
    """Nested dicts, lists and tuples of tensors, numpy arrays and scalars -> what ``weights_only`` loading
    accepts (numpy arrays become ``{"__ndarray__": tensor}``). For state a method keeps outside its
    ``state_dict()``, such as the acting state the runner holds between agent steps."""
    import numpy as np
    import torch
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj).copy())}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}: use tensors, numpy arrays, numbers, "
                    "strings, lists, tuples and dicts")


def from_plain(obj: Any, device: str = "cpu") -> Any:
    """The inverse of :func:`to_plain`; tensors go to ``device``."""
    import torch
    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__"}:
            return obj["__ndarray__"].numpy()
        return {k: from_plain(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_plain(v, device) for v in obj)
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    return obj
