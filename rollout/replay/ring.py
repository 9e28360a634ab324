"""`ColumnRing`: preallocated numpy columns used as a FIFO ring of rows."""

from __future__ import annotations

import numpy as np

from rollout.batch import BatchSchema, TransitionBatch


class ColumnRing:
    """Fixed-capacity rows in preallocated columns; the oldest rows are overwritten first.

    Every row gets a sequence number (0, 1, 2, ... in insertion order). Row `seq` lives at
    slot `seq % capacity` while `oldest_seq <= seq < next_seq`. Memory is exactly the raw
    array bytes of `capacity_rows` rows.

    Example:
        >>> ring = ColumnRing(schema, capacity_rows=4)
        >>> ring.append(batch_of_6_rows)   # keeps rows 2..5, evicts 0 and 1
        (0, 6)
    """

    def __init__(self, schema: BatchSchema, capacity_rows: int) -> None:
        if capacity_rows < 1:
            raise ValueError(f"capacity_rows={capacity_rows}: expected at least 1")
        self.schema = schema
        self.capacity_rows = capacity_rows
        self._columns = schema.empty(capacity_rows).columns
        self.next_seq = 0

    @property
    def size(self) -> int:
        return min(self.next_seq, self.capacity_rows)

    @property
    def oldest_seq(self) -> int:
        return self.next_seq - self.size

    @property
    def evicted_rows(self) -> int:
        return self.oldest_seq

    @property
    def memory_bytes(self) -> int:
        return sum(column.nbytes for column in self._columns.values())

    def append(self, batch: TransitionBatch) -> tuple[int, int]:
        """Store `batch` (already validated); returns (first sequence number, rows)."""
        num_rows = batch.num_rows
        first_seq = self.next_seq
        # A batch larger than the ring keeps only its newest rows.
        skip = max(0, num_rows - self.capacity_rows)
        start_slot = (first_seq + skip) % self.capacity_rows
        stored = num_rows - skip
        head = min(stored, self.capacity_rows - start_slot)
        for name, column in self._columns.items():
            source = batch.columns[name]
            column[start_slot:start_slot + head] = source[skip:skip + head]
            if head < stored:
                column[:stored - head] = source[skip + head:]
        self.next_seq += num_rows
        return first_seq, num_rows

    def slots(self, first_seq: int, stop_seq: int) -> np.ndarray:
        """Ring slots of the sequence numbers [first_seq, stop_seq), which must be stored."""
        if first_seq < self.oldest_seq or stop_seq > self.next_seq:
            raise IndexError(f"rows [{first_seq}, {stop_seq}) are not all stored; "
                             f"the ring holds [{self.oldest_seq}, {self.next_seq})")
        return np.arange(first_seq, stop_seq) % self.capacity_rows

    def gather(self, slots: np.ndarray, columns: list[str] | None = None) -> TransitionBatch:
        """A copy of the rows at `slots`."""
        names = columns if columns is not None else list(self._columns)
        return TransitionBatch({name: np.take(self._columns[name], slots, axis=0) for name in names})

    def read(self, first_seq: int, max_rows: int) -> TransitionBatch:
        """A copy of up to `max_rows` rows from sequence number `first_seq` on, in insertion order."""
        stop_seq = min(self.next_seq, first_seq + max_rows)
        first_slot = first_seq % self.capacity_rows
        if first_slot + (stop_seq - first_seq) <= self.capacity_rows:  # contiguous: one copy per column
            self.slots(first_seq, stop_seq)  # bounds check
            window = slice(first_slot, first_slot + stop_seq - first_seq)
            return TransitionBatch({name: column[window].copy() for name, column in self._columns.items()})
        return self.gather(self.slots(first_seq, stop_seq))

    def column(self, name: str) -> np.ndarray:
        """The stored values of one column (slot order, only the first `size` slots are valid)."""
        return self._columns[name][:self.size]
