"""A dataset's Parquet part files: rows sorted by episode, cut into files at episode boundaries
(`aggregation.rows_per_file`, `max_file_bytes`), in Hive-style partition folders when
`aggregation.partition_by` asks, each file stored all-or-nothing and hashed as it is written."""

from __future__ import annotations

from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.manifest import FileEntry
from harvest.aggregation.storage import HashingSink, Location
from harvest.rollout.batch import BatchSchema
from harvest.rollout.images import check_image_column, with_encoded_images


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


def write_parquet_files(
    table: pa.Table, episode_ids: np.ndarray, out: Location, stem: str, shard_index: int, cfg: AggregationConfig
) -> list[FileEntry]:
    """`table`'s rows (sorted by episode) as part files under `out`, in their episodes' partition
    folders when `cfg.partition_by` asks."""
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

        def produce(sink: HashingSink, start: int = start) -> None:
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
            assert writer is not None  # produce runs only while a row group is left (cuts has 2+ points)
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


def _iso(scalar: pa.Scalar) -> str | None:
    return scalar.as_py().isoformat() if scalar.is_valid else None


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
