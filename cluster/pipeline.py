"""The main path: collect → compact → train → evaluate, in the order things happen.

Every stage reads and writes the run folder `artifacts/<run-id>/`, so each also runs alone
(`harvest collect | compact | train | eval`) on the previous stage's outputs.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import shutil
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray
from loguru import logger
from rich.table import Table

from harvest.aggregation.compact import compact_replay, snapshot_replay
from harvest.aggregation.dataset import Dataset
from harvest.aggregation.rotate import Rotation
from harvest.aggregation.storage import Location, location
from harvest.aggregation.manifest import Manifest, has_manifest
from harvest.aggregation.robocode_npz import write_dataset_npz
from harvest.cluster.config import ROBOCODE_ENV_ID, ConfigError, RunConfig, dump_config, robocode_battles
from harvest.cluster.logging import console, summary_table, wait_with_progress
from harvest.cluster.run_folder import RunFolderError, RunMode, claim_run_folder
from harvest.cluster.run_folder import record_stage as record_stage_in
from harvest.cluster.sessions import review_sessions, stopped_shadow
from harvest.cluster.live import LiveConfig, collect_appliers
from harvest.envs.config import EnvConfig
from harvest.learners.bc import BEST_NAME, CURVE_NAME, FINAL_NAME, HISTORY_NAME, BCLearner, TrainResult
from harvest.learners.config import LearnerConfig
from harvest.learners.resume import LAST_NAME
from harvest.learners.distributed import train_bc_data_parallel
from harvest.learners.dqfd import DQfDLearner
from harvest.learners.ppo import PPOLearner
from harvest.learners.shadow import ShadowLearner
from harvest.rollout.batch import BatchSchema
from harvest.rollout.config import EpisodeFilter, PolicyConfig, RolloutConfig
from harvest.rollout.evaluation import EvalResult, evaluate_policies, wilson_interval
from harvest.learners.policy import load_torch_policy
from harvest.rollout.policies import ConfiguredPolicyFactory, check_checkpoint_spaces
from harvest.rollout.human import HumanCollector, HumanSessionResult, human_schema_for
from harvest.rollout.human_config import HumanConfig
from harvest.rollout.fleet import Fleet, FleetResult
from harvest.rollout.replay.replay import Replay, start_replay
from harvest.rollout.sources import merged_schema
from harvest.rollout.robocode_collector import RobocodeCollectResult, RobocodeCollector, expert_episodes, robocode_schema
from harvest.rollout.worker import CollectResult, RolloutWorker, collector_uid, schema_for

ROBOCODE_GYM_ID = "harvest/Robocode-v0"
CONFIG_NAME = "config.yaml"
SUMMARY_NAME = "summary.json"
EVAL_NAME = "eval.json"


@dataclass
class RunPaths:
    root: Path
    dataset_output: str | None = None
    """`aggregation.output`: the dataset goes to `<dataset_output>/<run id>` instead of `<root>/dataset`."""

    @classmethod
    def of(cls, cfg: RunConfig, run_id: str) -> "RunPaths":
        """The folders of run `run_id` of `cfg`: `<run.output_dir>/<run id>`, made absolute once
        here (every path handed to an actor or a subprocess comes from it)."""
        return cls(Path(cfg.run.output_dir).expanduser().absolute() / run_id, cfg.aggregation.output)

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def replay_snapshot(self) -> Path:
        return self.root / "replay"

    @property
    def dataset(self) -> Location:
        """Where the run's dataset is: a local folder or an object-store prefix."""
        if self.dataset_output:
            return location(self.dataset_output).join(self.root.name)
        return location(self.root / "dataset")

    @property
    def learner(self) -> Path:
        return self.root / "learner"

    @property
    def eval(self) -> Path:
        return self.root / EVAL_NAME

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_NAME

    @property
    def robocode(self) -> Path:
        return self.root / "robocode"

    @property
    def game_states(self) -> Path:
        return self.root / "game_states"

    @property
    def log(self) -> Path:
        return self.root / "harvest.log"


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


