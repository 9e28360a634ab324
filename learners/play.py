"""Playing a model in its env inside a learner: the evaluation return that picks best checkpoints."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from harvest.envs.config import EnvConfig
from harvest.envs.registry import make_vector_env
from harvest.envs.spaces import flatten_value
from harvest.learners.models import ConvPolicyModel, PolicyModel


@torch.no_grad()
def greedy_return(
    model: PolicyModel | ConvPolicyModel,
    env_cfg: EnvConfig,
    episodes: int,
    seed: int,
    max_steps: int = 10_000,
    device: torch.device | str = "cpu",
    deterministic: bool = True,
) -> float:
    """Mean return of `model` playing `env_cfg`'s env (with its wrappers) by its most likely
    actions (or, with `deterministic=False`, actions sampled from its distribution) for
    `episodes` episodes (one vector env copy each, seeds from `seed`); an episode still running
    after `max_steps` counts what it has."""
    env = make_vector_env(dataclasses.replace(env_cfg, num_envs=episodes))
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    try:
        obs, _ = env.reset(seed=seed)
        returns, done = np.zeros(episodes), np.zeros(episodes, bool)
        for _ in range(max_steps):
            tensors = {
                name: torch.as_tensor(np.asarray(value)).to(device) for name, value in flatten_value(obs, "obs").items()
            }
            obs, reward, terminated, truncated, _ = env.step(
                model.act(tensors, deterministic=deterministic, generator=generator).cpu().numpy()
            )
            returns += np.where(done, 0.0, reward)
            done |= terminated | truncated
            if done.all():
                break
        return float(returns.mean())
    finally:
        model.train(was_training)
        env.close()
