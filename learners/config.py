"""The `learner:` section of a run config."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import ConfigDict, Field, StrictInt
from pydantic.dataclasses import dataclass


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class LearnerConfig:
    algorithm: Literal["bc"] = "bc"
    """Training algorithm. `bc`: behaviour cloning (cross-entropy for discrete actions, MSE for continuous)."""
    epochs: StrictInt = Field(default=10, ge=1)
    """Passes over the training split."""
    batch_size: StrictInt = Field(default=256, ge=1)
    """Samples per gradient step."""
    lr: float = Field(default=1e-3, gt=0)
    """Adam learning rate."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """`cosine`: anneal the learning rate to 0 over the whole run (step by step), so the last
    epochs settle instead of jittering by ~lr; it matters where small, systematic action errors
    add up over an episode (a gun that should not turn)."""
    weight_decay: float = Field(default=0.0, ge=0)
    """Adam weight decay (L2)."""
    continuous_loss: Literal["mse", "standardized"] = "mse"
    """Box actions: `mse` in the action's own units; `standardized`: each dimension's error
    divided by its spread in the demonstrations (std, at least 1 % of its range), so small
    but systematic errors in a dimension the expert barely uses are not drowned by the others."""
    model: Literal["auto", "mlp", "cnn"] = "auto"
    """Network: `mlp` over the flattened observation; `cnn` over a [C, H, W] board whose tiles
    the Discrete actions are laid out over (Generals.io); `auto` picks `cnn` where it fits."""
    hidden_sizes: list[StrictInt] = Field(default_factory=lambda: [256, 256])
    """Widths of the MLP's hidden layers."""
    conv_channels: list[StrictInt] = Field(default_factory=lambda: [32, 64, 64])
    """Output channels of the CNN's 3x3 convolutions."""
    validation_fraction: float = Field(default=0.1, ge=0, lt=1)
    """Share of episodes held out for validation (split by episode, never by row)."""
    skip_rows_where: list[str] = Field(default_factory=list)
    """Boolean dataset columns; rows where any is true are not trained or validated on (e.g.
    Robocode's `collision`, `disabled`, `post_round`, whose recovered actions are not exact)."""
    max_rows: Optional[StrictInt] = Field(default=None, ge=1)
    """Read at most this many rows of the dataset (None: all)."""
    num_gpus: float = Field(default=0.0, ge=0)
    """GPUs for the learner actor; it trains on CUDA when Ray gives it one."""
    num_cpus: float = Field(default=1.0, ge=0)
    """CPUs for the learner actor (also its torch thread count)."""
    seed: StrictInt = 0
    """Seeds the split, the shuffling and the weight init."""
