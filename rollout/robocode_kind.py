"""The Robocode env kind: `env.id: robocode` runs collect expert battles in the real engine.

`env.kwargs` are a `RobocodeBattles` (typed, checked when the config loads); each collector is a
`RobocodeCollector` with its own engine under `<run>/robocode/collector-<i>/`, writing the teams'
game-state files to `<run>/game_states/` when `env.kwargs.game_states` is set. Policies are
evaluated in the Gymnasium tank `harvest/Robocode-v0` against the collection's second robot on
the same battlefield, and the `expert` baseline is the collection's first robot (a Java robot)
in engine battles, scored as the Gymnasium env scores the tank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray
from pydantic import TypeAdapter, ValidationError

from harvest.envs.config import EnvConfig
from harvest.rollout.batch import BatchSchema
from harvest.rollout.collector_ids import collector_uid
from harvest.rollout.config import RolloutConfig
from harvest.rollout.env_kinds import CollectorSetup, EnvKind, collector_actor
from harvest.rollout.evaluation import EvalResult
from harvest.rollout.policies import PolicyFactory
from harvest.rollout.robocode_collector import RobocodeBattles, RobocodeCollector, expert_episodes, robocode_schema

ROBOCODE_ENV_ID = "robocode"
ROBOCODE_GYM_ID = "harvest/Robocode-v0"


class RobocodeKind(EnvKind):
    name = "robocode"
    collector = "RobocodeCollector"
    min_rows_per_s = 20.0
    own_expert = True
    human_refusal = "teleoperation plays Gymnasium envs; Robocode battles are collected by engines"

    def claims(self, env: EnvConfig) -> bool:
        return env.id == ROBOCODE_ENV_ID

    @staticmethod
    def battles(env: EnvConfig, seed: int, collector_id: int = 0) -> RobocodeBattles:
        """The battles collector `collector_id` plays, seeded from the run's `seed`.

        Raises:
            ValueError: `env.kwargs` are not a `RobocodeBattles` (each problem named `env.kwargs.<key>`).
        """
        if "seed" in env.kwargs:
            raise ValueError("env.kwargs.seed: unexpected key (battles are seeded from run.seed)")
        try:
            return TypeAdapter(RobocodeBattles).validate_python({**env.kwargs, "seed": seed + 1000 * collector_id})
        except ValidationError as err:
            raise ValueError("\n".join(_error_line(error) for error in err.errors())) from None

    def check_kwargs(self, env: EnvConfig, seed: int) -> None:
        self.battles(env, seed)

    def check_env(self, env: EnvConfig) -> None:
        """The engine is checked where it runs (the Debian package on the collectors' nodes)."""

    def schema(self, env: EnvConfig, policy: PolicyFactory) -> BatchSchema:
        return robocode_schema()

    def chunk_rows(self, rollout: RolloutConfig) -> int:
        """One chunk per collector: a battle is pushed whole, so every chunk ends past its rows."""
        return rollout.chunk_rows or -(-rollout.steps // max(rollout.num_collectors, 1))

    def shares(self, rollout: RolloutConfig) -> list[int]:
        """Fixed: collector i plays the battles seeded from its own seed until its share is in,
        so a run with the same config and seed repeats exactly."""
        n = max(rollout.num_collectors, 1)
        return [rollout.steps // n + (i < rollout.steps % n) for i in range(n)]

    def start_collector(self, setup: CollectorSetup, index: int) -> ray.actor.ActorHandle:
        rollout = setup.rollout
        return collector_actor(RobocodeCollector, rollout).remote(
            self.battles(setup.env, setup.seed, index),
            setup.replay,
            index,
            collector_uid(setup.run_id, index),
            str(setup.folder / "robocode" / f"collector-{index}"),
            game_states_dir=str(setup.folder / "game_states"),
        )

    def eval_env(self, env: EnvConfig, configured: EnvConfig | None, seed: int) -> EnvConfig:
        if configured is not None:
            return configured
        battles = self.battles(env, seed)
        return EnvConfig(
            id=ROBOCODE_GYM_ID,
            num_envs=1,
            kwargs={"opponent": battles.robots[1], "width": battles.width, "height": battles.height},
        )

    def learner_env(self, env: EnvConfig) -> EnvConfig | None:
        return None

    def expert_baseline(
        self,
        env: EnvConfig,
        scenario: EnvConfig,
        episodes: int,
        num_workers: int,
        seed: int,
        num_cpus: float,
        folder: Path,
    ) -> EvalResult:
        battles = self.battles(env, seed)
        kwargs: dict[str, Any] = scenario.kwargs
        opponent = kwargs.get("opponent", battles.robots[1])
        per_worker = [episodes // num_workers + (i < episodes % num_workers) for i in range(num_workers)]
        task = ray.remote(expert_episodes).options(num_cpus=num_cpus)
        refs = [
            # (ignored: ray.remote's overloads type a function by its first parameters, 3 here, not all 7)
            task.remote(  # type: ignore[call-arg]
                [battles.robots[0], opponent],
                rounds,
                seed + 20_000 + 1000 * index,
                kwargs.get("width", battles.width),
                kwargs.get("height", battles.height),
                kwargs.get("max_turns"),
                str(folder / "robocode" / f"expert-eval-{index}"),
            )
            for index, rounds in enumerate(per_worker)
            if rounds
        ]
        parts = ray.get(refs, timeout=1800)
        return EvalResult(
            "expert", [r for returns, _ in parts for r in returns], [n for _, lengths in parts for n in lengths]
        )

    def describe(self, env: EnvConfig, seed: int) -> str:
        battles = self.battles(env, seed)
        recorded = ", ".join(battles.record or battles.robots)
        return (
            f"Robocode expert battles {' vs '.join(battles.robots)} ({battles.width}x{battles.height}, "
            f"{battles.rounds_per_battle} rounds each, run seed {seed}); rows of {recorded}"
        )


def _error_line(error: Any) -> str:
    """`env.kwargs.<key>: <problem>`, as the config's own errors read."""
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        message = "unexpected key"
    else:
        message = f"{error['msg']} (got {error.get('input')!r})"
    return f"env.kwargs.{where}: {message}" if where else f"env.kwargs: {message}"
