"""Collector modes on real runs (trajectory, buffer) and a PettingZoo parallel env collected per agent."""

import json

import numpy as np
import pytest

from harvest.aggregation.dataset import Dataset
from harvest.cluster.cli import main
from harvest.envs.config import EnvConfig
from harvest.rollout.config import PolicyConfig, ReplayConfig, RolloutConfig
from harvest.rollout.policies import ConfiguredPolicyFactory
from harvest.rollout.replay.replay import start_replay
from harvest.rollout.worker import RolloutWorker, schema_for
from tests.aggregation.test_dataset import read_back
from tests.cluster.test_cli import TINY

pytestmark = pytest.mark.timeout(600)


def collect_and_compact(tmp_path, run_id, *overrides):
    """`harvest collect` then `harvest compact`: the real collectors, replay and compaction (no training)."""
    argv = [
        "collect",
        "--run-id",
        run_id,
        "--set",
        f"run.output_dir={tmp_path}",
        *sum((["--set", item] for item in [*TINY, *overrides]), []),
    ]
    assert main(argv) == 0
    summary = json.loads((tmp_path / run_id / "summary.json").read_text())
    assert main(["compact", str(tmp_path / run_id)]) == 0
    return Dataset.open(tmp_path / run_id / "dataset"), summary


def test_trajectory_mode_pushes_only_whole_episodes_that_pass(ray_cluster, tmp_path):
    dataset, summary = collect_and_compact(
        tmp_path,
        "traj",
        "rollout.policy.kind=random",
        "rollout.mode=trajectory",
        "rollout.trajectory_filter={min_length: 15}",
    )
    rows = read_back(dataset)
    ids, starts, lengths = np.unique(rows["episode_id"], return_index=True, return_counts=True)
    assert lengths.min() >= 15 and dataset.manifest.episodes_complete == ids.size
    for start, length in zip(starts, lengths):
        assert rows["step"][start : start + length].tolist() == list(range(length))
        assert rows["terminated"][start + length - 1] or rows["truncated"][start + length - 1]
    assert summary["collect"]["rows"] == dataset.manifest.rows >= 3000


def test_buffer_mode_holds_compressed_batches_within_its_limit_and_loses_nothing(ray_cluster, tmp_path):
    env = EnvConfig(id="CartPole-v1", num_envs=4)
    cfg = RolloutConfig(
        batch_rows=256, mode="buffer", buffer_mb=0.05, buffer_compression="zstd", policy=PolicyConfig(kind="random")
    )
    factory = ConfiguredPolicyFactory(cfg.policy, env.id, seed=0)
    replay = start_replay(ReplayConfig(num_shards=2, capacity_rows=100_000, num_cpus=0.1), schema_for(env, factory))
    try:
        worker = RolloutWorker(env, cfg, factory, replay, 0, "buffer-test", seed=0)
        result = worker.collect(5000)
        stats = replay.stats()
        assert stats.size_rows == result.rows >= 5000
        limit = 0.05 * 2**20
        assert 0 < result.peak_local_bytes < limit + 256 * worker.schema.row_bytes * 2
        assert worker.memory()["buffer_bytes"] == 0  # everything was pushed at the end
        rows = read_replay(replay)
        for episode in np.unique(rows["episode_id"]):
            steps = np.sort(rows["step"][rows["episode_id"] == episode])
            assert steps.tolist() == list(range(steps.size)), "a row lost or pushed twice"
    finally:
        replay.kill()


def read_replay(replay):
    import ray

    parts = []
    for shard in replay.shards:
        result = ray.get(shard.read.remote(0, 1_000_000))
        parts.append(result.batch.columns)
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def test_a_pettingzoo_parallel_env_is_collected_per_agent(ray_cluster, tmp_path):
    dataset, _ = collect_and_compact(
        tmp_path,
        "rps",
        "env.id=pettingzoo.classic.rps_v2:parallel_env",
        "env.kwargs={num_actions: 3, max_cycles: 10}",
        "rollout.policy.kind=random",
        "aggregation.formats=[parquet]",
    )
    rows = read_back(dataset)
    assert {"agent_id", "game_id"} <= set(rows)
    assert set(rows["agent_id"].tolist()) == {0, 1}
    games = 0
    for game in np.unique(rows["game_id"] + 10**6 * rows["collector_id"]):
        mine = (rows["game_id"] + 10**6 * rows["collector_id"]) == game
        per_agent = [np.unique(rows["episode_id"][mine & (rows["agent_id"] == agent)]) for agent in (0, 1)]
        assert all(ids.size == 1 for ids in per_agent) and per_agent[0] != per_agent[1]
        counts = [(mine & (rows["agent_id"] == agent)).sum() for agent in (0, 1)]
        assert counts[0] == counts[1] <= 10
        games += 1
    assert games > 100
    # Rock-paper-scissors is zero-sum: in every game and step the two agents' rewards cancel.
    assert rows["reward"].sum() == pytest.approx(0.0)