@dataclass
class RunSummary:
    run_id: str
    run_dir: str
    stage_seconds: dict[str, float] = field(default_factory=dict)
    collect: CollectSummary | None = None
    dataset_rows: int | None = None
    dataset_episodes: int | None = None
    train: dict[str, Any] | None = None
    eval: dict[str, dict[str, float]] | None = None

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, default=str))


def new_run_id() -> str:
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def prepare_run(cfg: RunConfig, mode: RunMode = "new", command: str = "run") -> tuple[str, RunPaths]:
    """The run id and its (absolute) folder, claimed for `mode` (see `claim_run_folder`: a new
    run refuses an existing folder); the resolved config is written there, except by a stage
    command (`mode="stage"`), which leaves the run's config as it was."""
    run_id = cfg.run.id or new_run_id()
    paths = RunPaths.of(cfg, run_id)
    claim_run_folder(paths.root, run_id, mode, command)
    if mode in ("new", "overwrite") and paths.dataset_output and paths.dataset.exists():
        if mode == "new":
            raise RunFolderError(f"{paths.dataset}: run {run_id!r} already has a dataset in aggregation.output; "
                                 "`--overwrite` replaces it, or choose another --run-id")
        paths.dataset.fs.delete_dir(paths.dataset.path)
    if mode != "stage":
        paths.config.write_text(dump_config(cfg))
    return run_id, paths


def record_stage(paths: RunPaths, stage: str, overrides: list[str]) -> None:
    """A stage command's `--set` items go to `<run>/stages.json`, not into the run's config."""
    record_stage_in(paths.root, stage, overrides)


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


def compact(sources: list, schema: BatchSchema, cfg: RunConfig, run_id: str, paths: RunPaths,
            rotation: Rotation | None = None) -> Manifest:
    """Write the dataset folder (Parquet + manifest, other formats on request) from shards or
    snapshots, or finish the `rotation` that has been writing it during the run."""
    if rotation is not None:
        formats = " + ".join(name.upper() for name in cfg.aggregation.formats if name != "parquet")
        with console.status("[bold]compact[/] writing the last rotation" + f" + {formats}" * bool(formats)):
            manifest = rotation.finish()
    else:  # (a bar with rows/s as the shards' tasks finish)
        manifest = compact_replay(sources, schema, paths.dataset, cfg.aggregation, run_id, cfg.env.id)
    if "robocode_npz" in cfg.aggregation.formats:
        npz = write_dataset_npz(paths.dataset, description=_robocode_description(cfg))
        logger.info("Robocode NPZ {}", npz)
    logger.info("dataset {}: {:,} rows, {} episodes ({} complete), {} Parquet files{}", paths.dataset,
                manifest.rows, manifest.episodes, manifest.episodes_complete, len(manifest.files),
                f", {manifest.npz}" if manifest.npz else "")
    return manifest


def _robocode_description(cfg: RunConfig) -> str:
    if cfg.env.id != ROBOCODE_ENV_ID:
        return f"{cfg.env.id} transitions"
    battles = robocode_battles(cfg)
    recorded = ", ".join(battles.record or battles.robots)
    return (f"Robocode expert battles {' vs '.join(battles.robots)} ({battles.width}x{battles.height}, "
            f"{battles.rounds_per_battle} rounds each, run seed {cfg.run.seed}); rows of {recorded}")


