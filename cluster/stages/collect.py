"""The collect stage: replay shards and a fleet of collectors fill the replay with `rollout.steps` rows."""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import ray
from loguru import logger

from harvest.cluster.config import ConfigError, RunConfig
from harvest.cluster.live import LiveConfig, collect_appliers
from harvest.cluster.run_folder import RunPaths
from harvest.learners.human_session import HumanSession
from harvest.learners.policy import load_torch_policy
from harvest.rollout.batch import BatchSchema
from harvest.rollout.config import RolloutConfig
from harvest.rollout.env_kinds import CollectorSetup, EnvKind, env_kind
from harvest.rollout.fleet import Fleet, FleetResult
from harvest.rollout.human.collector import HumanSessionResult, human_schema_for
from harvest.rollout.policies import ConfiguredPolicyFactory
from harvest.rollout.replay.replay import Replay, start_replay
from harvest.rollout.source_columns import merged_schema


@dataclass
class CollectSummary:
    rows: int
    episodes: int
    seconds: float
    rows_per_s: float
    episode_return_mean: float | None
    push_wait_seconds: float
    replay_size_rows: int
    replay_evicted_rows: int
    human_sessions: list[dict[str, Any]] = field(default_factory=list)
    """Teleoperation sessions played during the collection (`HumanSessionResult`s)."""
    nodes: list[str] = field(default_factory=list)
    """The Ray node id each collector (its last incarnation) ran on."""
    restarts: list[int] = field(default_factory=list)
    """Restarts per collector (after dying, or killed by the watchdog for a stall)."""
    stalls: list[dict[str, Any]] = field(default_factory=list)
    """Stalls the watchdog reported: component, what it waited for, seconds, recovered."""
    scaled: list[dict[str, Any]] = field(default_factory=list)
    """Changes of the collector count while collecting (live config edits): at_s, from, to."""
    config_changes: list[dict[str, Any]] = field(default_factory=list)
    """Edits of the config file while collecting: when, the diff, applied or rejected (and why)."""
    shadow: dict[str, Any] | None = None
    """The shadow learner's summary (versions, rounds, checkpoint, agreement plot) when `human.shadow` is set."""


def collect(
    cfg: RunConfig,
    run_id: str,
    paths: RunPaths | None = None,
    during: Callable[[Replay], AbstractContextManager] | None = None,
    live: LiveConfig | None = None,
    resume: bool = False,
) -> tuple[Replay, CollectSummary]:
    """Start the replay shards and a fleet of `rollout.num_collectors` collectors of the env's
    kind (`rollout.env_kinds`); fill the replay with `rollout.steps` rows (inside `during(replay)`,
    e.g. a `Rotation`, when given) while a person's session plays beside them (`human:`), applying
    edits of the config file as they come (`live`). With `resume`, durable shards come back with
    the interrupted run's rows and the collectors collect only what is missing."""
    paths = paths or RunPaths.of(cfg, run_id)
    kind, rollout = env_kind(cfg.env), cfg.rollout
    schema = kind.schema(
        cfg.env, ConfiguredPolicyFactory(rollout.policy, cfg.env.id, seed=cfg.run.seed, load_torch=load_torch_policy)
    )
    if cfg.human is not None:  # the person's rows and the simulators' share the replay, tagged by source
        schema = merged_schema(human_schema_for(cfg.env, cfg.human), schema)
    replay = _started_replay(cfg, schema, paths, resume)
    session = (
        HumanSession.start(cfg.env, cfg.human, cfg.learner, cfg.rollout, replay, run_id, cfg.run.seed, paths.root)
        if cfg.human is not None
        else None
    )
    # The replay handle (it holds actor handles, so Ray keeps it in the object store) is put once
    # and referenced here until collection ends, so a restarted collector can always read it
    # (ray-project/ray#53727: Ray does not keep such constructor arguments alive for restarts).
    setup = CollectorSetup(cfg.env, rollout, ray.put(replay), run_id, cfg.run.seed, paths.root, load_torch_policy)
    fleet = kind.start_fleet(setup, replay, cfg.watchdog, resume) if rollout.num_collectors else None
    logger.info(
        "collecting {:,} transitions of {} with {} {} collectors into {} replay shards{}",
        rollout.steps if fleet else 0,
        kind.describe(cfg.env, cfg.run.seed),
        rollout.num_collectors,
        kind.collector,
        cfg.replay.num_shards,
        session.describe() if session else "",
    )
    watching = (
        live.watching(collect_appliers(live, fleet, cfg, replay, rotating=during is not None))
        if live is not None
        else nullcontext()
    )
    try:
        with watching:
            seconds, played, supervised = _fill_replay(replay, rollout, kind, during, session, fleet)
        if session is not None:
            session.finish(played, paths.root)
    finally:
        if session is not None:
            session.kill()
    summary = _summary(replay, played, supervised, seconds)
    summary.config_changes = list(live.changes) if live is not None else []
    summary.shadow = session.learner_summary if session is not None else None
    return replay, summary


