"""Env kinds: what an env family brings to a run, declared in one registered place.

The driver (`cluster/stages/`) never names an env family: it asks `env_kind(cfg.env)` for the
kind that claims the run's env and lets it say

- whether `env.kwargs` are right (`check_kwargs`; a kind with a typed section validates them
  against its model, naming `env.kwargs.<key>`) and whether the env exists (`check_env`);
- the rows its collectors push (`schema`) and how one collector starts (`start_collector`: a
  Ray actor answering `rollout.fleet_members.Collector`), with its class name (`collector`);
- where policies are evaluated (`eval_env`) and learners play (`learner_env`), and an expert
  baseline that is not a Python policy (`expert_baseline`, e.g. Robocode's Java robot);
- a sentence describing its rows (`describe`), and why a person cannot play it (`human_refusal`).

`EnvKind` itself is the Gymnasium kind - any Gymnasium id or `module:Class` entry point,
stepped by `RolloutWorker`s - and claims every env no other kind claims. A family that brings
more subclasses it and is either installed as an entry point of the group `harvest.env_kinds`
(as Robocode's kind is, in pyproject.toml) or registered in the driver's process with
`register_env_kind`.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import ray

from harvest.envs.config import EnvConfig
from harvest.envs.registry import check_env_id
from harvest.rollout.batch import BatchSchema
from harvest.rollout.config import RolloutConfig, WatchdogConfig
from harvest.rollout.fleet import Fleet, FleetResult
from harvest.rollout.policies import ConfiguredPolicyFactory, PolicyFactory
from harvest.rollout.replay.replay import Replay
from harvest.rollout.worker import RolloutWorker, schema_for

if TYPE_CHECKING:
    from harvest.rollout.evaluation import EvalResult


@dataclass(frozen=True)
class CollectorSetup:
    """What every collector of a run is started with; `start_collector(setup, index)` adds its index."""

    env: EnvConfig
    rollout: RolloutConfig
    replay: Any
    """The replay handle, put in Ray's object store once (`ray.put`): a restarted collector reads it again."""
    run_id: str
    seed: int
    """The run's seed; collector `index` derives its own."""
    folder: Path
    """The run folder (engines' work folders, game records)."""
    load_torch: Callable[..., Any] | None = None
    """Plays a `policy.kind: torch` checkpoint (`learners.policy.load_torch_policy`)."""


