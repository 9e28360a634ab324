"""A fleet of collector actors: started, kept going, watched and stopped together.

Every collector kind (`RolloutWorker`, a user's own) is a Ray actor that answers the `Collector`
protocol (`fleet_members.Collector`); whoever composes a run (the pipeline, PPO, evaluation, DAgger) hands a `Fleet`
a function that starts collector `index`, and the fleet does the rest:

- `fill(total, chunk_rows)` hands the collectors chunks of rows (`collect(rows)`) until the
  replay holds `total` of theirs, showing a progress bar over the replay's count. What is left
  to hand out is always the total minus what the replay has stored from them (counted per
  source by the shards) minus the chunks being collected;
- `each(method, args)` calls `method` once on every collector (a PPO iteration's `collect`,
  evaluation's `play_episodes`) and returns their answers.

In both, when a collector dies (its process killed, its node lost, or killed here because it
stalled), Ray restarts it (`max_restarts`); the fleet tells it its new incarnation, so its
episode ids and push source are new, sends it the live settings again (`apply`: a live config
edit, a learner's weights), and hands out again what its dead call did not finish. Rows a dead
incarnation had acknowledged stay in the replay. The number of collectors can change while
`fill` runs (`set_num_collectors`, from a live config edit): new collectors share the rows not
yet handed out; surplus ones finish their running chunk, whose every push is acknowledged
before `collect` returns, and stop.

The collector protocol and the fleet's record of each collector are in `fleet_members.py`, the
live settings in `fleet_settings.py`, and the watchdog, which names collectors stuck in one call
and recovers them, in `watchdog.py`.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import ray
from loguru import logger

from harvest.cluster import metrics
from harvest.cluster.logging import progress_bar
from harvest.rollout.collector_ids import collector_source
from harvest.rollout.config import WatchdogConfig
from harvest.rollout.fleet_members import CollectorFailedError, FleetMember, Stall
from harvest.rollout.fleet_settings import RESTART_TIMEOUT_S, LiveSettings
from harvest.rollout.replay.replay import Replay
from harvest.rollout.watchdog import ASK_TIMEOUT_S, Watchdog

_SOURCE = re.compile(r"^collector (\d+)(?: #(\d+))?$")
"""A collector's push source (`collector_source`): its index and incarnation."""
_CLOSE_TIMEOUT_S = 60.0
"""How long collectors may take to close (engines shut down) before they are killed."""


@dataclass
class FleetResult:
    results: list[Any]
    """Every `CollectResult` of every collector's finished calls (several per collector: one per chunk)."""
    rows_by_collector: list[int]
    """Rows stored in the replay by all incarnations of each collector (started ones, retired included)."""
    restarts: list[int]
    nodes: list[str] = field(default_factory=list)
    """The Ray node id each collector still running at the end (its last incarnation) ran on;
    collectors that never started are not in it."""
    stalls: list[Stall] = field(default_factory=list)
    seconds: float = 0.0
    dead_sources: set[str] = field(default_factory=set)
    """Sources of incarnations that died: their last call's acks died with them."""
    scaled: list[dict[str, Any]] = field(default_factory=list)
    """Changes of the collector count: when (s into the collection), from, to."""

    def stalls_json(self) -> list[dict[str, Any]]:
        return [asdict(stall) for stall in self.stalls]


