"""Task streams: an ordered list of tasks, each with an env-frame budget, plus evaluation settings.

Streams are data. Built-in ones are defined below; users add their own without editing this code:
- a TOML file (``cli.py streams add FILE`` copies it to the user streams directory, or
  ``--stream-file FILE`` uses it directly); the file is parsed as data, never executed;
- the ``@stream`` decorator in a Python module named by ``--plugin`` or ``GSA_PLUGINS``.

File format (unknown keys are errors)::

    name = "my-stream"
    description = "optional"
    [eval]                      # optional; defaults below
    every_frames = 10000
    episodes = 5
    [[tasks]]
    name = "quadruped-stand"    # as `cli.py tasks list` prints it
    frames = 300000             # env-frame budget for this task
"""
from __future__ import annotations

import os
import re
import shutil
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from harness.errors import HarnessError, check_int
from harness.registry import Registry


@dataclass(frozen=True)
class TaskSpec:
    name: str      # a registered task name
    frames: int    # env-frame budget (simulator frames, i.e. agent_steps * action_repeat)


@dataclass(frozen=True)
class EvalSpec:
    every_frames: int = 10_000   # ncrl fine-tuning: evaluate every 10k env frames
    episodes: int = 5            # ncrl fine-tuning: 5 evaluation episodes


@dataclass(frozen=True)
class StreamSpec:
    name: str
    tasks: tuple[TaskSpec, ...]
    eval: EvalSpec = field(default_factory=EvalSpec)
    description: str = ""
    source: str = "built-in"     # where it came from: built-in, a file path, or a python module

    @property
    def total_frames(self) -> int:
        return sum(t.frames for t in self.tasks)

    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def with_overrides(self, frames_per_task: int | None = None, eval_every: int | None = None,
                       eval_episodes: int | None = None) -> "StreamSpec":
        """The stream with CLI overrides applied (validated like a file)."""
        tasks = self.tasks
        if frames_per_task is not None:
            _positive(frames_per_task, "--frames-per-task")
            tasks = tuple(replace(t, frames=frames_per_task) for t in tasks)
        ev = self.eval
        if eval_every is not None:
            _positive(eval_every, "--eval-every")
            ev = replace(ev, every_frames=eval_every)
        if eval_episodes is not None:
            _positive(eval_episodes, "--eval-episodes")
            ev = replace(ev, episodes=eval_episodes)
        return replace(self, tasks=tasks, eval=ev)

    def validate(self) -> "StreamSpec":
        """A stream built in code or read back from a run's config: the rules a stream file follows."""
        if not self.tasks:
            raise HarnessError(f"stream {self.name!r} has no tasks")
        for i, t in enumerate(self.tasks):
            _positive(t.frames, f"stream {self.name!r}: tasks[{i}].frames")
        _positive(self.eval.every_frames, f"stream {self.name!r}: eval.every_frames")
        _positive(self.eval.episodes, f"stream {self.name!r}: eval.episodes")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "eval": {"every_frames": self.eval.every_frames, "episodes": self.eval.episodes},
                "tasks": [{"name": t.name, "frames": t.frames} for t in self.tasks]}


