"""Compaction: one Ray task per shard reads it in insertion order and writes Parquet files.

Rows are sorted by (`episode_id`, `step`) inside each shard (an episode never spans
shards), so every episode is contiguous and a row's `next_obs` is the next row's `obs`.
Files are cut at episode boundaries. A new dataset is written all-or-nothing
(`storage.staged_folder`) and never over an existing one (`check_new_dataset`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from loguru import logger

from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.hdf5 import write_hdf5
from harvest.aggregation.integrity import DatasetError, DatasetIntegrityError
from harvest.aggregation.manifest import MANIFEST_NAME, FileEntry, Manifest, has_manifest
from harvest.aggregation.npz import write_npz
from harvest.aggregation.robocode_npz import write_dataset_npz
from harvest.aggregation.storage import Location, location, staged_folder
from harvest.aggregation.tfrecord import write_tfrecord
from harvest.cluster.logging import track
from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.episode_filter import FilterReport, filter_table
from harvest.rollout.images import check_image_column, with_encoded_images
from harvest.rollout.replay.replay import Replay


class DatasetExistsError(FileExistsError):
    """A dataset is already where a new one was to be written."""


def check_new_dataset(out: Location) -> None:
    """Refuse to write a dataset where one already is (a manifest there): choose a new folder.

    Raises:
        DatasetExistsError: naming the folder.
    """
    if has_manifest(out):
        raise DatasetExistsError(f"{out}: a dataset is already there; choose a new folder")


@dataclass
class ShardCompaction:
    files: list[FileEntry]
    rows: int
    skipped_rows: int
    episode_ids: np.ndarray
    complete_episodes: int
    collectors: list[int]
    filtered: FilterReport | None = None

    def merged(self, later: "ShardCompaction") -> "ShardCompaction":
        """This shard's files and counts followed by a later compaction's (rotations)."""
        filtered = (
            self.filtered
            if later.filtered is None
            else (later.filtered if self.filtered is None else self.filtered.merge(later.filtered))
        )
        return ShardCompaction(
            self.files + later.files,
            self.rows + later.rows,
            self.skipped_rows + later.skipped_rows,
            np.concatenate([self.episode_ids, later.episode_ids]),
            self.complete_episodes + later.complete_episodes,
            sorted({*self.collectors, *later.collectors}),
            filtered,
        )


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


def compact_source(
    source: ray.actor.ActorHandle | str | list[pa.RecordBatch],
    schema: BatchSchema,
    shard_index: int,
    out: Location | str,
    cfg: AggregationConfig,
) -> ShardCompaction:
    """Write one shard's rows as sorted Parquet files under `out` (in partition folders when
    `cfg.partition_by` asks); the rows come from its actor, a snapshot file path, or a list of
    record batches already in memory."""
    skipped = 0
    if isinstance(source, (list, str)):
        batches = source if isinstance(source, list) else list(read_snapshot(Path(source)))
        arrow_schema = schema.arrow_schema()
        table = pa.Table.from_batches(batches, schema=arrow_schema) if batches else arrow_schema.empty_table()
    else:
        table, _, skipped = read_rows(source, schema, 0, cfg.read_chunk_rows)
    return compact_table(table, schema, shard_index, location(out), cfg, skipped_rows=skipped)


def compact_table(
    table: pa.Table,
    schema: BatchSchema,
    shard_index: int,
    out: Location,
    cfg: AggregationConfig,
    skipped_rows: int = 0,
    stem: str | None = None,
    seen_hashes: set[str] | None = None,
    write_empty: bool = True,
    log_level: str = "INFO",
) -> ShardCompaction:
    """Sort `table` by (episode_id, step), filter its episodes (`cfg.filter`; `seen_hashes`
    carries dedupe state across calls) and write them as files named `<stem>-part-NNNNN.parquet`
    (default stem `shard-NNN`); an empty table still gives one empty file unless not `write_empty`."""
    log = logger.bind(actor=f"compact[{shard_index}]")
    if not _sorted_by_episode(table):  # sorting copies every column: skip it for rows already in order
        table = table.sort_by([("episode_id", "ascending"), ("step", "ascending")])
    report = None
    if cfg.filter is not None and not cfg.filter.is_empty():
        table, report = filter_table(
            table, cfg.filter, seen_hashes, obs_action=[*schema.obs_columns, *schema.action_columns]
        )
        log.log(
            log_level,
            "shard {}: kept {} of {} episodes ({} dropped: {})",
            shard_index,
            report.kept_episodes,
            report.episodes,
            report.episodes - report.kept_episodes,
            report.dropped or "none",
        )
    episode_ids = table.column("episode_id").to_numpy()
    done = pc.or_(table.column("terminated"), table.column("truncated")).to_numpy(zero_copy_only=False)
    files = []
    if table.num_rows or write_empty:
        files = _write_parquet_files(table, episode_ids, out, stem or f"shard-{shard_index:03d}", shard_index, cfg)
    unique_ids = np.unique(episode_ids)
    collectors = sorted(int(c) for c in np.unique(table.column("collector_id").to_numpy()))
    log.log(
        log_level,
        "shard {}: {} rows, {} episodes, {} files{}",
        shard_index,
        table.num_rows,
        unique_ids.size,
        len(files),
        f", {skipped_rows} rows lost to eviction" if skipped_rows else "",
    )
    return ShardCompaction(files, table.num_rows, skipped_rows, unique_ids, int(done.sum()), collectors, report)


def _sorted_by_episode(table: pa.Table) -> bool:
    """Whether the rows are already ordered by (episode_id, step)."""
    episodes = table.column("episode_id").to_numpy()
    steps = table.column("step").to_numpy()
    same = episodes[1:] == episodes[:-1]
    return bool(np.all(episodes[1:] >= episodes[:-1]) and np.all(steps[1:][same] > steps[:-1][same]))


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


def check_layout(schema: BatchSchema, cfg: AggregationConfig) -> None:
    """Raise a ValueError naming the setting unless partitions and image columns fit the schema."""
    check_partition_by(schema, cfg.partition_by)
    for name in cfg.image_compression:
        if name not in schema.columns:
            raise ValueError(
                f"aggregation.image_compression: no column {name!r}; the dataset has {list(schema.columns)}"
            )
        check_image_column(name, schema.columns[name].dtype, schema.columns[name].shape)


def check_partition_by(schema: BatchSchema, partition_by: list[str]) -> None:
    """Raise a ValueError naming the entry unless each is `time` or a scalar int/bool/string column."""
    for name in partition_by:
        if name == "time":
            continue
        spec = schema.columns.get(name)
        if spec is None:
            raise ValueError(
                f"aggregation.partition_by: no column {name!r}; use `time` or one of "
                f"{[n for n, c in schema.columns.items() if c.shape == ()]}"
            )
        if spec.shape != () or np.dtype(spec.dtype).kind not in "iubUSO":
            raise ValueError(
                f"aggregation.partition_by: column {name!r} is {np.dtype(spec.dtype)}{list(spec.shape)}; "
                "partitions need a scalar integer, boolean or string column"
            )


def episode_partitions(table: pa.Table, starts: np.ndarray, partition_by: list[str]) -> list[str]:
    """The partition folder of each episode (rows from `starts[i]`), from its first row: `time`
    gives `year=YYYY/month=MM/day=DD/hour=HH` (UTC) of its first step, so an episode is never
    split across folders; a column gives `name=value`."""
    parts: list[list[str]] = [[] for _ in starts]
    for name in partition_by:
        if name == "time":
            first = table.column("timestamp").take(pa.array(starts)).to_numpy(zero_copy_only=False)
            first = first.astype("datetime64[ns]")
            years = first.astype("datetime64[Y]").astype(np.int64) + 1970
            months = first.astype("datetime64[M]").astype(np.int64) % 12 + 1
            days = (first.astype("datetime64[D]") - first.astype("datetime64[M]")).astype(np.int64) + 1
            hours = (first.astype("datetime64[h]") - first.astype("datetime64[D]")).astype(np.int64)
            for i in range(starts.size):
                parts[i].append(f"year={years[i]:04d}/month={months[i]:02d}/day={days[i]:02d}/hour={hours[i]:02d}")
        else:
            values = table.column(name).take(pa.array(starts)).to_pylist()
            for i, value in enumerate(values):  # (strings URI-encoded, as pyarrow's hive partitioning reads them)
                text = str(int(value)) if isinstance(value, (bool, int)) else quote(str(value), safe="")
                parts[i].append(f"{name}={text}")
    return ["/".join(p) for p in parts]


def _write_parquet_files(
    table: pa.Table, episode_ids: np.ndarray, out: Location, stem: str, shard_index: int, cfg: AggregationConfig
) -> list[FileEntry]:
    out.make_dirs()
    if episode_ids.size == 0 or not cfg.partition_by:
        return _write_part_files(table, episode_ids, out, "", stem, shard_index, cfg)
    starts = np.flatnonzero(np.r_[True, episode_ids[1:] != episode_ids[:-1]])
    stops = np.r_[starts[1:], episode_ids.size]
    folders = episode_partitions(table, starts, cfg.partition_by)
    entries = []
    for folder in dict.fromkeys(folders):  # first-seen order
        mine = [i for i, f in enumerate(folders) if f == folder]
        rows = np.concatenate([np.arange(starts[i], stops[i]) for i in mine])
        piece = table.take(pa.array(rows))
        entries += _write_part_files(piece, episode_ids[rows], out, folder, stem, shard_index, cfg)
    return entries


def _write_part_files(
    table: pa.Table,
    episode_ids: np.ndarray,
    out: Location,
    folder: str,
    stem: str,
    shard_index: int,
    cfg: AggregationConfig,
) -> list[FileEntry]:
    """`table`'s rows as files in `out/folder`, cut at episode boundaries once a file holds
    `cfg.rows_per_file` rows or `cfg.max_file_bytes` bytes; each file is stored all-or-nothing
    and hashed as it is written."""
    cuts = _episode_cut_points(episode_ids, _row_group_rows(table, cfg))
    compression = None if cfg.compression == "none" else cfg.compression
    partition = dict(part.split("=", 1) for part in folder.split("/")) if folder else {}
    in_folder_names = [name for name in partition if name in table.column_names]  # not stored twice (Hive's layout)
    entries: list[FileEntry] = []
    group = 0  # the next row group (cuts[group]:cuts[group + 1]) to write
    while group < len(cuts) - 1 or not entries:
        start = cuts[group]
        name = f"{folder}/" * bool(folder) + f"{stem}-part-{len(entries):05d}.parquet"

        def produce(sink, start: int = start) -> None:
            nonlocal group
            writer = None
            while group < len(cuts) - 1:
                piece = table.slice(cuts[group], cuts[group + 1] - cuts[group]).drop_columns(in_folder_names)
                if cfg.image_compression:
                    piece = with_encoded_images(piece, cfg.image_compression, cfg.jpeg_quality)
                writer = writer or pq.ParquetWriter(sink, piece.schema, compression=compression)
                writer.write_table(piece)
                group += 1
                if cuts[group] - start >= cfg.rows_per_file or (
                    cfg.max_file_bytes is not None and sink.size >= cfg.max_file_bytes
                ):
                    break
            writer.close()

        size, sha256 = out.join(name).write_hashed(produce)
        stop = cuts[group]
        timestamps = table.column("timestamp").slice(start, stop - start)
        entries.append(
            FileEntry(
                path=name,
                rows=stop - start,
                bytes=size,
                sha256=sha256,
                shard_index=shard_index,
                episodes=int(np.unique(episode_ids[start:stop]).size),
                first_timestamp=_iso(pc.min(timestamps)),
                last_timestamp=_iso(pc.max(timestamps)),
                partition=partition,
            )
        )
    return entries


def _row_group_rows(table: pa.Table, cfg: AggregationConfig) -> int:
    """Rows per row group: a whole file's worth (`rows_per_file`) unless `max_file_bytes` asks
    for files to be closed by size, when groups of about a quarter of that size (uncompressed)
    let a file stop near its limit."""
    if cfg.max_file_bytes is None or table.num_rows == 0:
        return cfg.rows_per_file
    bytes_per_row = max(table.nbytes / table.num_rows, 1.0)
    return int(np.clip(cfg.max_file_bytes / 4 / bytes_per_row, 1, cfg.rows_per_file))


def _merged_reports(reports: list[FilterReport | None]) -> dict | None:
    present = [report for report in reports if report is not None]
    if not present:
        return None
    total = present[0]
    for report in present[1:]:
        total = total.merge(report)
    return asdict(total)


def _iso(scalar: pa.Scalar) -> str | None:
    return scalar.as_py().isoformat() if scalar.is_valid else None


def compact_replay(
    sources: list[ray.actor.ActorHandle] | list[str],
    schema: BatchSchema,
    out: Location | str | Path,
    cfg: AggregationConfig,
    run_id: str,
    env_id: str,
    timeout_s: float = 600.0,
    description: str | None = None,
) -> Manifest:
    """Blocks: compact every shard (actor or snapshot file) in parallel Ray tasks, then write
    `_manifest.json`, the partitions' `_index.json` and the other `cfg.formats` into `out` (a
    folder or an object-store URI), all-or-nothing and never over an existing dataset.
    `description` is the rows' one-sentence description where a format keeps one (`robocode_npz`).

    Raises:
        DatasetExistsError: a dataset is already at `out`.
        DatasetError: a snapshot file is missing or damaged (named; nothing is left at `out`).
    """
    out = location(out)
    check_layout(schema, cfg)
    check_new_dataset(out)
    with staged_folder(out, last=MANIFEST_NAME) as staging:
        task = ray.remote(compact_source).options(num_cpus=cfg.num_cpus)
        refs = [task.remote(source, schema, index, staging, cfg) for index, source in enumerate(sources)]
        try:
            done = dict(track(_as_completed(refs, timeout_s), "compact", "rows", size=lambda item: item[1].rows))
        except ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, DatasetError):  # one line naming the file; the task's traceback adds nothing
                raise err.cause from None
            raise
        return finish_dataset(
            [done[index] for index in range(len(refs))], schema, staging, cfg, run_id, env_id, description=description
        )


def _as_completed(refs: list[ray.ObjectRef], timeout_s: float) -> Iterator[tuple[int, ShardCompaction]]:
    """(index, result) of each task as it finishes.

    Raises:
        GetTimeoutError: not all are done within `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    index_of = {ref: index for index, ref in enumerate(refs)}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(deadline - time.monotonic(), 0))
        if not ready:
            raise ray.exceptions.GetTimeoutError(
                f"compaction: {len(pending)} shard(s) not done within {timeout_s:.0f}s"
            )
        yield index_of[ready[0]], ray.get(ready[0])


def write_dataset(
    batches: list[TransitionBatch],
    schema: BatchSchema,
    out: Location | str | Path,
    cfg: AggregationConfig,
    run_id: str,
    env_id: str,
    parents: list[str] | None = None,
) -> Manifest:
    """In this process, without Ray: write rows already in memory as a dataset, the same files
    and manifest that compacting a replay gives (for importers, tests, benches); all-or-nothing,
    and never over an existing dataset.

    Raises:
        DatasetExistsError: a dataset is already at `out`.
    """
    out = location(out)
    check_layout(schema, cfg)
    check_new_dataset(out)
    record_batches = [batch.to_arrow(schema) for batch in batches]
    with staged_folder(out, last=MANIFEST_NAME) as staging:
        result = compact_source(record_batches, schema, 0, staging, cfg)
        return finish_dataset([result], schema, staging, cfg, run_id, env_id, parents)


def finish_dataset(
    results: list[ShardCompaction],
    schema: BatchSchema,
    out: Location,
    cfg: AggregationConfig,
    run_id: str,
    env_id: str,
    parents: list[str] | None = None,
    in_progress: bool = False,
    rotations: int = 0,
    filtered: dict | None = None,
    description: str | None = None,
) -> Manifest:
    """The manifest over every shard's files (and the other formats on request), written into
    `out`; `in_progress` (a rotation during the run) writes the manifest alone, so marked.
    `filtered` replaces the shards' own filter reports (an edit's, with its criteria)."""
    all_episode_ids = np.concatenate([result.episode_ids for result in results])
    files = [entry for result in results for entry in result.files]
    manifest = Manifest(
        run_id=run_id,
        created_at=datetime.now(timezone.utc).isoformat(),
        env_id=env_id,
        rows=sum(result.rows for result in results),
        episodes=int(np.unique(all_episode_ids).size),
        episodes_complete=sum(result.complete_episodes for result in results),
        collectors=sorted({c for result in results for c in result.collectors}),
        schema=schema.to_json(),
        files=files,
        evicted_rows={str(index): result.skipped_rows for index, result in enumerate(results)},
        partition_by=list(cfg.partition_by),
        parents=list(parents or []),
        image_columns=dict(cfg.image_compression),
        filtered=filtered if filtered is not None else _merged_reports([result.filtered for result in results]),
        first_timestamp=min((e.first_timestamp for e in files if e.first_timestamp), default=None),
        last_timestamp=max((e.last_timestamp for e in files if e.last_timestamp), default=None),
        in_progress=in_progress,
        rotations=rotations,
    )
    if in_progress:
        manifest.write(out)
        return manifest
    lost = sum(manifest.evicted_rows.values())
    if lost:
        logger.warning(
            "the replay had evicted {} rows before compaction; raise replay.capacity_rows to keep every collected row",
            lost,
        )
    if "npz" in cfg.formats:
        manifest.npz = write_npz(out, manifest).name
        manifest.formats["npz"] = manifest.npz
    if "hdf5" in cfg.formats:
        manifest.formats["hdf5"] = write_hdf5(out, manifest, cfg.hdf5).name
    if "tfrecord" in cfg.formats:
        manifest.formats["tfrecord"] = write_tfrecord(out, manifest).name
    manifest.write(out)
    if "robocode_npz" in cfg.formats:  # read back through the manifest just written
        manifest.formats["robocode_npz"] = write_dataset_npz(out, description=description).name
        manifest.write(out)
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
    ray.get(
        [task.remote(shard, str(path), replay.schema) for shard, path in zip(replay.shards, paths)], timeout=timeout_s
    )
    (out_dir / "schema.json").write_text(json.dumps(replay.schema.to_json(), indent=2))
    return paths
