"""Integrity on read: every reader checks a dataset's files against its manifest.

The manifest lists each Parquet file with its size and sha256, hashed as it was written. When
a `Dataset` opens, `check_manifest` refuses, always:

* a path outside the dataset folder (absolute, with `..`, or not in normal form),
* a file listed twice,
* a listed file that is not there;

and, unless `verify=False`, a file whose size differs from its entry (one listing call for all
of them). While a `FileReader` reads, it checks each file's sha256 (unless `verify=False`): the
first read of a file takes its bytes into memory once (a local file is memory-mapped: the page
cache itself, no copy) and hashes them in a thread while the Parquet is parsed from that
buffer; no row is given away before size and hash match, so no row of a damaged file is ever
returned, and the disk is not read a second time. A file is hashed at most once per reader
(one per `Dataset`, and a copy sent to a Ray task keeps what it has checked); later reads open
the file itself and read only the columns asked for. Checking costs the hash (~1.7 GB/s a core)
and, for a read of a few columns, reading the other columns' bytes too: `bench/datasets.py`
measures it.

Every problem is one line naming the file and what differs:

    /data/run/dataset/shard-000-part-00000.parquet: sha256 9f86d0..., the manifest says 3a7bd3...
"""

from __future__ import annotations

import hashlib
import posixpath
import threading
from typing import Callable, Iterator, TypeVar
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from harvest.aggregation.manifest import MANIFEST_NAME, FileEntry, Manifest
from harvest.aggregation.storage import Location, StorageError


class DatasetError(ValueError):
    """A dataset folder is missing, incomplete or inconsistent with its manifest."""


class DatasetIntegrityError(DatasetError):
    """A dataset's files differ from its manifest (size, sha256, unreadable, missing) or the
    manifest lists a path outside the dataset folder or a file twice. The message has one line
    per problem, each naming the file and what differs; `problems` lists them."""

    @property
    def problems(self) -> list[str]:
        return str(self).splitlines()


def outside_folder(path: str) -> bool:
    """Whether a manifest path could name something outside the dataset folder: absolute, with
    a `..` part, empty, or not in normal form (`./x`, `a//b`), which the writers never produce."""
    return (
        not path or path.startswith("/") or "\\" in path or ".." in path.split("/") or posixpath.normpath(path) != path
    )


def check_manifest(folder: Location, manifest: Manifest, check_sizes: bool = True) -> tuple[list[FileEntry], list[str]]:
    """The entries that can be read (each file once, in manifest order) and one line per
    problem: paths outside the folder, files listed twice, missing files and, with
    `check_sizes`, files whose size differs from their entry.

    Raises:
        StorageError: the folder cannot be listed.
    """
    problems: list[str] = []
    first_index: dict[str, int] = {}
    inside: list[FileEntry] = []
    for index, entry in enumerate(manifest.files):
        if outside_folder(entry.path):
            problems.append(
                f"{folder.join(MANIFEST_NAME)}: file {index} has the path {entry.path!r}, outside the "
                "dataset folder (absolute, with `..`, or not in normal form); refused"
            )
        elif entry.path in first_index:
            problems.append(
                f"{folder.join(entry.path)}: listed twice in {MANIFEST_NAME} (files "
                f"{first_index[entry.path]} and {index}); the second is refused"
            )
        else:
            first_index[entry.path] = index
            inside.append(entry)
    try:
        infos = folder.fs.get_file_info([folder.join(entry.path).path for entry in inside])
    except OSError as err:
        raise StorageError(f"{folder}: cannot list its files: {err}") from err
    readable, missing = [], []
    for entry, info in zip(inside, infos):
        if info.type != pafs.FileType.File:
            missing.append(entry.path)
        elif check_sizes and info.size != entry.bytes:
            problems.append(size_problem(folder.join(entry.path), info.size, entry.bytes))
        else:
            readable.append(entry)
    if missing:
        problems.append(f"{folder}: files listed in {MANIFEST_NAME} are missing: {missing}")
    return readable, problems


def size_problem(target: Location, actual: int, expected: int) -> str:
    return f"{target}: {actual:,} bytes, the manifest says {expected:,}"


Rows = TypeVar("Rows", pa.Table, pa.RecordBatch)


def partition_value(text: str, field: pa.Field) -> object:
    """A partition folder's value (`collector_id=3` -> 3) as the column's type: integers and
    booleans (written 0/1) as numbers, strings URI-decoded as pyarrow's hive partitioning does."""
    if pa.types.is_integer(field.type):
        return int(text)
    if pa.types.is_boolean(field.type):
        return bool(int(text))
    return unquote(text)