def train(cfg: RunConfig, paths: RunPaths, run_id: str = "train", resume: bool = False) -> TrainResult:
    """Train `learner.stages` in turn (or just `learner.algorithm`), each from the previous
    stage's best checkpoint; the last stage's checkpoints and records end up in `learner/`.
    With `resume`, earlier stages that finished are not trained again."""
    stages = cfg.learner.stages or [cfg.learner.algorithm]
    if len(stages) == 1:
        return _train_stage(cfg, dataclasses.replace(cfg.learner, algorithm=stages[0]), paths, paths.learner, run_id)
    previous: str | None = None
    for index, stage in enumerate(stages, 1):
        stage_dir = paths.learner / f"{index}-{stage}"
        if resume and index < len(stages) and _stage_finished(stage_dir):
            previous = str(stage_dir / BEST_NAME)
            logger.info("learner stage {}/{}: {} finished before; going on from {}", index, len(stages), stage,
                        previous)
            continue
        stage_cfg = _stage_config(cfg.learner, stage, previous)
        logger.info("learner stage {}/{}: {}{}", index, len(stages), stage,
                    f" from {previous}" if previous and stage != "bc" else "")
        result = _train_stage(cfg, stage_cfg, paths, stage_dir, run_id)
        previous = result.best_checkpoint
    for name in (BEST_NAME, FINAL_NAME, HISTORY_NAME, CURVE_NAME):
        shutil.copyfile(Path(result.best_checkpoint).parent / name, paths.learner / name)
    return dataclasses.replace(result, best_checkpoint=str(paths.learner / BEST_NAME),
                               final_checkpoint=str(paths.learner / FINAL_NAME),
                               history_path=str(paths.learner / HISTORY_NAME))


def _stage_finished(stage_dir: Path) -> bool:
    """A stage wrote its final records and no resume state is left (it is written last)."""
    return all((stage_dir / name).is_file() for name in (BEST_NAME, FINAL_NAME, HISTORY_NAME)) and \
        not (stage_dir / LAST_NAME).exists()


def _samples_poll(learner: ray.actor.ActorHandle) -> Callable[[], int]:
    """The learner's sample count for the progress bar; the last one seen while it restarts."""
    seen = [0]

    def poll() -> int:
        try:
            seen[0] = ray.get(learner.progress.remote(), timeout=30).samples
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass
        return seen[0]

    return poll


def _stage_config(learner: LearnerConfig, stage: str, previous: str | None) -> LearnerConfig:
    """The learner config of one stage: DQfD and PPO start from the previous stage's best
    checkpoint unless their own `init_checkpoint` says otherwise."""
    changes: dict[str, Any] = {"algorithm": stage, "stages": []}
    if stage == "dqfd" and previous and not learner.dqfd.init_checkpoint:
        changes["dqfd"] = dataclasses.replace(learner.dqfd, init_checkpoint=previous)
    if stage == "ppo" and previous and not learner.ppo.init_checkpoint:
        changes["ppo"] = dataclasses.replace(learner.ppo, init_checkpoint=previous)
    return dataclasses.replace(learner, **changes)


