"""Drive a method through one real episode fragment, as the runner does (for unit tests of methods)."""
import numpy as np

from methods.base import Step


def run_episode(method, env, task, agent_steps: int) -> None:
    """``agent_steps`` exploring steps with act/observe/update, then a closing ``is_last`` step."""
    obs, reward, first, state = env.reset(), 0.0, True, None
    for _ in range(agent_steps):
        batch = {k: v[None] for k, v in obs.items()} | {"is_first": np.array([first])}
        a, state = method.act(batch, state, task, explore=True)
        method.observe(Step(obs, a[0], reward, first, False, False))
        res = env.step(a[0])
        obs, reward, first = res.obs, res.reward, False
        method.update(0)
    method.observe(Step(obs, np.zeros_like(a[0]), reward, False, True, False))