class FileReader:
    """Reads a dataset's Parquet files, checking each against its manifest entry on its first
    read (see the module doc). Picklable: a Ray task reads through its own copy, which hashes
    the files that task reads.

    Args:
        folder: the dataset's root; entries' paths are relative to it.
        verify: check sizes and hashes (False: parse the files as they are).
        schema: the dataset's Arrow schema, needed when it is partitioned by columns.
        partition_columns: columns whose values are in the folder names, not in the files (a
            file written before format 3 may also hold them; its own values are kept).
    """

    def __init__(
        self,
        folder: Location,
        verify: bool = True,
        schema: pa.Schema | None = None,
        partition_columns: list[str] | tuple[str, ...] = (),
    ) -> None:
        self.folder, self.verify = folder, verify
        self.schema, self.partition_columns = schema, tuple(partition_columns)
        if self.partition_columns and schema is None:
            raise ValueError(
                f"{folder}: a FileReader of a dataset partitioned by {list(partition_columns)} needs its schema"
            )
        self._verified: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def for_manifest(cls, folder: Location, manifest: Manifest, verify: bool = True) -> "FileReader":
        """The reader of the dataset `manifest` describes, partition columns put back."""
        from harvest.rollout.batch import BatchSchema

        columns = manifest.partition_columns()
        schema = BatchSchema.from_json(manifest.schema).arrow_schema() if columns else None
        return cls(folder, verify, schema, columns)

    def __getstate__(self) -> dict:
        return {
            "folder": self.folder,
            "verify": self.verify,
            "schema": self.schema,
            "partition_columns": self.partition_columns,
            "_verified": set(self._verified),
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def open(self, entry: FileEntry) -> pa.NativeFile:
        """A random-access file to parse `entry` from: its checked bytes in memory on the first
        read when verifying, the stored file itself otherwise.

        Raises:
            DatasetIntegrityError: the file is missing or its size or sha256 differs from `entry`.
            StorageError: it cannot be read.
        """
        handle, check = self._open(entry)
        check()
        return handle

    def _open(self, entry: FileEntry) -> tuple[pa.NativeFile, "_PendingCheck"]:
        """The file to parse and its check, still running: the hash is computed in a thread while
        the caller parses the buffer (hashlib and Parquet both release the GIL), and the caller
        calls the check before it gives any row away."""
        target = self.folder.join(entry.path)
        with self._lock:
            checked = not self.verify or entry.path in self._verified
        try:
            if checked:
                return target.fs.open_input_file(target.path), _PendingCheck()
            if target.is_local:  # (a file cut short while it is mapped stops the process: SIGBUS)
                data = pa.memory_map(target.path).read_buffer()
            else:
                with target.fs.open_input_stream(target.path) as stream:
                    data = stream.read_buffer()
        except FileNotFoundError as err:
            raise DatasetIntegrityError(f"{target}: missing (listed in {MANIFEST_NAME})") from err
        except OSError as err:
            raise StorageError(f"{target}: cannot read it: {err}") from err
        if data.size != entry.bytes:
            raise DatasetIntegrityError(size_problem(target, data.size, entry.bytes))

        def verified(digest: str) -> None:
            if digest != entry.sha256:
                raise DatasetIntegrityError(f"{target}: sha256 {digest}, the manifest says {entry.sha256}")
            with self._lock:
                self._verified.add(entry.path)

        return pa.BufferReader(data), _PendingCheck(data, verified)

    def read_table(self, entry: FileEntry, columns: list[str] | None = None) -> pa.Table:
        """The file's rows as stored (image columns still encoded), `columns` of them (None: all)."""
        handle, check = self._open(entry)
        with handle:
            try:
                table = pq.read_table(handle, columns=self._file_columns(columns))
            except (pa.ArrowInvalid, OSError) as err:  # Parquet's own errors about damaged data are OSErrors
                check()  # a hash that differs says more than the parser
                raise self.unreadable(entry, err) from err
        check()
        return self._with_partitions(table, entry, columns)

    def iter_batches(
        self, entry: FileEntry, batch_rows: int = 65_536, columns: list[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """The file's rows as stored, `batch_rows` at a time; the first batches are parsed while
        the hash runs and held until it matches."""
        handle, check = self._open(entry)
        with handle:
            try:
                batches = pq.ParquetFile(handle).iter_batches(
                    batch_size=batch_rows, columns=self._file_columns(columns)
                )
                held = []
                for batch in batches:
                    held.append(batch)
                    if check.done():
                        break
                check()
                for batch in held:
                    yield self._with_partitions(batch, entry, columns)
                for batch in batches:  # (not `yield from`: pyarrow's Cython generator, once exhausted by the
                    yield self._with_partitions(batch, entry, columns)  # loop above, raises StopIteration through it)
            except (pa.ArrowInvalid, OSError) as err:
                check()
                raise self.unreadable(entry, err) from err

    def _file_columns(self, columns: list[str] | None) -> list[str] | None:
        """The columns to parse from a file: those asked for, less the partition columns."""
        return None if columns is None else [name for name in columns if name not in self.partition_columns]

    def _with_partitions(self, rows: Rows, entry: FileEntry, columns: list[str] | None) -> Rows:
        """`rows` with the partition columns asked for filled from `entry.partition`, in the
        dataset schema's order (or the order of `columns`)."""
        wanted = [name for name in self.partition_columns if columns is None or name in columns]
        missing = [name for name in wanted if rows.schema.get_field_index(name) < 0]
        if not missing:
            return rows
        assert self.schema is not None  # __init__ refuses partition columns without the schema
        fields = {field.name: field for field in rows.schema}
        arrays = dict(zip(rows.schema.names, rows.columns))
        for name in missing:
            field = self.schema.field(name)
            if name not in entry.partition:
                raise DatasetIntegrityError(
                    f"{self.folder.join(entry.path)}: not in a {name}= folder, but the dataset is partitioned by {name}"
                )
            fields[name] = field
            arrays[name] = pa.repeat(
                pa.scalar(partition_value(entry.partition[name], field), field.type), rows.num_rows
            )
        order = (
            list(columns)
            if columns is not None
            else [name for name in self.schema.names if name in fields]
            + [name for name in fields if self.schema.get_field_index(name) < 0]
        )
        schema = pa.schema([fields[name] for name in order], metadata=rows.schema.metadata)
        return type(rows).from_arrays([arrays[name] for name in order], schema=schema)

    def unreadable(self, entry: FileEntry, err: Exception) -> DatasetIntegrityError:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        return DatasetIntegrityError(f"{self.folder.join(entry.path)}: cannot be read as Parquet ({first_line})")


class _PendingCheck:
    """The sha256 of a file's bytes, computed in a thread; calling it waits for the digest and
    hands it to `verified`, which raises when it differs. Without data: nothing to check."""

    def __init__(self, data: pa.Buffer | None = None, verified: Callable[[str], None] | None = None) -> None:
        self._verified, self._digest = verified, ""
        self._thread = None if data is None else threading.Thread(target=self._hash, args=(data,), daemon=True)
        if self._thread is not None:
            self._thread.start()

    def _hash(self, data: pa.Buffer) -> None:
        self._digest = hashlib.sha256(memoryview(data)).hexdigest()  # releases the GIL on large buffers

    def done(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def __call__(self) -> None:
        if self._thread is not None:
            self._thread.join()
            assert self._verified is not None  # given with the data, which started the thread
            self._verified(self._digest)


class VerifyingHandler(pafs.FileSystemHandler):
    """A read-only pyarrow file system over a dataset's: opening one of its Parquet files goes
    through a `FileReader` (checked on first read), so a `pyarrow.dataset` scan verifies as it
    reads. Use it as `pyarrow.fs.PyFileSystem(VerifyingHandler(...))`."""

    def __init__(self, reader: FileReader, entries: list[FileEntry]) -> None:
        self.reader, self.fs = reader, reader.folder.fs
        self.entries = {reader.folder.join(entry.path).path: entry for entry in entries}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyingHandler) and other.reader is self.reader

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "harvest-verifying"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(selector)

    def open_input_file(self, path: str) -> pa.NativeFile:
        entry = self.entries.get(path)
        return self.fs.open_input_file(path) if entry is None else self.reader.open(entry)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        entry = self.entries.get(path)
        return self.fs.open_input_stream(path) if entry is None else self.reader.open(entry)

    def _read_only(self, *args: object) -> None:
        raise OSError("a verifying dataset file system is read-only")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = delete_file = _read_only
    move = copy_file = open_output_stream = open_append_stream = _read_only
