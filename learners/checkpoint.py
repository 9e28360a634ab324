"""Checkpoints as safetensors files: weights plus the JSON needed to rebuild the model.

No pickle: the spaces, the model config and the training metrics travel as JSON in the
safetensors header metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
from safetensors import safe_open
from safetensors.torch import save_file

from harvest.envs.spaces import space_from_json, space_to_json
from harvest.learners.models import ConvPolicyModel, ModelSpec, PolicyModel, build_policy_model
from harvest.rollout.policies import CHECKPOINT_HEADER_KEY, CheckpointError, CheckpointSpaceError

__all__ = ["Checkpoint", "CheckpointError", "CheckpointSpaceError", "load_checkpoint", "save_checkpoint"]


@dataclass
class Checkpoint:
    model: PolicyModel | ConvPolicyModel
    version: int
    info: dict[str, Any]
    spec: ModelSpec
    """What rebuilds the model (saved with it)."""


def save_checkpoint(
    path: Path, model: PolicyModel | ConvPolicyModel, spec: ModelSpec | list[int], version: int, info: dict[str, Any]
) -> Path:
    """Write `model`'s weights and what rebuilds it (spaces, `spec`) to `path` (a .safetensors file)."""
    if not isinstance(spec, ModelSpec):
        spec = ModelSpec("mlp", list(spec))
    header = {
        "observation_space": space_to_json(model.observation_space),
        "action_space": space_to_json(model.action_space),
        "model": spec.to_json(),
        "hidden_sizes": spec.hidden_sizes,
        "version": version,
        "info": info,
    }
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={CHECKPOINT_HEADER_KEY: json.dumps(header)})
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, device: str = "cpu") -> Checkpoint:
    """Rebuild the model saved at `path`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt", device=device) as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as err:  # safetensors raises its own SafetensorError, not exported stably
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint: {err}") from err
    if CHECKPOINT_HEADER_KEY not in metadata:
        raise CheckpointError(
            f"{path}: safetensors file has no {CHECKPOINT_HEADER_KEY!r} metadata; not a Harvest checkpoint"
        )
    header = json.loads(metadata[CHECKPOINT_HEADER_KEY])
    observation_space: gym.Space = space_from_json(header["observation_space"])
    action_space: gym.Space = space_from_json(header["action_space"])
    spec = ModelSpec.from_json(header["model"]) if "model" in header else ModelSpec("mlp", header["hidden_sizes"])
    model = build_policy_model(observation_space, action_space, spec)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or set(missing) - {"log_std"}:
        raise CheckpointError(
            f"{path}: weights do not fit the model its header describes ({spec.kind}): "
            f"missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    # Box checkpoints written before the Gaussian head have no log_std: it keeps its initial value.
    model.to(device).eval()
    return Checkpoint(model, int(header["version"]), header.get("info", {}), spec)
