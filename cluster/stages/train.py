"""The train stage: `learner.stages` in turn, each a learner actor with a progress bar."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Callable

import ray
from loguru import logger

from harvest.aggregation.dataset import Dataset
from harvest.cluster.config import RunConfig
from harvest.cluster.logging import wait_with_progress
from harvest.cluster.run_folder import RunPaths
from harvest.learners.bc import BEST_NAME, CURVE_NAME, FINAL_NAME, HISTORY_NAME, BCLearner, TrainResult
from harvest.learners.config import LearnerConfig
from harvest.learners.distributed import train_bc_data_parallel
from harvest.learners.dqfd import DQfDLearner
from harvest.learners.ppo import PPOLearner
from harvest.learners.resume import LAST_NAME
from harvest.rollout.env_kinds import env_kind
from harvest.rollout.policies import check_checkpoint_spaces


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
    played = env_kind(cfg.env).learner_env(cfg.env)
    if not init or played is None:
        return
    # each plays with its own env kwargs over the run's (e.g. Generals against the expert, not in self-play)
    own_kwargs = learner_cfg.ppo.env_kwargs if algorithm == "ppo" else learner_cfg.dqfd.env_kwargs
    check_checkpoint_spaces(init, dataclasses.replace(played, kwargs={**played.kwargs, **own_kwargs}))


def train_summary(result: TrainResult) -> dict[str, Any]:
    if result.algorithm in ("dqfd", "ppo"):
        return {"algorithm": result.algorithm, "best_checkpoint": result.best_checkpoint,
                "best_update": result.best_epoch, "best_eval_return": result.best_eval_return,
                "device": result.device, "rows": result.train_rows, "node": result.node_id}
    best = result.history[result.best_epoch - 1]
    return {"best_checkpoint": result.best_checkpoint, "best_epoch": result.best_epoch, "node": result.node_id,
            "best_validation_loss": result.best_validation_loss,
            "validation_accuracy": best.validation_accuracy, "device": result.device,
            "train_rows": result.train_rows, "samples_per_s": best.samples_per_s}
