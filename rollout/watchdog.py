"""The fleet's watchdog: it asks every busy collector what it is doing (`activity()`, answered
from a second thread while `collect` runs). A collector in one call for longer than
`watchdog.stall_after_s`, or one that does not answer, is reported (log, metrics, `Stall`
records) with the call it is stuck in and, for a replay acknowledgement, what holds the replay
back (rate limiter, memory limit, a shard not answering, a full object store). Stalls in the
collector itself are recovered by killing it, so Ray restarts it; stalls in the replay are
reported only (a new collector would wait the same)."""

from __future__ import annotations

import re
import time
from typing import Any

import ray
from loguru import logger

from harvest.cluster import metrics
from harvest.rollout.config import WatchdogConfig
from harvest.rollout.fleet_members import FleetMember, Stall
from harvest.rollout.replay.replay import Replay

ASK_TIMEOUT_S = 5.0
"""How long the watchdog waits for a collector to say what it is doing."""
_STORE_FULL = 0.9
"""Object-store fill from which a stalled push names the object store."""
_PLASMA = re.compile(r"Plasma memory usage (\d+) MiB, (\d+) objects, ([\d.]+)% full")


def object_store_report() -> tuple[float, str] | None:
    """(fill 0-1, a sentence) for Ray's object store over all nodes, from the raylets' memory
    summary; None when Ray does not say. Best effort: the summary's API is Ray's internal one."""
    from ray._private.internal_api import memory_summary

    try:  # this driver's cluster (without an address Ray looks for one on the machine and fails when there are two)
        match = _PLASMA.search(memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True))
    except Exception:  # noqa: BLE001 - a diagnosis must not fail the run it diagnoses
        return None
    if match is None:
        return None
    mib, objects, percent = int(match.group(1)), int(match.group(2)), float(match.group(3))
    return percent / 100, (
        f"Ray's object store is {percent:.0f}% full ({mib:,} MiB in {objects:,} objects): "
        "new objects wait for space or spill to disk"
    )


class Watchdog:
    """Watches a fleet's busy collectors (`check`) and says what they are doing (`doing`)."""

    def __init__(self, config: WatchdogConfig, kind: str, replay: Replay | None, max_restarts: int) -> None:
        self.config, self.kind, self.replay, self.max_restarts = config, kind, replay, max_restarts
        self.stalls: list[Stall] = []
        self._log = logger.bind(actor="Fleet")

    @property
    def on(self) -> bool:
        return self.config.stall_after_s is not None

    def activities(self, busy: list[FleetMember]) -> list[Any]:
        """Ask every busy collector what it is doing: its `Activity`, None when it does not answer
        within `ASK_TIMEOUT_S`, or the `RayActorError` of one that died."""
        asks = [c.actor.activity.remote() for c in busy]
        ready, _ = ray.wait(asks, num_returns=len(asks), timeout=ASK_TIMEOUT_S)
        answers: list[Any] = []
        for ref in asks:
            try:
                answers.append(ray.get(ref) if ref in ready else None)
            except ray.exceptions.RayActorError as err:
                answers.append(err)
        return answers

    def check(self, busy: list[FleetMember]) -> None:
        """Report (and recover) the busy collectors stuck in one call too long, or not answering."""
        limit = self.config.stall_after_s
        if limit is None:  # the watchdog is off (callers ask `on` first)
            return
        now = time.time()
        for collector, activity in zip(busy, self.activities(busy)):
            if isinstance(activity, Exception):
                continue  # it died: its collect call reports that
            if activity is None:
                collector.unanswered_since = collector.unanswered_since or now - ASK_TIMEOUT_S
                if now - collector.unanswered_since >= limit:
                    waiting_for, recoverable = self.unanswered(collector)
                    self.stalled(
                        collector, waiting_for, "no answer", now - collector.unanswered_since, recover=recoverable
                    )
                continue
            collector.unanswered_since = None
            if activity.what == "idle" or now - activity.since < limit:
                self.cleared(collector)
                continue
            call = activity.what.split(":")[0]
            waiting_for = f"{self.kind}[{collector.index}].{activity.what}"
            if call.startswith("replay."):
                waiting_for += f": {self.replay_holding_back()}"
            # a wait for the replay or for memory is not the collector's fault: restarting it would not help
            self.stalled(
                collector,
                waiting_for,
                call,
                now - activity.since,
                recover=not (call.startswith("replay.") or call == "backpressure"),
            )

    def unanswered(self, collector: FleetMember) -> tuple[str, bool]:
        """What a collector that does not answer is waiting for, as far as Ray's actor table says,
        and whether restarting it could help (not when it waits for resources or a restart)."""
        # The GCS actor table (no dashboard needed, unlike ray.util.state); private, so best effort.
        from ray._private.state import actors

        name = f"{self.kind}[{collector.index}]"
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

    def replay_holding_back(self) -> str:
        if self.replay is None:
            return "no replay"
        asks = [shard.holding_back.remote() for shard in self.replay.shards]
        ready, _ = ray.wait(asks, num_returns=len(asks), timeout=ASK_TIMEOUT_S)
        reasons = []
        for index, ref in enumerate(asks):
            if ref not in ready:
                reasons.append(f"ReplayShard[{index}] not answering")
            elif reason := ray.get(ref):
                reasons.append(reason)
        store = object_store_report()
        if store is not None and store[0] >= _STORE_FULL:
            reasons.append(store[1])
        return "; ".join(reasons) or "shards answer and hold nothing back (acks in transit: network or object store)"

    def stalled(self, collector: FleetMember, waiting_for: str, call: str, seconds: float, recover: bool) -> None:
        recover = recover and self.config.recover and collector.incarnation < self.max_restarts
        if collector.stalled is None or collector.stalled.call != call:
            stall = Stall(collector.name, waiting_for, call, round(seconds, 1), recovered=recover)
            self.stalls.append(stall)
            collector.stalled = stall
            metrics.stalls().inc(tags={"component": collector.name, "waiting_for": call})
            metrics.stalled().set(1, tags={"component": collector.name, "waiting_for": call})
            self._log.error(
                "stall: {} has been waiting {:.0f}s for {}{}",
                collector.name,
                seconds,
                waiting_for,
                "; killing it so Ray restarts it" if recover else "",
            )
        if recover and not collector.killed:
            ray.kill(collector.actor, no_restart=False)
            collector.killed = True  # once: the dead call's error starts the restart

    def cleared(self, collector: FleetMember) -> None:
        if collector.stalled is not None:
            metrics.stalled().set(0, tags={"component": collector.name, "waiting_for": collector.stalled.call})
            collector.stalled = None

    def doing(self, busy: list[FleetMember]) -> str:
        now, parts = time.time(), []
        for collector, activity in zip(busy, self.activities(busy)):
            if activity is None:
                parts.append(f"{collector.name}: not answering")
            elif isinstance(activity, Exception):
                parts.append(f"{collector.name}: dead ({type(activity).__name__})")
            else:
                parts.append(f"{collector.name}: {activity.what} for {now - activity.since:.0f}s")
        return "; ".join(parts)
