"""`harvest import driving-session`: driving sessions recorded by seed 002 into a dataset.

A session is a `session_<timestamp>/` folder with `metadata/expert_data.csv` (`episode, frame,
timestamp, screenshot_filename, throttle, brake, steering, gear_up, gear_down, clutch, speed, rpm,
gear, lap_time`) and `screenshots/episode_NNN_frame_NNNNNN.png`. Observations are a Dict: `image`
(the screenshot, uint8 H x W x 3, resized to `image_size` when given) and `telemetry` (speed, rpm,
gear, lap_time); the action is a Box (throttle, brake, steering, clutch, gear_up, gear_down). Rows
carry `source` = `human`, the `session` name and the screenshot's path. A bad row or a missing
screenshot is named and left out; its episode goes on from the frame before to the frame after.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import gymnasium as gym
import numpy as np

from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.importers.episodes import episode_rows, seconds_to_ns
from harvest.aggregation.importers.result import (
    ImportFormatError,
    ImportLog,
    ImportResult,
    finish_import,
    flag_nonfinite,
    unique_files,
)
from harvest.cluster.logging import track
from harvest.envs.spaces import ColumnSpec
from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.human.session_folder import DRIVING_COLUMNS

DRIVING_ACTIONS = ["throttle", "brake", "steering", "clutch", "gear_up", "gear_down"]
DRIVING_TELEMETRY = ["speed", "rpm", "gear", "lap_time"]
_DRIVING_INTEGERS = ("episode", "frame")
_DRIVING_BOOLEANS = {"True": True, "true": True, "1": True, "False": False, "false": False, "0": False}
_ACTION_LOW = np.array([0, 0, -1, 0, 0, 0], np.float32)
_ACTION_HIGH = np.array([1, 1, 1, 1, 1, 1], np.float32)


def _driving_cell(column: str, text: str) -> int | float | bool | str:
    """One cell of expert_data.csv as its column's type (ValueError: what the column holds)."""
    if column in _DRIVING_INTEGERS:
        try:
            value = int(text)
        except ValueError:
            raise ValueError("expected an integer") from None
        if not -(2**63) <= value < 2**63:
            raise ValueError("expected a 64-bit integer")
        return value
    if column in ("gear_up", "gear_down"):
        if text not in _DRIVING_BOOLEANS:
            raise ValueError(f"expected one of {sorted(_DRIVING_BOOLEANS)}")
        return _DRIVING_BOOLEANS[text]
    if column == "screenshot_filename":
        if not text:
            raise ValueError("expected a file name")
        return text
    try:
        number = float(text)
    except ValueError:
        raise ValueError("expected a number") from None
    if column == "timestamp" and not math.isfinite(number):
        raise ValueError("expected a finite number of seconds")
    return number


def _read_driving_csv(path: Path, result: ImportLog) -> dict[str, list] | None:
    """expert_data.csv by column, plus each row's `line`; a row with another number of fields, a
    cell its column cannot hold (empty, `abc`) or a repeated (episode, frame) is named in
    `result.errors` and left out. None (and the file named) when it has no header to read."""
    columns: dict[str, list] = {name: [] for name in [*DRIVING_COLUMNS, "line"]}
    first_line: dict[tuple[int, int], int] = {}
    try:
        # A byte that is not UTF-8 spoils its cell only (replaced, then named if its column needs a number).
        with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            missing = [name for name in DRIVING_COLUMNS if name not in header]
            if missing:
                result.errors.append(f"{path}: missing columns {missing}; expected {DRIVING_COLUMNS}")
                return None
            position = {name: header.index(name) for name in DRIVING_COLUMNS}
            while True:
                try:
                    cells = next(reader)
                except StopIteration:
                    break
                except csv.Error as err:
                    result.errors.append(f"{path}:{reader.line_num}: {err}; row left out")
                    continue
                line = reader.line_num
                if not cells:
                    continue
                values = _driving_row(f"{path}:{line}", cells, len(header), position, result)
                if values is None:
                    continue
                key = (int(values["episode"]), int(values["frame"]))  # (integer columns: ints already)
                if key in first_line:
                    result.errors.append(
                        f"{path}:{line}: episode {key[0]} frame {key[1]} again (first on line "
                        f"{first_line[key]}); row left out"
                    )
                    continue
                first_line[key] = line
                for name, value in values.items():
                    columns[name].append(value)
                columns["line"].append(line)
    except OSError as err:
        result.errors.append(f"{path}: not a readable expert_data.csv: {err}")
        return None
    return columns


def _driving_row(
    where: str, cells: list[str], width: int, position: dict[str, int], result: ImportLog
) -> dict[str, int | float | bool | str] | None:
    """One CSV row's values by column; None (and the row named at `where`, `path:line`, in
    `result.errors`) when it has another number of fields or a cell its column cannot hold."""
    if len(cells) != width:
        result.errors.append(f"{where}: {','.join(cells)!r}: expected {width} columns, got {len(cells)}")
        return None
    values, problems = {}, []
    for name, index in position.items():
        try:
            values[name] = _driving_cell(name, cells[index].strip())
        except ValueError as err:
            problems.append(f"column {name!r} is {cells[index]!r}: {err}")
    if problems:
        result.errors.append(f"{where}: {'; '.join(problems)}; row left out")
        return None
    return values


