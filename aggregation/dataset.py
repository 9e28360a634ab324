"""`Dataset`: a compacted dataset (manifest + Parquet files) on disk or in an object store,
read with pyarrow or Ray Data, each file checked against the manifest as it is read
(`aggregation.integrity`)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
from loguru import logger

from harvest.aggregation.integrity import (
    DatasetError,
    DatasetIntegrityError,
    FileReader,
    VerifyingHandler,
    check_manifest,
)
from harvest.aggregation.manifest import MANIFEST_NAME, FileEntry, Manifest, has_manifest
from harvest.aggregation.storage import Location, StorageError, location
from harvest.cluster.logging import track
from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.episode_filter import episode_runs


def iter_record_batches(
    root: Location, manifest: Manifest, batch_rows: int = 65_536, verify: bool = True
) -> Iterator[pa.RecordBatch]:
    """A dataset's rows in manifest order (each episode contiguous), a record batch at a time,
    each file checked against its entry first unless not `verify`."""
    reader = FileReader.for_manifest(root, manifest, verify)
    for entry in manifest.files:
        yield from reader.iter_batches(entry, batch_rows)


def iter_episodes(batches: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Whole episodes (all columns) from column batches in which each episode is contiguous."""
    pending: dict[str, list[np.ndarray]] = {}
    pending_id = None
    for columns in batches:
        ids = columns["episode_id"]
        for start, stop in episode_runs(ids):
            if ids[start] != pending_id:
                if pending_id is not None:
                    yield {name: np.concatenate(parts) for name, parts in pending.items()}
                pending, pending_id = {name: [] for name in columns}, ids[start]
            for name, values in columns.items():
                pending[name].append(values[start:stop])
    if pending_id is not None:
        yield {name: np.concatenate(parts) for name, parts in pending.items()}


def _as_booleans(table: pa.Table, names: list[str]) -> pa.Table:
    for name in names:
        table = table.set_column(table.schema.get_field_index(name), name, pc.cast(table[name], pa.bool_()))
    return table


def _decode_batch(table: pa.Table) -> dict[str, np.ndarray]:
    return TransitionBatch.from_arrow(table).columns


