"""An env family from outside the library, for tests/rollout/test_env_kinds.py: coin flips.

Each step the player guesses the next flip of a biased coin (`p_heads`); the reward is 1 for a
right guess. The family brings everything an env kind declares: typed `env.kwargs`
(`CoinKwargs`), a collector of its own that is not a RolloutWorker (`CoinCollector`: the
scripted expert's rows, computed directly), the Gymnasium env policies are evaluated in
(`CoinFlipEnv`), and an expert baseline that is not a Python policy.
"""

from __future__ import annotations

import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import ray
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from harvest.envs.config import EnvConfig
from harvest.rollout.batch import TIMESTAMP_DTYPE, BatchSchema, TransitionBatch
from harvest.rollout.collector_ids import INCARNATION_SHIFT, collector_source, collector_uid
from harvest.rollout.collector_reports import Activity
from harvest.rollout.cutter import EpisodeIds
from harvest.rollout.env_kinds import CollectorSetup, EnvKind
from harvest.rollout.evaluation import EvalResult

COIN_ENV_ID = "coin"
OBSERVATION_SPACE = gym.spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
ACTION_SPACE = gym.spaces.Discrete(2)


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class CoinKwargs:
    p_heads: float = Field(default=0.9, ge=0.0, le=1.0)
    episode_length: int = Field(default=8, ge=1)


