"""Collector modes beyond pushing every batch as it fills (`rollout.mode`).

* `TrajectoryGate` (`trajectory`): holds rows until their episode ends, then releases the whole
  episode if it passes the filter; unfinished episodes never reach the replay.
* `LocalBuffer` (`buffer`): keeps cut batches in the collector, optionally compressed (Arrow
  IPC, zstd or lz4), until `buffer_mb` is reached, then hands them all over to be pushed
  asynchronously.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.config import EpisodeFilter
from harvest.rollout.episode_filter import FilterReport, filter_table


class TrajectoryGate:
    """Whole episodes only, and only those `criteria` keeps (all finished ones when None)."""

    def __init__(self, schema: BatchSchema, criteria: EpisodeFilter | None) -> None:
        self.schema, self.criteria = schema, criteria
        self._pending: TransitionBatch | None = None
        self._seen: set[str] = set()
        self.report = FilterReport()

    @property
    def pending_rows(self) -> int:
        return 0 if self._pending is None else self._pending.num_rows

    @property
    def pending_bytes(self) -> int:
        return 0 if self._pending is None else sum(column.nbytes for column in self._pending.columns.values())

    def add(self, batch: TransitionBatch) -> TransitionBatch | None:
        """The rows of the episodes `batch` finishes that pass; the rest of their rows wait."""
        rows = batch if self._pending is None else TransitionBatch.concat([self._pending, batch])
        ended = rows["terminated"] | rows["truncated"]
        finished = np.isin(rows["episode_id"], np.unique(rows["episode_id"][ended]))
        self._pending = rows.take(np.flatnonzero(~finished)) if (~finished).any() else None
        if not finished.any():
            return None
        complete = rows.take(np.flatnonzero(finished))
        if self.criteria is None or self.criteria.is_empty():
            ids = np.unique(complete["episode_id"])
            self.report = self.report.merge(FilterReport(ids.size, ids.size, complete.num_rows, complete.num_rows))
            return complete
        table = pa.Table.from_batches([complete.to_arrow(self.schema)])
        kept, report = filter_table(
            table, self.criteria, self._seen, obs_action=[*self.schema.obs_columns, *self.schema.action_columns]
        )
        self.report = self.report.merge(report)
        return TransitionBatch.from_arrow(kept) if kept.num_rows else None


class LocalBuffer:
    """Batches held in the collector (compressed when asked) until `limit_bytes` is reached."""

    def __init__(self, schema: BatchSchema, limit_bytes: int, compression: str | None) -> None:
        self.schema, self.limit_bytes, self.compression = schema, limit_bytes, compression
        self._held: list[TransitionBatch | pa.Buffer] = []
        self.nbytes = 0
        self.raw_bytes = 0

    def add(self, batch: TransitionBatch) -> list[TransitionBatch]:
        """Hold `batch`; when the buffer is full, everything held (to push now)."""
        raw = sum(column.nbytes for column in batch.columns.values())
        if self.compression:
            sink = pa.BufferOutputStream()
            options = pa.ipc.IpcWriteOptions(compression=self.compression)
            with pa.ipc.new_stream(sink, self.schema.arrow_schema(), options=options) as writer:
                writer.write_batch(batch.to_arrow(self.schema))
            compressed = sink.getvalue()
            self.nbytes += compressed.size
            held: TransitionBatch | pa.Buffer = compressed
        else:
            held = batch
            self.nbytes += raw
        self.raw_bytes += raw
        self._held.append(held)
        return self.drain() if self.nbytes >= self.limit_bytes else []

    def drain(self) -> list[TransitionBatch]:
        out: list[TransitionBatch] = []
        for held in self._held:
            if isinstance(held, pa.Buffer):
                with pa.ipc.open_stream(held) as reader:
                    out.extend(TransitionBatch.from_arrow(record_batch) for record_batch in reader)
            else:
                out.append(held)
        self._held, self.nbytes, self.raw_bytes = [], 0, 0
        return out
