"""Collectors kept going: restarts after a death, and a watchdog that says what a stall waits for.

`CollectorSupervisor.run` hands every collector its share of the rows and waits, showing a
progress bar over the replay's count. When a collector dies (its process killed, its node
lost, or killed here because it stalled), Ray restarts it (`rollout.max_restarts`); the
supervisor tells it its new incarnation, so its episode ids and push source are new, asks the
replay how many rows all its incarnations have stored, and has it collect the rest. Rows a dead
incarnation had acknowledged stay in the replay; nothing is collected twice over the share.

The watchdog asks every busy collector what it is doing (`RolloutWorker.activity`, answered
from a second thread while `collect` runs). A collector in one call for longer than
`watchdog.stall_after_s`, or one that does not answer, is reported with the call it is stuck in
and, for a replay acknowledgement, what holds the replay back (rate limiter, memory limit, a
shard not answering). Stalls in the collector itself are recovered by killing it, so Ray
restarts it; stalls in the replay are reported only (a new collector would wait the same).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
from loguru import logger

from cluster import metrics
from cluster.config import WatchdogSection
from cluster.progress import progress_bar
from rollout.replay.replay import Replay
from rollout.worker import collector_source

_ASK_TIMEOUT_S = 5.0
"""How long the watchdog waits for a collector to say what it is doing."""
_RESTART_TIMEOUT_S = 300.0
"""How long a restarted collector may take to come back (its env is built again)."""


class CollectorFailedError(RuntimeError):
    """A collector died more often than `rollout.max_restarts` allows."""


@dataclass
class Stall:
    component: str
    """e.g. `collector 3`."""
    waiting_for: str
    """The call it is stuck in and, for a replay ack, what holds the replay back."""
    seconds: float
    recovered: bool = False
    """True when the watchdog killed it so Ray would restart it."""


@dataclass
class _Collector:
    index: int
    actor: Any
    target: int
    """Rows this collector's incarnations must store between them."""
    incarnation: int = 0
    ref: ray.ObjectRef | None = None
    result: Any = None
    unanswered_since: float | None = None
    stalled: Stall | None = None
    killed: bool = False
    """Killed by the watchdog; its restart is pending."""

    @property
    def name(self) -> str:
        return f"collector {self.index}"


@dataclass
class SupervisedResult:
    results: list[Any]
    """Each collector's last incarnation's `CollectResult` (None if an earlier one stored its share)."""
    rows_by_collector: list[int]
    """Rows stored in the replay by all incarnations of each collector."""
    restarts: list[int]
    nodes: list[str] = field(default_factory=list)
    """The Ray node id each collector's last incarnation ran on."""
    stalls: list[Stall] = field(default_factory=list)
    seconds: float = 0.0

    def stalls_json(self) -> list[dict[str, Any]]:
        return [asdict(stall) for stall in self.stalls]


