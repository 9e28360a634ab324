"""Compaction: one Ray task per shard reads it in insertion order and writes Parquet files.

Rows are sorted by (`episode_id`, `step`) inside each shard (an episode never spans
shards), so every episode is contiguous and a row's `next_obs` is the next row's `obs`.
Files are cut at episode boundaries.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from loguru import logger

from aggregation.config import AggregationConfig
from aggregation.manifest import FileEntry, Manifest
from aggregation.npz import write_npz
from rollout.batch import BatchSchema, TransitionBatch
from rollout.replay.replay import Replay


@dataclass
class ShardCompaction:
    files: list[FileEntry]
    rows: int
    skipped_rows: int
    episode_ids: np.ndarray
    complete_episodes: int
    collectors: list[int]


def read_shard(shard: ray.actor.ActorHandle, schema: BatchSchema, chunk_rows: int,
               timeout_s: float = 120.0) -> Iterator[pa.RecordBatch | int]:
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


def read_snapshot(path: Path) -> Iterator[pa.RecordBatch]:
    """Record batches of a replay snapshot (Arrow IPC stream) written by `snapshot_replay`."""
    with pa.OSFile(str(path), "rb") as source, pa.ipc.open_stream(source) as reader:
        yield from reader


def compact_source(source: ray.actor.ActorHandle | str | list[pa.RecordBatch], schema: BatchSchema,
                   shard_index: int, out_dir: str, cfg: AggregationConfig) -> ShardCompaction:
    """Write one shard's rows as sorted Parquet files; the rows come from its actor, a snapshot
    file path, or a list of record batches already in memory."""
    log = logger.bind(actor=f"compact[{shard_index}]")
    batches, skipped = [], 0
    if isinstance(source, list):
        items = iter(source)
    elif isinstance(source, str):
        items = read_snapshot(Path(source))
    else:
        items = read_shard(source, schema, cfg.read_chunk_rows)
    for item in items:
        if isinstance(item, int):
            skipped += item
        else:
            batches.append(item)
    arrow_schema = schema.arrow_schema()
    table = pa.Table.from_batches(batches, schema=arrow_schema) if batches else arrow_schema.empty_table()
    table = table.sort_by([("episode_id", "ascending"), ("step", "ascending")])
    episode_ids = table.column("episode_id").to_numpy()
    done = pc.or_(table.column("terminated"), table.column("truncated")).to_numpy(zero_copy_only=False)
    files = _write_parquet_files(table, episode_ids, Path(out_dir), shard_index, cfg)
    unique_ids = np.unique(episode_ids)
    collectors = sorted(int(c) for c in np.unique(table.column("collector_id").to_numpy()))
    log.info("shard {}: {} rows, {} episodes, {} files{}", shard_index, table.num_rows, unique_ids.size,
             len(files), f", {skipped} rows lost to eviction" if skipped else "")
    return ShardCompaction(files, table.num_rows, skipped, unique_ids, int(done.sum()), collectors)


def _episode_cut_points(episode_ids: np.ndarray, rows_per_file: int) -> list[int]:
    """Row offsets that split the (sorted) rows into files of about `rows_per_file` rows each,
    only where a new episode starts."""
    if episode_ids.size == 0:
        return [0, 0]
    starts = np.flatnonzero(np.r_[True, episode_ids[1:] != episode_ids[:-1]])
    cuts, last = [0], 0
    for start in starts[1:]:
        if start - last >= rows_per_file:
            cuts.append(int(start))
            last = int(start)
    cuts.append(int(episode_ids.size))
    return cuts


def _write_parquet_files(table: pa.Table, episode_ids: np.ndarray, out_dir: Path, shard_index: int,
                         cfg: AggregationConfig) -> list[FileEntry]:
    out_dir.mkdir(parents=True, exist_ok=True)
    cuts = _episode_cut_points(episode_ids, cfg.rows_per_file)
    compression = None if cfg.compression == "none" else cfg.compression
    entries = []
    for part, (start, stop) in enumerate(zip(cuts[:-1], cuts[1:])):
        if stop == start and part > 0:
            continue
        piece = table.slice(start, stop - start)
        name = f"shard-{shard_index:03d}-part-{part:05d}.parquet"
        path = out_dir / name
        pq.write_table(piece, path, compression=compression)
        timestamps = piece.column("timestamp")
        entries.append(FileEntry(
            path=name, rows=piece.num_rows, bytes=path.stat().st_size, sha256=_sha256(path),
            shard_index=shard_index, episodes=int(np.unique(episode_ids[start:stop]).size),
            first_timestamp=_iso(pc.min(timestamps)), last_timestamp=_iso(pc.max(timestamps))))
    return entries


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _iso(scalar: pa.Scalar) -> str | None:
    return scalar.as_py().isoformat() if scalar.is_valid else None


def compact_replay(sources: list[ray.actor.ActorHandle] | list[str], schema: BatchSchema, out_dir: Path,
                   cfg: AggregationConfig, run_id: str, env_id: str, timeout_s: float = 600.0) -> Manifest:
    """Blocks: compact every shard (actor or snapshot file) in parallel Ray tasks, then write
    `manifest.json` (and `dataset.npz` when `cfg.formats` asks for it) into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    task = ray.remote(compact_source).options(num_cpus=cfg.num_cpus)
    refs = [task.remote(source, schema, index, str(out_dir), cfg) for index, source in enumerate(sources)]
    results: list[ShardCompaction] = ray.get(refs, timeout=timeout_s)
    return _finish_dataset(results, schema, out_dir, cfg, run_id, env_id)


def write_dataset(batches: list[TransitionBatch], schema: BatchSchema, out_dir: Path, cfg: AggregationConfig,
                  run_id: str, env_id: str) -> Manifest:
    """In this process, without Ray: write rows already in memory as a dataset folder, the
    same files and manifest that compacting a replay gives (for importers, tests, benches)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record_batches = [batch.to_arrow(schema) for batch in batches]
    result = compact_source(record_batches, schema, 0, str(out_dir), cfg)
    return _finish_dataset([result], schema, out_dir, cfg, run_id, env_id)


def _finish_dataset(results: list[ShardCompaction], schema: BatchSchema, out_dir: Path, cfg: AggregationConfig,
                    run_id: str, env_id: str) -> Manifest:
    """The manifest over every shard's files (and the NPZ on request), written into `out_dir`."""
    all_episode_ids = np.concatenate([result.episode_ids for result in results])
    manifest = Manifest(
        run_id=run_id, created_at=datetime.now(timezone.utc).isoformat(), env_id=env_id,
        rows=sum(result.rows for result in results), episodes=int(np.unique(all_episode_ids).size),
        episodes_complete=sum(result.complete_episodes for result in results),
        collectors=sorted({c for result in results for c in result.collectors}),
        schema=schema.to_json(), files=[entry for result in results for entry in result.files],
        evicted_rows={str(index): result.skipped_rows for index, result in enumerate(results)})
    lost = sum(manifest.evicted_rows.values())
    if lost:
        logger.warning("the replay had evicted {} rows before compaction; raise replay.capacity_rows "
                       "to keep every collected row", lost)
    if "npz" in cfg.formats:
        manifest.npz = write_npz(out_dir, manifest).name
    manifest.write(out_dir)
    return manifest


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
    ray.get([task.remote(shard, str(path), replay.schema) for shard, path in zip(replay.shards, paths)],
            timeout=timeout_s)
    (out_dir / "schema.json").write_text(json.dumps(replay.schema.to_json(), indent=2))
    return paths
