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
from datetime import datetime
from pathlib import Path
from typing import Optional

import numpy as np
import ray
from loguru import logger
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from harvest.envs.robocode.host import RobocodeError, RobocodeHost
from harvest.envs.robocode.spaces import ACTION_SPACE, OBSERVATION_SPACE
from harvest.envs.robocode.team_files import write_team_json
from harvest.envs.robocode.transitions import RobotRound, round_transitions, split_rounds
from harvest.envs.spaces import ColumnSpec
from harvest.rollout.batch import TIMESTAMP_DTYPE, BatchSchema, TransitionBatch
from harvest.rollout.collector_ids import INCARNATION_SHIFT, collector_source
from harvest.rollout.collector_reports import Activity
from harvest.rollout.cutter import EpisodeIds
from harvest.rollout.replay.replay import Replay

ROW_COLUMNS = {
    "battle_id": ColumnSpec(np.int64, ()),
    "round": ColumnSpec(np.int64, ()),
    "turn": ColumnSpec(np.int64, ()),
    "seed": ColumnSpec(np.int64, ()),
    "robot_id": ColumnSpec(np.int64, ()),
    "collision": ColumnSpec(np.bool_, ()),
    "disabled": ColumnSpec(np.bool_, ()),
    "post_round": ColumnSpec(np.bool_, ()),
}


def robocode_schema() -> BatchSchema:
    """Rows of Robocode battles: 8 observation values, 5 recovered actions, provenance, flags.

    `robot_id` indexes the battle's robot list (`RobocodeBattles.robots`).
    """
    return BatchSchema.for_spaces(OBSERVATION_SPACE, ACTION_SPACE, extras=ROW_COLUMNS)


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class RobocodeBattles:
    """What a collector plays; `env.kwargs` of a run with `env.id: robocode`."""

    robots: tuple[str, ...] = ("sample.SpinBot", "sample.Target")
    """Installed robots as `package.Class`; the first one is the expert that evaluation plays."""
    record: Optional[tuple[str, ...]] = None
    """Robots whose rows go into the replay (None: every robot's)."""
    rounds_per_battle: int = Field(default=3, ge=1)
    width: int = Field(default=800, ge=400, le=5000)
    height: int = Field(default=600, ge=400, le=5000)
    seed: int = 0
    """Battle i of a collector is seeded `seed + i`; the pipeline sets it to run.seed + 1000 x collector."""
    turn_timeout_s: float = Field(default=30.0, gt=0)
    """An engine that sends no turn for this long is killed and restarted; its battle is played again."""
    max_restarts: int = Field(default=3, ge=0)
    """Restarts per battle before it is dropped."""
    gui: bool = False
    """Show the real battle window on the collector's own Xvfb display."""
    game_states: bool = False
    """Also write every battle as `expert_game_states_<collector>_<timestamp>.json` (the teams'
    file layout, `envs.robocode.team_files`)."""

    def __post_init__(self) -> None:
        if len(self.robots) < 2:
            raise ValueError(f"robots: a battle needs at least 2 robots, got {list(self.robots)}")
        unknown = sorted(set(self.record or ()) - set(self.robots))
        if unknown:
            raise ValueError(f"record: {unknown} are not in robots {list(self.robots)}")


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
    episodes: int = 0
    """Robot-rounds pushed (each is an episode)."""
    source: str = ""
    """The source its pushes carried (`collector 3`, `collector 3 #1` after a restart)."""
    push_wait_seconds: float = 0.0

    @property
    def episode_count(self) -> int:
        return self.episodes

    @property
    def episode_returns(self) -> list[float]:
        """Not kept: a Robocode row's reward is the recovered one, not the battle's score."""
        return []

    def details(self) -> str:
        """What the per-collector log line adds: battles, engine restarts, dropped battles."""
        return (
            f"{self.battles} battles, {self.restarts} engine restarts, battles dropped: "
            f"{self.dropped_battles or 'none'}"
        )


