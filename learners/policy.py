"""`TorchPolicy`: a learner's model played by collectors, with a weights version."""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import torch

from harvest.envs.spaces import ColumnSpec, flatten_value
from harvest.learners.action_sets import ACTION_SET_KEY
from harvest.learners.checkpoint import load_checkpoint
from harvest.learners.distributions import CategoricalPolicy
from harvest.learners.models import ConvPolicyModel, PolicyModel
from harvest.rollout.policies import PolicyOutput

LOGITS_COLUMN = "policy_logits"
"""Rows a logits-recording policy collects carry its log-probabilities (log-softmax of the
masked logits) under this column."""


class TorchPolicy:
    """Plays a `PolicyModel` or `ConvPolicyModel` on the CPU; `version` is written on every row it produces."""

    def __init__(
        self,
        model: PolicyModel | ConvPolicyModel,
        version: int = 0,
        deterministic: bool = True,
        seed: int | None = None,
        record_logits: bool = False,
        action_lookup: np.ndarray | None = None,
    ) -> None:
        self.model = model.to("cpu").eval()
        self.action_lookup = action_lookup
        """A model trained over an action set, playing a Box env: its index -> the set's action."""
        self.version = version
        self.deterministic = deterministic
        self._generator = torch.Generator().manual_seed(seed if seed is not None else 0)
        if record_logits and not isinstance(model.action_space, gym.spaces.Discrete):
            raise ValueError(f"record_logits needs Discrete actions; the policy's are {model.action_space}")
        self.record_logits = record_logits

    def extra_columns(self) -> Mapping[str, ColumnSpec]:
        if self.record_logits:
            space = self.model.action_space
            assert isinstance(space, gym.spaces.Discrete)  # __init__ refuses record_logits otherwise
            return {LOGITS_COLUMN: ColumnSpec(np.float32, (int(space.n),))}
        return {}

    def set_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> None:
        self.model.load_state_dict(state_dict)
        self.version = version

    @torch.no_grad()
    def compute_actions(self, obs: Any) -> PolicyOutput:
        tensors = {name: torch.as_tensor(np.asarray(value)) for name, value in flatten_value(obs, "obs").items()}
        if not self.record_logits:
            actions = self.model.act(tensors, deterministic=self.deterministic, generator=self._generator).numpy()
            return PolicyOutput(actions if self.action_lookup is None else self.action_lookup[actions])
        distribution = self.model.distribution(tensors)
        assert isinstance(distribution, CategoricalPolicy)  # __init__ refuses record_logits without Discrete actions
        chosen = (
            distribution.logits.argmax(-1) + distribution.start
            if self.deterministic
            else distribution.sample(self._generator)
        )
        return PolicyOutput(chosen.numpy(), {LOGITS_COLUMN: distribution.logits.numpy().astype(np.float32)})


def load_torch_policy(
    checkpoint: str,
    deterministic: bool = True,
    seed: int | None = None,
    record_logits: bool = False,
    env_action_space: gym.Space | None = None,
) -> TorchPolicy:
    """The policy stored in a learner checkpoint (a `.safetensors` file). A model learned over an
    action set plays a Box `env_action_space` through the set its checkpoint records."""
    loaded = load_checkpoint(checkpoint, device="cpu")
    torch.set_num_threads(1)  # collectors are one-CPU actors; more threads only contend
    lookup = None
    if (
        isinstance(env_action_space, gym.spaces.Box)
        and isinstance(loaded.model.action_space, gym.spaces.Discrete)
        and ACTION_SET_KEY in loaded.info
    ):
        lookup = np.asarray(loaded.info[ACTION_SET_KEY], env_action_space.dtype)
        if lookup.shape[1:] != env_action_space.shape:
            raise ValueError(
                f"{checkpoint}: its action set has actions of shape {lookup.shape[1:]}, the env's are "
                f"{env_action_space.shape}"
            )
    return TorchPolicy(
        loaded.model,
        loaded.version,
        deterministic=deterministic,
        seed=seed,
        record_logits=record_logits,
        action_lookup=lookup,
    )
