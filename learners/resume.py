"""A learner's state between epochs, so a learner that died (or a resumed run) goes on from there.

`last.safetensors` holds the model's weights, the optimizer's per-parameter tensors, the
random generators' states and, as JSON in the header, everything else: the epoch, the
optimizer's hyper-parameters, the LR schedule and whatever the learner adds (its history, its
best loss). No pickle, as for checkpoints. It is written to a temporary file and renamed, so a
learner killed while writing it leaves the previous one whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

LAST_NAME = "last.safetensors"


@dataclass
class TrainingState:
    epoch: int
    """The last epoch (or update) finished."""
    extra: dict[str, Any]
    """What the learner saved beside the tensors (history, best loss, counters)."""
    tensors: dict[str, torch.Tensor]
    """The learner's own tensors (`extra_tensors` when saved), on the CPU."""


def save_training_state(
    path: Path,
    epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Any = None,
    generator: torch.Generator | None = None,
    extra: dict[str, Any] | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    owner: str | None = None,
) -> Path:
    """Write everything needed to continue after `epoch` to `path`; `owner` names the training it
    belongs to (see `training_owner`), so another training never goes on from it."""
    tensors = {f"model/{name}": tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    tensors.update(
        {f"extra/{name}": tensor.detach().to("cpu").contiguous() for name, tensor in (extra_tensors or {}).items()}
    )
    optimizer_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    if generator is not None:
        tensors["rng/generator"] = generator.get_state()
    tensors["rng/torch"] = torch.get_rng_state()
    header = {
        "epoch": epoch,
        "optimizer_groups": optimizer_state["param_groups"],
        "optimizer_scalars": scalars,
        "schedule": schedule.state_dict() if schedule is not None else None,
        "extra": extra or {},
        "owner": owner,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file(tensors, str(partial), metadata={"harvest_training_state": json.dumps(header)})
    partial.replace(path)
    return path


def training_owner(algorithm: str, dataset: Any = None, run_id: str | None = None) -> str:
    """Who a training state belongs to: the algorithm and the dataset it learns from (its run id,
    creation time and rows, which a dataset written again does not share) or, without one (PPO),
    the run."""
    if dataset is not None:
        manifest = dataset.manifest
        return f"{algorithm} on dataset {manifest.run_id} written {manifest.created_at} ({manifest.rows} rows)"
    return f"{algorithm} in run {run_id}"


def resumable(path: Path, owner: str, log: Any) -> bool:
    """Whether `path` holds a training state of `owner` to go on from. A state left by another
    training (an earlier run's, or one on a dataset since written again) is removed, and said."""
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = json.loads((handle.metadata() or {}).get("harvest_training_state", "{}"))
    except Exception as err:  # noqa: BLE001 - safetensors' SafetensorError derives from Exception only
        header = {"owner": f"an unreadable file ({err})"}
    if header.get("owner") == owner:
        return True
    log.warning(
        "{}: written by {}, not by this training ({}); starting afresh",
        path,
        header.get("owner") or "an unnamed training",
        owner,
    )
    path.unlink()
    return False


def load_training_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Any = None,
    generator: torch.Generator | None = None,
) -> TrainingState:
    """Load `path` into the model, optimizer, schedule and generator; the epoch and extras."""
    device = next(model.parameters()).device
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        metadata = handle.metadata() or {}
        if "harvest_training_state" not in metadata:
            raise ValueError(f"{path}: not a Harvest training state (no 'harvest_training_state' metadata)")
        header = json.loads(metadata["harvest_training_state"])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    model_state = {name[len("model/") :]: tensor for name, tensor in tensors.items() if name.startswith("model/")}
    missing, unexpected = model.load_state_dict(model_state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: its weights do not fit this learner's model: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)} (was the config changed since it was written?)"
        )
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        if name.startswith("optimizer/"):
            _, index, key = name.split("/", 2)
            state.setdefault(int(index), {})[key] = tensor.to(device) if key != "step" else tensor
    for index, values in header["optimizer_scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": header["optimizer_groups"]})
    if schedule is not None and header["schedule"] is not None:
        schedule.load_state_dict(header["schedule"])
    if generator is not None and "rng/generator" in tensors:
        generator.set_state(tensors["rng/generator"])
    torch.set_rng_state(tensors["rng/torch"])
    own = {name[len("extra/") :]: tensor for name, tensor in tensors.items() if name.startswith("extra/")}
    return TrainingState(int(header["epoch"]), header["extra"], own)
