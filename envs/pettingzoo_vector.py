"""Any PettingZoo `ParallelEnv` as a Gymnasium vector env: every agent of every copy is a sub-env.

With `env.id: "pettingzoo.classic.rps_v2:parallel_env"` (any entry point that returns a
`ParallelEnv`), `env.num_envs` is the number of *agents* stepped together: `num_envs / A`
copies of the game with A agents each, so rollout actors, the replay and every dataset tool
treat agents like any other sub-env, and each row carries `agent_id` (the agent's index in
`possible_agents`) and `game_id` (a number per game played). The agents must share one
observation space and one action space, and end their episodes together (the usual case for
parallel games); an env where agents leave one by one is refused with a message.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array
from pettingzoo import ParallelEnv

from harvest.envs.spaces import ColumnSpec

ROW_COLUMNS = {"agent_id": ColumnSpec(np.int64, ()), "game_id": ColumnSpec(np.int64, ())}


class ParallelEnvVector(VectorEnv):
    """`num_envs // len(possible_agents)` copies of a PettingZoo parallel env (NEXT_STEP autoreset)."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "harvest_row_columns": ROW_COLUMNS}

    def __init__(self, factory: Callable[..., ParallelEnv], num_envs: int, **kwargs: Any) -> None:
        probe = factory(**kwargs)
        agents = list(probe.possible_agents)
        self.agents = agents
        if num_envs % len(agents):
            raise ValueError(
                f"env.num_envs={num_envs}: a multiple of the {len(agents)} agents {agents} is needed "
                "(every agent of every copy is a sub-env)"
            )
        first_obs, first_action = probe.observation_space(agents[0]), probe.action_space(agents[0])
        if any(probe.observation_space(a) != first_obs or probe.action_space(a) != first_action for a in agents):
            raise ValueError(
                f"{type(probe).__name__}: agents {agents} have different observation or action spaces; "
                "Harvest collects parallel envs whose agents share one of each"
            )
        self.copies = [probe] + [factory(**kwargs) for _ in range(num_envs // len(agents) - 1)]
        self.num_envs = num_envs
        self.single_observation_space = probe.observation_space(agents[0])
        self.single_action_space = probe.action_space(agents[0])
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._needs_reset = np.zeros(len(self.copies), bool)
        self._game_ids = np.zeros(len(self.copies), np.int64)
        self._next_game = 0
        self._last: list[dict[str, Any]] = [{} for _ in self.copies]
        self._seed: int | None = None

    def _new_game(self, copy: int, seed: int | None = None) -> dict[str, Any]:
        observations, _ = self.copies[copy].reset(seed=seed)
        self._game_ids[copy] = self._next_game
        self._next_game += 1
        missing = [a for a in self.agents if a not in observations]
        if missing:
            raise ValueError(f"{type(self.copies[copy]).__name__}: reset gave no observation for {missing}")
        return observations

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._last = [self._new_game(c, None if seed is None else seed + c) for c in range(len(self.copies))]
        self._needs_reset[:] = False
        return self._batch(self._last), self._infos()

    def _batch(self, per_copy: list[dict[str, Any]]) -> Any:
        out = create_empty_array(self.single_observation_space, self.num_envs)
        return concatenate(
            self.single_observation_space,
            [observations[agent] for observations in per_copy for agent in self.agents],
            out,  # type: ignore[arg-type]  # None for a custom space, whose concatenate ignores `out`
        )

    def _infos(self) -> dict[str, np.ndarray]:
        return {
            "agent_id": np.tile(np.arange(len(self.agents), dtype=np.int64), len(self.copies)),
            "game_id": np.repeat(self._game_ids, len(self.agents)),
        }

    def step(self, actions):
        count = len(self.agents)
        rewards = np.zeros(self.num_envs, np.float64)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        infos = self._infos()
        for c, env in enumerate(self.copies):
            rows = slice(c * count, (c + 1) * count)
            if self._needs_reset[c]:  # NEXT_STEP autoreset: this step only resets the finished game
                self._last[c] = self._new_game(c)
                self._needs_reset[c] = False
                continue
            actions_c = {agent: actions[c * count + i] for i, agent in enumerate(self.agents)}
            observations, reward, term, trunc, _ = env.step(actions_c)
            done = [bool(term.get(a, False) or trunc.get(a, False)) for a in self.agents]
            if any(done) and not all(done):
                raise ValueError(
                    f"{type(env).__name__}: agents {[a for a, d in zip(self.agents, done) if d]} ended "
                    "while others play on; Harvest collects parallel envs whose agents end together"
                )
            self._last[c] = {a: observations.get(a, self._last[c][a]) for a in self.agents}
            rewards[rows] = [reward.get(a, 0.0) for a in self.agents]
            terminated[rows] = [bool(term.get(a, False)) for a in self.agents]
            truncated[rows] = [bool(trunc.get(a, False)) for a in self.agents]
            self._needs_reset[c] = all(done)
        return self._batch(self._last), rewards, terminated, truncated, infos

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.copies:
            env.close()
