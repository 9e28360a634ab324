"""`Replay`: the handle collectors and readers use to reach the shard actors."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import ray

from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.config import ReplayConfig
from harvest.rollout.replay.flight import start_flight_service
from harvest.rollout.replay.results import PriorityUpdate, ShardStats
from harvest.rollout.replay.shard import KEY_SHARD_SHIFT, ReplayShard, importance_weights
from harvest.rollout.routing import shard_of


@dataclass(frozen=True)
class ReplayStats:
    shards: list[ShardStats]

    @property
    def size_rows(self) -> int:
        return sum(shard.size_rows for shard in self.shards)

    @property
    def inserted_rows(self) -> int:
        return sum(shard.inserted_rows for shard in self.shards)

    @property
    def evicted_rows(self) -> int:
        return sum(shard.evicted_rows for shard in self.shards)

    @property
    def episodes_completed(self) -> int:
        return sum(shard.episodes_completed for shard in self.shards)


@dataclass(frozen=True)
class Replay:
    """Handles to the shard actors; routes every row by its `episode_id`.

    Picklable: pass it to collector actors, which push through `insert_async`.

    Example:
        >>> replay = start_replay(ReplayConfig(num_shards=2), schema)
        >>> refs = replay.insert_async(batch)      # one ObjectRef per shard touched
        >>> ray.get(refs, timeout=30)              # acks: the rows are stored
    """

    shards: tuple[ray.actor.ActorHandle, ...]
    schema: BatchSchema
    sampler: str = "uniform"
    beta: float = 0.4
    rate_limited: bool = False
    flight: ray.actor.ActorHandle | None = None
    """The Arrow Flight server actor (`replay.flight`), serving this replay's stream."""
    flight_location: str | None = None

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def route(self, batch: TransitionBatch) -> list[tuple[int, TransitionBatch]]:
        """Split `batch` into per-shard batches, keeping row order within each.

        A batch whose producer already grouped its rows by shard (`batch.shard_offsets`, as a
        `TransitionCutter` built with `num_shards` does) is split into views, without a copy.
        """
        if self.num_shards == 1:
            return [(0, batch)]
        offsets = batch.shard_offsets
        if offsets is not None and len(offsets) == self.num_shards + 1:
            return [
                (shard_index, batch.take(slice(offsets[shard_index], offsets[shard_index + 1])))
                for shard_index in range(self.num_shards)
                if offsets[shard_index + 1] > offsets[shard_index]
            ]
        shard_ids = shard_of(batch["episode_id"], self.num_shards)
        routed = []
        for shard_index in range(self.num_shards):
            rows = np.flatnonzero(shard_ids == shard_index)
            if rows.size:
                routed.append((shard_index, batch.take(rows)))
        return routed

    def insert_async(
        self, batch: TransitionBatch, source: str = "unknown", batch_id: int | None = None
    ) -> list[ray.ObjectRef]:
        """Push `batch` to its shards; each returned ref resolves to an `InsertAck` once stored.
        `batch_id` (increasing per source) lets a shard recognise a push retried after a restart."""
        method = "insert_wait" if self.rate_limited else "insert"  # insert_wait waits for the limiter
        return [
            getattr(self.shards[shard_index], method).remote(part, source, batch_id)
            for shard_index, part in self.route(batch)
        ]

    def stats(self, timeout_s: float = 30.0) -> ReplayStats:
        """Blocks: statistics of every shard."""
        return ReplayStats(ray.get([shard.stats.remote() for shard in self.shards], timeout=timeout_s))

    def inserted_rows(self, timeout_s: float = 30.0) -> int:
        """Blocks: rows stored across shards. Unlike `stats`, costs each shard nothing but a call."""
        return sum(ray.get([shard.inserted_rows.remote() for shard in self.shards], timeout=timeout_s))

    def rows_by_source(self, timeout_s: float = 30.0) -> dict[str, int]:
        """Blocks: rows stored across shards, by the source that inserted them."""
        totals: dict[str, int] = {}
        for counts in ray.get([shard.rows_by_source.remote() for shard in self.shards], timeout=timeout_s):
            for source, rows in counts.items():
                totals[source] = totals.get(source, 0) + rows
        return totals

    def sample(self, num_rows: int, rng: np.random.Generator, timeout_s: float = 30.0) -> TransitionBatch | None:
        """Blocks: `num_rows` rows across shards, each shard drawn in proportion to its sampling
        mass (total priority, or size). `probability` and `weight` are recomputed over the whole
        replay: P(i) = p_i^α / Σ_all p^α, weight = (N·P)^-β over the batch's largest."""
        masses = ray.get([shard.sampling_mass.remote() for shard in self.shards], timeout=timeout_s)
        mass = np.array([m for m, _ in masses], np.float64)
        stored = sum(size for _, size in masses)
        if mass.sum() <= 0:
            return None
        counts = rng.multinomial(num_rows, mass / mass.sum())
        method = "sample_wait" if self.rate_limited else "sample"
        refs = {
            index: getattr(self.shards[index], method).remote(int(count)) for index, count in enumerate(counts) if count
        }
        parts = []
        for index, part in zip(refs, ray.get(list(refs.values()), timeout=timeout_s)):
            if part is not None:
                part.columns["probability"] = part["probability"] * (mass[index] / mass.sum())
                parts.append(part)
        if not parts:
            return None
        batch = TransitionBatch.concat(parts)
        beta = self.beta if self.sampler == "prioritized" else 0.0
        batch.columns["weight"] = importance_weights(batch["probability"], stored, beta)
        return batch

    def update_priorities(self, keys: np.ndarray, td_errors: np.ndarray, timeout_s: float = 30.0) -> PriorityUpdate:
        """Blocks: send each sampled row's new priority (|td_error| + ε) back to its shard."""
        keys, td_errors = np.asarray(keys, np.int64).reshape(-1), np.asarray(td_errors).reshape(-1)
        shard_ids = keys >> KEY_SHARD_SHIFT
        if shard_ids.size and (shard_ids.min() < 0 or shard_ids.max() >= self.num_shards):
            raise ValueError(f"update_priorities: keys name shards outside [0, {self.num_shards})")
        refs = [
            self.shards[index].update_priorities.remote(keys[shard_ids == index], td_errors[shard_ids == index])
            for index in np.unique(shard_ids)
        ]
        results = ray.get(refs, timeout=timeout_s)
        return PriorityUpdate(sum(r.updated for r in results), sum(r.overwritten for r in results))

    def kill(self) -> None:
        for actor in (*self.shards, self.flight):
            if actor is not None:
                ray.kill(actor, no_restart=True)


