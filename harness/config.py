"""The run configuration: everything that defines a run, serialisable for MLflow and resume."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from harness.errors import MAX_INT, MAX_THREADS, HarnessError, check_int
from harness.streams import EvalSpec, StreamSpec, TaskSpec
from tasks.base import EnvConfig


@dataclass(frozen=True)
class RunConfig:
    stream: StreamSpec
    method: str
    seed: int = 0
    preset: str | None = None                  # None: the method's default preset (the paper's values)
    overrides: tuple[tuple[str, str], ...] = ()  # method config KEY=VALUE overrides, as typed
    env: EnvConfig = field(default_factory=EnvConfig)
    device: str = "auto"                       # auto: cuda if available, else cpu
    torch_threads: int = 0                     # 0: auto (harness.provenance.auto_threads: the free cores, 1 on a busy machine)
    checkpoint_every_frames: int = 25_000      # also at every task boundary
    log_every_frames: int = 1_000              # train-metric logging interval
    video_frames: int = 200                    # length cap of the per-task evaluation GIF (0: no video)
    runs_dir: str = "runs"                     # checkpoints and method work dirs: runs/<mlflow run id>/
    ft_reference_method: str | None = None     # forward transfer reference runs: None = same method
    tags: tuple[tuple[str, str], ...] = ()     # extra MLflow tags on the run (a sweep's id); not part of its key

    def validate(self) -> "RunConfig":
        """Every field checked before anything is created; errors name the command-line option."""
        for option, name, low, high in (("--seed", "seed", 0, 2**63 - 1),
                                        ("--threads", "torch_threads", 0, MAX_THREADS),
                                        ("--checkpoint-every", "checkpoint_every_frames", 1, MAX_INT),
                                        ("--log-every", "log_every_frames", 1, MAX_INT),
                                        ("--video-frames", "video_frames", 0, MAX_INT)):
            check_int(getattr(self, name), f"{option} ({name})", low, high)
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            raise HarnessError(f"unknown device {self.device!r}; valid: auto, cpu, cuda, cuda:N")
        if not isinstance(self.runs_dir, str) or not self.runs_dir.strip():
            raise HarnessError(f"--runs-dir must be a directory path, got {self.runs_dir!r}")
        check_int(self.env.action_repeat, "--action-repeat (action_repeat)", 1)
        for name in ("episode_frames", "action_pad_dim", "proprio_pad_dim"):
            if getattr(self.env, name) is not None:
                check_int(getattr(self.env, name), f"env {name}", 1)
        self.stream.validate()
        self.env.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stream"] = self.stream.to_dict() | {"source": self.stream.source}
        d["overrides"] = dict(self.overrides)
        d["tags"] = dict(self.tags)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        s = d["stream"]
        stream = StreamSpec(s["name"], tuple(TaskSpec(t["name"], int(t["frames"])) for t in s["tasks"]),
                            EvalSpec(**s["eval"]), s.get("description", ""), s.get("source", "config"))
        env = EnvConfig(**d["env"])
        rest = {k: v for k, v in d.items() if k not in ("stream", "env", "overrides", "tags")}
        return cls(stream=stream, env=env, overrides=tuple(d.get("overrides", {}).items()),
                   tags=tuple(d.get("tags", {}).items()), **rest)