class _Screenshots:
    """Screenshots as uint8 H x W x 3 arrays, all of the first one's shape (resized to
    `image_size` square when given); one that cannot be read or has another shape is named in
    `result.errors` and left out."""

    def __init__(self, image_size: int | None, result: ImportLog) -> None:
        self.image_size = image_size
        self.result = result
        self.shape: tuple[int, ...] | None = None

    def load(self, file: Path, episode: int, frame: int) -> np.ndarray | None:
        from PIL import Image

        try:
            with Image.open(file) as opened:
                image = opened.convert("RGB")
                if self.image_size:
                    image = image.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
                pixels = np.asarray(image, np.uint8)
        except (OSError, ValueError) as err:
            self.result.errors.append(f"{file}: {err.__class__.__name__}: {err} (episode {episode}, frame {frame})")
            return None
        if self.shape is None:
            self.shape = pixels.shape
        if pixels.shape != self.shape:
            self.result.errors.append(
                f"{file}: image {pixels.shape}, the session's others are {self.shape}; "
                "pass image_size to resize them all"
            )
            return None
        return pixels


def import_driving_sessions(
    paths: list[str | Path], out: str | Path, image_size: int | None = None, cfg: AggregationConfig | None = None
) -> ImportResult:
    """Sessions (folders with `metadata/expert_data.csv`; a folder of sessions works too) → a dataset."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such folder")
        found += sorted(p.parent.parent for p in path.rglob("metadata/expert_data.csv"))
    result = ImportLog()
    screenshots = _Screenshots(image_size, result)
    batches: list[dict[str, np.ndarray]] = []
    episode_base = 0
    for session in track(unique_files(found, result), "import", "files"):
        data = _read_driving_csv(session / "metadata" / "expert_data.csv", result)
        if data is None:
            continue
        batches += _session_episodes(session, data, episode_base, screenshots, result)
        episode_base += 1_000_000  # keeps episode ids distinct across sessions
    if screenshots.shape is None or not batches:
        raise ImportFormatError(
            f"no importable driving sessions in {[str(p) for p in paths]}: "
            + "; ".join(result.errors or ["no metadata/expert_data.csv"])
        )
    return finish_import(
        [TransitionBatch(rows) for rows in batches],
        _driving_schema(screenshots.shape),
        out,
        "driving-session",
        result,
        "driving sessions",
        cfg,
        [str(p) for p in paths],
    )


def _session_episodes(
    session: Path, data: dict[str, list], episode_base: int, screenshots: _Screenshots, result: ImportLog
) -> list[dict[str, np.ndarray]]:
    """One session's episodes as rows, frames in order, each frame without a good screenshot
    left out; the session is named in `result.files` when any of its rows are imported."""
    numbers = {name: np.asarray(data[name], np.float32) for name in [*DRIVING_ACTIONS, *DRIVING_TELEMETRY]}
    episode_ids, frames = np.asarray(data["episode"], np.int64), np.asarray(data["frame"], np.int64)
    episodes, imported = [], []
    for episode in np.unique(episode_ids).tolist():
        rows = np.flatnonzero(episode_ids == episode)
        images, kept = [], []
        for r in rows[np.argsort(frames[rows], kind="stable")].tolist():
            pixels = screenshots.load(session / "screenshots" / data["screenshot_filename"][r], episode, frames[r])
            if pixels is not None:
                images.append(pixels)
                kept.append(r)
        if not kept:
            continue
        imported += kept
        episodes.append(_episode(session, data, numbers, frames, kept, np.stack(images), episode_base + episode))
    if imported:
        result.files.append(str(session))
        flag_nonfinite(
            str(session / "metadata" / "expert_data.csv"),
            {name: values[imported] for name, values in numbers.items()},
            result,
            lines=np.asarray(data["line"])[imported],
        )
    return episodes


def _episode(
    session: Path,
    data: dict[str, list],
    numbers: dict[str, np.ndarray],
    frames: np.ndarray,
    kept: list[int],
    images: np.ndarray,
    episode_id: int,
) -> dict[str, np.ndarray]:
    """The rows of one episode from its `kept` CSV rows and their screenshots."""
    action = np.stack([numbers[name][kept] for name in DRIVING_ACTIONS], axis=1)
    telemetry = np.stack([numbers[name][kept] for name in DRIVING_TELEMETRY], axis=1)
    timestamps = seconds_to_ns(np.asarray(data["timestamp"], np.float64)[kept])
    extras = {
        "source": np.array(["human"] * len(kept), object),
        "session": np.array([session.name] * len(kept), object),
        "frame": frames[kept],
        "screenshot_path": np.array(
            [f"{session.name}/screenshots/{data['screenshot_filename'][r]}" for r in kept], object
        ),
    }
    return episode_rows(
        {"obs.image": images, "obs.telemetry": telemetry},
        action,
        np.zeros(len(kept), np.float32),
        episode_id,
        timestamps,
        extras,
        terminated_at_end=False,
    )


def _driving_schema(image_shape: tuple[int, ...]) -> BatchSchema:
    """Observations a Dict of the screenshot and the telemetry; the action a Box of six controls."""
    observation_space = gym.spaces.Dict(
        {
            "image": gym.spaces.Box(0, 255, image_shape, np.uint8),
            "telemetry": gym.spaces.Box(-np.inf, np.inf, (len(DRIVING_TELEMETRY),), np.float32),
        }
    )
    return BatchSchema.for_spaces(
        observation_space,
        gym.spaces.Box(_ACTION_LOW, _ACTION_HIGH),
        extras={
            "source": ColumnSpec(object, ()),
            "session": ColumnSpec(object, ()),
            "frame": ColumnSpec(np.int64, ()),
            "screenshot_path": ColumnSpec(object, ()),
        },
    )