def _train_stage(cfg: RunConfig, learner_cfg: LearnerConfig, paths: RunPaths, out_dir: Path,
                 run_id: str) -> TrainResult:
    """One learner actor (GPU when `learner.num_gpus` > 0 and Ray has one), with a progress bar."""
    algorithm = learner_cfg.algorithm
    if algorithm == "bc" and learner_cfg.num_workers > 1:
        return train_bc_data_parallel(learner_cfg, paths.dataset, str(out_dir))
    # A learner that dies is restarted and its `train` call runs again (BC resumes from last.safetensors).
    options = {"num_cpus": learner_cfg.num_cpus, "num_gpus": learner_cfg.num_gpus, "max_concurrency": 2,
               "max_restarts": learner_cfg.max_restarts, "max_task_retries": learner_cfg.max_restarts,
               **learner_cfg.placement.options()}
    _check_init_checkpoint(cfg, learner_cfg)
    if algorithm == "ppo":
        learner = ray.remote(PPOLearner).options(**options).remote(learner_cfg, cfg.env, str(out_dir), run_id)
        total, unit = learner_cfg.ppo.env_steps, "env steps"
    else:
        learner_class = DQfDLearner if algorithm == "dqfd" else BCLearner
        if algorithm == "dqfd":  # it plays in the run's env: its kwargs under learner.dqfd.env_kwargs
            learner_cfg = dataclasses.replace(learner_cfg, dqfd=dataclasses.replace(
                learner_cfg.dqfd, env_kwargs={**cfg.env.kwargs, **learner_cfg.dqfd.env_kwargs}))
        env_arg = {"env_cfg": cfg.env} if algorithm == "dqfd" else {}  # DQfD plays the run's env, wrappers and all
        learner = ray.remote(learner_class).options(**options).remote(learner_cfg, paths.dataset, str(out_dir),
                                                                      **env_arg)
        if algorithm == "dqfd":
            dqfd = learner_cfg.dqfd
            total, unit = dqfd.pretrain_steps + dqfd.online_env_steps * dqfd.updates_per_env_step, "updates"
        else:
            rows = Dataset.open(paths.dataset).manifest.rows
            if learner_cfg.max_rows:
                rows = min(rows, learner_cfg.max_rows)
            total, unit = int(rows * (1 - learner_cfg.validation_fraction)) * learner_cfg.epochs, "samples"
    try:
        node = ray.get(learner.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id()), timeout=600)
        logger.info("learner ({}) on node {}", algorithm, node)
        ref = learner.train.remote()
        (result,) = wait_with_progress([ref], f"train ({algorithm.upper()})", unit, total,
                                       poll=_samples_poll(learner), timeout_s=3600)
    finally:
        ray.kill(learner, no_restart=True)
    result = dataclasses.replace(result, node_id=node)
    if result.best_eval_return is not None:
        logger.info("best checkpoint ({}): iteration/update {} (evaluation return {:.1f}) on {}", algorithm,
                    result.best_epoch, result.best_eval_return, result.device)
    else:
        logger.info("best checkpoint: epoch {} (validation loss {:.4f}) on {}", result.best_epoch,
                    result.best_validation_loss, result.device)
    return result


def _check_init_checkpoint(cfg: RunConfig, learner_cfg: LearnerConfig) -> None:
    """A PPO or DQfD stage's starting checkpoint against the env it plays, in the driver before
    the learner starts: another env's checkpoint is one line (`CheckpointSpaceError`), not a
    tensor-size error from inside the learner."""
    algorithm = learner_cfg.algorithm
    init = {"ppo": learner_cfg.ppo.init_checkpoint, "dqfd": learner_cfg.dqfd.init_checkpoint}.get(algorithm)
    if not init or cfg.env.id == ROBOCODE_ENV_ID:
        return
    # each plays with its own env kwargs over the run's (e.g. Generals against the expert, not in self-play)
    own_kwargs = learner_cfg.ppo.env_kwargs if algorithm == "ppo" else learner_cfg.dqfd.env_kwargs
    check_checkpoint_spaces(init, dataclasses.replace(cfg.env, kwargs={**cfg.env.kwargs, **own_kwargs}))


