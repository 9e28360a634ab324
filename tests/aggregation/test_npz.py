"""The NPZ export on its own, from Parquet files written here: plural keys, rows in episode and
step order across files, JSON metadata, decoded images, and a damaged file named."""

import hashlib
import json
import re

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harvest.aggregation.integrity import DatasetIntegrityError
from harvest.aggregation.manifest import FileEntry, Manifest
from harvest.aggregation.npz import NPZ_NAME, npz_key, write_npz
from harvest.aggregation.storage import location
from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.images import with_encoded_images
from tests.rollout.test_batch import random_batch

DICT_SCHEMA = BatchSchema.for_spaces(
    gym.spaces.Dict({"pos": gym.spaces.Box(-1, 1, (2,), np.float32), "hp": gym.spaces.Discrete(5)}),
    gym.spaces.Discrete(3),
)


@pytest.mark.parametrize(
    "column, key",
    [
        ("obs", "observations"),
        ("obs.pos", "observations.pos"),
        ("next_obs.hp", "next_observations.hp"),
        ("action", "actions"),
        ("episode_id", "episode_ids"),
        ("policy_version", "policy_versions"),
        ("terminated", "terminated"),
        ("logp", "logp"),  # a policy's extra column keeps its name
    ],
)
def test_columns_get_plural_npz_keys(column, key):
    assert npz_key(column) == key


def rows(schema: BatchSchema, episode_id: int, steps: list[int], seed: int) -> TransitionBatch:
    batch = random_batch(schema, len(steps), seed=seed)
    batch.columns["episode_id"][:] = episode_id
    batch.columns["step"] = np.array(steps, np.int64)
    return batch


def write_dataset(root, schema: BatchSchema, parts: list[TransitionBatch], encode: dict | None = None) -> Manifest:
    """Parquet files of `parts` under `root` and the manifest that lists them."""
    entries = []
    for index, part in enumerate(parts):
        table = pa.Table.from_batches([part.to_arrow(schema)])
        if encode:
            table = with_encoded_images(table, encode)
        path = root / f"part-{index}.parquet"
        pq.write_table(table, path)
        data = path.read_bytes()
        entries.append(
            FileEntry(path.name, part.num_rows, len(data), hashlib.sha256(data).hexdigest(), 0, 1, None, None)
        )
    total = sum(part.num_rows for part in parts)
    return Manifest("run-7", "2026-01-02T03:04:05+00:00", "Toy-v0", total, 2, 2, [0], schema.to_json(), entries)


def test_the_npz_holds_every_row_in_episode_and_step_order_under_plural_keys(tmp_path):
    parts = [
        rows(DICT_SCHEMA, 2, [0, 1], seed=1),
        rows(DICT_SCHEMA, 1, [2, 3], seed=2),
        rows(DICT_SCHEMA, 1, [0, 1], seed=3),
    ]
    manifest = write_dataset(tmp_path, DICT_SCHEMA, parts)
    target = write_npz(location(tmp_path), manifest)
    assert target.path == str(tmp_path / NPZ_NAME)
    with np.load(tmp_path / NPZ_NAME, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted([npz_key(name) for name in DICT_SCHEMA.columns] + ["metadata"])
        assert npz["episode_ids"].tolist() == [1, 1, 1, 1, 2, 2]
        assert npz["steps"].tolist() == [0, 1, 2, 3, 0, 1]
        in_order = [parts[2], parts[1], parts[0]]
        np.testing.assert_array_equal(npz["observations.pos"], np.concatenate([p["obs.pos"] for p in in_order]))
        np.testing.assert_array_equal(npz["actions"], np.concatenate([p["action"] for p in in_order]))
        assert npz["timestamps"].dtype == np.dtype("datetime64[ns]")
        metadata = json.loads(str(npz["metadata"]))
    assert {key: metadata[key] for key in ("run_id", "env_id", "created_at", "rows", "episodes")} == {
        "run_id": "run-7",
        "env_id": "Toy-v0",
        "created_at": "2026-01-02T03:04:05+00:00",
        "rows": 6,
        "episodes": 2,
    }
    assert metadata["keys"]["obs.hp"] == "observations.hp" and metadata["schema"] == DICT_SCHEMA.to_json()


def test_images_stored_encoded_come_out_as_pixels(tmp_path):
    schema = BatchSchema.for_spaces(gym.spaces.Box(0, 255, (4, 5, 3), np.uint8), gym.spaces.Discrete(2))
    part = rows(schema, 0, [0, 1, 2], seed=4)
    part.columns["obs"] = np.random.default_rng(5).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    write_npz(location(tmp_path), write_dataset(tmp_path, schema, [part], encode={"obs": "png"}))
    with np.load(tmp_path / NPZ_NAME, allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["observations"], part["obs"])


def test_a_dataset_without_files_gives_an_npz_of_metadata_alone(tmp_path):
    manifest = write_dataset(tmp_path, DICT_SCHEMA, [])
    write_npz(location(tmp_path), manifest)
    with np.load(tmp_path / NPZ_NAME, allow_pickle=False) as npz:
        assert npz.files == ["metadata"] and json.loads(str(npz["metadata"]))["rows"] == 0


def test_a_file_that_differs_from_its_manifest_entry_is_named_and_no_npz_written(tmp_path):
    manifest = write_dataset(tmp_path, DICT_SCHEMA, [rows(DICT_SCHEMA, 1, [0, 1], seed=6)])
    manifest.files[0].sha256 = "0" * 64
    named = re.escape(str(tmp_path / "part-0.parquet"))
    with pytest.raises(DatasetIntegrityError, match=rf"{named}: sha256 [0-9a-f]{{64}}, the manifest says 0{{64}}"):
        write_npz(location(tmp_path), manifest)
    assert not (tmp_path / NPZ_NAME).exists()
