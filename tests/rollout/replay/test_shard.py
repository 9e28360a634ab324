"""The ring buffer and the shard, without Ray."""

import gymnasium as gym
import numpy as np
import pytest

from harvest.rollout.batch import BatchSchema, BatchSchemaError, TransitionBatch
from harvest.rollout.config import ReplayConfig
from harvest.rollout.replay.replay import Replay
from harvest.rollout.replay.ring import ColumnRing
from harvest.rollout.replay.shard import ReplayShard
from harvest.rollout.routing import shard_of
from tests.rollout.test_batch import random_batch

SCHEMA = BatchSchema.for_spaces(gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Discrete(4))


def numbered_batch(first: int, num_rows: int) -> TransitionBatch:
    """Rows whose `step` column is their global insertion number."""
    batch = random_batch(SCHEMA, num_rows, seed=first)
    batch.columns["step"] = np.arange(first, first + num_rows)
    batch.columns["obs"][:, 0] = batch.columns["step"]
    return batch


@pytest.mark.parametrize(
    "capacity, batch_sizes",
    [
        (10, [3, 3, 3]),  # no wrap
        (10, [4, 4, 4]),  # wraps once, evicts 2
        (10, [7, 7, 7, 7]),  # wraps several times
        (10, [25]),  # one batch larger than the ring keeps its newest rows
        (1, [1, 2, 3]),
    ],
)
def test_ring_keeps_the_newest_rows_in_order(capacity, batch_sizes):
    ring = ColumnRing(SCHEMA, capacity)
    inserted = 0
    for size in batch_sizes:
        assert ring.append(numbered_batch(inserted, size)) == (inserted, size)
        inserted += size
    assert ring.next_seq == inserted
    assert ring.size == min(capacity, inserted)
    assert ring.evicted_rows == inserted - ring.size
    rows = ring.read(ring.oldest_seq, capacity)
    assert rows["step"].tolist() == list(range(inserted - ring.size, inserted))
    assert (rows["obs"][:, 0] == rows["step"]).all()
    assert ring.memory_bytes == capacity * SCHEMA.row_bytes


def test_ring_read_refuses_evicted_rows():
    ring = ColumnRing(SCHEMA, 4)
    ring.append(numbered_batch(0, 6))
    with pytest.raises(IndexError, match=r"ring holds \[2, 6\)"):
        ring.read(1, 3)


def test_shard_insert_ack_sample_and_stats():
    shard = ReplayShard(ReplayConfig(capacity_rows=50, min_size_to_sample=10), SCHEMA, shard_index=3, seed=0)
    assert shard.sample(5) is None  # below min size
    batch = numbered_batch(0, 30)
    batch.columns["terminated"][:] = False
    batch.columns["truncated"][:] = False
    batch.columns["terminated"][[9, 19]] = True
    batch.columns["episode_id"] = np.repeat([1, 2, 3], 10)
    ack = shard.insert(batch, source="collector 0")
    assert (ack.shard_index, ack.first_seq, ack.num_rows) == (3, 0, 30)
    shard.insert(numbered_batch(30, 30))
    sample = shard.sample(1000)
    assert sample.num_rows == 1000
    assert sample["step"].min() >= 10 and sample["step"].max() <= 59  # only stored rows
    # Uniform: each of the 50 stored rows is drawn about 1000/50 = 20 times.
    counts = np.bincount(sample["step"] - 10, minlength=50)
    assert counts.sum() == 1000 and counts.max() < 50
    stats = shard.stats()
    assert (stats.size_rows, stats.inserted_rows, stats.evicted_rows, stats.inserted_batches) == (50, 60, 10, 2)
    assert stats.episodes_completed == 2 + int(
        np.count_nonzero(numbered_batch(30, 30)["terminated"] | numbered_batch(30, 30)["truncated"])
    )
    assert stats.memory_bytes == 50 * SCHEMA.row_bytes


def test_uniform_sampling_matches_the_formula():
    shard = ReplayShard(ReplayConfig(capacity_rows=4), SCHEMA, seed=1)
    shard.insert(numbered_batch(0, 4))
    sample = shard.sample(40_000)
    frequencies = np.bincount(sample["step"], minlength=4) / 40_000
    np.testing.assert_allclose(frequencies, 0.25, atol=0.01)


def test_bad_batch_is_rejected_and_the_good_one_beside_it_stored():
    shard = ReplayShard(ReplayConfig(capacity_rows=100), SCHEMA)
    bad = numbered_batch(0, 5)
    bad.columns["action"] = bad.columns["action"].astype(np.float32)
    with pytest.raises(BatchSchemaError, match="column 'action' from collector 9: expected int64"):
        shard.insert(bad, source="collector 9")
    shard.insert(numbered_batch(0, 5), source="collector 8")
    stats = shard.stats()
    assert (stats.size_rows, stats.rejected_batches) == (5, 1)


def test_cursor_reads_in_insertion_order_and_reports_lost_rows():
    shard = ReplayShard(ReplayConfig(capacity_rows=10), SCHEMA)
    shard.insert(numbered_batch(0, 6))
    first = shard.read(cursor=0, max_rows=4)
    assert first.batch["step"].tolist() == [0, 1, 2, 3] and first.next_cursor == 4 and first.skipped_rows == 0
    shard.insert(numbered_batch(6, 10))  # evicts rows 0..5: the reader's rows 4 and 5 are gone
    second = shard.read(first.next_cursor, max_rows=100)
    assert second.skipped_rows == 2
    assert second.batch["step"].tolist() == list(range(6, 16))
    assert shard.read(second.next_cursor, 100).batch.num_rows == 0
    with pytest.raises(ValueError, match="cursor=99 is outside"):
        shard.read(99, 1)


def test_shard_accepts_arrow_record_batches():
    shard = ReplayShard(ReplayConfig(capacity_rows=10), SCHEMA)
    shard.insert(numbered_batch(0, 3).to_arrow(SCHEMA))
    assert shard.read(0, 10).batch["step"].tolist() == [0, 1, 2]


def test_routing_by_episode_is_stable_and_balanced():
    episode_ids = (5 << 32) + np.arange(10_000, dtype=np.int64)
    shards = shard_of(episode_ids, 4)
    assert (shards == shard_of(episode_ids, 4)).all()
    np.testing.assert_allclose(np.bincount(shards) / 10_000, 0.25, atol=0.03)


def test_route_splits_a_grouped_batch_into_views_and_an_ungrouped_one_by_hash():
    replay = Replay(shards=(None, None, None), schema=SCHEMA)  # route() touches no actor
    batch = numbered_batch(0, 200)
    batch.columns["episode_id"] = np.arange(200, dtype=np.int64) // 7
    by_hash = replay.route(batch)
    assert sorted(shard for shard, _ in by_hash) == [0, 1, 2]
    order = np.argsort(shard_of(batch["episode_id"], 3), kind="stable")
    grouped = batch.take(order)
    grouped.shard_offsets = (0, *np.cumsum(np.bincount(shard_of(batch["episode_id"], 3), minlength=3)).tolist())
    by_offsets = replay.route(grouped)
    for (shard_a, part_a), (shard_b, part_b) in zip(by_hash, by_offsets, strict=True):
        assert shard_a == shard_b
        assert (shard_of(part_b["episode_id"], 3) == shard_b).all()
        np.testing.assert_array_equal(part_a["step"], part_b["step"])
        assert np.shares_memory(part_b["obs"], grouped["obs"]), "a grouped batch is split without a copy"
    assert replay.route(TransitionBatch(batch.columns, shard_offsets=(0, 200)))[0][1].num_rows < 200, (
        "offsets for another shard count are ignored"
    )
