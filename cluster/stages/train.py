"""The train stage: `learner.stages` in turn, each a learner actor with a progress bar."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Callable

import ray
from loguru import logger

from harvest.cluster.config import RunConfig
from harvest.cluster.logging import wait_with_progress
from harvest.cluster.run_folder import RunPaths
from harvest.learners.algorithms import learner_class
from harvest.learners.config import LearnerConfig
from harvest.learners.learner import BEST_NAME, CURVE_NAME, FINAL_NAME, HISTORY_NAME, TrainResult
from harvest.learners.resume import LAST_NAME
from harvest.rollout.env_kinds import env_kind


def train(cfg: RunConfig, paths: RunPaths, run_id: str = "train", resume: bool = False) -> TrainResult:
    """Train `learner.stages` in turn, each from the previous stage's best checkpoint; the last
    stage's checkpoints and records end up in `learner/`. With `resume`, earlier stages that
    finished are not trained again."""
    stages = cfg.learner.stages
    if len(stages) == 1:
        return _train_stage(cfg, cfg.learner, paths, paths.learner, run_id)
    previous: str | None = None
    for index, stage in enumerate(stages, 1):
        stage_dir = paths.learner / f"{index}-{stage}"
        if resume and index < len(stages) and _stage_finished(stage_dir):
            previous = str(stage_dir / BEST_NAME)
            logger.info(
                "learner stage {}/{}: {} finished before; going on from {}", index, len(stages), stage, previous
            )
            continue
        stage_cfg = dataclasses.replace(cfg.learner, stages=[stage])  # the first starts from learner.init_checkpoint
        if index > 1:
            stage_cfg = learner_class(stage).after_stage(dataclasses.replace(stage_cfg, init_checkpoint=None), previous)
        start = f" from {stage_cfg.init_checkpoint}" if stage_cfg.init_checkpoint else ""
        logger.info("learner stage {}/{}: {}{}", index, len(stages), stage, start)
        result = _train_stage(cfg, stage_cfg, paths, stage_dir, run_id)
        previous = result.best_checkpoint
    for name in (BEST_NAME, FINAL_NAME, HISTORY_NAME, CURVE_NAME):
        shutil.copyfile(Path(result.best_checkpoint).parent / name, paths.learner / name)
    return result.moved(paths.learner)


def _stage_finished(stage_dir: Path) -> bool:
    """A stage wrote its final records and no resume state is left (it is written last)."""
    return (
        all((stage_dir / name).is_file() for name in (BEST_NAME, FINAL_NAME, HISTORY_NAME))
        and not (stage_dir / LAST_NAME).exists()
    )


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


def _train_stage(
    cfg: RunConfig, learner_cfg: LearnerConfig, paths: RunPaths, out_dir: Path, run_id: str
) -> TrainResult:
    """One learner actor (GPU when `learner.num_gpus` > 0 and Ray has one), with a progress bar
    over the work it reports (`Learner.work`)."""
    learner_cls = learner_class(learner_cfg.stage)
    result = learner_cls.train_without_actor(learner_cfg, paths.dataset, str(out_dir))
    if result is not None:
        return result
    # A learner that dies is restarted and its `train` call runs again (it resumes from last.safetensors).
    options = {
        "num_cpus": learner_cfg.num_cpus,
        "num_gpus": learner_cfg.num_gpus,
        "max_concurrency": 2,
        "max_restarts": learner_cfg.max_restarts,
        "max_task_retries": learner_cfg.max_restarts,
        **learner_cfg.placement.options(),
    }
    learner_cls.check(learner_cfg, env_kind(cfg.env).learner_env(cfg.env))
    args, kwargs = learner_cls.actor_args(learner_cfg, cfg.env, paths.dataset, str(out_dir), run_id)
    learner = ray.remote(learner_cls).options(**options).remote(*args, **kwargs)
    total, unit = learner_cls.work(learner_cfg, paths.dataset)
    try:
        node = ray.get(learner.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id()), timeout=600)
        logger.info("learner ({}) on node {}", learner_cls.algorithm, node)
        ref = learner.train.remote()
        (result,) = wait_with_progress(
            [ref], f"train ({learner_cls.algorithm.upper()})", unit, total, poll=_samples_poll(learner), timeout_s=3600
        )
    finally:
        ray.kill(learner, no_restart=True)
    result = dataclasses.replace(result, node_id=node)
    logger.info("{}", result.describe())
    return result


def train_summary(result: TrainResult) -> dict[str, Any]:
    return result.summary()
