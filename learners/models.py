"""Models built from spaces: an MLP over flattened observations, or a CNN over a board.

One place (`build_policy_model`) turns an observation space, an action space and a
`ModelSpec` into a network; the checkpoint stores all three to rebuild it. Where the
observation is a dict with an `action_mask` over a Discrete action space, both models mask
illegal actions out of their logits.

`model.distribution(obs)` is the stochastic policy PPO trains and collectors sample from: a
categorical over the (masked) logits for Discrete actions, a tanh-squashed Gaussian for Box
actions (a learned, state-independent log-std per dimension; the mean is what BC fits and
what greedy play uses); both are in `distributions.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from harvest.envs.spaces import columns_for_space, leaf_spaces
from harvest.learners.distributions import CategoricalPolicy, SquashedGaussian, choose

MASK_COLUMN = "obs.action_mask"
MASKED_LOGIT = -1e9
LOG_STD_INIT = -0.5
"""Initial log-std of the Gaussian head (before the tanh): std 0.61, i.e. exploration over
most of a bounded action's range without piling up at its ends."""


@dataclass(frozen=True)
class ModelSpec:
    """Which network to build: `mlp` (hidden_sizes), `cnn` over a board the actions are laid
    out over (conv_channels), or `pixels`: a convolutional encoder over an image, then the MLP."""

    kind: Literal["mlp", "cnn", "pixels"] = "mlp"
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])
    conv_channels: list[int] = field(default_factory=lambda: [32, 64, 64])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ModelSpec":
        return cls(data["kind"], list(data["hidden_sizes"]), list(data["conv_channels"]))


def mask_column(observation_space: gym.Space, action_space: gym.Space) -> str | None:
    """`obs.action_mask` when the observation carries a mask over the Discrete action space."""
    leaf = leaf_spaces(observation_space, "obs").get(MASK_COLUMN)
    if (
        isinstance(action_space, gym.spaces.Discrete)
        and isinstance(leaf, gym.spaces.MultiBinary)
        and np.atleast_1d(leaf.n).tolist() == [int(action_space.n)]
    ):
        return MASK_COLUMN
    return None


def board_column(observation_space: gym.Space, action_space: gym.Space) -> str | None:
    """The one [C, H, W] Box leaf of the observation, if the Discrete actions are laid out over
    its tiles: index `(row * W + col) * k + j` for k actions per tile, plus one last action."""
    boards = {
        name: leaf
        for name, leaf in leaf_spaces(observation_space, "obs").items()
        if isinstance(leaf, gym.spaces.Box) and len(leaf.shape) == 3
    }
    if len(boards) != 1 or not isinstance(action_space, gym.spaces.Discrete):
        return None
    [(name, board)] = boards.items()
    _, height, width = board.shape
    spatial = int(action_space.n) > 1 and (int(action_space.n) - 1) % (height * width) == 0
    return name if spatial else None


def image_column(observation_space: gym.Space) -> str | None:
    """The one image leaf of the observation: a Box of shape (H, W, C) with C in 1..4 or
    (k, H, W, C) for k stacked frames, H and W at least 16 (pixels, channels last, as
    Gymnasium's pixel envs give them)."""
    images = [
        name
        for name, leaf in leaf_spaces(observation_space, "obs").items()
        if isinstance(leaf, gym.spaces.Box)
        and len(leaf.shape) in (3, 4)
        and 1 <= leaf.shape[-1] <= 4
        and min(leaf.shape[-3:-1]) >= 16
    ]
    return images[0] if len(images) == 1 else None


