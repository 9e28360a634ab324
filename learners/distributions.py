"""The action distributions of a policy model (`model.distribution(obs)`): a categorical over
masked logits for Discrete actions, a tanh-squashed Gaussian for Box actions. PPO trains them,
collectors sample from them, greedy play takes their mode."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

SQUASH_EDGE = 1e-6
"""Stored actions at a bound are moved this far inside (relative) before inverting the tanh."""


def choose(logits: torch.Tensor, deterministic: bool, generator: torch.Generator | None) -> torch.Tensor:
    """The most likely action of each row, or one sampled from the logits' softmax."""
    if deterministic:
        return logits.argmax(-1)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


class CategoricalPolicy:
    """Discrete actions: a categorical over masked logits (masked actions have probability 0)."""

    def __init__(self, logits: torch.Tensor, start: int = 0) -> None:
        self.logits = torch.log_softmax(logits.float(), -1)
        self.start = start

    def take(self, rows: torch.Tensor) -> "CategoricalPolicy":
        return CategoricalPolicy(self.logits[rows], self.start)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        return self.logits.gather(1, (action.long() - self.start)[:, None])[:, 0]

    def entropy(self) -> torch.Tensor:
        return -(self.logits.exp() * self.logits).sum(-1)

    def kl(self, other: "CategoricalPolicy") -> torch.Tensor:
        """KL(self || other) per row."""
        return (self.logits.exp() * (self.logits - other.logits)).sum(-1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return choose(self.logits, False, generator) + self.start


class SquashedGaussian:
    """Box actions: u ~ N(mean, exp(log_std)) per dimension, played as low + (tanh(u) + 1) / 2 ×
    (high − low) where both bounds are finite, as u where they are not. Dimensions BC fixed
    (`PolicyModel.fix_constant_actions`) are played exactly and carry no probability.

    log_prob inverts the squash (actions at a bound are moved `SQUASH_EDGE` inside) and adds
    the tanh's log-Jacobian; entropy and KL are those of the Gaussians over u. The tanh is the
    same bijection for both policies, so the KL is exact; the entropy is the usual stand-in
    (a squashed Gaussian's has no closed form)."""

    def __init__(
        self,
        mean: torch.Tensor,
        log_std: torch.Tensor,
        low: torch.Tensor,
        high: torch.Tensor,
        bounded: torch.Tensor,
        fixed: torch.Tensor,
        fixed_value: torch.Tensor,
    ) -> None:
        self.mean, self.log_std = mean.float(), log_std.float().expand_as(mean)
        self.low, self.high, self.bounded, self.fixed, self.fixed_value = low, high, bounded, fixed, fixed_value
        self.free = (~fixed).float()

    def take(self, rows: torch.Tensor) -> "SquashedGaussian":
        return SquashedGaussian(
            self.mean[rows], self.log_std[rows], self.low, self.high, self.bounded, self.fixed, self.fixed_value
        )

    def squash(self, u: torch.Tensor) -> torch.Tensor:
        squashed = self.low + (torch.tanh(u) + 1) * 0.5 * (self.high - self.low)
        return torch.where(self.fixed, self.fixed_value, torch.where(self.bounded, squashed, u))

    def unsquash(self, action: torch.Tensor) -> torch.Tensor:
        half = 0.5 * (self.high - self.low)
        y = ((action.float() - self.low) / half - 1).clamp(-1 + SQUASH_EDGE, 1 - SQUASH_EDGE)
        return torch.where(self.bounded, torch.atanh(y), action.float())

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        u = self.unsquash(action.reshape(self.mean.shape))
        base = torch.distributions.Normal(self.mean, self.log_std.exp()).log_prob(u)
        # log |d action / d u| = log(half) + log(1 - tanh(u)^2), the latter written stably
        log_jacobian = torch.log(0.5 * (self.high - self.low)) + 2 * (np.log(2.0) - u - nn.functional.softplus(-2 * u))
        return ((base - torch.where(self.bounded, log_jacobian, torch.zeros_like(u))) * self.free).sum(-1)

    def entropy(self) -> torch.Tensor:
        return ((0.5 + 0.5 * np.log(2 * np.pi) + self.log_std) * self.free).sum(-1)

    def kl(self, other: "SquashedGaussian") -> torch.Tensor:
        """KL(self || other) per row."""
        mine = torch.distributions.Normal(self.mean, self.log_std.exp())
        theirs = torch.distributions.Normal(other.mean, other.log_std.exp())
        return (torch.distributions.kl_divergence(mine, theirs) * self.free).sum(-1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device)
        return self.squash(self.mean + self.log_std.exp() * noise)

    def mode(self) -> torch.Tensor:
        return self.squash(self.mean)
