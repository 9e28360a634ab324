"""Replay sampling: the sum-tree, proportional prioritized replay, importance weights, keys
that route priority updates back, and FIFO/LIFO reads; on one shard and across shard actors."""

import numpy as np
import pytest
import ray

from harvest.rollout.config import RateLimitConfig, ReplayConfig
from harvest.rollout.replay.limiter import RateLimited, SampleToInsertRatio
from harvest.rollout.replay.replay import start_replay
from harvest.rollout.replay.shard import ReplayShard
from harvest.rollout.replay.sum_tree import SumTree
from tests.rollout.replay.test_shard import SCHEMA, numbered_batch


def test_sum_tree_finds_leaves_in_proportion_and_keeps_exact_sums():
    tree = SumTree(5)  # not a power of two: padded leaves stay 0
    values = np.array([1.0, 0.0, 2.0, 3.0, 4.0])
    tree.update(np.arange(5), values)
    assert tree.total == 10.0
    assert tree.find(np.array([0.0, 0.99, 1.0, 2.99, 3.0, 5.99, 6.0, 9.999])).tolist() == [0, 0, 2, 2, 3, 3, 4, 4]
    draws = tree.find(np.random.default_rng(0).uniform(0, tree.total, 200_000))
    np.testing.assert_allclose(np.bincount(draws, minlength=5) / 200_000, values / 10, atol=0.005)
    for _ in range(1000):  # many small updates: the root is still the exact sum
        tree.update(np.array([3]), np.array([0.1]))
        tree.update(np.array([3]), np.array([3.0]))
    assert tree.total == 10.0
    with pytest.raises(ValueError, match="finite and non-negative"):
        tree.update(np.array([0]), np.array([-1.0]))


def prioritized_shard(capacity=8, alpha=0.7, beta=0.5, shard_index=0):
    cfg = ReplayConfig(
        capacity_rows=capacity, sampler="prioritized", priority_alpha=alpha, priority_beta=beta, priority_eps=1e-6
    )
    return ReplayShard(cfg, SCHEMA, shard_index=shard_index, seed=3)


def test_prioritized_sampling_matches_p_alpha_and_the_importance_weights():
    shard = prioritized_shard()
    shard.insert(numbered_batch(0, 4))
    first = shard.sample(4)
    assert np.allclose(first["probability"], 0.25) and np.allclose(first["weight"], 1.0)  # new rows: max priority
    td_errors = np.array([0.5, 1.0, 2.0, 4.0])
    keys = np.arange(4)  # shard 0: the key is the sequence number
    assert shard.update_priorities(keys, td_errors).updated == 4
    sample = shard.sample(100_000)
    expected = (td_errors + 1e-6) ** 0.7 / ((td_errors + 1e-6) ** 0.7).sum()
    np.testing.assert_allclose(np.bincount(sample["step"], minlength=4) / 100_000, expected, atol=0.004)
    np.testing.assert_allclose(sample["probability"], expected[sample["step"]], rtol=1e-9)
    weights = (4 * expected) ** -0.5
    np.testing.assert_allclose(sample["weight"], (weights / weights.max())[sample["step"]], rtol=1e-5)
    # A new row enters at the largest priority seen so far (4.0).
    shard.insert(numbered_batch(4, 1))
    row = shard.sample(200_000)
    pa = np.r_[(td_errors + 1e-6) ** 0.7, (4.0 + 1e-6) ** 0.7]
    np.testing.assert_allclose(np.mean(row["step"] == 4), pa[4] / pa.sum(), atol=0.004)


def test_priority_updates_for_overwritten_rows_are_ignored_and_bad_keys_refused():
    shard = prioritized_shard(capacity=4, shard_index=2)
    shard.insert(numbered_batch(0, 4))
    keys = shard.sample(4)["key"]
    assert (keys >> 48 == 2).all()
    shard.insert(numbered_batch(4, 2))  # rows 0 and 1 are overwritten
    result = shard.update_priorities(np.array([2 << 48 | 0, 2 << 48 | 1, 2 << 48 | 3]), np.array([9.0, 9.0, 9.0]))
    assert (result.updated, result.overwritten) == (1, 2)
    with pytest.raises(ValueError, match="another shard or of rows never stored"):
        shard.update_priorities(np.array([1 << 48 | 3]), np.array([1.0]))
    with pytest.raises(ValueError, match="another shard or of rows never stored"):
        shard.update_priorities(np.array([2 << 48 | 99]), np.array([1.0]))
    uniform = ReplayShard(ReplayConfig(capacity_rows=4), SCHEMA)
    uniform.insert(numbered_batch(0, 4))
    with pytest.raises(ValueError, match="not 'prioritized'"):
        uniform.update_priorities(np.array([0]), np.array([1.0]))


