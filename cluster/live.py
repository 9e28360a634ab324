"""Live configuration: the run's YAML file is watched while it collects, and edits take effect.

What may change while a run goes on (anything else in an edit gets the whole edit refused,
with the keys named, because it would need a restart):

    run.log_level               the driver's log level on stderr
    rollout.num_collectors      collectors are started, or finish their running chunk and stop
    rollout.trajectory_filter   `mode: trajectory`: the episodes pushed from now on
    aggregation.filter          the episodes compaction keeps (not with rotate_every_s, whose
                                files are already being written)
    replay.rate_limit           samples per insert, error buffer, timeout (when it was on at start)
    env.kwargs.rewards          reward weights, from the collectors' next step (envs with
                                `set_reward_weights`: Generals)
    rollout.policy.epsilon      ε-greedy exploration of the collectors, from their next step
    rollout.policy.deterministic  greedy or sampled actions of a torch policy

An edit is read again with the run's `--set` overrides on top and validated as at start; one
that does not validate is refused, its error logged, and the old config stays. Every edit is
logged with its diff and the time it took effect, and listed in `summary.json`
(`collect.config_changes`). Written by hand: watching one file by its modification time is a
few lines, where a watcher library would bring threads and platform quirks of its own.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from loguru import logger

from harvest.cluster.config import ConfigError, RunConfig, load_config
from harvest.cluster.logging import setup_logging

LIVE_KEYS = (
    "run.log_level",
    "rollout.num_collectors",
    "rollout.trajectory_filter",
    "aggregation.filter",
    "replay.rate_limit",
    "env.kwargs.rewards",
    "rollout.policy.epsilon",
    "rollout.policy.deterministic",
)

Applier = Callable[[RunConfig], None]
"""Makes a new config's value take effect; raises ValueError when it cannot (nothing applied yet)."""


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaf values (`rollout.num_collectors: 2`)."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _blank(value: Any) -> bool:
    return value is None or value is False or value == [] or value == {}