class PixelEncoder(nn.Module):
    """A convolutional encoder over an image leaf (Nature-DQN style: 8x8/4, 4x4/2, 3x3/1 by
    default widths [32, 64, 64]); stacked frames become channels; uint8 pixels are scaled to [0, 1]."""

    def __init__(self, space: gym.spaces.Box, conv_channels: Sequence[int]) -> None:
        super().__init__()
        *frames, height, width, channels = space.shape
        self.scale = 1.0 / 255.0 if space.dtype == np.uint8 else 1.0
        in_channels = channels * (frames[0] if frames else 1)
        kernels = [(8, 4), (4, 2)] + [(3, 1)] * max(0, len(conv_channels) - 2)
        layers: list[nn.Module] = []
        for out_channels, (kernel, stride) in zip(conv_channels, kernels):
            layers += [nn.Conv2d(in_channels, out_channels, kernel, stride), nn.ReLU()]
            in_channels = out_channels
        self.net = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            self.output_size = int(
                self.net(torch.zeros(1, channels * (frames[0] if frames else 1), height, width)).shape[1]
            )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        *_, height, width, channels = image.shape
        x = image.float().reshape(image.shape[0], -1, height, width, channels)  # [B, k, H, W, C]
        x = x.permute(0, 1, 4, 2, 3).reshape(image.shape[0], -1, height, width)  # [B, k*C, H, W]
        return self.net(x * self.scale)


def _masked(logits: torch.Tensor, obs: dict[str, torch.Tensor], mask_name: str | None) -> torch.Tensor:
    if mask_name is None:
        return logits
    return logits.masked_fill(obs[mask_name] == 0, MASKED_LOGIT)


