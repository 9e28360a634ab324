"""Windows, episode filters (at compaction, in a real run) and dataset edits."""

import json

import gymnasium as gym
import numpy as np
import pytest

from harvest.aggregation import edit
from harvest.aggregation.compact import write_dataset
from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.dataset import Dataset
from harvest.aggregation.windows import count_windows, windows
from harvest.cluster.cli import main
from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.episode_filter import EpisodeFilter
from tests.aggregation.test_dataset import episodes_batch, read_back

LENGTHS = [1, 3, 15, 16, 17, 40, 100, 7]


def by_hand(lengths, history, stride, pad):
    """Window starts enumerated one by one (the formula's independent check)."""
    count = 0
    for length in lengths:
        first = 0 if pad == "none" else -(history - 1)
        count += len(range(first, length - history + 1, stride))
    return count


@pytest.mark.parametrize(
    "history, stride, pad",
    [(16, 4, "none"), (16, None, "none"), (5, 3, "none"), (16, 1, "repeat_first"), (4, 3, "zeros"), (1, 1, "none")],
)
def test_window_counts_match_the_formula(tmp_path, history, stride, pad):
    schema, batch = episodes_batch(LENGTHS)
    write_dataset([batch], schema, tmp_path / "d", AggregationConfig(formats=["parquet"], rows_per_file=30), "t", "x")
    counts = count_windows(Dataset.open(tmp_path / "d"), history, stride, pad)
    assert counts["windows"] == by_hand(LENGTHS, history, stride or max(1, history // 4), pad)
    assert counts["rows"] == sum(LENGTHS) and counts["episodes"] == len(LENGTHS)


def test_windows_are_a_lazy_ray_dataset_that_never_crosses_an_episode(ray_cluster, tmp_path):
    schema, batch = episodes_batch(LENGTHS, seed=2)
    write_dataset([batch], schema, tmp_path / "d", AggregationConfig(formats=["parquet"], rows_per_file=30), "t", "x")
    dataset = Dataset.open(tmp_path / "d")
    assert len(dataset.files) > 1
    rows = read_back(dataset)
    plain = windows(dataset, 16, 4)
    assert plain.count() == by_hand(LENGTHS, 16, 4, "none")
    for window in plain.iter_rows():
        episode = rows["episode_id"] == window["episode_id"]
        first = window["first_step"]
        np.testing.assert_array_equal(window["obs"], rows["obs"][episode][first : first + 16])
        np.testing.assert_array_equal(window["action"], rows["action"][episode][first : first + 16])
        assert window["mask"].all()
    stacked = windows(dataset, 4, 1, "repeat_first", columns=["obs"])
    assert stacked.count() == sum(LENGTHS)  # frame stacking: one sample per step
    batches = list(stacked.iter_batches(batch_size=None, batch_format="numpy"))
    mask = np.concatenate([b["mask"] for b in batches])
    obs = np.concatenate([b["obs"] for b in batches])
    firsts = np.concatenate([b["first_step"] for b in batches])
    ids = np.concatenate([b["episode_id"] for b in batches])
    start = (firsts == -3) & (ids == 6)  # episode 6 (100 steps): its first window is three pads and step 0
    assert mask[start].tolist() == [[False, False, False, True]]
    first_obs = rows["obs"][rows["episode_id"] == 6][0]
    np.testing.assert_array_equal(obs[start][0], np.stack([first_obs] * 4))
    assert main(["windows", str(tmp_path / "d"), "--history", "16"]) == 0


def test_a_run_keeps_only_the_episodes_its_filter_passes(ray_cluster, tmp_path):
    from tests.cluster.test_cli import TINY

    argv = [
        "collect",
        "--run-id",
        "filtered",
        "--set",
        f"run.output_dir={tmp_path}",
        "--set",
        "rollout.policy.kind=random",
        "--set",
        "aggregation.filter={min_length: 20, ended: [terminated]}",
        *sum((["--set", item] for item in TINY), []),
    ]
    assert main(argv) == 0
    assert main(["compact", str(tmp_path / "filtered")]) == 0
    dataset = Dataset.open(tmp_path / "filtered" / "dataset")
    rows = read_back(dataset)
    ids, lengths = np.unique(rows["episode_id"], return_counts=True)
    assert lengths.min() >= 20
    ends = {int(i): bool(rows["terminated"][rows["episode_id"] == i][-1]) for i in ids}
    assert all(ends.values())
    report = dataset.manifest.filtered
    assert report["kept_rows"] == dataset.manifest.rows and report["kept_episodes"] == ids.size
    assert report["dropped"]["min_length"] > 0 and report["episodes"] > report["kept_episodes"]
    summary = json.loads((tmp_path / "filtered" / "summary.json").read_text())
    assert summary["collect"]["rows"] == report["rows"] > dataset.manifest.rows


def test_filter_delete_split_repartition_and_merge_write_new_datasets_with_parents(tmp_path):
    schema, batch = episodes_batch([30, 5, 200, 12, 40, 7, 60, 9], seed=6)
    repeat = {name: column[:30].copy() for name, column in batch.columns.items()}  # episode 0 again, as 100
    repeat["episode_id"][:] = 100
    both = TransitionBatch({name: np.concatenate([batch.columns[name], repeat[name]]) for name in batch.columns})
    write_dataset([both], schema, tmp_path / "src", AggregationConfig(formats=["parquet"], rows_per_file=50), "t", "x")
    source = Dataset.open(tmp_path / "src")

    kept = edit.filter_dataset(source, tmp_path / "long", EpisodeFilter(min_length=10, dedupe=True))
    assert sorted(np.unique(read_back(Dataset.open(tmp_path / "long"))["episode_id"]).tolist()) == [0, 2, 3, 4, 6]
    assert kept.parents == [str(source.folder)] and kept.filtered["dropped"] == {"min_length": 3, "dedupe": 1}

    edit.delete_episodes(source, tmp_path / "deleted", [2, 100])
    assert 2 not in read_back(Dataset.open(tmp_path / "deleted"))["episode_id"]
    with pytest.raises(ValueError, match="no episodes \\[77\\]"):
        edit.delete_episodes(source, tmp_path / "bad", [77])

    parts = edit.split_dataset(source, tmp_path / "split", {"train": 0.5, "validation": 0.25, "test": 0.25}, seed=1)
    ids = {
        name: set(np.unique(read_back(Dataset.open(tmp_path / "split" / name))["episode_id"]).tolist())
        for name in parts
    }
    assert [len(ids[name]) for name in ("train", "validation", "test")] == [4, 3, 2]  # bounds round(9 x 0.5, 0.75)
    assert set.union(*ids.values()) == set(range(8)) | {100} and sum(len(v) for v in ids.values()) == 9
    again = edit.split_dataset(source, tmp_path / "split2", {"train": 0.5, "validation": 0.25, "test": 0.25}, seed=1)
    assert {n: m.rows for n, m in again.items()} == {n: m.rows for n, m in parts.items()}

    moved = edit.repartition(source, tmp_path / "hourly", ["time"])
    assert all(entry.path.startswith("year=2026/") for entry in moved.files) and moved.rows == source.manifest.rows

    other_schema, other = episodes_batch([11, 12], seed=7)
    other.columns["episode_id"] += 1000
    write_dataset([other], other_schema, tmp_path / "other", AggregationConfig(formats=["parquet"]), "u", "x")
    merged = edit.merge_datasets([source, Dataset.open(tmp_path / "other")], tmp_path / "merged")
    assert merged.rows == source.manifest.rows + 23 and len(merged.parents) == 2
    with pytest.raises(ValueError, match="episode 0 is in both"):
        edit.merge_datasets([source, source], tmp_path / "twice")
    boxed = BatchSchema.for_spaces(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(4))
    write_dataset(
        [
            TransitionBatch(
                {
                    **{k: v for k, v in other.columns.items()},
                    "obs": np.zeros((23, 4), np.float32),
                    "next_obs": np.zeros((23, 4), np.float32),
                }
            )
        ],
        boxed,
        tmp_path / "wide",
        AggregationConfig(formats=["parquet"]),
        "w",
        "x",
    )
    with pytest.raises(ValueError, match="schemas differ:\n  next_obs: .*shape.: \\[3\\].*\n  obs: "):
        edit.merge_datasets([source, Dataset.open(tmp_path / "wide")], tmp_path / "nope")
    assert main(["edit", "filter", str(tmp_path / "src"), "--out", str(tmp_path / "cli"), "--min-return", "1e9"]) == 0
    assert Dataset.open(tmp_path / "cli").manifest.rows == 0
    assert main(["edit", "filter", str(tmp_path / "src"), "--out", str(tmp_path / "cli")]) == 2  # already there
