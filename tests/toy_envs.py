"""Tiny deterministic envs whose every transition is known in advance."""

from __future__ import annotations

import os
import time
from pathlib import Path

import gymnasium as gym
import numpy as np


class CountingEnv(gym.Env):
    """obs = [episode number, t]; an episode lasts 2 + (episode number % 4) steps.

    Episodes of odd length end `terminated`, even ones `truncated`. reward = 10 * t + action,
    so a row's reward identifies its step and action.
    """

    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, offset: int = 0) -> None:
        self._episode = offset - 1
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._episode += 1
        self._t = 0
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        return np.array([self._episode, self._t], dtype=np.float32)

    @property
    def episode_length(self) -> int:
        return 2 + self._episode % 4

    def step(self, action):
        reward = 10.0 * self._t + int(action)
        self._t += 1
        done = self._t >= self.episode_length
        terminated = done and self.episode_length % 2 == 1
        truncated = done and not terminated
        return self._obs(), reward, terminated, truncated, {}


class DictObsEnv(gym.Env):
    """A Dict observation (vector + grid + discrete) and a MultiDiscrete action; episodes of 3 steps."""

    observation_space = gym.spaces.Dict(
        {
            "position": gym.spaces.Box(-10, 10, shape=(2,), dtype=np.float32),
            "grid": gym.spaces.Box(0, 255, shape=(3, 4, 4), dtype=np.uint8),
            "phase": gym.spaces.Discrete(3),
        }
    )
    action_space = gym.spaces.MultiDiscrete([3, 2])

    def __init__(self) -> None:
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        return self._obs(), {}

    def _obs(self) -> dict:
        return {
            "position": np.array([self._t, -self._t], dtype=np.float32),
            "grid": np.full((3, 4, 4), self._t, dtype=np.uint8),
            "phase": self._t % 3,
        }

    def step(self, action):
        self._t += 1
        return self._obs(), float(np.sum(action)), self._t >= 3, False, {}


