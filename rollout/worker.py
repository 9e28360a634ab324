"""`RolloutWorker`: one vector env, one policy, batches pushed into the replay."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import psutil
import ray
from gymnasium.vector import VectorEnv
from loguru import logger

from harvest.cluster import metrics
from harvest.envs.config import EnvConfig
from harvest.envs.registry import make_vector_env, row_columns
from harvest.rollout.allocator import keep_batch_buffers_on_heap
from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.collector_ids import INCARNATION_SHIFT, collector_source, collector_uid
from harvest.rollout.collector_reports import Activity, CollectResult
from harvest.rollout.config import RolloutConfig
from harvest.rollout.cutter import EpisodeIds, FinishedEpisode, TransitionCutter
from harvest.rollout.exploration import EpsilonGreedy
from harvest.rollout.policies import Policy, PolicyFactory, TrainablePolicy
from harvest.rollout.push_modes import LocalBuffer, TrajectoryGate
from harvest.rollout.replay.replay import Replay
from harvest.rollout.source_columns import SOURCE_BY_POLICY, shared_columns, with_filled


class PushTimeoutError(TimeoutError):
    """A replay shard did not acknowledge a collector's push in time."""


def node_memory_used() -> float:
    """Share of this node's memory in use (as Ray's memory monitor counts it: total - available)."""
    memory = psutil.virtual_memory()
    return (memory.total - memory.available) / memory.total


def split_latest(batch: TransitionBatch, keep_rows: int) -> tuple[TransitionBatch, TransitionBatch]:
    """(the `keep_rows` earliest rows, the rest), each in the batch's order. The rest are rows of
    the latest vector steps, so holding them back leaves no gap in an episode: each env's rows
    after them are cut later still."""
    order = np.argsort(batch["timestamp"], kind="stable") if "timestamp" in batch else np.arange(batch.num_rows)
    return batch.take(np.sort(order[:keep_rows])), batch.take(np.sort(order[keep_rows:]))


def schema_for(env_cfg: EnvConfig, policy_factory: PolicyFactory) -> BatchSchema:
    """The batch schema of transitions from this env played by this policy (builds both once)."""
    env = make_vector_env(env_cfg)
    try:
        policy = policy_factory(env.single_observation_space, env.single_action_space)
        return _schema(env, policy)
    finally:
        env.close()


def _schema(env: VectorEnv, policy: Policy) -> BatchSchema:
    """Core columns from the env's spaces, plus the env's row columns and the policy's extras."""
    env_columns, policy_columns = row_columns(env), policy.extra_columns()
    clash = sorted(set(env_columns) & set(policy_columns))
    if clash:
        raise ValueError(
            f"columns {clash} are declared both by the env {type(env).__name__} and by the policy "
            f"{type(policy).__name__}"
        )
    return BatchSchema.for_spaces(
        env.single_observation_space, env.single_action_space, extras={**env_columns, **policy_columns}
    )


