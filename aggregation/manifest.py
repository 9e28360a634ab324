"""The dataset manifest: `manifest.json` beside the Parquet files."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class FileEntry:
    """One Parquet file: path relative to the dataset folder, rows, bytes and what is in it."""

    path: str
    rows: int
    bytes: int
    sha256: str
    shard_index: int
    episodes: int
    first_timestamp: str | None
    last_timestamp: str | None


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
    format_version: int = FORMAT_VERSION

    def write(self, folder: Path) -> Path:
        path = folder / MANIFEST_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, folder: Path) -> "Manifest":
        path = folder / MANIFEST_NAME
        data = json.loads(path.read_text())
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}")
        data["files"] = [FileEntry(**entry) for entry in data["files"]]
        return cls(**data)
