"""Gymnasium spaces as dataset columns, and spaces to and from JSON.

A space is flattened into leaf columns: `Box(shape=(4,))` under prefix `obs` is one column
`obs` with per-row shape (4,); `Dict(pos=Box(2), hp=Discrete(5))` is `obs.hp` and `obs.pos`.
Gymnasium has no JSON form for spaces, so the few lines here write one: manifests and
checkpoints must rebuild spaces without pickle.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from numpy.typing import DTypeLike


class UnsupportedSpaceError(TypeError):
    """A space Harvest cannot store as fixed-shape columns (Text, Graph, Sequence, ...)."""


@dataclass(frozen=True, init=False)
class ColumnSpec:
    """One column: numpy dtype and the shape of one row (``()`` for scalars); dtype `object`
    is a string per row (Arrow `string`)."""

    dtype: np.dtype
    shape: tuple[int, ...]

    def __init__(self, dtype: DTypeLike, shape: Iterable[int]) -> None:
        # Any dtype-like (`np.float32`, `"<f4"`) and any sequence of ints are accepted, and stored
        # normalised, so two specs of one column compare equal.
        object.__setattr__(self, "dtype", np.dtype(dtype))
        object.__setattr__(self, "shape", tuple(int(d) for d in shape))

    @property
    def row_bytes(self) -> int:
        return int(self.dtype.itemsize * math.prod(self.shape))

    def describe(self) -> str:
        return f"{self.dtype}{list(self.shape)}"

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype.str, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ColumnSpec":
        return cls(np.dtype(data["dtype"]), tuple(data["shape"]))


def leaf_spaces(space: gym.Space, prefix: str) -> dict[str, gym.Space]:
    """The non-container spaces inside `space`, named `prefix` or `prefix.key[.subkey]` (Tuple: `prefix.0`)."""
    items: Iterable[tuple[object, gym.Space]]
    if isinstance(space, gym.spaces.Dict):
        items = space.spaces.items()
    elif isinstance(space, gym.spaces.Tuple):
        items = enumerate(space.spaces)
    else:
        return {prefix: space}
    leaves: dict[str, gym.Space] = {}
    for key, subspace in items:
        leaves.update(leaf_spaces(subspace, f"{prefix}.{key}"))
    return leaves


def columns_for_space(space: gym.Space, prefix: str) -> dict[str, ColumnSpec]:
    """Leaf columns of one row of `space`, named `prefix` or `prefix.key[.subkey]`."""
    return {name: _leaf_column(name, leaf) for name, leaf in leaf_spaces(space, prefix).items()}


def _leaf_column(name: str, space: gym.Space) -> ColumnSpec:
    if isinstance(space, gym.spaces.Box):
        return ColumnSpec(space.dtype, space.shape)
    if isinstance(space, gym.spaces.Discrete):
        return ColumnSpec(np.int64, ())
    if isinstance(space, gym.spaces.MultiDiscrete):
        return ColumnSpec(np.int64, space.nvec.shape)
    if isinstance(space, gym.spaces.MultiBinary):
        return ColumnSpec(np.int8, np.atleast_1d(space.n).tolist())
    raise UnsupportedSpaceError(
        f"{name}: {type(space).__name__} has no fixed per-row shape; "
        "expected Box, Discrete, MultiDiscrete, MultiBinary, Dict or Tuple"
    )


def flatten_value(value: Any, prefix: str) -> dict[str, Any]:
    """Split a (batched) value of a Dict/Tuple space into leaf columns named like `columns_for_space`."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten_value(sub, f"{prefix}.{key}"))
        return out
    if isinstance(value, tuple):
        out = {}
        for index, sub in enumerate(value):
            out.update(flatten_value(sub, f"{prefix}.{index}"))
        return out
    return {prefix: value}


def unflatten_value(columns: dict[str, Any], space: gym.Space, prefix: str) -> Any:
    """Inverse of `flatten_value`: rebuild the nested dict/tuple that `space` describes."""
    if isinstance(space, gym.spaces.Dict):
        return {key: unflatten_value(columns, sub, f"{prefix}.{key}") for key, sub in space.spaces.items()}
    if isinstance(space, gym.spaces.Tuple):
        return tuple(unflatten_value(columns, sub, f"{prefix}.{index}") for index, sub in enumerate(space.spaces))
    return columns[prefix]


def _bounds_to_json(bounds: np.ndarray) -> Any:
    # JSON has no infinity; write the strings "inf" and "-inf", which numpy reads back.
    def encode(value: Any) -> Any:
        if isinstance(value, list):
            return [encode(item) for item in value]
        return value if not isinstance(value, float) or math.isfinite(value) else str(value)

    return encode(bounds.tolist())


def space_to_json(space: gym.Space) -> dict[str, Any]:
    """A JSON-safe description of `space` that `space_from_json` turns back into an equal space."""
    if isinstance(space, gym.spaces.Box):
        low = space.low.astype(np.float64) if space.dtype.kind == "f" else space.low
        high = space.high.astype(np.float64) if space.dtype.kind == "f" else space.high
        return {
            "type": "Box",
            "dtype": space.dtype.str,
            "shape": list(space.shape),
            "low": _bounds_to_json(low),
            "high": _bounds_to_json(high),
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "start": space.start.tolist()}
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.atleast_1d(space.n).tolist()}
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "spaces": {key: space_to_json(sub) for key, sub in space.spaces.items()}}
    if isinstance(space, gym.spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_json(sub) for sub in space.spaces]}
    raise UnsupportedSpaceError(f"cannot describe {type(space).__name__} as JSON")


def space_from_json(data: dict[str, Any]) -> gym.Space:
    """Rebuild a space written by `space_to_json`."""
    kind = data.get("type")
    if kind == "Box":
        dtype = np.dtype(data["dtype"])
        low = np.asarray(data["low"], dtype=np.float64 if dtype.kind == "f" else dtype)
        high = np.asarray(data["high"], dtype=np.float64 if dtype.kind == "f" else dtype)
        return gym.spaces.Box(low=low.astype(dtype), high=high.astype(dtype), shape=tuple(data["shape"]), dtype=dtype)
    if kind == "Discrete":
        return gym.spaces.Discrete(data["n"], start=data.get("start", 0))
    if kind == "MultiDiscrete":
        return gym.spaces.MultiDiscrete(data["nvec"], start=data.get("start"))
    if kind == "MultiBinary":
        n = data["n"]
        return gym.spaces.MultiBinary(n[0] if len(n) == 1 else n)
    if kind == "Dict":
        return gym.spaces.Dict({key: space_from_json(sub) for key, sub in data["spaces"].items()})
    if kind == "Tuple":
        return gym.spaces.Tuple([space_from_json(sub) for sub in data["spaces"]])
    raise UnsupportedSpaceError(f"unknown space type {kind!r} in {data!r}")
