"""Observation and action spaces of Robocode rows, shared by the collectors' dataset schema
and the Gymnasium env, so a policy trained on one runs in the other.

Observation (degrees, pixels, as in Robocode's API): `OBS_FIELDS`, the robot's own 8 values
(`STATE_FIELDS`) then the 6 of its last radar sighting (`SIGHTING_FIELDS`: a sighting is at most
1200 + 18 * sqrt(2) pixels away, its age at most `MAX_AGE`).
Action: `ACTION_FIELDS` (see `envs.robocode.transitions` for how they are recovered).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from harvest.envs.robocode.sightings import MAX_AGE
from harvest.envs.robocode.transitions import ACTION_FIELDS, OBS_FIELDS

OBSERVATION_SPACE = gym.spaces.Box(
    low=np.array([0, 0, 0, 0, 0, -8, 0, 0] + [-180, 0, 0, 0, -8, 0], np.float32),
    high=np.array([5000, 5000, 360, 360, 360, 8, 5, 1000] + [180, 1300, 1000, 360, 8, MAX_AGE], np.float32),
    dtype=np.float32,
)
ACTION_SPACE = gym.spaces.Box(
    low=np.array([-8, -10, -20, -45, 0], np.float32), high=np.array([8, 10, 20, 45, 3], np.float32), dtype=np.float32
)

assert OBSERVATION_SPACE.shape == (len(OBS_FIELDS),) and ACTION_SPACE.shape == (len(ACTION_FIELDS),)
