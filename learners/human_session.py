"""A person's teleoperation session beside the collectors, and the shadow learner that trains
on their rows as they play (`human.shadow`): started, finished and summarised together."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray
from loguru import logger

from harvest.envs.config import EnvConfig
from harvest.learners.config import LearnerConfig
from harvest.learners.learner import TrainResult
from harvest.learners.plots import plot_shadow_session
from harvest.learners.policy import load_torch_policy
from harvest.learners.shadow import ShadowLearner
from harvest.rollout.config import PolicyConfig, RolloutConfig
from harvest.rollout.human.collector import HumanCollector, HumanSessionResult
from harvest.rollout.human.config import HumanConfig
from harvest.rollout.policies import ConfiguredPolicyFactory
from harvest.rollout.replay.replay import Replay


@dataclass
class HumanSession:
    """The session's collector actor (`HumanCollector`), and its shadow learner when `human.shadow` is set."""

    actor: ray.actor.ActorHandle
    operator: str
    driver: str
    shadow: ray.actor.ActorHandle | None = None
    training: ray.ObjectRef | None = None
    """The shadow learner's `train` call, answered once `stop` is called."""
    learner_summary: dict[str, Any] | None = None
    """The shadow learner's versions, rounds, checkpoint and agreement plot, once finished."""

    @classmethod
    def start(
        cls,
        env: EnvConfig,
        human: HumanConfig,
        learner: LearnerConfig,
        rollout: RolloutConfig,
        replay: Replay,
        run_id: str,
        seed: int,
        run_root: Path,
    ) -> "HumanSession":
        """The session's collector (its id after the simulators') and the shadow learner training beside it."""
        shadow = shadow_policy = None
        if human.shadow is not None:
            shadow = (
                ray.remote(ShadowLearner)
                .options(num_cpus=human.shadow.num_cpus, num_gpus=learner.num_gpus, max_concurrency=4)
                .remote(learner, human.shadow, replay, str(run_root / "shadow"), seed, rollout.num_collectors)
            )
            shadow_policy = ConfiguredPolicyFactory(
                PolicyConfig(kind="torch", checkpoint=ray.get(shadow.get_initial_checkpoint.remote(), timeout=300)),
                env.id,
                seed=seed,
                load_torch=load_torch_policy,
            )
        actor = (
            ray.remote(HumanCollector)
            .options(num_cpus=rollout.num_cpus)
            .remote(
                env,
                human,
                replay,
                rollout.num_collectors,
                run_id,
                str(run_root / "sessions"),
                shadow,
                shadow_policy,
            )
        )
        training = shadow.train.remote() if shadow is not None else None
        return cls(actor, human.operator, human.driver, shadow, training)

    def describe(self) -> str:
        return f", and {self.operator}'s session ({self.driver})"

    def finish(self, played: HumanSessionResult | None, run_root: Path) -> None:
        """Stop the shadow learner: its outputs and the session's agreement plot are written,
        its summary kept in `learner_summary`."""
        if self.shadow is not None and self.training is not None:
            ray.get(self.shadow.stop.remote(), timeout=60)
            self.learner_summary = shadow_summary(ray.get(self.training, timeout=900), played, run_root)

    def kill(self) -> None:
        for actor in (self.actor, self.shadow):
            if actor is not None:
                ray.kill(actor, no_restart=True)


def shadow_summary(trained: TrainResult, played: HumanSessionResult | None, run_root: Path) -> dict[str, Any]:
    """The stopped shadow learner's summary, with its session's agreement plotted."""
    result: dict[str, Any] = {
        "versions": trained.best_step,
        "final_checkpoint": trained.final_checkpoint,
        "rounds": [asdict(record) for record in trained.history],
    }
    if played is not None:
        result["agreement_plot"] = str(
            plot_shadow_session(
                run_root / "shadow" / "agreement.png",
                result["rounds"],
                played.shadow_agreement,
                f"shadow policy beside {played.operator} ({played.session_id})",
            )
        )
        agreement = [point["agreement"] for point in played.shadow_agreement]
        logger.info(
            "shadow: {} versions; agreement with {} from {:.2f} to {:.2f}; plot {}",
            result["versions"],
            played.operator,
            agreement[0] if agreement else float("nan"),
            agreement[-1] if agreement else float("nan"),
            result["agreement_plot"],
        )
    return result
