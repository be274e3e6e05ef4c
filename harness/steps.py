"""The time step the runner hands a method and a replay stores (data layer, so both may use it).

``methods.base`` re-exports :class:`Step` as part of the method contract.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Step:
    """One time step as the runner reports it (DreamerV3 convention).

    ``reward`` was received on arriving at ``obs``; ``action`` is the one taken from ``obs`` (zeros on
    the last step). Observations are unbatched: pixels uint8 (3, H, W), proprio float32 (D,)."""
    obs: dict[str, np.ndarray]
    action: np.ndarray
    reward: float
    is_first: bool
    is_last: bool
    is_terminal: bool
