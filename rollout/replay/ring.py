"""`ColumnRing`: preallocated numpy columns used as a FIFO ring of rows, optionally with some
columns compressed row by row (`PackedColumn`) and a byte budget that evicts the oldest rows."""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping

import numpy as np
import pyarrow as pa

from harvest.rollout.batch import BatchSchema, TransitionBatch

PACKED_ROW_OVERHEAD_BYTES = 41
"""What one stored compressed row costs beyond its bytes: a `bytes` object header (33) and
its pointer in the slot array (8)."""


PARALLEL_COPY_BYTES = 1 << 20
"""Column copies at least this large are split over the ring's `copy_threads`."""


@functools.cache
def _copy_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads - 1, thread_name_prefix="ring-copy")


class PackedColumn:
    """One column whose rows are stored compressed (zstd or lz4 through `pyarrow.Codec`), one
    blob per ring slot, and decompressed when read."""

    def __init__(
        self,
        name: str,
        dtype: np.dtype,
        shape: tuple[int, ...],
        capacity_rows: int,
        codec: str,
        level: int | None = None,
    ) -> None:
        self.name, self.dtype, self.shape = name, np.dtype(dtype), tuple(shape)
        self.row_bytes = int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize
        self.codec = pa.Codec(codec, compression_level=level)
        self._blobs = np.full(capacity_rows, b"", dtype=object)
        self.sizes = np.zeros(capacity_rows, np.int64)

    @property
    def nbytes(self) -> int:
        return int(self.sizes.sum()) + PACKED_ROW_OVERHEAD_BYTES * int(np.count_nonzero(self.sizes))

    def compress(self, rows: np.ndarray) -> list[bytes]:
        rows = np.ascontiguousarray(rows)
        return [self.codec.compress(row, asbytes=True) for row in rows]

    def store(self, start_slot: int, blobs: list[bytes]) -> None:
        stop = start_slot + len(blobs)
        self._blobs[start_slot:stop] = blobs
        self.sizes[start_slot:stop] = [len(blob) for blob in blobs]

    def clear(self, slots: np.ndarray) -> None:
        self._blobs[slots] = b""
        self.sizes[slots] = 0

    def take(self, slots: np.ndarray) -> np.ndarray:
        out = np.empty((len(slots), *self.shape), self.dtype)
        # Both sizes given: reshape(n, -1) fails for no rows or for rows of no bytes.
        flat = out.view(np.uint8).reshape(len(slots), self.row_bytes)
        for i, slot in enumerate(np.asarray(slots).tolist()):
            data = self.codec.decompress(self._blobs[slot], decompressed_size=self.row_bytes, asbytes=False)
            flat[i] = np.frombuffer(data, np.uint8)
        return out


