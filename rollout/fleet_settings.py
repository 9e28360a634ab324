"""The live settings of a fleet: a setting every collector must have, now and after any restart
(a live config edit, a learner's weights), sent to the running collectors when made and to the
ones that start or restart later, before their first chunk."""

from __future__ import annotations

import threading
from typing import Any

import ray
from loguru import logger

from harvest.rollout.fleet_members import FleetMember

RESTART_TIMEOUT_S = 300.0
"""How long a restarted collector may take to come back (its env is built again)."""


class LiveSettings:
    """Collector method name -> arguments, for the fleet's `members` (a list it grows under `lock`)."""

    def __init__(self, members: list[FleetMember], lock: threading.Lock) -> None:
        self._members, self._lock = members, lock
        self._settings: dict[str, tuple[Any, ...]] = {}
        self._log = logger.bind(actor="Fleet")

    def set(self, method: str, *args: Any) -> None:
        """Call `method(*args)` on every started collector, and remember it for the others (a
        collector that starts or restarts later gets it before its first chunk). A ValueError
        of a collector (the same env everywhere: all or none refuse) is raised as one. With no
        collector started yet, the first to start checks the setting before it is remembered:
        one no collector took would stop each of them when it starts."""
        first = self._first_to_start(method)
        if first is not None:
            self._call(method, args, [first])
        with self._lock:
            previous = self._settings.get(method)
            self._settings[method] = args
            actors = [c.actor for c in self._members if not c.retired and c.ready is None]
        try:
            self._call(method, args, actors)
        except ValueError:
            with self._lock:
                if previous is None:
                    self._settings.pop(method, None)
                else:
                    self._settings[method] = previous
            raise

    @staticmethod
    def _call(method: str, args: tuple[Any, ...], actors: list) -> None:
        """`method(*args)` on each actor; a ValueError of one is raised as a ValueError. An actor
        that is dead or restarting is passed over: the fleet sends it every setting again once
        Ray has restarted it (`_send_settings`), and its running call's error restarts it."""
        for ref in [getattr(actor, method).remote(*args) for actor in actors]:
            try:
                ray.get(ref, timeout=RESTART_TIMEOUT_S)
            except ray.exceptions.RayTaskError as err:
                if not isinstance(err.cause, ValueError):
                    raise
                raise ValueError(str(err.cause)) from err
            except ray.exceptions.RayActorError:  # dead or restarting (ActorUnavailableError is one)
                continue

    def _first_to_start(self, method: str) -> Any:
        """None when a collector has started; else the first to start (waited for, from any thread).

        Raises:
            ValueError: none started within `RESTART_TIMEOUT_S`.
        """
        with self._lock:
            if any(c.ready is None for c in self._members if not c.retired):
                return None
            waiting = {c.ready: c.actor for c in self._members if not c.retired}
        if not waiting:
            return None
        self._log.warning("{}: no collector has started yet; the first to start checks the live edit", method)
        started, _ = ray.wait(list(waiting), num_returns=1, timeout=RESTART_TIMEOUT_S)
        if not started:
            raise ValueError(
                f"{method}: no collector started within {RESTART_TIMEOUT_S:.0f}s to check the live edit "
                "on; edit the file again once collectors run"
            )
        return waiting[started[0]]

    def send(self, collector: FleetMember) -> None:
        with self._lock:
            settings = list(self._settings.items())
        ray.get(
            [getattr(collector.actor, method).remote(*args) for method, args in settings], timeout=RESTART_TIMEOUT_S
        )
