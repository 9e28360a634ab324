"""What a `ReplayShard`'s calls return: small frozen records, cheap to send between actors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harvest.rollout.batch import TransitionBatch


@dataclass(frozen=True)
class InsertAck:
    """Returned once a batch is stored: where its rows went."""

    shard_index: int
    first_seq: int
    num_rows: int


@dataclass(frozen=True)
class ReadResult:
    """Rows read from a cursor, the cursor to continue from, and rows the cursor lost.

    `skipped_rows` > 0 means the ring overwrote rows between the requested cursor and the
    oldest row still stored; they are gone, and the reader is told so instead of silently
    skipping them.
    """

    batch: TransitionBatch
    next_cursor: int
    skipped_rows: int
    seqs: np.ndarray | None = None
    """Sequence numbers of the rows in `batch` (consecutive unless a filter dropped rows)."""
    end_seq: int = 0
    """The shard's next sequence number when it answered (rows stored = `end_seq`)."""


@dataclass(frozen=True)
class PriorityUpdate:
    """What `update_priorities` did: rows updated, and rows already overwritten (ignored)."""

    updated: int
    overwritten: int


@dataclass(frozen=True)
class ShardStats:
    shard_index: int
    size_rows: int
    capacity_rows: int
    inserted_rows: int
    evicted_rows: int
    inserted_batches: int
    rejected_batches: int
    episodes_completed: int
    episodes_stored: int
    memory_bytes: int
