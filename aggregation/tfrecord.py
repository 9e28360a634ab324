"""TFRecord export through the `tfrecord` package (readable without TensorFlow).

`_dataset.tfrecord` holds one `tf.train.Example` per row: every column flattened into a float
list (floats), an int64 list (integers, booleans, timestamps in ns since the epoch) or a bytes
list (strings). `_dataset.tfrecord.json` says how to get the rows back: each feature's kind,
dtype and shape (what `tfrecord.reader.tfrecord_loader`'s `description` needs, and what
`tf.io.parse_single_example` would). Streamed record batch by record batch; on object storage
the file is written locally, then uploaded whole.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from harvest.aggregation.dataset import iter_record_batches
from harvest.aggregation.manifest import Manifest
from harvest.aggregation.storage import Location
from harvest.rollout.batch import TransitionBatch

TFRECORD_NAME = "_dataset.tfrecord"


def feature_kinds(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per column: the TFRecord feature kind (`float`, `int`, `byte`), numpy dtype and row shape."""
    kinds = {}
    for name, spec in schema["columns"].items():
        dtype = np.dtype(spec["dtype"])
        kind = "float" if dtype.kind == "f" else "byte" if dtype.kind in "OUS" else "int"
        kinds[name] = {"kind": kind, "dtype": dtype.str, "shape": spec["shape"]}
    return kinds


def write_tfrecord(root: Location, manifest: Manifest) -> Location:
    """`_dataset.tfrecord` + `_dataset.tfrecord.json` beside the Parquet files."""
    from harvest.envs.extras import require

    TFRecordWriter = require("tfrecord.writer", "aggregation.formats: [tfrecord]").TFRecordWriter

    kinds = feature_kinds(manifest.schema)
    target = root.join(TFRECORD_NAME)
    with tempfile.TemporaryDirectory(prefix="harvest-tfrecord-") as scratch:
        local = Path(scratch) / TFRECORD_NAME
        writer = TFRecordWriter(str(local))
        try:
            for record_batch in iter_record_batches(root, manifest):
                columns = TransitionBatch.from_arrow(record_batch).columns
                flat = {}
                for name, values in columns.items():
                    if values.dtype.kind == "M":
                        values = values.astype("datetime64[ns]").astype(np.int64)
                    elif values.dtype.kind == "b":
                        values = values.astype(np.int64)
                    flat[name] = values.reshape(values.shape[0], -1) if kinds[name]["kind"] != "byte" else values
                for row in range(record_batch.num_rows):
                    writer.write(
                        {
                            name: (
                                values[row].encode() if kinds[name]["kind"] == "byte" else values[row],
                                kinds[name]["kind"],
                            )
                            for name, values in flat.items()
                        }
                    )
        finally:
            writer.close()
        target.upload(local)
    root.join(TFRECORD_NAME + ".json").write_text(
        json.dumps(
            {"features": kinds, "rows": manifest.rows, "env_id": manifest.env_id, "run_id": manifest.run_id}, indent=2
        )
    )
    return target


def read_tfrecord(path: str | Path) -> dict[str, np.ndarray]:
    """Every row of a `_dataset.tfrecord` as columns, with `tfrecord`'s own loader (no TensorFlow)."""
    from harvest.envs.extras import require

    tfrecord_loader = require("tfrecord.reader", "reading a _dataset.tfrecord").tfrecord_loader

    spec = json.loads(Path(f"{path}.json").read_text())["features"]
    parts: dict[str, list[Any]] = {name: [] for name in spec}
    for example in tfrecord_loader(str(path), None, {name: s["kind"] for name, s in spec.items()}):
        for name, value in example.items():
            parts[name].append(value)
    out = {}
    for name, s in spec.items():
        dtype = np.dtype(s["dtype"])
        if s["kind"] == "byte":
            out[name] = np.array([bytes(v).decode() for v in parts[name]], dtype=object)
        elif dtype.kind == "M":
            out[name] = np.concatenate(parts[name]).astype("datetime64[ns]")
        else:
            stacked = np.stack(parts[name]) if parts[name] else np.zeros((0, 1))
            out[name] = stacked.reshape(len(parts[name]), *s["shape"]).astype(dtype)
    return out
