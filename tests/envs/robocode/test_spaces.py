"""The Robocode spaces on their own: every field's bounds against Robocode's rules, and the same
spaces in the collectors' rows."""

import math

import numpy as np
import pytest

from harvest.envs.robocode.sightings import MAX_AGE, UNSEEN
from harvest.envs.robocode.spaces import ACTION_SPACE, OBSERVATION_SPACE
from harvest.envs.robocode.transitions import ACTION_FIELDS, OBS_FIELDS

# Robocode's rules: at most 8 px/turn, a body turn of 10 deg/turn, the gun 20, the radar 45,
# bullets of power 0.1-3 (0: no shot), gun heat 3 at the start and 1 + power / 5 after a shot.
OBS_BOUNDS = {
    "x": (0, 5000),
    "y": (0, 5000),
    "heading": (0, 360),
    "gun_heading": (0, 360),
    "radar_heading": (0, 360),
    "velocity": (-8, 8),
    "gun_heat": (0, 5),
    "energy": (0, 1000),
    "enemy_bearing": (-180, 180),
    "enemy_distance": (0, 1300),
    "enemy_energy": (0, 1000),
    "enemy_heading": (0, 360),
    "enemy_velocity": (-8, 8),
    "enemy_age": (0, MAX_AGE),
}
ACTION_BOUNDS = {
    "target_speed": (-8, 8),
    "turn_rate": (-10, 10),
    "gun_turn_rate": (-20, 20),
    "radar_turn_rate": (-45, 45),
    "fire_power": (0, 3),
}


@pytest.mark.parametrize(
    "space, fields, bounds", [(OBSERVATION_SPACE, OBS_FIELDS, OBS_BOUNDS), (ACTION_SPACE, ACTION_FIELDS, ACTION_BOUNDS)]
)
def test_every_field_has_robocodes_bounds(space, fields, bounds):
    assert space.dtype == np.float32 and space.shape == (len(fields),)
    assert list(fields) == list(bounds)
    assert dict(zip(fields, zip(space.low.tolist(), space.high.tolist()))) == bounds


def test_the_farthest_sighting_and_an_unseen_enemy_fit_the_observation_space():
    farthest = dict(zip(OBS_FIELDS, OBSERVATION_SPACE.low.tolist()))
    farthest["enemy_distance"] = 1200 + 18 * math.sqrt(2)  # radar range to a robot's far corner
    assert OBSERVATION_SPACE.contains(np.array(list(farthest.values()), np.float32))
    unseen = np.array([100, 100, 0, 0, 0, 0, 0, 100, *UNSEEN], np.float32)
    assert OBSERVATION_SPACE.contains(unseen)


def test_the_collectors_rows_are_in_these_spaces():
    from harvest.rollout.robocode_collector import robocode_schema

    schema = robocode_schema()
    assert schema.observation_space == OBSERVATION_SPACE and schema.action_space == ACTION_SPACE
    assert schema.columns["obs"].shape == (14,) and schema.columns["action"].shape == (5,)
