"""PPO's critic: the value network beside a policy model, and generalized advantage estimation
over rows in any order."""

from __future__ import annotations

import copy
from typing import Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from harvest.envs.spaces import leaf_spaces
from harvest.learners.models import ConvPolicyModel, PolicyModel


class ValueModel(nn.Module):
    """V(s) beside a policy model: an MLP over a copy of the policy's encoders (normalized
    features, and the pixel CNN where there is one), or a small CNN over the board for a
    `ConvPolicyModel`."""

    def __init__(
        self, policy: PolicyModel | ConvPolicyModel, hidden_sizes: Sequence[int], conv_channels: Sequence[int]
    ) -> None:
        super().__init__()
        self.board_name = policy.board_name if isinstance(policy, ConvPolicyModel) else None
        self.net: nn.Module
        layers: list[nn.Module] = []
        if isinstance(policy, PolicyModel):
            self.encoder = copy.deepcopy(policy.encoder)
            self.pixels, self.image_name = copy.deepcopy(policy.pixels), policy.image_name
            width = self.encoder.output_size + (self.pixels.output_size if self.pixels is not None else 0)
            for hidden in hidden_sizes:
                layers += [nn.Linear(width, hidden), nn.Tanh()]
                width = hidden
            self.net = nn.Sequential(*layers, nn.Linear(width, 1))
        else:
            board_space = leaf_spaces(policy.observation_space, "obs")[policy.board_name]
            assert isinstance(board_space, gym.spaces.Box)  # a ConvPolicyModel's board is a [C, H, W] Box
            channels = board_space.shape[0]
            for out_channels in conv_channels:
                layers += [nn.Conv2d(channels, out_channels, 3, padding=1), nn.ReLU()]
                channels = out_channels
            self.trunk = nn.Sequential(*layers)
            self.net = nn.Linear(channels, 1)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.board_name is None:
            features = self.encoder(obs)
            if self.pixels is not None:
                assert self.image_name is not None  # the policy's pixels read that image
                features = torch.cat([self.pixels(obs[self.image_name]), features], dim=1)
            return self.net(features)[:, 0]
        return self.net(self.trunk(obs[self.board_name].float()).mean(dim=(2, 3)))[:, 0]


def gae(
    reward: np.ndarray,
    value: np.ndarray,
    next_value: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    episode_id: np.ndarray,
    step: np.ndarray,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and returns (advantage + value) for rows in any order: δ_t = r_t +
    γ V(s'_t)(1 - terminated_t) - V(s_t), accumulated backwards over the following rows of the
    same episode (consecutive steps); a truncated or unfinished episode bootstraps from V(s')."""
    order = np.lexsort((step, episode_id))
    r, v, nv = reward[order], value[order], next_value[order]
    term, ended = terminated[order], terminated[order] | truncated[order]
    ep, st = episode_id[order], step[order]
    delta = r + gamma * nv * (1.0 - term) - v
    follows = np.zeros(r.size, bool)  # the next row continues this row's episode
    follows[:-1] = (ep[1:] == ep[:-1]) & (st[1:] == st[:-1] + 1) & ~ended[:-1]
    advantage = np.zeros(r.size, np.float64)
    running = 0.0
    for i in range(r.size - 1, -1, -1):
        running = delta[i] + (gamma * lam * running if follows[i] else 0.0)
        advantage[i] = running
    out = np.empty_like(advantage)
    out[order] = advantage
    return out.astype(np.float32), (out + value).astype(np.float32)