def _positive(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise HarnessError(f"{what} must be a positive integer, got {value!r}")
    check_int(value, what, 1)   # and not absurdly large (a typo such as 1e18)


STREAMS: Registry[Callable[[], StreamSpec] | StreamSpec] = Registry("stream")


def stream(name: str, description: str = "") -> Callable[[Callable[[], StreamSpec]], Callable[[], StreamSpec]]:
    """Decorator for code-defined streams: ``@stream("mine")`` on a function returning a StreamSpec."""
    def decorator(fn: Callable[[], StreamSpec]) -> Callable[[], StreamSpec]:
        STREAMS.register(name, fn, description=description or (fn.__doc__ or "").strip().split("\n")[0],
                         tags=("python",))
        return fn
    return decorator


# ---------------------------------------------------------------- built-in streams

ANT_TASKS = ("stand", "walk", "run", "jump", "roll", "roll_fast")
# Continual World CW10 (anchors.md section 3), with Meta-World v3 names.
CW10_TASKS = ("hammer", "push-wall", "faucet-close", "push-back", "stick-pull", "handle-press-side",
              "push", "shelf-place", "window-close", "peg-unplug-side")


def _builtin(name: str, description: str, tasks: list[tuple[str, int]], ev: EvalSpec) -> None:
    spec = StreamSpec(name, tuple(TaskSpec(n, f) for n, f in tasks), ev, description)
    STREAMS.register(name, spec, description=description, tags=("built-in",))


# Paper Section 4.2: Ant (DMC quadruped), 300k env frames per task; ncrl evaluates every 10k frames, 5 episodes.
_builtin("ant", "Paper Sec. 4.2: quadruped stand->walk->run->jump->roll->roll_fast, 300k frames each",
         [(f"quadruped-{t}", 300_000) for t in ANT_TASKS], EvalSpec(10_000, 5))
# Continual World: 1M steps per task, evaluation every 20k steps on all tasks (anchors.md section 3).
# CW evaluates 10 episodes per task (deviation note: CW's value; the paper does not run CW).
_builtin("cw10", "Continual World CW10 (Meta-World v3 names), 1M frames per task",
         [(f"{t}-v3", 1_000_000) for t in CW10_TASKS], EvalSpec(20_000, 10))
_builtin("cw20", "Continual World CW20 = CW10 twice, 1M frames per task",
         [(f"{t}-v3", 1_000_000) for t in CW10_TASKS * 2], EvalSpec(20_000, 10))
# Short streams that are practical on this 2-core CPU (not from the paper).
_builtin("ant-short", "CPU-sized Ant: stand->walk->roll, 20k frames each",
         [("quadruped-stand", 20_000), ("quadruped-walk", 20_000), ("quadruped-roll", 20_000)],
         EvalSpec(10_000, 2))
_builtin("quick", "CPU smoke stream: cartpole-balance -> reach-v3 -> walker-stand, 4k frames each",
         [("cartpole-balance", 4_000), ("reach-v3", 4_000), ("walker-stand", 4_000)], EvalSpec(2_000, 2))
_builtin("cw3-short", "CPU-sized Meta-World: reach -> push -> window-close, 20k frames each",
         [("reach-v3", 20_000), ("push-v3", 20_000), ("window-close-v3", 20_000)], EvalSpec(10_000, 3))
# The continual-learning baselines' CPU stream (benchmarks/bench_cl.py): two embodiments, the tasks DrQ-v2
# learns within a CPU budget first (at 15-20k frames only cartpole-balance is learnt well; walker, cup,
# reacher, point_mass and finger stay near zero at 20k), so that forgetting can be measured.
_builtin("cl3-short", "CPU-sized stream for the CL baselines: cartpole-balance -> cartpole-swingup -> walker-stand, "
         "15k frames each", [("cartpole-balance", 15_000), ("cartpole-swingup", 15_000), ("walker-stand", 15_000)],
         EvalSpec(5_000, 3))


MULTITASK_ROUNDS = 5   # ours: chunks per task in the multi-task reference streams (CW's MT switches every episode)


def multitask_stream(spec: StreamSpec, rounds: int = MULTITASK_ROUNDS) -> StreamSpec:
    """The multi-task reference's stream for ``spec`` (the ``multitask`` method, methods/cl/multitask.py):
    the distinct tasks of ``spec`` visited round-robin ``rounds`` times, each task's total budget (over all
    its occurrences in ``spec``) cut into ``rounds`` near-equal chunks, so the total budget is ``spec``'s.
    Evaluation runs at chunk ends only (a stream of N tasks has N x rounds positions, each evaluated)."""
    check_int(rounds, "rounds", 1)
    budget: dict[str, int] = {}
    for t in spec.tasks:
        budget[t.name] = budget.get(t.name, 0) + t.frames
    tasks = []
    for r in range(rounds):
        for name, frames in budget.items():
            chunk = frames // rounds + (1 if r < frames % rounds else 0)
            if chunk:
                tasks.append(TaskSpec(name, chunk))
    every = max(t.frames for t in tasks)
    return StreamSpec(f"{spec.name}-mt", tuple(tasks), EvalSpec(every, spec.eval.episodes),
                      f"Multi-task reference for {spec.name}: its {len(budget)} tasks round-robin in {rounds} chunks "
                      f"each, the same total budget", spec.source).validate()


for _entry in STREAMS.with_tag("built-in"):
    _mt = multitask_stream(_entry.value)  # type: ignore[arg-type]
    STREAMS.register(_mt.name, _mt, description=_mt.description, tags=("built-in", "multitask"))


# ---------------------------------------------------------------- TOML files

_TOP_KEYS = {"name", "description", "eval", "tasks"}
_EVAL_KEYS = {"every_frames", "episodes"}
_TASK_KEYS = {"name", "frames"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class _Lines:
    """Finds the line of a key in a TOML text, for error messages (tomllib gives no positions)."""

    def __init__(self, text: str):
        self.lines = text.splitlines()

    def _table_starts(self, header: str) -> list[int]:
        pat = re.compile(r"^\s*" + re.escape(header) + r"\s*(#.*)?$")
        return [i for i, line in enumerate(self.lines) if pat.match(line)]

    def find(self, key: str, table: str | None = None, index: int = 0) -> int | None:
        """1-based line of ``key`` at top level, in ``[table]`` or in the index-th ``[[table]]``."""
        start = 0
        if table is not None:
            starts = self._table_starts(f"[[{table}]]") or self._table_starts(f"[{table}]")
            if index >= len(starts):
                return None
            start = starts[index] + 1
        for i in range(start, len(self.lines)):
            line = self.lines[i]
            if re.match(r"^\s*\[", line):
                break  # the next table begins
            if re.match(r"^\s*" + re.escape(key) + r"\s*=", line):
                return i + 1
        return None


def parse_stream_toml(text: str, source: str = "<string>") -> StreamSpec:
    """Parse and validate a stream file. Every error names the file, the field and the line."""
    from tasks.catalog import TASKS  # static metadata only: no simulator import
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HarnessError(f"{source}: invalid TOML: {exc}") from None
    lines = _Lines(text)

    def fail(msg: str, key: str, table: str | None = None, index: int = 0) -> HarnessError:
        line = lines.find(key, table, index)
        where = f"{source}:{line}" if line else source
        return HarnessError(f"{where}: {msg}")

    for key in data:
        if key not in _TOP_KEYS:
            raise fail(f"unknown key {key!r}; valid top-level keys: {', '.join(sorted(_TOP_KEYS))}", key)
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise fail(f"'name' must be a string of letters, digits, '-', '_' or '.', got {name!r}", "name")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise fail("'description' must be a string", "description")

    ev = EvalSpec()
    if "eval" in data:
        table = data["eval"]
        if not isinstance(table, dict):
            raise fail("'eval' must be a table: [eval]", "eval")
        for key in table:
            if key not in _EVAL_KEYS:
                raise fail(f"unknown key {key!r} in [eval]; valid: {', '.join(sorted(_EVAL_KEYS))}", key, "eval")
        for key in _EVAL_KEYS & set(table):
            try:
                _positive(table[key], f"eval.{key}")
            except HarnessError as exc:
                raise fail(str(exc), key, "eval") from None
        ev = EvalSpec(**{**ev.__dict__, **table})

    tasks_raw = data.get("tasks")
    if not isinstance(tasks_raw, list) or not tasks_raw:
        raise fail("a stream needs at least one [[tasks]] entry with 'name' and 'frames'", "name")
    tasks = []
    for i, entry in enumerate(tasks_raw):
        if not isinstance(entry, dict):
            raise fail(f"tasks[{i}] must be a table ([[tasks]])", "tasks")
        for key in entry:
            if key not in _TASK_KEYS:
                raise fail(f"tasks[{i}]: unknown key {key!r}; valid: {', '.join(sorted(_TASK_KEYS))}",
                           key, "tasks", i)
        for key in sorted(_TASK_KEYS - set(entry)):
            raise fail(f"tasks[{i}]: missing key {key!r}", "name" if key != "name" else "frames", "tasks", i)
        tname, frames = entry["name"], entry["frames"]
        if not isinstance(tname, str) or tname not in TASKS:
            msg = TASKS.unknown_message(str(tname)) if isinstance(tname, str) else "must be a string"
            raise fail(f"tasks[{i}].name: {msg}", "name", "tasks", i)
        try:
            _positive(frames, f"tasks[{i}].frames")
        except HarnessError as exc:
            raise fail(str(exc), "frames", "tasks", i) from None
        tasks.append(TaskSpec(tname, frames))
    return StreamSpec(name, tuple(tasks), ev, description, source)


def _not_a_file(p: Path) -> str:
    """Why ``p`` cannot be read as a stream file: what it is instead of a regular file."""
    if not p.exists():
        return "does not exist"
    kind = ("a directory" if p.is_dir() else "a named pipe" if p.is_fifo() else "a socket" if p.is_socket()
            else "a device" if p.is_char_device() or p.is_block_device() else "a special file")
    return f"is not a regular file but {kind}"


def load_stream_file(path: str | os.PathLike[str]) -> StreamSpec:
    p = Path(path)
    if not p.is_file():
        raise HarnessError(f"stream file {str(p)!r} {_not_a_file(p)}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"cannot read stream file {str(p)!r}: {exc}") from None
    return parse_stream_toml(text, str(p))


def user_streams_dir() -> Path:
    """Where ``streams add`` stores files: $GSA_STREAMS_DIR, else ~/.config/gsa-harness/streams."""
    env = os.environ.get("GSA_STREAMS_DIR")
    return Path(env) if env else Path.home() / ".config" / "gsa-harness" / "streams"


def _user_stream_files() -> dict[str, Path]:
    d = user_streams_dir()
    return {p.stem: p for p in sorted(d.glob("*.toml"))} if d.is_dir() else {}


def add_stream_file(path: str | os.PathLike[str], force: bool = False) -> tuple[StreamSpec, Path]:
    """Validate a stream file and copy it into the user streams directory."""
    spec = load_stream_file(path)
    if spec.name in STREAMS:
        raise HarnessError(f"stream name {spec.name!r} is taken by a {STREAMS.entry(spec.name).tags[0]} stream; "
                           "rename it in the file")
    directory = user_streams_dir()
    where = "GSA_STREAMS_DIR" if os.environ.get("GSA_STREAMS_DIR") else "the user streams directory"
    if directory.exists() and not directory.is_dir():
        raise HarnessError(f"{where} {str(directory)!r} is not a directory; point GSA_STREAMS_DIR at a directory")
    dest = directory / f"{spec.name}.toml"
    if dest.exists() and not force:
        raise HarnessError(f"a user stream {spec.name!r} already exists at {dest}; use --force to replace it")
    tmp = dest.with_suffix(".tmp")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, tmp)
        tmp.replace(dest)
    except OSError as exc:
        raise HarnessError(f"cannot store the stream in {where} {str(directory)!r}: "
                           f"{exc.strerror or exc} ({exc.filename or directory})") from None
    return spec, dest


def all_stream_names() -> dict[str, str]:
    """name -> source kind, built-in and python streams first, then user files."""
    names = {e.name: e.tags[0] for e in STREAMS}
    for name in _user_stream_files():
        names.setdefault(name, "user file")
    return names


def get_stream(name: str) -> StreamSpec:
    """Resolve a stream by name: registered (built-in / python) first, then the user streams directory."""
    if name in STREAMS:
        value = STREAMS.get(name)
        spec = value() if callable(value) else value
        if not isinstance(spec, StreamSpec):
            raise HarnessError(f"stream {name!r}: its function returned {type(spec).__name__}, not a StreamSpec")
        return spec
    files = _user_stream_files()
    if name in files:
        spec = load_stream_file(files[name])
        if spec.name != name:
            raise HarnessError(f"{files[name]}: file is named {name!r} but declares name = {spec.name!r}")
        return spec
    valid = ", ".join(sorted(all_stream_names()))
    raise HarnessError(f"unknown stream {name!r}. Valid streams: {valid} "
                       f"(user files live in {user_streams_dir()}; or pass --stream-file FILE)")


def stream_with_overrides(name: str, frames_per_task: int | None = None, eval_every: int | None = None,
                          eval_episodes: int | None = None) -> StreamSpec:
    """A stream by name with run-stream's overrides. ``<name>-mt``, the multi-task reference of any stream
    (built-in, python or user file), takes ``frames_per_task`` and ``eval_episodes`` as its base stream's, so
    that ``--frames-per-task F`` gives each task F frames in all, as in the continual runs it is held against;
    it evaluates at its chunks' ends unless ``eval_every`` says otherwise."""
    base = name.removesuffix("-mt")
    if name != base and (base in STREAMS or base in _user_stream_files()) and (
            name not in STREAMS or "multitask" in STREAMS.entry(name).tags):
        spec = multitask_stream(get_stream(base).with_overrides(frames_per_task, None, eval_episodes))
        return spec.with_overrides(None, eval_every, None)
    return get_stream(name).with_overrides(frames_per_task, eval_every, eval_episodes)


def load_plugins(modules: list[str] | tuple[str, ...] = ()) -> None:
    """Import user modules that register streams or methods (``--plugin`` and ``GSA_PLUGINS``)."""
    import importlib
    names = list(modules) + [m for m in os.environ.get("GSA_PLUGINS", "").split(",") if m.strip()]
    for mod in names:
        try:
            importlib.import_module(mod.strip())
        except ModuleNotFoundError as exc:
            raise HarnessError(f"cannot import plugin module {mod!r}: {exc}") from None
        except Exception as exc:   # the plugin's own code failed: a user error, not the harness's bug
            raise HarnessError(f"plugin module {mod!r} failed while being imported: "
                               f"{type(exc).__name__}: {exc}{_where(exc)}") from None


def _where(exc: BaseException) -> str:
    """`` (at FILE:LINE)``: the innermost frame of an exception's traceback (SyntaxError's message has it)."""
    if isinstance(exc, SyntaxError):
        return ""
    import traceback
    frames = traceback.extract_tb(exc.__traceback__)
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


# ---------------------------------------------------------------- a stream as Gymnasium environments

@dataclass(frozen=True)
class GymStreamTask:
    """One task of a stream for another library's agent: train on ``env`` for ``frames`` env frames (count
    ``info["env_frames"]``), then go on to the next task. ``make()`` gives another env of the same task and
    settings (evaluation, vector envs: ``gymnasium.make_vec(task.env_id, n, **task.kwargs)``)."""
    index: int
    name: str
    frames: int                    # env-frame budget (simulator frames; an agent step takes action_repeat of them)
    env_id: str                    # gsa/<task>-v0
    kwargs: dict[str, Any]         # the keyword arguments ``env`` was made with
    env: Any                       # gymnasium.Env; its simulator is made at the first reset

    def make(self, **overrides: Any) -> Any:
        import gymnasium
        return gymnasium.make(self.env_id, **{**self.kwargs, **overrides})


@dataclass(frozen=True)
class GymStream:
    """A stream as Gymnasium environments in order, with its evaluation settings (evaluate on every task of
    ``tasks`` each ``eval.every_frames`` env frames, ``eval.episodes`` episodes each, as the runner does)."""
    name: str
    tasks: tuple[GymStreamTask, ...]
    eval: EvalSpec

    def __iter__(self):
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> GymStreamTask:
        return self.tasks[i]

    def close(self) -> None:
        for t in self.tasks:
            t.env.close()


def make_envs(stream: str | StreamSpec, obs_type: str = "pixels", **env_kwargs: Any) -> GymStream:
    """The tasks of ``stream`` (a name or a spec) as Gymnasium envs ``gsa/<task>-v0`` in order.

    All of them act in the stream's shared action space and pad state vectors alike, as the runner does
    (``action_pad_dim`` / ``proprio_pad_dim``: the largest in the stream unless given; ``info["action_mask"]``
    marks each task's own dims). Other keyword arguments are :class:`tasks.base.EnvConfig`'s and
    ``render_mode``."""
    import gymnasium

    from tasks.catalog import TASKS
    from tasks.gym import env_id, register_envs
    spec = (get_stream(stream) if isinstance(stream, str) else stream).validate()
    register_envs()
    infos = [TASKS.get(t.name) for t in spec.tasks]
    kwargs = {"obs_type": obs_type, **env_kwargs}
    kwargs.setdefault("action_pad_dim", max(i.action_dim for i in infos))
    if obs_type != "pixels":
        kwargs.setdefault("proprio_pad_dim", max(i.proprio_dim for i in infos))
    tasks = tuple(GymStreamTask(i, t.name, t.frames, env_id(t.name), dict(kwargs),
                                gymnasium.make(env_id(t.name), **kwargs)) for i, t in enumerate(spec.tasks))
    return GymStream(spec.name, tasks, spec.eval)
