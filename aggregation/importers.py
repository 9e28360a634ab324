"""Importers: recordings made by the systems Harvest replaces, and Minari datasets, into Harvest
datasets (`harvest import KIND PATH... --out DIR`).

* `driving-session` (seed 002): `session_<timestamp>/` folders with
  `metadata/expert_data.csv` (`episode, frame, timestamp, screenshot_filename, throttle,
  brake, steering, gear_up, gear_down, clutch, speed, rpm, gear, lap_time`) and
  `screenshots/episode_NNN_frame_NNNNNN.png`. Observations are a Dict: `image` (the
  screenshot, uint8 H x W x 3, resized to `image_size` when given) and `telemetry` (speed, rpm,
  gear, lap_time); the action is a Box (throttle, brake, steering, clutch, gear_up,
  gear_down). Rows carry `source` = `human`, the `session` name and the screenshot's path.
* `sequence-json` (seed 003): `sequence_*.json` files, one episode each: `{"states": [...],
  "actions": [...], "timestamps"?: [...], "rewards"?: [...]}` with one entry per frame (a list
  of numbers, or an object of named numbers, the same names in every frame).
* `minari`: a Minari dataset by id (episodes with T + 1 observations).

A malformed file (or CSV row) is reported by path (and line) and left out; everything else is
imported. Nothing is half-written: the dataset appears only once all of it is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from loguru import logger

from aggregation.compact import write_dataset
from aggregation.config import AggregationConfig
from aggregation.manifest import Manifest
from envs.spaces import ColumnSpec, flatten_value
from rollout.batch import BatchSchema, TransitionBatch

DRIVING_COLUMNS = ["episode", "frame", "timestamp", "screenshot_filename", "throttle", "brake", "steering",
                   "gear_up", "gear_down", "clutch", "speed", "rpm", "gear", "lap_time"]
DRIVING_ACTIONS = ["throttle", "brake", "steering", "clutch", "gear_up", "gear_down"]
DRIVING_TELEMETRY = ["speed", "rpm", "gear", "lap_time"]
_ACTION_LOW = np.array([0, 0, -1, 0, 0, 0], np.float32)
_ACTION_HIGH = np.array([1, 1, 1, 1, 1, 1], np.float32)


class ImportFormatError(ValueError):
    """A recording that cannot be imported at all (nothing importable found)."""


@dataclass
class ImportResult:
    manifest: Manifest | None
    files: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """One line per file or row left out: path (and line) and what was wrong."""


def _transitions(obs: dict[str, np.ndarray], action: np.ndarray, reward: np.ndarray, episode_id: int,
                 timestamps: np.ndarray, extras: dict[str, np.ndarray], terminated_at_end: bool) -> dict[str, np.ndarray]:
    """One episode's frames as transitions: next_obs is the next frame's, the last frame's is
    itself (the recording ends there: truncated, unless the recording says it terminated)."""
    length = action.shape[0]
    next_index = np.minimum(np.arange(length) + 1, length - 1)
    rows = {**obs, **{"next_" + name: values[next_index] for name, values in obs.items()},
            "action": action, "reward": reward.astype(np.float32),
            "terminated": np.r_[np.zeros(length - 1, bool), terminated_at_end],
            "truncated": np.r_[np.zeros(length - 1, bool), not terminated_at_end],
            "episode_id": np.full(length, episode_id, np.int64), "step": np.arange(length, dtype=np.int64),
            "collector_id": np.zeros(length, np.int64), "policy_version": np.zeros(length, np.int64),
            "timestamp": timestamps.astype("datetime64[ns]"), **extras}
    return rows


def _seconds_to_ns(seconds: np.ndarray) -> np.ndarray:
    """Unix seconds (float) as datetime64[ns], rounded to the microsecond (a float64 of ~1.7e9 s
    cannot hold nanoseconds)."""
    return (np.round(np.asarray(seconds, np.float64) * 1e6).astype(np.int64) * 1000).astype("datetime64[ns]")


def _finish(batches: list[TransitionBatch], schema: BatchSchema, out: str | Path, env_id: str, result: ImportResult,
            what: str, cfg: AggregationConfig | None, parents: list[str]) -> ImportResult:
    if not batches:
        raise ImportFormatError(f"nothing importable in {result.files or parents}: "
                                + "; ".join(result.errors or [f"no {what}"]))
    result.manifest = write_dataset(batches, schema, out, cfg or AggregationConfig(formats=["parquet"]),
                                    run_id=f"import-{what}", env_id=env_id, parents=parents)
    for error in result.errors:
        logger.warning("left out: {}", error)
    logger.info("imported {} {} ({} rows, {} episodes) into {}; {} problems", len(result.files), what,
                result.manifest.rows, result.manifest.episodes, out, len(result.errors))
    return result


# --- seed 002: driving sessions -------------------------------------------------------------

def _read_driving_csv(path: Path, result: ImportResult) -> pa.Table | None:
    bad: list[str] = []

    def invalid(row) -> str:
        bad.append(f"{path}:{row.number}: {row.text!r}: expected {row.expected_columns} columns, got "
                   f"{row.actual_columns}")
        return "skip"

    types = {name: pa.float64() for name in DRIVING_COLUMNS if name not in ("screenshot_filename", "gear_up",
                                                                            "gear_down")}
    types.update(episode=pa.int64(), frame=pa.int64(), screenshot_filename=pa.string(), gear_up=pa.bool_(),
                 gear_down=pa.bool_())
    try:
        # One thread: pyarrow knows a bad row's line number only when it reads the file in order.
        table = pacsv.read_csv(path, read_options=pacsv.ReadOptions(use_threads=False),
                               parse_options=pacsv.ParseOptions(invalid_row_handler=invalid),
                               convert_options=pacsv.ConvertOptions(column_types=types,
                                                                    true_values=["True", "true", "1"],
                                                                    false_values=["False", "false", "0"]))
    except (pa.ArrowInvalid, OSError) as err:
        result.errors.append(f"{path}: not a readable expert_data.csv: {err}")
        return None
    result.errors.extend(bad)
    missing = [name for name in DRIVING_COLUMNS if name not in table.column_names]
    if missing:
        result.errors.append(f"{path}: missing columns {missing}; expected {DRIVING_COLUMNS}")
        return None
    return table


def import_driving_sessions(paths: list[str | Path], out: str | Path, image_size: int | None = None,
                            cfg: AggregationConfig | None = None) -> ImportResult:
    """Sessions (folders with `metadata/expert_data.csv`; a folder of sessions works too) → a dataset."""
    from PIL import Image

    sessions: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such folder")
        sessions += sorted(p.parent.parent for p in path.rglob("metadata/expert_data.csv"))
    result = ImportResult(None)
    batches, shape = [], None
    episode_base = 0
    for session in sessions:
        table = _read_driving_csv(session / "metadata" / "expert_data.csv", result)
        if table is None:
            continue
        result.files.append(str(session))
        data = table.to_pydict()
        episodes: dict[int, list[int]] = {}
        for row, episode in enumerate(data["episode"]):
            episodes.setdefault(int(episode), []).append(row)
        for episode, rows in sorted(episodes.items()):
            rows = sorted(rows, key=lambda r: data["frame"][r])
            images, kept = [], []
            for r in rows:
                file = session / "screenshots" / data["screenshot_filename"][r]
                try:
                    with Image.open(file) as image:
                        image = image.convert("RGB")
                        if image_size:
                            image = image.resize((image_size, image_size), Image.BILINEAR)
                        pixels = np.asarray(image, np.uint8)
                except (OSError, ValueError) as err:
                    result.errors.append(f"{file}: {err.__class__.__name__}: {err} (episode {episode}, frame "
                                         f"{data['frame'][r]})")
                    continue
                if shape is None:
                    shape = pixels.shape
                if pixels.shape != shape:
                    result.errors.append(f"{file}: image {pixels.shape}, the session's others are {shape}; "
                                         "pass image_size to resize them all")
                    continue
                images.append(pixels)
                kept.append(r)
            if not kept:
                continue
            action = np.array([[float(data[name][r]) for name in DRIVING_ACTIONS] for r in kept], np.float32)
            telemetry = np.array([[float(data[name][r]) for name in DRIVING_TELEMETRY] for r in kept], np.float32)
            seconds = np.array([data["timestamp"][r] for r in kept], np.float64)
            timestamps = _seconds_to_ns(seconds)
            frames = np.array([data["frame"][r] for r in kept], np.int64)
            extras = {"source": np.array(["human"] * len(kept), object),
                      "session": np.array([session.name] * len(kept), object),
                      "frame": frames,
                      "screenshot_path": np.array([f"{session.name}/screenshots/{data['screenshot_filename'][r]}"
                                                   for r in kept], object)}
            rows_out = _transitions({"obs.image": np.stack(images), "obs.telemetry": telemetry}, action,
                                    np.zeros(len(kept), np.float32), episode_base + episode, timestamps, extras,
                                    terminated_at_end=False)
            batches.append(rows_out)
        episode_base += 1_000_000  # keeps episode ids distinct across sessions
    if shape is None:
        raise ImportFormatError(f"no importable driving sessions in {[str(p) for p in paths]}: "
                                + "; ".join(result.errors or ["no metadata/expert_data.csv"]))
    observation_space = gym.spaces.Dict({
        "image": gym.spaces.Box(0, 255, shape, np.uint8),
        "telemetry": gym.spaces.Box(-np.inf, np.inf, (len(DRIVING_TELEMETRY),), np.float32)})
    schema = BatchSchema.for_spaces(observation_space, gym.spaces.Box(_ACTION_LOW, _ACTION_HIGH),
                                    extras={"source": ColumnSpec(object, ()), "session": ColumnSpec(object, ()),
                                            "frame": ColumnSpec(np.int64, ()),
                                            "screenshot_path": ColumnSpec(object, ())})
    return _finish([TransitionBatch(rows) for rows in batches], schema, out, "driving-session", result,
                   "driving sessions", cfg, [str(p) for p in paths])


# --- seed 003: JSON sequence recordings -----------------------------------------------------

def _frames_to_array(frames: list[Any], what: str, where: str) -> tuple[np.ndarray, list[str] | None]:
    """Per-frame lists of numbers, or objects of named numbers (same names every frame)."""
    if not frames:
        raise ValueError(f"{where}: '{what}' is empty")
    if isinstance(frames[0], dict):
        names = list(frames[0])
        for index, frame in enumerate(frames):
            if not isinstance(frame, dict) or list(frame) != names:
                raise ValueError(f"{where}: {what}[{index}] has keys {list(frame) if isinstance(frame, dict) else frame!r}"
                                 f", expected {names}")
        frames = [[frame[name] for name in names] for frame in frames]
    else:
        names = None
    try:
        array = np.asarray(frames, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: '{what}' is not a list of equal-length number lists: {err}") from err
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{where}: '{what}' has shape {array.shape}; expected one flat entry per frame")
    return array, names


def import_json_sequences(paths: list[str | Path], out: str | Path, cfg: AggregationConfig | None = None,
                          action_space: gym.Space | None = None) -> ImportResult:
    """`sequence_*.json` recordings → a dataset (observation Box (n,), action Box (m,) or
    `action_space`; episodes end truncated: a recording stops, it does not fail)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(path.rglob("*.json"))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    result = ImportResult(None)
    episodes, dims, names = [], None, None
    for index, file in enumerate(files):
        try:
            data = json.loads(file.read_text())
            if not isinstance(data, dict) or "states" not in data or "actions" not in data:
                raise ValueError(f"{file}: expected an object with 'states' and 'actions', got "
                                 f"{type(data).__name__} with keys {list(data)[:8] if isinstance(data, dict) else '-'}")
            states, state_names = _frames_to_array(data["states"], "states", str(file))
            actions, action_names = _frames_to_array(data["actions"], "actions", str(file))
            if len(states) != len(actions):
                raise ValueError(f"{file}: {len(states)} states but {len(actions)} actions")
            shape = (states.shape[1], actions.shape[1])
            if dims is not None and shape != dims:
                raise ValueError(f"{file}: {shape[0]} state and {shape[1]} action values per frame; the other "
                                 f"recordings have {dims[0]} and {dims[1]}")
            stamps = np.asarray(data.get("timestamps", np.arange(len(states)) / 30.0), np.float64)
            rewards = np.asarray(data.get("rewards", np.zeros(len(states))), np.float32)
            if stamps.shape != (len(states),) or rewards.shape != (len(states),):
                raise ValueError(f"{file}: 'timestamps'/'rewards' need one number per frame ({len(states)})")
        except json.JSONDecodeError as err:
            result.errors.append(f"{file}: not valid JSON (cut short?): {err.msg} at line {err.lineno}, column "
                                 f"{err.colno}")
            continue
        except ValueError as err:
            result.errors.append(str(err))
            continue
        dims, names = shape, names or {"states": state_names, "actions": action_names}
        result.files.append(str(file))
        episodes.append(_transitions({"obs": states}, actions, rewards, index,
                                     _seconds_to_ns(stamps),
                                     {"source": np.array(["human"] * len(states), object)}, False))
    if dims is None:
        raise ImportFormatError(f"no importable JSON sequences in {[str(p) for p in paths]}: "
                                + "; ".join(result.errors or ["no .json files"]))
    action_space = action_space or gym.spaces.Box(-np.inf, np.inf, (dims[1],), np.float32)
    schema = BatchSchema.for_spaces(gym.spaces.Box(-np.inf, np.inf, (dims[0],), np.float32), action_space,
                                    extras={"source": ColumnSpec(object, ())})
    batches = [TransitionBatch({**rows, "action": rows["action"].astype(schema.columns["action"].dtype)})
               for rows in episodes]
    imported = _finish(batches, schema, out, "json-sequence", result, "JSON sequences", cfg, [str(p) for p in paths])
    if names and any(names.values()):
        logger.info("feature names: states {}, actions {}", names["states"], names["actions"])
    return imported


