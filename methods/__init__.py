"""Learning methods. Every method is registered here, lazily, so listing them imports no torch.

A method module exposes ``SPEC = MethodSpec(...)``: a config dataclass whose defaults are the paper's
values, named presets that override some fields (``debug``, ``tiny``, ``small``, ``paper``), and a
``build(config, ctx)`` returning an object that follows :class:`methods.base.Method`.
"""
from harness.registry import Registry

METHODS: Registry[str] = Registry("method")

METHODS.register("random", "methods.random_policy:SPEC",
                 description="Uniform random actions on the task's action mask (the score floor)")
METHODS.register("drqv2", "methods.drqv2:SPEC",
                 description="DrQ-v2: n-step clipped double-Q DDPG on augmented, frame-stacked pixels (or state)")
METHODS.register("packnet", "methods.packnet:SPEC",
                 description="PackNet (avalanche-lib modules) around DrQ-v2's encoder and actor; critic reset per task")