@pytest.mark.parametrize("sampler, order", [("fifo", [2, 3, 4, 5, 6, 7]), ("lifo", [7, 6, 5, 4, 3, 2])])
def test_fifo_and_lifo_return_each_stored_row_once_in_order(sampler, order):
    shard = ReplayShard(ReplayConfig(capacity_rows=6, sampler=sampler), SCHEMA)
    shard.insert(numbered_batch(0, 8))  # rows 0 and 1 are already overwritten
    got = shard.sample(4)["step"].tolist() + shard.sample(4)["step"].tolist()
    assert got == order
    assert shard.sample(4) is None
    shard.insert(numbered_batch(8, 1))
    assert shard.sample(4)["step"].tolist() == [8]


def test_a_prioritized_replay_samples_across_shards_by_total_priority(ray_cluster):
    replay = start_replay(
        ReplayConfig(
            num_shards=2, capacity_rows=100, sampler="prioritized", priority_alpha=1.0, priority_beta=1.0, num_cpus=0.1
        ),
        SCHEMA,
    )
    try:
        batch = numbered_batch(0, 20)
        batch.columns["episode_id"] = np.arange(20)  # spread rows over both shards
        ray.get(replay.insert_async(batch), timeout=30)
        rng = np.random.default_rng(5)
        first = replay.sample(2000, rng)  # every row's key, drawn at least once
        keys, index = np.unique(first["key"], return_index=True)
        assert keys.size == 20 and set(np.unique(keys >> 48).tolist()) == {0, 1}
        td = np.where(first["step"][index] < 10, 1.0, 3.0)  # rows 10..19 get 3x the priority
        assert replay.update_priorities(keys, td).updated == 20
        sample = replay.sample(60_000, rng)
        expected = np.where(sample["step"] < 10, 1.0, 3.0) / 40.0
        np.testing.assert_allclose(sample["probability"], expected, rtol=1e-5)
        np.testing.assert_allclose(np.mean(sample["step"] >= 10), 30 / 40, atol=0.01)
        # Importance weights with beta = 1 undo the skew: weight x probability is the same for every row.
        product = sample["weight"] * sample["probability"]
        np.testing.assert_allclose(product, product.max(), rtol=1e-5)
    finally:
        replay.kill()


def test_sample_to_insert_ratio_holds_each_side_to_the_window():
    limiter = SampleToInsertRatio(samples_per_insert=2.0, min_size=10, error_buffer=8.0)
    assert limiter.can_insert() and not limiter.can_sample(size=0)
    limiter.on_insert(10)  # diff 20, window [12, 28]
    assert limiter.can_sample(size=10) and limiter.can_insert()
    limiter.on_insert(5)  # diff 30 > 28: the learners are behind
    assert not limiter.can_insert()
    limiter.on_sample(2)  # diff 28
    assert limiter.can_insert()
    limiter.on_sample(15)  # diff 13: one more sample leaves 12
    assert limiter.can_sample(size=15)
    limiter.on_sample(1)  # diff 12: samples wait for inserts
    assert not limiter.can_sample(size=15)
    with pytest.raises(ValueError, match="error_buffer=1.0: expected at least max"):
        SampleToInsertRatio(samples_per_insert=2.0, min_size=10, error_buffer=1.0)


def test_a_rate_limited_shard_actor_makes_inserts_and_samples_wait_for_each_other(ray_cluster):
    cfg = ReplayConfig(
        capacity_rows=1000,
        min_size_to_sample=10,
        num_cpus=0.1,
        rate_limit=RateLimitConfig(samples_per_insert=1.0, error_buffer=10.0, timeout_s=30.0),
    )
    replay = start_replay(cfg, SCHEMA)
    shard = replay.shards[0]
    try:
        ray.get(shard.insert_wait.remote(numbered_batch(0, 10)), timeout=30)  # diff 10, window [0, 20]
        ray.get(shard.insert_wait.remote(numbered_batch(10, 11)), timeout=30)  # diff 21: inserts now wait
        waiting = shard.insert_wait.remote(numbered_batch(21, 5))
        assert not ray.wait([waiting], timeout=1.0)[0], "the insert waits for samples"
        assert ray.get(shard.sample_wait.remote(2), timeout=30).num_rows == 2  # diff 19: the insert goes in
        assert ray.get(waiting, timeout=30).num_rows == 5  # diff 24
        assert ray.get(shard.sample_wait.remote(24), timeout=30).num_rows == 24  # diff 0
        waiting_sample = shard.sample_wait.remote(3)
        assert not ray.wait([waiting_sample], timeout=1.0)[0], "the sample waits for inserts"
        ray.get(replay.insert_async(numbered_batch(26, 4)), timeout=30)  # through the Replay handle
        assert ray.get(waiting_sample, timeout=30).num_rows == 3
        with pytest.raises(RateLimited, match=r"a sample waited 0.5s for the rate limiter \(samples per insert 1"):
            ray.get(shard.sample_wait.remote(5, timeout_s=0.5), timeout=30)
        with pytest.raises(RateLimited, match="inserts are held back"):  # the non-waiting insert refuses
            for first in range(30, 100, 10):
                ray.get(shard.insert.remote(numbered_batch(first, 10)), timeout=30)
    finally:
        replay.kill()
