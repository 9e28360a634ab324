"""Learning a Box-action dataset as Discrete over an action set (`learner.action_set`).

Each recorded action becomes the index of its nearest member of the set (a keyboard's actions
are members exactly; a gamepad's are rounded to the nearest, and the largest distance is
logged). The checkpoint records the set, so `load_torch_policy` plays it in the original
Box-action env by looking the chosen index up.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harvest.envs.action_sets import nearest_index

ACTION_SET_KEY = "action_set"


def map_to_action_set(actions: np.ndarray, action_set: np.ndarray, where: object, log: Any) -> np.ndarray:
    """`actions` [N, dims] as indices into `action_set`, with a line on how well they fit."""
    indices, worst = nearest_index(actions, action_set)
    counts = np.bincount(indices, minlength=len(action_set))
    log.info(
        "{}: {} actions mapped to the {}-action set (largest distance {:.3f}); per action: {}",
        where,
        len(indices),
        len(action_set),
        worst,
        counts.tolist(),
    )
    return indices


def action_set_info(action_set: np.ndarray | None) -> dict[str, Any]:
    """What a checkpoint's metadata records of the set (nothing without one)."""
    return {} if action_set is None else {ACTION_SET_KEY: np.asarray(action_set).tolist()}
