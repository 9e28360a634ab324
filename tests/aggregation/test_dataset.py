"""Dataset writers: partitioned Parquet with per-folder indexes, HDF5, all-or-nothing writes,
and the same writers and readers on a real S3-compatible server (moto) on 127.0.0.1."""

import hashlib
import io
import json

import gymnasium as gym
import h5py
import numpy as np
import pyarrow.dataset as pads
import pytest

from harvest.aggregation.compact import write_dataset
from harvest.aggregation.config import AggregationConfig, Hdf5Config
from harvest.aggregation.dataset import Dataset
from harvest.aggregation.hdf5 import read_hdf5
from harvest.aggregation.storage import TMP_MARK, StorageError, location
from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.episode_filter import EpisodeFilter
from tests.rollout.test_batch import random_batch

HOUR = np.timedelta64(3600, "s")
START = np.datetime64("2026-11-23T13:10:00", "ns")


def episodes_batch(lengths: list[int], seed: int = 0, minutes_apart: int = 25) -> tuple[BatchSchema, TransitionBatch]:
    """Episodes of the given lengths (a 3-float observation, Discrete(4) actions), the k-th
    starting k * `minutes_apart` minutes after 13:10 UTC, one step a second, collectors 0/1 alternating."""
    schema = BatchSchema.for_spaces(gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Discrete(4))
    batch = random_batch(schema, sum(lengths), seed)
    episode = np.repeat(np.arange(len(lengths)), lengths)
    step = np.concatenate([np.arange(n) for n in lengths])
    batch.columns.update(
        episode_id=episode.astype(np.int64),
        step=step.astype(np.int64),
        collector_id=(episode % 2).astype(np.int64),
        terminated=np.concatenate([np.r_[np.zeros(n - 1, bool), True] for n in lengths]),
        truncated=np.zeros(sum(lengths), bool),
        timestamp=START + (episode * minutes_apart * 60 + step).astype("timedelta64[s]"),
    )
    return schema, batch


def read_back(dataset: Dataset) -> dict[str, np.ndarray]:
    table = dataset.to_pyarrow().to_table().sort_by([("episode_id", "ascending"), ("step", "ascending")])
    return TransitionBatch.from_arrow(table).columns


def test_time_partitions_follow_each_episodes_first_step_and_index_every_folder(tmp_path):
    lengths = [30, 5, 3700, 12, 40, 7]  # episode 2 runs for over an hour: it stays whole in its first hour
    schema, batch = episodes_batch(lengths)
    cfg = AggregationConfig(formats=["parquet"], partition_by=["time"], rows_per_file=20)
    manifest = write_dataset([batch], schema, tmp_path / "data", cfg, run_id="t", env_id="x")
    dataset = Dataset.open(tmp_path / "data")
    starts = START + np.arange(len(lengths)) * np.timedelta64(25 * 60, "s")
    expected_hours = {f"year=2026/month=11/day=23/hour={str(t.astype('datetime64[h]'))[-2:]}" for t in starts}
    folders = {entry.path.rsplit("/", 1)[0] for entry in manifest.files}
    assert (
        folders
        == expected_hours
        == {
            "year=2026/month=11/day=23/hour=13",
            "year=2026/month=11/day=23/hour=14",
            "year=2026/month=11/day=23/hour=15",
        }
    )
    by_episode = {}
    for entry in manifest.files:
        ids = pads.dataset(str(tmp_path / "data" / entry.path)).to_table(columns=["episode_id"])["episode_id"]
        for episode_id in set(ids.to_pylist()):
            by_episode.setdefault(episode_id, set()).add(entry.path.rsplit("/", 1)[0])
        assert entry.partition == dict(part.split("=") for part in entry.path.rsplit("/", 1)[0].split("/"))
    assert all(len(places) == 1 for places in by_episode.values()), "an episode split across folders"
    for entry in manifest.files:  # the manifest's size and checksum are the file's
        data = (tmp_path / "data" / entry.path).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry.bytes, entry.sha256)
    assert by_episode[2] == {"year=2026/month=11/day=23/hour=14"}  # 14:00 start, 3,700 s long
    for folder in folders:
        index = json.loads((tmp_path / "data" / folder / "_index.json").read_text())
        listed = [entry for entry in manifest.files if entry.path.startswith(folder + "/")]
        assert index["rows"] == sum(entry.rows for entry in listed)
        assert sorted(f["path"] for f in index["files"]) == sorted(e.path.rsplit("/", 1)[1] for e in listed)
        assert index["partition"]["hour"] == folder[-2:]
    assert manifest.partition_by == ["time"] and manifest.rows == sum(lengths)
    assert manifest.first_timestamp.startswith("2026-11-23T13:10:00")
    back = read_back(dataset)
    for name, column in batch.columns.items():
        np.testing.assert_array_equal(back[name], column)
    assert not list((tmp_path / "data").rglob(f"*{TMP_MARK}*"))


