"""Harvest: collect expert demonstrations and RL experience from many environments in parallel
on Ray, compact them into datasets, and train agents from them.

The repository's folders `envs/`, `rollout/`, `aggregation/`, `learners/` and `cluster/` are
this package's subpackages (`harvest.envs`, `harvest.rollout`, ...): only `harvest` is installed
at the top of site-packages, and a user's own `envs/` or `cluster/` folder shadows nothing.

The names below are imported when first used, so `import harvest` stays light (no Ray, no torch):

    >>> import harvest
    >>> result = harvest.run("examples/cartpole_bc.yaml", overrides=["rollout.steps=5000"])
    >>> dataset = harvest.Dataset.open(result.run_dir / "dataset")
    >>> policy = harvest.load_policy(result.checkpoint, env="CartPole-v1")
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

DISTRIBUTION = "harvest-rl"
"""The name Harvest is installed under (`pip install harvest-rl`); it imports as `harvest`."""

try:
    __version__ = metadata.version(DISTRIBUTION)
except metadata.PackageNotFoundError:  # a checkout that is not installed
    __version__ = "0+unknown"

_API = "harvest.cluster.api"
_EXPORTS = {
    # Jobs (each also a `harvest` command): see harvest.cluster.api.
    "run": _API, "collect": _API, "compact": _API, "train": _API, "evaluate": _API, "load_policy": _API,
    "make_config": _API, "RunResult": _API,
    # Datasets, configs, policies.
    "Dataset": "harvest.aggregation.dataset", "DatasetError": "harvest.aggregation.dataset",
    "DatasetIntegrityError": "harvest.aggregation.dataset", "RunConfig": "harvest.cluster.config",
    "ConfigError": "harvest.cluster.config", "load_config": "harvest.cluster.config",
    "Policy": "harvest.rollout.policies", "PolicyOutput": "harvest.rollout.policies",
    "CheckpointError": "harvest.rollout.policies", "RunFolderError": "harvest.cluster.run_folder",
}

__all__ = ["DISTRIBUTION", "__version__", *sorted(_EXPORTS)]

GYMNASIUM_IDS = {
    "harvest/Generals-v0": ("harvest.envs.generals.env:GeneralsEnv", "harvest.envs.generals.env:GeneralsVectorEnv"),
    "harvest/Robocode-v0": ("harvest.envs.robocode.env:RobocodeEnv", None),
}
"""Harvest's Gymnasium ids, registered by `import harvest`: `gym.make("harvest/Generals-v0")`
is one game against the scripted opponent, `gym.make_vec("harvest/Generals-v0", num_envs=N)`
the batched engine; the env modules load only when an env is made."""


def _register_gymnasium_ids() -> None:
    import gymnasium

    for env_id, (entry_point, vector_entry_point) in GYMNASIUM_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point, vector_entry_point=vector_entry_point)


_register_gymnasium_ids()


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'harvest' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
