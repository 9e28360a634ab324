"""Compaction: one Ray task per shard reads it in insertion order and writes Parquet files.

Rows are sorted by (`episode_id`, `step`) inside each shard (an episode never spans
shards), so every episode is contiguous and a row's `next_obs` is the next row's `obs`.
Files are cut at episode boundaries. A new dataset is written all-or-nothing
(`storage.staged_folder`) and never over an existing one (`check_new_dataset`). The rows come
from `shard_rows` (live shard actors or snapshot files); `part_files` lays out the files.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from loguru import logger

from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.hdf5 import write_hdf5
from harvest.aggregation.integrity import DatasetError
from harvest.aggregation.manifest import MANIFEST_NAME, FileEntry, Manifest, has_manifest
from harvest.aggregation.npz import write_npz
from harvest.aggregation.part_files import check_layout, write_parquet_files
from harvest.aggregation.robocode_npz import write_dataset_npz
from harvest.aggregation.shard_rows import read_rows, read_snapshot
from harvest.aggregation.storage import Location, location, staged_folder
from harvest.aggregation.tfrecord import write_tfrecord
from harvest.cluster.logging import track
from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.episode_filter import FilterReport, filter_table


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
        files = write_parquet_files(table, episode_ids, out, stem or f"shard-{shard_index:03d}", shard_index, cfg)
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


def _merged_reports(reports: list[FilterReport | None]) -> dict | None:
    present = [report for report in reports if report is not None]
    if not present:
        return None
    total = present[0]
    for report in present[1:]:
        total = total.merge(report)
    return asdict(total)


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
    _write_formats(manifest, out, cfg, description)
    return manifest


def _write_formats(manifest: Manifest, out: Location, cfg: AggregationConfig, description: str | None) -> None:
    """The formats `cfg.formats` asks for beside the Parquet files, each named in the manifest,
    and the manifest itself."""
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
