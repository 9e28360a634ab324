"""Models built from spaces: an observation encoder, an MLP trunk and an action head.

One place (`build_policy_model`) turns an observation space and an action space into a
network; the checkpoint stores the spaces and the config needed to rebuild it.
"""

from __future__ import annotations

from typing import Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from envs.spaces import columns_for_space, leaf_spaces


class ObsEncoder(nn.Module):
    """Flattens observation columns into one float vector: Box as is, Discrete as one-hot.

    Feature-wise mean/std (buffers set from training data) normalize the vector.
    """

    def __init__(self, observation_space: gym.Space) -> None:
        super().__init__()
        self.parts: list[tuple[str, str, list[int]]] = []
        size = 0
        spaces = leaf_spaces(observation_space, "obs")
        for name, space in spaces.items():
            if isinstance(space, gym.spaces.Discrete):
                self.parts.append((name, "onehot", [int(space.n), int(space.start)]))
                size += int(space.n)
            elif isinstance(space, gym.spaces.MultiDiscrete):
                self.parts.append((name, "multionehot", space.nvec.reshape(-1).tolist()))
                size += int(space.nvec.sum())
            else:
                width = int(np.prod(columns_for_space(space, name)[name].shape))
                self.parts.append((name, "flat", [width]))
                size += width
        self.output_size = size
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("std", torch.ones(size))

    def features(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Un-normalized feature vector [batch, output_size]."""
        pieces = []
        for name, kind, args in self.parts:
            value = obs[name]
            if kind == "onehot":
                pieces.append(nn.functional.one_hot((value.long() - args[1]), args[0]).float())
            elif kind == "multionehot":
                flat = value.long().reshape(value.shape[0], -1)
                pieces.extend(nn.functional.one_hot(flat[:, i], n).float() for i, n in enumerate(args))
            else:
                pieces.append(value.reshape(value.shape[0], -1).float())
        return torch.cat(pieces, dim=1)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return (self.features(obs) - self.mean) / self.std


class PolicyModel(nn.Module):
    """Encoder → MLP → head. Discrete actions: logits; MultiDiscrete: concatenated logits;
    Box actions: a mean squashed into the bounds with tanh (where the bounds are finite)."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        self.observation_space = observation_space
        self.action_space = action_space
        self.encoder = ObsEncoder(observation_space)
        layers: list[nn.Module] = []
        width = self.encoder.output_size
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.trunk = nn.Sequential(*layers)
        if isinstance(action_space, gym.spaces.Discrete):
            self.head = nn.Linear(width, int(action_space.n))
        elif isinstance(action_space, gym.spaces.MultiDiscrete):
            self.head = nn.Linear(width, int(action_space.nvec.sum()))
        elif isinstance(action_space, gym.spaces.Box):
            self.head = nn.Linear(width, int(np.prod(action_space.shape)))
            low = np.broadcast_to(action_space.low, action_space.shape).astype(np.float32).reshape(-1)
            high = np.broadcast_to(action_space.high, action_space.shape).astype(np.float32).reshape(-1)
            bounded = np.isfinite(low) & np.isfinite(high)
            self.register_buffer("action_low", torch.from_numpy(np.where(bounded, low, -1.0)))
            self.register_buffer("action_high", torch.from_numpy(np.where(bounded, high, 1.0)))
            self.register_buffer("action_bounded", torch.from_numpy(bounded))
        else:
            raise TypeError(f"action space {action_space} is not supported by the MLP policy; "
                            "expected Discrete, MultiDiscrete or Box")

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (discrete) or actions (continuous), [batch, head size]."""
        out = self.head(self.trunk(self.encoder(obs)))
        if isinstance(self.action_space, gym.spaces.Box):
            squashed = self.action_low + (torch.tanh(out) + 1) * 0.5 * (self.action_high - self.action_low)
            out = torch.where(self.action_bounded, squashed, out)
        return out

    def act(self, obs: dict[str, torch.Tensor], deterministic: bool = True,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """Actions in the env's format: int64 indices (plus start) or float actions of the Box's shape."""
        out = self.forward(obs)
        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            index = out.argmax(-1) if deterministic else torch.multinomial(out.softmax(-1), 1, generator=generator)[:, 0]
            return index + int(space.start)
        if isinstance(space, gym.spaces.MultiDiscrete):
            chosen = []
            for logits in out.split(space.nvec.reshape(-1).tolist(), dim=-1):
                chosen.append(logits.argmax(-1) if deterministic
                              else torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0])
            return (torch.stack(chosen, dim=-1) + torch.as_tensor(space.start.reshape(-1), device=out.device)).reshape(
                out.shape[0], *space.nvec.shape)
        return out.reshape(out.shape[0], *space.shape)


def build_policy_model(observation_space: gym.Space, action_space: gym.Space,
                       hidden_sizes: Sequence[int]) -> PolicyModel:
    """The one place a policy network is built from spaces."""
    return PolicyModel(observation_space, action_space, hidden_sizes)