def evaluate(cfg: RunConfig, paths: RunPaths, run_id: str) -> dict[str, EvalResult]:
    """Play the trained policy and the baselines for `eval.episodes` episodes each (in every
    `eval.scenarios` entry, if there are any). With several `learner.stages`, each earlier
    stage's checkpoint plays too (as `1-bc`, ...), so the table shows what every stage added."""
    checkpoint = paths.learner / f"{cfg.eval.checkpoint}.safetensors"
    eval_env = _eval_env(cfg)
    robocode_expert = cfg.env.id == ROBOCODE_ENV_ID and "expert" in cfg.eval.baselines
    checkpoints = {"trained": checkpoint}
    for index, stage in enumerate(cfg.learner.stages[:-1], 1):
        stage_checkpoint = paths.learner / f"{index}-{stage}" / f"{cfg.eval.checkpoint}.safetensors"
        if stage_checkpoint.is_file():
            checkpoints[f"{index}-{stage}"] = stage_checkpoint
    policies = {name: ConfiguredPolicyFactory(PolicyConfig(kind="torch", checkpoint=str(path.resolve()),
                                                           deterministic=cfg.eval.deterministic),
                                              eval_env.id, seed=cfg.run.seed, load_torch=load_torch_policy)
                for name, path in checkpoints.items()}
    for baseline in cfg.eval.baselines:
        if not (robocode_expert and baseline == "expert"):
            policies[baseline] = ConfiguredPolicyFactory(PolicyConfig(kind=baseline), eval_env.id, seed=cfg.run.seed, load_torch=load_torch_policy)
    scenarios = {name: dataclasses.replace(eval_env, kwargs=_merged(eval_env.kwargs, overrides))
                 for name, overrides in cfg.eval.scenarios.items()} or {"": eval_env}
    results: dict[str, EvalResult] = {}
    for scenario, env_cfg in scenarios.items():
        where = f" {scenario}" if scenario else ""
        with console.status(f"[bold]eval{where}[/] {cfg.eval.episodes} episodes x {len(policies)} policies"):
            scenario_results = evaluate_policies(policies, env_cfg, cfg.rollout, cfg.eval.episodes,
                                                 cfg.eval.num_workers, run_id, seed=cfg.run.seed + 10_000)
            if robocode_expert:
                scenario_results["expert"] = _robocode_expert(cfg, env_cfg, paths)
        results.update({f"{name}{' @ ' + scenario if scenario else ''}": result
                        for name, result in scenario_results.items()})
    report = {name: {"mean_return": r.mean_return, "std_return": r.std_return, "mean_return_ci95": list(r.mean_ci95),
                     "mean_length": r.mean_length, "returns": r.returns, **_win_rate(r, cfg.eval.win_return)}
              for name, r in results.items()}
    paths.eval.write_text(json.dumps(report, indent=2))
    for name, result in results.items():
        wins = _win_rate(result, cfg.eval.win_return)
        logger.info("eval {}: return {:.2f} ± {:.2f} over {} episodes{}", name, result.mean_return,
                    result.std_return, len(result.returns), f", win rate {wins['win_rate']:.0%}" if wins else "")
    console.print(eval_table(results, cfg.eval.win_return))
    return results


def _eval_env(cfg: RunConfig) -> EnvConfig:
    """`eval.env`, or the run's env; a Robocode run's default is the Gymnasium tank against the
    collection's second robot on the same battlefield."""
    if cfg.eval.env is not None:
        return cfg.eval.env
    if cfg.env.id != ROBOCODE_ENV_ID:
        return cfg.env
    battles = robocode_battles(cfg)
    return EnvConfig(id=ROBOCODE_GYM_ID, num_envs=1, kwargs={"opponent": battles.robots[1], "width": battles.width,
                                                               "height": battles.height})


