"""The run configuration: everything that defines a run, serialisable for MLflow and resume."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError
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
    torch_threads: int = 0                     # 0: torch's default (all cores); set 1 when running seeds in parallel
    checkpoint_every_frames: int = 25_000      # also at every task boundary
    log_every_frames: int = 1_000              # train-metric logging interval
    video_frames: int = 200                    # length cap of the per-task evaluation GIF (0: no video)
    runs_dir: str = "runs"                     # checkpoints and method work dirs: runs/<mlflow run id>/
    ft_reference_method: str | None = None     # forward transfer reference runs: None = same method

    def validate(self) -> "RunConfig":
        if self.seed < 0:
            raise HarnessError(f"--seed must be >= 0, got {self.seed}")
        for name in ("checkpoint_every_frames", "log_every_frames"):
            if getattr(self, name) <= 0:
                raise HarnessError(f"{name} must be positive, got {getattr(self, name)}")
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            raise HarnessError(f"unknown device {self.device!r}; valid: auto, cpu, cuda, cuda:N")
        self.env.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stream"] = self.stream.to_dict() | {"source": self.stream.source}
        d["overrides"] = dict(self.overrides)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        s = d["stream"]
        stream = StreamSpec(s["name"], tuple(TaskSpec(t["name"], int(t["frames"])) for t in s["tasks"]),
                            EvalSpec(**s["eval"]), s.get("description", ""), s.get("source", "config"))
        env = EnvConfig(**d["env"])
        rest = {k: v for k, v in d.items() if k not in ("stream", "env", "overrides")}
        return cls(stream=stream, env=env, overrides=tuple(d.get("overrides", {}).items()), **rest)
