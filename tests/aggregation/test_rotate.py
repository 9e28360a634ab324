"""Rotation for long runs: by time (the dataset grows while the replay fills) and by size."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray

from harvest.aggregation.compact import compact_replay, write_dataset
from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.dataset import Dataset
from harvest.aggregation.rotate import Rotation, RotationError
from harvest.envs.config import EnvConfig
from harvest.rollout.config import PolicyConfig, ReplayConfig, RolloutConfig
from harvest.rollout.policies import ConfiguredPolicyFactory
from harvest.rollout.replay.replay import start_replay
from harvest.rollout.worker import RolloutWorker, schema_for
from tests.aggregation.test_dataset import episodes_batch, read_back

pytestmark = pytest.mark.timeout(300)

ENV = EnvConfig(id="CartPole-v1", num_envs=4)
ROLLOUT = RolloutConfig(batch_rows=128, policy=PolicyConfig(kind="random"))
NEVER = 3600.0  # rotate_every_s for tests that call rotate() themselves


@pytest.fixture
def replay_and_worker(ray_cluster):
    """A live two-shard replay and a collector in this process (so a test decides when rows arrive)."""
    factory = ConfiguredPolicyFactory(ROLLOUT.policy, ENV.id, seed=0)
    replay = start_replay(ReplayConfig(num_shards=2, capacity_rows=50_000, num_cpus=0.1), schema_for(ENV, factory))
    worker = RolloutWorker(ENV, ROLLOUT, factory, replay, 0, "rotation-test", seed=0)
    yield replay, worker
    replay.kill()


def files_of_each_episode(root, manifest) -> dict[int, set[str]]:
    where: dict[int, set[str]] = {}
    for entry in manifest.files:
        for episode_id in np.unique(pq.read_table(root / entry.path, columns=["episode_id"])["episode_id"]):
            where.setdefault(int(episode_id), set()).add(entry.path)
    return where


def test_rotations_write_finished_episodes_during_collection_and_the_rest_at_the_end(replay_and_worker, tmp_path):
    replay, worker = replay_and_worker
    cfg = AggregationConfig(formats=["parquet", "npz"], partition_by=["time"], rotate_every_s=NEVER, num_cpus=0.1)
    out = tmp_path / "ds"
    rotation = Rotation(replay, out, cfg, "rot", ENV.id)
    worker.collect(1500)
    first = rotation.rotate()
    on_disk = json.loads((out / "_manifest.json").read_text())
    assert on_disk["in_progress"] and on_disk["rotations"] == 1 and on_disk["rows"] == first.rows > 0
    assert not (out / "_dataset.npz").exists(), "other formats wait for the end of the run"
    held = sum(ray.get([rotator.held_rows.remote() for rotator in rotation._rotators]))
    assert held > 0 and first.rows + held == 1500, "the rows of unfinished episodes wait for the next rotation"
    rows = read_back(Dataset.open(out))  # readable mid-run: whole, finished episodes only
    ends = np.flatnonzero(np.r_[rows["episode_id"][1:] != rows["episode_id"][:-1], True])
    assert (rows["terminated"][ends] | rows["truncated"][ends]).all()
    assert (rows["step"][np.r_[0, ends[:-1] + 1]] == 0).all()

    worker.collect(1500)  # the episodes held back go on in these rows
    assert rotation.rotate().rows > first.rows
    final = rotation.finish()
    assert not final.in_progress and final.rotations == 3 and (out / "_dataset.npz").exists()
    assert final.rows == replay.stats().inserted_rows == 3000 and sum(final.evicted_rows.values()) == 0
    assert {entry.path.split("-r")[1][:5] for entry in final.files} >= {"00000", "00001"}
    assert all(len(files) == 1 for files in files_of_each_episode(out, final).values()), "an episode was split"

    # the same rows as one compaction after the run, and the partitions' indexes list every rotation's files
    once = compact_replay(
        list(replay.shards), replay.schema, tmp_path / "once", AggregationConfig(num_cpus=0.1), "once", ENV.id
    )
    rotated, whole = read_back(Dataset.open(out)), read_back(Dataset.open(tmp_path / "once"))
    order = np.lexsort((rotated["step"], rotated["episode_id"]))
    for name, column in whole.items():
        np.testing.assert_array_equal(rotated[name][order], column, err_msg=name)
    assert once.episodes == final.episodes and once.episodes_complete == final.episodes_complete
    indexed = [json.loads(path.read_text()) for path in out.rglob("_index.json")]
    assert sum(index["rows"] for index in indexed) == final.rows
    assert sum(len(index["files"]) for index in indexed) == len(final.files)


def test_a_failed_rotation_is_retried_with_nothing_lost(replay_and_worker, tmp_path):
    replay, worker = replay_and_worker
    cfg = AggregationConfig(formats=["parquet"], rotate_every_s=NEVER, num_cpus=0.1)
    out = tmp_path / "ds"
    rotation = Rotation(replay, out, cfg, "rot", ENV.id)
    worker.collect(1000)
    blocker = out / "shard-000-r00000-part-00000.parquet"
    (blocker / "in-the-way").mkdir(parents=True)  # shard 0's first file cannot be written there
    with pytest.raises(RotationError, match=r"shard 0: .*shard-000-r00000-part-00000\.parquet"):
        rotation.rotate()
    written = Dataset.open(out).manifest
    assert written.in_progress and {entry.shard_index for entry in written.files} == {1}, (
        "shard 1 wrote its files and the manifest lists them"
    )
    shutil.rmtree(blocker)
    worker.collect(1000)
    final = rotation.finish()
    assert final.rows == replay.stats().inserted_rows >= 2000
    rows = read_back(Dataset.open(out))
    keys = set(zip(rows["episode_id"].tolist(), rows["step"].tolist()))
    assert len(keys) == final.rows, "a row was written twice or lost"


def test_a_run_rotates_while_collecting(ray_cluster, tmp_path):
    """The pipeline's collect stage with `rotate_every_s`: real collector actors, rotations on a timer."""
    from harvest.cluster import run_folder
    from harvest.cluster.config import load_config
    from harvest.cluster.stages import collect as collect_stage
    from harvest.cluster.stages import compact as compact_stage
    from tests.cluster.test_cli import TINY

    cfg = load_config(
        None,
        [
            *TINY,
            f"run.output_dir={tmp_path}",
            "rollout.policy.kind=random",
            "aggregation.rotate_every_s=0.1",
            "aggregation.formats=[parquet]",
        ],
    )
    run_id, paths = run_folder.prepare_run(cfg)
    rotations = []

    def rotating(replay):
        rotations.append(Rotation(replay, paths.dataset, cfg.aggregation, run_id, cfg.env.id))
        return rotations[-1]

    replay, summary = collect_stage.collect(cfg, run_id, paths, during=rotating)
    try:
        manifest = compact_stage.compact([], replay.schema, cfg, run_id, paths, rotation=rotations[0])
    finally:
        replay.kill()
    assert manifest.rotations >= 2 and rotations[0].failures == 0
    assert manifest.rows == summary.rows >= 3000 and not manifest.in_progress
    rows = read_back(Dataset.open(paths.dataset))
    assert len(set(zip(rows["episode_id"].tolist(), rows["step"].tolist()))) == manifest.rows