# --- Minari ---------------------------------------------------------------------------------

def import_minari(dataset_id: str, out: str | Path, datasets_path: str | Path | None = None,
                  cfg: AggregationConfig | None = None) -> ImportResult:
    """A Minari dataset (by id, from `datasets_path` or Minari's default folder) → a dataset."""
    import minari

    from aggregation.export import _minari_root

    with _minari_root(datasets_path):
        source = minari.load_dataset(dataset_id)
    result = ImportResult(None, files=[dataset_id])
    env_id = source.spec.env_spec.id if source.spec.env_spec is not None else f"minari:{dataset_id}"
    schema = BatchSchema.for_spaces(source.observation_space, source.action_space)
    batches, start = [], np.datetime64("1970-01-01T00:00:00", "ns")
    for episode in source.iterate_episodes():
        length = len(episode.actions) if not isinstance(episode.actions, dict) else len(
            next(iter(flatten_value(episode.actions, "action").values())))
        obs = flatten_value(episode.observations, "obs")
        rows = {name: np.asarray(values[:length]) for name, values in obs.items()}
        rows.update({"next_" + name: np.asarray(values[1:length + 1]) for name, values in obs.items()})
        rows.update(flatten_value(episode.actions, "action"))
        rows.update(reward=np.asarray(episode.rewards, np.float32), terminated=np.asarray(episode.terminations, bool),
                    truncated=np.asarray(episode.truncations, bool),
                    episode_id=np.full(length, episode.id, np.int64), step=np.arange(length, dtype=np.int64),
                    collector_id=np.zeros(length, np.int64), policy_version=np.zeros(length, np.int64),
                    timestamp=np.full(length, start))
        batches.append(TransitionBatch({name: np.asarray(rows[name]).astype(spec.dtype)
                                        for name, spec in schema.columns.items()}))
    return _finish(batches, schema, out, env_id, result, "Minari episodes", cfg, [f"minari:{dataset_id}"])