class RolloutWorker:
    """Steps one vector env with one policy and pushes transition batches to the replay.

    A plain class; Ray makes it an actor where it is started
    (`ray.remote(RolloutWorker).options(num_cpus=...).remote(...)`).

    Args:
        env_cfg: which env to build (`num_envs` copies in one vector env).
        cfg: the run's `rollout:` section (batch size, pushes in flight, timeouts).
        policy_factory: builds the policy from the env's single spaces.
        replay: where batches go; None for evaluation-only workers.
        collector_id: this collector's index in the run (written on every row).
        run_id: salts the episode ids so they stay unique across runs.
        seed: seeds the env's reset.
    """

    def __init__(
        self,
        env_cfg: EnvConfig,
        cfg: RolloutConfig,
        policy_factory: PolicyFactory,
        replay: Replay | None,
        collector_id: int,
        run_id: str,
        seed: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.collector_id = collector_id
        self._log = logger.bind(actor=f"RolloutWorker[{collector_id}]")
        keep_batch_buffers_on_heap()
        self._env = make_vector_env(env_cfg)
        self._policy = policy_factory(self._env.single_observation_space, self._env.single_action_space)
        if hasattr(self._policy, "bind_env"):  # a privileged expert reads the simulator's state
            self._policy.bind_env(self._env)
        self.schema = _schema(self._env, self._policy)
        self._fillers, self._replay_columns = self._replay_fill(env_cfg, replay)
        self._replay = replay
        self._run_id, self._seed = run_id, seed
        self._in_flight: list[ray.ObjectRef] = []
        self._push_wait_s = 0.0
        self._rows_pushed = 0
        self._peak_local_bytes = 0
        self._gate = TrajectoryGate(self.schema, cfg.trajectory_filter) if cfg.mode == "trajectory" else None
        self._buffer = (
            LocalBuffer(self.schema, int(cfg.buffer_mb * 2**20), cfg.buffer_compression)
            if cfg.mode == "buffer"
            else None
        )
        self._tags = {"collector": str(collector_id)}
        self._activity = Activity("starting", time.time())
        self._exploration = EpsilonGreedy(
            self._env.single_observation_space,
            self._env.single_action_space,
            np.random.default_rng(None if seed is None else seed + 104_729),
        )
        if cfg.policy.epsilon:
            self.set_exploration(cfg.policy.epsilon, None, live=False)
        self._start(incarnation=0)

    def _replay_fill(self, env_cfg: EnvConfig, replay: Replay | None) -> tuple[dict, list[str]]:
        """How to fill the replay's columns this collector does not make, and the replay's columns."""
        if replay is None or replay.schema.columns == self.schema.columns:
            return {}, list(self.schema.columns)
        # a replay shared with a person's session has columns of its own: fill them, or refuse
        try:
            source = SOURCE_BY_POLICY[self.cfg.policy.kind]
            fillers = shared_columns(replay.schema, self.schema, source, f"RolloutWorker[{self.collector_id}]")
        except ValueError as err:
            raise ValueError(
                f"RolloutWorker[{self.collector_id}]: env {env_cfg.id!r} with this policy makes columns "
                f"{self._describe(self.schema)}, the replay expects "
                f"{self._describe(replay.schema)}: {err}"
            ) from err
        return fillers, list(replay.schema.columns)

    def _start(self, incarnation: int) -> None:
        """Reset the env and the cutter for `incarnation` (0 at first; n after the n-th restart)."""
        self.incarnation = incarnation
        self._source = collector_source(self.collector_id, incarnation)
        self._pushes = 0  # batch ids: a shard restarted by Ray recognises a retried push
        self._cutter = TransitionCutter(
            self.schema,
            self._env.num_envs,
            self.cfg.batch_rows,
            self._env.metadata.get("autoreset_mode"),
            self.collector_id,
            EpisodeIds(collector_uid(self._run_id, self.collector_id), first=incarnation << INCARNATION_SHIFT),
            num_shards=self._replay.num_shards if self._replay is not None else 1,
            info_columns=tuple(row_columns(self._env)),
        )
        self._episodes_observed = 0
        self._carry: TransitionBatch | None = None  # rows cut past the last chunk, pushed first in the next
        self._chunk_left: int | None = None  # rows the running `collect` may still route (None: no limit)
        seed = None if self._seed is None else self._seed + 7919 * incarnation
        obs, _ = self._env.reset(seed=seed)
        self._obs = obs
        self._cutter.reset(obs)
        self._activity = Activity("idle", time.time())

    def restarted(self, incarnation: int) -> int:
        """After Ray restarted this actor: start over as `incarnation`, so its episode ids and
        batch ids never repeat those its predecessors stored. Returns the incarnation."""
        if incarnation < 1 or incarnation >= 2 ** (32 - INCARNATION_SHIFT):
            raise ValueError(f"RolloutWorker[{self.collector_id}]: incarnation {incarnation} out of range")
        self._start(incarnation)
        self._log.warning("restarted as incarnation {} (pushes as {!r})", incarnation, self._source)
        return incarnation

    def set_trajectory_filter(self, criteria) -> None:
        """`mode: trajectory`: the episodes pushed from now on (a live config edit)."""
        if self._gate is None:
            raise ValueError(
                f"RolloutWorker[{self.collector_id}]: rollout.trajectory_filter applies to "
                f"rollout.mode: trajectory, not {self.cfg.mode}"
            )
        self._gate.criteria = criteria
        self._log.info("trajectory filter now {}", criteria)

    def set_exploration(self, epsilon: float, deterministic: bool | None, live: bool = True) -> None:
        """ε-greedy exploration and, for a torch policy, greedy or sampled actions (None: as it
        is); a live edit of `rollout.policy.epsilon` / `deterministic` applies from the next step."""
        if not 0 <= epsilon <= 1:
            raise ValueError(f"RolloutWorker[{self.collector_id}]: rollout.policy.epsilon={epsilon} is not in [0, 1]")
        player = getattr(self._policy, "policy", self._policy)  # under a DAgger critic, the policy it plays
        if deterministic is not None and hasattr(player, "deterministic"):
            player.deterministic = deterministic
        elif deterministic is False:
            raise ValueError(
                f"RolloutWorker[{self.collector_id}]: rollout.policy.deterministic: false needs a "
                f"policy that samples (kind: torch), not {type(player).__name__}"
            )
        self._exploration.set_epsilon(epsilon)
        if live:
            self._log.info(
                "exploration now epsilon {}{}",
                epsilon,
                "" if deterministic is None else f", {'greedy' if deterministic else 'sampled'} actions",
            )

    def set_reward_weights(self, weights: dict[str, float]) -> None:
        """The env's reward weights from the next step on (a live edit of `env.kwargs.rewards`),
        for envs that have `set_reward_weights` (Generals)."""
        env = self._env.unwrapped
        # a vector env of its own (Generals), or one env per copy (a SyncVectorEnv of Gymnasium envs)
        targets = (
            [env] if hasattr(env, "set_reward_weights") else [sub_env.unwrapped for sub_env in getattr(env, "envs", [])]
        )
        if not targets or not all(hasattr(target, "set_reward_weights") for target in targets):
            raise ValueError(
                f"RolloutWorker[{self.collector_id}]: env.kwargs.rewards cannot change while the run "
                f"goes on: {type(targets[0] if targets else env).__name__} has no "
                "set_reward_weights(weights)"
            )
        for target in targets:  # the first refuses weights it does not take, before any changed
            target.set_reward_weights(dict(weights))
        self._log.info("reward weights now {}", weights)

    def activity(self) -> Activity:
        """What this collector is doing now and since when (answered while `collect` runs)."""
        return self._activity

    @staticmethod
    def _describe(schema: BatchSchema) -> dict[str, str]:
        return {name: spec.describe() for name, spec in schema.columns.items()}

    def get_schema(self) -> BatchSchema:
        return self.schema

    def set_policy_weights(self, weights: object, version: int) -> None:
        """Load new weights into a torch policy; later rows record `version`."""
        if not isinstance(self._policy, TrainablePolicy):
            raise AttributeError(
                f"RolloutWorker[{self.collector_id}].set_policy_weights: its policy "
                f"({type(self._policy).__name__}) has no weights to set"
            )
        self._policy.set_weights(weights, version)

    def collect(self, num_rows: int) -> CollectResult:
        """Step until `num_rows` rows are cut and acknowledged by the replay: exactly that many in
        `step` and `buffer` modes (a vector step's rows past them are held over, pushed first by
        the next call), whole episodes in `trajectory` mode (at least that many)."""
        if self._replay is None:
            raise RuntimeError(f"RolloutWorker[{self.collector_id}] was started without a replay")
        started = time.perf_counter()
        wait_before = self._push_wait_s
        first_episode = len(self._cutter.finished_episodes)
        rows_before, pushed_before, steps = self._cutter.rows_cut, self._rows_pushed, 0
        carried = self._start_chunk(num_rows)
        while self._progress(rows_before, pushed_before) + carried < num_rows:
            batch = self._step()
            steps += 1
            if batch is not None:
                self._route(batch)
            self._check_episodes_pass(steps, num_rows, pushed_before)
        self._drain()
        self._chunk_left = None
        self._activity = Activity("idle", time.time())
        self._observe_episodes()
        episodes = self._cutter.finished_episodes[first_episode:]
        if episodes:
            metrics.rollout_episodes().inc(len(episodes), tags=self._tags)
        result = CollectResult(
            self.collector_id,
            self._rows_pushed - pushed_before,
            steps * self._env.num_envs,
            episodes,
            time.perf_counter() - started,
            self._push_wait_s - wait_before,
            self._peak_local_bytes,
            None if self._gate is None else dataclasses.asdict(self._gate.report),
            self._source,
        )
        self._log.info(
            "collected {} rows, {} episodes in {:.1f}s ({:.0f} rows/s, {:.1f}s waiting for acks)",
            result.rows,
            len(episodes),
            result.seconds,
            result.rows / max(result.seconds, 1e-9),
            result.push_wait_seconds,
        )
        return result

    def _start_chunk(self, num_rows: int) -> int:
        """`step` and `buffer` modes: limit this call to `num_rows` rows and route the rows held
        over from the last call first; returns how many were held over."""
        if self._gate is not None:
            return 0
        self._chunk_left = num_rows
        held, self._carry = self._carry, None
        if held is None:
            return 0
        self._route(held)
        return held.num_rows

    def _check_episodes_pass(self, steps: int, num_rows: int, pushed_before: int) -> None:
        """`trajectory` mode: give up once far more env steps than rows asked for let no episode
        through the filter (RuntimeError naming the filter)."""
        if (
            self._gate is not None
            and steps * self._env.num_envs > 100 * num_rows + 100_000
            and self._rows_pushed == pushed_before
        ):
            raise RuntimeError(
                f"RolloutWorker[{self.collector_id}]: {steps * self._env.num_envs} env steps and "
                f"no episode passed rollout.trajectory_filter {self.cfg.trajectory_filter}"
            )

    def play_episodes(self, num_episodes: int, max_steps: int = 1_000_000) -> list[FinishedEpisode]:
        """Play `num_episodes` whole episodes (evaluation); rows are not pushed.

        Every sub-env plays the same number of episodes from its start, so short episodes
        are not over-represented (taking the first N to finish across envs would be biased).
        """
        num_envs = self._env.num_envs
        per_env = -(-num_episodes // num_envs)
        self._obs, _ = self._env.reset()
        self._cutter.reset(self._obs)
        first_episode = len(self._cutter.finished_episodes)
        finished_per_env = np.zeros(num_envs, dtype=np.int64)
        for _ in range(max_steps):
            if finished_per_env.min() >= per_env:
                break
            self._step()
            for episode in self._cutter.finished_episodes[first_episode + int(finished_per_env.sum()) :]:
                finished_per_env[episode.env_index] += 1
        else:
            raise TimeoutError(
                f"RolloutWorker[{self.collector_id}]: {num_episodes} episodes did not finish "
                f"within {max_steps} vector steps"
            )
        self._cutter.flush()
        self._episodes_observed = len(self._cutter.finished_episodes)  # evaluation, not collection
        by_env: dict[int, list[FinishedEpisode]] = {}
        for episode in self._cutter.finished_episodes[first_episode:]:
            by_env.setdefault(episode.env_index, []).append(episode)
        episodes = [episode for env_index in range(num_envs) for episode in by_env[env_index][:per_env]]
        return episodes[:num_episodes]

    def _step(self) -> TransitionBatch | None:
        self._activity = Activity("policy.compute_actions", time.time())
        output = self._policy.compute_actions(self._obs)
        if self._exploration.epsilon:
            output = self._exploration.apply(output, self._obs)
        self._activity = Activity("env.step", time.time())
        obs, reward, terminated, truncated, info = self._env.step(output.actions)
        self._activity = Activity("cutting", time.time())
        batch = self._cutter.add_step(
            obs,
            output.actions,
            reward,
            terminated,
            truncated,
            info,
            extras=output.extras,
            policy_version=self._policy.version,
        )
        self._obs = obs
        return batch

    def _progress(self, rows_before: int, pushed_before: int) -> int:
        """Rows collected so far in this call: cut (step and buffer modes) or pushed (trajectory)."""
        if self._gate is not None:
            return self._rows_pushed - pushed_before
        return self._cutter.rows_cut + self._cutter.buffered_rows - rows_before

    def memory(self) -> dict[str, int]:
        """Bytes this collector holds now: rows being cut, trajectories waiting, the local buffer."""
        cutting = self._cutter.buffered_rows * self.schema.row_bytes
        waiting = self._gate.pending_bytes if self._gate is not None else 0
        buffered = self._buffer.nbytes if self._buffer is not None else 0
        return {
            "collector": self.collector_id,
            "cutting_bytes": cutting,
            "trajectory_bytes": waiting,
            "buffer_bytes": buffered,
            "total_bytes": cutting + waiting + buffered,
            "pushes_in_flight": len(self._in_flight),
            "peak_bytes": self._peak_local_bytes,
        }

    def _route(self, batch: TransitionBatch) -> None:
        """A cut batch to the replay as `rollout.mode` says: now, once its episodes pass, or via the
        buffer; rows past the running chunk's limit are held over for the next one."""
        if self._chunk_left is not None:
            if batch.num_rows > self._chunk_left:
                batch, held = split_latest(batch, self._chunk_left)
                self._carry = held if self._carry is None else TransitionBatch.concat([self._carry, held])
            self._chunk_left -= batch.num_rows
            if not batch.num_rows:
                return
        if self._gate is not None:
            released = self._gate.add(batch)
            ready = [released] if released is not None else []
        elif self._buffer is not None:
            ready = self._buffer.add(batch)
        else:
            ready = [batch]
        usage = self.memory()["total_bytes"]
        self._peak_local_bytes = max(self._peak_local_bytes, usage)
        metrics.rollout_local_bytes().set(usage, tags=self._tags)
        for item in ready:
            self._push(item)

    def _wait_for_memory(self) -> None:
        """Backpressure: wait while the node uses more than `rollout.pause_above_memory` of its memory."""
        limit = self.cfg.pause_above_memory
        if limit is None or node_memory_used() <= limit:
            return
        waited = time.perf_counter()
        while (used := node_memory_used()) > limit:
            self._activity = Activity(
                f"backpressure: node memory {used:.0%} used, above rollout.pause_above_memory={limit:.0%}",
                self._activity.since if self._activity.what.startswith("backpressure") else time.time(),
            )
            if time.perf_counter() - waited > self.cfg.push_timeout_s:
                raise PushTimeoutError(
                    f"RolloutWorker[{self.collector_id}]: the node's memory stayed above "
                    f"rollout.pause_above_memory={limit:.0%} ({used:.0%} used) for "
                    f"{self.cfg.push_timeout_s}s"
                )
            time.sleep(0.2)
        self._push_wait_s += time.perf_counter() - waited

    def _push(self, batch: TransitionBatch) -> None:
        self._wait_for_memory()
        batch = with_filled(batch, self._fillers, self._replay_columns)
        metrics.rollout_env_steps().inc(batch.num_rows, tags=self._tags)
        self._observe_episodes()
        self._rows_pushed += batch.num_rows
        assert self._replay is not None  # collect, which pushes, refuses to start without a replay
        self._in_flight.extend(self._replay.insert_async(batch, self._source, self._next_batch_id()))
        if len(self._in_flight) >= self.cfg.max_pushes_in_flight:
            waited = time.perf_counter()
            self._activity = Activity("replay.insert (ack)", time.time())
            num_returns = len(self._in_flight) - self.cfg.max_pushes_in_flight + 1
            ready, self._in_flight = ray.wait(self._in_flight, num_returns=num_returns, timeout=self.cfg.push_timeout_s)
            if len(ready) < num_returns:
                raise PushTimeoutError(
                    f"RolloutWorker[{self.collector_id}]: replay did not acknowledge a push "
                    f"within {self.cfg.push_timeout_s}s ({len(self._in_flight)} in flight)"
                )
            ray.get(ready)  # raises the shard's error, e.g. BatchSchemaError
            elapsed = time.perf_counter() - waited
            self._push_wait_s += elapsed
            metrics.rollout_push_wait_seconds().observe(elapsed, tags=self._tags)

    def _observe_episodes(self) -> None:
        """Episode returns into the reward histogram, as episodes finish."""
        finished = self._cutter.finished_episodes
        for episode in finished[self._episodes_observed :]:
            value = float(episode.episode_return)
            metrics.rollout_episode_return().observe(
                abs(value), tags={**self._tags, "sign": "negative" if value < 0 else "positive"}
            )
        self._episodes_observed = len(finished)

    def _next_batch_id(self) -> int:
        self._pushes += 1
        return self._pushes

    def _drain(self) -> None:
        batch = self._cutter.flush()
        if self._replay is not None:
            if batch is not None and batch.num_rows:
                self._route(batch)
            if self._buffer is not None:
                for held in self._buffer.drain():
                    self._push(held)
        if self._in_flight:
            waited = time.perf_counter()
            self._activity = Activity("replay.insert (ack)", time.time())
            try:
                ray.get(self._in_flight, timeout=self.cfg.push_timeout_s)
            except ray.exceptions.GetTimeoutError as err:
                raise PushTimeoutError(
                    f"RolloutWorker[{self.collector_id}]: replay did not acknowledge "
                    f"{len(self._in_flight)} pushes within {self.cfg.push_timeout_s}s"
                ) from err
            self._in_flight = []
            self._push_wait_s += time.perf_counter() - waited

    def close(self) -> None:
        self._env.close()
