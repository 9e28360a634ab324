"""`SourceAcks`: what a shard remembers of each source (`collector 3`) that inserts into it."""

from __future__ import annotations

from harvest.rollout.replay.results import InsertAck

_ACKS_KEPT = 1024
"""Acks remembered per source for recognising retried batches (far more than pushes in flight)."""


class SourceAcks:
    """Per source, the acks of its latest batches (by batch id), so a push retried after the
    shard restarted is acknowledged again instead of stored twice, and the rows it stored.

    Args:
        shard_index: the shard's position in the replay (written into restored acks).
    """

    def __init__(self, shard_index: int) -> None:
        self.shard_index = shard_index
        self._acks: dict[str, dict[int, InsertAck]] = {}
        self._rows_by_source: dict[str, int] = {}

    def get(self, source: str, batch_id: int | None) -> InsertAck | None:
        """The ack of batch `batch_id` from `source` if the shard stored it, else None."""
        if batch_id is None:
            return None
        return self._acks.get(source, {}).get(batch_id)

    def record(self, source: str, batch_id: int | None, ack: InsertAck) -> None:
        """Count a stored batch's rows for `source`, and remember its ack when it has a batch id."""
        self._rows_by_source[source] = self._rows_by_source.get(source, 0) + ack.num_rows
        if batch_id is not None and batch_id >= 0:
            acks = self._acks.setdefault(source, {})
            acks[batch_id] = ack
            if len(acks) > _ACKS_KEPT:
                del acks[next(iter(acks))]  # the oldest remembered (dicts keep insertion order)

    def rows_by_source(self) -> dict[str, int]:
        """Rows stored since the start, by the source that inserted them."""
        return dict(self._rows_by_source)

    def state(self) -> dict:
        """The acks and row counts as a checkpoint's JSON keeps them (`acks`, `rows_by_source`)."""
        return {
            "acks": {
                source: [[batch_id, ack.first_seq, ack.num_rows] for batch_id, ack in acks.items()]
                for source, acks in self._acks.items()
            },
            "rows_by_source": self._rows_by_source,
        }

    def restore(self, state: dict) -> None:
        """Put back what `state` returned (a checkpoint's JSON)."""
        self._acks = {
            source: {
                batch_id: InsertAck(self.shard_index, first_seq, num_rows) for batch_id, first_seq, num_rows in acks
            }
            for source, acks in state["acks"].items()
        }
        self._rows_by_source = dict(state.get("rows_by_source", {}))