class RobocodeCollector:
    """Runs seeded expert battles in its own engine and pushes the recorded robots' transitions.

    Args:
        battles: what to play.
        replay: where rows go (its schema must be `robocode_schema()`).
        collector_id: this collector's index; battle ids and episode ids are unique per collector.
        workdir: the engine's folder (a temporary one when None).
        episode_uid: salts episode ids (`rollout.collector_ids.collector_uid`).
        workdir: the engine's folder (a temporary one when None).
        cache_root: where the compiled runner is kept.
        game_states_dir: where `battles.game_states` files go (default: `<workdir>/game_states`).
    """

    def __init__(
        self,
        battles: RobocodeBattles,
        replay: Replay,
        collector_id: int,
        episode_uid: int,
        workdir: str | None = None,
        cache_root: str = "~/.cache/harvest/robocode",
        game_states_dir: str | None = None,
    ) -> None:
        self.battles, self.replay, self.collector_id = battles, replay, collector_id
        self.schema = robocode_schema()
        if replay.schema.columns != self.schema.columns:
            raise ValueError(f"RobocodeCollector[{collector_id}]: the replay's columns are not robocode_schema()'s")
        self._log = logger.bind(actor=f"RobocodeCollector[{collector_id}]")
        self._workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"robocode-{collector_id}-"))
        self._game_states_dir: Path | None = None
        if battles.game_states:
            self._game_states_dir = Path(game_states_dir) if game_states_dir else self._workdir / "game_states"
        self.engine = RobocodeHost(self._workdir, Path(cache_root).expanduser(), gui=battles.gui)
        self._episode_uid = episode_uid
        self._recorded = [
            index for index, robot in enumerate(battles.robots) if battles.record is None or robot in battles.record
        ]
        self._activity = Activity("idle", time.time())
        self._start(incarnation=0)

    def _start(self, incarnation: int) -> None:
        """Episode ids, battle numbers and the push source of `incarnation` (n after the n-th restart):
        a restarted collector plays new battles (numbered from `incarnation << 16`), never repeats."""
        self.incarnation = incarnation
        self._source = collector_source(self.collector_id, incarnation)
        self._episode_ids = EpisodeIds(self._episode_uid, first=incarnation << INCARNATION_SHIFT)
        self._next_battle = incarnation << 16

    def restarted(self, incarnation: int) -> int:
        """After Ray restarted this actor (a fresh engine): go on as `incarnation`."""
        self._start(incarnation)
        self._log.warning("restarted as incarnation {} (pushes as {!r})", incarnation, self._source)
        return incarnation

    def activity(self) -> Activity:
        """What this collector is doing now and since when (answered while `collect` runs)."""
        return self._activity

    def engine_pid(self) -> int:
        """The process id of this collector's JVM (for supervision and tests)."""
        return self.engine.process.pid

    def collect(self, num_rows: int) -> RobocodeCollectResult:
        """Play battles until at least `num_rows` rows are pushed and acknowledged.

        A battle is pushed whole, in one batch, once its last turn is in; a battle whose engine
        crashed or hung is played again from its seed on a fresh engine, so what lands in the
        replay does not depend on failures.
        """
        started = time.perf_counter()
        result = RobocodeCollectResult(self.collector_id, 0, 0, 0, 0, 0, 0.0, source=self._source)
        while result.rows < num_rows:
            battle_index = self._next_battle
            self._next_battle += 1
            self._activity = Activity(f"battle {battle_index}", time.time())
            messages = self._play(battle_index, result)
            if messages is None:
                result.dropped_battles.append(battle_index)
                continue
            batch = self._rows(battle_index, messages)
            self._activity = Activity("replay.insert (ack)", time.time())
            waited = time.perf_counter()
            ray.get(self.replay.insert_async(batch, self._source, battle_index), timeout=120)
            result.push_wait_seconds += time.perf_counter() - waited
            if self._game_states_dir is not None:
                self._write_game_states(self._game_states_dir, messages)
            result.rows += batch.num_rows
            result.episodes += int(np.unique(batch["episode_id"]).size)
            result.turns += sum(message["t"] == "turn" for message in messages)
            result.battles += 1
            result.rounds += self.battles.rounds_per_battle
        result.seconds = time.perf_counter() - started
        self._activity = Activity("idle", time.time())
        self._log.info(
            "collected {} rows from {} battles in {:.1f}s ({} restarts)",
            result.rows,
            result.battles,
            result.seconds,
            result.restarts,
        )
        return result

    def _play(self, battle_index: int, result: RobocodeCollectResult) -> list[dict] | None:
        cfg = self.battles
        for attempt in range(cfg.max_restarts + 1):
            try:
                return list(
                    self.engine.battle(
                        list(cfg.robots),
                        cfg.rounds_per_battle,
                        cfg.seed + battle_index,
                        cfg.width,
                        cfg.height,
                        cfg.turn_timeout_s,
                    )
                )
            except RobocodeError as err:
                if self.engine.process.poll() is None:
                    raise  # the engine is fine and refused the battle (e.g. a robot that is not installed)
                self._log.warning(
                    "battle {} lost (attempt {} of {}), restarting the engine: {}",
                    battle_index,
                    attempt + 1,
                    cfg.max_restarts + 1,
                    err,
                )
                result.restarts += 1
                self.engine.restart()
        self._log.error("battle {} dropped after {} attempts", battle_index, cfg.max_restarts + 1)
        return None

    def _rows(self, battle_index: int, messages: list[dict]) -> TransitionBatch:
        parts = [(part, robot_id) for part, robot_id in robot_rounds(messages) if robot_id in self._recorded]
        return rows_of_rounds(
            parts,
            self._episode_ids.next(len(parts)),
            self.collector_id,
            (self.collector_id << 32) | battle_index,
            self.battles.seed + battle_index,
        )

    def _write_game_states(self, folder: Path, messages: list[dict]) -> Path:
        stamp = datetime.now().strftime("%Y%m%d_%H%M%S_%f")
        path = folder / f"expert_game_states_{self.collector_id}_{stamp}.json"
        partial = path.with_suffix(".json.partial")
        write_team_json(messages, partial)
        return partial.replace(path)  # readers never see a half-written file

    def close(self) -> None:
        self.engine.close()


