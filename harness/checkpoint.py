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
