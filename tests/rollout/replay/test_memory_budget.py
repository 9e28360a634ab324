"""Replay memory: bytes per row beside raw, capacity by bytes, per-column compression (zstd,
lz4) that gives back exactly what went in, the memory report, and the limit a shard keeps."""

import gymnasium as gym
import numpy as np
import pytest
import ray

from harvest.envs.spaces import ColumnSpec
from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.config import ReplayConfig
from harvest.rollout.replay.memory_budget import ReplayMemoryError
from harvest.rollout.replay.replay import start_replay
from harvest.rollout.replay.shard import ReplayShard
from tests.rollout.test_batch import random_batch

BOARD = BatchSchema.for_spaces(
    gym.spaces.Box(0, 100, (9, 20, 20), np.float32),
    gym.spaces.Discrete(801),
    extras={"action_mask": ColumnSpec(np.bool_, (801,))},
)


def board_batch(first: int, num_rows: int, noise: bool = False) -> TransitionBatch:
    """Generals-like rows: mostly-zero boards (compressible), or uniform noise (not)."""
    rng = np.random.default_rng(first)
    batch = random_batch(BOARD, num_rows, seed=first)
    for name in ("obs", "next_obs"):
        board = np.zeros((num_rows, 9, 20, 20), np.float32)
        board[:, :, ::3, ::2] = rng.integers(0, 50, (num_rows, 9, 7, 10))
        batch.columns[name] = rng.random((num_rows, 9, 20, 20), np.float32) if noise else board
    batch.columns["step"] = np.arange(first, first + num_rows)
    batch.columns["episode_id"] = batch["step"] // 50
    return batch


def test_plain_rows_cost_their_raw_bytes_and_capacity_bytes_sets_the_rows():
    shard = ReplayShard(ReplayConfig(capacity_rows=300), BOARD)
    shard.insert(board_batch(0, 400))
    report = shard.memory()
    assert report["rows"] == 300 and report["raw_bytes_per_row"] == BOARD.row_bytes
    assert report["bytes_per_row"] <= 1.10 * BOARD.row_bytes, "within 10 % of the raw array bytes"
    assert report["columns"]["obs"] == {"bytes": 300 * 9 * 20 * 20 * 4, "raw_bytes": 300 * 9 * 20 * 20 * 4}
    by_bytes = ReplayShard(ReplayConfig(capacity_rows=10_000, capacity_bytes=100 * BOARD.row_bytes + 5), BOARD)
    assert by_bytes.stats().capacity_rows == 100
    with pytest.raises(ValueError, match="holds no row"):
        ReplayShard(ReplayConfig(capacity_bytes=100), BOARD)


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_compressed_columns_give_back_exactly_what_was_stored_in_far_fewer_bytes(codec):
    cfg = ReplayConfig(capacity_rows=500, compression={"obs": codec, "next_obs": codec}, sampler="prioritized")
    shard = ReplayShard(cfg, BOARD, seed=1)
    inserted = TransitionBatch.concat([board_batch(0, 300), board_batch(300, 400)])  # wraps: 200 overwritten
    shard.insert(inserted.take(slice(0, 300)))
    shard.insert(inserted.take(slice(300, 700)))
    read = shard.read(200, 1000)
    for name in BOARD.columns:
        np.testing.assert_array_equal(read.batch[name], inserted[name][200:], err_msg=name)
    sample = shard.sample(64)
    np.testing.assert_array_equal(sample["obs"], inserted["obs"][sample["step"]])
    report = shard.memory()
    assert report["columns"]["obs"]["raw_bytes"] == 500 * 9 * 20 * 20 * 4
    assert report["columns"]["obs"]["bytes"] < 0.3 * report["columns"]["obs"]["raw_bytes"]
    assert report["bytes_per_row"] < 0.35 * BOARD.row_bytes
    assert report["sampler_bytes"] > 0 and report["bytes"] == report["rows_bytes"] + report["sampler_bytes"]
    with pytest.raises(ValueError, match=r"replay.compression: no columns \['pixels'\]"):
        ReplayShard(ReplayConfig(compression={"pixels": "zstd"}), BOARD)