def robot_rounds(messages: list[dict]) -> list[tuple[RobotRound, int]]:
    """Every robot's transitions in every round of a battle, with the robot's index in the battle."""
    parts: list[tuple[RobotRound, int]] = []
    for turns in split_rounds(messages).values():
        names = [robot["name"] for robot in turns[0]["robots"]]
        parts.extend((part, names.index(part.robot)) for part in round_transitions(turns))
    return parts


def rows_of_rounds(
    parts: list[tuple[RobotRound, int]],
    episode_ids: np.ndarray,
    collector_id: int,
    battle_id: int,
    seed: int,
    timestamp: np.datetime64 | None = None,
) -> TransitionBatch:
    """One batch of `robocode_schema()` rows: each robot-round an episode with its own id."""
    schema = robocode_schema()
    if not parts:
        return TransitionBatch({name: np.zeros((0, *spec.shape), spec.dtype) for name, spec in schema.columns.items()})
    now = timestamp if timestamp is not None else np.datetime64(time.time_ns(), "ns")
    columns: dict[str, list[np.ndarray]] = {name: [] for name in schema.columns}
    for (part, robot_id), episode_id in zip(parts, episode_ids):
        rows = part.num_rows
        values = {
            "obs": part.obs,
            "action": part.action,
            "reward": part.reward,
            "next_obs": part.next_obs,
            "terminated": part.terminated,
            "truncated": np.zeros(rows, bool),
            "episode_id": np.full(rows, episode_id, np.int64),
            "step": np.arange(rows, dtype=np.int64),
            "collector_id": np.full(rows, collector_id, np.int64),
            "policy_version": np.zeros(rows, np.int64),
            "timestamp": np.full(rows, now, TIMESTAMP_DTYPE),
            "battle_id": np.full(rows, battle_id, np.int64),
            "round": np.full(rows, part.round, np.int64),
            "turn": part.turn,
            "seed": np.full(rows, seed, np.int64),
            "robot_id": np.full(rows, robot_id, np.int64),
            "collision": part.collision,
            "disabled": part.disabled,
            "post_round": part.post_round,
        }
        for name in columns:
            columns[name].append(values[name])
    return TransitionBatch({name: np.concatenate(parts_of) for name, parts_of in columns.items()})


def expert_episodes(
    robots: list[str],
    rounds: int,
    seed: int,
    width: int = 800,
    height: int = 600,
    max_turns: int | None = None,
    workdir: str | None = None,
    cache_root: str = "~/.cache/harvest/robocode",
) -> tuple[list[float], list[int]]:
    """Returns and lengths of `robots[0]` over `rounds` rounds against the others, scored as
    the Gymnasium env scores its tank: rows until the round is decided, at most `max_turns`.

    The expert is a Java robot, not a Python policy; this is how evaluation puts it beside
    the trained tank.
    """
    workdir_path = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="robocode-expert-"))
    with RobocodeHost(workdir_path, Path(cache_root).expanduser()) as engine:
        messages = list(engine.battle(robots, rounds, seed, width, height))
    returns, lengths = [], []
    for part, robot_id in robot_rounds(messages):
        if robot_id != 0:
            continue
        live = np.flatnonzero(~part.post_round)[:max_turns]
        returns.append(float(part.reward[live].sum()))
        lengths.append(int(live.size))
    return returns, lengths
