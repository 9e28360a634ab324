"""Evaluation: play policies for whole episodes through rollout actors and report returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import ray

from harvest.envs.config import EnvConfig
from harvest.rollout.config import RolloutConfig, WatchdogConfig
from harvest.rollout.cutter import FinishedEpisode
from harvest.rollout.fleet import Fleet
from harvest.rollout.policies import ConfiguredPolicyFactory, PolicyFactory, env_spaces
from harvest.rollout.worker import RolloutWorker


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

    @property
    def mean_ci95(self) -> tuple[float, float]:
        """95 % confidence interval of the mean return (normal approximation, sample std)."""
        n = len(self.returns)
        half = 1.96 * float(np.std(self.returns, ddof=1)) / np.sqrt(n) if n > 1 else float("inf")
        return self.mean_return - half, self.mean_return + half


def wilson_interval(wins: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a win rate (sound at 0 %, 100 % and small n, unlike p ± z·se)."""
    if n == 0:
        return 0.0, 1.0
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def check_policy_spaces(policies: dict[str, PolicyFactory], env_cfg: EnvConfig) -> None:
    """Check every checkpoint among `policies` against the env's spaces, in this process (one env
    copy is built only when a checkpoint is there to check).

    Raises:
        CheckpointSpaceError: a checkpoint was trained for other spaces; the message names both.
    """
    checked = [
        factory
        for factory in policies.values()
        if isinstance(factory, ConfiguredPolicyFactory) and factory.cfg.kind == "torch"
    ]
    if checked:
        spaces = env_spaces(env_cfg)
        for factory in checked:
            factory.check_spaces(*spaces)


def evaluate_policies(
    policies: dict[str, PolicyFactory],
    env_cfg: EnvConfig,
    cfg: RolloutConfig,
    num_episodes: int,
    num_workers: int,
    run_id: str,
    seed: int = 10_000,
    timeout_s: float = 600.0,
) -> dict[str, EvalResult]:
    """Blocks: each policy plays `num_episodes` episodes split over `num_workers` rollout actors
    (as itself: the collection's exploration, `cfg.policy.epsilon`, is off).

    Raises:
        CheckpointSpaceError: a checkpoint was trained for other spaces than the env's (before any
            actor starts).
    """
    cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, epsilon=0.0))
    check_policy_spaces(policies, env_cfg)
    worker_actor = ray.remote(RolloutWorker).options(
        num_cpus=cfg.num_cpus,
        max_concurrency=2,  # activity() answers
        max_restarts=cfg.max_restarts,
    )
    per_worker = [
        n for n in (num_episodes // num_workers + (i < num_episodes % num_workers) for i in range(num_workers)) if n
    ]
    results = {}
    for name, factory in policies.items():

        def start_worker(index: int, factory: PolicyFactory = factory, name: str = name) -> ray.actor.ActorHandle:
            worker_env = dataclasses.replace(env_cfg, num_envs=min(env_cfg.num_envs, per_worker[index]))
            return worker_actor.remote(
                worker_env, cfg, factory, None, index, f"{run_id}-eval-{name}", seed + 1000 * index
            )

        with Fleet(start_worker, len(per_worker), None, cfg.max_restarts, WatchdogConfig()) as fleet:
            finished: list[list[FinishedEpisode]] = fleet.each("play_episodes", [(n,) for n in per_worker], timeout_s)
        episodes = [episode for part in finished for episode in part]
        results[name] = EvalResult(name, [e.episode_return for e in episodes], [e.length for e in episodes])
    return results
