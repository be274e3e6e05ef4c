"""The method interface the runner drives, and the config/preset machinery every method shares."""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from harness.errors import HarnessError
from harness.steps import Step  # noqa: F401  (re-exported: part of the method contract)


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


# ------------------------------------------------------------------ valid ranges of config fields
# Every config field says what values it takes, next to its default:
#     batch_size: int = ranged(16, ge=1, le=MAX_BATCH)
#     lr: float = ranged(1e-4, gt=0)
#     past_fraction: float = ranged(0.25, ge=0, lt=1)
#     actor_grad: str = ranged("dynamics", one_of=("dynamics", "reinforce"))
# ``check_config`` (run by ``resolve_config`` on the final config) checks every field of a config and of its
# nested configs, then calls the config's ``validate()`` for rules between fields (random: low < high).
# Float fields must be finite unless their range says ``finite=False``.

# Upper bounds for sizes: far above any preset (the paper's model is 12288 wide), low enough that a typo
# such as 1e12 is refused before a layer of that size is attempted.
MAX_WIDTH = 65_536          # units of one layer / latent or state width
MAX_CHANNELS = 4_096        # CNN channels of the first stage
MAX_BATCH = 65_536          # sequences or transitions per batch
MAX_LENGTH = 65_536         # sequence length, imagination horizon, n-step
MAX_COUNT = 10**15          # frame / step / update counts
MAX_PARAMS = 4e9            # parameters of one model, roughly counted: 16 GB of float32 weights, 48 GB
                            # with Adam's state (the paper's world model has 0.29e9)


@dataclass(frozen=True)
class Range:
    """The valid values of a config field: bounds (``ge``/``gt`` below, ``le``/``lt`` above) or a set."""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    one_of: tuple[Any, ...] | None = None
    finite: bool = True               # floats: reject nan and +-inf

    def ok(self, v: Any) -> bool:
        if self.one_of is not None:
            return v in self.one_of
        if isinstance(v, float) and math.isnan(v):
            return not self.finite
        if isinstance(v, float) and math.isinf(v) and self.finite:
            return False
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))

    def __str__(self) -> str:
        if self.one_of is not None:
            return "one of " + ", ".join(map(str, self.one_of))
        lo = f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else "(-inf"
        hi = f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else "inf)"
        return f"{lo}, {hi}" + ("" if self.finite else ", nan and inf allowed")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e9 else f"{x:g}"


def ranged(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, one_of: tuple[Any, ...] | None = None, finite: bool = True) -> Any:
    """A dataclass field with a default and its valid range (see ``Range``; for tuples: every element)."""
    return field(default=default, metadata={"range": Range(ge, gt, le, lt, one_of, finite)})


def _kind(hint: Any) -> Any:
    """int, float, bool, str, or ("tuple", inner) for tuple[X, ...]; None for anything else."""
    if hint in (int, float, bool, str):
        return hint
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        return ("tuple", args[0]) if args else None
    return None


def _check_value(path: str, value: Any, hint: Any, rng: Range | None) -> str | None:
    """What is wrong with one field value, or None."""
    kind = _kind(hint)
    if isinstance(kind, tuple):
        if not isinstance(value, tuple):
            return f"{path}={value!r} must be a tuple"
        for i, v in enumerate(value):
            msg = _check_value(f"{path}[{i}]", v, kind[1], rng)
            if msg:
                return msg
        return None
    if kind is bool and not isinstance(value, bool):
        return f"{path}={value!r} must be true or false"
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        return f"{path}={value!r} must be an integer"
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{path}={value!r} must be a number"
        value = float(value)
    if kind is str and not isinstance(value, str):
        return f"{path}={value!r} must be a string"
    if kind is float and (rng is None or rng.finite) and not math.isfinite(value):
        return f"{path}={value} is not finite; valid: {rng or 'a finite number'}"
    if rng is not None and not rng.ok(value):
        return f"{path}={value!r} is out of range; valid: {rng}"
    return None


def check_config(cfg: Any, what: str = "the", prefix: str = "") -> Any:
    """Check every field of the config dataclass ``cfg`` (and of its nested configs) against its declared
    range, then the config's own ``validate()`` (rules between fields). Raises HarnessError naming the field
    (dotted path), its value and the valid range; returns ``cfg``."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_config(value, what, f"{prefix}{f.name}.")
            continue
        msg = _check_value(prefix + f.name, value, hints.get(f.name), f.metadata.get("range"))
        if msg:
            raise HarnessError(f"{what} config: {msg}")
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        try:
            validate()
        except HarnessError as exc:
            where = f" (in {prefix[:-1]})" if prefix else ""
            raise HarnessError(f"{what} config: {exc}{where}") from None
    return cfg


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
            if "e" in value.lower():   # 1e6: an integer written as a float
                f = float(value)
                if not f.is_integer():
                    raise ValueError(value)
                return int(f)
            return int(value)
        if target is float:
            return float(value)
        if target is str:
            return value
        if origin is tuple:
            (inner, *_) = typing.get_args(target)
            return tuple(_coerce(v.strip(), inner, key) for v in value.strip("()[] ").split(",") if v.strip())
    except (ValueError, OverflowError):
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
    try:
        return dataclasses.replace(cfg, **changes)
    except HarnessError as exc:  # a config that checks itself on construction
        raise HarnessError(f"{method} config: {prefix}{exc}") from None


def resolve_config(spec: MethodSpec, method: str, preset: str | None,
                   overrides: dict[str, str] | None = None) -> Any:
    """The method's config: defaults, then the preset, then ``KEY=VALUE`` overrides (``group.KEY`` for
    nested configs, e.g. ``model.deter=256``), checked against every field's valid range (``check_config``)."""
    preset = preset or spec.default_preset
    if preset not in spec.presets and preset != "paper":
        raise HarnessError(f"unknown preset {preset!r} for method {method!r}; "
                           f"valid: {', '.join(sorted({'paper', *spec.presets}))}")
    cfg = spec.config_cls(**spec.presets.get(preset, {}))
    cfg = _apply_overrides(cfg, overrides, method) if overrides else cfg
    return check_config(cfg, method)
