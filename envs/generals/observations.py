"""What a Generals.io player observes: the 9-channel board tensor, and beside it the visible
armies and generals and the legal-action mask.

Board channels (float32, [9, H, W]):

    0 own armies, 1 enemy armies   army / the largest army this player sees (0-1)
    2 own, 3 enemy, 4 neutral land  1 where visible and held by that side
    5 cities, 6 mountains           1 where visible (tiles off a smaller map read as mountain)
    7 visible, 8 fog                1 where the player sees the tile / does not
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from harvest.envs.generals.actions import action_mask, num_actions
from harvest.envs.generals.engine import GeneralsEngine

NUM_CHANNELS = 9
MAX_ARMY = 2**31 - 1
CHANNELS = (
    "own_armies",
    "enemy_armies",
    "own_land",
    "enemy_land",
    "neutral_land",
    "cities",
    "mountains",
    "visible",
    "fog",
)


def observation_space(height: int, width: int) -> gym.spaces.Dict:
    """One player's observation (the spaces of the keys `player_observations` returns)."""
    return gym.spaces.Dict(
        {
            "board": gym.spaces.Box(0.0, 1.0, (NUM_CHANNELS, height, width), np.float32),
            "armies": gym.spaces.Box(0, MAX_ARMY, (height, width), np.int32),
            "generals": gym.spaces.MultiBinary((height, width)),
            "action_mask": gym.spaces.MultiBinary(num_actions(height, width)),
        }
    )


def player_observations(engine: GeneralsEngine) -> dict[str, np.ndarray]:
    """Both players' observations of every game: each value shaped [B, 2, ...]."""
    views = engine.views()
    armies = views.armies.astype(np.int32)
    scale = 1.0 / np.maximum(armies.max(axis=(2, 3), keepdims=True), 1).astype(np.float32)
    board = np.empty((*armies.shape[:2], NUM_CHANNELS, *armies.shape[2:]), np.float32)
    np.multiply(armies * views.owned_cells, scale, out=board[:, :, 0])
    np.multiply(armies * views.opponent_cells, scale, out=board[:, :, 1])
    for channel, tiles in enumerate(
        (views.owned_cells, views.opponent_cells, views.neutral_cells, views.cities, views.mountains, views.visible),
        start=2,
    ):
        board[:, :, channel] = tiles
    np.logical_or(views.fog_cells, views.structures_in_fog, out=board[:, :, 8], casting="unsafe")
    return {
        "board": board,
        "armies": armies,
        "generals": views.generals.astype(np.int8),
        "action_mask": action_mask(engine.legal_moves()),
    }