@pytest.mark.parametrize("max_file_bytes", [20_000, 60_000])
def test_files_rotate_by_size_at_episode_boundaries(tmp_path, max_file_bytes):
    schema, batch = episodes_batch([30, 5, 200, 12, 80, 80, 80, 3, 150, 40] * 4, seed=3)
    cfg = AggregationConfig(formats=["parquet"], max_file_bytes=max_file_bytes)
    manifest = write_dataset([batch], schema, tmp_path, cfg, run_id="sized", env_id="x")
    assert len(manifest.files) >= 2 and sum(entry.rows for entry in manifest.files) == batch.num_rows
    sizes = [(tmp_path / entry.path).stat().st_size for entry in manifest.files]
    assert sizes == [entry.bytes for entry in manifest.files]
    assert min(sizes[:-1]) >= max_file_bytes, "a file was closed before its limit"
    # past the limit by at most one row group: a quarter of the limit, or one episode (200 rows, ~16 kB)
    assert max(sizes) < max_file_bytes + 20_000, "a file ran far past its limit"
    assert all(len(files) == 1 for files in files_of_each_episode(tmp_path, manifest).values())
    back = read_back(Dataset.open(tmp_path))
    for name, column in batch.columns.items():
        np.testing.assert_array_equal(back[name], column)
