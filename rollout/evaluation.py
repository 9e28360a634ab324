"""Evaluation: play policies for whole episodes through rollout actors and report returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import ray

from envs.config import EnvConfig
from rollout.config import RolloutConfig
from rollout.cutter import FinishedEpisode
from rollout.policies import PolicyFactory
from rollout.worker import RolloutWorker


@dataclass(frozen=True)
class EvalResult:
    name: str
    returns: list[float]
    lengths: list[int]

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std_return(self) -> float:
        return float(np.std(self.returns))

    @property
    def mean_length(self) -> float:
        return float(np.mean(self.lengths))


def evaluate_policies(policies: dict[str, PolicyFactory], env_cfg: EnvConfig, cfg: RolloutConfig,
                      num_episodes: int, num_workers: int, run_id: str, seed: int = 10_000,
                      timeout_s: float = 600.0) -> dict[str, EvalResult]:
    """Blocks: each policy plays `num_episodes` episodes split over `num_workers` rollout actors."""
    worker_actor = ray.remote(RolloutWorker)
    per_worker = [num_episodes // num_workers + (i < num_episodes % num_workers) for i in range(num_workers)]
    results = {}
    for name, factory in policies.items():
        workers, refs = [], []
        for index, episodes in enumerate(per_worker):
            if episodes == 0:
                continue
            worker_env = dataclasses.replace(env_cfg, num_envs=min(env_cfg.num_envs, episodes))
            worker = worker_actor.options(num_cpus=cfg.num_cpus).remote(
                worker_env, cfg, factory, None, index, f"{run_id}-eval-{name}", seed + 1000 * index)
            workers.append(worker)
            refs.append(worker.play_episodes.remote(episodes))
        try:
            finished: list[list[FinishedEpisode]] = ray.get(refs, timeout=timeout_s)
        finally:
            for worker in workers:
                ray.kill(worker, no_restart=True)
        episodes = [episode for part in finished for episode in part]
        results[name] = EvalResult(name, [e.episode_return for e in episodes], [e.length for e in episodes])
    return results
