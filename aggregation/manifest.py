"""The dataset manifest: `_manifest.json` at the dataset's root, `_index.json` in each partition.

The manifest lists every Parquet file (path relative to the root, rows, bytes, sha256,
episodes, time range, partition values), the schema, the partitioning, the other formats
written beside the Parquet files, and the datasets this one was made from (`parents`). Each
partition folder (`year=2026/month=11/day=23/hour=14/`, `collector_id=3/`, ...) also gets an
`_index.json` with its own files, rows and time range, so a folder copied alone still says what
is in it.

The data folder holds only Parquet files and hive partition folders: the manifest, the other
formats (`_dataset.npz`, `_dataset.h5`, ...) and `harvest inspect`'s `_report/` have names that
start with `_`, which pyarrow and pandas skip, so they read the folder as it is (polars and DuckDB
read its `**/*.parquet`).
A column the files are partitioned by lives in the folder names alone (`collector_id=3/`), as
Hive, Spark and pyarrow lay it out; Harvest's readers put it back from `FileEntry.partition`.
Datasets written before format 3 (`manifest.json`, partition columns also in the files) open
as they are.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from harvest.aggregation.storage import Location

MANIFEST_NAME = "_manifest.json"
LEGACY_MANIFEST_NAME = "manifest.json"
"""The manifest's name in datasets written before format 3 (still read)."""
INDEX_NAME = "_index.json"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
TIME_PARTITION = "time"
"""`partition_by` entry for `year=/month=/day=/hour=` folders (no column of that name)."""


def manifest_location(root: Location) -> Location:
    """The manifest of the dataset at `root`: `_manifest.json`, or `manifest.json` in a dataset
    written before format 3 (the new name when neither is there)."""
    current = root.join(MANIFEST_NAME)
    if not current.is_file() and root.join(LEGACY_MANIFEST_NAME).is_file():
        return root.join(LEGACY_MANIFEST_NAME)
    return current


def has_manifest(root: Location) -> bool:
    """Whether a dataset (a manifest, in either layout) is at `root`."""
    return manifest_location(root).is_file()


@dataclass
class FileEntry:
    """One Parquet file: path relative to the dataset root, rows, bytes and what is in it."""

    path: str
    rows: int
    bytes: int
    sha256: str
    shard_index: int
    episodes: int
    first_timestamp: str | None
    last_timestamp: str | None
    partition: dict[str, str] = field(default_factory=dict)
    """Partition values of the folder the file is in (e.g. {"year": "2026", ...}); {} unpartitioned."""


@dataclass
class Manifest:
    run_id: str
    created_at: str
    env_id: str
    rows: int
    episodes: int
    episodes_complete: int
    collectors: list[int]
    schema: dict[str, Any]
    files: list[FileEntry]
    evicted_rows: dict[str, int] = field(default_factory=dict)
    """Rows each shard had already evicted before compaction (lost to the dataset)."""
    npz: str | None = None
    partition_by: list[str] = field(default_factory=list)
    """How the Parquet files are laid out in folders: [] flat, `time` (year=/month=/day=/hour= of
    each episode's first step), or column names."""
    formats: dict[str, str] = field(default_factory=dict)
    """Other formats written beside the Parquet files: format -> path relative to the root."""
    parents: list[str] = field(default_factory=list)
    """Datasets this one was made from (merge, split, filter, import)."""
    first_timestamp: str | None = None
    last_timestamp: str | None = None
    image_columns: dict[str, Literal["png", "jpeg"]] = field(default_factory=dict)
    """Columns stored as encoded images (`png`/`jpeg`) in the Parquet files; readers decode them."""
    filtered: dict[str, Any] | None = None
    """What `aggregation.filter` (or `harvest edit filter`) kept and dropped (episodes per reason)."""
    in_progress: bool = False
    """True while a run is still rotating rows into this dataset (`aggregation.rotate_every_s`):
    the files listed are complete, more will come."""
    rotations: int = 0
    """How many rotations wrote the files (0: compacted once, after collecting)."""
    format_version: int = FORMAT_VERSION

    def write(self, root: Location) -> Location:
        """`_manifest.json` at `root` and an `_index.json` in every partition folder (a manifest
        of the layout before format 3 at `root` is replaced)."""
        for folder, entries in self.partitions().items():
            index = {
                "dataset": self.run_id,
                "env_id": self.env_id,
                "partition": entries[0].partition,
                "rows": sum(entry.rows for entry in entries),
                "first_timestamp": min((e.first_timestamp for e in entries if e.first_timestamp), default=None),
                "last_timestamp": max((e.last_timestamp for e in entries if e.last_timestamp), default=None),
                "files": [{**asdict(entry), "path": entry.path.rsplit("/", 1)[-1]} for entry in entries],
                "schema": self.schema,
            }
            root.join(folder, INDEX_NAME).write_text(json.dumps(index, indent=2))
        target = root.join(MANIFEST_NAME)
        target.write_text(json.dumps(asdict(self), indent=2))
        legacy = root.join(LEGACY_MANIFEST_NAME)
        if legacy.is_file():
            legacy.fs.delete_file(legacy.path)
        return target

    def partition_columns(self) -> list[str]:
        """The columns the files are partitioned by (their values are in the folder names)."""
        return [name for name in self.partition_by if name != TIME_PARTITION]

    def partitions(self) -> dict[str, list[FileEntry]]:
        """Files by partition folder (relative to the root); the root itself when unpartitioned."""
        folders: dict[str, list[FileEntry]] = {}
        if not self.partition_by:
            return folders
        for entry in self.files:
            folders.setdefault(entry.path.rsplit("/", 1)[0] if "/" in entry.path else "", []).append(entry)
        return folders

    @classmethod
    def read(cls, root: Location) -> "Manifest":
        """The manifest of the dataset at `root` (either layout, see the module doc)."""
        target = manifest_location(root)
        try:
            data = json.loads(target.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{target}: not JSON ({err}); the manifest is damaged") from err
        if data.get("format_version") not in READABLE_VERSIONS:
            raise ValueError(
                f"{target}: format_version {data.get('format_version')!r}, expected one of {list(READABLE_VERSIONS)}"
            )
        data["files"] = [FileEntry(**entry) for entry in data["files"]]
        data["format_version"] = FORMAT_VERSION
        return cls(**data)
