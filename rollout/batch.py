"""Transition batches: one columnar layout from collector to dataset.

A `TransitionBatch` is a dict of numpy arrays with one leading length, the rows. A
`BatchSchema` names every column with its dtype and per-row shape; it comes from the env's
spaces, so nothing downstream guesses shapes. Batches convert to Arrow record batches and
back; n-d columns become Arrow fixed-shape tensors (zero-copy both ways for numeric data).

Columns (see ARCHITECTURE.md): `obs[.key]`, `action[.key]`, `reward`, `next_obs[.key]`,
`terminated`, `truncated`, and the provenance columns `episode_id`, `step`, `collector_id`,
`policy_version`, `timestamp`; policies may add extras (`action_mask`, `logp`, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import gymnasium as gym
import numpy as np
import pyarrow as pa

from harvest.envs.spaces import ColumnSpec, columns_for_space, space_from_json, space_to_json
from harvest.rollout.images import decode_images, image_format

TIMESTAMP_DTYPE = np.dtype("datetime64[ns]")
SCHEMA_METADATA_KEY = b"harvest.schema"

PROVENANCE_COLUMNS: dict[str, ColumnSpec] = {
    "episode_id": ColumnSpec(np.int64, ()),
    "step": ColumnSpec(np.int64, ()),
    "collector_id": ColumnSpec(np.int64, ()),
    "policy_version": ColumnSpec(np.int64, ()),
    "timestamp": ColumnSpec(TIMESTAMP_DTYPE, ()),
}


class BatchSchemaError(ValueError):
    """A batch does not match the schema of the replay or dataset it was given to."""


@dataclass(frozen=True)
class BatchSchema:
    """Every column of a transition batch, in order, plus the spaces they came from.

    Example:
        >>> schema = BatchSchema.for_spaces(env.single_observation_space, env.single_action_space)
        >>> schema.columns["obs"]
        ColumnSpec(dtype=dtype('float32'), shape=(4,))
    """

    columns: Mapping[str, ColumnSpec]
    observation_space: gym.Space
    action_space: gym.Space

    @classmethod
    def for_spaces(
        cls, observation_space: gym.Space, action_space: gym.Space, extras: Mapping[str, ColumnSpec] | None = None
    ) -> "BatchSchema":
        """The schema of transitions in an env with these (single-env) spaces."""
        columns: dict[str, ColumnSpec] = {}
        columns.update(columns_for_space(observation_space, "obs"))
        columns.update(columns_for_space(action_space, "action"))
        columns["reward"] = ColumnSpec(np.float32, ())
        columns.update(columns_for_space(observation_space, "next_obs"))
        columns["terminated"] = ColumnSpec(np.bool_, ())
        columns["truncated"] = ColumnSpec(np.bool_, ())
        columns.update(PROVENANCE_COLUMNS)
        for name, spec in (extras or {}).items():
            if name in columns:
                raise BatchSchemaError(f"extra column {name!r} clashes with a core column")
            columns[name] = spec
        return cls(columns, observation_space, action_space)

    @property
    def obs_columns(self) -> list[str]:
        return [name for name in self.columns if name == "obs" or name.startswith("obs.")]

    @property
    def action_columns(self) -> list[str]:
        return [name for name in self.columns if name == "action" or name.startswith("action.")]

    @property
    def row_bytes(self) -> int:
        return sum(spec.row_bytes for spec in self.columns.values())

    def validate(self, batch: "TransitionBatch", source: str) -> None:
        """Raise `BatchSchemaError` naming `source` and the column unless `batch` fits exactly."""
        missing = [name for name in self.columns if name not in batch.columns]
        if missing:
            raise BatchSchemaError(f"batch from {source}: missing columns {missing}")
        unexpected = [name for name in batch.columns if name not in self.columns]
        if unexpected:
            raise BatchSchemaError(
                f"batch from {source}: unexpected columns {unexpected}; expected {list(self.columns)}"
            )
        num_rows = batch.num_rows
        for name, spec in self.columns.items():
            column = batch.columns[name]
            if not isinstance(column, np.ndarray):
                raise BatchSchemaError(
                    f"column {name!r} from {source}: expected a numpy array, got {type(column).__name__}"
                )
            strings = spec.dtype.kind == "O" and column.dtype.kind in "OU"  # string columns: object or <U
            if (column.dtype != spec.dtype and not strings) or column.shape[1:] != spec.shape:
                raise BatchSchemaError(
                    f"column {name!r} from {source}: expected {spec.describe()}, "
                    f"got {column.dtype}{list(column.shape[1:])}"
                )
            if column.shape[0] != num_rows:
                raise BatchSchemaError(
                    f"column {name!r} from {source}: has {column.shape[0]} rows, expected {num_rows} "
                    f"like column {next(iter(batch.columns))!r}"
                )

    def empty(self, num_rows: int) -> "TransitionBatch":
        """A batch of `num_rows` uninitialised rows (preallocated storage)."""
        return TransitionBatch(
            {name: np.empty((num_rows, *spec.shape), spec.dtype) for name, spec in self.columns.items()}
        )

    def arrow_schema(self) -> pa.Schema:
        fields = [pa.field(name, _arrow_type(spec), nullable=False) for name, spec in self.columns.items()]
        return pa.schema(fields, metadata={SCHEMA_METADATA_KEY: json.dumps(self.to_json()).encode()})

    def to_json(self) -> dict[str, Any]:
        return {
            "columns": {name: spec.to_json() for name, spec in self.columns.items()},
            "observation_space": space_to_json(self.observation_space),
            "action_space": space_to_json(self.action_space),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "BatchSchema":
        return cls(
            {name: ColumnSpec.from_json(spec) for name, spec in data["columns"].items()},
            space_from_json(data["observation_space"]),
            space_from_json(data["action_space"]),
        )

    @classmethod
    def from_arrow_schema(cls, schema: pa.Schema) -> "BatchSchema":
        metadata = schema.metadata or {}
        if SCHEMA_METADATA_KEY not in metadata:
            raise BatchSchemaError(f"Arrow schema carries no {SCHEMA_METADATA_KEY.decode()!r} metadata")
        return cls.from_json(json.loads(metadata[SCHEMA_METADATA_KEY]))


@dataclass
class TransitionBatch:
    """Rows of transitions as a dict of numpy arrays sharing their first dimension.

    `shard_offsets`, when set, says the rows are grouped by replay shard: shard i's rows are
    `[shard_offsets[i], shard_offsets[i + 1])`. Any other operation drops it.
    """

    columns: dict[str, np.ndarray]
    shard_offsets: tuple[int, ...] | None = None

    @property
    def num_rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def take(self, indices: np.ndarray | slice) -> "TransitionBatch":
        """Rows at `indices` (a copy for index arrays, a view for slices)."""
        if isinstance(indices, slice):
            return TransitionBatch({name: column[indices] for name, column in self.columns.items()})
        # np.take along axis 0 is much faster than fancy indexing for n-d columns.
        return TransitionBatch({name: np.take(column, indices, axis=0) for name, column in self.columns.items()})

    def to_arrow(self, schema: BatchSchema | None = None) -> pa.RecordBatch:
        """This batch as an Arrow record batch; n-d columns become fixed-shape tensors."""
        if schema is not None:
            schema.validate(self, source="to_arrow")
            arrow_schema = schema.arrow_schema()
            arrays = [_to_arrow_array(self.columns[name]) for name in schema.columns]
            return pa.RecordBatch.from_arrays(arrays, schema=arrow_schema)
        names = list(self.columns)
        return pa.RecordBatch.from_arrays([_to_arrow_array(self.columns[n]) for n in names], names=names)

    @classmethod
    def from_arrow(cls, data: pa.RecordBatch | pa.Table) -> "TransitionBatch":
        """Numpy columns from an Arrow record batch or table written by `to_arrow` (encoded-image
        columns, see `rollout.images`, are decoded back to their pixels)."""
        columns = {}
        for field in data.schema:
            if image_format(field) is not None:
                metadata = data.schema.metadata or {}
                logical = (
                    json.loads(metadata[SCHEMA_METADATA_KEY])["columns"].get(field.name)
                    if SCHEMA_METADATA_KEY in metadata
                    else None
                )
                columns[field.name] = decode_images(
                    data.column(field.name), tuple(logical["shape"]) if logical else None
                )
            else:
                columns[field.name] = _to_numpy(data.column(field.name))
        return cls(columns)

    @classmethod
    def concat(cls, batches: Iterable["TransitionBatch"]) -> "TransitionBatch":
        batches = list(batches)
        if not batches:
            raise ValueError("concat needs at least one batch")
        return cls({name: np.concatenate([batch.columns[name] for batch in batches]) for name in batches[0].columns})

    def iter_slices(self, max_rows: int) -> Iterator["TransitionBatch"]:
        for start in range(0, self.num_rows, max_rows):
            yield self.take(slice(start, start + max_rows))


def _arrow_type(spec: ColumnSpec) -> pa.DataType:
    if spec.dtype == TIMESTAMP_DTYPE:
        value_type = pa.timestamp("ns", tz="UTC")
    elif spec.dtype.kind == "O":  # a string per row (e.g. a screenshot's path)
        value_type = pa.string()
    else:
        value_type = pa.from_numpy_dtype(spec.dtype)
    if not spec.shape:
        return value_type
    return pa.fixed_shape_tensor(value_type, list(spec.shape))


def _to_arrow_array(column: np.ndarray) -> pa.Array:
    if column.dtype == TIMESTAMP_DTYPE:
        return pa.array(column.view(np.int64), type=pa.timestamp("ns", tz="UTC"))
    if column.dtype.kind in "OU":
        return pa.array(column.astype(object), type=pa.string())
    if column.ndim == 1:
        return pa.array(column)
    return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(column))


def _to_numpy(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if isinstance(column.type, pa.FixedShapeTensorType):
        return column.to_numpy_ndarray()
    if pa.types.is_timestamp(column.type):
        return column.cast(pa.timestamp("ns", tz="UTC")).to_numpy(zero_copy_only=False).astype(TIMESTAMP_DTYPE)
    return column.to_numpy(zero_copy_only=False)
