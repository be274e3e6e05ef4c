"""The method interface the runner drives, and the config/preset machinery every method shares."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from harness.errors import HarnessError


@dataclass(frozen=True)
class MethodContext:
    """What a method learns about the run when it is built."""
    task_names: tuple[str, ...]          # the stream's tasks, in order
    obs_spec: dict[str, tuple[tuple[int, ...], str]]  # padded observation shapes and dtypes (no batch)
    action_dim: int                      # padded action dim shared by all tasks of the stream
    seed: int
    device: str                          # "cpu" or "cuda[:i]"
    workdir: Path                        # a directory the method may use for large state (replay files)
    # Logs a JSON artifact (obj, filename) to the MLflow run of the task being trained, e.g. what GSA
    # retrieved. None outside the runner (tests, benchmarks).
    log_json: Callable[[Any, str], None] | None = None


@dataclass(frozen=True)
class TaskContext:
    """The task a call is about: the one being trained, or the one being evaluated."""
    index: int                 # stream position (a task may appear twice in a stream)
    name: str
    embodiment: str
    suite: str
    frames: int                # env-frame budget of this task in the stream
    action_mask: np.ndarray    # float32 (action_dim,)
    action_repeat: int


@dataclass
class Step:
    """One time step as the runner reports it (DreamerV3 convention).

    ``reward`` was received on arriving at ``obs``; ``action`` is the one taken from ``obs`` (zeros on
    the last step). Observations are unbatched: pixels uint8 (3, H, W), proprio float32 (D,)."""
    obs: dict[str, np.ndarray]
    action: np.ndarray
    reward: float
    is_first: bool
    is_last: bool
    is_terminal: bool


class Method(Protocol):
    def on_task_start(self, task: TaskContext) -> None:
        """Called once when a task begins; not again when a run resumes in the middle of the task, so
        whatever it sets up must be in ``state_dict()``."""
        ...

    def act(self, obs: dict[str, np.ndarray], state: Any, task: TaskContext,
            explore: bool) -> tuple[np.ndarray, Any]:
        """Batched: ``obs`` values have a leading batch dim B and include ``is_first`` (B,) bool.
        ``state=None`` starts fresh. Returns actions (B, action_dim) in [-1, 1] and the new state."""
        ...

    def observe(self, step: Step) -> None: ...

    def update(self, env_frames: int) -> dict[str, float]:
        """Called after every agent step; the method decides how many gradient updates to run
        (its train ratio). Returns metrics to log (losses named ``*loss*`` are checked for NaN)."""
        ...

    def on_task_end(self, task: TaskContext) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class MethodSpec:
    config_cls: Callable[..., Any]       # a config dataclass (or a partial of one with other defaults)
    build: Callable[[Any, MethodContext], Method]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)   # name -> field overrides
    default_preset: str = "paper"
    # Optional check before anything is written: (method config, the stream's TaskInfos, EnvConfig) ->
    # the EnvConfig to run with. Raises HarnessError on bad input (GSA: a missing pre-trained model, an
    # index for another encoder); may fix env fields the method depends on (GSA: the padded dims of its
    # pre-trained model).
    setup: Callable[[Any, list[Any], Any], Any] | None = None


def _coerce(value: str, target: Any, key: str) -> Any:
    """Turn a CLI string into the field's type."""
    origin = typing.get_origin(target)
    try:
        if target is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if target is int:
            return int(float(value)) if "e" in value.lower() else int(value)
        if target is float:
            return float(value)
        if target is str:
            return value
        if origin is tuple:
            (inner, *_) = typing.get_args(target)
            return tuple(_coerce(v.strip(), inner, key) for v in value.strip("()[] ").split(",") if v.strip())
    except ValueError:
        raise HarnessError(f"override {key}={value!r}: expected {getattr(target, '__name__', target)}") from None
    raise HarnessError(f"override {key}: fields of type {target} cannot be set from the command line")


def _apply_overrides(cfg: Any, overrides: dict[str, str], method: str, prefix: str = "") -> Any:
    hints = typing.get_type_hints(type(cfg))
    names = [f.name for f in dataclasses.fields(cfg)]
    changes: dict[str, Any] = {}
    nested: dict[str, dict[str, str]] = {}
    for key, value in overrides.items():
        head, dot, rest = key.partition(".")
        if head not in names:
            raise HarnessError(f"unknown config field {prefix + head!r} for method {method!r}; "
                               f"valid: {', '.join(prefix + n for n in names) or '(none)'}")
        if dot:
            if not dataclasses.is_dataclass(getattr(cfg, head)):
                raise HarnessError(f"config field {prefix + head!r} of method {method!r} has no sub-fields")
            nested.setdefault(head, {})[rest] = value
        elif dataclasses.is_dataclass(getattr(cfg, head)):
            raise HarnessError(f"config field {prefix + head!r} is a group; set its fields as {prefix + head}.NAME=VALUE")
        else:
            changes[head] = _coerce(value, hints[head], prefix + key)
    for head, sub in nested.items():
        changes[head] = _apply_overrides(getattr(cfg, head), sub, method, f"{prefix}{head}.")
    return dataclasses.replace(cfg, **changes)


def resolve_config(spec: MethodSpec, method: str, preset: str | None,
                   overrides: dict[str, str] | None = None) -> Any:
    """The method's config: defaults, then the preset, then ``KEY=VALUE`` overrides (``group.KEY`` for
    nested configs, e.g. ``model.deter=256``)."""
    preset = preset or spec.default_preset
    if preset not in spec.presets and preset != "paper":
        raise HarnessError(f"unknown preset {preset!r} for method {method!r}; "
                           f"valid: {', '.join(sorted({'paper', *spec.presets}))}")
    cfg = spec.config_cls(**spec.presets.get(preset, {}))
    return _apply_overrides(cfg, overrides, method) if overrides else cfg
