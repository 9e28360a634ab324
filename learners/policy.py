"""`TorchPolicy`: a learner's model played by collectors, with a weights version."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from envs.spaces import ColumnSpec, flatten_value
from learners.checkpoint import load_checkpoint
from learners.models import ConvPolicyModel, PolicyModel
from rollout.policies import PolicyOutput


class TorchPolicy:
    """Plays a `PolicyModel` or `ConvPolicyModel` on the CPU; `version` is written on every row it produces."""

    def __init__(self, model: PolicyModel | ConvPolicyModel, version: int = 0, deterministic: bool = True,
                 seed: int | None = None) -> None:
        self.model = model.to("cpu").eval()
        self.version = version
        self.deterministic = deterministic
        self._generator = torch.Generator().manual_seed(seed if seed is not None else 0)

    def extra_columns(self) -> Mapping[str, ColumnSpec]:
        return {}

    def set_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> None:
        self.model.load_state_dict(state_dict)
        self.version = version

    @torch.no_grad()
    def compute_actions(self, obs: Any) -> PolicyOutput:
        tensors = {name: torch.as_tensor(np.asarray(value)) for name, value in flatten_value(obs, "obs").items()}
        actions = self.model.act(tensors, deterministic=self.deterministic, generator=self._generator)
        return PolicyOutput(actions.numpy())


def load_torch_policy(checkpoint: str, deterministic: bool = True, seed: int | None = None) -> TorchPolicy:
    """The policy stored in a learner checkpoint (a `.safetensors` file)."""
    loaded = load_checkpoint(checkpoint, device="cpu")
    torch.set_num_threads(1)  # collectors are one-CPU actors; more threads only contend
    return TorchPolicy(loaded.model, loaded.version, deterministic=deterministic, seed=seed)
