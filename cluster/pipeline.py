"""The main path: collect → compact → train → evaluate, in the order things happen.

Every stage reads and writes the run folder `artifacts/<run-id>/`, so each also runs alone
(`harvest collect | compact | train | eval`) on the previous stage's outputs.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import ray
from loguru import logger

from aggregation.compact import compact_replay, snapshot_replay
from aggregation.dataset import Dataset
from aggregation.manifest import Manifest
from cluster.config import RunConfig, dump_config
from cluster.progress import console, summary_table, wait_with_progress
from learners.bc import BCLearner, TrainResult
from rollout.batch import BatchSchema
from rollout.config import PolicyConfig
from rollout.evaluation import EvalResult, evaluate_policies
from rollout.policies import ConfiguredPolicyFactory
from rollout.replay.replay import Replay, start_replay
from rollout.worker import CollectResult, RolloutWorker, schema_for

CONFIG_NAME = "config.yaml"
SUMMARY_NAME = "summary.json"
EVAL_NAME = "eval.json"


@dataclass
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def replay_snapshot(self) -> Path:
        return self.root / "replay"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

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


def prepare_run(cfg: RunConfig) -> tuple[str, RunPaths]:
    """The run id and folder; writes the resolved config there."""
    run_id = cfg.run.id or new_run_id()
    paths = RunPaths(Path(cfg.run.output_dir) / run_id)
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(dump_config(cfg))
    return run_id, paths


def collect(cfg: RunConfig, run_id: str) -> tuple[Replay, CollectSummary]:
    """Start the replay shards and `num_collectors` rollout actors; fill the replay with `rollout.steps` rows."""
    rollout = cfg.rollout
    factory = ConfiguredPolicyFactory(rollout.policy, cfg.env.id, seed=cfg.run.seed)
    schema: BatchSchema = schema_for(cfg.env, factory)
    replay = start_replay(cfg.replay, schema)
    worker_actor = ray.remote(RolloutWorker)
    workers = [worker_actor.options(num_cpus=rollout.num_cpus).remote(
        cfg.env, rollout, ConfiguredPolicyFactory(rollout.policy, cfg.env.id, seed=cfg.run.seed + index),
        replay, index, run_id, cfg.run.seed + index) for index in range(rollout.num_collectors)]
    per_collector = [rollout.steps // rollout.num_collectors + (i < rollout.steps % rollout.num_collectors)
                     for i in range(rollout.num_collectors)]
    logger.info("collecting {:,} transitions of {} with {} collectors x {} envs into {} replay shards",
                rollout.steps, cfg.env.id, rollout.num_collectors, cfg.env.num_envs, cfg.replay.num_shards)
    started = time.perf_counter()
    try:
        refs = [worker.collect.remote(rows) for worker, rows in zip(workers, per_collector)]
        results: list[CollectResult] = wait_with_progress(
            refs, "collect", "rows", rollout.steps, poll=replay.inserted_rows,
            timeout_s=max(600.0, rollout.steps / 100))
    finally:
        for worker in workers:
            ray.kill(worker, no_restart=True)
    seconds = time.perf_counter() - started
    stats = replay.stats()
    returns = [episode.episode_return for result in results for episode in result.episodes]
    rows = sum(result.rows for result in results)
    summary = CollectSummary(rows=rows, episodes=len(returns), seconds=seconds, rows_per_s=rows / seconds,
                             episode_return_mean=float(np.mean(returns)) if returns else None,
                             push_wait_seconds=sum(result.push_wait_seconds for result in results),
                             replay_size_rows=stats.size_rows, replay_evicted_rows=stats.evicted_rows)
    if stats.inserted_rows != rows:
        raise RuntimeError(f"collectors reported {rows} acknowledged rows but the replay counted "
                           f"{stats.inserted_rows}")
    return replay, summary


def compact(sources: list, schema: BatchSchema, cfg: RunConfig, run_id: str, paths: RunPaths) -> Manifest:
    """Write the dataset folder (Parquet + manifest, NPZ on request) from shards or snapshots."""
    with console.status("[bold]compact[/] writing Parquet" + (" + NPZ" if "npz" in cfg.aggregation.formats else "")):
        manifest = compact_replay(sources, schema, paths.dataset, cfg.aggregation, run_id, cfg.env.id)
    logger.info("dataset {}: {:,} rows, {} episodes ({} complete), {} Parquet files{}", paths.dataset,
                manifest.rows, manifest.episodes, manifest.episodes_complete, len(manifest.files),
                f", {manifest.npz}" if manifest.npz else "")
    return manifest


def train(cfg: RunConfig, paths: RunPaths) -> TrainResult:
    """Train the learner actor on the dataset; GPU when `learner.num_gpus` > 0 and Ray has one."""
    learner_cfg = cfg.learner
    learner = ray.remote(BCLearner).options(num_cpus=learner_cfg.num_cpus, num_gpus=learner_cfg.num_gpus,
                                            max_concurrency=2).remote(
        learner_cfg, str(paths.dataset), str(paths.learner))
    try:
        rows = Dataset.open(paths.dataset).manifest.rows
        if learner_cfg.max_rows:
            rows = min(rows, learner_cfg.max_rows)
        total = int(rows * (1 - learner_cfg.validation_fraction)) * learner_cfg.epochs
        ref = learner.train.remote()
        (result,) = wait_with_progress([ref], "train (BC)", "samples", total,
                                       poll=lambda: ray.get(learner.progress.remote(), timeout=30).samples,
                                       timeout_s=3600)
    finally:
        ray.kill(learner, no_restart=True)
    logger.info("best checkpoint: epoch {} (validation loss {:.4f}) on {}", result.best_epoch,
                result.best_validation_loss, result.device)
    return result


def evaluate(cfg: RunConfig, paths: RunPaths, run_id: str) -> dict[str, EvalResult]:
    """Play the trained policy and the baselines for `eval.episodes` episodes each (in every
    `eval.scenarios` entry, if there are any)."""
    checkpoint = paths.learner / f"{cfg.eval.checkpoint}.safetensors"
    policies = {"trained": ConfiguredPolicyFactory(PolicyConfig(kind="torch", checkpoint=str(checkpoint.resolve())),
                                                   cfg.env.id, seed=cfg.run.seed)}
    for baseline in cfg.eval.baselines:
        policies[baseline] = ConfiguredPolicyFactory(PolicyConfig(kind=baseline), cfg.env.id, seed=cfg.run.seed)
    scenarios = {name: dataclasses.replace(cfg.env, kwargs=_merged(cfg.env.kwargs, overrides))
                 for name, overrides in cfg.eval.scenarios.items()} or {"": cfg.env}
    results: dict[str, EvalResult] = {}
    for scenario, env_cfg in scenarios.items():
        where = f" {scenario}" if scenario else ""
        with console.status(f"[bold]eval{where}[/] {cfg.eval.episodes} episodes x {len(policies)} policies"):
            scenario_results = evaluate_policies(policies, env_cfg, cfg.rollout, cfg.eval.episodes,
                                                 cfg.eval.num_workers, run_id, seed=cfg.run.seed + 10_000)
        results.update({f"{name}{' @ ' + scenario if scenario else ''}": result
                        for name, result in scenario_results.items()})
    report = {name: {"mean_return": r.mean_return, "std_return": r.std_return, "mean_length": r.mean_length,
                     "returns": r.returns, **_win_rate(r, cfg.eval.win_return)} for name, r in results.items()}
    paths.eval.write_text(json.dumps(report, indent=2))
    for name, result in results.items():
        wins = _win_rate(result, cfg.eval.win_return)
        logger.info("eval {}: return {:.2f} ± {:.2f} over {} episodes{}", name, result.mean_return,
                    result.std_return, len(result.returns), f", win rate {wins['win_rate']:.0%}" if wins else "")
    return results


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
    return {"win_rate": float(np.mean(np.asarray(result.returns) >= win_return))}


def run(cfg: RunConfig, run_id: str, paths: RunPaths) -> RunSummary:
    """Collect, compact, train and evaluate one run."""
    summary = RunSummary(run_id, str(paths.root))
    timer = time.perf_counter()
    replay, summary.collect = collect(cfg, run_id)
    summary.stage_seconds["collect"] = time.perf_counter() - timer
    try:
        timer = time.perf_counter()
        manifest = compact(list(replay.shards), replay.schema, cfg, run_id, paths)
        summary.stage_seconds["compact"] = time.perf_counter() - timer
    finally:
        replay.kill()
    summary.dataset_rows, summary.dataset_episodes = manifest.rows, manifest.episodes
    timer = time.perf_counter()
    summary.train = _train_summary(train(cfg, paths))
    summary.stage_seconds["train"] = time.perf_counter() - timer
    timer = time.perf_counter()
    summary.eval = _eval_summary(evaluate(cfg, paths, run_id), cfg.eval.win_return)
    summary.stage_seconds["eval"] = time.perf_counter() - timer
    summary.write(paths.summary)
    return summary


def collect_only(cfg: RunConfig, run_id: str, paths: RunPaths) -> RunSummary:
    """`harvest collect`: fill the replay, then snapshot it to `replay/` for a later `harvest compact`."""
    summary = RunSummary(run_id, str(paths.root))
    timer = time.perf_counter()
    replay, summary.collect = collect(cfg, run_id)
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
    best = result.history[result.best_epoch - 1]
    return {"best_checkpoint": result.best_checkpoint, "best_epoch": result.best_epoch,
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
    if summary.dataset_rows is not None:
        rows.append(("dataset", f"{summary.dataset_rows:,} rows, {summary.dataset_episodes} episodes"))
    if summary.train:
        t = summary.train
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
