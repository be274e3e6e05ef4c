"""Learning methods. Every method is registered here, lazily, so listing them imports no torch.

A method module exposes ``SPEC = MethodSpec(...)``: a config dataclass whose defaults are the paper's
values, named presets that override some fields (``debug``, ``tiny``, ``small``, ``paper``), and a
``build(config, ctx)`` returning an object that follows :class:`methods.base.Method`.
"""
from harness.registry import Registry

METHODS: Registry[str] = Registry("method")

METHODS.register("random", "methods.random_policy:SPEC",
                 description="Uniform random actions on the task's action mask (the score floor)")
METHODS.register("dreamer", "methods.dreamer:SPEC",
                 description="DreamerV3-style world model + imagination actor-critic from scratch; naive continual")
METHODS.register("drqv2", "methods.drqv2:SPEC",
                 description="DrQ-v2: n-step clipped double-Q DDPG on augmented, frame-stacked pixels (or state)")
METHODS.register("packnet", "methods.packnet:SPEC",
                 description="PackNet (avalanche-lib modules) around DrQ-v2's encoder and actor; critic reset per task")
# Continual World's baselines around DrQ-v2 (and Dreamer for the regularisers): methods/cl/__init__.py.
METHODS.register("finetune", "methods.cl.regularizers:SPEC_FINETUNE",
                 description="Fine-tuning (CW): DrQ-v2 or Dreamer with per-task heads, nothing against forgetting")
METHODS.register("l2", "methods.cl.regularizers:SPEC_L2",
                 description="L2 (CW): penalty towards the previous tasks' weights; DrQ-v2 or Dreamer, per-task heads")
METHODS.register("ewc", "methods.cl.regularizers:SPEC_EWC",
                 description="EWC (CW): penalty weighted by the policy's diagonal Fisher, summed over tasks")
METHODS.register("mas", "methods.cl.regularizers:SPEC_MAS",
                 description="MAS (CW): penalty weighted by the sensitivity of the policy's outputs")
METHODS.register("agem", "methods.cl.agem:SPEC",
                 description="A-GEM (CW): DrQ-v2 gradients projected so an episodic memory's loss does not rise")
METHODS.register("replay", "methods.cl.reservoir:SPEC",
                 description="Reservoir replay (CW perfect memory): every task's transitions replayed with their own rewards")
METHODS.register("multitask", "methods.cl.multitask:SPEC",
                 description="Multi-task reference: DrQ-v2 with a head per task learning all tasks at once (run on <stream>-mt)")
# GSA (paper Algorithm 1) and the ablations of its Fig. 6: one class, switches (methods/gsa/agent.py).
METHODS.register("gsa", "methods.gsa.agent:SPEC",
                 description="GSA: pre-trained world model + retrieval rehearsal (ER) + BC execution guidance (G)")
METHODS.register("gsa-p", "methods.gsa.agent:SPEC_P",
                 description="GSA ablation P: the pre-trained world model fine-tuned naively (no ER, no G)")
METHODS.register("gsa-p-er", "methods.gsa.agent:SPEC_P_ER",
                 description="GSA ablation P+ER: pre-training and retrieval-based experience rehearsal")
METHODS.register("gsa-p-g", "methods.gsa.agent:SPEC_P_G",
                 description="GSA ablation P+G: pre-training and execution guidance")
METHODS.register("jsrl-bc", "methods.gsa.agent:SPEC_JSRL_BC",
                 description="JSRL-BC: a from-scratch Dreamer whose episodes start with the retrieved-data BC prior")