def start_replay(
    cfg: ReplayConfig, schema: BatchSchema, name_prefix: str | None = None, timeout_s: float = 60.0
) -> Replay:
    """Start `cfg.num_shards` shard actors and wait until they are up."""
    shard_actor = ray.remote(ReplayShard)
    shards = []
    for shard_index in range(cfg.num_shards):
        options = {
            "num_cpus": cfg.num_cpus,
            "max_restarts": cfg.max_restarts,
            "max_task_retries": -1 if cfg.max_restarts else 0,
            **cfg.placement.options(),
        }
        if name_prefix:
            options["name"] = f"{name_prefix}-replay-shard-{shard_index}"
        shards.append(shard_actor.options(**options).remote(cfg, schema, shard_index, shard_index))
    ray.get([shard.ready.remote() for shard in shards], timeout=timeout_s)
    replay = Replay(tuple(shards), schema, cfg.sampler, cfg.priority_beta, cfg.rate_limit is not None)
    if cfg.flight is None:
        return replay
    token = None
    if cfg.flight.token_env:
        token = os.environ.get(cfg.flight.token_env)
        if not token:
            replay.kill()
            raise ValueError(
                f"replay.flight.token_env: the environment variable {cfg.flight.token_env} "
                "is not set (it holds the token Flight clients must send)"
            )
    actor, location = start_flight_service(replay, cfg.flight.host, cfg.flight.port, token, timeout_s)
    return dataclasses.replace(replay, flight=actor, flight_location=location)
