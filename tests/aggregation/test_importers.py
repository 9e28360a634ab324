"""Importing the seeds' recordings (tests/data) and Minari datasets: good data in, broken files
named and left out."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from harvest.aggregation.dataset import Dataset
from harvest.aggregation.importers import (
    ImportFormatError,
    import_driving_sessions,
    import_json_sequences,
    import_minari,
    import_offline_rl,
    import_parquet,
)
from harvest.aggregation.robocode_import import import_robocode_json
from harvest.cluster.cli import main
from harvest.envs.robocode.team_files import TeamFileError
from tests.aggregation.test_dataset import read_back
from tests.aggregation.test_exports import cartpole_dataset

DATA = Path(__file__).resolve().parents[1] / "data"
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
    from harvest.aggregation.export import export_minari

    dataset, _ = cartpole_dataset(tmp_path / "data", unfinished=False)
    export_minari(dataset, "harvest/roundtrip-v0", tmp_path / "minari")
    assert (
        main(
            [
                "import",
                "minari",
                "harvest/roundtrip-v0",
                "--minari-path",
                str(tmp_path / "minari"),
                "--out",
                str(tmp_path / "back"),
            ]
        )
        == 0
    )
    back = Dataset.open(tmp_path / "back")
    assert back.manifest.env_id == "CartPole-v1" and back.manifest.rows == dataset.manifest.rows
    original, imported = read_back(dataset), read_back(back)
    for name in ("obs", "next_obs", "action", "reward", "terminated", "truncated", "step"):
        np.testing.assert_array_equal(imported[name], original[name], err_msg=name)
    assert import_minari("harvest/roundtrip-v0", tmp_path / "again", tmp_path / "minari").manifest.parents == [
        "minari:harvest/roundtrip-v0"
    ]


def test_broken_offline_rl_and_parquet_files_are_named_and_the_good_ones_import(tmp_path):
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
    assert (
        main(["import", "parquet", str(DATA / "parquet" / "truncated.parquet"), "--out", str(tmp_path / "none")]) == 2
    )
    assert not (tmp_path / "none").exists()  # nothing half-written


# --- bad input: every bad file, row or value named in one line, the good beside it imported ---

HARVEST = Path(sys.executable).parent / "harvest"


def harvest_import(*args: object) -> subprocess.CompletedProcess:
    """`harvest import ARGS` as a user runs it; its stderr is never a traceback."""
    done = subprocess.run([str(HARVEST), "import", *map(str, args)], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def offline_copy(source: Path, target: Path, rows: slice, edit=None) -> Path:
    """`source` (a good D4RL .hdf5/.npz) with only `rows` of each array, `edit(arrays)` applied."""
    if source.suffix == ".npz":
        with np.load(source) as npz:
            arrays = {key: npz[key][rows] for key in npz.files}
    else:
        with h5py.File(source, "r") as h5:
            arrays = {key: h5[key][()][rows] for key in h5}
    if edit:
        edit(arrays)
    if target.suffix == ".npz":
        np.savez(target, **arrays)
    else:
        with h5py.File(target, "w") as h5:
            for key, values in arrays.items():
                h5[key] = values
    return target


def test_an_empty_offline_rl_file_beside_good_ones_is_named_and_the_good_ones_import(tmp_path):
    folder = tmp_path / "offline"
    folder.mkdir()
    for name in ("good.hdf5", "good.npz"):
        shutil.copy(DATA / "offline" / name, folder / name)
    offline_copy(DATA / "offline" / "good.hdf5", folder / "empty.hdf5", slice(0, 0))
    offline_copy(DATA / "offline" / "good.npz", folder / "empty.npz", slice(0, 0))
    (folder / "zero_bytes.npz").write_bytes(b"")
    result = import_offline_rl([folder], tmp_path / "lib")
    assert sorted(Path(f).name for f in result.files) == ["good.hdf5", "good.npz"]
    assert sorted(result.errors) == [
        f"{folder / 'empty.hdf5'}: no rows (its arrays are empty); expected at least one transition",
        f"{folder / 'empty.npz'}: no rows (its arrays are empty); expected at least one transition",
        f"{folder / 'zero_bytes.npz'}: not a readable NPZ file: No data left in file",
    ]
    assert Dataset.open(tmp_path / "lib").manifest.rows == 70 and result.warnings == []

    done = harvest_import("offline-rl", folder, "--out", tmp_path / "cli")
    assert done.returncode == 1 and "empty.npz: no rows" in done.stderr and "empty.hdf5: no rows" in done.stderr
    assert Dataset.open(tmp_path / "cli").manifest.rows == 70
    only_empty = harvest_import("offline-rl", folder / "empty.npz", folder / "empty.hdf5", "--out", tmp_path / "none")
    assert only_empty.returncode == 2 and "no importable offline-RL files" in only_empty.stderr
    assert not (tmp_path / "none").exists()


def test_nan_and_inf_in_offline_rl_arrays_are_kept_and_flagged_by_file_column_and_count(tmp_path):
    def spoil(arrays: dict[str, np.ndarray]) -> None:
        arrays["observations"][[2, 7], 1] = np.nan
        arrays["observations"][4, 0] = np.inf
        arrays["rewards"][5] = -np.inf

    spoiled = offline_copy(DATA / "offline" / "good.npz", tmp_path / "spoiled.npz", slice(None), spoil)
    result = import_offline_rl([DATA / "offline" / "good.hdf5", spoiled], tmp_path / "lib")
    assert result.errors == [] and len(result.files) == 2
    assert result.warnings == [
        f"{spoiled}: column 'observations' holds 2 NaN and 1 inf values in 3 of 30 rows; kept",
        f"{spoiled}: column 'rewards' holds 1 inf values in 1 of 30 rows; kept",
    ]
    rows = read_back(Dataset.open(tmp_path / "lib"))
    assert rows["obs"].shape == (70, 3) and np.isnan(rows["obs"]).sum() == 2 and np.isinf(rows["reward"]).sum() == 1

    done = harvest_import("offline-rl", DATA / "offline" / "good.hdf5", spoiled, "--out", tmp_path / "cli")
    assert done.returncode == 0, done.stderr
    assert "spoiled.npz: column 'observations' holds 2 NaN and 1 inf values in 3 of 30 rows; kept" in done.stderr


@pytest.mark.parametrize(
    "case, exit_code, rows, named",
    [
        ("empty_cell", 1, 4, "expert_data.csv:4: column 'throttle' is '': expected a number; row left out"),
        ("abc_cell", 1, 4, "expert_data.csv:4: column 'steering' is 'abc': expected a number; row left out"),
        ("nan_cell", 0, 5, "expert_data.csv: column 'throttle' holds 1 NaN values in 1 of 5 rows (line 4); kept"),
    ],
)
def test_a_bad_cell_in_a_driving_session_costs_its_row_only(tmp_path, case, exit_code, rows, named):
    done = harvest_import("driving-session", DATA / "driving_cells" / case, "--out", tmp_path / case)
    assert done.returncode == exit_code, done.stderr
    assert named in done.stderr
    assert Dataset.open(tmp_path / case).manifest.rows == rows


def test_driving_sessions_with_bad_cells_import_every_good_row(tmp_path):
    result = import_driving_sessions([DATA / "driving_cells"], tmp_path / "cells")
    assert [Path(f).parent.name for f in result.files] == ["abc_cell", "empty_cell", "nan_cell"]
    folder = DATA / "driving_cells"
    assert result.errors == [
        f"{folder}/abc_cell/session_20241202_093000/metadata/expert_data.csv:4: column 'steering' is 'abc': "
        "expected a number; row left out",
        f"{folder}/empty_cell/session_20241202_090000/metadata/expert_data.csv:4: column 'throttle' is '': "
        "expected a number; row left out",
    ]
    nan_csv = f"{folder}/nan_cell/session_20241202_091500/metadata/expert_data.csv"
    assert result.warnings == [
        f"{nan_csv}: column 'throttle' holds 1 NaN values in 1 of 5 rows (line 4); kept",
        f"{nan_csv}: column 'speed' holds 1 inf values in 1 of 5 rows (line 5); kept",
    ]
    rows = read_back(Dataset.open(tmp_path / "cells"))
    assert len(rows["step"]) == 4 + 4 + 5
    # The row left out is skipped, not invented: frame 1's next observation is frame 3's.
    abc = rows["session"] == "session_20241202_093000"
    assert rows["frame"][abc].tolist() == [0, 1, 3, 4] and rows["step"][abc].tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(rows["next_obs.telemetry"][abc][1], rows["obs.telemetry"][abc][2])
    nan_rows = rows["session"] == "session_20241202_091500"
    assert np.isnan(rows["action"][nan_rows][2, 0]) and np.isinf(rows["obs.telemetry"][nan_rows][3, 0])


def test_the_same_parquet_file_twice_or_a_copy_of_it_is_imported_once_and_the_repeat_named(tmp_path):
    part_1 = DATA / "parquet" / "part_1.parquet"
    twice = import_parquet([part_1, part_1, DATA / "parquet" / "part_2.parquet"], tmp_path / "twice")
    assert twice.errors == [f"{part_1}: named twice (also as {part_1}); imported once"]
    rows = read_back(Dataset.open(tmp_path / "twice"))
    assert len(rows["step"]) == 50 and len(set(zip(rows["episode_id"].tolist(), rows["step"].tolist()))) == 50

    copy = tmp_path / "copy.parquet"
    shutil.copy(part_1, copy)
    copied = import_parquet([part_1, copy], tmp_path / "copied")
    assert copied.errors == [
        f"{copy}: episodes [0, 1, 2] are also in {part_1}; an episode comes from one file "
        "(as `harvest edit merge` requires)"
    ]
    assert Dataset.open(tmp_path / "copied").manifest.rows == 30

    done = harvest_import("parquet", part_1, part_1, "--out", tmp_path / "cli")
    assert done.returncode == 1 and "part_1.parquet: named twice" in done.stderr
    assert Dataset.open(tmp_path / "cli").manifest.rows == 30
    done = harvest_import("parquet", part_1, copy, "--out", tmp_path / "cli-copy")
    assert done.returncode == 1 and "copy.parquet: episodes [0, 1, 2] are also in" in done.stderr


def test_nan_in_parquet_files_is_flagged(tmp_path):
    table = pq.read_table(DATA / "parquet" / "part_2.parquet")
    reward = table.column("reward").to_numpy().copy()
    reward[[0, 3]] = np.nan
    pq.write_table(
        table.set_column(
            table.schema.get_field_index("reward"), table.schema.field("reward"), pa.array(reward, pa.float32())
        ),
        tmp_path / "nan.parquet",
    )
    result = import_parquet([DATA / "parquet" / "part_1.parquet", tmp_path / "nan.parquet"], tmp_path / "out")
    assert result.errors == [] and Dataset.open(tmp_path / "out").manifest.rows == 50
    assert result.warnings == [f"{tmp_path / 'nan.parquet'}: column 'reward' holds 2 NaN values in 2 of 20 rows; kept"]


def test_json_sequences_keep_their_good_frames_and_flag_nan_and_inf(tmp_path):
    folder = DATA / "sequences_frames"
    result = import_json_sequences([folder], tmp_path / "seq")
    assert [Path(f).name for f in result.files] == ["sequence_0101_nonfinite.json", "sequence_0102_bad_values.json"]
    bad_values, not_a_list = folder / "sequence_0102_bad_values.json", folder / "sequence_0103_not_a_list.json"
    assert result.errors == [
        f"{bad_values}: frame 1: states[1][1] is null; expected a number; frame left out",
        f'{bad_values}: frame 2: actions[2][1] is "abc"; expected a number; frame left out',
        f"{bad_values}: frame 3: actions[3] is [1.0]; expected a list of 2 numbers; frame left out",
        f"{not_a_list}: 'states' is 5; expected a list with one entry per frame",
    ]
    nonfinite = folder / "sequence_0101_nonfinite.json"
    assert result.warnings == [
        f"{nonfinite}: column 'states' holds 2 NaN and 1 inf values in 3 of 4 rows; kept",
        f"{nonfinite}: column 'actions' holds 1 inf values in 1 of 4 rows; kept",
        f"{nonfinite}: column 'rewards' holds 1 NaN values in 1 of 4 rows; kept",
    ]
    rows = read_back(Dataset.open(tmp_path / "seq"))
    second = rows["episode_id"] == rows["episode_id"].max()
    np.testing.assert_allclose(rows["obs"][second], [[0, 1, 2], [4, 3, 4]])
    assert rows["timestamp"][second].tolist() == [10_000_000_000, 10_400_000_000]  # ns: 10.0 s and 10.4 s

    done = harvest_import("sequence-json", folder, "--out", tmp_path / "cli")
    assert done.returncode == 1 and 'frame 2: actions[2][1] is "abc"' in done.stderr
    assert "sequence_0101_nonfinite.json: column 'states' holds 2 NaN and 1 inf values" in done.stderr


def test_robocode_json_files_that_are_all_bad_end_in_one_error_and_no_dataset(tmp_path):
    bad = DATA / "robocode" / "bad"
    with pytest.raises(TeamFileError) as raised:
        import_robocode_json([bad], tmp_path / "lib")
    message = str(raised.value)
    for problem in (
        "bot_fields.json, entry 0, bot_states[0]: missing or non-numeric ['y'",
        "bullet_owner.json, entry 2, bullet_states[0]: id 1, owner 5, power 1.0; expected",
        "empty.json: not JSON",
        "no_turns.json: expected a JSON list of turn entries, got an empty list",
        "not_json.json: not JSON",
        "object_not_list.json: expected a JSON list of turn entries, got dict",
        "robots_change.json, entry 3: robots ['sample.Corners']; entry 0 of the same round has",
    ):
        assert problem in message, problem
    assert "\n" not in message and not (tmp_path / "lib").exists()

    done = harvest_import("robocode-json", bad, "--out", tmp_path / "cli")
    assert done.returncode == 2 and "no importable Robocode game-state files" in done.stderr
    assert not (tmp_path / "cli").exists()
    beside = harvest_import("robocode-json", DATA / "robocode", "--out", tmp_path / "beside")
    assert beside.returncode == 1 and "robots_change.json, entry 3" in beside.stderr
    assert Dataset.open(tmp_path / "beside").manifest.episodes == 4  # 2 robots x 2 rounds of the good file


def test_nan_in_robocode_json_is_flagged(tmp_path):
    entries = json.loads((DATA / "robocode" / "expert_game_states_0_20241201_120000.json").read_text())
    entries[2]["bot_states"][0]["energy"] = float("nan")
    spoiled = tmp_path / "expert_game_states_1_20241201_130000.json"
    spoiled.write_text(json.dumps(entries))
    report = import_robocode_json([spoiled], tmp_path / "out")
    assert report.errors == [] and report.manifest.rows == 12
    assert [warning.split(": ", 1)[1].split(" holds")[0] for warning in report.warnings] == [
        "column 'obs'",
        "column 'reward'",
    ]
