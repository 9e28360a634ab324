"""`ReplayShard`: one slice of the replay, a plain class that Ray runs as an actor."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from loguru import logger

from harvest.cluster import metrics
from harvest.rollout.allocator import keep_batch_buffers_on_heap
from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.config import RateLimitConfig, ReplayConfig
from harvest.rollout.replay.change_signal import ChangeSignal
from harvest.rollout.replay.durability import Restored, WriteAheadLog
from harvest.rollout.replay.limiter import MinSize, RateLimited, SampleToInsertRatio
from harvest.rollout.replay.memory_budget import ReplayMemoryError, ring_capacity_rows
from harvest.rollout.replay.results import InsertAck, PriorityUpdate, ReadResult, ShardStats
from harvest.rollout.replay.ring import ColumnRing
from harvest.rollout.replay.row_filter import RowFilter
from harvest.rollout.replay.selectors import Prioritized, make_selector
from harvest.rollout.replay.source_acks import SourceAcks

KEY_SHARD_SHIFT = 48
"""A sampled row's key is `(shard_index << KEY_SHARD_SHIFT) | sequence number`."""


def importance_weights(probability: np.ndarray, num_stored: int, beta: float) -> np.ndarray:
    """(N·P(i))^-β, divided by the batch's largest so the weights only ever scale losses down."""
    weights = (num_stored * np.maximum(probability, 1e-300)) ** -beta
    return (weights / weights.max(initial=1e-300)).astype(np.float32)


