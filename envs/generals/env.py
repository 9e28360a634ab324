"""Generals.io behind the three APIs Harvest speaks.

* `GeneralsVectorEnv` — a Gymnasium `VectorEnv` over a batch of games, the form rollout
  workers step (`env.id: generals`). With `players: both` each game is two sub-envs (player 0
  then player 1), so both sides of every game are recorded; rows carry `game_id` and
  `player_id` through the `harvest_row_columns` metadata.
* `GeneralsEnv` — one game as a `gymnasium.Env`: the agent is player 0, `opponent` plays 1.
* `GeneralsParallelEnv` — one game as a PettingZoo `ParallelEnv` with agents `player_0` and
  `player_1`.

Actions are flat indices (`envs.generals.actions`); observations are dicts with the 9-channel
`board`, the visible `armies` and `generals`, and `action_mask` (`envs.generals.observations`).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from pettingzoo import ParallelEnv

from harvest.envs.generals.games import GeneralsConfig, GeneralsGames
from harvest.envs.generals.observations import observation_space
from harvest.envs.generals.players import ExpertPlayer, RandomLegalPlayer
from harvest.envs.generals.render import render_game
from harvest.envs.spaces import ColumnSpec

ROW_COLUMNS = {"game_id": ColumnSpec(np.int64, ()), "player_id": ColumnSpec(np.int8, ())}


def _opponent(kind: str, seed: int | None):
    if kind == "random":
        return RandomLegalPlayer(seed)
    if kind == "expert":
        return ExpertPlayer(seed)
    return None  # "pass"


def _player_slice(observations: dict[str, np.ndarray] | None, player: int) -> dict[str, np.ndarray]:
    if observations is None:  # the opponent plays from the last observation, which reset() makes
        raise RuntimeError("generals: step() called before reset()")
    return {key: value[:, player] for key, value in observations.items()}


class LiveRewards:
    """`set_reward_weights`, which rollout workers call on a live edit of `env.kwargs.rewards`."""

    games: GeneralsGames

    def set_reward_weights(self, weights: dict[str, float]) -> None:
        self.games.set_reward_weights(weights)
        self.cfg = self.games.cfg


class GeneralsVectorEnv(LiveRewards, VectorEnv):
    """A batch of Generals.io games as one Gymnasium vector env (NEXT_STEP autoreset).

    Args:
        num_envs: sub-envs; with `players: both` an even number (two per game).
        render_mode: `rgb_array` renders game 0.
        **kwargs: `GeneralsConfig` fields (`players`, `opponent`, `max_steps`, `map`, `rewards`).
    """

    metadata = {
        "autoreset_mode": AutoresetMode.NEXT_STEP,
        "render_modes": ["rgb_array"],
        "harvest_row_columns": ROW_COLUMNS,
    }

    def __init__(self, num_envs: int = 2, render_mode: str | None = None, **kwargs: Any) -> None:
        self.cfg = GeneralsConfig(**kwargs)
        both = self.cfg.players == "both"
        if both and num_envs % 2:
            raise ValueError(
                f"generals: num_envs={num_envs} with players: both needs an even number (two sub-envs per game)"
            )
        self.num_envs = num_envs
        self.players_per_game = 2 if both else 1
        self.games = GeneralsGames(num_envs // self.players_per_game, self.cfg)
        self.render_mode = render_mode
        size = self.games.size
        self.single_observation_space = observation_space(size, size)
        self.single_action_space = gym.spaces.Discrete(self.games.num_actions)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._opponent = None if both else _opponent(self.cfg.opponent, None)
        self._autoreset = np.zeros(self.games.num_games, bool)
        self._observations: dict[str, np.ndarray] | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self.games.seed(seed)
            if self._opponent is not None:
                self._opponent.rng = np.random.default_rng(seed + 1)
        self.games.reset(np.arange(self.games.num_games), (options or {}).get("maps"))
        self._autoreset[:] = False
        return self._observe(), self._info()

    def step(self, actions: np.ndarray):
        games = self.games
        actions = np.asarray(actions, np.int64).reshape(games.num_games, self.players_per_game)
        if self.players_per_game == 1:
            opponent = np.full(games.num_games, games.num_actions - 1, np.int64)  # pass
            if self._opponent is not None:
                opponent = self._opponent.act(_player_slice(self._observations, 1))
            actions = np.stack([actions[:, 0], opponent], axis=1)
        resetting = self._autoreset.copy()
        rewards, terminated, truncated = games.step(actions, active=~resetting)
        if resetting.any():
            games.reset(np.flatnonzero(resetting))
        self._autoreset = terminated | truncated
        observations = self._observe()
        per_slot = lambda values: np.repeat(values, self.players_per_game)  # noqa: E731
        rewards = rewards[:, : self.players_per_game].reshape(-1)
        return observations, rewards, per_slot(terminated), per_slot(truncated), self._info()

    def _observe(self) -> dict[str, np.ndarray]:
        self._observations = self.games.observations()
        return {
            key: value[:, : self.players_per_game].reshape(self.num_envs, *value.shape[2:])
            for key, value in self._observations.items()
        }

    def _info(self) -> dict[str, np.ndarray]:
        players = np.arange(self.players_per_game, dtype=np.int8)
        return {
            "game_id": np.repeat(self.games.game_id, self.players_per_game),
            "player_id": np.tile(players, self.games.num_games),
        }

    # Game 0 only, one frame (see Args), where Gymnasium's VectorEnv gives a frame per sub-env.
    def render(self) -> np.ndarray | None:  # type: ignore[override]
        if self.render_mode == "rgb_array":
            return render_game(self.games.engine, 0)
        return None


class GeneralsEnv(LiveRewards, gym.Env):
    """One Generals.io game for a single agent (player 0) against `opponent`.

    Args:
        render_mode: `rgb_array`.
        **kwargs: `GeneralsConfig` fields (`players` is ignored: the agent is always player 0).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 6}

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        kwargs["players"] = "first"
        self.cfg = GeneralsConfig(**kwargs)
        self.games = GeneralsGames(1, self.cfg)
        size = self.games.size
        self.observation_space = observation_space(size, size)
        self.action_space = gym.spaces.Discrete(self.games.num_actions)
        self.render_mode = render_mode
        self._opponent = _opponent(self.cfg.opponent, None)
        self._observations: dict[str, np.ndarray] | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.games.seed(seed)
        self.games.rng = self.np_random
        if self._opponent is not None:
            self._opponent.rng = np.random.default_rng(self.np_random.integers(2**63))
        maps = (options or {}).get("map")
        self.games.reset(np.zeros(1, np.int64), None if maps is None else [maps])
        return self._observe(), self._info()

    def step(self, action: int):
        if self.games.engine.done[0] or self.games.engine.time[0] >= self.cfg.max_steps:
            raise RuntimeError("GeneralsEnv.step called after the game ended; call reset()")
        opponent = self.games.num_actions - 1
        if self._opponent is not None:
            opponent = int(self._opponent.act(_player_slice(self._observations, 1))[0])
        rewards, terminated, truncated = self.games.step(np.array([[int(action), opponent]]))
        return self._observe(), float(rewards[0, 0]), bool(terminated[0]), bool(truncated[0]), self._info()

    def _observe(self) -> dict[str, np.ndarray]:
        self._observations = self.games.observations()
        return {key: value[0, 0] for key, value in self._observations.items()}

    def _info(self) -> dict[str, Any]:
        engine = self.games.engine
        return {"game_id": int(self.games.game_id[0]), "time": int(engine.time[0]), "winner": int(engine.winner[0])}

    def render(self) -> np.ndarray | None:
        if self.render_mode == "rgb_array":
            return render_game(self.games.engine, 0)
        return None