class ReachEnv(gym.Env):
    """A continuous-control check: obs is a target in [-1, 1]^2, the Box action [-2, 2]^2 should
    match it; reward = -|action - target|^2 (0 at best, about -2.7 for uniform random actions);
    episodes of 8 steps, truncated, with a new target every step."""

    observation_space = gym.spaces.Box(-1, 1, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.Box(-2, 2, shape=(2,), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._target = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self._target.copy(), {}

    def step(self, action):
        reward = -float(np.square(np.asarray(action, np.float32) - self._target).sum())
        self._t += 1
        self._target = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self._target.copy(), reward, False, self._t >= 8, {}


class HangingEnv(CountingEnv):
    """A CountingEnv whose steps take `step_s`, and whose step never returns once, at step
    `hang_at_step` of the first env in any process to get there: it claims `flag_file` (created
    atomically, so exactly one env of all collectors hangs) and sleeps for good. A restarted
    collector finds the flag and goes on."""

    def __init__(
        self, hang_at_step: int | None = None, flag_file: str | None = None, step_s: float = 0.0, offset: int = 0
    ) -> None:
        super().__init__(offset)
        self._hang_at, self._flag, self._step_s, self._steps = hang_at_step, flag_file, step_s, 0

    def step(self, action):
        self._steps += 1
        if self._step_s:
            time.sleep(self._step_s)
        if self._steps == self._hang_at:
            try:
                os.close(os.open(self._flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                while True:  # an env step that never returns
                    time.sleep(60)
        return super().step(action)


class WeightedRewardEnv(HangingEnv):
    """A slow CountingEnv whose reward is `rewards["scale"]` x (10 t + action), with
    `set_reward_weights` (live edits of `env.kwargs.rewards`)."""

    def __init__(self, rewards: dict | None = None, step_s: float = 0.0) -> None:
        super().__init__(step_s=step_s)
        self.set_reward_weights(rewards or {"scale": 1.0})

    def set_reward_weights(self, weights: dict) -> None:
        if set(weights) != {"scale"}:
            raise ValueError(f"WeightedRewardEnv: rewards takes `scale` only, not {sorted(weights)}")
        self.scale = float(weights["scale"])

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, self.scale * reward, terminated, truncated, info


class FirstActionPolicy:
    """Always action 0: every other action in the data was an exploration step."""

    version = 0

    def __init__(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        pass

    def extra_columns(self) -> dict:
        return {}

    def compute_actions(self, obs):
        from harvest.rollout.policies import PolicyOutput

        return PolicyOutput(np.zeros(len(obs), np.int64))


class ThreeActionEnv(gym.Env):
    """CartPole's observation shape (Box(4,) float32) with three actions; episodes of 5 steps.

    With `played_file`, its first reset creates that file: a test sees whether any episode began."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float32)
    action_space = gym.spaces.Discrete(3)

    def __init__(self, played_file: str | None = None) -> None:
        self._played_file, self._t = played_file, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self._played_file:
            open(self._played_file, "a").close()
        self._t = 0
        return np.zeros(4, np.float32), {}

    def step(self, action):
        self._t += 1
        return np.full(4, self._t, np.float32), float(action), self._t >= 5, False, {}


GATE_OPEN = "open"
"""The file in a gate folder that lets every env waiting at the gate go on."""


def wait_at_gate(gate_dir: str, timeout_s: float = 300.0) -> None:
    """Say that this process waits (an empty file `waiting-<pid>` in `gate_dir`), then block until
    the test opens the gate (`open_gate`); after `timeout_s` go on anyway, so that a broken test
    fails on its assertions rather than hanging."""
    gate = Path(gate_dir)
    gate.mkdir(parents=True, exist_ok=True)
    (gate / f"waiting-{os.getpid()}").touch()
    deadline = time.monotonic() + timeout_s
    while not (gate / GATE_OPEN).exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def waiting_pids(gate_dir: str | Path) -> set[int]:
    """The processes that have reached the gate (whether or not it is open now)."""
    return {int(path.name.split("-", 1)[1]) for path in Path(gate_dir).glob("waiting-*")}


def open_gate(gate_dir: str | Path) -> None:
    Path(gate_dir).mkdir(parents=True, exist_ok=True)
    (Path(gate_dir) / GATE_OPEN).touch()


class StepGate:
    """Counts an env copy's steps; the `at_step`-th waits at the gate in `gate_dir`."""

    def __init__(self, gate_dir: str, at_step: int) -> None:
        self.gate_dir, self.at_step, self.steps = gate_dir, at_step, 0

    def count_step(self) -> None:
        self.steps += 1
        if self.steps == self.at_step:
            wait_at_gate(self.gate_dir)


class GatedEnv(HangingEnv):
    """A CountingEnv (steps of `step_s`) whose step number `gate_at_step` waits at the gate in
    `gate_dir` (see `wait_at_gate`): a test acts while every collector is mid-run at a known
    point, and lets them go on when it is done. A copy made after the gate opened passes it."""

    def __init__(self, gate_dir: str, gate_at_step: int = 100, step_s: float = 0.0, offset: int = 0) -> None:
        super().__init__(step_s=step_s, offset=offset)
        self._gate = StepGate(gate_dir, gate_at_step)

    def step(self, action):
        self._gate.count_step()
        return super().step(action)


class GatedRewardEnv(WeightedRewardEnv):
    """A WeightedRewardEnv whose step number `gate_at_step` waits at the gate in `gate_dir`; the
    step that waited is rewarded with the weights in force once the gate opens."""

    def __init__(
        self, gate_dir: str, gate_at_step: int = 100, rewards: dict | None = None, step_s: float = 0.0
    ) -> None:
        super().__init__(rewards=rewards, step_s=step_s)
        self._gate = StepGate(gate_dir, gate_at_step)

    def step(self, action):
        self._gate.count_step()
        return super().step(action)


class StartGatedRewardEnv(WeightedRewardEnv):
    """A WeightedRewardEnv whose copies built inside a Ray actor wait at the gate in `gate_dir`
    before they exist: collectors that have not started yet for as long as the test wants (the
    driver's copy, which reads the spaces, does not wait)."""

    def __init__(self, gate_dir: str, rewards: dict | None = None, step_s: float = 0.0) -> None:
        import ray

        if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
            wait_at_gate(gate_dir)
        super().__init__(rewards=rewards, step_s=step_s)