def test_column_partitions_and_combinations(tmp_path):
    schema, batch = episodes_batch([10, 20, 30, 40])
    manifest = write_dataset(
        [batch],
        schema,
        tmp_path / "d",
        AggregationConfig(formats=["parquet"], partition_by=["collector_id", "time"]),
        run_id="t",
        env_id="x",
    )
    assert sorted({e.path.rsplit("/", 1)[0] for e in manifest.files}) == [
        "collector_id=0/year=2026/month=11/day=23/hour=13",
        "collector_id=0/year=2026/month=11/day=23/hour=14",
        "collector_id=1/year=2026/month=11/day=23/hour=13",
        "collector_id=1/year=2026/month=11/day=23/hour=14",
    ]
    # Readers that discover hive folders themselves (no manifest) see every row too.
    assert (
        pads.dataset(str(tmp_path / "d"), format="parquet", exclude_invalid_files=True, partitioning=None).count_rows()
        == 100
    )
    with pytest.raises(ValueError, match="partition_by: no column 'game_id'"):
        write_dataset([batch], schema, tmp_path / "e", AggregationConfig(partition_by=["game_id"]), "t", "x")
    with pytest.raises(ValueError, match="column 'obs' is float32\\[3\\]"):
        write_dataset([batch], schema, tmp_path / "e", AggregationConfig(partition_by=["obs"]), "t", "x")


@pytest.mark.parametrize("compression", ["gzip", "lzf", "none"])
def test_hdf5_columns_layout_round_trips_with_an_episode_table(tmp_path, compression):
    lengths = [7, 1, 19, 4]
    schema, batch = episodes_batch(lengths, seed=3)
    cfg = AggregationConfig(
        formats=["parquet", "hdf5"], rows_per_file=10, hdf5=Hdf5Config(compression=compression, chunk_rows=8)
    )
    manifest = write_dataset([batch], schema, tmp_path / "d", cfg, run_id="t", env_id="CartPole-v1")
    assert manifest.formats["hdf5"] == "_dataset.h5"
    columns = read_hdf5(tmp_path / "d" / "_dataset.h5")
    for name, column in batch.columns.items():
        np.testing.assert_array_equal(columns[name], column)
    with h5py.File(tmp_path / "d" / "_dataset.h5") as h5:
        assert h5.attrs["env_id"] == "CartPole-v1" and json.loads(h5.attrs["schema"]) == schema.to_json()
        assert h5["data/obs"].compression == (None if compression == "none" else compression)
        assert h5["data/obs"].chunks == (8, 3)
        table = h5["episodes"][()]
    assert table["length"].tolist() == lengths and table["start"].tolist() == [0, 7, 8, 27]
    rewards = batch["reward"]
    np.testing.assert_allclose(
        table["return"], [rewards[s : s + n].sum() for s, n in zip([0, 7, 8, 27], lengths)], rtol=1e-6
    )
    assert table["terminated"].all()


