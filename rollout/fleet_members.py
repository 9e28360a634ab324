"""Collectors as a fleet sees them: the protocol every collector actor answers, and the fleet's
record of one collector (its actor, incarnation, running call and watchdog state)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import ray

from harvest.rollout.collector_ids import collector_source
from harvest.rollout.collector_reports import Activity


class CollectorFailedError(RuntimeError):
    """A collector died more often than `rollout.max_restarts` allows."""


class CollectedRows(Protocol):
    """What a collector's `collect` returns (`CollectResult`, or a kind's own result type)."""

    collector_id: int
    rows: int
    """Rows the replay acknowledged."""
    source: str
    """The source its pushes carried (`collector_source(collector_id, incarnation)`)."""


class Collector(Protocol):
    """What a fleet asks of a collector actor (each method called through Ray).

    A collector pushes its rows to the replay it was started with, as `collector_source(index,
    incarnation)`, and answers `activity` while `collect` runs (the actor needs
    `max_concurrency >= 2`). Live settings (`set_exploration`, `set_trajectory_filter`,
    `set_reward_weights`, `set_policy_weights`, ...) are whatever methods the kind has; a
    ValueError from one refuses the edit.
    """

    def collect(self, num_rows: int) -> CollectedRows:
        """Collect until at least `num_rows` rows are acknowledged by the replay."""

    def activity(self) -> Activity:
        """What it is doing now (`env.step`, `replay.insert (ack)`, `idle`, ...) and since when."""

    def restarted(self, incarnation: int) -> int:
        """After Ray restarted it: start over as `incarnation` (new episode ids and push source)."""

    def close(self) -> None:
        """Release what it holds (envs, engines) before the fleet kills it."""


@dataclass
class Stall:
    component: str
    """e.g. `collector 3`."""
    waiting_for: str
    """The call it is stuck in and, for a replay ack, what holds the replay back."""
    call: str
    """The call alone (`env.step`, `replay.insert (ack)`, `backpressure`, `no answer`): a stall is
    one record and one metric label per call, however its details (counts, percentages) change."""
    seconds: float
    recovered: bool = False
    """True when the watchdog killed it so Ray would restart it."""


@dataclass
class FleetMember:
    index: int
    actor: Any
    incarnation: int = 0
    ref: ray.ObjectRef | None = None
    chunk: int = 0
    """Rows the running `collect` call was asked for."""
    results: list[Any] = field(default_factory=list)
    """`CollectResult`s of its finished calls, all incarnations."""
    retiring: bool = False
    """Scaled down: it gets no more chunks and stops once its running one is done."""
    retired: bool = False
    unanswered_since: float | None = None
    stalled: Stall | None = None
    killed: bool = False
    """Killed by the watchdog; its restart is pending."""
    ready: Any = None
    """Its `__ray_ready__` call, until the actor has started: a collector Ray cannot place yet
    (no free resources) gets no chunk, so the started ones share the rows instead of waiting."""
    waiting_logged: bool = False
    first_calls: list[tuple[str, tuple]] = field(default_factory=list)
    """Calls it gets once it has started, before any chunk (a resumed run's `restarted`)."""

    def __post_init__(self) -> None:
        self.ready = self.actor.__ray_ready__.remote()

    @property
    def name(self) -> str:
        return f"collector {self.index}"

    @property
    def sources(self) -> list[str]:
        return [collector_source(self.index, n) for n in range(self.incarnation + 1)]