def test_capacity_bytes_with_compression_evicts_the_oldest_rows_and_they_are_never_sampled():
    budget = 8_000_000  # 4.3 MB of plain columns for 5,000 rows, the rest for ~1,700 compressed boards
    cfg = ReplayConfig(
        capacity_rows=5_000,
        capacity_bytes=budget,
        compression={"obs": "zstd", "next_obs": "zstd"},
        sampler="prioritized",
    )
    shard = ReplayShard(cfg, BOARD, seed=2)
    for first in range(0, 3000, 250):
        shard.insert(board_batch(first, 250))
        assert shard.memory()["rows_bytes"] <= budget
    oldest, end = shard.bounds()
    assert end == 3000 and 0 < oldest < 3000 - 250, "rows beyond the byte budget were evicted, not the row cap"
    assert shard.read(0, 10).skipped_rows == oldest, "a reader from the start is told"
    steps = shard.sample(5000)["step"]
    assert steps.min() >= oldest, "evicted rows carry no priority"
    np.testing.assert_allclose(shard.sampling_mass()[0], shard.sampling_mass()[1], rtol=1e-9)  # p = 1 each
    with pytest.raises(ValueError, match="leaving nothing of replay.capacity_bytes"):
        ReplayShard(ReplayConfig(capacity_rows=5_000, capacity_bytes=1_000_000, compression={"obs": "zstd"}), BOARD)


def test_a_shard_refuses_to_grow_past_its_memory_limit_and_keeps_what_it_has():
    with pytest.raises(ReplayMemoryError, match="more than replay.memory_limit_bytes=1,000,000; lower"):
        ReplayShard(ReplayConfig(capacity_rows=1000, memory_limit_bytes=1_000_000), BOARD)

    plain_bytes = 1000 * (BOARD.row_bytes - 2 * 9 * 20 * 20 * 4)
    cfg = ReplayConfig(
        capacity_rows=1000, compression={"obs": "lz4", "next_obs": "lz4"}, memory_limit_bytes=plain_bytes + 4_000_000
    )
    shard = ReplayShard(cfg, BOARD)
    shard.insert(board_batch(0, 400))
    with pytest.raises(
        ReplayMemoryError,
        match=r"storing 200 rows from noisy would take the shard to .* past "
        r"replay.memory_limit_bytes=.*Nothing of this batch was stored",
    ):
        shard.insert(board_batch(400, 200, noise=True), source="noisy")
    assert shard.bounds() == (0, 400) and shard.stats().rejected_batches == 1
    shard.insert(board_batch(400, 200))  # compressible rows still fit
    assert shard.bounds() == (0, 600) and shard.memory()["bytes"] <= cfg.memory_limit_bytes


def test_the_memory_report_through_ray_and_a_shard_that_cannot_start(ray_cluster):
    replay = start_replay(
        ReplayConfig(num_shards=2, capacity_rows=200, num_cpus=0.1, compression={"obs": "zstd"}), BOARD
    )
    try:
        ray.get(replay.insert_async(board_batch(0, 300)), timeout=60)
        reports = ray.get([shard.memory.remote() for shard in replay.shards], timeout=60)
        assert sum(report["rows"] for report in reports) == 300
        assert all(report["columns"]["obs"]["bytes"] < report["columns"]["obs"]["raw_bytes"] for report in reports)
    finally:
        replay.kill()
    with pytest.raises(Exception, match="more than replay.memory_limit_bytes"):
        start_replay(
            ReplayConfig(num_shards=1, capacity_rows=100_000, num_cpus=0.1, memory_limit_bytes=10_000_000), BOARD
        )


def test_large_copies_split_over_threads_store_and_gather_the_same_rows():
    from harvest.rollout.replay.ring import ColumnRing

    ring = ColumnRing(BOARD, capacity_rows=700, copy_threads=3)
    batches = [board_batch(first, 300) for first in range(0, 1200, 300)]  # wraps the ring twice
    for batch in batches:
        ring.append(batch)
    stored = TransitionBatch.concat(batches).take(slice(500, 1200))
    slots = np.random.default_rng(0).integers(0, 700, 400)
    gathered = ring.gather(slots)
    position = (slots - 500) % 700  # slot s holds sequence number 500 + (s - 500) % 700
    for name in BOARD.columns:
        np.testing.assert_array_equal(ring.read(500, 700)[name], stored[name], err_msg=name)
        np.testing.assert_array_equal(gathered[name], stored[name][position], err_msg=name)
