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

from harvest.cluster.config import ROBOCODE_ENV_ID, ConfigError, RunConfig, robocode_battles
from harvest.cluster.live import LiveConfig, collect_appliers
from harvest.cluster.logging import wait_with_progress
from harvest.cluster.run_folder import RunPaths
from harvest.cluster.sessions import stopped_shadow
from harvest.learners.policy import load_torch_policy
from harvest.learners.shadow import ShadowLearner
from harvest.rollout.batch import BatchSchema
from harvest.rollout.config import PolicyConfig, RolloutConfig
from harvest.rollout.fleet import Fleet, FleetResult
from harvest.rollout.human import HumanCollector, HumanSessionResult, human_schema_for
from harvest.rollout.policies import ConfiguredPolicyFactory
from harvest.rollout.replay.replay import Replay, start_replay
from harvest.rollout.robocode_collector import RobocodeCollector, RobocodeCollectResult, robocode_schema
from harvest.rollout.sources import merged_schema
from harvest.rollout.worker import CollectResult, RolloutWorker, collector_uid, schema_for


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


def collect(cfg: RunConfig, run_id: str, paths: RunPaths | None = None,
            during: Callable[[Replay], AbstractContextManager] | None = None,
            live: LiveConfig | None = None, resume: bool = False) -> tuple[Replay, CollectSummary]:
    """Start the replay shards and `num_collectors` rollout actors; fill the replay with
    `rollout.steps` rows (inside `during(replay)`, e.g. a `Rotation`, when given), applying
    edits of the config file as they come (`live`). With `resume`, durable shards come back
    with the interrupted run's rows and the collectors collect only what is missing."""
    if cfg.env.id == ROBOCODE_ENV_ID:
        return collect_robocode(cfg, run_id, paths or RunPaths.of(cfg, run_id), during)
    rollout = cfg.rollout
    factory = ConfiguredPolicyFactory(rollout.policy, cfg.env.id, seed=cfg.run.seed, load_torch=load_torch_policy)
    schema: BatchSchema = schema_for(cfg.env, factory)
    if cfg.human is not None:  # the person's rows and the simulators' share the replay, tagged by source
        schema = merged_schema(human_schema_for(cfg.env, cfg.human), schema)
    if resume and not cfg.replay.wal_dir:
        logger.warning("resuming without durable shards (replay.wal_dir): the interrupted run's replay was in "
                       "memory only, so collection starts over")
    replay = _started_replay(cfg, schema, paths)
    if resume and cfg.replay.wal_dir:
        stored = replay.inserted_rows()
        logger.info("resuming: the replay came back with {:,} rows from {}", stored, cfg.replay.wal_dir)
        if stored > rollout.steps:
            replay.kill()
            raise ConfigError(f"rollout.steps={rollout.steps:,}: the interrupted run's replay already holds "
                              f"{stored:,} rows (in {cfg.replay.wal_dir}); resume with rollout.steps >= {stored:,}, "
                              "or start a new run")
    run_root = (paths or RunPaths.of(cfg, run_id)).root
    session = shadow = shadow_policy = None
    if cfg.human is not None and cfg.human.shadow is not None:  # a learner trains on the person as they play
        shadow = ray.remote(ShadowLearner).options(num_cpus=cfg.human.shadow.num_cpus, num_gpus=cfg.learner.num_gpus) \
            .remote(cfg.learner, cfg.human.shadow, replay, str(run_root / "shadow"), cfg.run.seed,
                    collector_id=rollout.num_collectors)  # the session's collector id (after the simulators')
        shadow_policy = ConfiguredPolicyFactory(
            PolicyConfig(kind="torch", checkpoint=ray.get(shadow.get_initial_checkpoint.remote(), timeout=300)),
            cfg.env.id, seed=cfg.run.seed, load_torch=load_torch_policy)
    if cfg.human is not None:
        session = ray.remote(HumanCollector).options(num_cpus=rollout.num_cpus).remote(
            cfg.env, cfg.human, replay, rollout.num_collectors, run_id, str(run_root / "sessions"), shadow,
            shadow_policy)
        if shadow is not None:
            ray.get(shadow.start.remote(), timeout=60)
    # max_concurrency 2: the watchdog's `activity` call is answered while `collect` runs
    worker_actor = ray.remote(RolloutWorker).options(num_cpus=rollout.num_cpus, max_restarts=rollout.max_restarts,
                                                     max_concurrency=2, **rollout.placement.options())
    # The replay handle (it holds actor handles, so Ray keeps it in the object store) is put once
    # and referenced here until collection ends, so a restarted collector can always read it
    # (ray-project/ray#53727: Ray does not keep such constructor arguments alive for restarts).
    replay_ref = ray.put(replay)

    def start_collector(index: int) -> ray.actor.ActorHandle:
        return worker_actor.remote(cfg.env, rollout, ConfiguredPolicyFactory(rollout.policy, cfg.env.id,
                                                                             seed=cfg.run.seed + index, load_torch=load_torch_policy),
                                   replay_ref, index, run_id, cfg.run.seed + index)

    supervisor = None
    if rollout.num_collectors:
        supervisor = Fleet(start_collector, rollout.num_collectors, replay, rollout.max_restarts, cfg.watchdog,
                           resume=resume)
    logger.info("collecting {:,} transitions of {} with {} collectors x {} envs into {} replay shards{}",
                rollout.steps if supervisor else 0, cfg.env.id, rollout.num_collectors, cfg.env.num_envs,
                cfg.replay.num_shards, f", and {cfg.human.operator}'s session ({cfg.human.driver})" if session else "")
    watching = (live.watching(collect_appliers(live, supervisor, cfg, replay, rotating=during is not None))
                if live is not None else nullcontext())
    try:
        with watching:
            _, seconds, played, supervised = _fill_replay(
                [], replay, rollout, timeout_s=max(600.0, rollout.steps / 100), during=during, session=session,
                supervisor=supervisor)
        shadow_summary = stopped_shadow(shadow, played, run_root) if shadow is not None else None
    finally:
        if shadow is not None:
            ray.kill(shadow, no_restart=True)
    results: list[CollectResult] = supervised.results if supervised is not None else []
    returns = [episode.episode_return for result in results for episode in result.episodes]
    if supervised is not None:
        for index, rows in enumerate(supervised.rows_by_collector):
            mine = [result for result in results if result.collector_id == index]
            filtered = mine[-1].filtered if mine else None
            logger.info("collector {}: {:,} rows stored ({} chunks, {} restarts), at most {:.1f} MB held locally ({} "
                        "mode){}", index, rows, len(mine), supervised.restarts[index],
                        max((r.peak_local_bytes for r in mine), default=0) / 2**20, rollout.mode,
                        "" if filtered is None else f"; kept {filtered['kept_episodes']} of {filtered['episodes']} "
                        f"finished episodes, dropped {filtered['dropped'] or 'none'}")
    for shard, report in enumerate(ray.get([shard.memory.remote() for shard in replay.shards], timeout=60)):
        logger.info("replay shard {}: {:,} rows in {:.1f} MB", shard, report["rows"], report["bytes"] / 2**20)
    if played is not None:
        returns += [episode["return"] for episode in played.episodes]
    summary = _checked_summary(replay, _acknowledged_rows(replay, results, supervised) + (played.rows if played else 0),
                               len(returns), seconds, float(np.mean(returns)) if returns else None,
                               sum(result.push_wait_seconds for result in results))
    if supervised is not None:
        summary.restarts, summary.stalls = supervised.restarts, supervised.stalls_json()
        summary.nodes, summary.scaled = supervised.nodes, supervised.scaled
    if live is not None:
        summary.config_changes = list(live.changes)
    summary.human_sessions = [played.to_json()] if played is not None else []
    summary.shadow = shadow_summary
    return replay, summary


