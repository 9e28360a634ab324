"""`GeneralsGames`: a batch of games with maps, ids, rewards and per-player observations —
the one core that the vector, Gymnasium and PettingZoo envs wrap."""

from __future__ import annotations

import dataclasses
import secrets
from typing import Literal, Optional

import numpy as np
from pydantic import ConfigDict, Field, StrictInt
from pydantic.dataclasses import dataclass

from harvest.envs.generals.actions import decode, num_actions
from harvest.envs.generals.engine import GeneralsEngine
from harvest.envs.generals.maps import MapLayout, MapSettings, generate_map, parse_map
from harvest.envs.generals.observations import player_observations
from harvest.envs.generals.replays import GameRecord
from harvest.envs.generals.rewards import RewardWeights, step_rewards


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class MapConfig:
    """The `env.kwargs.map:` section."""

    min_size: StrictInt = Field(default=15, ge=4)
    """Fewest rows (and columns) of a map."""
    max_size: StrictInt = Field(default=20, ge=4)
    """Most rows (and columns); every board is padded to this size with mountains."""
    mountain_density: float = 0.2
    """Chance that a tile is a mountain."""
    city_density: float = 0.05
    """Chance that a tile is a city (40-50 neutral army)."""
    min_general_distance: Optional[StrictInt] = Field(default=None, ge=1)
    """Generals at least this many steps apart by land (None: half the larger side)."""

    def settings(self) -> MapSettings:
        return MapSettings(
            self.min_size, self.max_size, self.mountain_density, self.city_density, self.min_general_distance
        )


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class GeneralsConfig:
    """The `env.kwargs:` of `env.id: generals`."""

    players: Literal["both", "first"] = "both"
    """`both`: every game gives two sub-envs, player 0 and player 1, both played by the
    collector's policy (both sides recorded). `first`: one sub-env per game, player 0, against
    `opponent`."""
    opponent: Literal["random", "expert", "pass"] = "random"
    """Who plays player 1 when `players: first`."""
    max_steps: StrictInt = Field(default=500, ge=1)
    """A game still running after this many steps is truncated."""
    map: MapConfig = Field(default_factory=MapConfig)
    rewards: RewardWeights = Field(default_factory=RewardWeights)
    record_dir: Optional[str] = None
    """Write every finished game's record (map and actions, `game-<id>.json`) here, for
    `harvest generals-gif`; None: no records."""


class GeneralsGames:
    """`num_games` games on boards of `cfg.map.max_size`², with ids, rewards and observations.

    Args:
        num_games: games stepped together.
        cfg: rules of the run (map, truncation, reward weights).
        seed: seeds map generation (None: fresh entropy).

    Game ids are `(salt << 32) | counter` with a 31-bit salt drawn from the seed (from fresh
    entropy when unseeded), so collectors seeded apart do not share ids.
    """

    def __init__(self, num_games: int, cfg: GeneralsConfig, seed: int | None = None) -> None:
        self.cfg = cfg
        self.size = cfg.map.max_size
        self.settings = cfg.map.settings()
        self.engine = GeneralsEngine(num_games, self.size, self.size)
        self.num_games = num_games
        self.num_actions = num_actions(self.size, self.size)
        self.game_id = np.zeros(num_games, np.int64)
        if seed is None:
            self.rng, self._id_base, self._games_started = np.random.default_rng(), secrets.randbits(31) << 32, 0
        else:
            self.seed(seed)  # the salt of the game ids comes from the seed too, as the docstring says
        self.layouts: list[MapLayout | None] = [None] * num_games
        self._action_log = np.zeros((num_games, cfg.max_steps, 2), np.int32) if cfg.record_dir else None

    def set_reward_weights(self, weights: dict[str, float]) -> None:
        """New `rewards:` weights from the next step on (a live config edit); unknown keys are
        refused (ValueError) and nothing changes."""
        self.cfg = dataclasses.replace(self.cfg, rewards=RewardWeights(**weights))

    def seed(self, seed: int | None) -> None:
        """Reseed maps and game ids: the same seed replays the same maps under the same ids."""
        self.rng = np.random.default_rng(seed)
        self._id_base = int(self.rng.integers(2**31)) << 32
        self._games_started = 0

    def reset(self, games: np.ndarray, layouts: list[MapLayout | str] | None = None) -> None:
        """New games (new maps, unless `layouts` are given) in slots `games`."""
        games = np.asarray(games, np.int64)
        if layouts is None:
            layouts = [generate_map(self.rng, self.settings) for _ in games]
        parsed = [parse_map(layout) if isinstance(layout, str) else layout for layout in layouts]
        self.engine.load(games, parsed)
        for game, layout in zip(games.tolist(), parsed):
            self.layouts[game] = layout
        self.game_id[games] = self._id_base + self._games_started + np.arange(games.size)
        self._games_started += games.size

    def observations(self) -> dict[str, np.ndarray]:
        """Every player's observation, each value [G, 2, ...]."""
        return player_observations(self.engine)

    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step with flat actions [G, 2]; returns rewards [G, 2], terminated [G] and truncated [G].

        Games not `active` (and games already over) do not move and get no reward.
        """
        engine = self.engine
        moves = decode(actions, self.size, self.size)
        cities_before, _ = self._holdings()
        stepped = engine.step(*moves, active=active)
        terminated = stepped & engine.done
        truncated = stepped & ~engine.done & (engine.time >= self.cfg.max_steps)
        if self._action_log is not None:
            logged = np.flatnonzero(stepped & (engine.time <= self.cfg.max_steps))
            self._action_log[logged, engine.time[logged] - 1] = actions[logged]
            if (terminated | truncated).any():
                self._write_records(np.flatnonzero(terminated | truncated))
        cities_after, army = self._holdings()
        rewards = step_rewards(self.cfg.rewards, engine.winner, terminated, cities_before, cities_after, army)
        return rewards * stepped[:, None], terminated, truncated

    def _write_records(self, games: np.ndarray) -> None:
        record_dir, action_log = self.cfg.record_dir, self._action_log
        assert record_dir is not None and action_log is not None  # step() records only with a record_dir
        for game in games.tolist():
            steps = int(self.engine.time[game])
            layout = self.layouts[game]
            assert layout is not None  # a game that stepped was reset, which sets its layout
            GameRecord(
                int(self.game_id[game]),
                self.size,
                layout.to_text(),
                action_log[game, :steps].tolist(),
                int(self.engine.winner[game]),
            ).save(record_dir)

    def _holdings(self) -> tuple[np.ndarray, np.ndarray]:
        """[G, 2] cities owned and [G, 2] total army of each player."""
        owned = self.engine.owner[:, None] == np.arange(2, dtype=np.int8)[None, :, None, None]
        return (owned & self.engine.city[:, None]).sum((2, 3)), (self.engine.armies[:, None] * owned).sum((2, 3))