class Dataset:
    """A dataset written by compaction: a local folder or an object-store prefix (`s3://...`).

    Every read checks the files against the manifest (`aggregation.integrity`): `open` refuses
    paths outside the folder, files listed twice, missing files and, with `verify`, files of
    the wrong size; reads check each file's sha256 the first time they read it (`verify=False`
    skips sizes and hashes). With `skip_damaged` (for `harvest inspect`), damaged files are left
    out of every read instead and each problem is kept in `problems`.

    Example:
        >>> dataset = Dataset.open("artifacts/run-1/dataset")
        >>> dataset.read_columns(["obs", "action"])
        >>> dataset.to_ray().iter_torch_batches(batch_size=256)

    Raises:
        DatasetIntegrityError: a file differs from the manifest (one line per file).
    """

    def __init__(
        self,
        folder: Location,
        manifest: Manifest,
        verify: bool = True,
        skip_damaged: bool = False,
        entries: list[FileEntry] | None = None,
        problems: list[str] | None = None,
    ) -> None:
        self.folder = folder
        self.manifest = manifest
        self.schema = BatchSchema.from_json(manifest.schema)
        self.verify, self.skip_damaged = verify, skip_damaged
        self.entries = list(manifest.files if entries is None else entries)
        """The files this dataset reads: the manifest's, less the damaged ones when skipping them."""
        self.problems = list(problems or [])
        """Integrity problems found so far (with `skip_damaged`), one line each."""
        self.reader = FileReader.for_manifest(folder, manifest, verify)
        self._episode_files: dict[int, list[int]] | None = None
        """Episode id -> the indexes in `entries` of the files holding its rows (`episode_ids`)."""

    @classmethod
    def open(cls, where: str | Path | Location, verify: bool = True, skip_damaged: bool = False) -> "Dataset":
        """The dataset at `where`, its manifest checked (see the class doc).

        Raises:
            DatasetError: no manifest, or one that cannot be read.
            DatasetIntegrityError: the manifest lists bad paths or files that are missing or (with
                `verify`) of the wrong size; never with `skip_damaged`.
        """
        folder = location(where)
        try:
            if not has_manifest(folder):
                raise DatasetError(f"{folder}: no {MANIFEST_NAME}; expected a dataset written by `harvest compact`")
            manifest = Manifest.read(folder)
            entries, problems = check_manifest(folder, manifest, check_sizes=verify)
        except (StorageError, ValueError) as err:
            if isinstance(err, DatasetError):
                raise
            raise DatasetError(str(err)) from err
        if problems and not skip_damaged:
            raise DatasetIntegrityError("\n".join(problems))
        for problem in problems:
            logger.warning("{} (left out)", problem)
        return cls(folder, manifest, verify, skip_damaged, entries, problems)

    @property
    def files(self) -> list[str]:
        """The Parquet files as paths on `self.folder.fs` (for pyarrow and Ray Data with `filesystem=`)."""
        return [self.folder.join(entry.path).path for entry in self.entries]

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self.folder.fs

    def to_pyarrow(self) -> pads.Dataset:
        """A `pyarrow.dataset` of the files; with `verify`, its scans check each file on first open
        (a damaged one raises `DatasetIntegrityError`, even with `skip_damaged`)."""
        if not self.files:  # a dataset with no rows (and, when partitioned, no files)
            return pads.dataset(pa.Table.from_batches([], schema=self.schema.arrow_schema()))
        filesystem = pafs.PyFileSystem(VerifyingHandler(self.reader, self.entries)) if self.verify else self.folder.fs
        columns = self.manifest.partition_columns()
        if not columns:
            return pads.dataset(self.files, format="parquet", filesystem=filesystem)
        schema = self.schema.arrow_schema()  # partition columns from the folder names, typed as the schema says
        partitioning = pads.partitioning(pa.schema([schema.field(name) for name in columns]), flavor="hive")
        return pads.dataset(
            self.files,
            format="parquet",
            filesystem=filesystem,
            schema=schema,
            partitioning=partitioning,
            partition_base_dir=self.folder.path,
        )

    def to_ray(self, columns: list[str] | None = None, **read_kwargs: Any) -> Any:
        """A Ray Data dataset of the rows (image columns decoded to their pixels).

        With `verify`, one Ray task per file reads its bytes once, checks them and parses them,
        so no file is read twice (`ray.data.read_parquet` would open files on the driver first to
        learn the schema and sizes); `read_kwargs` for `read_parquet` then need `verify=False`.
        """
        import ray.data

        if not self.verify:
            partitioning, booleans = self._ray_partitioning()
            read_kwargs.setdefault("partitioning", partitioning)
            rows = ray.data.read_parquet(self.files, filesystem=self.folder.fs, **read_kwargs)
            rows = rows if columns is None else rows.select_columns(columns)
            booleans = [name for name in booleans if columns is None or name in columns]
            if booleans:  # (Ray's partitioning has no bool type: the folder's 0/1 come as integers)
                rows = rows.map_batches(functools.partial(_as_booleans, names=booleans), batch_format="pyarrow")
        elif read_kwargs:
            raise TypeError(
                f"{self.folder}: to_ray({', '.join(read_kwargs)}=...) passes options to "
                "ray.data.read_parquet, which does not verify; open the dataset with verify=False"
            )
        else:
            rows = ray.data.from_items(
                [{"path": entry.path} for entry in self.entries], override_num_blocks=max(1, len(self.entries))
            )
            rows = rows.map_batches(
                _ReadFiles(self.reader, self.entries, columns), batch_size=1, batch_format="pyarrow"
            )
        if self.manifest.image_columns:
            rows = rows.map_batches(_decode_batch, batch_format="pyarrow")
        return rows

    def _ray_partitioning(self) -> tuple[Any, list[str]]:
        """Ray Data's hive partitioning of the folder, partition columns typed as in the schema,
        and the boolean ones among them (read as 0/1 integers, to be cast)."""
        from ray.data.datasource import Partitioning, PartitionStyle

        kinds = {name: np.dtype(self.schema.columns[name].dtype).kind for name in self.manifest.partition_columns()}
        partitioning = Partitioning(
            PartitionStyle.HIVE,
            base_dir=self.folder.path,
            field_types={name: int if kind in "iub" else str for name, kind in kinds.items()},
        )
        return partitioning, [name for name, kind in kinds.items() if kind == "b"]

    def read_file(self, entry: FileEntry, columns: list[str] | None = None) -> pa.Table:
        """One file's rows as stored (image columns still encoded), checked on its first read."""
        return self.reader.read_table(entry, columns)

    def record_batches(self, batch_rows: int = 65_536, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """Record batches as stored, in manifest order; with `skip_damaged`, a damaged file is
        left out (rows it gave before the damage showed stay given) and named in `problems`."""
        for entry in self.entries:
            try:
                yield from self.reader.iter_batches(entry, batch_rows, columns)
            except DatasetIntegrityError as err:
                self._leave_out(err)

    def _leave_out(self, err: DatasetIntegrityError) -> None:
        """Re-raise `err`, unless damaged files are skipped: then record it (once) and go on."""
        if not self.skip_damaged:
            raise err
        if str(err) not in self.problems:
            self.problems.append(str(err))
            logger.warning("{} (left out)", err)

    def iter_batches(self, batch_rows: int = 65_536) -> Iterator[dict[str, np.ndarray]]:
        """Every column, `batch_rows` rows at a time, in manifest order (episodes contiguous)."""
        for batch in self.record_batches(batch_rows):
            yield TransitionBatch.from_arrow(batch).columns

    def iter_episodes(self) -> Iterator[dict[str, np.ndarray]]:
        """Every column of one whole episode at a time."""
        return iter_episodes(self.iter_batches())

    # Episodes by index, as Minari's datasets give them: len(dataset), dataset[i], sample_episodes(n).

    def episode_ids(self) -> np.ndarray:
        """The episode ids in dataset order (manifest order, then order within a file); read once."""
        files = self._files_by_episode()
        return np.fromiter(files, np.int64, len(files))

    def _files_by_episode(self) -> dict[int, list[int]]:
        """Episode id -> the indexes in `entries` of the files holding its rows (read on first use)."""
        if self._episode_files is None:
            files: dict[int, list[int]] = {}
            for index, entry in enumerate(self.entries):
                ids = self.read_file(entry, ["episode_id"]).column("episode_id").to_numpy()
                _, first = np.unique(ids, return_index=True)
                for episode in ids[np.sort(first)].tolist():
                    files.setdefault(episode, []).append(index)
            self._episode_files = files
        return self._episode_files

    def __len__(self) -> int:
        """The number of episodes (complete or cut off by the collection's end)."""
        return len(self.episode_ids())

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """Every column of the `index`-th episode (negative counts from the end), images decoded."""
        ids = self.episode_ids()
        if not -ids.size <= index < ids.size:
            raise IndexError(f"{self.folder}: episode index {index} out of range; the dataset has {ids.size} episodes")
        return self.episode(int(ids[index]))

    def episode(self, episode_id: int) -> dict[str, np.ndarray]:
        """Every column of the episode with this `episode_id`, in step order.

        Raises:
            KeyError: no episode has that id.
        """
        files = self._files_by_episode()
        if episode_id not in files:
            raise KeyError(f"{self.folder}: no episode {episode_id}")
        parts = [self.read_file(self.entries[index]) for index in files[episode_id]]
        table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        table = table.filter(pc.equal(table.column("episode_id"), episode_id)).sort_by("step")
        return TransitionBatch.from_arrow(table).columns

    def sample_episodes(self, n: int, seed: int | None = None) -> list[dict[str, np.ndarray]]:
        """`n` distinct episodes drawn uniformly at random (`seed` repeats the draw)."""
        ids = self.episode_ids()
        if not 0 <= n <= ids.size:
            raise ValueError(f"sample_episodes: n={n}; the dataset has {ids.size} episodes")
        chosen = np.random.default_rng(seed).choice(ids.size, size=n, replace=False)
        return [self.episode(int(ids[index])) for index in chosen]

    def read_columns(
        self, columns: list[str], max_rows: int | None = None, progress: str | None = None
    ) -> dict[str, np.ndarray]:
        """Numpy arrays of `columns`, file by file until `max_rows` rows are read (a bar named
        `progress` counting the rows, when given)."""
        unknown = [name for name in columns if name not in self.schema.columns]
        if unknown:
            raise DatasetError(f"{self.folder}: no columns {unknown}; it has {list(self.schema.columns)}")
        parts, rows = [], 0
        entries = (
            self.entries
            if progress is None
            else track(
                self.entries, progress, "rows", sum(entry.rows for entry in self.entries), lambda entry: entry.rows
            )
        )
        for entry in entries:
            if max_rows is not None and rows >= max_rows:
                break
            try:
                table = self.read_file(entry, columns)
            except DatasetIntegrityError as err:
                self._leave_out(err)
                continue
            parts.append(TransitionBatch.from_arrow(table))
            rows += table.num_rows
        if not parts:
            return {
                name: np.empty((0, *self.schema.columns[name].shape), self.schema.columns[name].dtype)
                for name in columns
            }
        batch = parts[0] if len(parts) == 1 else TransitionBatch.concat(parts)
        return (batch if max_rows is None else batch.take(slice(0, max_rows))).columns


class _ReadFiles:
    """Ray Data map_batches callable: the rows of the files named in its input rows, each read
    once and checked (the reader travels with the task)."""

    def __init__(self, reader: FileReader, entries: list[FileEntry], columns: list[str] | None) -> None:
        self.reader, self.columns = reader, columns
        self.entries = {entry.path: entry for entry in entries}

    def __call__(self, batch: pa.Table) -> pa.Table:
        tables = [self.reader.read_table(self.entries[path], self.columns) for path in batch["path"].to_pylist()]
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)