def collect_robocode(cfg: RunConfig, run_id: str, paths: RunPaths,
                     during: Callable[[Replay], AbstractContextManager] | None = None) -> tuple[Replay, CollectSummary]:
    """`num_collectors` RobocodeCollector actors (one engine each) play seeded expert battles
    until the replay holds `rollout.steps` rows; engines live in `<run>/robocode/`, team-file
    game states (with `env.kwargs.game_states`) go to `<run>/game_states/`."""
    rollout = cfg.rollout
    replay = _started_replay(cfg, robocode_schema(), paths)
    collector_actor = ray.remote(RobocodeCollector)
    collectors = [collector_actor.options(num_cpus=rollout.num_cpus).remote(
        robocode_battles(cfg, collector_id=index), replay, index, collector_uid(run_id, index),
        str(paths.robocode / f"collector-{index}"), game_states_dir=str(paths.game_states))
        for index in range(rollout.num_collectors)]
    logger.info("collecting {:,} transitions of Robocode battles {} with {} engines into {} replay shards",
                rollout.steps, " vs ".join(robocode_battles(cfg).robots), rollout.num_collectors,
                cfg.replay.num_shards)
    results: list[RobocodeCollectResult]
    results, seconds, _, _ = _fill_replay(collectors, replay, rollout, timeout_s=max(600.0, rollout.steps / 20),
                                          close=True, during=during)
    for result in results:
        if result.restarts or result.dropped_battles:
            logger.warning("collector {}: {} engine restarts, battles dropped: {}", result.collector_id,
                           result.restarts, result.dropped_battles or "none")
    return replay, _checked_summary(replay, sum(result.rows for result in results),
                                    sum(result.episodes for result in results), seconds, None, 0.0)