class CollectorSupervisor:
    """Runs `collect(rows)` on RolloutWorker actors until each has stored its share.

    Args:
        actors: collector actors started with `max_restarts >= max_restarts` and
            `max_concurrency >= 2` (so `activity` is answered during `collect`).
        targets: rows each collector must store.
        replay: where they store them (asked for rows per source).
        max_restarts: restarts allowed per collector.
        watchdog: the `watchdog:` section (stall_after_s None: no watchdog).
    """

    def __init__(self, actors: list, targets: list[int], replay: Replay, max_restarts: int,
                 watchdog: WatchdogSection) -> None:
        self._collectors = [_Collector(index, actor, target) for index, (actor, target) in
                            enumerate(zip(actors, targets))]
        self._replay, self._max_restarts, self._watchdog = replay, max_restarts, watchdog
        self._stalls: list[Stall] = []
        self._log = logger.bind(actor="CollectorSupervisor")

    def run(self, total: int, timeout_s: float, interval_s: float = 0.5) -> SupervisedResult:
        """Blocks until every collector's share is stored; raises CollectorFailedError or
        GetTimeoutError (naming what each collector was doing) when that cannot happen."""
        started = time.monotonic()
        deadline, next_check = started + timeout_s, started + self._watchdog.check_every_s
        for collector in self._collectors:
            collector.ref = collector.actor.collect.remote(collector.target)
        with progress_bar("rows") as progress:
            task = progress.add_task("collect", total=total)
            while busy := [c for c in self._collectors if c.ref is not None]:
                if time.monotonic() > deadline:
                    raise ray.exceptions.GetTimeoutError(
                        f"collect: not done within {timeout_s:.0f}s; {self._doing(busy)}")
                ready, _ = ray.wait([c.ref for c in busy], num_returns=len(busy), timeout=interval_s)
                for collector in busy:
                    if collector.ref in ready:
                        self._finished(collector)
                if self._watchdog.stall_after_s is not None and time.monotonic() >= next_check:
                    next_check = time.monotonic() + self._watchdog.check_every_s
                    self._check_stalls([c for c in self._collectors if c.ref is not None])
                progress.update(task, completed=min(self._replay.inserted_rows(), total))
            progress.update(task, completed=total)
        stored = self._stored_by_collector()
        nodes = ray.get([c.actor.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id())
                         for c in self._collectors], timeout=_ASK_TIMEOUT_S * 6)
        return SupervisedResult([c.result for c in self._collectors], stored,
                                [c.incarnation for c in self._collectors], nodes, self._stalls,
                                time.monotonic() - started)

    def _finished(self, collector: _Collector) -> None:
        try:
            collector.result = ray.get(collector.ref)
            collector.ref = None
            self._cleared(collector)
        except ray.exceptions.RayActorError as err:
            collector.ref = None
            self._restart(collector, err)

    def _restart(self, collector: _Collector, err: Exception) -> None:
        """The collector died: wait for Ray to restart it, then collect what is still missing."""
        if collector.incarnation >= self._max_restarts:
            raise CollectorFailedError(f"{collector.name} died {collector.incarnation + 1} times, more than "
                                       f"rollout.max_restarts={self._max_restarts}: {err}") from err
        collector.incarnation += 1
        collector.killed = False
        metrics.actor_restarts().inc(tags={"component": "collector"})
        self._log.warning("{} died ({}); waiting for Ray to restart it as incarnation {}", collector.name,
                          type(err).__name__, collector.incarnation)
        try:
            ray.get(collector.actor.restarted.remote(collector.incarnation), timeout=_RESTART_TIMEOUT_S)
        except ray.exceptions.RayActorError as again:
            raise CollectorFailedError(f"{collector.name} did not come back after dying: {again}") from again
        self._cleared(collector)
        stored = self._stored_by_collector()[collector.index]
        missing = collector.target - stored
        self._log.warning("{} is back (incarnation {}); its incarnations stored {:,} of {:,} rows, {:,} to go",
                          collector.name, collector.incarnation, stored, collector.target, max(missing, 0))
        collector.result = None
        if missing > 0:
            collector.ref = collector.actor.collect.remote(missing)

    def _stored_by_collector(self) -> list[int]:
        by_source = self._replay.rows_by_source()
        return [sum(by_source.get(collector_source(c.index, n), 0) for n in range(c.incarnation + 1))
                for c in self._collectors]

    def _check_stalls(self, busy: list[_Collector]) -> None:
        """Ask every busy collector what it is doing; report (and recover) those stuck too long."""
        limit = self._watchdog.stall_after_s
        now = time.time()
        asks = {c.index: c.actor.activity.remote() for c in busy}
        ready, _ = ray.wait(list(asks.values()), num_returns=len(asks), timeout=_ASK_TIMEOUT_S)
        for collector in busy:
            ref = asks[collector.index]
            if ref in ready:
                try:
                    activity = ray.get(ref)
                except ray.exceptions.RayActorError:
                    continue  # it died: its collect call reports that
                collector.unanswered_since = None
                if activity.what == "idle" or now - activity.since < limit:
                    self._cleared(collector)
                    continue
                in_replay = activity.what.startswith("replay.")
                waiting_for = f"RolloutWorker[{collector.index}].{activity.what}"
                if in_replay:
                    waiting_for += f": {self._replay_holding_back()}"
                self._stalled(collector, waiting_for, now - activity.since, recover=not in_replay)
            else:
                collector.unanswered_since = collector.unanswered_since or now - _ASK_TIMEOUT_S
                if now - collector.unanswered_since >= limit:
                    waiting_for, recoverable = self._unanswered(collector)
                    self._stalled(collector, waiting_for, now - collector.unanswered_since, recover=recoverable)

    def _unanswered(self, collector: _Collector) -> tuple[str, bool]:
        """What a collector that does not answer is waiting for, as far as Ray's actor table says,
        and whether restarting it could help (not when it waits for resources or a restart)."""
        # The GCS actor table (no dashboard needed, unlike ray.util.state); private, so best effort.
        from ray._private.state import actors

        name = f"RolloutWorker[{collector.index}]"
        try:
            state = actors(collector.actor._actor_id.hex()).get("State", "unknown")
        except Exception as err:  # noqa: BLE001 - best effort: the report says what failed
            return f"{name}: an answer (its state is unknown: {type(err).__name__}: {err})", True
        if state in ("DEPENDENCIES_UNREADY", "PENDING_CREATION"):
            free = {key: value for key, value in ray.available_resources().items() if "memory" not in key}
            return f"{name}: resources to start it (free now: {free})", False
        if state == "RESTARTING":
            return f"{name}: Ray restarting it", False
        return f"{name}: an answer (its process does not answer; actor state {state})", True

    def _replay_holding_back(self) -> str:
        asks = [shard.holding_back.remote() for shard in self._replay.shards]
        ready, _ = ray.wait(asks, num_returns=len(asks), timeout=_ASK_TIMEOUT_S)
        reasons = []
        for index, ref in enumerate(asks):
            if ref not in ready:
                reasons.append(f"ReplayShard[{index}] not answering")
            elif reason := ray.get(ref):
                reasons.append(reason)
        return "; ".join(reasons) or "shards answer and hold nothing back (acks in transit: network or object store)"

    def _stalled(self, collector: _Collector, waiting_for: str, seconds: float, recover: bool) -> None:
        recover = recover and self._watchdog.recover and collector.incarnation < self._max_restarts
        if collector.stalled is None or collector.stalled.waiting_for != waiting_for:
            stall = Stall(collector.name, waiting_for, round(seconds, 1), recovered=recover)
            self._stalls.append(stall)
            collector.stalled = stall
            metrics.stalls().inc(tags={"component": collector.name, "waiting_for": waiting_for})
            metrics.stalled().set(1, tags={"component": collector.name, "waiting_for": waiting_for})
            self._log.error("stall: {} has been waiting {:.0f}s for {}{}", collector.name, seconds, waiting_for,
                            "; killing it so Ray restarts it" if recover else "")
        if recover and not collector.killed:
            ray.kill(collector.actor, no_restart=False)
            collector.killed = True  # once: the dead call's error starts the restart

    def _cleared(self, collector: _Collector) -> None:
        if collector.stalled is not None:
            metrics.stalled().set(0, tags={"component": collector.name, "waiting_for": collector.stalled.waiting_for})
            collector.stalled = None

    def _doing(self, busy: list[_Collector]) -> str:
        asks = [c.actor.activity.remote() for c in busy]
        ready, _ = ray.wait(asks, num_returns=len(asks), timeout=_ASK_TIMEOUT_S)
        now = time.time()
        parts = []
        for collector, ref in zip(busy, asks):
            if ref in ready:
                try:
                    activity = ray.get(ref)
                    parts.append(f"{collector.name}: {activity.what} for {now - activity.since:.0f}s")
                    continue
                except ray.exceptions.RayActorError as err:
                    parts.append(f"{collector.name}: dead ({type(err).__name__})")
                    continue
            parts.append(f"{collector.name}: not answering")
        return "; ".join(parts)
