"""Radar sightings from turn snapshots: Robocode's scan geometry and the features built on it.

No engine needed; tests/envs/robocode/test_env.py checks the same code against the ScannedRobotEvents
the real engine hands the bridge robot.
"""

import math

import numpy as np
import pytest

from harvest.envs.robocode.sightings import MAX_AGE, UNSEEN, RadarMemory, bounding_box, radar_sees, radar_sightings
from harvest.envs.robocode.transitions import OBS_FIELDS, round_transitions


def box_at(x: float, y: float) -> tuple[float, float, float, float]:
    return bounding_box({"x": x, "y": y})


def at(distance: float, degrees: float, origin=(400.0, 300.0)) -> tuple[float, float]:
    """A point `distance` px from `origin` at a Robocode bearing (0 north, clockwise)."""
    angle = math.radians(degrees)
    return origin[0] + distance * math.sin(angle), origin[1] + distance * math.cos(angle)


@pytest.mark.parametrize(
    "last_radar, radar, target, seen",
    [
        (0, 45, at(200, 20), True),  # inside the swept pie
        (45, 0, at(200, 20), True),  # swept the other way round
        (0, 45, at(200, 180), False),  # behind
        (0, 45, at(200, 49), True),  # centre outside the sweep, its box (~5 deg wide here) inside
        (0, 45, at(200, 60), False),
        (0, 45, at(1210, 20), True),  # centre beyond 1200 px, the near side of its box within
        (0, 45, at(1300, 20), False),
        (350, 10, at(300, 0), True),  # the sweep crosses north: the short way round
        (350, 10, at(300, 180), False),
        (30, 30, at(300, 30), True),  # no sweep (the robot only moved): the radar's line still sees
        (30, 30, at(300, 50), False),
        (0, 45, at(10, 200), True),  # boxes overlap: the box holds the pie's centre
    ],
)
def test_the_radar_sees_what_robocodes_scan_arc_touches(last_radar, radar, target, seen):
    assert radar_sees(400.0, 300.0, math.radians(last_radar), math.radians(radar), box_at(*target)) is seen


def robot(x, y, heading=0.0, gun=0.0, radar=0.0, velocity=0.0, energy=100.0, state="ACTIVE", name="r") -> dict:
    return {
        "name": name,
        "x": x,
        "y": y,
        "heading": math.radians(heading),
        "gun_heading": math.radians(gun),
        "radar_heading": math.radians(radar),
        "velocity": velocity,
        "gun_heat": 0.0,
        "energy": energy,
        "state": state,
    }


def message(turn: int, *robots: dict, kind: str = "turn") -> dict:
    return {"t": kind, "round": 0, "turn": turn, "robots": list(robots), "bullets": []}


def test_only_a_robot_that_moved_or_turned_scans_and_only_living_robots_are_seen():
    scanner, target = robot(400, 300), robot(*at(200, 20), heading=90, velocity=-2, energy=55.5)
    start = message(0, scanner, target, kind="round_start")
    turned = message(1, robot(400, 300, radar=45), target)
    assert radar_sightings(start, message(1, scanner, target)) == [[], []], "nothing moved: no scan"
    [[sighting], []] = radar_sightings(start, turned)
    assert sighting.turn == 1 and sighting.target == 1
    np.testing.assert_allclose(
        [
            math.degrees(sighting.bearing),
            sighting.distance,
            sighting.energy,
            math.degrees(sighting.heading),
            sighting.velocity,
        ],
        [20, 200, 55.5, 90, -2],
    )
    dead = message(1, robot(400, 300, radar=45), {**target, "state": "DEAD"})
    assert radar_sightings(start, dead) == [[], []]
    assert radar_sightings(None, turned) == [[], []], "no previous turn: the sweep is unknown"


def test_features_give_the_last_sighting_from_the_current_gun_heading_and_its_age():
    target = robot(400, 500, heading=90, energy=80)  # due north, 199 px after the scanner moves 1 px
    turns = [
        message(0, robot(400, 300), target, kind="round_start"),
        message(1, robot(400, 301, gun=10, radar=45), target),  # sweeps 0..45: sees it at bearing 0
        message(2, robot(400, 301, gun=20, radar=90), target),  # sweeps 45..90: does not
        message(3, robot(400, 301, gun=-170, radar=90), target),
    ]  # turns its gun only: its radar line misses
    memory = RadarMemory()
    features = []
    for before, turn in zip([None, *turns[:-1]], turns):
        memory.update(before, turn)
        features.append(memory.features(0, turn))
    assert features[0] == list(UNSEEN)
    np.testing.assert_allclose(
        features[1:], [[-10, 199, 80, 90, 0, 0], [-20, 199, 80, 90, 0, 1], [170, 199, 80, 90, 0, 2]], atol=1e-9
    )
    assert memory.features(1, turns[3]) == list(UNSEEN), "the target never scanned"
    assert memory.features(0, message(500, *turns[3]["robots"]))[5] == MAX_AGE, "ages are capped"


def test_round_transitions_give_own_state_and_sighting_rows_from_turn_one():
    target = robot(400, 500, heading=90, energy=80)
    turns = [
        message(0, robot(400, 300), target, kind="round_start"),
        message(1, robot(400, 301, radar=45), target),
        message(2, robot(400, 302, radar=0), target),
        message(3, robot(400, 303, radar=0), target),
    ]
    scanner, _ = round_transitions(turns)
    assert scanner.obs.shape == (2, len(OBS_FIELDS)) == scanner.next_obs.shape
    assert scanner.turn.tolist() == [1, 2], "the round_start message gives no row of its own"
    np.testing.assert_allclose(scanner.obs[:, 8:], [[0, 199, 80, 90, 0, 0], [0, 198, 80, 90, 0, 0]], atol=1e-9)
    without_start = round_transitions(turns[1:])[0]
    np.testing.assert_allclose(without_start.obs[:, 8:], [list(UNSEEN), [0, 198, 80, 90, 0, 0]], atol=1e-9)