def _started_replay(cfg: RunConfig, schema: BatchSchema, paths: RunPaths | None, resume: bool = False) -> Replay:
    """The replay's shards (and its Flight server, whose address goes to `<run>/replay_flight.json`);
    a resumed run's durable shards come back with the interrupted run's rows."""
    if resume and not cfg.replay.wal_dir:
        logger.warning(
            "resuming without durable shards (replay.wal_dir): the interrupted run's replay was in "
            "memory only, so collection starts over"
        )
    replay = start_replay(cfg.replay, schema)
    if replay.flight_location and paths is not None:
        assert cfg.replay.flight is not None  # start_replay serves a Flight location only with replay.flight
        paths.root.mkdir(parents=True, exist_ok=True)
        (paths.root / "replay_flight.json").write_text(
            json.dumps({"location": replay.flight_location, "token_env": cfg.replay.flight.token_env}, indent=2)
        )
    if resume and cfg.replay.wal_dir:
        stored = replay.inserted_rows()
        logger.info("resuming: the replay came back with {:,} rows from {}", stored, cfg.replay.wal_dir)
        if stored > cfg.rollout.steps:
            replay.kill()
            raise ConfigError(
                f"rollout.steps={cfg.rollout.steps:,}: the interrupted run's replay already holds "
                f"{stored:,} rows (in {cfg.replay.wal_dir}); resume with rollout.steps >= {stored:,}, "
                "or start a new run"
            )
    return replay


def _fill_replay(
    replay: Replay,
    rollout: RolloutConfig,
    kind: EnvKind,
    during: Callable[[Replay], AbstractContextManager] | None,
    session: HumanSession | None,
    fleet: Fleet | None,
) -> tuple[float, HumanSessionResult | None, FleetResult | None]:
    """Blocks: the `fleet` collects `rollout.steps` rows (a progress bar over the replay's count)
    while the `session` plays until the person ends it; then both are stopped. The time, the
    session's and the fleet's results."""
    started = time.perf_counter()
    played: HumanSessionResult | None = None
    supervised: FleetResult | None = None
    try:
        session_ref = session.actor.run.remote() if session is not None else None
        with during(replay) if during is not None else nullcontext():
            if fleet is not None:
                supervised = kind.fill(fleet, rollout)
            if session_ref is not None:
                assert session is not None  # session_ref is its run
                logger.info(
                    "{}waiting for the teleoperation session to end (its end key, or a closed window)",
                    "the simulators are done; " if fleet else "",
                )
                played = ray.get(session_ref)  # bounded by the session's own human.max_session_s
                ray.get(session.actor.close.remote(), timeout=60)
    finally:
        if fleet is not None:
            fleet.stop()
        if session is not None:
            ray.kill(session.actor, no_restart=True)
    return time.perf_counter() - started, played, supervised


def _acknowledged_rows(replay: Replay, results: list[Any], supervised: FleetResult | None) -> int:
    """Rows the collectors stored: their acks, or, where some died, every incarnation's rows as the
    replay counted them (a dead incarnation's acks died with it); the live incarnations' acks must
    match the replay's count of their source exactly."""
    if supervised is None:
        return sum(result.rows for result in results)
    by_source = replay.rows_by_source()
    acked: dict[str, int] = {}
    for result in results:
        acked[result.source] = acked.get(result.source, 0) + result.rows
    for source, rows in acked.items():
        if source not in supervised.dead_sources and by_source.get(source, 0) != rows:
            raise RuntimeError(
                f"{source} had {rows} rows acknowledged but the replay stored {by_source.get(source, 0)} from it"
            )
    return sum(supervised.rows_by_collector)


def _summary(
    replay: Replay, played: HumanSessionResult | None, supervised: FleetResult | None, seconds: float
) -> CollectSummary:
    """The collection summary (each collector's rows logged), once the replay's own count agrees
    with the collectors' acknowledgements."""
    results = supervised.results if supervised is not None else []
    if supervised is not None:
        for index, rows in enumerate(supervised.rows_by_collector):
            mine = [result for result in results if result.collector_id == index]
            logger.info(
                "collector {}: {:,} rows stored ({} chunks, {} restarts){}",
                index,
                rows,
                len(mine),
                supervised.restarts[index],
                f"; {mine[-1].details()}" if mine else "",
            )
    for shard, report in enumerate(ray.get([shard.memory.remote() for shard in replay.shards], timeout=60)):
        logger.info("replay shard {}: {:,} rows in {:.1f} MB", shard, report["rows"], report["bytes"] / 2**20)
    returns = [value for result in results for value in result.episode_returns]
    episodes = sum(result.episode_count for result in results)
    rows = _acknowledged_rows(replay, results, supervised)
    if played is not None:
        returns += [episode["return"] for episode in played.episodes]
        episodes += len(played.episodes)
        rows += played.rows
    stats = replay.stats()
    if stats.inserted_rows != rows:
        raise RuntimeError(f"collectors reported {rows} acknowledged rows but the replay counted {stats.inserted_rows}")
    summary = CollectSummary(
        rows=rows,
        episodes=episodes,
        seconds=seconds,
        rows_per_s=rows / seconds,
        episode_return_mean=float(np.mean(returns)) if returns else None,
        push_wait_seconds=sum(result.push_wait_seconds for result in results),
        replay_size_rows=stats.size_rows,
        replay_evicted_rows=stats.evicted_rows,
        human_sessions=[played.to_json()] if played is not None else [],
    )
    if supervised is not None:
        summary.restarts, summary.stalls = supervised.restarts, supervised.stalls_json()
        summary.nodes, summary.scaled = supervised.nodes, supervised.scaled
    return summary
