"""`ParallelEnvVector` on its own, over a hand-written PettingZoo game: agents as sub-envs in
order, per-copy seeds, agent and game ids, NEXT_STEP autoreset, and the games it refuses."""

import gymnasium as gym
import numpy as np
import pytest
from pettingzoo import ParallelEnv

from harvest.envs.pettingzoo_vector import ParallelEnvVector


class Countdown(ParallelEnv):
    """Two agents; obs is the reset seed plus the steps played; each step pays an agent its action
    times (its index + 1); all end after `length` steps (or `b` alone one step early, `leaver`)."""

    metadata = {"name": "countdown"}

    def __init__(self, length: int = 2, leaver: bool = False, mismatch: bool = False, forget: bool = False) -> None:
        self.possible_agents = ["a", "b"]
        self.length, self.leaver, self.mismatch, self.forget = length, leaver, mismatch, forget
        self.closed = False

    def observation_space(self, agent):
        return gym.spaces.Box(0, 1000, (1,), np.float32)

    def action_space(self, agent):
        return gym.spaces.Discrete(4 if self.mismatch and agent == "b" else 3)

    def reset(self, seed=None, options=None):
        self.agents, self.played, self.start = list(self.possible_agents), 0, float(seed or 0)
        observations = {agent: self._obs() for agent in self.agents}
        if self.forget:
            del observations["b"]
        return observations, {agent: {} for agent in self.agents}

    def _obs(self) -> np.ndarray:
        return np.array([self.start + self.played], np.float32)

    def step(self, actions):
        self.played += 1
        over = self.played >= self.length
        rewards = {agent: float(actions[agent] * (index + 1)) for index, agent in enumerate(self.agents)}
        terminated = {agent: over for agent in self.agents}
        if self.leaver and self.played == self.length - 1:
            terminated["b"] = True
        observations = {agent: self._obs() for agent in self.agents}
        return observations, rewards, terminated, {agent: False for agent in self.agents}, {}

    def close(self):
        self.closed = True


def test_every_agent_of_every_copy_is_a_sub_env_in_copy_then_agent_order():
    env = ParallelEnvVector(Countdown, 6)
    assert [len(env.copies), env.num_envs] == [3, 6]
    assert env.single_observation_space == gym.spaces.Box(0, 1000, (1,), np.float32)
    assert env.action_space == gym.spaces.MultiDiscrete([3] * 6)
    obs, infos = env.reset(seed=10)
    assert obs[:, 0].tolist() == [10, 10, 11, 11, 12, 12]  # copy c is reset with seed + c
    assert infos["agent_id"].tolist() == [0, 1, 0, 1, 0, 1]
    assert infos["game_id"].tolist() == [0, 0, 1, 1, 2, 2]


def test_a_step_pays_each_agent_its_reward_and_a_finished_game_resets_on_the_next_step():
    env = ParallelEnvVector(Countdown, 4, length=2)
    env.reset(seed=0)
    obs, rewards, terminated, truncated, infos = env.step(np.array([1, 2, 0, 1]))
    assert obs[:, 0].tolist() == [1, 1, 2, 2]
    assert rewards.tolist() == [1.0, 4.0, 0.0, 2.0]  # b's action counts twice
    assert not terminated.any() and not truncated.any()
    _, rewards, terminated, _, infos = env.step(np.array([2, 2, 2, 2]))
    assert terminated.tolist() == [True] * 4 and rewards.tolist() == [2.0, 4.0, 2.0, 4.0]
    assert infos["game_id"].tolist() == [0, 0, 1, 1]
    # NEXT_STEP autoreset: this step only starts new games; no reward, no action played.
    obs, rewards, terminated, _, _ = env.step(np.array([2, 2, 2, 2]))
    assert obs[:, 0].tolist() == [0, 0, 0, 0] and rewards.tolist() == [0.0] * 4 and not terminated.any()
    _, _, _, _, infos = env.step(np.array([0, 0, 0, 0]))
    assert infos["game_id"].tolist() == [2, 2, 3, 3], "the new games' rows carry new ids"


def test_closing_the_vector_closes_every_copy():
    env = ParallelEnvVector(Countdown, 4)
    env.close()
    assert [copy.closed for copy in env.copies] == [True, True]


def test_a_number_of_sub_envs_that_is_not_a_multiple_of_the_agents_is_refused():
    with pytest.raises(ValueError, match=r"env.num_envs=3: a multiple of the 2 agents \['a', 'b'\] is needed"):
        ParallelEnvVector(Countdown, 3)


def test_agents_with_different_spaces_are_refused_naming_the_game():
    with pytest.raises(ValueError, match=r"Countdown: agents \['a', 'b'\] have different observation or action spaces"):
        ParallelEnvVector(Countdown, 2, mismatch=True)


def test_an_agent_that_ends_before_the_others_is_refused_naming_it():
    env = ParallelEnvVector(Countdown, 2, length=3, leaver=True)
    env.reset()
    env.step(np.array([0, 0]))
    with pytest.raises(ValueError, match=r"Countdown: agents \['b'\] ended while others play on"):
        env.step(np.array([0, 0]))


def test_a_reset_without_every_agents_observation_is_refused_naming_the_missing_ones():
    env = ParallelEnvVector(Countdown, 2, forget=True)
    with pytest.raises(ValueError, match=r"Countdown: reset gave no observation for \['b'\]"):
        env.reset()