class ObsEncoder(nn.Module):
    """Flattens observation columns into one float vector: Box as is, Discrete as one-hot.

    Feature-wise mean/std (buffers set from training data) normalize the vector.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, observation_space: gym.Space, exclude: Sequence[str] = ()) -> None:
        super().__init__()
        self.parts: list[tuple[str, str, list[int]]] = []
        size = 0
        spaces = leaf_spaces(observation_space, "obs")
        for name, space in spaces.items():
            if name in exclude:
                continue
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
        if not self.parts:
            return torch.zeros(next(iter(obs.values())).shape[0], 0, device=self.mean.device)
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
    Box actions: a mean squashed into the bounds with tanh (where the bounds are finite), and a
    learned log-std that makes it a tanh-squashed Gaussian (`distribution`)."""

    # Buffers of a Box action space (registered in __init__).
    action_low: torch.Tensor
    action_high: torch.Tensor
    action_bounded: torch.Tensor
    action_fixed: torch.Tensor
    action_fixed_value: torch.Tensor

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        hidden_sizes: Sequence[int],
        pixel_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.observation_space = observation_space
        self.action_space = action_space
        self.mask_name = mask_column(observation_space, action_space)
        self.image_name = image_column(observation_space) if pixel_channels else None
        if pixel_channels and self.image_name is None:
            raise TypeError(
                f"model: pixels needs one image in the observation ((H, W, C) or stacked (k, H, W, C) "
                f"Box); got {observation_space}"
            )
        exclude = [self.image_name] if self.image_name else []
        self.encoder = ObsEncoder(observation_space, exclude)
        self.pixels: PixelEncoder | None = None
        if self.image_name and pixel_channels:  # (an image_name is only looked for with pixel_channels)
            image_space = leaf_spaces(observation_space, "obs")[self.image_name]
            assert isinstance(image_space, gym.spaces.Box)  # image_column picks Box leaves only
            self.pixels = PixelEncoder(image_space, pixel_channels)
        layers: list[nn.Module] = []
        width = self.encoder.output_size + (self.pixels.output_size if self.pixels is not None else 0)
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
            # Dimensions the demonstrations never vary are played exactly (see `fix_constant_actions`).
            self.register_buffer("action_fixed", torch.zeros(low.size, dtype=torch.bool))
            self.register_buffer("action_fixed_value", torch.zeros(low.size))
            self.log_std = nn.Parameter(torch.full((low.size,), LOG_STD_INIT))
        else:
            raise TypeError(
                f"action space {action_space} is not supported by the MLP policy; "
                "expected Discrete, MultiDiscrete or Box"
            )

    def _head(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        features = self.encoder(obs)
        if self.pixels is not None:
            assert self.image_name is not None  # __init__ builds `pixels` for that image only
            features = torch.cat([self.pixels(obs[self.image_name]), features], dim=1)
        return _masked(self.head(self.trunk(features)), obs, self.mask_name)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (discrete) or actions (continuous: the Gaussian's squashed mean), [batch, head size]."""
        out = self._head(obs)
        if isinstance(self.action_space, gym.spaces.Box):
            return self._gaussian(out).mode()
        return out

    def _gaussian(self, mean: torch.Tensor) -> SquashedGaussian:
        return SquashedGaussian(
            mean,
            self.log_std,
            self.action_low,
            self.action_high,
            self.action_bounded,
            self.action_fixed,
            self.action_fixed_value,
        )

    def distribution(self, obs: dict[str, torch.Tensor]) -> CategoricalPolicy | SquashedGaussian:
        """The stochastic policy at `obs` (Discrete or Box actions)."""
        out = self._head(obs)
        if isinstance(self.action_space, gym.spaces.Box):
            return self._gaussian(out)
        if isinstance(self.action_space, gym.spaces.Discrete):
            return CategoricalPolicy(out, int(self.action_space.start))
        raise TypeError(f"no policy distribution for {self.action_space}; Discrete and Box actions have one")

    @torch.no_grad()
    def fix_constant_actions(self, actions: torch.Tensor, tolerance: float = 1e-6) -> list[int]:
        """Box actions: play every dimension that is the same in all of `actions` (the
        demonstrations) as exactly that value. A regression head is only nearly right on such a
        dimension, and a small steady error adds up over an episode (a gun that should never
        turn drifts off target). Returns the fixed dimensions."""
        flat = actions.reshape(actions.shape[0], -1).float()
        if flat.shape[0] == 0:
            return []
        spread = flat.max(0).values - flat.min(0).values
        fixed = spread <= tolerance * (1.0 + flat.abs().max(0).values)
        self.action_fixed.copy_(fixed)
        self.action_fixed_value.copy_(torch.where(fixed, flat[0], torch.zeros_like(flat[0])))
        return [int(i) for i in torch.nonzero(fixed).flatten()]

    def act(
        self, obs: dict[str, torch.Tensor], deterministic: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Actions in the env's format: int64 indices (plus start) or float actions of the Box's shape."""
        out = self.forward(obs)
        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            return choose(out, deterministic, generator) + int(space.start)
        if isinstance(space, gym.spaces.MultiDiscrete):
            chosen = [
                choose(logits, deterministic, generator)
                for logits in out.split(space.nvec.reshape(-1).tolist(), dim=-1)
            ]
            return (torch.stack(chosen, dim=-1) + torch.as_tensor(space.start.reshape(-1), device=out.device)).reshape(
                out.shape[0], *space.nvec.shape
            )
        assert isinstance(space, gym.spaces.Box)  # __init__ refuses other action spaces
        if not deterministic:
            out = self.distribution(obs).sample(generator)
        return out.reshape(out.shape[0], *space.shape)


class ConvPolicyModel(nn.Module):
    """A fully convolutional policy over a [C, H, W] board with per-tile action logits.

    Convolutions (3×3, same padding) give each tile features; their mean over the board,
    through a linear layer, is added back to every tile so that distant parts of the board
    count. A 1×1 convolution gives each tile its k action logits, the pooled features the
    last action's logit (e.g. pass). Illegal actions are masked out when the observation has
    an `action_mask`.
    """

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, conv_channels: Sequence[int]) -> None:
        super().__init__()
        board_name = board_column(observation_space, action_space)
        if board_name is None:
            raise TypeError(
                f"model: cnn needs one [C, H, W] Box in the observation and Discrete actions laid out "
                f"over its tiles (n = H * W * k + 1); got {observation_space} and {action_space}"
            )
        if not conv_channels:
            raise ValueError("model: cnn needs at least one entry in conv_channels")
        board_space = leaf_spaces(observation_space, "obs")[board_name]
        # board_column names a board only for a [C, H, W] Box and Discrete actions
        assert isinstance(board_space, gym.spaces.Box) and isinstance(action_space, gym.spaces.Discrete)
        self.observation_space, self.action_space = observation_space, action_space
        self.board_name = board_name
        self.mask_name = mask_column(observation_space, action_space)
        channels, height, width = board_space.shape
        self.actions_per_tile = (int(action_space.n) - 1) // (height * width)
        layers: list[nn.Module] = []
        for out_channels in conv_channels:
            layers += [nn.Conv2d(channels, out_channels, 3, padding=1), nn.ReLU()]
            channels = out_channels
        self.trunk = nn.Sequential(*layers)
        self.board_context = nn.Linear(channels, channels)
        self.tile_head = nn.Conv2d(channels, self.actions_per_tile, 1)
        self.last_head = nn.Linear(channels, 1)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [batch, n]: tiles in row-major order, k per tile, then the last action."""
        features = self.trunk(obs[self.board_name].float())
        context = torch.relu(self.board_context(features.mean(dim=(2, 3))))
        features = torch.relu(features + context[:, :, None, None])
        tiles = self.tile_head(features).permute(0, 2, 3, 1).reshape(features.shape[0], -1)
        logits = torch.cat([tiles, self.last_head(context)], dim=1)
        return _masked(logits, obs, self.mask_name)

    def distribution(self, obs: dict[str, torch.Tensor]) -> CategoricalPolicy:
        return CategoricalPolicy(self.forward(obs), int(self.action_space.start))

    def act(
        self, obs: dict[str, torch.Tensor], deterministic: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return choose(self.forward(obs), deterministic, generator) + int(self.action_space.start)


def resolve_model_spec(
    kind: Literal["auto", "mlp", "cnn", "pixels"],
    observation_space: gym.Space,
    action_space: gym.Space,
    hidden_sizes: Sequence[int],
    conv_channels: Sequence[int],
) -> ModelSpec:
    """`auto` picks the CNN where the observation has a board that the actions are laid out
    over, the pixel encoder where it has an image, the MLP otherwise."""
    if kind == "auto":
        if board_column(observation_space, action_space) is not None:
            kind = "cnn"
        elif image_column(observation_space) is not None:
            kind = "pixels"
        else:
            kind = "mlp"
    return ModelSpec(kind, list(hidden_sizes), list(conv_channels))


def build_policy_model(
    observation_space: gym.Space, action_space: gym.Space, spec: ModelSpec | Sequence[int]
) -> PolicyModel | ConvPolicyModel:
    """The one place a policy network is built from spaces (a list of ints means an MLP of those widths)."""
    if not isinstance(spec, ModelSpec):
        spec = ModelSpec("mlp", list(spec))
    if spec.kind == "cnn":
        return ConvPolicyModel(observation_space, action_space, spec.conv_channels)
    if spec.kind == "pixels":
        return PolicyModel(observation_space, action_space, spec.hidden_sizes, spec.conv_channels)
    return PolicyModel(observation_space, action_space, spec.hidden_sizes)


def fit_normalizer(
    model: PolicyModel | ConvPolicyModel,
    tensors: dict[str, torch.Tensor],
    obs_names: list[str],
    train_index: torch.Tensor,
) -> None:
    """An MLP's input normalizer from (up to 100,000 of) the training rows: their mean and std."""
    if not isinstance(model, PolicyModel):
        return  # the CNN reads boards already scaled to [0, 1]
    with torch.no_grad():
        sample = train_index[:100_000]
        features = model.encoder.features({name: tensors[name][sample] for name in obs_names})
        model.encoder.mean.copy_(features.mean(0))
        model.encoder.std.copy_(
            features.std(0).clamp_min(1e-6) if features.shape[0] > 1 else torch.ones_like(model.encoder.std)
        )
