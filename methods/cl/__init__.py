"""The continual-learning baselines researchers compare against, as Continual World defines them, around the
shared base learners (registered in ``methods/__init__.py``):

| method | module | idea (CW's tuned setting) | bases |
|---|---|---|---|
| ``finetune`` | regularizers.py | the multi-head learner alone (CW's fine-tuning): the others' control | drqv2, dreamer |
| ``l2`` | regularizers.py | penalty towards the previous tasks' weights (strength 1e5) | drqv2, dreamer |
| ``ewc`` | regularizers.py | the same, weighted by the policy's diagonal Fisher, summed over tasks (1e4) | drqv2, dreamer |
| ``mas`` | regularizers.py | the same, weighted by the outputs' sensitivity (1e4) | drqv2, dreamer |
| ``agem`` | agem.py | gradients projected so an episodic memory's loss does not rise (10k per task, batch 128) | drqv2 |
| ``replay`` | reservoir.py | reservoir replay of every task's transitions, each with its own reward (20M, batch x4) | drqv2 |
| ``multitask`` | multitask.py | all tasks at once with a task id: the reference (use the ``<stream>-mt`` streams) | drqv2 |

Shared pieces: per-task output heads (heads.py: CW's multi-head actor and critic), the base learners with
those heads and the hooks the wrappers use (learners.py), and the memory of earlier tasks' transitions
(memory.py). Critic handling is CW's: one critic head per task, trained on its own task's rewards, neither
reset nor regularised (``regularize_critic=False``, ``reset_critic_on_task_change=False``, the defaults of
its final runs), except A-GEM, which CW runs with ``regularize_critic=True`` (the critic's gradients are
projected too). Why avalanche-lib's plugins are not used is said in each module.
"""
