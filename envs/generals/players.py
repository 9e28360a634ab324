"""Scripted Generals.io players acting on batches of observations (no per-game Python loop).

Both read only what the player sees (`envs.generals.observations`) and return flat actions.
"""

from __future__ import annotations

import numpy as np

from harvest.envs.generals.actions import encode, pass_action

_UNREACHED = np.iinfo(np.int32).max


class RandomLegalPlayer:
    """A uniformly random legal action (pass included, so it also idles now and then)."""

    def __init__(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        mask = obs["action_mask"] > 0
        keys = np.where(mask, self.rng.random(mask.shape), -1.0)
        return keys.argmax(axis=1).astype(np.int64)


class ExpertPlayer:
    """Expands, takes cities, and marches its largest army on the enemy: beats random play.

    Each step, per game:
    1. capture the enemy general if a move can;
    2. else, once its largest army reaches `march_army` (or when nothing can be captured),
       move that army one step closer to the target: the enemy general if seen, else the
       nearest enemy land, else the fog;
    3. else capture: enemy land first (biggest first), then cities, then plain land.

    With `noise=0` (the default) the choice is a function of the observation alone, which is
    what behaviour cloning can learn best; `noise > 0` breaks ties at random.
    """

    def __init__(self, seed: int | None = None, march_army: int = 10, noise: float = 0.0) -> None:
        self.rng = np.random.default_rng(seed)
        self.march_army = march_army
        self.noise = noise

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        board, armies = obs["board"], obs["armies"].astype(np.int64)
        num_obs, _, height, width = board.shape
        legal = obs["action_mask"][:, :-1].reshape(num_obs, height, width, 4, 2)[..., 0] > 0
        own, enemy, neutral = board[:, 2] > 0, board[:, 3] > 0, board[:, 4] > 0
        city, mountain, fog = board[:, 5] > 0, board[:, 6] > 0, board[:, 8] > 0
        enemy_general = (obs["generals"] > 0) & enemy

        own_army = armies * own
        moving = (own_army - 1)[..., None]
        dest_army = _neighbours(armies)
        captures = legal & (moving > dest_army) & ~_neighbours(own)
        takes_general = captures & _neighbours(enemy_general)

        seen_general = np.any(enemy_general, axis=(1, 2))
        seen_enemy = np.any(enemy, axis=(1, 2))
        targets = np.where(
            seen_general[:, None, None], enemy_general, np.where(seen_enemy[:, None, None], enemy, fog & ~mountain)
        )
        distance = _distance_to(targets, ~mountain)
        closer = legal & (_neighbours(distance) < distance[..., None])
        march = np.where(closer, own_army[..., None] + self.noise * self.rng.random(closer.shape), -np.inf)

        capture_value = np.where(
            _neighbours(enemy), 3e6 + dest_army, np.where(_neighbours(city & neutral), 2e6 - dest_army, 1e6 - moving)
        )
        capture = np.where(captures, capture_value + self.noise * self.rng.random(captures.shape), -np.inf)

        flat = lambda score: score.reshape(num_obs, -1)  # noqa: E731
        best_march, best_capture = flat(march).argmax(1), flat(capture).argmax(1)
        can_march = np.isfinite(flat(march).max(1))
        can_capture = np.isfinite(flat(capture).max(1))
        do_march = can_march & (~can_capture | (own_army.max((1, 2)) >= self.march_army))
        choice = np.where(do_march, best_march, best_capture)
        general_move = flat(np.where(takes_general, 1.0, -np.inf)).argmax(1)
        choice = np.where(takes_general.any((1, 2, 3)), general_move, choice)

        tile, direction = np.divmod(choice, 4)
        actions = encode(tile // width, tile % width, direction, 0, height, width)
        return np.where(can_march | can_capture, actions, pass_action(height, width))


def _neighbours(grid: np.ndarray) -> np.ndarray:
    """[..., H, W, 4]: the value of the tile up, down, left, right of each tile (0 off the board)."""
    out = np.zeros((*grid.shape, 4), grid.dtype)
    out[..., 1:, :, 0] = grid[..., :-1, :]
    out[..., :-1, :, 1] = grid[..., 1:, :]
    out[..., :, 1:, 2] = grid[..., :, :-1]
    out[..., :, :-1, 3] = grid[..., :, 1:]
    return out


def _distance_to(targets: np.ndarray, passable: np.ndarray) -> np.ndarray:
    """[N, H, W] steps to the nearest target through passable tiles (int32 max where none)."""
    distance = np.where(targets, 0, _UNREACHED).astype(np.int64)
    frontier = targets.copy()
    step = 0
    while frontier.any():
        step += 1
        grown = np.zeros_like(frontier)
        grown[:, 1:] |= frontier[:, :-1]
        grown[:, :-1] |= frontier[:, 1:]
        grown[:, :, 1:] |= frontier[:, :, :-1]
        grown[:, :, :-1] |= frontier[:, :, 1:]
        frontier = grown & passable & (distance == _UNREACHED)
        distance[frontier] = step
    return distance