def _started_replay(cfg: RunConfig, schema: BatchSchema, paths: RunPaths | None) -> Replay:
    """The replay's shards (and its Flight server, whose address goes to `<run>/replay_flight.json`)."""
    replay = start_replay(cfg.replay, schema)
    if replay.flight_location and paths is not None:
        paths.root.mkdir(parents=True, exist_ok=True)
        (paths.root / "replay_flight.json").write_text(json.dumps(
            {"location": replay.flight_location, "token_env": cfg.replay.flight.token_env}, indent=2))
    return replay


def _fill_replay(actors: list, replay: Replay, rollout: RolloutConfig, timeout_s: float, close: bool = False,
                 during: Callable[[Replay], AbstractContextManager] | None = None,
                 session: ray.actor.ActorHandle | None = None, supervisor: Fleet | None = None
                 ) -> tuple[list, float, HumanSessionResult | None, FleetResult | None]:
    """Blocks: the `supervisor`'s collectors, or the `actors` (each given its share), collect
    `rollout.steps` rows (shown as a progress bar over the replay's count) while the `session`
    (a `HumanCollector`) plays until the person ends it; then all are closed (with `close`) and
    killed; the actors' results, the time, the session's and the supervisor's results."""
    per_actor = [rollout.steps // len(actors) + (i < rollout.steps % len(actors)) for i in range(len(actors))]
    started = time.perf_counter()
    results: list = []
    played = supervised = None
    try:
        session_ref = session.run.remote() if session is not None else None
        with during(replay) if during is not None else nullcontext():
            if supervisor is not None:
                chunk = rollout.chunk_rows or max(rollout.batch_rows, rollout.steps // (8 * rollout.num_collectors))
                supervised = supervisor.fill(rollout.steps, chunk, timeout_s)
            elif actors:
                refs = [actor.collect.remote(rows) for actor, rows in zip(actors, per_actor)]
                results = wait_with_progress(refs, "collect", "rows", rollout.steps, poll=replay.inserted_rows,
                                             timeout_s=timeout_s)
            if session_ref is not None:
                logger.info("{}waiting for the teleoperation session to end (its end key, or a closed window)",
                            "the simulators are done; " if actors or supervisor else "")
                played = ray.get(session_ref)  # bounded by the session's own human.max_session_s
                ray.get(session.close.remote(), timeout=60)
        if close:
            ray.get([actor.close.remote() for actor in actors], timeout=120)
    finally:
        for actor in [*actors, *([session] if session is not None else [])]:
            ray.kill(actor, no_restart=True)
    return results, time.perf_counter() - started, played, supervised


def _acknowledged_rows(replay: Replay, results: list[CollectResult], supervised: FleetResult | None) -> int:
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
            raise RuntimeError(f"{source} had {rows} rows acknowledged but the replay stored "
                               f"{by_source.get(source, 0)} from it")
    return sum(supervised.rows_by_collector)


def _checked_summary(replay: Replay, rows: int, episodes: int, seconds: float, return_mean: float | None,
                     push_wait_seconds: float) -> CollectSummary:
    """The collection summary, once the replay's own count agrees with the collectors' acks."""
    stats = replay.stats()
    if stats.inserted_rows != rows:
        raise RuntimeError(f"collectors reported {rows} acknowledged rows but the replay counted "
                           f"{stats.inserted_rows}")
    return CollectSummary(rows=rows, episodes=episodes, seconds=seconds, rows_per_s=rows / seconds,
                          episode_return_mean=return_mean, push_wait_seconds=push_wait_seconds,
                          replay_size_rows=stats.size_rows, replay_evicted_rows=stats.evicted_rows)
