"""Execution guidance (paper Section 3.3, Algorithm 1): when, and for which steps, the BC prior acts.

At the start of each episode a coin with probability ``p(t)`` (a linear schedule over agent steps) decides
whether the episode gets a BC window. If it does, the window's length is a fraction of the episode drawn
from {0.1, 0.2, ..., 1.0} and its start is uniform in [0, T - L] (ncrl, anchors.md section 1). Inside the
window π_bc's action replaces the RL policy's. During warm-up π_bc acts for whole episodes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from methods.base import MAX_COUNT, ranged


@dataclass(frozen=True)
class GuidanceSchedule:
    # Table 5: "linear(1,0,50000) for DMControl, linear(1,0,1,150000) for Meta-World" (the latter read as
    # linear(1, 0, 150000)); ncrl's code decays 1 -> 0.1 over 100k agent steps instead. Units: agent steps.
    prob_start: float = ranged(1.0, ge=0, le=1)
    prob_end: float = ranged(0.0, ge=0, le=1)
    duration_agent_steps: int = ranged(50_000, ge=0, le=MAX_COUNT)
    # ncrl: {0.1..1.0}
    window_fractions: tuple[float, ...] = ranged(tuple(round(0.1 * i, 1) for i in range(1, 11)), gt=0, le=1)
    # GSA: the window starts anywhere; "start": at step 0 (JSRL's guide-policy roll-in, Uchendu et al. 2023, the
    # paper's JSRL-BC neighbour)
    anchor: str = ranged("random", one_of=("random", "start"))

    def prob(self, agent_steps: int) -> float:
        """p(t): the chance that an episode starting at ``agent_steps`` gets a BC window."""
        frac = min(max(agent_steps / max(self.duration_agent_steps, 1), 0.0), 1.0)
        return self.prob_start + (self.prob_end - self.prob_start) * frac

    def window(self, agent_steps: int, episode_steps: int, rng: np.random.Generator,
               warmup: bool = False) -> tuple[int, int]:
        """[start, end) in agent steps of the episode where π_bc acts; (0, 0) for none."""
        if warmup:
            return 0, episode_steps
        if rng.random() >= self.prob(agent_steps):
            return 0, 0
        length = int(round(float(rng.choice(self.window_fractions)) * episode_steps))
        start = 0 if self.anchor == "start" else int(rng.integers(0, episode_steps - length + 1))
        return start, start + length


def schedule_for(suite: str, dmc_agent_steps: int = 50_000, metaworld_agent_steps: int = 150_000,
                 prob_end: float = 0.0, anchor: str = "random") -> GuidanceSchedule:
    """Table 5's schedule for a task suite (durations in agent steps, overridable for short CPU budgets)."""
    if anchor not in ("random", "start"):
        raise ValueError(f"unknown guidance anchor {anchor!r}; valid: random, start")
    return GuidanceSchedule(prob_end=prob_end, anchor=anchor,
                            duration_agent_steps=metaworld_agent_steps if suite == "metaworld" else dmc_agent_steps)
