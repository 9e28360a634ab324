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


# --- offline-RL dicts (D4RL HDF5 / NPZ) and loose Harvest Parquet files ---------------------

D4RL_REQUIRED = ("observations", "actions", "rewards", "terminals")


def _read_d4rl(file: Path) -> dict[str, np.ndarray]:
    """The D4RL keys of an HDF5 or NPZ file (ValueError naming the file and the problem)."""
    if file.suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(file, "r") as h5:
                missing = [key for key in D4RL_REQUIRED if key not in h5]
                if missing:
                    raise ValueError(f"{file}: no {missing} dataset(s); a D4RL file has {list(D4RL_REQUIRED)} "
                                     f"(+ timeouts, next_observations); it has {sorted(h5)}")
                return {key: h5[key][()] for key in (*D4RL_REQUIRED, "timeouts", "next_observations") if key in h5}
        except OSError as err:
            raise ValueError(f"{file}: not a readable HDF5 file: {err}") from err
    try:
        with np.load(file, allow_pickle=False) as npz:
            missing = [key for key in D4RL_REQUIRED if key not in npz.files]
            if missing:
                raise ValueError(f"{file}: no {missing} array(s); it has {npz.files}")
            return {key: npz[key] for key in (*D4RL_REQUIRED, "timeouts", "next_observations") if key in npz.files}
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise ValueError(f"{file}: holds object arrays, which load only by unpickling (refused: pickle runs "
                             "code); store plain numeric arrays") from err
        raise
    except (OSError, EOFError) as err:
        raise ValueError(f"{file}: not a readable NPZ file: {err}") from err


def import_offline_rl(paths: list[str | Path], out: str | Path, env_id: str = "offline-rl",
                      cfg: AggregationConfig | None = None) -> ImportResult:
    """D4RL-style files (`.hdf5`/`.h5`/`.npz` with observations, actions, rewards, terminals and
    optionally timeouts and next_observations) → a dataset; episodes end at terminals/timeouts."""
    files = [p for path in map(Path, paths) for p in (sorted(path.rglob("*")) if path.is_dir() else [path])
             if p.suffix in (".h5", ".hdf5", ".npz")]
    missing = [str(p) for p in map(Path, paths) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{missing}: no such files")
    result, loaded = ImportResult(None), []
    for file in files:
        try:
            data = _read_d4rl(file)
            count = len(data["actions"])
            if any(len(data[key]) != count for key in data):
                raise ValueError(f"{file}: arrays of different lengths: {({k: len(v) for k, v in data.items()})}")
            if loaded and (data["observations"].shape[1:] != loaded[0][1]["observations"].shape[1:]
                           or data["actions"].shape[1:] != loaded[0][1]["actions"].shape[1:]):
                raise ValueError(f"{file}: observations {data['observations'].shape[1:]} / actions "
                                 f"{data['actions'].shape[1:]} differ from {loaded[0][0]}'s")
        except ValueError as err:
            result.errors.append(str(err))
            continue
        loaded.append((file, data))
        result.files.append(str(file))
    if not loaded:
        raise ImportFormatError(f"no importable offline-RL files in {[str(p) for p in paths]}: "
                                + "; ".join(result.errors or ["no .hdf5/.h5/.npz files"]))
    first = loaded[0][1]
    discrete = first["actions"].ndim == 1 and first["actions"].dtype.kind in "iu"
    action_space = (gym.spaces.Discrete(int(max(d["actions"].max() for _, d in loaded)) + 1) if discrete
                    else gym.spaces.Box(-np.inf, np.inf, first["actions"].shape[1:], np.float32))
    observation_space = gym.spaces.Box(-np.inf, np.inf, first["observations"].shape[1:], np.float32)
    schema = BatchSchema.for_spaces(observation_space, action_space)
    batches, episode_base = [], 0
    for _, data in loaded:
        count = len(data["actions"])
        terminals = data["terminals"].astype(bool)
        timeouts = data.get("timeouts", np.zeros(count, bool)).astype(bool)
        ends = terminals | timeouts
        episode = episode_base + np.r_[0, np.cumsum(ends)[:-1]]
        starts = np.r_[True, ends[:-1]]
        step = np.arange(count) - np.maximum.accumulate(np.where(starts, np.arange(count), 0))
        obs = data["observations"].astype(np.float32)
        next_obs = data.get("next_observations")
        if next_obs is None:  # the next row's, within an episode; the episode's last row keeps its own
            next_obs = np.where(ends.reshape(-1, *([1] * (obs.ndim - 1))), obs, np.roll(obs, -1, axis=0))
        rows = {"obs": obs, "next_obs": np.asarray(next_obs, np.float32),
                "action": data["actions"].astype(schema.columns["action"].dtype),
                "reward": data["rewards"].astype(np.float32), "terminated": terminals, "truncated": timeouts,
                "episode_id": episode.astype(np.int64), "step": step.astype(np.int64),
                "collector_id": np.zeros(count, np.int64), "policy_version": np.zeros(count, np.int64),
                "timestamp": np.zeros(count, "datetime64[ns]")}
        batches.append(TransitionBatch(rows))
        episode_base = int(episode.max()) + 1 if count else episode_base
    return _finish(batches, schema, out, env_id, result, "offline-RL files", cfg, [str(p) for p in paths])


def import_parquet(paths: list[str | Path], out: str | Path, cfg: AggregationConfig | None = None) -> ImportResult:
    """Loose Parquet files written by Harvest (e.g. copied out of datasets) → one dataset; a
    file that is damaged or has another schema is named and left out."""
    import pyarrow.parquet as pq

    from rollout.batch import BatchSchemaError

    files = [p for path in map(Path, paths) for p in (sorted(path.rglob("*.parquet")) if path.is_dir() else [path])]
    missing = [str(p) for p in files if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{missing}: no such files")
    result, readable = ImportResult(None), []
    for file in files:
        try:
            table = pq.read_table(file)
            readable.append((file, table, BatchSchema.from_arrow_schema(table.schema)))
        except (pa.ArrowInvalid, OSError) as err:
            result.errors.append(f"{file}: not a readable Parquet file (truncated?): {err}")
        except BatchSchemaError as err:
            result.errors.append(f"{file}: {err}; not a file Harvest wrote")
    # The schema most files share is the dataset's (ties: the first file's); the others are named.
    keys = [json.dumps(file_schema.to_json(), sort_keys=True) for _, _, file_schema in readable]
    chosen = max(keys, key=keys.count) if keys else None
    schema, batches = None, []
    reference = readable[keys.index(chosen)][2].columns if readable else {}
    for (file, table, file_schema), key in zip(readable, keys):
        if key != chosen:
            differing = sorted(name for name in set(file_schema.columns) | set(reference)
                               if file_schema.columns.get(name) != reference.get(name))
            result.errors.append(f"{file}: columns {differing} differ from the other files'")
            continue
        schema = file_schema
        batches.append(TransitionBatch.from_arrow(table))
        result.files.append(str(file))
    if schema is None:
        raise ImportFormatError(f"no importable Parquet files in {[str(p) for p in paths]}: "
                                + "; ".join(result.errors or ["no .parquet files"]))
    return _finish(batches, schema, out, "parquet", result, "Parquet files", cfg, [str(p) for p in paths])
