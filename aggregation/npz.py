"""NPZ export: one `_dataset.npz` with plural column names and JSON metadata (no pickle)."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa

from harvest.aggregation.integrity import FileReader
from harvest.aggregation.manifest import Manifest
from harvest.aggregation.storage import Location
from harvest.rollout.batch import TransitionBatch

NPZ_NAME = "_dataset.npz"

# Harvest column -> NPZ key (dict observations keep their suffix: obs.pos -> observations.pos).
_NPZ_KEYS = {
    "obs": "observations",
    "next_obs": "next_observations",
    "action": "actions",
    "reward": "rewards",
    "terminated": "terminated",
    "truncated": "truncated",
    "episode_id": "episode_ids",
    "step": "steps",
    "collector_id": "collector_ids",
    "policy_version": "policy_versions",
    "timestamp": "timestamps",
}


def npz_key(column: str) -> str:
    head, dot, rest = column.partition(".")
    return _NPZ_KEYS.get(head, head) + dot + rest


def write_npz(root: Location, manifest: Manifest) -> Location:
    """Write the dataset's Parquet files as one NPZ (each file checked against the manifest as it
    is read); loads with `np.load(path, allow_pickle=False)`."""
    reader = FileReader.for_manifest(root, manifest)
    tables = [reader.read_table(entry) for entry in manifest.files]
    table = pa.concat_tables(tables) if tables else None
    arrays: dict[str, np.ndarray] = {}
    if table is not None:
        table = table.sort_by([("episode_id", "ascending"), ("step", "ascending")])
        for name, column in TransitionBatch.from_arrow(table).columns.items():
            arrays[npz_key(name)] = column
    metadata = {
        "run_id": manifest.run_id,
        "env_id": manifest.env_id,
        "created_at": manifest.created_at,
        "rows": manifest.rows,
        "episodes": manifest.episodes,
        "schema": manifest.schema,
        "keys": {name: npz_key(name) for name in manifest.schema["columns"]},
    }
    arrays["metadata"] = np.array(json.dumps(metadata))
    buffer = io.BytesIO()
    # numpy's default, named: string columns (a teleoperation session's `source`, ...) are object arrays.
    np.savez(buffer, allow_pickle=True, **arrays)
    target = root.join(NPZ_NAME)
    target.write_bytes(pa.py_buffer(buffer.getbuffer()))
    return target
