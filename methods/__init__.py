"""Learning methods. Every method is registered here, lazily, so listing them imports no torch.

A method module exposes ``SPEC = MethodSpec(...)``: a config dataclass whose defaults are the paper's
values, named presets that override some fields (``debug``, ``tiny``, ``small``, ``paper``), and a
``build(config, ctx)`` returning an object that follows :class:`methods.base.Method`.
"""
from harness.registry import Registry

METHODS: Registry[str] = Registry("method")

METHODS.register("random", "methods.random_policy:SPEC",
                 description="Uniform random actions on the task's action mask (the score floor)")
