"""Environments behind the Gymnasium API, built by name from config.

`make_vector_env(EnvConfig(...))` returns a Gymnasium vector env for any Gymnasium id,
a Harvest-registered name, or a user's own env given as ``"package.module:Class"``.
The env's spaces define the dataset schema (`columns_for_space`). `import harvest` registers
Harvest's Gymnasium ids (`harvest/Generals-v0`, `harvest/Robocode-v0`: `harvest.GYMNASIUM_IDS`).
"""

from harvest.envs.config import EnvConfig
from harvest.envs.registry import EnvNotFoundError, make_vector_env, register_env, registered_envs
from harvest.envs.spaces import (
    ColumnSpec,
    UnsupportedSpaceError,
    columns_for_space,
    flatten_value,
    space_from_json,
    space_to_json,
    unflatten_value,
)

__all__ = [
    "ColumnSpec",
    "EnvConfig",
    "EnvNotFoundError",
    "UnsupportedSpaceError",
    "columns_for_space",
    "flatten_value",
    "make_vector_env",
    "register_env",
    "registered_envs",
    "space_from_json",
    "space_to_json",
    "unflatten_value",
]
