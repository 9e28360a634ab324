"""`EpsilonGreedy`: a collector's ε-greedy exploration (`rollout.policy.epsilon`)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from harvest.rollout.policies import PolicyOutput, RandomPolicy


class EpsilonGreedy:
    """Each env plays a random action with probability ε instead of the policy's (whose extras stay).

    Args:
        observation_space: the env's single observation space.
        action_space: the env's single action space (the random actions' space).
        rng: draws which envs explore, and seeds the random policy.
    """

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, rng: np.random.Generator) -> None:
        self.epsilon = 0.0
        self._spaces = (observation_space, action_space)
        self._rng = rng
        self._explorer: RandomPolicy | None = None

    def set_epsilon(self, epsilon: float) -> None:
        """ε from the next step on (the random policy is made the first time ε is not 0)."""
        if epsilon and self._explorer is None:
            self._explorer = RandomPolicy(*self._spaces, seed=int(self._rng.integers(2**31)))
        self.epsilon = epsilon

    def apply(self, output: PolicyOutput, obs: object) -> PolicyOutput:
        """`output` with each env's action replaced by a random one with probability ε."""
        actions = np.asarray(output.actions)
        explore = self._rng.random(len(actions)) < self.epsilon
        if not explore.any():
            return output
        assert self._explorer is not None  # set_epsilon makes it whenever ε is not 0
        random_actions = np.asarray(self._explorer.compute_actions(obs).actions, actions.dtype)
        return PolicyOutput(
            np.where(explore.reshape(-1, *[1] * (actions.ndim - 1)), random_actions, actions), output.extras
        )
