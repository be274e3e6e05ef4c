"""A `run-stream` command line as data: its options, the :class:`RunConfig` they make, and back to argv.

`cli.py run-stream` and `cli.py sweep` build runs through :class:`RunOptions`, so a sweep's job is exactly
the `run-stream` command it prints with `--dry-run`, and the job's key (``run_key``) is the one the run
records.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import RunConfig
from harness.errors import HarnessError
from tasks.base import EnvConfig

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")
PRETRAINED_METHODS = "gsa, gsa-p, gsa-p-er, gsa-p-g, jsrl-bc"


@dataclass(frozen=True)
class RunOptions:
    """The options of `cli.py run-stream` (see its --help), with its defaults."""
    stream: str | None = None
    stream_file: str | None = None
    method: str = "random"
    seed: int = 0
    preset: str | None = None
    overrides: tuple[str, ...] = ()          # KEY=VALUE, as typed
    frames_per_task: int | None = None
    eval_every: int | None = None
    eval_episodes: int | None = None
    obs: str = "pixels"
    render_quality: str = "paper"
    action_repeat: int = 2
    device: str = "auto"
    threads: int = 0                         # 0: auto (harness.provenance.auto_threads)
    checkpoint_every: int = 25_000
    video_frames: int = 200
    runs_dir: str = "runs"
    pretrained: str | None = None
    offline_data: str | None = None
    tags: tuple[str, ...] = ()               # KEY=VALUE MLflow tags on the run (a sweep's id)
    ft_reference: str | None = None          # forward transfer's single-task reference method (None: the same)

    def to_config(self) -> RunConfig:
        """The run's config; every error is a HarnessError naming the option (nothing is created)."""
        from harness.streams import load_stream_file, stream_with_overrides
        from methods import METHODS
        if bool(self.stream) == bool(self.stream_file):
            raise HarnessError("give exactly one of STREAM (see `streams list`) or --stream-file FILE")
        if self.stream_file:
            spec = load_stream_file(self.stream_file).with_overrides(self.frames_per_task, self.eval_every,
                                                                     self.eval_episodes)
        else:
            spec = stream_with_overrides(self.stream, self.frames_per_task, self.eval_every,  # type: ignore[arg-type]
                                         self.eval_episodes)
        METHODS.entry(self.method)  # unknown method: clear error before anything heavy is imported
        if self.ft_reference is not None:
            METHODS.entry(self.ft_reference)
        parsed = tuple(_key_value(o, "--set") for o in self.overrides)
        pretrained, tags = self.pretrained, tuple(_key_value(t, "--tag") for t in self.tags)
        from harness.registry_models import is_model_uri, resolve_pretrained
        if is_model_uri(pretrained):   # a registered model: its downloaded (and checked) folder, named on the run
            pretrained, tags = resolve_pretrained(pretrained, echo=lambda *_: None), tags + (("pretrained_model", pretrained),)
        for flag, name, value in (("--pretrained", "pretrained", pretrained),
                                  ("--offline-data", "offline_data", self.offline_data)):
            if value is not None:
                fields = {f.name for f in dataclasses.fields(METHODS.load(self.method).config_cls())}
                if name not in fields:
                    raise HarnessError(f"{flag} is for the methods that fine-tune a pre-trained world model "
                                       f"({PRETRAINED_METHODS}), not {self.method!r}")
                ref = value if value.startswith("minari:") else os.path.abspath(value)   # minari:ID is no path
                parsed += ((name, ref),)  # absolute: a resumed run may start elsewhere
        return RunConfig(stream=spec, method=self.method, seed=self.seed, preset=self.preset, overrides=parsed,
                         env=EnvConfig(obs_type=self.obs, render_quality=self.render_quality,
                                       action_repeat=self.action_repeat),
                         device=self.device, torch_threads=self.threads, checkpoint_every_frames=self.checkpoint_every,
                         video_frames=self.video_frames, runs_dir=self.runs_dir, tags=tags,
                         ft_reference_method=self.ft_reference)

    def argv(self, python: str = sys.executable) -> list[str]:
        """The `run-stream` command line that runs these options."""
        cmd = [python, CLI, "run-stream"]
        cmd += [self.stream] if self.stream else ["--stream-file", str(self.stream_file)]
        default = RunOptions()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("stream", "stream_file") or value == getattr(default, f.name):
                continue
            flag = {"method": "--method", "overrides": "--set", "obs": "--obs", "tags": "--tag"}.get(
                f.name, "--" + f.name.replace("_", "-"))
            for v in value if isinstance(value, tuple) else (value,):
                cmd += [flag, str(v)]
        return cmd


def _key_value(item: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise HarnessError(f"{flag} expects KEY=VALUE, got {item!r}")
    return key.strip(), value.strip()


def run_key(cfg: RunConfig, method_cfg: Any) -> str:
    """A hash of everything that defines a run: the stream (tasks, budgets, evaluation), the method and its
    resolved config, the env config, the seed and the run settings that change results. Runs with the same
    key are the same experiment; a sweep finds its jobs' runs by it."""
    key = {"stream": cfg.stream.to_dict(), "method": cfg.method, "method_config": dataclasses.asdict(method_cfg),
           "env": dataclasses.asdict(cfg.env), "seed": cfg.seed, "video_frames": cfg.video_frames,
           "ft_reference_method": cfg.ft_reference_method}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