class ColumnRing:
    """Fixed-capacity rows in preallocated columns; the oldest rows are overwritten first.

    Every row gets a sequence number (0, 1, 2, ... in insertion order). Row `seq` lives at
    slot `seq % capacity_rows` while `oldest_seq <= seq < next_seq`. Plain columns cost exactly
    their raw array bytes for `capacity_rows` rows. Columns named in `compression` are stored
    compressed per row; `capacity_bytes` then also evicts the oldest rows once the compressed
    bytes outgrow what the plain columns leave of it.

    Example:
        >>> ring = ColumnRing(schema, capacity_rows=4)
        >>> ring.append(batch_of_6_rows)   # keeps rows 2..5, evicts 0 and 1
        (0, 6)
    """

    def __init__(
        self,
        schema: BatchSchema,
        capacity_rows: int,
        compression: Mapping[str, str] | None = None,
        compression_level: int | None = None,
        capacity_bytes: int | None = None,
        copy_threads: int = 1,
    ) -> None:
        if capacity_rows < 1:
            raise ValueError(f"capacity_rows={capacity_rows}: expected at least 1")
        compression = dict(compression or {})
        unknown = [name for name in compression if name not in schema.columns]
        if unknown:
            raise ValueError(f"replay.compression: no columns {unknown} in the rows; columns: {list(schema.columns)}")
        self.schema = schema
        self.capacity_rows = capacity_rows
        self.copy_threads = copy_threads
        self._columns = {
            name: np.empty((capacity_rows, *spec.shape), spec.dtype)
            for name, spec in schema.columns.items()
            if name not in compression
        }
        self._packed = {
            name: PackedColumn(
                name, schema.columns[name].dtype, schema.columns[name].shape, capacity_rows, codec, compression_level
            )
            for name, codec in compression.items()
        }
        self._packed_budget = None
        if capacity_bytes is not None and self._packed:
            self._packed_budget = capacity_bytes - self.plain_bytes
        self.next_seq = 0
        self.oldest_seq = 0

    @property
    def size(self) -> int:
        return self.next_seq - self.oldest_seq

    @property
    def evicted_rows(self) -> int:
        return self.oldest_seq

    @property
    def plain_bytes(self) -> int:
        return sum(column.nbytes for column in self._columns.values())

    @property
    def memory_bytes(self) -> int:
        return self.plain_bytes + sum(column.nbytes for column in self._packed.values())

    def memory_by_column(self) -> dict[str, dict[str, int]]:
        """Per column: bytes held now, and the raw bytes of the rows stored."""
        report = {
            name: {"bytes": column.nbytes, "raw_bytes": self.size * self.schema.columns[name].row_bytes}
            for name, column in self._columns.items()
        }
        report.update(
            {
                name: {"bytes": column.nbytes, "raw_bytes": self.size * column.row_bytes}
                for name, column in self._packed.items()
            }
        )
        return report

    def packed_bytes_needed(self, batch: TransitionBatch) -> tuple[dict[str, list[bytes]], int]:
        """The compressed rows of `batch` (to pass to `append`) and the bytes they will take."""
        blobs = {name: column.compress(batch.columns[name]) for name, column in self._packed.items()}
        needed = sum(len(blob) + PACKED_ROW_OVERHEAD_BYTES for rows in blobs.values() for blob in rows)
        return blobs, needed

    def projected_bytes(self, num_rows: int, packed_bytes: int) -> int:
        """`memory_bytes` after appending `num_rows` rows whose compressed rows take `packed_bytes`."""
        if not self._packed:
            return self.memory_bytes
        overwritten = max(0, self.size + num_rows - self.capacity_rows)
        slots = self.slots(self.oldest_seq, self.oldest_seq + min(overwritten, self.size))
        freed = sum(
            int(column.sizes[slots].sum()) + PACKED_ROW_OVERHEAD_BYTES * slots.size for column in self._packed.values()
        )
        projected = self.memory_bytes + packed_bytes - freed
        return projected if self._packed_budget is None else min(projected, self.plain_bytes + self._packed_budget)

    def append(self, batch: TransitionBatch, packed: dict[str, list[bytes]] | None = None) -> tuple[int, int]:
        """Store `batch` (already validated; `packed`: its compressed rows from
        `packed_bytes_needed`); returns (first sequence number, rows)."""
        num_rows = batch.num_rows
        if packed is None:
            packed, _ = self.packed_bytes_needed(batch)  # ({}, 0) without packed columns
        first_seq = self.next_seq
        # A batch larger than the ring keeps only its newest rows.
        skip = max(0, num_rows - self.capacity_rows)
        start_slot = (first_seq + skip) % self.capacity_rows
        stored = num_rows - skip
        head = min(stored, self.capacity_rows - start_slot)
        for name, column in self._columns.items():
            source = batch.columns[name]
            self._copy(column[start_slot : start_slot + head], source[skip : skip + head])
            if head < stored:
                self._copy(column[: stored - head], source[skip + head :])
        for name, packed_column in self._packed.items():
            blobs = packed[name][skip:]
            packed_column.store(start_slot, blobs[:head])
            if head < stored:
                packed_column.store(0, blobs[head:])
        self.next_seq += num_rows
        self.oldest_seq = max(self.oldest_seq, self.next_seq - self.capacity_rows)
        self._evict_to_budget()
        return first_seq, num_rows

    def _copy(self, target: np.ndarray, source: np.ndarray) -> None:
        """`target[:] = source`, split over `copy_threads` threads when large."""
        self._split(len(target), target.nbytes, lambda a, b: np.copyto(target[a:b], source[a:b]))

    def _split(self, num_rows: int, nbytes: int, work) -> None:
        """`work(a, b)` over row ranges covering [0, num_rows): in one call, or split over
        `copy_threads` threads for at least PARALLEL_COPY_BYTES (numpy releases the GIL while
        copying, and one thread does not saturate memory bandwidth)."""
        if self.copy_threads < 2 or nbytes < PARALLEL_COPY_BYTES:
            work(0, num_rows)
            return
        bounds = np.linspace(0, num_rows, self.copy_threads + 1).astype(int)
        futures = [_copy_pool(self.copy_threads).submit(work, a, b) for a, b in zip(bounds[1:-1], bounds[2:])]
        work(0, bounds[1])
        for future in futures:
            future.result()

    def _evict_to_budget(self) -> None:
        """Drop the oldest rows until the compressed columns fit `capacity_bytes` (newest row kept)."""
        if self._packed_budget is None:
            return
        held = sum(column.nbytes for column in self._packed.values())
        if held <= self._packed_budget:
            return
        slots = self.slots(self.oldest_seq, self.next_seq - 1)
        row_bytes = sum(column.sizes[slots] + PACKED_ROW_OVERHEAD_BYTES for column in self._packed.values())
        drop = int(np.searchsorted(np.cumsum(row_bytes), held - self._packed_budget)) + 1
        self.evict(self.oldest_seq + min(drop, slots.size))

    def evict(self, stop_seq: int) -> None:
        """Forget the rows before `stop_seq` (their compressed bytes are freed)."""
        slots = self.slots(self.oldest_seq, stop_seq)
        for column in self._packed.values():
            column.clear(slots)
        self.oldest_seq = stop_seq

    def slots(self, first_seq: int, stop_seq: int) -> np.ndarray:
        """Ring slots of the sequence numbers [first_seq, stop_seq), which must be stored."""
        if first_seq < self.oldest_seq or stop_seq > self.next_seq:
            raise IndexError(
                f"rows [{first_seq}, {stop_seq}) are not all stored; "
                f"the ring holds [{self.oldest_seq}, {self.next_seq})"
            )
        return np.arange(first_seq, stop_seq) % self.capacity_rows

    def stored_slots(self) -> np.ndarray:
        return self.slots(self.oldest_seq, self.next_seq)

    def gather(self, slots: np.ndarray, columns: list[str] | None = None) -> TransitionBatch:
        """A copy of the rows at `slots`."""
        names = columns if columns is not None else list(self.schema.columns)
        return TransitionBatch(
            {
                name: self._packed[name].take(slots) if name in self._packed else self._take(self._columns[name], slots)
                for name in names
            }
        )

    def _take(self, column: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """`np.take(column, slots, axis=0)`, split over `copy_threads` threads when large."""
        out = np.empty((len(slots), *column.shape[1:]), column.dtype)
        # mode="clip" (the slots are valid): with the default "raise", numpy buffers `out` and copies twice.
        self._split(len(slots), out.nbytes, lambda a, b: np.take(column, slots[a:b], axis=0, out=out[a:b], mode="clip"))
        return out

    def read(self, first_seq: int, max_rows: int) -> TransitionBatch:
        """A copy of up to `max_rows` rows from sequence number `first_seq` on, in insertion order."""
        stop_seq = min(self.next_seq, first_seq + max_rows)
        first_slot = first_seq % self.capacity_rows
        if not self._packed and first_slot + (stop_seq - first_seq) <= self.capacity_rows:
            self.slots(first_seq, stop_seq)  # bounds check; contiguous: one copy per column
            window = slice(first_slot, first_slot + stop_seq - first_seq)
            return TransitionBatch({name: column[window].copy() for name, column in self._columns.items()})
        return self.gather(self.slots(first_seq, stop_seq))

    def column(self, name: str) -> np.ndarray:
        """The stored values of one column, in insertion order."""
        if self.size == self.capacity_rows and name in self._columns:
            return self._columns[name]  # every slot holds a row: slot order will do for counting
        return self.gather(self.stored_slots(), [name])[name]
