"""Following the replay: rows in insertion order, to consumers inside Ray and (through
`rollout/replay/flight.py`) outside it.

`ReplayReader` is the one loop both use. It keeps one read in flight per shard (so a quiet
shard never holds up a busy one), filters rows on the shard (only kept rows travel), cuts
batches of `batch_size`, and carries a per-shard cursor a consumer can resume from. Rows of one
shard come in insertion order; an episode's rows all live in one shard, so they come in order.

A consumer that falls so far behind that the ring overwrote rows it had not read is told: by
default the stream fails with `StreamOverrun`; with `on_overrun="report"` it goes on and the
next batch's `skipped_rows` says how many rows were lost. It never skips rows silently.

`stream_experiences` runs the reader as a Ray streaming generator with bounded buffering: at
most `max_buffered` batches wait for the consumer, then the reader pauses, so a slow consumer
slows nothing but itself.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal, Sequence

import numpy as np
import ray
from loguru import logger

from harvest.cluster import metrics
from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.replay.row_filter import RowFilter
from harvest.rollout.replay.shard import KEY_SHARD_SHIFT

Start = Literal["earliest", "latest"]
OnOverrun = Literal["raise", "report"]


class StreamOverrun(RuntimeError):
    """The ring overwrote rows a stream consumer had not read yet."""


@dataclass(frozen=True)
class StreamCursor:
    """Per shard, the next sequence number a stream reads; pass it as `start=` to resume."""

    seqs: tuple[int, ...]

    def to_json(self) -> list[int]:
        return list(self.seqs)

    @classmethod
    def from_json(cls, data: Sequence[int]) -> "StreamCursor":
        return cls(tuple(int(seq) for seq in data))


@dataclass
class StreamBatch:
    """Rows of a stream: the replay's columns plus `key` ((shard << 48) | sequence number).

    `cursor` resumes the stream right after these rows; `skipped_rows` counts rows lost to the
    ring before them (only with `on_overrun="report"`); `lag_rows` is how many stored rows the
    consumer had not received yet when the batch was cut.
    """

    batch: TransitionBatch
    cursor: StreamCursor
    skipped_rows: int = 0
    lag_rows: int = 0

    @property
    def num_rows(self) -> int:
        return self.batch.num_rows


@dataclass(frozen=True)
class StreamSpec:
    """What a consumer asks for (also the JSON of a Flight ticket)."""

    where: RowFilter | None = None
    batch_size: int = 1024
    follow: bool = False
    start: Start | StreamCursor = "earliest"
    on_overrun: OnOverrun = "raise"
    poll_s: float = 0.25
    name: str = "consumer"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"stream: batch_size={self.batch_size}, expected at least 1")
        if not isinstance(self.start, StreamCursor) and self.start not in ("earliest", "latest"):
            raise ValueError(f"stream: start={self.start!r}, expected 'earliest', 'latest' or a StreamCursor")
        if self.on_overrun not in ("raise", "report"):
            raise ValueError(f"stream: on_overrun={self.on_overrun!r}, expected 'raise' or 'report'")

    def to_json(self) -> dict:
        start = self.start.to_json() if isinstance(self.start, StreamCursor) else self.start
        return {
            "where": self.where.to_json() if self.where else None,
            "batch_size": self.batch_size,
            "follow": self.follow,
            "start": start,
            "on_overrun": self.on_overrun,
            "poll_s": self.poll_s,
            "name": self.name,
        }

    @classmethod
    def from_json(cls, data: dict) -> "StreamSpec":
        known = {"where", "batch_size", "follow", "start", "on_overrun", "poll_s", "name"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"stream request: unknown fields {sorted(unknown)}; expected {sorted(known)}")
        start = data.get("start", "earliest")
        return cls(
            where=RowFilter.from_json(data.get("where")),
            batch_size=int(data.get("batch_size", 1024)),
            follow=bool(data.get("follow", False)),
            start=StreamCursor.from_json(start) if isinstance(start, list) else start,
            on_overrun=data.get("on_overrun", "raise"),
            poll_s=float(data.get("poll_s", 0.25)),
            name=str(data.get("name", "consumer")),
        )


def stream_columns(schema: BatchSchema) -> list[str]:
    return [*schema.columns, "key"]


class ReplayReader:
    """Iterate `StreamBatch`es of the shards' rows as `spec` asks (see the module doc).

    Not follow mode: the rows stored when the reader starts, then the iteration ends.
    Follow mode: never ends; waits for new rows, and hands over a partial batch once a shard
    has been quiet for `poll_s` so the last rows of a run are not held back.
    """

    def __init__(
        self, shards: Sequence[ray.actor.ActorHandle], schema: BatchSchema, spec: StreamSpec, timeout_s: float = 60.0
    ) -> None:
        if spec.where is not None:
            spec.where.check(schema, f"stream {spec.name!r}")
        self.shards, self.schema, self.spec, self.timeout_s = list(shards), schema, spec, timeout_s
        self._read_rows = max(spec.batch_size, 4096)
        self._log = logger.bind(actor=f"ReplayReader[{spec.name}]")

    def __iter__(self) -> Iterator[StreamBatch]:
        spec, num_shards = self.spec, len(self.shards)
        bounds = ray.get([shard.bounds.remote() for shard in self.shards], timeout=self.timeout_s)
        if isinstance(spec.start, StreamCursor):
            if len(spec.start.seqs) != num_shards:
                raise ValueError(
                    f"stream {spec.name!r}: the cursor has {len(spec.start.seqs)} shard positions, "
                    f"the replay has {num_shards} shards"
                )
            cursors = list(spec.start.seqs)
        else:
            cursors = [oldest if spec.start == "earliest" else end for oldest, end in bounds]
        stops = None if spec.follow else [end for _, end in bounds]
        ends = [end for _, end in bounds]
        pending: deque[tuple[int, TransitionBatch, np.ndarray]] = deque()
        pending_rows, skipped_rows = 0, 0
        in_flight: dict[ray.ObjectRef, int] = {}
        lag = metrics.replay_consumer_lag_rows()

        def request(index: int) -> None:
            shard = self.shards[index]
            if stops is None:
                in_flight[shard.read_wait.remote(cursors[index], self._read_rows, spec.where, spec.poll_s)] = index
            elif cursors[index] < stops[index]:
                in_flight[shard.read.remote(cursors[index], self._read_rows, spec.where, stops[index])] = index

        def cut(num_rows: int) -> StreamBatch:
            nonlocal pending_rows, skipped_rows
            parts, keys = [], []
            while num_rows:
                index, batch, seqs = pending.popleft()
                if batch.num_rows > num_rows:
                    pending.appendleft((index, batch.take(slice(num_rows, None)), seqs[num_rows:]))
                    batch, seqs = batch.take(slice(0, num_rows)), seqs[:num_rows]
                parts.append(batch)
                keys.append((np.int64(index) << KEY_SHARD_SHIFT) | seqs)
                num_rows -= batch.num_rows
                pending_rows -= batch.num_rows
            out = TransitionBatch.concat(parts) if len(parts) > 1 else parts[0]
            out.columns["key"] = np.concatenate(keys)
            resume = list(cursors)
            for index, _, seqs in reversed(pending):
                resume[index] = int(seqs[0])
            behind = sum(end - seq for end, seq in zip(ends, resume))
            lag.set(behind, tags={"consumer": spec.name})
            result = StreamBatch(out, StreamCursor(tuple(resume)), skipped_rows, behind)
            skipped_rows = 0
            return result

        for index in range(num_shards):
            request(index)
        try:
            while in_flight:
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=self.timeout_s)
                if not ready:
                    raise TimeoutError(f"stream {spec.name!r}: no replay shard answered within {self.timeout_s:g}s")
                index = in_flight.pop(ready[0])
                result = ray.get(ready[0])
                if result.skipped_rows:
                    message = (
                        f"stream {spec.name!r}: shard {index} overwrote {result.skipped_rows} rows (sequence "
                        f"{cursors[index]} to {cursors[index] + result.skipped_rows - 1}) before this "
                        "consumer read them; read faster, give the replay more capacity, or pass "
                        "on_overrun='report' to go on and count them"
                    )
                    if spec.on_overrun == "raise":
                        raise StreamOverrun(message)
                    self._log.warning(message)
                    skipped_rows += result.skipped_rows
                quiet = result.next_cursor == cursors[index] + result.skipped_rows
                cursors[index], ends[index] = result.next_cursor, result.end_seq
                if result.batch.num_rows:
                    pending.append((index, result.batch, result.seqs))
                    pending_rows += result.batch.num_rows
                while pending_rows >= spec.batch_size:
                    yield cut(spec.batch_size)
                if quiet and pending_rows and stops is None:
                    yield cut(pending_rows)
                request(index)
            if pending_rows:
                yield cut(pending_rows)
        finally:
            for ref in in_flight:
                ray.cancel(ref)


def take_rows(batches: Iterable[StreamBatch], num_rows: int) -> Iterator[StreamBatch]:
    """`batches` until `num_rows` rows were received; the last batch is cut to fit, and its
    cursor moved back so resuming from it reads the rows cut off."""
    for item in batches:
        if num_rows <= 0:
            return
        if item.num_rows > num_rows:
            dropped = item.batch["key"][num_rows:]
            resume = list(item.cursor.seqs)
            for shard in np.unique(dropped >> KEY_SHARD_SHIFT):
                first = dropped[(dropped >> KEY_SHARD_SHIFT) == shard][0] & ((1 << KEY_SHARD_SHIFT) - 1)
                resume[shard] = min(resume[shard], int(first))
            item.batch, item.cursor = item.batch.take(slice(0, num_rows)), StreamCursor(tuple(resume))
        num_rows -= item.num_rows
        yield item
        if num_rows <= 0:
            return


def _stream_task(
    shards: Sequence[ray.actor.ActorHandle], schema: BatchSchema, spec: StreamSpec
) -> Iterator[StreamBatch]:
    yield from ReplayReader(shards, schema, spec)


class ExperienceStream:
    """The consumer's end of `stream_experiences`: iterate it for `StreamBatch`es.

    `refs` is the underlying Ray `ObjectRefGenerator` (for `async for`, or to pass on).
    Close it (or use it as a context manager) to stop the reader.
    """

    def __init__(self, refs: ray.ObjectRefGenerator, timeout_s: float | None) -> None:
        self.refs, self.timeout_s = refs, timeout_s

    def __iter__(self) -> Iterator[StreamBatch]:
        for ref in self.refs:
            yield ray.get(ref, timeout=self.timeout_s)

    def take(self, num_rows: int) -> Iterator[StreamBatch]:
        """Batches until `num_rows` rows were received (the last one cut to fit), then close."""
        try:
            yield from take_rows(self, num_rows)
        finally:
            self.close()

    def close(self) -> None:
        ray.cancel(self.refs)

    def __enter__(self) -> "ExperienceStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stream_experiences(
    replay,
    *,
    game_ids: Sequence[int] | None = None,
    player_ids: Sequence[int] | None = None,
    collector_ids: Sequence[int] | None = None,
    batch_size: int = 1024,
    follow: bool = False,
    start: Start | StreamCursor = "earliest",
    on_overrun: OnOverrun = "raise",
    max_buffered: int = 4,
    poll_s: float = 0.25,
    name: str | None = None,
    timeout_s: float | None = 120.0,
) -> ExperienceStream:
    """Stream the replay's rows in insertion order as a Ray streaming generator.

    Args:
        replay: the run's `Replay` handle.
        game_ids, player_ids, collector_ids: keep only rows with these ids (multi-agent envs
            write `game_id` / `player_id`); filtered on the shards.
        batch_size: rows per batch (a partial batch at the end, or after a quiet `poll_s`).
        follow: keep waiting for new rows instead of ending at the rows stored now.
        start: "earliest" stored row, "latest" (only new rows), or a `StreamCursor` from a batch.
        on_overrun: "raise" `StreamOverrun` if the ring overwrote unread rows; "report" goes on
            and counts them in `StreamBatch.skipped_rows`.
        max_buffered: batches the reader may have ready before it pauses for the consumer.

    Example:
        >>> for item in stream_experiences(replay, batch_size=256, follow=True).take(10_000):
        ...     learner.train_on(item.batch)
    """
    spec = StreamSpec(
        RowFilter.of(game_id=game_ids, player_id=player_ids, collector_id=collector_ids),
        batch_size,
        follow,
        start,
        on_overrun,
        poll_s,
        name or f"stream-{time.monotonic_ns() % 10**6}",
    )
    if spec.where is not None:
        spec.where.check(replay.schema, f"stream_experiences({spec.name!r})")
    if start == "latest":  # the rows stored from this call on, not from whenever the task starts
        bounds = ray.get([shard.bounds.remote() for shard in replay.shards], timeout=timeout_s)
        spec = dataclasses.replace(spec, start=StreamCursor(tuple(end for _, end in bounds)))
    task = ray.remote(_stream_task).options(
        num_returns="streaming", num_cpus=0, max_retries=0, _generator_backpressure_num_objects=max_buffered
    )
    return ExperienceStream(task.remote(replay.shards, replay.schema, spec), timeout_s)
