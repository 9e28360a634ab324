"""The shadow policy beside a person's session (`human.shadow`): the newest weights of the
`ShadowLearner` fetched without holding up a frame, its action on every frame, and how often
it agrees with the person (live in the window, on the dashboard, and over the session)."""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
import ray

from harvest.cluster import metrics
from harvest.rollout.human.config import ShadowConfig


class ShadowBeside:
    """The shadow policy beside a session: newest weights fetched without blocking the frame,
    its action every frame, and how often it agrees with the person."""

    def __init__(self, learner: Any, policy: Any, cfg: ShadowConfig, action_space: gym.Space) -> None:
        self.learner, self.policy, self.cfg = learner, policy, cfg
        self.version, self.driving, self.frames_driven = 0, False, 0
        self._discrete = isinstance(action_space, gym.spaces.Discrete)
        if not self._discrete:
            assert isinstance(action_space, gym.spaces.Box)  # KeyMap lets only Discrete or a flat Box through
            spread = np.asarray(action_space.high, np.float64) - np.asarray(action_space.low, np.float64)
            self._spread = np.where(np.isfinite(spread) & (spread > 0), spread, 1.0)
        self._recent: deque[float] = deque(maxlen=cfg.agreement_window)
        self._pending: ray.ObjectRef | None = None
        self._asked_at = -(10**9)
        self.history: list[dict[str, float]] = []

    def act(self, obs: Any, frame: int) -> Any:
        self._refresh(frame)
        batched = (
            {key: np.asarray(value)[None] for key, value in obs.items()}
            if isinstance(obs, dict)
            else np.asarray(obs)[None]
        )
        self.frames_driven += int(self.driving)
        return np.asarray(self.policy.compute_actions(batched).actions)[0]

    def _refresh(self, frame: int) -> None:
        """Ask the learner for its newest weights every 10 frames; load them once they arrive."""
        if self._pending is None:
            if frame - self._asked_at >= 10:
                self._pending, self._asked_at = self.learner.latest.remote(), frame
            return
        ready, _ = ray.wait([self._pending], timeout=0)
        if not ready:
            return
        version, refs = ray.get(self._pending)
        self._pending = None
        if version > self.version and refs:
            self.policy.set_weights(ray.get(refs[0], timeout=60), version)
            self.version = version

    def compare(self, person: Any, shadow: Any, frame: int, session: str) -> None:
        if self._discrete:
            agreement = float(int(person) == int(shadow))
        else:
            agreement = float(1 - np.mean(np.abs(np.asarray(person, np.float64) - shadow) / self._spread))
        self._recent.append(agreement)
        if frame % max(1, self.cfg.agreement_window // 5) == 0:
            value = float(np.mean(self._recent))
            self.history.append({"frame": frame, "version": self.version, "agreement": value})
            metrics.shadow_agreement().set(value, tags={"session": session})
            metrics.shadow_version().set(self.version, tags={"session": session})

    def status(self) -> str:
        agreement = f"{np.mean(self._recent):.2f}" if self._recent else "-"
        return f"shadow v{self.version}  agreement {agreement}" + (
            "  SHADOW DRIVING" if self.driving else f"  ({self.cfg.handover_key.upper()} hands over)"
        )
