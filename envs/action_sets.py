"""Discrete sets of continuous actions: a Box-action env played (and learned) as Discrete.

DQfD needs a finite action set; a person at a keyboard only ever gives a few combinations
anyway. `env.action_set` (and `learner.action_set`) takes a list of action vectors, or a
preset name: `driving` is CarRacing's keyboard combinations, steer {-1, 0, 1} x {nothing,
gas 1, brake 0.8} (9 actions). `DiscreteActions` plays action i of the set; `nearest_index`
maps recorded continuous actions to the set.
"""

from __future__ import annotations

from typing import Sequence, Union

import gymnasium as gym
import numpy as np

ActionSetSpec = Union[str, Sequence[Sequence[float]]]

PRESETS: dict[str, list[list[float]]] = {
    "driving": [
        [steer, gas, brake] for steer in (-1.0, 0.0, 1.0) for gas, brake in ((0.0, 0.0), (1.0, 0.0), (0.0, 0.8))
    ],
}


def resolve_action_set(spec: ActionSetSpec, space: gym.Space | None = None, where: str = "action_set") -> np.ndarray:
    """The set as an array [n, action dims]; checked against the Box `space` when given."""
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"{where}: no preset {spec!r}; presets are {sorted(PRESETS)} (or give a list of actions)")
        values = np.asarray(PRESETS[spec], np.float64)
    else:
        values = np.asarray(spec, np.float64)
    if values.ndim != 2 or len(values) < 2:
        raise ValueError(f"{where}: expected a list of at least 2 action vectors, got shape {values.shape}")
    if space is not None:
        if not isinstance(space, gym.spaces.Box) or space.shape != values.shape[1:]:
            raise ValueError(f"{where}: actions of shape {values.shape[1:]} do not fit the action space {space}")
        low, high = np.broadcast_to(space.low, values.shape[1:]), np.broadcast_to(space.high, values.shape[1:])
        outside = [i for i, action in enumerate(values) if (action < low).any() or (action > high).any()]
        if outside:
            raise ValueError(f"{where}: actions {outside} lie outside {space}")
    return values


def nearest_index(actions: np.ndarray, action_set: np.ndarray) -> tuple[np.ndarray, float]:
    """Each action's nearest member of the set (Euclidean), and the largest distance there was."""
    flat = np.asarray(actions, np.float32).reshape(len(actions), -1)
    distances = np.linalg.norm(flat[:, None, :] - action_set.reshape(1, len(action_set), -1), axis=-1)
    index = distances.argmin(1)
    return index.astype(np.int64), float(distances[np.arange(len(flat)), index].max(initial=0.0))


class DiscreteActions(gym.ActionWrapper):
    """A Box-action env played through a discrete set: action i is `action_set[i]`."""

    def __init__(self, env: gym.Env, action_set: ActionSetSpec) -> None:
        super().__init__(env)
        self.action_set = resolve_action_set(action_set, env.action_space, "env.action_set")
        self.action_space = gym.spaces.Discrete(len(self.action_set))

    def action(self, action: int) -> np.ndarray:
        return self.action_set[int(action)].astype(self.env.action_space.dtype)