def test_hdf5_episodes_layout_has_a_group_per_episode(tmp_path):
    schema, batch = episodes_batch([5, 9, 2], seed=4)
    write_dataset(
        [batch],
        schema,
        tmp_path / "d",
        AggregationConfig(formats=["parquet", "hdf5"], hdf5=Hdf5Config(layout="episodes")),
        run_id="t",
        env_id="x",
    )
    with h5py.File(tmp_path / "d" / "_dataset.h5") as h5:
        assert sorted(h5["episodes"]) == ["0", "1", "2"]
        episode = h5["episodes/1"]
        assert episode.attrs["length"] == 9 and bool(episode.attrs["terminated"])
        np.testing.assert_array_equal(episode["obs"][()], batch["obs"][5:14])
        assert episode.attrs["return"] == pytest.approx(float(batch["reward"][5:14].sum()))
    with pytest.raises(ValueError, match="layout 'episodes'"):
        read_hdf5(tmp_path / "d" / "_dataset.h5")


def test_tfrecord_export_reads_back_without_tensorflow(tmp_path):
    from harvest.aggregation.tfrecord import read_tfrecord

    schema, batch = episodes_batch([6, 3, 11], seed=8)
    manifest = write_dataset(
        [batch], schema, tmp_path / "d", AggregationConfig(formats=["parquet", "tfrecord"]), run_id="t", env_id="x"
    )
    assert manifest.formats["tfrecord"] == "_dataset.tfrecord"
    with pytest.raises(ImportError):
        __import__("tensorflow")
    columns = read_tfrecord(tmp_path / "d" / "_dataset.tfrecord")
    for name, column in batch.columns.items():
        np.testing.assert_array_equal(columns[name], column, err_msg=name)


def test_writes_are_all_or_nothing_and_name_the_path(tmp_path):
    target = location(tmp_path / "a" / "file.bin")
    target.write_bytes(b"x" * 10)
    assert target.read_bytes() == b"x" * 10
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(StorageError, match="blocker/inner/file.bin: cannot write it"):
        location(tmp_path / "blocker" / "inner" / "file.bin").write_bytes(b"y")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["blocker", "file.bin"]
    with pytest.raises(StorageError, match="credentials in the URI are refused"):
        location("s3://key:secret@bucket/x")
    with pytest.raises(StorageError, match="nope.bin: no such file"):
        location(tmp_path / "nope.bin").read_bytes()


