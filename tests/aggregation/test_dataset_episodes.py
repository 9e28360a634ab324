"""Episodes by index, as Minari users expect: len(dataset), dataset[i], dataset.episode(id),
dataset.sample_episodes(n) - over files cut at episode boundaries and partition folders."""

from __future__ import annotations

import numpy as np
import pytest

from harvest.aggregation.compact import write_dataset
from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.dataset import Dataset
from tests.aggregation.test_dataset import pixel_batch


def test_episodes_by_index_id_and_sample(tmp_path):
    schema, batch = pixel_batch(rows=70)  # episodes 0..6 of 10 steps each
    cfg = AggregationConfig(
        formats=["parquet"],
        rows_per_file=20,
        partition_by=["time"],
        image_compression={"obs": "png", "next_obs": "png"},
    )
    write_dataset([batch], schema, tmp_path / "d", cfg, "t", "x")
    dataset = Dataset.open(tmp_path / "d")
    assert len(dataset) == dataset.manifest.episodes == 7 and len(dataset.entries) > 1
    assert dataset.episode_ids().tolist() == list(range(7))

    third = dataset[3]
    rows = np.flatnonzero(batch.columns["episode_id"] == 3)
    assert third["step"].tolist() == list(range(10))
    np.testing.assert_array_equal(third["obs"], batch.columns["obs"][rows])  # the frames, decoded
    np.testing.assert_array_equal(third["action"], batch.columns["action"][rows])
    np.testing.assert_array_equal(dataset[-1]["episode_id"], np.full(10, 6))
    with pytest.raises(IndexError, match="7 episodes"):
        dataset[7]
    with pytest.raises(KeyError, match="no episode 99"):
        dataset.episode(99)

    drawn = dataset.sample_episodes(3, seed=1)
    ids = [int(episode["episode_id"][0]) for episode in drawn]
    assert len(set(ids)) == 3 and ids == [int(e["episode_id"][0]) for e in dataset.sample_episodes(3, seed=1)]
    with pytest.raises(ValueError, match="has 7 episodes"):
        dataset.sample_episodes(8)