def coin_kwargs(env: EnvConfig) -> CoinKwargs:
    try:
        return TypeAdapter(CoinKwargs).validate_python(env.kwargs)
    except ValidationError as err:
        raise ValueError(
            "\n".join(f"env.kwargs.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        ) from None


class CoinFlipEnv(gym.Env):
    """obs = [t / episode_length, the last flip]; reward 1 when the action is the next flip."""

    observation_space = OBSERVATION_SPACE
    action_space = ACTION_SPACE

    def __init__(self, p_heads: float = 0.9, episode_length: int = 8) -> None:
        self.p_heads, self.episode_length = p_heads, episode_length
        self._t, self._last = 0, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t, self._last = 0, 0
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        return np.array([self._t / self.episode_length, self._last], np.float32)

    def step(self, action):
        self._last = int(self.np_random.random() < self.p_heads)
        self._t += 1
        return self._obs(), float(int(action) == self._last), False, self._t >= self.episode_length, {}


def coin_schema() -> BatchSchema:
    return BatchSchema.for_spaces(OBSERVATION_SPACE, ACTION_SPACE)


def coin_episodes(
    kwargs: CoinKwargs, episode_ids: np.ndarray, rng: np.random.Generator, collector_id: int
) -> dict[str, np.ndarray]:
    """The expert's rows (it guesses the likelier side) of one episode per id."""
    length, count = kwargs.episode_length, len(episode_ids)
    flips = (rng.random((count, length)) < kwargs.p_heads).astype(np.float32)
    guess = int(kwargs.p_heads >= 0.5)
    t = np.tile(np.arange(length), count)
    last = np.concatenate([np.zeros((count, 1), np.float32), flips[:, :-1]], axis=1).reshape(-1)
    rows = count * length
    obs = np.stack([t / length, last], axis=1).astype(np.float32)
    next_obs = np.stack([(t + 1) / length, flips.reshape(-1)], axis=1).astype(np.float32)
    return {
        "obs": obs,
        "action": np.full(rows, guess, np.int64),
        "reward": (flips.reshape(-1) == guess).astype(np.float32),
        "next_obs": next_obs,
        "terminated": np.zeros(rows, bool),
        "truncated": t == length - 1,
        "episode_id": np.repeat(episode_ids, length),
        "step": t.astype(np.int64),
        "collector_id": np.full(rows, collector_id, np.int64),
        "policy_version": np.zeros(rows, np.int64),
        "timestamp": np.full(rows, np.datetime64(time.time_ns(), "ns"), TIMESTAMP_DTYPE),
    }


class CoinCollector:
    """A collector of its own kind: whole episodes of the expert, pushed 16 at a time."""

    def __init__(self, kwargs: CoinKwargs, replay, collector_id: int, episode_uid: int, seed: int) -> None:
        self.kwargs, self.replay, self.collector_id = kwargs, replay, collector_id
        self._episode_uid, self._seed = episode_uid, seed
        self._activity = Activity("idle", time.time())
        self.restarted(0)

    def restarted(self, incarnation: int) -> int:
        self._source = collector_source(self.collector_id, incarnation)
        self._ids = EpisodeIds(self._episode_uid, first=incarnation << INCARNATION_SHIFT)
        self._rng = np.random.default_rng(self._seed + 7919 * incarnation)
        self._pushes = incarnation << 20
        return incarnation

    def activity(self) -> Activity:
        return self._activity

    def collect(self, num_rows: int) -> "CoinResult":
        result = CoinResult(self.collector_id, 0, self._source, 0)
        while result.rows < num_rows:
            batch = TransitionBatch(coin_episodes(self.kwargs, self._ids.next(16), self._rng, self.collector_id))
            self._activity = Activity("replay.insert (ack)", time.time())
            ray.get(self.replay.insert_async(batch, self._source, self._pushes), timeout=120)
            self._pushes += 1
            result.rows += batch.num_rows
            result.episode_count += 16
        self._activity = Activity("idle", time.time())
        return result

    def close(self) -> None:
        pass


@dataclass
class CoinResult:
    collector_id: int
    rows: int
    source: str
    episode_count: int
    push_wait_seconds: float = 0.0

    @property
    def episode_returns(self) -> list[float]:
        return []

    def details(self) -> str:
        return f"{self.episode_count} coin episodes"


class CoinKind(EnvKind):
    name = "coin"
    collector = "CoinCollector"
    own_expert = True
    human_refusal = "nobody flips coins by hand here"

    def claims(self, env: EnvConfig) -> bool:
        return env.id == COIN_ENV_ID

    def check_kwargs(self, env: EnvConfig, seed: int) -> None:
        coin_kwargs(env)

    def check_env(self, env: EnvConfig) -> None:
        pass

    def schema(self, env, policy) -> BatchSchema:
        return coin_schema()

    def shares(self, rollout) -> list[int]:
        """Each collector its equal share: the dataset does not depend on which starts first."""
        n = rollout.num_collectors
        return [rollout.steps // n + (i < rollout.steps % n) for i in range(n)]

    def start_collector(self, setup: CollectorSetup, index: int):
        actor = ray.remote(CoinCollector).options(
            num_cpus=setup.rollout.num_cpus, max_concurrency=2, max_restarts=setup.rollout.max_restarts
        )
        return actor.remote(
            coin_kwargs(setup.env), setup.replay, index, collector_uid(setup.run_id, index), setup.seed + index
        )

    def eval_env(self, env: EnvConfig, configured: EnvConfig | None, seed: int) -> EnvConfig:
        kwargs = coin_kwargs(env)
        return configured or EnvConfig(
            id="tests.custom_kind:CoinFlipEnv",
            num_envs=2,
            kwargs={"p_heads": kwargs.p_heads, "episode_length": kwargs.episode_length},
        )

    def learner_env(self, env: EnvConfig) -> EnvConfig | None:
        return self.eval_env(env, None, 0)

    def expert_baseline(self, env, scenario, episodes, num_workers, seed, num_cpus, folder: Path) -> EvalResult:
        kwargs = coin_kwargs(env)
        columns = coin_episodes(kwargs, np.arange(episodes), np.random.default_rng(seed), 0)
        returns = columns["reward"].reshape(episodes, kwargs.episode_length).sum(axis=1)
        return EvalResult("expert", returns.tolist(), [kwargs.episode_length] * episodes)

    def describe(self, env: EnvConfig, seed: int) -> str:
        return f"coin flips with p_heads {coin_kwargs(env).p_heads}"
