"""Durable replay shards: write-ahead log, checkpoints, restore after SIGKILL, no duplicates."""

import os
import signal
import threading

import numpy as np
import pytest
import ray

from harvest.rollout.config import ReplayConfig
from harvest.rollout.replay.replay import start_replay
from harvest.rollout.replay.shard import ReplayShard
from tests.rollout.replay.test_shard import SCHEMA, numbered_batch


def all_steps(shard) -> np.ndarray:
    return shard.read(0, 1_000_000).batch["step"]


def test_a_restarted_shard_restores_checkpoint_log_and_sampler_state(tmp_path):
    cfg = ReplayConfig(capacity_rows=50, sampler="prioritized", wal_dir=str(tmp_path), checkpoint_every_rows=25)
    shard = ReplayShard(cfg, SCHEMA, shard_index=1)
    for first in range(0, 60, 10):  # 60 rows: two checkpoints, the last 10 rows only in the log
        shard.insert(numbered_batch(first, 10), "c0", batch_id=first // 10)
    keys = shard.sample(200)["key"]
    shard.update_priorities(keys[:5], np.full(5, 7.0))
    shard.checkpoint()
    shard.insert(numbered_batch(60, 10), "c0", batch_id=6)
    before = (all_steps(shard), shard.stats(), shard.sampling_mass())
    assert sorted(p.name for p in (tmp_path / "shard-001").iterdir()) == [
        "checkpoint-000003.arrow",
        "checkpoint-000003.json",
        "wal-000003.arrow",
    ]

    restored = ReplayShard(cfg, SCHEMA, shard_index=1)  # what Ray's restart does: the same arguments
    np.testing.assert_array_equal(all_steps(restored), before[0])
    after = restored.stats()
    assert (after.size_rows, after.inserted_rows, after.evicted_rows, after.inserted_batches) == (
        before[1].size_rows,
        before[1].inserted_rows,
        before[1].evicted_rows,
        before[1].inserted_batches,
    )
    assert restored.sampling_mass() == pytest.approx(before[2])  # the priorities came back
    # A batch the shard already stored from that source is acknowledged again, not stored twice.
    again = restored.insert(numbered_batch(60, 10), "c0", batch_id=6)
    assert (again.first_seq, again.num_rows) == (60, 10) and restored.stats().inserted_rows == 70


def test_a_torn_log_tail_is_dropped_and_the_rest_restored(tmp_path):
    cfg = ReplayConfig(capacity_rows=100, wal_dir=str(tmp_path))
    shard = ReplayShard(cfg, SCHEMA)
    for first in range(0, 30, 10):
        shard.insert(numbered_batch(first, 10), "c0", batch_id=first // 10)
    log = tmp_path / "shard-000" / "wal-000000.arrow"
    data = log.read_bytes()
    log.write_bytes(data[:-40])  # the process died while writing the last batch (never acknowledged)
    restored = ReplayShard(cfg, SCHEMA)
    np.testing.assert_array_equal(all_steps(restored), np.arange(20))


@pytest.mark.timeout(180)
def test_a_durable_shard_killed_with_sigkill_mid_collection_loses_and_duplicates_nothing(ray_cluster, tmp_path):
    cfg = ReplayConfig(
        num_shards=2,
        capacity_rows=100_000,
        num_cpus=0.1,
        wal_dir=str(tmp_path),
        checkpoint_every_rows=3000,
        max_restarts=2,
    )
    replay = start_replay(cfg, SCHEMA)
    acked, errors = [], []
    stop = threading.Event()

    def collect():  # a collector: numbered batches, spread over both shards, each push acknowledged
        try:
            for index in range(400):
                if stop.is_set():
                    return
                batch = numbered_batch(index * 50, 50)
                batch.columns["episode_id"] = np.arange(index * 50, index * 50 + 50) // 7
                ray.get(replay.insert_async(batch, "collector 0", batch_id=index), timeout=60)
                acked.append(index)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    collector = threading.Thread(target=collect)
    collector.start()
    try:
        while len(acked) < 150 and collector.is_alive():
            threading.Event().wait(0.01)
        pid = ray.get(replay.shards[0].pid.remote(), timeout=30)
        os.kill(pid, signal.SIGKILL)
        collector.join(timeout=150)
        assert not errors, errors
        assert len(acked) == 400
        assert ray.get(replay.shards[0].pid.remote(), timeout=30) != pid, "Ray restarted the shard"
        steps = np.concatenate(
            [ray.get(shard.read.remote(0, 1_000_000), timeout=60).batch["step"] for shard in replay.shards]
        )
        assert steps.size == 400 * 50, "no acknowledged row lost, none stored twice"
        np.testing.assert_array_equal(np.sort(steps), np.arange(400 * 50))
    finally:
        stop.set()
        replay.kill()
