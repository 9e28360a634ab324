"""`RobocodeCollector`: one Robocode engine (a JVM) running expert battles, every robot's
turns pushed into the sharded replay as transitions.

A plain class; Ray makes it an actor where it is started, one JVM per actor. Each battle is
seeded (`seed + battle index`), so a collector's battles repeat exactly; an engine that
hangs is killed and restarted and its unfinished battle is dropped, never half pushed.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
from loguru import logger

from envs.robocode.host import EngineStalled, RobocodeHost
from envs.robocode.spaces import ACTION_SPACE, OBSERVATION_SPACE
from envs.robocode.transitions import RobotRound, round_transitions, split_rounds
from envs.spaces import ColumnSpec
from rollout.batch import TIMESTAMP_DTYPE, BatchSchema, TransitionBatch
from rollout.cutter import EpisodeIds
from rollout.replay.replay import Replay

ROW_COLUMNS = {
    "battle_id": ColumnSpec(np.int64, ()), "round": ColumnSpec(np.int64, ()), "turn": ColumnSpec(np.int64, ()),
    "seed": ColumnSpec(np.int64, ()), "robot_id": ColumnSpec(np.int64, ()),
    "collision": ColumnSpec(np.bool_, ()), "disabled": ColumnSpec(np.bool_, ()), "post_round": ColumnSpec(np.bool_, ()),
}


def robocode_schema() -> BatchSchema:
    """Rows of Robocode battles: 8 observation values, 5 recovered actions, provenance, flags.

    `robot_id` indexes the battle's robot list (`RobocodeBattles.robots`).
    """
    return BatchSchema.for_spaces(OBSERVATION_SPACE, ACTION_SPACE, extras=ROW_COLUMNS)


@dataclass(frozen=True)
class RobocodeBattles:
    """What a collector plays: robots (`package.Class`), rounds per battle, battlefield, seed."""

    robots: tuple[str, ...] = ("sample.SpinBot", "sample.Target")
    rounds_per_battle: int = 3
    width: int = 800
    height: int = 600
    seed: int = 0
    turn_timeout_s: float = 30.0
    max_restarts: int = 3


@dataclass
class RobocodeCollectResult:
    collector_id: int
    rows: int
    battles: int
    rounds: int
    restarts: int
    turns: int
    seconds: float
    dropped_battles: list[int] = field(default_factory=list)


class RobocodeCollector:
    """Runs seeded expert battles in its own engine and pushes every robot's transitions.

    Args:
        battles: what to play.
        replay: where rows go (its schema must be `robocode_schema()`).
        collector_id: this collector's index; battle ids and episode ids are unique per collector.
        workdir: the engine's folder (a temporary one when None).
        cache_root: where the compiled runner is kept.
    """

    def __init__(self, battles: RobocodeBattles, replay: Replay, collector_id: int, episode_uid: int,
                 workdir: str | None = None, cache_root: str = "~/.cache/harvest/robocode") -> None:
        self.battles, self.replay, self.collector_id = battles, replay, collector_id
        self.schema = robocode_schema()
        if replay.schema.columns != self.schema.columns:
            raise ValueError(f"RobocodeCollector[{collector_id}]: the replay's columns are not robocode_schema()'s")
        self._log = logger.bind(actor=f"RobocodeCollector[{collector_id}]")
        self._workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"robocode-{collector_id}-"))
        self.engine = RobocodeHost(self._workdir, Path(cache_root).expanduser())
        self._episode_ids = EpisodeIds(episode_uid)
        self._next_battle = 0

    def collect(self, num_rows: int) -> RobocodeCollectResult:
        """Play battles until at least `num_rows` rows are pushed and acknowledged."""
        started = time.perf_counter()
        result = RobocodeCollectResult(self.collector_id, 0, 0, 0, 0, 0, 0.0)
        while result.rows < num_rows:
            battle_index = self._next_battle
            self._next_battle += 1
            messages = self._play(battle_index, result)
            if messages is None:
                result.dropped_battles.append(battle_index)
                continue
            batch = self._rows(battle_index, messages)
            ray.get(self.replay.insert_async(batch, f"robocode collector {self.collector_id}"), timeout=120)
            result.rows += batch.num_rows
            result.turns += sum(message["t"] == "turn" for message in messages)
            result.battles += 1
            result.rounds += self.battles.rounds_per_battle
        result.seconds = time.perf_counter() - started
        self._log.info("collected {} rows from {} battles in {:.1f}s ({} restarts)", result.rows, result.battles,
                       result.seconds, result.restarts)
        return result

    def _play(self, battle_index: int, result: RobocodeCollectResult) -> list[dict] | None:
        cfg = self.battles
        for _ in range(cfg.max_restarts + 1):
            try:
                return list(self.engine.battle(list(cfg.robots), cfg.rounds_per_battle, cfg.seed + battle_index,
                                               cfg.width, cfg.height, cfg.turn_timeout_s))
            except EngineStalled as err:
                self._log.warning("battle {} dropped, restarting the engine: {}", battle_index, err)
                result.restarts += 1
                self.engine.restart()
        return None

    def _rows(self, battle_index: int, messages: list[dict]) -> TransitionBatch:
        parts: list[tuple[RobotRound, int]] = []
        for turns in split_rounds(messages).values():
            for part in round_transitions(turns):
                parts.append((part, self.battles.robots.index(part.robot)))
        episode_ids = self._episode_ids.next(len(parts))
        columns: dict[str, list[np.ndarray]] = {name: [] for name in self.schema.columns}
        now = np.datetime64(time.time_ns(), "ns")
        for (part, robot_id), episode_id in zip(parts, episode_ids):
            rows = part.num_rows
            values = {
                "obs": part.obs, "action": part.action, "reward": part.reward, "next_obs": part.next_obs,
                "terminated": part.terminated, "truncated": np.zeros(rows, bool),
                "episode_id": np.full(rows, episode_id, np.int64), "step": np.arange(rows, dtype=np.int64),
                "collector_id": np.full(rows, self.collector_id, np.int64),
                "policy_version": np.zeros(rows, np.int64),
                "timestamp": np.full(rows, now, TIMESTAMP_DTYPE),
                "battle_id": np.full(rows, (self.collector_id << 32) | battle_index, np.int64),
                "round": np.full(rows, part.round, np.int64), "turn": part.turn,
                "seed": np.full(rows, self.battles.seed + battle_index, np.int64),
                "robot_id": np.full(rows, robot_id, np.int64), "collision": part.collision,
                "disabled": part.disabled, "post_round": part.post_round,
            }
            for name in columns:
                columns[name].append(values[name])
        batch = TransitionBatch({name: np.concatenate(parts_of) for name, parts_of in columns.items()})
        self.schema.validate(batch, f"robocode collector {self.collector_id}")
        return batch

    def close(self) -> None:
        self.engine.close()
