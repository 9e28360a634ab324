"""`SessionFolderWriter` on its own: the driving recorder's layout on disk, frame by frame, with
no half-written file left under its real name, and a failed screenshot reported by name."""

import csv
import json
import re

import numpy as np
import pytest
from PIL import Image

from harvest.rollout.human.session_folder import DRIVING_COLUMNS, SessionFolderWriter


def frame_image(value: int) -> np.ndarray:
    image = np.zeros((6, 8, 3), np.uint8)
    image[..., 0] = value
    image[2, 3] = (1, 2, 3)
    return image


def test_a_session_is_written_in_the_driving_recorders_layout(tmp_path):
    writer = SessionFolderWriter(tmp_path, "session_20261125_143022")
    writer.add(1, 0, 0.5, frame_image(10), np.array([-0.25, 1.0, 0.0]), {"speed": 12.5, "gear": 2}, {"lap": 1})
    writer.add(1, 1, 0.52, frame_image(20), np.array([0.5, 0.0, 0.8]), {"speed": 11.0, "rpm": 3000.0})
    writer.add(2, 0, 9.0, frame_image(30), np.array([0.0, 0.0, 0.0]), {})
    assert writer.frames == 3
    folder = writer.close()
    assert folder == tmp_path / "session_20261125_143022"

    assert sorted(p.name for p in (folder / "screenshots").iterdir()) == [
        "episode_001_frame_000000.png",
        "episode_001_frame_000001.png",
        "episode_002_frame_000000.png",
    ]
    np.testing.assert_array_equal(
        np.asarray(Image.open(folder / "screenshots" / "episode_001_frame_000001.png")), frame_image(20)
    )

    with open(folder / "metadata" / "expert_data.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == DRIVING_COLUMNS
    # steering, throttle, brake in CarRacing's order -> throttle, brake, steering columns
    assert table[1] == ["1", "0", "0.500000", "episode_001_frame_000000.png", "1.0000", "0.0000", "-0.2500",
                        "False", "False", "0.0", "12.5000", "0.0", "2", "0.0000"]  # fmt: skip
    assert table[2][4:7] == ["0.0000", "0.8000", "0.5000"] and table[2][11:13] == ["3000.0", "1"]
    assert [row[0] for row in table[1:]] == ["1", "1", "2"]

    lines = [json.loads(line) for line in (folder / "telemetry" / "episode_001.jsonl").read_text().splitlines()]
    assert lines[0] == {"frame": 0, "timestamp": 0.5, "action": [-0.25, 1.0, 0.0], "speed": 12.5, "gear": 2, "lap": 1}
    assert [line["frame"] for line in lines] == [0, 1]
    assert (folder / "telemetry" / "episode_002.jsonl").exists()
    assert not list(folder.rglob("*.partial")), "every file complete"


def test_until_close_the_table_and_telemetry_have_only_their_partial_names(tmp_path):
    writer = SessionFolderWriter(tmp_path, "s")
    writer.add(1, 0, 0.0, frame_image(1), np.zeros(3), {})
    assert not (tmp_path / "s" / "metadata" / "expert_data.csv").exists()
    assert (tmp_path / "s" / "metadata" / "expert_data.csv.partial").exists()
    assert (tmp_path / "s" / "telemetry" / "episode_001.jsonl.partial").exists()
    writer.close()
    assert (tmp_path / "s" / "metadata" / "expert_data.csv").exists()


def test_a_screenshot_that_cannot_be_written_fails_the_session_naming_its_folder(tmp_path):
    writer = SessionFolderWriter(tmp_path, "broken")
    writer.add(1, 0, 0.0, np.zeros((4, 4, 5), np.uint8), np.zeros(3), {})  # no picture has 5 channels
    with pytest.raises(RuntimeError, match=rf"{re.escape(str(tmp_path / 'broken'))}: writing screenshots failed"):
        writer.close()