class Fleet:
    """Collector actors started together, kept going (restarts, live settings), watched for
    stalls and stopped together (`stop`, or leaving a `with Fleet(...)` block).

    Args:
        start_collector: starts collector `index`: an actor answering `Collector`, with
            `max_restarts` and `max_concurrency >= 2` (so `activity` is answered during `collect`).
        num_collectors: how many to start.
        replay: where they store their rows (asked for rows per source); None for collectors
            that only play (evaluation's `play_episodes`).
        max_restarts: restarts allowed per collector.
        watchdog: the `watchdog:` section (stall_after_s None: no watchdog).
        resume: the replay holds an interrupted run's rows: each collector goes on as the
            incarnation after the last one there, and its rows count towards `fill`'s total.
        kind: the collectors' class name, for messages (`RolloutWorker[3]`).
    """

    def __init__(
        self,
        start_collector: Callable[[int], Any],
        num_collectors: int,
        replay: Replay | None,
        max_restarts: int,
        watchdog: WatchdogConfig,
        resume: bool = False,
        kind: str = "RolloutWorker",
    ) -> None:
        self._start_collector, self._kind = start_collector, kind
        self._total = self._chunk_rows = 0
        self._shares: list[int] | None = None
        self._stopped = False
        self._collectors = [FleetMember(index, start_collector(index)) for index in range(num_collectors)]
        self._dead_sources: set[str] = set()
        self._log = logger.bind(actor="Fleet")
        if resume:
            if replay is None:
                raise ValueError("Fleet: resume=True needs the replay of the interrupted run; got replay=None")
            self._continue_after(replay.rows_by_source())
        self._wanted = num_collectors
        self._lock = threading.Lock()
        self._replay, self._max_restarts, self._watchdog = replay, max_restarts, watchdog
        self._dog = Watchdog(watchdog, kind, replay, max_restarts)
        self._scaled: list[dict[str, Any]] = []
        self._settings = LiveSettings(self._collectors, self._lock)
        self._started = time.monotonic()
        metrics.collectors().set(num_collectors)

    def _continue_after(self, by_source: dict[str, int]) -> None:
        """A resumed run: the replay came back from its write-ahead logs with the rows of the
        interrupted run's collectors. Each collector starts as the incarnation after the last
        one there (new episode ids and push source), and their rows count towards the total."""
        last: dict[int, int] = {}
        for source in by_source:
            if match := _SOURCE.match(source):
                index, incarnation = int(match.group(1)), int(match.group(2) or 0)
                last[index] = max(last.get(index, 0), incarnation)
        for collector in self._collectors:
            if collector.index not in last:
                continue
            collector.incarnation = last[collector.index] + 1
            self._dead_sources.update(collector.sources[:-1])
            collector.first_calls.append(("restarted", (collector.incarnation,)))  # once Ray has started it
            self._log.warning(
                "{} resumes as incarnation {}: the interrupted run stored {:,} rows of its",
                collector.name,
                collector.incarnation,
                sum(by_source.get(source, 0) for source in collector.sources),
            )

    @property
    def restarts(self) -> list[int]:
        """Restarts so far, per collector (its incarnation)."""
        return [c.incarnation for c in self._collectors]

    @property
    def actors(self) -> list:
        return [c.actor for c in self._collectors]

    def set_num_collectors(self, count: int) -> None:
        """Scale to `count` collectors (from any thread; applied by the running `run` loop).
        New ones start and share the rows not yet handed out; surplus ones finish their
        running chunk (every push of it acknowledged) and stop."""
        if count < 1:
            raise ValueError(f"rollout.num_collectors={count}: a running collection needs at least 1")
        if self._shares is not None:
            raise ValueError(
                "rollout.num_collectors: this collection gives each collector a fixed share of the "
                "rows (so it repeats exactly); its count cannot change while it runs"
            )
        with self._lock:
            self._wanted = count

    def set_trajectory_filter(self, criteria: Any) -> None:
        """`rollout.mode: trajectory`: the episodes pushed from now on (live config edit)."""
        self._settings.set("set_trajectory_filter", criteria)

    def set_reward_weights(self, weights: dict[str, float]) -> None:
        """`env.kwargs.rewards`: the env's reward weights from the next step on (live config edit).

        Raises:
            ValueError: the env takes no reward weights while running (nothing changed then:
                every collector has the same env), or the weights do not validate.
        """
        self._settings.set("set_reward_weights", weights)

    def set_exploration(self, epsilon: float, deterministic: bool) -> None:
        """`rollout.policy.epsilon` / `deterministic`: how the collectors explore from now on."""
        self._settings.set("set_exploration", epsilon, deterministic)

    def apply(self, method: str, *args: Any) -> None:
        """A setting every collector must have, now and after any restart: `method(*args)` on
        each (e.g. `set_policy_weights(weights, version)`); see `LiveSettings.set`."""
        self._settings.set(method, *args)

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Close every started collector that is idle (its envs, engines), then kill them all (no
        restart). Their acknowledged rows stay in the replay. Once: later calls do nothing."""
        if self._stopped:
            return
        self._stopped = True
        self._close([c for c in self._collectors if not c.retired and c.ref is None and c.ready is None])
        for collector in self._collectors:
            ray.kill(collector.actor, no_restart=True)

    def _close(self, collectors: list[FleetMember]) -> None:
        """`close()` on each (best effort, bounded: one that does not answer is killed anyway)."""
        closing = [c.actor.close.remote() for c in collectors]
        ready, _ = ray.wait(closing, num_returns=len(closing), timeout=_CLOSE_TIMEOUT_S)
        for ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayError as err:
                self._log.warning("a collector failed to close: {}", err)

    def wait_started(self, timeout_s: float, hint: str = "") -> None:
        """Blocks until every collector has started; otherwise stops them and raises a
        RuntimeError naming how many could not be placed, what is free and `hint` (what to lower)."""
        pending = [c for c in self._collectors if c.ready is not None]
        if not pending:
            return
        _, unready = ray.wait([c.ready for c in pending], num_returns=len(pending), timeout=timeout_s)
        if unready:
            self.stop()
            free = {
                key: round(value, 2)
                for key, value in ray.available_resources().items()
                if "memory" not in key and not key.startswith("node:")
            }
            raise RuntimeError(
                f"{len(unready)} of {len(self._collectors)} collectors could not start within "
                f"{timeout_s:.0f}s; free now {free}" + (f"; {hint}" if hint else "")
            )
        for collector in pending:
            self._has_started(collector)

    def each(
        self, method: str, args: Sequence[tuple[Any, ...]], timeout_s: float, interval_s: float = 0.5
    ) -> list[Any]:
        """`method(*args[i])` on collector i, all at once (after each has started); their answers
        in collector order. A collector that dies is restarted and asked again; the watchdog
        watches them meanwhile.

        Raises:
            CollectorFailedError: one died more often than `max_restarts` allows.
            ray.exceptions.GetTimeoutError: not all answered within `timeout_s`; the message names
                what each busy collector is doing (`collector 0: env.step for 130s`).
        """
        if len(args) != len(self._collectors):
            raise ValueError(f"{method}: {len(args)} argument tuples for {len(self._collectors)} collectors")
        self.wait_started(timeout_s)
        answers: dict[int, Any] = {}
        for collector, call_args in zip(self._collectors, args):
            collector.ref = getattr(collector.actor, method).remote(*call_args)
        started = time.monotonic()
        next_check = started + self._watchdog.check_every_s
        while len(answers) < len(self._collectors):
            busy = [c for c in self._collectors if c.ref is not None]
            ready, _ = ray.wait([c.ref for c in busy], num_returns=len(busy), timeout=interval_s)
            for collector in busy:
                if collector.ref not in ready:
                    continue
                try:
                    answers[collector.index] = ray.get(collector.ref)
                    collector.ref = None
                    self._dog.cleared(collector)
                except ray.exceptions.RayActorError as err:
                    collector.ref = None
                    self._restart(collector, err)
                    collector.ref = getattr(collector.actor, method).remote(*args[collector.index])
            if len(answers) == len(self._collectors):
                break
            if time.monotonic() - started > timeout_s:
                busy = [c for c in self._collectors if c.ref is not None]
                raise ray.exceptions.GetTimeoutError(
                    f"{method}: collectors not done after {timeout_s:.0f}s: {self._dog.doing(busy)}"
                )
            if self._dog.on and time.monotonic() >= next_check:
                next_check = time.monotonic() + self._watchdog.check_every_s
                self._dog.check([c for c in self._collectors if c.ref is not None])
        return [answers[index] for index in range(len(self._collectors))]

    def fill(
        self,
        total: int,
        chunk_rows: int,
        timeout_s: float,
        interval_s: float = 0.5,
        shares: Sequence[int] | None = None,
    ) -> FleetResult:
        """Blocks until the collectors have stored `total` rows (a resumed fleet's earlier rows
        included), handing out chunks of `chunk_rows` (smaller chunks let a scaled-up count share
        the remaining work sooner); then stops them. With `shares`, collector i collects
        `shares[i]` rows, whatever the others do (a run that repeats exactly: which collector
        plays what does not depend on which starts first), and the count is fixed. Raises
        CollectorFailedError or GetTimeoutError (naming what each collector was doing) when that
        cannot happen."""
        if shares is not None and (len(shares) != len(self._collectors) or sum(shares) != total):
            raise ValueError(f"shares {list(shares)}: one per collector ({len(self._collectors)}), {total} in all")
        self._total, self._chunk_rows = total, chunk_rows
        self._shares = list(shares) if shares is not None else None
        deadline, next_check = self._started + timeout_s, self._started + self._watchdog.check_every_s
        try:
            with progress_bar("rows") as progress:
                task = progress.add_task("collect", total=self._total)
                while True:
                    self._scale()
                    # again every turn: Ray stops exporting a gauge that is not set within two export intervals
                    metrics.collectors().set(self._wanted)
                    stored = sum(self._stored_by_collector())
                    self._hand_out(stored)
                    busy = [c for c in self._collectors if c.ref is not None]
                    progress.update(task, completed=min(stored, self._total))
                    if not busy and self._filled(stored):
                        break
                    if time.monotonic() > deadline:
                        raise ray.exceptions.GetTimeoutError(
                            f"collect: not done within {timeout_s:.0f}s; {self._dog.doing(busy)}"
                        )
                    if not busy:  # nothing running and rows missing: the next hand-out gives chunks
                        time.sleep(interval_s)
                        continue
                    ready, _ = ray.wait([c.ref for c in busy], num_returns=len(busy), timeout=interval_s)
                    for collector in busy:
                        if collector.ref in ready:
                            self._finished(collector)
                    if self._dog.on and time.monotonic() >= next_check:
                        next_check = time.monotonic() + self._watchdog.check_every_s
                        self._dog.check([c for c in self._collectors if c.ref is not None])
                progress.update(task, completed=self._total)
            running = [c for c in self._collectors if not c.retired and self._has_started(c)]
            nodes = ray.get(
                [c.actor.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id()) for c in running],
                timeout=ASK_TIMEOUT_S * 6,
            )
            return FleetResult(
                [r for c in self._collectors for r in c.results],
                self._stored_by_collector(),
                [c.incarnation for c in self._collectors],
                nodes,
                self._dog.stalls,
                time.monotonic() - self._started,
                set(self._dead_sources),
                list(self._scaled),
            )
        finally:
            self.stop()

    def _scale(self) -> None:
        with self._lock:
            wanted = self._wanted
        active = [c for c in self._collectors if not c.retiring]
        if wanted == len(active):
            return
        self._scaled.append({"at_s": round(time.monotonic() - self._started, 1), "from": len(active), "to": wanted})
        if wanted > len(active):
            started = [
                FleetMember(index, self._start_collector(index))
                for index in range(len(self._collectors), len(self._collectors) + wanted - len(active))
            ]
            self._collectors.extend(started)  # they get the live settings once they have started
            self._log.warning("scaled up to {} collectors (started {})", wanted, ", ".join(c.name for c in started))
        else:
            for collector in active[wanted:]:
                collector.retiring = True
            self._log.warning(
                "scaling down to {} collectors: {} stop after their running chunk",
                wanted,
                ", ".join(c.name for c in active[wanted:]),
            )
        metrics.collectors().set(wanted)

    def _filled(self, stored: int) -> bool:
        """The total is in; with fixed shares, every collector's share is."""
        if self._shares is None:
            return stored >= self._total
        return all(rows >= share for rows, share in zip(self._stored_by_collector(), self._shares))

    def _hand_out(self, stored: int) -> None:
        """Give idle collectors chunks of the rows neither stored nor being collected; stop retiring idle ones."""
        outstanding = self._total - stored - sum(c.chunk for c in self._collectors if c.ref is not None)
        own = None
        if self._shares is not None:  # each collector its share, less what its incarnations stored
            own = [share - rows for share, rows in zip(self._shares, self._stored_by_collector())]
        for collector in self._collectors:
            if collector.ref is not None or collector.retired:
                continue
            if collector.retiring:
                self._close([collector])
                ray.kill(collector.actor, no_restart=True)
                collector.retired = True
                self._dog.cleared(collector)
                self._log.info("{} stopped (scaled down); every push it made was acknowledged", collector.name)
                continue
            left = outstanding if own is None else own[collector.index]
            if left <= 0 or not self._has_started(collector):
                continue
            collector.chunk = min(self._chunk_rows, left)
            collector.ref = collector.actor.collect.remote(collector.chunk)
            outstanding -= collector.chunk

    def _has_started(self, collector: FleetMember) -> bool:
        """The actor is up (said once, if it is not, with what it waits for)."""
        if collector.ready is None:
            return True
        if ray.wait([collector.ready], timeout=0)[0]:
            with self._lock:
                collector.ready = None
            for method, args in collector.first_calls:
                ray.get(getattr(collector.actor, method).remote(*args), timeout=RESTART_TIMEOUT_S)
            collector.first_calls.clear()
            self._settings.send(collector)
            if collector.waiting_logged:
                self._log.info("{} started; it takes chunks from now on", collector.name)
            return True
        if not collector.waiting_logged and time.monotonic() - self._started > self._watchdog.check_every_s:
            collector.waiting_logged = True
            waiting_for, _ = self._dog.unanswered(collector)
            self._log.warning(
                "{} has not started yet (waiting for {}); the started collectors share its rows",
                collector.name,
                waiting_for,
            )
        return False

    def _finished(self, collector: FleetMember) -> None:
        assert collector.ref is not None  # called for a busy collector whose call has just finished
        try:
            collector.results.append(ray.get(collector.ref))
            collector.ref = None
            self._dog.cleared(collector)
        except ray.exceptions.RayActorError as err:
            collector.ref = None
            self._restart(collector, err)

    def _restart(self, collector: FleetMember, err: Exception) -> None:
        """The collector died: wait for Ray to restart it; it gets chunks again from the next hand-out."""
        self._dead_sources.add(collector_source(collector.index, collector.incarnation))
        if collector.retiring:  # it was to stop anyway; what it stored is counted, the rest is handed out
            collector.retired = True
            self._dog.cleared(collector)
            return
        if collector.incarnation >= self._max_restarts:
            raise CollectorFailedError(
                f"{collector.name} died {collector.incarnation + 1} times, more than "
                f"rollout.max_restarts={self._max_restarts}: {err}"
            ) from err
        collector.incarnation += 1
        collector.killed = False
        metrics.actor_restarts().inc(tags={"component": "collector"})
        self._log.warning(
            "{} died ({}); waiting for Ray to restart it as incarnation {}",
            collector.name,
            type(err).__name__,
            collector.incarnation,
        )
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:  # calls fail fast while Ray is still restarting it: ask again until it is back
            try:
                ray.get(collector.actor.restarted.remote(collector.incarnation), timeout=RESTART_TIMEOUT_S)
                break
            except ray.exceptions.ActorUnavailableError as again:
                if time.monotonic() > deadline:
                    raise CollectorFailedError(
                        f"{collector.name} did not come back within {RESTART_TIMEOUT_S:.0f}s after dying: {again}"
                    ) from again
                time.sleep(0.5)
            except ray.exceptions.RayActorError as again:
                raise CollectorFailedError(f"{collector.name} did not come back after dying: {again}") from again
        self._dog.cleared(collector)
        self._settings.send(collector)
        stored = self._stored_by_collector()[collector.index]
        self._log.warning(
            "{} is back (incarnation {}); its incarnations have stored {:,} rows",
            collector.name,
            collector.incarnation,
            stored,
        )

    def _stored_by_collector(self) -> list[int]:
        by_source = self._replay.rows_by_source() if self._replay is not None else {}
        return [sum(by_source.get(source, 0) for source in c.sources) for c in self._collectors]
