"""Importing the seeds' recordings (tests/data) and Minari datasets: good data in, broken files
named and left out."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aggregation.dataset import Dataset
from aggregation.importers import ImportFormatError, import_driving_sessions, import_json_sequences, import_minari
from cluster.cli import main
from tests.test_datasets import read_back
from tests.test_exports import cartpole_dataset

DATA = Path(__file__).parent / "data"
SESSION = DATA / "driving" / "session_20241201_143022"


def test_a_driving_session_imports_with_its_bad_row_and_missing_screenshot_named(tmp_path):
    result = import_driving_sessions([DATA / "driving"], tmp_path / "driving")
    assert result.files == [str(SESSION)]
    assert any("expert_data.csv:6: " in error and "expected 14 columns, got 16" in error for error in result.errors)
    assert any("episode_002_frame_000002.png" in error and "episode 2, frame 2" in error for error in result.errors)
    dataset = Dataset.open(tmp_path / "driving")
    rows = read_back(dataset)
    assert dataset.manifest.rows == 6 + 3 and dataset.manifest.episodes == 2
    first = np.asarray(Image.open(SESSION / "screenshots" / "episode_001_frame_000004.png").convert("RGB"))
    at = np.flatnonzero((rows["frame"] == 4) & (rows["step"] == 4))[0]
    np.testing.assert_array_equal(rows["obs.image"][at], first)
    np.testing.assert_array_equal(rows["next_obs.image"][at - 1], first)
    np.testing.assert_allclose(rows["action"][at], [0.4, 0.0, 0.1, 0.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(rows["obs.telemetry"][at], [104, 4040, 3, 45.0 - 4 / 60], rtol=1e-5)
    assert set(rows["source"]) == {"human"} and rows["truncated"].sum() == 2
    assert rows["timestamp"][at] == np.datetime64(1701441122067, "ms")  # 1701441122.067 in the CSV
    # Frames are steps in the order recorded; the missing frame is skipped, not invented.
    assert rows["frame"][rows["episode_id"] == rows["episode_id"].max()].tolist() == [0, 1, 3]
    small = import_driving_sessions([SESSION], tmp_path / "small", image_size=8)
    assert Dataset.open(tmp_path / "small").schema.columns["obs.image"].shape == (8, 8, 3) and small.manifest.rows == 9
    assert main(["import", "driving-session", str(SESSION), "--out", str(tmp_path / "cli")]) == 1  # problems reported


def test_json_sequences_import_and_broken_files_are_named(tmp_path):
    result = import_json_sequences([DATA / "sequences"], tmp_path / "seq")
    assert len(result.files) == 2 and len(result.errors) == 2
    assert any("sequence_0003_cut.json: not valid JSON (cut short?)" in error for error in result.errors)
    assert any("sequence_0004_mismatch.json: 3 states but 2 actions" in error for error in result.errors)
    rows = read_back(Dataset.open(tmp_path / "seq"))
    assert rows["obs"].shape == (65, 3) and rows["action"].shape == (65, 2)
    first = rows["episode_id"] == rows["episode_id"].min()
    np.testing.assert_allclose(rows["obs"][first][7], [7.0, 14.0, 0.93], rtol=1e-6)
    np.testing.assert_allclose(rows["next_obs"][first][7], rows["obs"][first][8])
    with pytest.raises(ImportFormatError, match="no importable JSON sequences.*cut short"):
        import_json_sequences([DATA / "sequences" / "sequence_0003_cut.json"], tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_a_minari_dataset_imports_back_equal(tmp_path):
    from aggregation.export import export_minari

    dataset, _ = cartpole_dataset(tmp_path / "data", unfinished=False)
    export_minari(dataset, "harvest/roundtrip-v0", tmp_path / "minari")
    assert main(["import", "minari", "harvest/roundtrip-v0", "--minari-path", str(tmp_path / "minari"),
                 "--out", str(tmp_path / "back")]) == 0
    back = Dataset.open(tmp_path / "back")
    assert back.manifest.env_id == "CartPole-v1" and back.manifest.rows == dataset.manifest.rows
    original, imported = read_back(dataset), read_back(back)
    for name in ("obs", "next_obs", "action", "reward", "terminated", "truncated", "step"):
        np.testing.assert_array_equal(imported[name], original[name], err_msg=name)
    assert import_minari("harvest/roundtrip-v0", tmp_path / "again", tmp_path / "minari").manifest.parents == \
        ["minari:harvest/roundtrip-v0"]


def test_broken_offline_rl_and_parquet_files_are_named_and_the_good_ones_import(tmp_path):
    from aggregation.importers import import_offline_rl, import_parquet

    offline = import_offline_rl([DATA / "offline"], tmp_path / "offline")
    assert sorted(Path(f).name for f in offline.files) == ["good.hdf5", "good.npz"]
    assert any("missing_actions.hdf5: no ['actions'] dataset(s)" in e for e in offline.errors)
    assert any("objects.npz: holds object arrays" in e and "pickle" in e for e in offline.errors)
    rows = read_back(Dataset.open(tmp_path / "offline"))
    assert rows["obs"].shape == (70, 3) and rows["terminated"].sum() == 4 and rows["truncated"].sum() == 2
    first = rows["episode_id"] == 0
    assert rows["step"][first].tolist() == list(range(10))  # good.hdf5: terminal at row 9
    np.testing.assert_array_equal(rows["next_obs"][first][:-1], rows["obs"][first][1:])

    loose = import_parquet([DATA / "parquet"], tmp_path / "parquet")
    assert sorted(Path(f).name for f in loose.files) == ["part_1.parquet", "part_2.parquet"]
    errors = " | ".join(loose.errors)
    assert "truncated.parquet: not a readable Parquet file" in errors
    assert "not_harvest.parquet: " in errors and "harvest" in errors
    assert "other_schema.parquet: columns ['next_obs', 'obs'] differ from the other files'" in errors
    assert Dataset.open(tmp_path / "parquet").manifest.rows == 50
    assert main(["import", "parquet", str(DATA / "parquet" / "truncated.parquet"), "--out",
                 str(tmp_path / "none")]) == 2
    assert not (tmp_path / "none").exists()  # nothing half-written