def diff(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Changed leaves; a section appearing (None -> its defaults) shows only the keys set in it."""
    before, after = flatten(old.to_dict()), flatten(new.to_dict())
    return {
        key: (before.get(key), after.get(key))
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key) and not (_blank(before.get(key)) and _blank(after.get(key)))
    }


def _live_key(key: str) -> str | None:
    return next((live for live in LIVE_KEYS if key == live or key.startswith(live + ".")), None)


class LiveConfig:
    """The config file of a running run, read again whenever it changes.

    Args:
        path: the YAML file the run was started with.
        overrides: the run's `--set` items, applied on top of every edit.
        cfg: the config the run started with.
        log_file: the run's log file (kept when the log level changes).
    """

    def __init__(
        self, path: str | Path, overrides: list[str], cfg: RunConfig, log_file: Path | None = None, poll_s: float = 1.0
    ) -> None:
        self.path, self.overrides, self.current, self.log_file = Path(path), list(overrides), cfg, log_file
        self.poll_s = poll_s
        self.changes: list[dict[str, Any]] = []
        self._appliers: dict[str, Applier] = {"run.log_level": self._set_log_level}
        self._seen = self._stamp()
        self._log = logger.bind(actor="LiveConfig")

    def _stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _set_log_level(self, cfg: RunConfig) -> None:
        setup_logging(cfg.run.log_level, self.log_file)

    @contextmanager
    def watching(self, appliers: dict[str, Applier]) -> Iterator["LiveConfig"]:
        """Watch the file (a thread polling every `poll_s`) while the block runs, applying edits
        through `appliers` (keyed by `LIVE_KEYS`; the log level is applied here)."""
        self._appliers.update(appliers)
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(self.poll_s):
                self.check()

        thread = threading.Thread(target=watch, name="harvest-live-config", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=10)
            self.check()  # an edit made just before the end still counts
            for key in appliers:
                self._appliers.pop(key, None)

    def check(self) -> dict[str, Any] | None:
        """Read the file again if it changed since last time; the change's record, if any."""
        stamp = self._stamp()
        if stamp == self._seen or stamp is None:
            return None
        self._seen = stamp
        when = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        try:
            new = load_config(self.path, self.overrides)
        except ConfigError as err:
            return self._record(when, "rejected", {}, f"does not validate: {err}")
        changed = diff(self.current, new)
        if not changed:
            return None
        fixed = sorted(key for key in changed if _live_key(key) is None)
        if fixed:
            return self._record(
                when,
                "rejected",
                changed,
                f"{', '.join(fixed)} cannot change while the run goes on (live keys: {', '.join(LIVE_KEYS)})",
            )
        # every changed key is under a live key here (the others are `fixed`, refused above)
        keys = sorted({live_key for live_key in map(_live_key, changed) if live_key is not None})
        missing = [key for key in keys if key not in self._appliers]
        if missing:
            return self._record(when, "rejected", changed, f"{', '.join(missing)} cannot change at this stage")
        try:
            for key in keys:  # appliers check before they change anything
                self._appliers[key](new)
        except ValueError as err:
            return self._record(when, "rejected", changed, str(err))
        self.current = new
        return self._record(when, "applied", changed, None)

    def _record(self, when: str, status: str, changed: dict[str, tuple[Any, Any]], error: str | None) -> dict:
        record = {
            "at": when,
            "file": str(self.path),
            "status": status,
            "diff": {key: [old, new] for key, (old, new) in changed.items()},
            "error": error,
        }
        self.changes.append(record)
        lines = "".join(f"\n    {key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())
        if status == "applied":
            self._log.warning("config edit of {} applied, effective {}:{}", self.path, when, lines)
        else:
            self._log.error(
                "config edit of {} rejected at {} ({}); the run goes on with the config it had{}",
                self.path,
                when,
                error,
                lines,
            )
        return record


def collect_appliers(
    live: LiveConfig, supervisor, cfg: RunConfig, replay=None, rotating: bool = False
) -> dict[str, Applier]:
    """How a collection applies live edits: collectors scaled by the supervisor, filters sent to
    them, the rate limit to the shards, the compaction filter kept for the end."""
    import ray

    def num_collectors(new: RunConfig) -> None:
        if supervisor is None:
            raise ValueError("rollout.num_collectors: this collection has no simulator collectors to scale")
        if new.human is not None:
            raise ValueError(
                "rollout.num_collectors: cannot change beside a teleoperation session (its "
                "collector id follows the simulators')"
            )
        supervisor.set_num_collectors(new.rollout.num_collectors)

    def trajectory_filter(new: RunConfig) -> None:
        if cfg.rollout.mode != "trajectory" or supervisor is None:
            raise ValueError("rollout.trajectory_filter: applies to rollout.mode: trajectory only")
        supervisor.set_trajectory_filter(new.rollout.trajectory_filter)

    def aggregation_filter(new: RunConfig) -> None:
        if rotating:
            raise ValueError(
                "aggregation.filter: rotation (aggregation.rotate_every_s) is already writing the "
                "dataset with the filter it started with"
            )
        # compaction reads live.current when collection ends

    def rate_limit(new: RunConfig) -> None:
        if replay is None or (cfg.replay.rate_limit is None) != (new.replay.rate_limit is None):
            raise ValueError("replay.rate_limit: can be changed, not turned on or off, while the run goes on")
        ray.get([shard.set_rate_limit.remote(new.replay.rate_limit) for shard in replay.shards], timeout=60)

    def reward_weights(new: RunConfig) -> None:
        if supervisor is None:
            raise ValueError("env.kwargs.rewards: this collection has no simulator collectors")
        supervisor.set_reward_weights(new.env.kwargs.get("rewards") or {})

    def exploration(new: RunConfig) -> None:
        if supervisor is None:
            raise ValueError("rollout.policy: this collection has no simulator collectors")
        policy, before = new.rollout.policy, live.current.rollout.policy
        if not policy.deterministic and policy.kind != "torch":
            raise ValueError(
                f"rollout.policy.deterministic: false needs a policy that samples (kind: torch), "
                f"not kind: {policy.kind}"
            )
        supervisor.set_exploration(
            policy.epsilon, None if policy.deterministic == before.deterministic else policy.deterministic
        )

    return {
        "rollout.num_collectors": num_collectors,
        "rollout.trajectory_filter": trajectory_filter,
        "aggregation.filter": aggregation_filter,
        "replay.rate_limit": rate_limit,
        "env.kwargs.rewards": reward_weights,
        "rollout.policy.epsilon": exploration,
        "rollout.policy.deterministic": exploration,
    }
