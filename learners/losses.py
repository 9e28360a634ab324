"""The behaviour-cloning loss (and its parts), shared by BC, its data-parallel path, DQfD's
supervised term and the shadow learner."""

from __future__ import annotations

import gymnasium as gym
import torch
from torch import nn

from harvest.learners.models import ConvPolicyModel, PolicyModel


def bc_loss(
    model: PolicyModel | ConvPolicyModel,
    obs: dict[str, torch.Tensor],
    action: torch.Tensor,
    action_scale: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy for discrete actions (summed over MultiDiscrete parts), MSE for Box actions
    (each dimension divided by `action_scale` when given); a weighted mean with `weight` per row."""
    return loss_from_output(model(obs), model.action_space, action, action_scale, weight)


def loss_from_output(
    out: torch.Tensor,
    space: gym.Space,
    action: torch.Tensor,
    action_scale: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """`bc_loss` from the model's output (for wrappers such as DDP that must do the forward)."""
    out = out.float()  # under autocast the head's output may be bf16/fp16; losses are taken in fp32
    if isinstance(space, gym.spaces.Discrete):
        per_row = nn.functional.cross_entropy(out, action.long() - int(space.start), reduction="none")
    elif isinstance(space, gym.spaces.MultiDiscrete):
        targets = (action.long() - torch.as_tensor(space.start, device=action.device)).reshape(action.shape[0], -1)
        parts = out.split(space.nvec.reshape(-1).tolist(), dim=-1)
        per_part = [
            nn.functional.cross_entropy(logits, targets[:, i], reduction="none") for i, logits in enumerate(parts)
        ]
        per_row = sum(per_part[1:], per_part[0])
    else:
        error = out - action.reshape(action.shape[0], -1).float()
        if action_scale is not None:
            error = error / action_scale
        per_row = error.square().mean(-1)
    if weight is None:
        return per_row.mean()
    return (per_row * weight).sum() / weight.sum().clamp_min(1e-12)


def action_scale(actions: torch.Tensor, space: gym.spaces.Box, floor_fraction: float = 0.01) -> torch.Tensor:
    """Per-dimension spread of demonstrated Box actions: their standard deviation, at least
    `floor_fraction` of the dimension's range (1e-3 where unbounded), so a dimension the
    expert never varies (a gun that never turns) is fitted as tightly as the others."""
    flat = actions.reshape(actions.shape[0], -1).float()
    spread = torch.as_tensor((space.high - space.low).reshape(-1), dtype=torch.float32, device=flat.device)
    floor = torch.where(torch.isfinite(spread), spread * floor_fraction, torch.full_like(spread, 1e-3))
    std = flat.std(0) if flat.shape[0] > 1 else torch.zeros_like(floor)
    return torch.maximum(std, floor)