class EnvKind:
    """The Gymnasium kind, and the base of every other: see the module's description."""

    name = "gymnasium"
    collector = "RolloutWorker"
    """The class name of its collectors (named in stall reports: `RolloutWorker[3]`)."""
    min_rows_per_s = 100.0
    """A collection of `rollout.steps` rows may take `steps / min_rows_per_s` seconds (600 s at least)."""
    human_refusal: str | None = None
    """Why `human:` (teleoperation) cannot play this kind; None: it can."""
    own_expert = False
    """Its `expert` baseline is played by `expert_baseline` (not a Python policy in the eval env)."""

    def claims(self, env: EnvConfig) -> bool:
        """Whether this kind runs `env` (the Gymnasium kind claims whatever no other kind does)."""
        return True

    def check_kwargs(self, env: EnvConfig, seed: int) -> None:
        """Raise a ValueError naming `env.kwargs.<key>` when the kwargs are not what the kind takes."""

    def check_env(self, env: EnvConfig) -> None:
        """Raise `EnvNotFoundError` when the env does not exist (checked before Ray starts)."""
        check_env_id(env)

    def schema(self, env: EnvConfig, policy: PolicyFactory) -> BatchSchema:
        """The columns its collectors push when they play `policy`."""
        return schema_for(env, policy)

    def chunk_rows(self, rollout: RolloutConfig) -> int:
        """Rows the fleet hands one `collect` call (`rollout.chunk_rows` when set)."""
        return rollout.chunk_rows or max(rollout.batch_rows, rollout.steps // (8 * max(rollout.num_collectors, 1)))

    def shares(self, rollout: RolloutConfig) -> list[int] | None:
        """Rows each collector collects, fixed (None: the fleet shares them out as collectors
        become free, so a slow or late collector holds nothing back)."""
        return None

    def start_collector(self, setup: CollectorSetup, index: int) -> ray.actor.ActorHandle:
        """Collector `index`: an actor with `max_restarts` and `max_concurrency=2` (`activity`
        is answered while `collect` runs)."""
        rollout = setup.rollout
        actor = collector_actor(RolloutWorker, rollout)
        policy = ConfiguredPolicyFactory(
            rollout.policy, setup.env.id, seed=setup.seed + index, load_torch=setup.load_torch
        )
        return actor.remote(setup.env, rollout, policy, setup.replay, index, setup.run_id, setup.seed + index)

    def start_fleet(
        self, setup: CollectorSetup, replay: Replay, watchdog: WatchdogConfig, resume: bool = False
    ) -> Fleet:
        """Its `rollout.num_collectors` collectors, started, restarted and watched by one fleet
        (with `resume`, they go on after the rows `replay` already holds from them)."""
        rollout = setup.rollout
        return Fleet(
            lambda index: self.start_collector(setup, index),
            rollout.num_collectors,
            replay,
            rollout.max_restarts,
            watchdog,
            resume=resume,
            kind=self.collector,
        )

    def fill(self, fleet: Fleet, rollout: RolloutConfig) -> FleetResult:
        """Blocks: `rollout.steps` rows from `fleet`, in this kind's chunks and shares, within
        `steps / min_rows_per_s` seconds (600 at least)."""
        timeout_s = max(600.0, rollout.steps / self.min_rows_per_s)
        return fleet.fill(rollout.steps, self.chunk_rows(rollout), timeout_s, shares=self.shares(rollout))

    def eval_env(self, env: EnvConfig, configured: EnvConfig | None, seed: int) -> EnvConfig:
        """The env policies are evaluated in: `eval.env` when `configured`, else the run's."""
        return configured if configured is not None else env

    def learner_env(self, env: EnvConfig) -> EnvConfig | None:
        """The env an interacting learner (PPO, DQfD) plays; None: learners cannot play this kind."""
        return env

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
        """The `expert` baseline's results in `scenario`, for a kind with `own_expert` (an expert
        that is not a Python policy); the others' scripted expert plays as a policy."""
        # Asked only of kinds with `own_expert` (the evaluate stage checks it first).
        raise NotImplementedError(f"env kind {self.name!r} sets own_expert but not expert_baseline")

    def describe(self, env: EnvConfig, seed: int) -> str:
        """One sentence about the rows (a dataset's description)."""
        return f"{env.id} transitions"


ENTRY_POINT_GROUP = "harvest.env_kinds"
"""Installed kinds: each entry point of this group is an `EnvKind` subclass (Robocode's is one)."""
_KINDS: list[EnvKind] = []


def collector_actor(cls: type, rollout: RolloutConfig) -> Any:
    """`cls` as the fleet's collectors run: `rollout.num_cpus`, `rollout.max_restarts` (Ray
    restarts it), `max_concurrency=2` (`activity` answered while `collect` runs), its placement."""
    return ray.remote(cls).options(
        num_cpus=rollout.num_cpus, max_restarts=rollout.max_restarts, max_concurrency=2, **rollout.placement.options()
    )


_loaded = False


def register_env_kind(kind: EnvKind) -> EnvKind:
    """Make `kind` claim the envs it claims; kinds registered later are asked first."""
    _KINDS.insert(0, kind)
    return kind


def unregister_env_kind(kind: EnvKind) -> None:
    if kind in _KINDS:
        _KINDS.remove(kind)


def env_kind(env: EnvConfig) -> EnvKind:
    """The registered kind that claims `env` (the Gymnasium kind when none does)."""
    global _loaded
    if not _loaded:  # the installed kinds, after those registered in this process
        _loaded = True
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            _KINDS.append(entry_point.load()())
    return next((kind for kind in _KINDS if kind.claims(env)), _GYMNASIUM)


_GYMNASIUM = EnvKind()