SECRET = "harvest-test-secret-do-not-log"


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3-compatible server (moto) on 127.0.0.1 for this module's tests."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, monkeypatch, request):
    """A fresh bucket; the AWS environment points pyarrow (and boto3) at the local server."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "harvest-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    name = request.node.name.lower().replace("_", "-")[:40].strip("-")
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def object_names(bucket: str, prefix: str = "") -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def test_writers_and_readers_work_on_s3(bucket, tmp_path):
    schema, batch = episodes_batch([30, 5, 200, 12], seed=5)
    uri = f"s3://{bucket}/datasets/one"
    manifest = write_dataset(
        [batch],
        schema,
        uri,
        AggregationConfig(formats=["parquet", "npz", "hdf5"], partition_by=["time"], rows_per_file=50),
        run_id="s3",
        env_id="x",
    )
    names = object_names(bucket)
    assert "datasets/one/_manifest.json" in names and "datasets/one/_dataset.h5" in names
    assert "datasets/one/_dataset.npz" in names
    assert "datasets/one/year=2026/month=11/day=23/hour=13/_index.json" in names
    assert {f"datasets/one/{entry.path}" for entry in manifest.files} <= set(names)
    assert not [name for name in names if TMP_MARK in name]
    entry = manifest.files[0]
    data = location(f"{uri}/{entry.path}").read_bytes()
    assert (len(data), hashlib.sha256(data).hexdigest()) == (entry.bytes, entry.sha256)
    dataset = Dataset.open(uri)
    assert str(dataset.folder) == uri and dataset.manifest.rows == 247
    back = read_back(dataset)
    for name, column in batch.columns.items():
        np.testing.assert_array_equal(back[name], column)
    np.testing.assert_array_equal(dataset.read_columns(["obs"])["obs"].shape, (247, 3))
    local = tmp_path / "copy.h5"
    local.write_bytes(location(f"{uri}/_dataset.h5").read_bytes())
    np.testing.assert_array_equal(read_hdf5(local)["action"], batch["action"])
    with pytest.raises(Exception, match=f"s3://{bucket}/datasets/missing: no _manifest.json"):
        Dataset.open(f"s3://{bucket}/datasets/missing")


def test_inspect_windows_exports_and_edits_read_and_write_s3(ray_cluster, bucket):
    from harvest.aggregation.edit import split_dataset
    from harvest.aggregation.export import export_offline_rl
    from harvest.aggregation.inspect import inspect_dataset
    from harvest.aggregation.windows import count_windows, windows

    lengths = [30, 5, 200, 12]
    schema, batch = episodes_batch(lengths, seed=6)
    same_episode = np.r_[batch["episode_id"][1:] == batch["episode_id"][:-1], False]
    batch.columns["next_obs"][same_episode] = batch["obs"][1:][same_episode[:-1]]  # a clean dataset
    batch.columns["action"] = np.arange(batch.num_rows) % 4
    uri = f"s3://{bucket}/datasets/two"
    write_dataset(
        [batch],
        schema,
        uri,
        AggregationConfig(formats=["parquet"], partition_by=["collector_id"]),
        run_id="s3-2",
        env_id="x",
    )
    dataset = Dataset.open(uri)
    report = inspect_dataset(dataset)
    assert report.overview["rows"] == 247 and report.overview["episodes"] == 4
    assert not report.errors, report.findings
    assert count_windows(dataset, history=10, stride=5)["windows"] == sum((n - 10) // 5 + 1 for n in lengths if n >= 10)
    assert windows(dataset, history=10, stride=5).count() == count_windows(dataset, 10, 5)["windows"]
    export_offline_rl(dataset, f"{uri}-offline.npz", file_format="npz")
    with np.load(io.BytesIO(location(f"{uri}-offline.npz").read_bytes()), allow_pickle=False) as offline:
        in_file_order = np.lexsort((batch["step"], batch["episode_id"], batch["collector_id"]))  # collector folders
        np.testing.assert_array_equal(offline["actions"], batch["action"][in_file_order])
    split_dataset(dataset, f"{uri}-split", {"train": 0.5, "val": 0.5}, seed=0)
    halves = [Dataset.open(f"{uri}-split/{name}") for name in ("train", "val")]
    assert sum(half.manifest.rows for half in halves) == 247
    assert all(half.manifest.parents == [uri] for half in halves)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_run_writes_partitioned_parquet_to_s3_and_ray_data_reads_it_back(ray_cluster, bucket, tmp_path):
    import ray.data

    from harvest.cluster.cli import main
    from tests.cluster.test_cli import TINY

    argv = [
        "run",
        "--run-id",
        "to-s3",
        "--set",
        f"run.output_dir={tmp_path}",
        "--set",
        f"aggregation.output=s3://{bucket}/runs",
        "--set",
        "aggregation.partition_by=[collector_id, time]",
        "--set",
        "aggregation.formats=[parquet, hdf5]",
        *sum((["--set", item] for item in TINY), []),
    ]
    assert main(argv) == 0, (tmp_path / "to-s3" / "harvest.log").read_text()[-6000:]  # an internal error's traceback
    prefix = f"s3://{bucket}/runs/to-s3"
    dataset = Dataset.open(prefix)
    names = object_names(bucket, "runs/to-s3/")
    indexes = [name for name in names if name.endswith("/_index.json")]
    # (which collectors stored rows depends on how fast each started: on a busy machine one may take them all)
    collectors = dataset.manifest.collectors
    assert collectors and {name.split("/")[2] for name in indexes} == {f"collector_id={c}" for c in collectors}
    assert (
        sum(json.loads(location(f"s3://{bucket}/{name}").read_text())["rows"] for name in indexes)
        == dataset.manifest.rows
        >= 3000
    )
    # Ray Data reads the prefix (hive folders and all) with the same pyarrow file system.
    # (the partition column is in the folder names alone, as Hive lays it out: untyped, Ray Data gives strings)
    rows = ray.data.read_parquet(dataset.folder.path, filesystem=dataset.filesystem, file_extensions=["parquet"])
    assert rows.count() == dataset.manifest.rows
    assert sorted(set(rows.unique("collector_id"))) == [str(c) for c in collectors]
    for verify in (True, False):  # Harvest's own readers give the column its type back
        typed = Dataset.open(prefix, verify=verify).to_ray()
        assert sorted(set(typed.unique("collector_id"))) == collectors and typed.count() == dataset.manifest.rows
    summary = json.loads((tmp_path / "to-s3" / "summary.json").read_text())
    assert summary["train"]["train_rows"] > 0 and not (tmp_path / "to-s3" / "dataset").exists()
    for text in [(tmp_path / "to-s3" / name).read_text() for name in ("harvest.log", "config.yaml", "summary.json")] + [
        location(f"{prefix}/_manifest.json").read_text()
    ]:
        assert SECRET not in text


def pixel_batch(rows: int = 40):
    """Smooth 32x32 RGB frames (as a renderer makes them) in episodes of 10."""
    schema = BatchSchema.for_spaces(gym.spaces.Box(0, 255, (32, 32, 3), np.uint8), gym.spaces.Discrete(3))
    batch = random_batch(schema, rows, 9)
    y, x = np.mgrid[0:32, 0:32]
    frames = np.stack(
        [np.stack([(x * 8 + t) % 256, (y * 8) % 256, np.full_like(x, (t * 5) % 256)], axis=-1) for t in range(rows + 1)]
    ).astype(np.uint8)
    batch.columns.update(
        obs=frames[:-1],
        next_obs=frames[1:],
        episode_id=np.arange(rows) // 10,
        step=np.arange(rows) % 10,
        action=np.arange(rows) % 3,
    )
    return schema, batch


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_pixel_columns_are_stored_as_images_and_read_back_as_pixels(ray_cluster, tmp_path, fmt):
    import pyarrow.parquet as pq

    from harvest.aggregation import edit

    schema, batch = pixel_batch()
    plain = write_dataset([batch], schema, tmp_path / "plain", AggregationConfig(formats=["parquet"]), "t", "x")
    manifest = write_dataset(
        [batch],
        schema,
        tmp_path / "img",
        AggregationConfig(formats=["parquet"], image_compression={"obs": fmt, "next_obs": fmt}),
        "t",
        "x",
    )
    assert manifest.image_columns == {"obs": fmt, "next_obs": fmt}
    stored = pq.read_schema(tmp_path / "img" / manifest.files[0].path)
    assert str(stored.field("obs").type) == "binary" and stored.field("obs").metadata == {
        b"harvest.image": fmt.encode()
    }
    assert manifest.files[0].bytes < plain.files[0].bytes
    dataset = Dataset.open(tmp_path / "img")
    pixels = dataset.read_columns(["obs"])["obs"]
    assert pixels.dtype == np.uint8 and pixels.shape == (40, 32, 32, 3)
    if fmt == "png":
        np.testing.assert_array_equal(pixels, batch["obs"])
    else:
        assert np.abs(pixels.astype(int) - batch["obs"]).mean() < 8
    if fmt == "png":  # Ray Data reads decode them too
        (row,) = dataset.to_ray(columns=["obs"]).take(1)
        assert row["obs"].shape == (32, 32, 3) and row["obs"].dtype == np.uint8
    kept = edit.filter_dataset(dataset, tmp_path / "kept", EpisodeFilter(min_length=10))
    assert kept.image_columns == manifest.image_columns and kept.rows == 40
    with pytest.raises(ValueError, match="image_compression: column 'action' is int64"):
        write_dataset(
            [batch], schema, tmp_path / "bad", AggregationConfig(image_compression={"action": "png"}), "t", "x"
        )
