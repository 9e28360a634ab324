"""Simulated Generals.io: a batched numpy engine with the rules of `generals-bots` 2.5.0,
seeded maps, and the env APIs the rest of Harvest speaks: `gym.make("harvest/Generals-v0")`
(one game against the scripted opponent), `gym.make_vec("harvest/Generals-v0", num_envs=N)`
(the batched engine) and `parallel_env()` (both players, PettingZoo)."""

from __future__ import annotations

from typing import Any


def parallel_env(**kwargs: Any):
    """One two-player game behind the PettingZoo Parallel API (`GeneralsParallelEnv`), as
    PettingZoo's own envs are made: `harvest.envs.generals.parallel_env(max_steps=500)`."""
    from harvest.envs.generals.env import GeneralsParallelEnv

    return GeneralsParallelEnv(**kwargs)
