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

An observation (`OBS_FIELDS`) is the robot's own state (`STATE_FIELDS`, `robot_state`) and
what its radar last saw of the others (`SIGHTING_FIELDS`, see `envs.robocode.sightings`),
both from the snapshots alone; `observations` is the one function that makes them, for the
collected rows and for `RobocodeEnv` alike. A round's list may start with its `round_start`
message (turn 0, as the runner prints it): it gives no row, only the sweep of turn 1.
Headings are degrees, as in Robocode's API and the seed JSON files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harvest.envs.robocode.sightings import SIGHTING_FIELDS, RadarMemory, degrees_turned

STATE_FIELDS = ("x", "y", "heading", "gun_heading", "radar_heading", "velocity", "gun_heat", "energy")
OBS_FIELDS = STATE_FIELDS + SIGHTING_FIELDS
ACTION_FIELDS = ("target_speed", "turn_rate", "gun_turn_rate", "radar_turn_rate", "fire_power")
COLLISION_STATES = {"HIT_WALL", "HIT_ROBOT"}
FIRED_STATES = {"FIRED", "MOVING"}


@dataclass
class RobotRound:
    """One robot's transitions in one round: arrays of T rows."""

    robot: str
    round: int
    turn: np.ndarray  # int64 [T], the turn of `obs`
    obs: np.ndarray  # float32 [T, 14] (OBS_FIELDS)
    action: np.ndarray  # float32 [T, 5]
    next_obs: np.ndarray  # float32 [T, 14]
    reward: np.ndarray  # float32 [T]
    terminated: np.ndarray  # bool [T]
    collision: np.ndarray  # bool [T]
    disabled: np.ndarray  # bool [T]
    post_round: np.ndarray  # bool [T]

    @property
    def num_rows(self) -> int:
        return int(self.turn.size)


def robot_state(robot: dict) -> list[float]:
    """The 8 observation values of one robot in a turn message (headings in degrees)."""
    return [
        robot["x"],
        robot["y"],
        math.degrees(robot["heading"]),
        math.degrees(robot["gun_heading"]),
        math.degrees(robot["radar_heading"]),
        robot["velocity"],
        robot["gun_heat"],
        robot["energy"],
    ]


def observations(memory: RadarMemory, before: dict | None, turn: dict) -> np.ndarray:
    """[R, 14] float64: every robot's `OBS_FIELDS` in the turn message `turn`, after `memory`
    has taken in the radar sweeps since `before` (the previous message of the round, or None)."""
    memory.update(before, turn)
    return np.array([robot_state(robot) + memory.features(index, turn) for index, robot in enumerate(turn["robots"])])


def step_rewards(
    energy: np.ndarray,
    next_energy: np.ndarray,
    alive: np.ndarray,
    next_alive: np.ndarray,
    robot: int,
    reward_scale: float = 100.0,
    win_reward: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robot `robot`'s rewards over N steps, and on which of them it dies and wins.

    Args:
        energy, next_energy: [N, R] every robot's energy before and after each step.
        alive, next_alive: [N, R] bool, the same for being alive.

    Returns:
        reward [N] ((own energy change - the others' energy change) / `reward_scale`, plus
        `win_reward` when the last other robot dies, minus it when this one dies), dies [N], wins [N].
    """
    others = [other for other in range(energy.shape[1]) if other != robot]
    own_gain = next_energy[:, robot] - energy[:, robot]
    others_gain = (next_energy[:, others] - energy[:, others]).sum(axis=1)
    dies = ~next_alive[:, robot]
    wins = alive[:, others].any(axis=1) & ~next_alive[:, others].any(axis=1) & ~dies
    reward = (own_gain - others_gain) / reward_scale + win_reward * wins - win_reward * dies
    return reward, dies, wins


def split_rounds(messages: list[dict]) -> dict[int, list[dict]]:
    """The round_start and turn messages of a battle, by round."""
    rounds: dict[int, list[dict]] = {}
    for message in messages:
        if message.get("t") in ("round_start", "turn"):
            rounds.setdefault(message["round"], []).append(message)
    return rounds


def round_transitions(turns: list[dict], reward_scale: float = 100.0, win_reward: float = 1.0) -> list[RobotRound]:
    """Every robot's transitions in one round (`turns`: its turn messages in order, optionally
    after its round_start message).

    A robot has a row for each turn it starts alive; its last row is `terminated` (it died,
    or the round ended). Rewards: `step_rewards`.
    """
    start = turns[0] if turns and turns[0].get("t") == "round_start" else None
    turns = turns[1:] if start is not None else turns
    if len(turns) < 2:
        return []
    names = [robot["name"] for robot in turns[0]["robots"]]
    memory = RadarMemory()
    states = np.array([observations(memory, before, turn) for before, turn in zip([start, *turns[:-1]], turns)])
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
        alive_turns = [t for t in range(len(turns) - 1) if alive[t, robot]]
        if not alive_turns:
            continue
        rows = np.array(alive_turns)
        before, after = states[rows, robot], states[rows + 1, robot]
        body = np.array([degrees_turned(b, a) for b, a in zip(before[:, 2], after[:, 2])])
        gun = np.array([degrees_turned(b, a) for b, a in zip(before[:, 3], after[:, 3])])
        radar = np.array([degrees_turned(b, a) for b, a in zip(before[:, 4], after[:, 4])])
        action = np.stack([after[:, 5], body, gun - body, radar - gun, fired[rows + 1, robot]], axis=1)
        reward, dies, _ = step_rewards(
            states[rows, :, 7], states[rows + 1, :, 7], alive[rows], alive[rows + 1], robot, reward_scale, win_reward
        )
        others_alive_before = np.any(alive[rows][:, [other for other in range(len(names)) if other != robot]], axis=1)
        terminated = dies.copy()
        terminated[-1] = True
        results.append(
            RobotRound(
                robot=name,
                round=int(turns[0]["round"]),
                turn=np.array([turns[t]["turn"] for t in rows], np.int64),
                obs=before.astype(np.float32),
                action=action.astype(np.float32),
                next_obs=after.astype(np.float32),
                reward=reward.astype(np.float32),
                terminated=terminated,
                collision=collided[rows + 1, robot] | collided[rows, robot],
                disabled=(before[:, 7] <= 0) | (after[:, 7] <= 0),
                post_round=~others_alive_before,
            )
        )
    return results
