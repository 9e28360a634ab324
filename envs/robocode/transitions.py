"""Robocode turn snapshots → per-robot transitions with the actions recovered from them.

An expert robot is not asked what it commanded; what it did shows in consecutive snapshots:

    target_speed     its velocity on the next turn (pixels/turn)
    turn_rate        the change of body heading (degrees/turn)
    gun_turn_rate    the change of gun heading less the body's (the gun turns with the body)
    radar_turn_rate  the change of radar heading less the gun's (the radar turns with the gun)
    fire_power       the power of the bullet it fired (a new bullet id of its own), else 0

Rows where that recovery is not exact are flagged: `collision` (the robot hit a wall or a
robot: the engine stopped it), `disabled` (energy 0: it cannot act) and `post_round` (the
other robot is dead: the round is decided and the ~150 turns left mean nothing).
Headings are degrees, as in Robocode's API and the seed JSON files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

OBS_FIELDS = ("x", "y", "heading", "gun_heading", "radar_heading", "velocity", "gun_heat", "energy")
ACTION_FIELDS = ("target_speed", "turn_rate", "gun_turn_rate", "radar_turn_rate", "fire_power")
COLLISION_STATES = {"HIT_WALL", "HIT_ROBOT"}
FIRED_STATES = {"FIRED", "MOVING"}


@dataclass
class RobotRound:
    """One robot's transitions in one round: arrays of T rows."""

    robot: str
    round: int
    turn: np.ndarray          # int64 [T], the turn of `obs`
    obs: np.ndarray           # float32 [T, 8]
    action: np.ndarray        # float32 [T, 5]
    next_obs: np.ndarray      # float32 [T, 8]
    reward: np.ndarray        # float32 [T]
    terminated: np.ndarray    # bool [T]
    collision: np.ndarray     # bool [T]
    disabled: np.ndarray      # bool [T]
    post_round: np.ndarray    # bool [T]

    @property
    def num_rows(self) -> int:
        return int(self.turn.size)


def robot_state(robot: dict) -> list[float]:
    """The 8 observation values of one robot in a turn message (headings in degrees)."""
    return [robot["x"], robot["y"], math.degrees(robot["heading"]), math.degrees(robot["gun_heading"]),
            math.degrees(robot["radar_heading"]), robot["velocity"], robot["gun_heat"], robot["energy"]]


def _turned(before: float, after: float) -> float:
    """after - before in degrees, normalised into (-180, 180]."""
    delta = (after - before) % 360.0
    return delta - 360.0 if delta > 180.0 else delta


def split_rounds(messages: list[dict]) -> dict[int, list[dict]]:
    """The turn messages of a battle, by round."""
    rounds: dict[int, list[dict]] = {}
    for message in messages:
        if message.get("t") == "turn":
            rounds.setdefault(message["round"], []).append(message)
    return rounds


def round_transitions(turns: list[dict], reward_scale: float = 100.0, win_reward: float = 1.0) -> list[RobotRound]:
    """Every robot's transitions in one round (`turns`: its turn messages in order).

    A robot has a row for each turn it starts alive; its last row is `terminated` (it died,
    or the round ended). The reward is (own energy change - the others' energy change) /
    `reward_scale`, plus `win_reward` on the row where the last other robot dies and minus it
    on the row where this robot dies.
    """
    if len(turns) < 2:
        return []
    names = [robot["name"] for robot in turns[0]["robots"]]
    states = np.array([[robot_state(robot) for robot in turn["robots"]] for turn in turns], np.float64)
    alive = np.array([[robot["state"] != "DEAD" for robot in turn["robots"]] for turn in turns])
    collided = np.array([[robot["state"] in COLLISION_STATES for robot in turn["robots"]] for turn in turns])
    fired = np.zeros((len(turns), len(names)))  # fired[t, i]: power of robot i's bullet new in turn t
    seen: set[int] = set()
    for index, turn in enumerate(turns):
        for bullet in turn["bullets"]:
            if bullet["id"] not in seen:
                seen.add(bullet["id"])
                if bullet["state"] in FIRED_STATES:  # a dying robot's explosion is a "bullet" too
                    fired[index, bullet["owner"]] += bullet["power"]
    results = []
    for robot, name in enumerate(names):
        rows = [t for t in range(len(turns) - 1) if alive[t, robot]]
        if not rows:
            continue
        rows = np.array(rows)
        before, after = states[rows, robot], states[rows + 1, robot]
        body = np.array([_turned(b, a) for b, a in zip(before[:, 2], after[:, 2])])
        gun = np.array([_turned(b, a) for b, a in zip(before[:, 3], after[:, 3])])
        radar = np.array([_turned(b, a) for b, a in zip(before[:, 4], after[:, 4])])
        action = np.stack([after[:, 5], body, gun - body, radar - gun, fired[rows + 1, robot]], axis=1)
        others = [other for other in range(len(names)) if other != robot]
        own_gain = after[:, 7] - before[:, 7]
        others_gain = (states[rows + 1][:, others, 7] - states[rows][:, others, 7]).sum(axis=1)
        others_alive_before = alive[rows][:, others].any(axis=1)
        others_alive_after = alive[rows + 1][:, others].any(axis=1)
        dies = ~alive[rows + 1, robot]
        wins = others_alive_before & ~others_alive_after & ~dies
        reward = (own_gain - others_gain) / reward_scale + win_reward * wins - win_reward * dies
        terminated = dies.copy()
        terminated[-1] = True
        results.append(RobotRound(
            robot=name, round=int(turns[0]["round"]), turn=np.array([turns[t]["turn"] for t in rows], np.int64),
            obs=before.astype(np.float32), action=action.astype(np.float32), next_obs=after.astype(np.float32),
            reward=reward.astype(np.float32), terminated=terminated, collision=collided[rows + 1, robot] | collided[
                rows, robot], disabled=(before[:, 7] <= 0) | (after[:, 7] <= 0), post_round=~others_alive_before))
    return results
