"""Durable shards: a write-ahead log of inserted batches and checkpoints, so a shard actor
that Ray restarts after a crash (`replay.max_restarts`) comes back with every acknowledged row.

Layout of a shard's folder (`<replay.wal_dir>/shard-NNN/`):

    checkpoint-G.arrow   the ring's rows (oldest first) and the sampler's per-row state (IPC file)
    checkpoint-G.json    counters, the sampler's scalars, the last batch ids per source; written
                         last, so a checkpoint without its .json never counts
    wal-G.arrow, ...     every batch inserted after checkpoint G (an Arrow IPC stream; each
                         batch carries its source and batch id), flushed before the insert is
                         acknowledged

A restart loads the newest complete checkpoint and replays the logs from its generation on;
a log's torn last message (a crash mid-write, never acknowledged) is dropped. Checkpointing
starts a new log generation and deletes the older files.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
from loguru import logger

_NAME = re.compile(r"(wal|checkpoint)-(\d{6})\.(arrow|json)$")


@dataclass
class Restored:
    """What a shard folder held: the checkpoint (if any) and the logged batches after it."""

    checkpoint_rows: pa.Table | None = None
    checkpoint_state: dict[str, Any] = field(default_factory=dict)
    logged: list[tuple[pa.RecordBatch, str, int]] = field(default_factory=list)
    torn_batches: int = 0


class WriteAheadLog:
    """The log and checkpoints of one shard; `append` returns once the batch is in the file."""

    def __init__(self, folder: Path, arrow_schema: pa.Schema, fsync: bool = False) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.arrow_schema, self.fsync = arrow_schema, fsync
        self.generation = (
            max((int(m.group(2)) for p in self.folder.iterdir() if (m := _NAME.match(p.name))), default=-1) + 1
        )
        self._log = logger.bind(actor=f"WAL[{self.folder.name}]")
        self._open()

    def _open(self) -> None:
        self._sink = pa.OSFile(str(self.folder / f"wal-{self.generation:06d}.arrow"), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.arrow_schema)
        self._sink.flush()

    def append(self, batch: pa.RecordBatch, source: str, batch_id: int) -> None:
        self._writer.write_batch(batch, custom_metadata={"source": source, "batch_id": str(batch_id)})
        self._sink.flush()
        if self.fsync:
            os.fsync(self._sink.fileno())

    def checkpoint(self, rows: pa.Table, state: dict[str, Any]) -> Path:
        """Write checkpoint G+1 of `rows` and `state`, start log G+1, delete everything older."""
        self.close()
        self.generation += 1
        base = self.folder / f"checkpoint-{self.generation:06d}"
        with pa.OSFile(str(base.with_suffix(".arrow")), "wb") as sink, pa.ipc.new_file(sink, rows.schema) as writer:
            writer.write_table(rows)
        partial = base.with_suffix(".json.partial")
        partial.write_text(json.dumps(state))
        partial.replace(base.with_suffix(".json"))
        self._open()
        for path in self.folder.iterdir():
            match = _NAME.match(path.name)
            if match and int(match.group(2)) < self.generation:
                path.unlink()
        return base.with_suffix(".arrow")

    def close(self) -> None:
        self._writer.close()
        self._sink.close()

    @staticmethod
    def restore(folder: Path) -> Restored:
        """The newest complete checkpoint and the logged batches after it (nothing if no folder)."""
        restored = Restored()
        folder = Path(folder)
        if not folder.is_dir():
            return restored
        checkpoints = sorted(int(m.group(2)) for p in folder.glob("checkpoint-*.json") if (m := _NAME.match(p.name)))
        start = -1
        if checkpoints:
            start = checkpoints[-1]
            base = folder / f"checkpoint-{start:06d}"
            restored.checkpoint_state = json.loads(base.with_suffix(".json").read_text())
            with pa.memory_map(str(base.with_suffix(".arrow"))) as source:
                restored.checkpoint_rows = pa.ipc.open_file(source).read_all()
        logs = sorted((int(m.group(2)), p) for p in folder.glob("wal-*.arrow") if (m := _NAME.match(p.name)))
        for generation, path in logs:
            if generation < start:
                continue
            for item in _read_log(path):
                if item is None:
                    restored.torn_batches += 1
                else:
                    restored.logged.append(item)
        return restored


def _read_log(path: Path) -> Iterator[tuple[pa.RecordBatch, str, int] | None]:
    """The batches of one log in order; None for a torn tail (then it stops)."""
    data = path.read_bytes()
    if not data:
        return
    try:
        reader = pa.ipc.open_stream(pa.BufferReader(data))
    except pa.ArrowInvalid:
        yield None  # the schema itself was torn: nothing was acknowledged from this log
        return
    while True:
        try:
            item = reader.read_next_batch_with_custom_metadata()
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError):
            yield None
            return
        metadata = item.custom_metadata or {}
        yield (item.batch, metadata.get(b"source", b"unknown").decode(), int(metadata.get(b"batch_id", b"-1")))
