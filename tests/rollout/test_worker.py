"""Collectors and replay shards as real Ray actors on the session's small cluster."""

import time

import numpy as np
import pytest
import ray

from harvest.envs.config import EnvConfig
from harvest.rollout.batch import BatchSchemaError, TransitionBatch
from harvest.rollout.config import PolicyConfig, ReplayConfig, RolloutConfig
from harvest.rollout.evaluation import evaluate_policies
from harvest.rollout.policies import ConfiguredPolicyFactory
from harvest.rollout.replay.replay import Replay, start_replay
from harvest.rollout.replay.shard import ReplayShard
from harvest.rollout.worker import RolloutWorker, schema_for

pytestmark = pytest.mark.timeout(180)

COUNTING = EnvConfig(id="tests.toy_envs:CountingEnv", num_envs=3)
ROLLOUT = RolloutConfig(
    num_collectors=2,
    batch_rows=16,
    max_pushes_in_flight=2,
    num_cpus=0.25,
    push_timeout_s=30,
    policy=PolicyConfig(kind="random"),
)


def read_all(replay: Replay) -> list[TransitionBatch]:
    shards = []
    for shard in replay.shards:
        result = ray.get(shard.read.remote(0, 1_000_000), timeout=30)
        shards.append(result.batch)
    return shards


def test_collectors_fill_the_sharded_replay(ray_cluster):
    factory = ConfiguredPolicyFactory(ROLLOUT.policy, COUNTING.id, seed=0)
    replay = start_replay(ReplayConfig(num_shards=2, capacity_rows=10_000, num_cpus=0.1), schema_for(COUNTING, factory))
    worker_actor = ray.remote(RolloutWorker)
    workers = [
        worker_actor.options(num_cpus=0.25).remote(COUNTING, ROLLOUT, factory, replay, index, "test-run", index)
        for index in range(2)
    ]
    try:
        results = ray.get([worker.collect.remote(300) for worker in workers], timeout=120)
        shards = read_all(replay)
        stats = replay.stats()
        inserted_rows = replay.inserted_rows()
    finally:
        for worker in workers:
            ray.kill(worker, no_restart=True)
        replay.kill()
    acknowledged = sum(result.rows for result in results)
    assert all(300 <= result.rows < 300 + COUNTING.num_envs for result in results)
    assert stats.inserted_rows == inserted_rows == acknowledged == sum(shard.num_rows for shard in shards)
    assert all(shard.num_rows > 0 for shard in shards)
    episodes_per_shard = [set(np.unique(shard["episode_id"])) for shard in shards]
    assert not episodes_per_shard[0] & episodes_per_shard[1], "an episode must stay in one shard"
    rows = TransitionBatch.concat(shards)
    assert set(np.unique(rows["collector_id"])) == {0, 1}
    ordered = rows.take(np.lexsort((rows["step"], rows["episode_id"])))
    same_episode = ordered["episode_id"][1:] == ordered["episode_id"][:-1]
    np.testing.assert_array_equal(ordered["next_obs"][:-1][same_episode], ordered["obs"][1:][same_episode])
    assert (ordered["step"][1:][same_episode] == ordered["step"][:-1][same_episode] + 1).all()
    assert (np.diff(rows["timestamp"].view(np.int64)) != 0).any()


class SlowShard(ReplayShard):
    def insert(self, batch, source="unknown", batch_id=None):
        time.sleep(0.05)
        return super().insert(batch, source, batch_id)


def test_pushes_in_flight_stay_bounded(ray_cluster):
    factory = ConfiguredPolicyFactory(ROLLOUT.policy, COUNTING.id, seed=0)
    schema = schema_for(COUNTING, factory)
    shards = tuple(
        ray.remote(SlowShard).options(num_cpus=0.1).remote(ReplayConfig(capacity_rows=1000), schema, i)
        for i in range(2)
    )
    replay = Replay(shards, schema)
    worker = RolloutWorker(COUNTING, ROLLOUT, factory, replay, collector_id=0, run_id="bounded")
    seen = []
    push = worker._push

    def recording_push(batch):
        push(batch)
        seen.append(len(worker._in_flight))

    worker._push = recording_push
    try:
        result = worker.collect(200)
        assert replay.stats().inserted_rows == result.rows
    finally:
        replay.kill()
    assert seen and max(seen) < ROLLOUT.max_pushes_in_flight
    assert result.push_wait_seconds > 0  # the slow shards made the collector wait


def test_a_bad_batch_is_refused_with_the_column_named(ray_cluster):
    factory = ConfiguredPolicyFactory(ROLLOUT.policy, COUNTING.id, seed=0)
    schema = schema_for(COUNTING, factory)
    replay = start_replay(ReplayConfig(num_shards=1, capacity_rows=100, num_cpus=0.1), schema)
    try:
        good = schema.empty(4)
        good.columns["episode_id"][:] = 1
        bad = TransitionBatch(dict(good.columns, reward=good["reward"].astype(np.float64)))
        with pytest.raises(BatchSchemaError, match="column 'reward' from collector 5: expected float32"):
            ray.get(replay.insert_async(bad, "collector 5"), timeout=30)
        ray.get(replay.insert_async(good, "collector 6"), timeout=30)
        stats = replay.stats().shards[0]
        assert (stats.size_rows, stats.rejected_batches) == (4, 1)
    finally:
        replay.kill()


def test_collector_refuses_a_replay_of_another_env(ray_cluster):
    factory = ConfiguredPolicyFactory(PolicyConfig(kind="random"), "CartPole-v1")
    cartpole_schema = schema_for(EnvConfig(id="CartPole-v1", num_envs=1), factory)
    with pytest.raises(ValueError, match=r"RolloutWorker\[4\]: env 'tests.toy_envs:CountingEnv'"):
        RolloutWorker(COUNTING, ROLLOUT, factory, Replay((), cartpole_schema), collector_id=4, run_id="x")


def test_evaluation_reports_expert_far_above_random(ray_cluster):
    env_cfg = EnvConfig(id="CartPole-v1", num_envs=4)
    policies = {
        name: ConfiguredPolicyFactory(PolicyConfig(kind=name), env_cfg.id, seed=1) for name in ("expert", "random")
    }
    exploring = RolloutConfig(num_cpus=0.25, policy=PolicyConfig(epsilon=0.5))  # the collection's, not eval's
    results = evaluate_policies(policies, env_cfg, exploring, num_episodes=6, num_workers=2, run_id="eval-test")
    assert len(results["expert"].returns) == 6
    assert results["expert"].mean_return >= 475, "evaluation plays the policy itself, without exploration"
    assert results["random"].mean_return < 100