class GeneralsParallelEnv(LiveRewards, ParallelEnv):
    """One Generals.io game for two agents, `player_0` and `player_1` (PettingZoo Parallel API)."""

    metadata = {"name": "generals_v0", "render_modes": ["rgb_array"], "render_fps": 6, "is_parallelizable": True}

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        self.cfg = GeneralsConfig(**kwargs)
        self.games = GeneralsGames(1, self.cfg)
        self.possible_agents = ["player_0", "player_1"]
        self.agents: list[str] = []
        self.render_mode = render_mode
        size = self.games.size
        self._observation_space = observation_space(size, size)
        self._action_space = gym.spaces.Discrete(self.games.num_actions)

    def observation_space(self, agent: str) -> gym.Space:
        return self._observation_space

    def action_space(self, agent: str) -> gym.Space:
        return self._action_space

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self.games.seed(seed)
        maps = (options or {}).get("map")
        self.games.reset(np.zeros(1, np.int64), None if maps is None else [maps])
        self.agents = list(self.possible_agents)
        return self._observe(), {agent: self._info(player) for player, agent in enumerate(self.agents)}

    def step(self, actions: dict[str, int]):
        missing = [agent for agent in self.agents if agent not in actions]
        if missing:
            raise KeyError(f"GeneralsParallelEnv.step: no action for {missing}")
        flat = np.array([[int(actions[agent]) for agent in self.possible_agents]])
        rewards, terminated, truncated = self.games.step(flat)
        observations = self._observe()
        agents = self.agents
        result = (
            observations,
            {agent: float(rewards[0, player]) for player, agent in enumerate(agents)},
            {agent: bool(terminated[0]) for agent in agents},
            {agent: bool(truncated[0]) for agent in agents},
            {agent: self._info(player) for player, agent in enumerate(agents)},
        )
        if terminated[0] or truncated[0]:
            self.agents = []
        return result

    def _observe(self) -> dict[str, dict[str, np.ndarray]]:
        observations = self.games.observations()
        return {
            agent: {key: value[0, player] for key, value in observations.items()}
            for player, agent in enumerate(self.possible_agents)
        }

    def _info(self, player: int) -> dict[str, Any]:
        return {"game_id": int(self.games.game_id[0]), "player_id": player}

    def render(self) -> np.ndarray | None:
        if self.render_mode == "rgb_array":
            return render_game(self.games.engine, 0)
        return None

    def close(self) -> None:
        pass
