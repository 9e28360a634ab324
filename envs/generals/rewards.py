"""Per-step rewards of a Generals.io player, with weights from the run config."""

from __future__ import annotations

import numpy as np
from pydantic import ConfigDict
from pydantic.dataclasses import dataclass


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class RewardWeights:
    """The `env.kwargs.rewards:` section of a Generals run."""

    win: float = 1.0
    """+win to the player who captures the other's general, -win to the other."""
    city: float = 0.1
    """Per city gained (+) or lost (-) in a step (generals do not count)."""
    army_advantage: float = 0.05
    """Every step: this times (own army - enemy army) / (own + enemy), in [-w, +w]."""


def step_rewards(
    weights: RewardWeights,
    winner: np.ndarray,
    just_ended: np.ndarray,
    cities_before: np.ndarray,
    cities_after: np.ndarray,
    army: np.ndarray,
) -> np.ndarray:
    """[G, 2] float32 rewards.

    Args:
        winner: [G] winning player or -1; just_ended: [G] the game ended on this step.
        cities_before, cities_after: [G, 2] cities each player owns before and after the step.
        army: [G, 2] each player's total army after the step.
    """
    players = np.arange(2)
    outcome = np.where(winner[:, None] == players, 1.0, -1.0) * just_ended[:, None]
    total = np.maximum(army.sum(1, keepdims=True), 1)
    advantage = (army - army[:, ::-1]) / total
    rewards = weights.win * outcome + weights.city * (cities_after - cities_before) + weights.army_advantage * advantage
    return rewards.astype(np.float32)