def _robocode_expert(cfg: RunConfig, env_cfg: EnvConfig, paths: RunPaths) -> EvalResult:
    """The collection's expert robot (a Java robot, not a Python policy) in engine battles
    against the scenario's opponent, scored as the Gymnasium env scores the trained tank."""
    battles = robocode_battles(cfg)
    kwargs = env_cfg.kwargs
    opponent = kwargs.get("opponent", battles.robots[1])
    per_worker = [cfg.eval.episodes // cfg.eval.num_workers + (i < cfg.eval.episodes % cfg.eval.num_workers)
                  for i in range(cfg.eval.num_workers)]
    task = ray.remote(expert_episodes).options(num_cpus=cfg.rollout.num_cpus)
    refs = [task.remote([battles.robots[0], opponent], rounds, cfg.run.seed + 20_000 + 1000 * index,
                        kwargs.get("width", battles.width), kwargs.get("height", battles.height),
                        kwargs.get("max_turns"), str(paths.robocode / f"expert-eval-{index}"))
            for index, rounds in enumerate(per_worker) if rounds]
    parts = ray.get(refs, timeout=1800)
    return EvalResult("expert", [r for returns, _ in parts for r in returns],
                      [n for _, lengths in parts for n in lengths])


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in, nested dicts key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _merged(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


def _win_rate(result: EvalResult, win_return: float | None) -> dict[str, float]:
    if win_return is None or not result.returns:
        return {}
    wins = int(np.sum(np.asarray(result.returns) >= win_return))
    low, high = wilson_interval(wins, len(result.returns))
    return {"win_rate": wins / len(result.returns), "win_rate_ci95": [low, high]}


def eval_table(results: dict[str, EvalResult], win_return: float | None) -> Table:
    """Policies by rows: episodes, mean ± std, the mean's 95 % interval, and the win rate with
    its 95 % (Wilson) interval where `eval.win_return` defines a win."""
    table = Table(title="Evaluation", title_justify="left")
    for column in ("policy", "episodes", "return mean ± std", "95 % CI of the mean",
                   *(["win rate [95 % CI]"] if win_return is not None else [])):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, result in results.items():
        low, high = result.mean_ci95
        row = [name, str(len(result.returns)), f"{result.mean_return:.2f} ± {result.std_return:.2f}",
               f"[{low:.2f}, {high:.2f}]"]
        if win_return is not None:
            wins = _win_rate(result, win_return)
            row.append(f"{wins['win_rate']:.0%} [{wins['win_rate_ci95'][0]:.0%}, {wins['win_rate_ci95'][1]:.0%}]"
                       if wins else "-")
        table.add_row(*row)
    return table


def run(cfg: RunConfig, run_id: str, paths: RunPaths, live: LiveConfig | None = None,
        resume: bool = False) -> RunSummary:
    """Collect, compact, train and evaluate one run (applying config edits while it collects).
    With `resume`, an interrupted run goes on: a finished dataset is kept, a collection goes on
    from its durable shards, and training from the learner's last epoch."""
    summary = RunSummary(run_id, str(paths.root))
    finished = _finished_dataset(paths) if resume else None
    if finished is not None:
        logger.info("resuming: the dataset is complete ({:,} rows); training and evaluating", finished.rows)
        previous = json.loads(paths.summary.read_text()) if paths.summary.is_file() else {}
        summary.stage_seconds = previous.get("stage_seconds", {})
        summary.collect = CollectSummary(**previous["collect"]) if previous.get("collect") else None
        summary.dataset_rows, summary.dataset_episodes = finished.rows, finished.episodes
    else:
        _collect_and_compact(cfg, run_id, paths, summary, live, resume)
    timer = time.perf_counter()
    summary.train = _train_summary(train(cfg, paths, run_id, resume))
    summary.stage_seconds["train"] = time.perf_counter() - timer
    timer = time.perf_counter()
    summary.eval = _eval_summary(evaluate(cfg, paths, run_id), cfg.eval.win_return)
    summary.stage_seconds["eval"] = time.perf_counter() - timer
    summary.write(paths.summary)
    return summary


def _finished_dataset(paths: RunPaths) -> Manifest | None:
    """The run's dataset manifest if compaction finished (not a rotation still in progress)."""
    try:
        manifest = Dataset.open(paths.dataset).manifest
    except (FileNotFoundError, ValueError, OSError):
        return None
    return None if getattr(manifest, "in_progress", False) else manifest


def _collect_and_compact(cfg: RunConfig, run_id: str, paths: RunPaths, summary: RunSummary,
                         live: LiveConfig | None = None, resume: bool = False) -> Manifest:
    """Fill the replay, then write the dataset (rotating it during the collection when
    `aggregation.rotate_every_s` says so); stage times and sizes go into `summary`."""
    timer = time.perf_counter()
    rotations: list[Rotation] = []

    # rotators keep their state beside the durable shards, which a resumed run needs anyway
    rotation_state = Path(cfg.replay.wal_dir).expanduser() / "rotation" if cfg.replay.wal_dir else None

    def rotating(replay: Replay) -> Rotation:  # rotation by time: the dataset grows while collecting
        rotations.append(Rotation(replay, paths.dataset, cfg.aggregation, run_id, cfg.env.id,
                                  state_dir=rotation_state, resume=resume))
        return rotations[-1]

    if resume and cfg.aggregation.rotate_every_s and has_manifest(paths.dataset) and (
            rotation_state is None or not any(rotation_state.glob("rotator-*.arrow"))):
        raise RuntimeError(f"{paths.dataset}: its rotation had started writing the dataset, but no rotator state is "
                           f"left to go on from (it lives in <replay.wal_dir>/rotation/; replay.wal_dir is "
                           f"{cfg.replay.wal_dir}); run it again under a new id")
    replay, summary.collect = collect(cfg, run_id, paths, during=rotating if cfg.aggregation.rotate_every_s else None,
                                      live=live, resume=resume)
    summary.stage_seconds["collect"] = time.perf_counter() - timer
    if live is not None:  # edits made while collecting (filters, collector count) hold from here on
        cfg = live.current
        paths.config.write_text(dump_config(cfg))
    discarded = review_sessions(cfg, summary.collect.human_sessions)
    if discarded:
        if rotations:
            logger.warning("episodes {} were discarded after rotation wrote them; `harvest edit delete` removes "
                           "them from the dataset", discarded)
        else:
            criteria = cfg.aggregation.filter or EpisodeFilter()
            cfg = dataclasses.replace(cfg, aggregation=dataclasses.replace(cfg.aggregation, filter=dataclasses.replace(
                criteria, exclude_episodes=[*criteria.exclude_episodes, *discarded])))
    try:
        timer = time.perf_counter()
        manifest = compact(list(replay.shards), replay.schema, cfg, run_id, paths,
                           rotation=rotations[0] if rotations else None)
        summary.stage_seconds["compact"] = time.perf_counter() - timer
    finally:
        replay.kill()
    summary.dataset_rows, summary.dataset_episodes = manifest.rows, manifest.episodes
    return manifest


def teleop(cfg: RunConfig, run_id: str, paths: RunPaths) -> RunSummary:
    """`harvest teleop`: a person's session (and the simulators beside it) into the replay, then
    the dataset; train later with `harvest train <run>`."""
    if cfg.human is None:
        cfg = dataclasses.replace(cfg, human=HumanConfig())
    summary = RunSummary(run_id, str(paths.root))
    _collect_and_compact(cfg, run_id, paths, summary)
    summary.write(paths.summary)
    return summary


def collect_only(cfg: RunConfig, run_id: str, paths: RunPaths, live: LiveConfig | None = None,
                 resume: bool = False) -> RunSummary:
    """`harvest collect`: fill the replay, then snapshot it to `replay/` for a later `harvest compact`."""
    if cfg.aggregation.rotate_every_s:
        logger.warning("aggregation.rotate_every_s applies to `harvest run`; `harvest collect` snapshots the "
                       "replay once, at the end")
    summary = RunSummary(run_id, str(paths.root))
    timer = time.perf_counter()
    replay, summary.collect = collect(cfg, run_id, paths, live=live, resume=resume)
    if live is not None:
        paths.config.write_text(dump_config(live.current))
    try:
        with console.status("[bold]snapshot[/] writing the replay to Arrow IPC"):
            snapshot_replay(replay, paths.replay_snapshot)
    finally:
        replay.kill()
    summary.stage_seconds["collect"] = time.perf_counter() - timer
    summary.write(paths.summary)
    return summary


def compact_snapshot(cfg: RunConfig, run_id: str, paths: RunPaths) -> Manifest:
    """`harvest compact`: the dataset from a snapshot that `harvest collect` wrote."""
    snapshots = sorted(paths.replay_snapshot.glob("shard-*.arrow"))
    schema_path = paths.replay_snapshot / "schema.json"
    if not snapshots or not schema_path.is_file():
        raise FileNotFoundError(f"{paths.replay_snapshot}: no replay snapshot (shard-*.arrow and schema.json); "
                                "run `harvest collect` first")
    schema = BatchSchema.from_json(json.loads(schema_path.read_text()))
    return compact([str(path) for path in snapshots], schema, cfg, run_id, paths)


def _train_summary(result: TrainResult) -> dict[str, Any]:
    if result.algorithm in ("dqfd", "ppo"):
        return {"algorithm": result.algorithm, "best_checkpoint": result.best_checkpoint,
                "best_update": result.best_epoch, "best_eval_return": result.best_eval_return,
                "device": result.device, "rows": result.train_rows, "node": result.node_id}
    best = result.history[result.best_epoch - 1]
    return {"best_checkpoint": result.best_checkpoint, "best_epoch": result.best_epoch, "node": result.node_id,
            "best_validation_loss": result.best_validation_loss,
            "validation_accuracy": best.validation_accuracy, "device": result.device,
            "train_rows": result.train_rows, "samples_per_s": best.samples_per_s}


def _eval_summary(results: dict[str, EvalResult], win_return: float | None = None) -> dict[str, dict[str, float]]:
    return {name: {"mean_return": r.mean_return, "std_return": r.std_return, "episodes": len(r.returns),
                   **_win_rate(r, win_return)}
            for name, r in results.items()}


def print_summary(summary: RunSummary) -> None:
    rows: list[tuple[str, str]] = [("run", summary.run_id), ("outputs", summary.run_dir)]
    for stage, seconds in summary.stage_seconds.items():
        rows.append((f"{stage} time", f"{seconds:.1f} s"))
    if summary.collect:
        c = summary.collect
        rows.append(("collected", f"{c.rows:,} rows, {c.episodes} episodes, {c.rows_per_s:,.0f} rows/s"))
        if c.episode_return_mean is not None:
            rows.append(("collection return", f"{c.episode_return_mean:.1f} (mean)"))
        for session in c.human_sessions:
            returns = [episode["return"] for episode in session["episodes"]]
            rows.append((f"session {session['operator']}",
                         f"{session['frames']:,} frames, {len(returns)} episodes (return "
                         f"{np.mean(returns) if returns else float('nan'):.1f}), {session['achieved_fps']:.1f} FPS "
                         f"(target {session['target_fps']:.0f}, {session['late_frames']} late), ended by "
                         f"{session['ended_by']}"))
            if session["session_folder"]:
                rows.append(("session folder", session["session_folder"]))
    if summary.dataset_rows is not None:
        rows.append(("dataset", f"{summary.dataset_rows:,} rows, {summary.dataset_episodes} episodes"))
    if summary.train:
        t = summary.train
        if t.get("algorithm") in ("dqfd", "ppo"):
            rows.append(("learner", f"{t['algorithm'].upper()}, best at {t['best_update']}, evaluation return "
                                    f"{t['best_eval_return']:.1f} on {t['device']}"))
        else:
            accuracy = "" if t["validation_accuracy"] is None else f", accuracy {t['validation_accuracy']:.3f}"
            rows.append(("learner", f"best epoch {t['best_epoch']}, validation loss "
                                    f"{t['best_validation_loss']:.4f}{accuracy} on {t['device']}"))
    if summary.eval:
        for name, result in summary.eval.items():
            wins = f", win rate {result['win_rate']:.0%}" if "win_rate" in result else ""
            rows.append((f"eval {name}", f"{result['mean_return']:.2f} ± {result['std_return']:.2f} "
                                         f"({result['episodes']} episodes{wins})"))
        if "expert" in summary.eval and "trained" in summary.eval and summary.eval["expert"]["mean_return"]:
            ratio = summary.eval["trained"]["mean_return"] / summary.eval["expert"]["mean_return"]
            rows.append(("trained / expert", f"{ratio:.1%}"))
    console.print(summary_table("Harvest run", rows))