class ReplayShard:
    """One slice of the replay: rows in a ring, and the rules that pick, drop and pace them.

    Args:
        cfg: the run's `replay:` section.
        schema: the columns every inserted batch must have.
        shard_index: this shard's position in the replay (for logs, metrics and acks).

    Example:
        >>> shard = ReplayShard(ReplayConfig(capacity_rows=1000), schema, shard_index=0)
        >>> shard.insert(batch)
        InsertAck(shard_index=0, first_seq=0, num_rows=256)
        >>> shard.read(cursor=0, max_rows=100).next_cursor
        100
    """

    def __init__(self, cfg: ReplayConfig, schema: BatchSchema, shard_index: int = 0, seed: int | None = None) -> None:
        self.cfg = cfg
        self.schema = schema
        self.shard_index = shard_index
        capacity_rows = ring_capacity_rows(cfg, schema, shard_index)
        self._ring = ColumnRing(
            schema,
            capacity_rows,
            cfg.compression,
            cfg.compression_level,
            cfg.capacity_bytes,
            copy_threads=max(1, int(cfg.num_cpus)),
        )
        self._selector = make_selector(cfg.sampler, capacity_rows, cfg.priority_alpha, cfg.priority_eps)
        if cfg.memory_limit_bytes is not None and self.memory_bytes > cfg.memory_limit_bytes:
            raise ReplayMemoryError(
                f"ReplayShard[{shard_index}]: {capacity_rows:,} rows of {schema.row_bytes:,} bytes take "
                f"{self.memory_bytes:,} bytes with the sampler's state, more than replay.memory_limit_bytes="
                f"{cfg.memory_limit_bytes:,}; lower replay.capacity_rows, set replay.capacity_bytes, or compress "
                "large columns (replay.compression)"
            )
        self._limiter = (
            SampleToInsertRatio(cfg.rate_limit.samples_per_insert, cfg.min_size_to_sample, cfg.rate_limit.error_buffer)
            if cfg.rate_limit is not None
            else MinSize(cfg.min_size_to_sample)
        )
        self._changed = ChangeSignal()
        self._rng = np.random.default_rng(seed)
        self._inserted_batches = 0
        self._rejected_batches = 0
        self._episodes_completed = 0
        self._sources = SourceAcks(shard_index)
        self._log = logger.bind(actor=f"ReplayShard[{shard_index}]")
        keep_batch_buffers_on_heap()
        self._tags = {"shard": str(shard_index)}
        self._wal: WriteAheadLog | None = None
        self._checkpointed_seq = 0
        if cfg.wal_dir:
            folder = Path(cfg.wal_dir).expanduser() / f"shard-{shard_index:03d}"
            self._restore(WriteAheadLog.restore(folder))
            self._wal = WriteAheadLog(folder, schema.arrow_schema(), cfg.wal_fsync)

    @property
    def memory_bytes(self) -> int:
        """Bytes held: the rows (plain and compressed) and the sampler's state."""
        return self._ring.memory_bytes + self._selector.nbytes

    def memory(self) -> dict:
        """Memory report: bytes held, per column (with the raw bytes of the rows stored), the
        sampler's share, bytes per stored row beside raw, and the limits."""
        ring = self._ring
        columns = ring.memory_by_column()
        rows_bytes = sum(column["bytes"] for column in columns.values())
        raw = sum(column["raw_bytes"] for column in columns.values())
        return {
            "shard": self.shard_index,
            "bytes": self.memory_bytes,
            "rows_bytes": rows_bytes,
            "sampler_bytes": self._selector.nbytes,
            "raw_bytes_stored": raw,
            "rows": ring.size,
            "capacity_rows": ring.capacity_rows,
            "bytes_per_row": rows_bytes / ring.size if ring.size else None,
            "raw_bytes_per_row": self.schema.row_bytes,
            "capacity_bytes": self.cfg.capacity_bytes,
            "memory_limit_bytes": self.cfg.memory_limit_bytes,
            "columns": columns,
        }

    def insert(
        self, batch: TransitionBatch | pa.RecordBatch, source: str = "unknown", batch_id: int | None = None
    ) -> InsertAck:
        """Validate and store `batch`; the returned ack means the rows are stored (and, on a
        durable shard, in its write-ahead log).

        `batch_id`: a number the source gives each batch (increasing); a batch id the shard
        already stored from that source is acknowledged again without storing it twice, so a
        push retried after the shard restarted is never duplicated.

        Raises:
            BatchSchemaError: the batch does not match the schema; nothing of it is stored.
            RateLimited: the rate limiter holds inserts back (`insert_wait` waits instead).
        """
        acked = self._sources.get(source, batch_id)
        if acked is not None:
            return acked
        if not self._limiter.can_insert():
            raise RateLimited(
                f"ReplayShard[{self.shard_index}]: inserts are held back by the rate limiter "
                f"({self._limiter.describe()})"
            )
        started = time.perf_counter()
        if isinstance(batch, pa.RecordBatch):
            batch = TransitionBatch.from_arrow(batch)
        try:
            self.schema.validate(batch, source=source)
        except ValueError:
            self._rejected_batches += 1
            metrics.replay_rejected_batches().inc(tags=self._tags)
            raise
        packed = self._packed_within_limit(batch, source)
        if self._wal is not None:
            wal_started = time.perf_counter()
            self._wal.append(batch.to_arrow(self.schema), source, -1 if batch_id is None else batch_id)
            metrics.replay_wal_write_seconds().observe(time.perf_counter() - wal_started, tags=self._tags)
        ack = self._store(batch, source, batch_id, packed)
        metrics.replay_insert_seconds().observe(time.perf_counter() - started, tags=self._tags)
        metrics.replay_inserted_rows().inc(ack.num_rows, tags={**self._tags, "source": source})
        self._gauges()
        self._changed.notify()
        if (
            self.cfg.checkpoint_every_rows
            and self._wal is not None
            and self._ring.next_seq - self._checkpointed_seq >= self.cfg.checkpoint_every_rows
        ):
            self.checkpoint()
        return ack

    def _packed_within_limit(self, batch: TransitionBatch, source: str) -> dict[str, list[bytes]] | None:
        """The batch's compressed columns, once storing them keeps the shard within its limit.

        Raises:
            ReplayMemoryError: the shard would grow past `replay.memory_limit_bytes`.
        """
        if not self.cfg.compression:
            return None
        packed, needed = self._ring.packed_bytes_needed(batch)
        limit = self.cfg.memory_limit_bytes
        if limit is not None:
            projected = self._ring.projected_bytes(batch.num_rows, needed) + self._selector.nbytes
            if projected > limit:
                self._rejected_batches += 1
                raise ReplayMemoryError(
                    f"ReplayShard[{self.shard_index}]: storing {batch.num_rows} rows from {source} would take the "
                    f"shard to {projected:,} bytes, past replay.memory_limit_bytes={limit:,} (it holds "
                    f"{self._ring.size:,} rows in {self.memory_bytes:,} bytes); set replay.capacity_bytes so old "
                    "rows are evicted, or raise the limit. Nothing of this batch was stored"
                )
        return packed

    def _store(
        self, batch: TransitionBatch, source: str, batch_id: int | None, packed: dict[str, list[bytes]] | None = None
    ) -> InsertAck:
        oldest_before = self._ring.oldest_seq
        first_seq, num_rows = self._ring.append(batch, packed)
        ring = self._ring
        if ring.oldest_seq > max(oldest_before, ring.next_seq - ring.capacity_rows):  # evicted for the byte budget
            self._selector.evicted(np.arange(oldest_before, ring.oldest_seq) % ring.capacity_rows)
        stored_from = max(first_seq, ring.oldest_seq)
        self._selector.inserted(np.arange(stored_from, first_seq + num_rows) % ring.capacity_rows)
        self._inserted_batches += 1
        self._limiter.on_insert(num_rows)
        self._episodes_completed += int(np.count_nonzero(batch["terminated"] | batch["truncated"]))
        ack = InsertAck(self.shard_index, first_seq, num_rows)
        self._sources.record(source, batch_id, ack)
        return ack

    def _gauges(self) -> None:
        ring = self._ring
        metrics.replay_size_rows().set(ring.size, tags=self._tags)
        metrics.replay_utilization().set(ring.size / ring.capacity_rows, tags=self._tags)
        metrics.replay_memory_bytes().set(self.memory_bytes, tags=self._tags)

    def checkpoint(self) -> str:
        """Durable shards: write the rows, the sampler's state and the counters, start a new log
        and delete the older files; returns the checkpoint's path."""
        if self._wal is None:
            raise ValueError(f"ReplayShard[{self.shard_index}].checkpoint: not durable (set replay.wal_dir)")
        ring = self._ring
        rows = ring.read(ring.oldest_seq, ring.size) if ring.size else self.schema.empty(0)
        table = pa.Table.from_batches([rows.to_arrow(self.schema)])
        row_state, selector_state = self.sampler_state()
        for name, values in row_state.items():
            table = table.append_column(f"__{name}", pa.array(values))
        state = {
            "oldest_seq": ring.oldest_seq,
            "next_seq": ring.next_seq,
            "inserted_batches": self._inserted_batches,
            "rejected_batches": self._rejected_batches,
            "episodes_completed": self._episodes_completed,
            "limiter": [self._limiter.inserted, self._limiter.sampled],
            "selector": selector_state,
            **self._sources.state(),
        }
        path = self._wal.checkpoint(table, state)
        self._checkpointed_seq = ring.next_seq
        self._log.info("checkpoint {}: {} rows", path.name, ring.size)
        return str(path)

    def sampler_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """The sampler's state: per stored row, oldest first (the priorities of a prioritized
        shard), and its scalars (the largest priority seen)."""
        ring = self._ring
        slots = np.arange(ring.oldest_seq, ring.next_seq) % ring.capacity_rows
        return self._selector.row_state(slots), self._selector.scalar_state()

    def restore_sampler_state(self, rows: dict[str, np.ndarray], scalars: dict) -> None:
        """Put back what `sampler_state` returned, into a shard holding the same rows."""
        ring = self._ring
        if any(len(values) != ring.size for values in rows.values()):
            raise ValueError(
                f"ReplayShard[{self.shard_index}].restore_sampler_state: state for "
                f"{[len(v) for v in rows.values()]} rows, the shard holds {ring.size}"
            )
        self._selector.restore(np.arange(ring.oldest_seq, ring.next_seq) % ring.capacity_rows, rows, scalars)

    def _restore(self, restored: Restored) -> None:
        state = restored.checkpoint_state
        if restored.checkpoint_rows is not None:
            table = restored.checkpoint_rows
            row_state = {
                name[2:]: table.column(name).to_numpy() for name in table.column_names if name.startswith("__")
            }
            table = table.select([name for name in table.column_names if not name.startswith("__")])
            self._ring.next_seq = self._ring.oldest_seq = state["oldest_seq"]
            if table.num_rows:
                self._ring.append(TransitionBatch.from_arrow(table))
            self._ring.next_seq = state["next_seq"]
            self._ring.oldest_seq = state["oldest_seq"]
            slots = np.arange(state["oldest_seq"], state["next_seq"]) % self._ring.capacity_rows
            self._selector.restore(slots, row_state, state["selector"])
            self._inserted_batches, self._rejected_batches = state["inserted_batches"], state["rejected_batches"]
            self._episodes_completed = state["episodes_completed"]
            self._limiter.inserted, self._limiter.sampled = state["limiter"]
            self._sources.restore(state)
            self._checkpointed_seq = state["next_seq"]
        for record_batch, source, batch_id in restored.logged:
            self._store(TransitionBatch.from_arrow(record_batch), source, batch_id if batch_id >= 0 else None)
        if restored.checkpoint_rows is not None or restored.logged:
            self._log.warning(
                "restored {} rows (sequence {} to {}) from {}: a checkpoint{} and {} logged batches{}",
                self._ring.size,
                self._ring.oldest_seq,
                self._ring.next_seq,
                self.cfg.wal_dir,
                "" if restored.checkpoint_rows is not None else " (none)",
                len(restored.logged),
                f"; dropped {restored.torn_batches} torn, unacknowledged one(s)" if restored.torn_batches else "",
            )

    def pid(self) -> int:
        """This shard's process id (for supervision and tests)."""
        return os.getpid()

    def sample(self, num_rows: int) -> TransitionBatch | None:
        """`num_rows` rows chosen by the sampler, with three extra columns: `key` (for
        `update_priorities`), `probability` (of drawing the row from this shard) and `weight`
        (importance weight (N·P)^-β over the batch's largest, 1 unless prioritized). None while
        the rate limiter holds sampling back or nothing is left to read (fifo/lifo)."""
        ring = self._ring
        if not self._limiter.can_sample(ring.size) or ring.size == 0:
            return None
        slots, probability = self._selector.select(num_rows, self._rng, ring.oldest_seq, ring.next_seq)
        if slots.size == 0:
            return None
        self._limiter.on_sample(int(slots.size))
        metrics.replay_sampled_rows().inc(int(slots.size), tags=self._tags)
        batch = ring.gather(slots)
        seqs = ring.oldest_seq + (slots - ring.oldest_seq) % ring.capacity_rows
        batch.columns["key"] = (np.int64(self.shard_index) << KEY_SHARD_SHIFT) | seqs
        batch.columns["probability"] = probability.astype(np.float64)
        batch.columns["weight"] = importance_weights(
            probability, ring.size, self.cfg.priority_beta if self.cfg.sampler == "prioritized" else 0.0
        )
        self._changed.notify()
        return batch

    async def insert_wait(
        self,
        batch: TransitionBatch | pa.RecordBatch,
        source: str = "unknown",
        batch_id: int | None = None,
        timeout_s: float | None = None,
    ) -> InsertAck:
        """`insert`, waiting (up to `timeout_s`, default `replay.rate_limit.timeout_s`) while the
        rate limiter holds inserts back. Only in the actor: other calls go on while it waits.

        Raises:
            RateLimited: still held back after the timeout (the message says by what).
        """
        if self._sources.get(source, batch_id) is None:
            await self._wait_for(self._limiter.can_insert, "an insert", timeout_s)
        return self.insert(batch, source, batch_id)

    async def sample_wait(self, num_rows: int, timeout_s: float | None = None) -> TransitionBatch | None:
        """`sample`, waiting while the rate limiter holds sampling back (see `insert_wait`)."""
        await self._wait_for(lambda: self._limiter.can_sample(self._ring.size), "a sample", timeout_s)
        return self.sample(num_rows)

    async def _wait_for(self, ready, what: str, timeout_s: float | None) -> None:
        timeout_s = (
            timeout_s
            if timeout_s is not None
            else (self.cfg.rate_limit.timeout_s if self.cfg.rate_limit is not None else 60.0)
        )
        if not await self._changed.wait_until(ready, timeout_s):
            raise RateLimited(
                f"ReplayShard[{self.shard_index}]: {what} waited {timeout_s:g}s for the rate "
                f"limiter ({self._limiter.describe()}); is the other side running?"
            )

    def sampling_mass(self) -> tuple[float, int]:
        """(total priority, or rows left to read, or size; rows stored): how much of a draw across
        shards this one should get."""
        return self._selector.mass(self._ring.oldest_seq, self._ring.next_seq), self._ring.size

    def update_priorities(self, keys: np.ndarray, td_errors: np.ndarray) -> PriorityUpdate:
        """New priorities |td_error| + ε for sampled rows; rows the ring has overwritten since
        they were sampled are ignored and counted.

        Raises:
            ValueError: not a prioritized shard, keys of another shard or of rows never stored,
                or shapes that do not match.
        """
        if not isinstance(self._selector, Prioritized):  # (replay.sampler is not "prioritized")
            raise ValueError(
                f"ReplayShard[{self.shard_index}].update_priorities: replay.sampler is "
                f"{self.cfg.sampler!r}, not 'prioritized'"
            )
        keys, td_errors = np.asarray(keys, np.int64).reshape(-1), np.asarray(td_errors, np.float64).reshape(-1)
        if keys.shape != td_errors.shape:
            raise ValueError(
                f"ReplayShard[{self.shard_index}].update_priorities: {keys.size} keys but {td_errors.size} TD errors"
            )
        shards = keys >> KEY_SHARD_SHIFT
        seqs = keys & ((1 << KEY_SHARD_SHIFT) - 1)
        if (shards != self.shard_index).any() or (seqs >= self._ring.next_seq).any():
            raise ValueError(
                f"ReplayShard[{self.shard_index}].update_priorities: keys of another shard or of rows "
                "never stored; pass back the `key` column that sample returned"
            )
        live = seqs >= self._ring.oldest_seq
        self._selector.update(seqs[live] % self._ring.capacity_rows, td_errors[live])
        return PriorityUpdate(int(live.sum()), int((~live).sum()))

    def read(
        self, cursor: int, max_rows: int, where: RowFilter | None = None, stop_seq: int | None = None
    ) -> ReadResult:
        """Rows in insertion order from sequence number `cursor` on: up to `max_rows` rows are
        scanned (never past `stop_seq`), and those `where` keeps are returned.

        Start with cursor 0 (or `bounds()[0]`) and pass back `next_cursor`; an empty batch with
        `next_cursor == end_seq` means the reader has caught up with the writers.
        """
        ring = self._ring
        if cursor < 0 or cursor > ring.next_seq:
            raise ValueError(f"ReplayShard[{self.shard_index}].read: cursor={cursor} is outside [0, {ring.next_seq}]")
        skipped_rows = max(0, ring.oldest_seq - cursor)
        if skipped_rows:
            self._log.warning("reader at cursor {} lost {} rows overwritten by the ring", cursor, skipped_rows)
        start = cursor + skipped_rows
        stop = min(ring.next_seq, start + max_rows, ring.next_seq if stop_seq is None else max(stop_seq, start))
        if where is None:
            batch = ring.read(start, stop - start)
            seqs = np.arange(start, stop, dtype=np.int64)
        else:
            slots = ring.slots(start, stop)
            keep = where.mask(lambda name: ring.gather(slots, [name])[name])
            batch, seqs = ring.gather(slots[keep]), np.arange(start, stop, dtype=np.int64)[keep]
        return ReadResult(batch, stop, skipped_rows, seqs, ring.next_seq)

    async def read_wait(
        self, cursor: int, max_rows: int, where: RowFilter | None = None, timeout_s: float = 1.0
    ) -> ReadResult:
        """`read`, first waiting up to `timeout_s` for rows past `cursor` if there are none yet
        (an empty result after the wait: nothing new arrived). For readers that follow the replay."""
        if cursor >= self._ring.next_seq:
            await self._changed.wait_until(lambda: self._ring.next_seq > cursor, timeout_s)
        return self.read(cursor, max_rows, where)

    def bounds(self) -> tuple[int, int]:
        """(oldest sequence number stored, next sequence number): where readers may start."""
        return self._ring.oldest_seq, self._ring.next_seq

    def stats(self) -> ShardStats:
        ring = self._ring
        episodes_stored = int(np.unique(ring.column("episode_id")).size) if ring.size else 0
        stats = ShardStats(
            shard_index=self.shard_index,
            size_rows=ring.size,
            capacity_rows=ring.capacity_rows,
            inserted_rows=ring.next_seq,
            evicted_rows=ring.evicted_rows,
            inserted_batches=self._inserted_batches,
            rejected_batches=self._rejected_batches,
            episodes_completed=self._episodes_completed,
            episodes_stored=episodes_stored,
            memory_bytes=self.memory_bytes,
        )
        self._gauges()
        return stats

    def inserted_rows(self) -> int:
        """Rows stored since the start (cheap: for progress bars polled during collection)."""
        return self._ring.next_seq

    def set_rate_limit(self, rate_limit: RateLimitConfig) -> None:
        """New samples-per-insert numbers (a live config edit); the counts so far carry over."""
        if (rate_limit is None) != (self.cfg.rate_limit is None):
            raise ValueError(f"ReplayShard[{self.shard_index}]: replay.rate_limit can be changed, not turned on or off")
        limiter = SampleToInsertRatio(
            rate_limit.samples_per_insert, self.cfg.min_size_to_sample, rate_limit.error_buffer
        )
        limiter.inserted, limiter.sampled = self._limiter.inserted, self._limiter.sampled
        self._limiter, self.cfg = limiter, dataclasses.replace(self.cfg, rate_limit=rate_limit)
        self._changed.notify()  # waiters look again under the new numbers
        self._log.info("rate limit now {}", limiter.describe())

    def holding_back(self) -> str:
        """Why an insert would wait or be refused now ("" when nothing holds inserts back): the
        stall watchdog's answer to "what is this collector's ack waiting for"."""
        if self.cfg.rate_limit is not None and not self._limiter.can_insert():
            return f"ReplayShard[{self.shard_index}] rate limiter ({self._limiter.describe()}): a learner must sample"
        if self._rejected_batches:
            return f"ReplayShard[{self.shard_index}] full: {self._rejected_batches} batches refused (memory limit)"
        return ""

    def rows_by_source(self) -> dict[str, int]:
        """Rows stored since the start, by the source that inserted them (e.g. `collector 3`)."""
        return self._sources.rows_by_source()

    def get_schema(self) -> BatchSchema:
        return self.schema

    def ready(self) -> bool:
        """True once the actor is constructed (used to wait for startup)."""
        return True
