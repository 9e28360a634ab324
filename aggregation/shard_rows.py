"""A replay's rows out of its shard actors, in insertion order: read from the live actors
(`read_rows`, `read_shard`), or saved to snapshot files (Arrow IPC streams) that a later
`harvest compact` reads back once the actors are gone (`snapshot_replay`, `read_snapshot`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import ray

from harvest.aggregation.integrity import DatasetError, DatasetIntegrityError
from harvest.rollout.batch import BatchSchema
from harvest.rollout.replay.replay import Replay


def read_shard(
    shard: ray.actor.ActorHandle, schema: BatchSchema, chunk_rows: int, timeout_s: float = 120.0
) -> Iterator[pa.RecordBatch | int]:
    """Record batches of a shard actor in insertion order; an int is a count of lost rows."""
    cursor = 0
    while True:
        result = ray.get(shard.read.remote(cursor, chunk_rows), timeout=timeout_s)
        if result.skipped_rows:
            yield result.skipped_rows
        if result.batch.num_rows == 0:
            return
        yield result.batch.to_arrow(schema)
        cursor = result.next_cursor


def read_rows(
    shard: ray.actor.ActorHandle, schema: BatchSchema, cursor: int, chunk_rows: int, timeout_s: float = 120.0
) -> tuple[pa.Table, int, int]:
    """The rows a shard actor stored from `cursor` up to its end when the first read answered
    (rows inserted meanwhile wait for the next call), the cursor after them, and how many rows
    the ring had evicted before they could be read."""
    batches, skipped_rows, end = [], 0, None
    while end is None or cursor < end:
        result = ray.get(shard.read.remote(cursor, chunk_rows, stop_seq=end), timeout=timeout_s)
        end = result.end_seq if end is None else end
        skipped_rows += result.skipped_rows
        if result.batch.num_rows:
            batches.append(result.batch.to_arrow(schema))
        if result.next_cursor == cursor:
            break
        cursor = result.next_cursor
    arrow_schema = schema.arrow_schema()
    table = pa.Table.from_batches(batches, schema=arrow_schema) if batches else arrow_schema.empty_table()
    return table, cursor, skipped_rows


def read_snapshot(path: Path) -> Iterator[pa.RecordBatch]:
    """Record batches of a replay snapshot (Arrow IPC stream) written by `snapshot_replay`.

    Raises:
        DatasetError: the file is not there.
        DatasetIntegrityError: it is not a whole Arrow IPC stream (cut off or damaged).
    """
    try:
        with pa.OSFile(str(path), "rb") as source, pa.ipc.open_stream(source) as reader:
            yield from reader
    except FileNotFoundError as err:
        raise DatasetError(f"{path}: no such replay snapshot") from err
    except (pa.ArrowInvalid, OSError) as err:  # a stream cut inside a message body is a plain OSError
        raise DatasetIntegrityError(
            f"{path}: not a whole Arrow IPC stream, cut off or damaged ({str(err).splitlines()[0]})"
        ) from err


def snapshot_replay(replay: Replay, out_dir: Path, chunk_rows: int = 65_536, timeout_s: float = 600.0) -> list[Path]:
    """Blocks: write every shard's rows to `out_dir/shard-NNN.arrow` (Arrow IPC stream) so a
    later `harvest compact` can run after the replay actors are gone."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def write_one(shard: ray.actor.ActorHandle, path: str, schema: BatchSchema) -> int:
        rows = 0
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, schema.arrow_schema()) as writer:
            for item in read_shard(shard, schema, chunk_rows):
                if not isinstance(item, int):
                    writer.write_batch(item)
                    rows += item.num_rows
        return rows

    task = ray.remote(write_one).options(num_cpus=0.25)
    paths = [out_dir / f"shard-{index:03d}.arrow" for index in range(replay.num_shards)]
    ray.get(
        [task.remote(shard, str(path), replay.schema) for shard, path in zip(replay.shards, paths)], timeout=timeout_s
    )
    (out_dir / "schema.json").write_text(json.dumps(replay.schema.to_json(), indent=2))
    return paths
