"""Compaction of live shards and snapshots into Parquet + manifest + NPZ, read back three ways."""

import json

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import ray

from harvest.aggregation.compact import compact_replay
from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.dataset import Dataset, DatasetError
from harvest.aggregation.part_files import _episode_cut_points
from harvest.aggregation.shard_rows import snapshot_replay
from harvest.envs.config import EnvConfig
from harvest.rollout.config import PolicyConfig, ReplayConfig, RolloutConfig
from harvest.rollout.policies import ConfiguredPolicyFactory
from harvest.rollout.replay.replay import start_replay
from harvest.rollout.worker import RolloutWorker, schema_for

pytestmark = pytest.mark.timeout(240)

ENV = EnvConfig(id="CartPole-v1", num_envs=4)
ROLLOUT = RolloutConfig(batch_rows=256, num_cpus=0.25, policy=PolicyConfig(kind="random"))


@pytest.fixture(scope="module")
def filled_replay(ray_cluster):
    factory = ConfiguredPolicyFactory(ROLLOUT.policy, ENV.id, seed=0)
    replay = start_replay(ReplayConfig(num_shards=2, capacity_rows=5_000, num_cpus=0.1), schema_for(ENV, factory))
    worker = ray.remote(RolloutWorker).options(num_cpus=0.25).remote(ENV, ROLLOUT, factory, replay, 0, "agg", 0)
    try:
        result = ray.get(worker.collect.remote(3_000), timeout=120)
    finally:
        ray.kill(worker, no_restart=True)
    yield replay, result
    replay.kill()


def assert_episodes_chain(table_or_batch):
    """Within every episode, rows are in step order and each next_obs is the next row's obs."""
    episode_ids = np.asarray(table_or_batch["episode_id"])
    obs, next_obs, step = (np.asarray(table_or_batch[name]) for name in ("obs", "next_obs", "step"))
    same = episode_ids[1:] == episode_ids[:-1]
    assert same.any()
    np.testing.assert_array_equal(next_obs[:-1][same], obs[1:][same])
    assert (step[1:][same] == step[:-1][same] + 1).all()
    starts = np.r_[True, ~same]
    assert (step[starts] == 0).all() or (np.unique(episode_ids).size > 0)


def test_compaction_writes_parquet_manifest_and_npz(filled_replay, tmp_path):
    replay, result = filled_replay
    cfg = AggregationConfig(rows_per_file=700, num_cpus=0.1)
    manifest = compact_replay(list(replay.shards), replay.schema, tmp_path, cfg, run_id="agg", env_id=ENV.id)
    assert manifest.rows == result.rows == sum(entry.rows for entry in manifest.files)
    assert manifest.collectors == [0]
    assert manifest.episodes_complete == len(result.episodes)
    assert len(manifest.files) > 2 and all(entry.rows >= 1 for entry in manifest.files)
    on_disk = json.loads((tmp_path / "_manifest.json").read_text())
    assert on_disk["schema"]["columns"]["obs"] == {"dtype": "<f4", "shape": [4]}
    assert set(on_disk) >= {"files", "rows", "schema", "episodes", "collectors", "created_at"}

    # pyarrow.dataset: every file, episodes never split across files, chains intact per file.
    episodes_per_file = []
    for entry in manifest.files:
        table = pq.read_table(tmp_path / entry.path)
        assert table.num_rows == entry.rows
        episodes_per_file.append(set(table.column("episode_id").to_pylist()))
        from harvest.rollout.batch import TransitionBatch

        assert_episodes_chain(TransitionBatch.from_arrow(table).columns)
    assert sum(len(ids) for ids in episodes_per_file) == len(set().union(*episodes_per_file))
    table = pads.dataset([str(tmp_path / e.path) for e in manifest.files], format="parquet").to_table()
    assert table.num_rows == manifest.rows

    # Ray Data reads the same files, tensors included.
    dataset = Dataset.open(tmp_path)
    ray_rows = dataset.to_ray().take_batch(10, batch_format="numpy")
    assert ray_rows["obs"].shape == (10, 4) and ray_rows["obs"].dtype == np.float32
    assert dataset.to_ray().count() == manifest.rows

    # NPZ without pickle.
    with np.load(tmp_path / "_dataset.npz", allow_pickle=False) as npz:
        assert npz["observations"].shape == (manifest.rows, 4)
        assert npz["actions"].dtype == np.int64
        metadata = json.loads(str(npz["metadata"]))
        assert metadata["rows"] == manifest.rows and metadata["keys"]["next_obs"] == "next_observations"
        assert_episodes_chain(
            {
                "episode_id": npz["episode_ids"],
                "obs": npz["observations"],
                "next_obs": npz["next_observations"],
                "step": npz["steps"],
            }
        )


def test_snapshot_then_compact_gives_the_same_rows(filled_replay, tmp_path):
    replay, _ = filled_replay
    paths = snapshot_replay(replay, tmp_path / "replay")
    cfg = AggregationConfig(formats=["parquet"], num_cpus=0.1)
    from_snapshot = compact_replay([str(p) for p in paths], replay.schema, tmp_path / "a", cfg, "agg", ENV.id)
    live = compact_replay(list(replay.shards), replay.schema, tmp_path / "b", cfg, "agg", ENV.id)
    assert from_snapshot.rows == live.rows and from_snapshot.npz is None
    a = Dataset.open(tmp_path / "a").to_pyarrow().to_table().sort_by("episode_id")
    b = Dataset.open(tmp_path / "b").to_pyarrow().to_table().sort_by("episode_id")
    assert a.column("episode_id").equals(b.column("episode_id"))


def test_evicted_rows_are_reported_in_the_manifest(ray_cluster, tmp_path):
    factory = ConfiguredPolicyFactory(ROLLOUT.policy, ENV.id, seed=0)
    replay = start_replay(ReplayConfig(num_shards=1, capacity_rows=500, num_cpus=0.1), schema_for(ENV, factory))
    worker = RolloutWorker(ENV, ROLLOUT, factory, replay, 0, "evict")
    try:
        result = worker.collect(1_200)
        manifest = compact_replay(
            list(replay.shards), replay.schema, tmp_path, AggregationConfig(num_cpus=0.1), "evict", ENV.id
        )
    finally:
        replay.kill()
    assert manifest.rows == 500
    assert manifest.evicted_rows == {"0": result.rows - 500}


def test_cut_points_fall_on_episode_starts():
    episode_ids = np.repeat([1, 2, 3, 4], [5, 1, 7, 2])
    assert _episode_cut_points(episode_ids, 6) == [0, 6, 13, 15]
    assert _episode_cut_points(episode_ids, 100) == [0, 15]
    assert _episode_cut_points(np.array([], dtype=np.int64), 5) == [0, 0]


def test_opening_a_broken_dataset_names_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="no _manifest.json"):
        Dataset.open(tmp_path)


def test_a_manifest_listing_a_missing_file_is_refused(filled_replay, tmp_path):
    replay, _ = filled_replay
    manifest = compact_replay(
        list(replay.shards),
        replay.schema,
        tmp_path,
        AggregationConfig(formats=["parquet"], num_cpus=0.1),
        "agg",
        ENV.id,
    )
    (tmp_path / manifest.files[0].path).unlink()
    with pytest.raises(DatasetError, match=f"missing: \\['{manifest.files[0].path}'\\]"):
        Dataset.open(tmp_path)
