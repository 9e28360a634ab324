"""Every metric Harvest exports, in one list.

Metrics go through `ray.util.metrics`, so they reach Ray's Prometheus endpoint and the
dashboard. Outside a Ray worker or driver (plain unit tests) they are no-ops. Names follow
`harvest_<component>_<quantity>_<unit>`. This module imports nothing from Harvest.
"""

from __future__ import annotations

import functools
from typing import Any

import ray


class _NoOp:
    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None: ...
    def set(self, value: float, tags: dict[str, str] | None = None) -> None: ...
    def observe(self, value: float, tags: dict[str, str] | None = None) -> None: ...


def _make(kind: str, name: str, description: str, tag_keys: tuple[str, ...], **kwargs: Any) -> Any:
    if not ray.is_initialized():
        return _NoOp()
    from ray.util import metrics as ray_metrics

    cls = {"counter": ray_metrics.Counter, "gauge": ray_metrics.Gauge, "histogram": ray_metrics.Histogram}[kind]
    return cls(name, description=description, tag_keys=tag_keys, **kwargs)


_SECONDS_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]


@functools.cache
def rollout_env_steps() -> Any:
    return _make("counter", "harvest_rollout_env_steps_total", "Transitions cut by a collector.", ("collector",))


@functools.cache
def rollout_episodes() -> Any:
    return _make("counter", "harvest_rollout_episodes_total", "Episodes finished by a collector.", ("collector",))


@functools.cache
def rollout_push_wait_seconds() -> Any:
    return _make(
        "histogram",
        "harvest_rollout_push_wait_seconds",
        "Time a collector waited for replay acks (backpressure).",
        ("collector",),
        boundaries=_SECONDS_BUCKETS,
    )


@functools.cache
def rollout_episode_return() -> Any:
    # Ray's histograms take positive boundaries only: |return| is observed, its sign is a tag.
    return _make(
        "histogram",
        "harvest_rollout_episode_return",
        "Returns of the episodes collectors finished: |return|, with sign=positive|negative.",
        ("collector", "sign"),
        boundaries=[0.1, 1, 10, 50, 100, 200, 500, 1000, 10000],
    )


@functools.cache
def replay_inserted_rows() -> Any:
    return _make(
        "counter",
        "harvest_replay_inserted_rows_total",
        "Rows stored by a replay shard, by the source (collector) that sent them.",
        ("shard", "source"),
    )


@functools.cache
def replay_sampled_rows() -> Any:
    return _make(
        "counter", "harvest_replay_sampled_rows_total", "Rows a replay shard returned from sample.", ("shard",)
    )


@functools.cache
def rollout_local_bytes() -> Any:
    return _make(
        "gauge",
        "harvest_rollout_local_bytes",
        "Bytes a collector holds: rows being cut, trajectories waiting for their end, its local buffer.",
        ("collector",),
    )


@functools.cache
def replay_utilization() -> Any:
    return _make("gauge", "harvest_replay_utilization", "Rows held over capacity rows, per shard (0 to 1).", ("shard",))


@functools.cache
def replay_memory_bytes() -> Any:
    return _make(
        "gauge", "harvest_replay_memory_bytes", "Bytes a replay shard holds (rows and sampler state).", ("shard",)
    )


@functools.cache
def replay_wal_write_seconds() -> Any:
    return _make(
        "histogram",
        "harvest_replay_wal_write_seconds",
        "Time to append one batch to a durable shard's write-ahead log.",
        ("shard",),
        boundaries=_SECONDS_BUCKETS,
    )


@functools.cache
def replay_rejected_batches() -> Any:
    return _make(
        "counter",
        "harvest_replay_rejected_batches_total",
        "Batches a replay shard refused (schema mismatch).",
        ("shard",),
    )


@functools.cache
def replay_insert_seconds() -> Any:
    return _make(
        "histogram",
        "harvest_replay_insert_seconds",
        "Time to validate and store one batch.",
        ("shard",),
        boundaries=_SECONDS_BUCKETS,
    )


@functools.cache
def replay_size_rows() -> Any:
    return _make("gauge", "harvest_replay_size_rows", "Rows a replay shard holds.", ("shard",))


@functools.cache
def replay_consumer_lag_rows() -> Any:
    return _make(
        "gauge",
        "harvest_replay_consumer_lag_rows",
        "Rows stored in the replay that a stream consumer has not received yet.",
        ("consumer",),
    )


@functools.cache
def learner_samples() -> Any:
    return _make("counter", "harvest_learner_samples_total", "Samples a learner trained on.", ("learner",))


@functools.cache
def learner_loss() -> Any:
    return _make("gauge", "harvest_learner_loss", "A learner's latest training loss.", ("learner",))


@functools.cache
def shadow_agreement() -> Any:
    return _make(
        "gauge",
        "harvest_shadow_agreement",
        "Agreement of the shadow policy with the person over the session's recent frames: the share of "
        "equal actions (Discrete), or 1 - mean |difference| / action range (Box).",
        ("session",),
    )


@functools.cache
def shadow_version() -> Any:
    return _make(
        "gauge",
        "harvest_shadow_version",
        "Weights version of the shadow policy a session plays beside the person.",
        ("session",),
    )


@functools.cache
def stalls() -> Any:
    return _make(
        "counter",
        "harvest_stalls_total",
        "Stalls the watchdog detected: a component made no progress for watchdog.stall_after_s, tagged with "
        "what it was waiting for.",
        ("component", "waiting_for"),
    )


@functools.cache
def stalled() -> Any:
    return _make(
        "gauge",
        "harvest_stalled",
        "1 while the watchdog sees a component stalled (0 once it moves again or was restarted).",
        ("component", "waiting_for"),
    )


@functools.cache
def collectors() -> Any:
    return _make(
        "gauge",
        "harvest_collectors",
        "Collectors the run wants now (changes with a live config edit of rollout.num_collectors).",
        (),
    )


@functools.cache
def actor_restarts() -> Any:
    return _make(
        "counter",
        "harvest_actor_restarts_total",
        "Actors that died (or were killed by the watchdog) and came back.",
        ("component",),
    )


ALL_METRICS = (
    rollout_env_steps,
    rollout_episodes,
    rollout_push_wait_seconds,
    rollout_episode_return,
    rollout_local_bytes,
    replay_inserted_rows,
    replay_sampled_rows,
    replay_rejected_batches,
    replay_insert_seconds,
    replay_wal_write_seconds,
    replay_size_rows,
    replay_utilization,
    replay_memory_bytes,
    replay_consumer_lag_rows,
    learner_samples,
    learner_loss,
    shadow_agreement,
    shadow_version,
    stalls,
    stalled,
    collectors,
    actor_restarts,
)
