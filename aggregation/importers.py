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

Bad input is named and left out, the rest is imported:

* a file that cannot be read, or holds nothing of the format: one line naming it, the file left out;
* a CSV row or JSON frame with a missing or non-numeric value (an empty cell, `abc`, `null`):
  one line naming the file, the line or frame, the column and what was expected; the row left
  out (its episode goes on from the row before to the row after, as for a missing screenshot);
* the same file named twice, or episodes another file already gave (`import parquet`; the rule
  `harvest edit merge` applies): the repeat is named and left out;
* NaN and ±inf values are numbers a recording can hold: they are kept, and each file and column
  holding them is flagged (`warnings`, and the log) with the count, so nothing is dropped behind
  the user's back and nothing is passed on unsaid.

When nothing importable remains, `ImportFormatError` says why (every problem, one line) and no
dataset is written. Nothing is half-written: the dataset appears only once all of it is written.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pyarrow as pa
from loguru import logger

from harvest.aggregation.compact import write_dataset
from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.manifest import Manifest
from harvest.cluster.logging import track
from harvest.envs.spaces import ColumnSpec, flatten_value
from harvest.rollout.batch import BatchSchema, TransitionBatch

DRIVING_COLUMNS = [
    "episode",
    "frame",
    "timestamp",
    "screenshot_filename",
    "throttle",
    "brake",
    "steering",
    "gear_up",
    "gear_down",
    "clutch",
    "speed",
    "rpm",
    "gear",
    "lap_time",
]
DRIVING_ACTIONS = ["throttle", "brake", "steering", "clutch", "gear_up", "gear_down"]
DRIVING_TELEMETRY = ["speed", "rpm", "gear", "lap_time"]
_DRIVING_INTEGERS = ("episode", "frame")
_DRIVING_BOOLEANS = {"True": True, "true": True, "1": True, "False": False, "false": False, "0": False}
_ACTION_LOW = np.array([0, 0, -1, 0, 0, 0], np.float32)
_ACTION_HIGH = np.array([1, 1, 1, 1, 1, 1], np.float32)


class ImportFormatError(ValueError):
    """A recording that cannot be imported at all (nothing importable found)."""


@dataclass
class ImportResult:
    manifest: Manifest | None
    files: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """One line per file, row or frame left out: path (and line or frame, column) and what was expected."""
    warnings: list[str] = field(default_factory=list)
    """One line per file and column holding NaN or ±inf: how many (the rows are kept)."""


def flag_nonfinite(
    where: str, columns: Mapping[str, np.ndarray], result: ImportResult, lines: np.ndarray | None = None
) -> None:
    """Add a warning to `result` for each float column of `columns` (one entry per row) that holds
    NaN or ±inf: `where`, the column, the counts and (with `lines`, the rows' line numbers) where."""
    for name, values in columns.items():
        values = np.asarray(values)
        if values.dtype.kind != "f" or values.size == 0:
            continue
        nan, inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
        if not nan and not inf:
            continue
        rows = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        counts = " and ".join(f"{count} {label}" for count, label in ((nan, "NaN"), (inf, "inf")) if count)
        at = ""
        if lines is not None:
            shown = [str(line) for line in np.asarray(lines)[rows][:5]]
            at = f" (line{'s' if len(shown) > 1 else ''} {', '.join(shown)}{', ...' if rows.sum() > 5 else ''})"
        result.warnings.append(
            f"{where}: column {name!r} holds {counts} values in {int(rows.sum())} of {len(values)} rows{at}; kept"
        )


def unique_files(files: list[Path], result: ImportResult) -> list[Path]:
    """`files` in order, each once: a file named again (or found again inside a named folder) is
    named in `result.errors` and left out, not imported twice."""
    first: dict[Path, Path] = {}
    unique = []
    for file in files:
        key = file.resolve()
        if key in first:
            result.errors.append(f"{file}: named twice (also as {first[key]}); imported once")
            continue
        first[key] = file
        unique.append(file)
    return unique


def _transitions(
    obs: dict[str, np.ndarray],
    action: np.ndarray,
    reward: np.ndarray,
    episode_id: int,
    timestamps: np.ndarray,
    extras: dict[str, np.ndarray],
    terminated_at_end: bool,
) -> dict[str, np.ndarray]:
    """One episode's frames as transitions: next_obs is the next frame's, the last frame's is
    itself (the recording ends there: truncated, unless the recording says it terminated)."""
    length = action.shape[0]
    next_index = np.minimum(np.arange(length) + 1, length - 1)
    rows = {
        **obs,
        **{"next_" + name: values[next_index] for name, values in obs.items()},
        "action": action,
        "reward": reward.astype(np.float32),
        "terminated": np.r_[np.zeros(length - 1, bool), terminated_at_end],
        "truncated": np.r_[np.zeros(length - 1, bool), not terminated_at_end],
        "episode_id": np.full(length, episode_id, np.int64),
        "step": np.arange(length, dtype=np.int64),
        "collector_id": np.zeros(length, np.int64),
        "policy_version": np.zeros(length, np.int64),
        "timestamp": timestamps.astype("datetime64[ns]"),
        **extras,
    }
    return rows


def _seconds_to_ns(seconds: np.ndarray) -> np.ndarray:
    """Unix seconds (float) as datetime64[ns], rounded to the microsecond (a float64 of ~1.7e9 s
    cannot hold nanoseconds)."""
    return (np.round(np.asarray(seconds, np.float64) * 1e6).astype(np.int64) * 1000).astype("datetime64[ns]")


def _finish(
    batches: list[TransitionBatch],
    schema: BatchSchema,
    out: str | Path,
    env_id: str,
    result: ImportResult,
    what: str,
    cfg: AggregationConfig | None,
    parents: list[str],
) -> ImportResult:
    if not batches:
        raise ImportFormatError(
            f"nothing importable in {result.files or parents}: " + "; ".join(result.errors or [f"no {what}"])
        )
    result.manifest = write_dataset(
        batches,
        schema,
        out,
        cfg or AggregationConfig(formats=["parquet"]),
        run_id=f"import-{what}",
        env_id=env_id,
        parents=parents,
    )
    for error in result.errors:
        logger.warning("left out: {}", error)
    for warning in result.warnings:
        logger.warning("flagged: {}", warning)
    logger.info(
        "imported {} {} ({} rows, {} episodes) into {}; {} problems, {} flagged",
        len(result.files),
        what,
        result.manifest.rows,
        result.manifest.episodes,
        out,
        len(result.errors),
        len(result.warnings),
    )
    return result


# --- seed 002: driving sessions -------------------------------------------------------------


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
        value = float(text)
    except ValueError:
        raise ValueError("expected a number") from None
    if column == "timestamp" and not math.isfinite(value):
        raise ValueError("expected a finite number of seconds")
    return value


def _read_driving_csv(path: Path, result: ImportResult) -> dict[str, list] | None:
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
                if len(cells) != len(header):
                    result.errors.append(
                        f"{path}:{line}: {','.join(cells)!r}: expected {len(header)} columns, got {len(cells)}"
                    )
                    continue
                values, problems = {}, []
                for name, index in position.items():
                    try:
                        values[name] = _driving_cell(name, cells[index].strip())
                    except ValueError as err:
                        problems.append(f"column {name!r} is {cells[index]!r}: {err}")
                if problems:
                    result.errors.append(f"{path}:{line}: {'; '.join(problems)}; row left out")
                    continue
                key = (values["episode"], values["frame"])
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


def import_driving_sessions(
    paths: list[str | Path], out: str | Path, image_size: int | None = None, cfg: AggregationConfig | None = None
) -> ImportResult:
    """Sessions (folders with `metadata/expert_data.csv`; a folder of sessions works too) → a dataset."""
    from PIL import Image

    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such folder")
        found += sorted(p.parent.parent for p in path.rglob("metadata/expert_data.csv"))
    result = ImportResult(None)
    batches, shape = [], None
    episode_base = 0
    for session in track(unique_files(found, result), "import", "files"):
        csv_path = session / "metadata" / "expert_data.csv"
        data = _read_driving_csv(csv_path, result)
        if data is None:
            continue
        numbers = {name: np.asarray(data[name], np.float32) for name in [*DRIVING_ACTIONS, *DRIVING_TELEMETRY]}
        episode_ids, frames = np.asarray(data["episode"], np.int64), np.asarray(data["frame"], np.int64)
        imported: list[int] = []
        for episode in np.unique(episode_ids).tolist():
            rows = np.flatnonzero(episode_ids == episode)
            images, kept = [], []
            for r in rows[np.argsort(frames[rows], kind="stable")].tolist():
                file = session / "screenshots" / data["screenshot_filename"][r]
                try:
                    with Image.open(file) as image:
                        image = image.convert("RGB")
                        if image_size:
                            image = image.resize((image_size, image_size), Image.BILINEAR)
                        pixels = np.asarray(image, np.uint8)
                except (OSError, ValueError) as err:
                    result.errors.append(
                        f"{file}: {err.__class__.__name__}: {err} (episode {episode}, frame {frames[r]})"
                    )
                    continue
                if shape is None:
                    shape = pixels.shape
                if pixels.shape != shape:
                    result.errors.append(
                        f"{file}: image {pixels.shape}, the session's others are {shape}; "
                        "pass image_size to resize them all"
                    )
                    continue
                images.append(pixels)
                kept.append(r)
            if not kept:
                continue
            imported += kept
            action = np.stack([numbers[name][kept] for name in DRIVING_ACTIONS], axis=1)
            telemetry = np.stack([numbers[name][kept] for name in DRIVING_TELEMETRY], axis=1)
            timestamps = _seconds_to_ns(np.asarray(data["timestamp"], np.float64)[kept])
            extras = {
                "source": np.array(["human"] * len(kept), object),
                "session": np.array([session.name] * len(kept), object),
                "frame": frames[kept],
                "screenshot_path": np.array(
                    [f"{session.name}/screenshots/{data['screenshot_filename'][r]}" for r in kept], object
                ),
            }
            batches.append(
                _transitions(
                    {"obs.image": np.stack(images), "obs.telemetry": telemetry},
                    action,
                    np.zeros(len(kept), np.float32),
                    episode_base + episode,
                    timestamps,
                    extras,
                    terminated_at_end=False,
                )
            )
        if imported:
            result.files.append(str(session))
            flag_nonfinite(
                str(csv_path),
                {name: values[imported] for name, values in numbers.items()},
                result,
                lines=np.asarray(data["line"])[imported],
            )
        episode_base += 1_000_000  # keeps episode ids distinct across sessions
    if shape is None or not batches:
        raise ImportFormatError(
            f"no importable driving sessions in {[str(p) for p in paths]}: "
            + "; ".join(result.errors or ["no metadata/expert_data.csv"])
        )
    observation_space = gym.spaces.Dict(
        {
            "image": gym.spaces.Box(0, 255, shape, np.uint8),
            "telemetry": gym.spaces.Box(-np.inf, np.inf, (len(DRIVING_TELEMETRY),), np.float32),
        }
    )
    schema = BatchSchema.for_spaces(
        observation_space,
        gym.spaces.Box(_ACTION_LOW, _ACTION_HIGH),
        extras={
            "source": ColumnSpec(object, ()),
            "session": ColumnSpec(object, ()),
            "frame": ColumnSpec(np.int64, ()),
            "screenshot_path": ColumnSpec(object, ()),
        },
    )
    return _finish(
        [TransitionBatch(rows) for rows in batches],
        schema,
        out,
        "driving-session",
        result,
        "driving sessions",
        cfg,
        [str(p) for p in paths],
    )


# --- seed 003: JSON sequence recordings -----------------------------------------------------


def _json_text(value: Any) -> str:
    """A JSON value as the file spells it (`null`, `"abc"`), cut short."""
    text = json.dumps(value, allow_nan=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _frame_numbers(frame: Any, names: list[str] | None, width: int | None) -> list[float]:
    """One frame's values (ValueError: what is wrong with it, after its `[index]`)."""
    if names is not None:
        if not isinstance(frame, dict) or list(frame) != names:
            raise ValueError(
                f" has keys {list(frame) if isinstance(frame, dict) else _json_text(frame)}; expected {names}"
            )
        values, labels = [frame[name] for name in names], [repr(name) for name in names]
    elif width is not None:
        if not isinstance(frame, list) or len(frame) != width:
            raise ValueError(f" is {_json_text(frame)}; expected a list of {width} numbers")
        values, labels = frame, [str(index) for index in range(width)]
    else:
        values, labels = [frame], []
    for label, value in zip(labels or [""], values):
        if not isinstance(value, (int, float)):
            raise ValueError(f"{f'[{label}]' if label else ''} is {_json_text(value)}; expected a number")
    return values


def _frames_to_array(
    frames: Any, what: str, where: str, dtype: type = np.float32, scalar: bool = False
) -> tuple[np.ndarray, dict[int, str], list[str] | None]:
    """Per-frame numbers (always, with `scalar`), lists of numbers, or objects of named numbers
    (the form and width of the first frame that has one) → (frames, width) of `dtype` (NaN where
    a frame is bad), the bad frames ({index: what is wrong}) and the names.

    Raises:
        ValueError: `what` is not a non-empty list (naming `where`).
    """
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"{where}: '{what}' is {_json_text(frames)}; expected a list with one entry per frame")
    first = None if scalar else next((frame for frame in frames if isinstance(frame, (dict, list))), None)
    names = list(first) if isinstance(first, dict) else None
    width = len(names) if names is not None else len(first) if isinstance(first, list) else None
    if width == 0:
        raise ValueError(f"{where}: '{what}' frames hold no values; expected at least one number per frame")
    array = np.full((len(frames), width or 1), np.nan, dtype)
    bad = {}
    for index, frame in enumerate(frames):
        try:
            array[index] = _frame_numbers(frame, names, width)
        except ValueError as err:
            bad[index] = f"{what}[{index}]{err}"
        except OverflowError:
            bad[index] = f"{what}[{index}] holds an integer too large for a float; expected a number"
    return array, bad, names


def _per_frame(data: dict[str, Any], key: str, default: np.ndarray, where: str) -> tuple[np.ndarray, dict[int, str]]:
    """An optional one-number-per-frame entry (`rewards`, `timestamps`); its bad frames."""
    if key not in data:
        return default, {}
    values = data[key]
    if not isinstance(values, list) or len(values) != len(default):
        raise ValueError(
            f"{where}: '{key}' is {_json_text(values)}; expected a list of {len(default)} numbers (one per frame)"
        )
    array, bad, _ = _frames_to_array(values, key, where, default.dtype.type, scalar=True)
    return array[:, 0], bad


def _read_sequence(
    file: Path, result: ImportResult
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, list[str] | None]]:
    """One recording's good frames: states, actions, rewards, timestamps (s) and feature names;
    each bad frame is named in `result.errors` (ValueError: nothing of the file is importable)."""
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{file}: not valid JSON (cut short?): {err.msg} at line {err.lineno}, column {err.colno}"
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: not a readable JSON file: {err}") from err
    if not isinstance(data, dict) or "states" not in data or "actions" not in data:
        raise ValueError(
            f"{file}: expected an object with 'states' and 'actions', got "
            f"{type(data).__name__} with keys {list(data)[:8] if isinstance(data, dict) else '-'}"
        )
    states, bad_states, state_names = _frames_to_array(data["states"], "states", str(file))
    actions, bad_actions, action_names = _frames_to_array(data["actions"], "actions", str(file))
    if len(states) != len(actions):
        raise ValueError(f"{file}: {len(states)} states but {len(actions)} actions")
    rewards, bad_rewards = _per_frame(data, "rewards", np.zeros(len(states), np.float32), str(file))
    stamps, bad_stamps = _per_frame(data, "timestamps", np.arange(len(states)) / 30.0, str(file))
    bad_stamps.update(
        {
            index: f"timestamps[{index}] is {stamps[index]}; expected a finite number of seconds"
            for index in np.flatnonzero(~np.isfinite(stamps)).tolist()
            if index not in bad_stamps
        }
    )
    bad_frames = sorted({*bad_states, *bad_actions, *bad_rewards, *bad_stamps})
    for index in bad_frames:
        reasons = [bad[index] for bad in (bad_states, bad_actions, bad_rewards, bad_stamps) if index in bad]
        result.errors.append(f"{file}: frame {index}: {'; '.join(reasons)}; frame left out")
    kept = np.setdiff1d(np.arange(len(states)), bad_frames)
    if kept.size == 0:
        raise ValueError(f"{file}: no frame has good states and actions")
    return (states[kept], actions[kept], rewards[kept], stamps[kept], {"states": state_names, "actions": action_names})


def import_json_sequences(
    paths: list[str | Path],
    out: str | Path,
    cfg: AggregationConfig | None = None,
    action_space: gym.Space | None = None,
) -> ImportResult:
    """`sequence_*.json` recordings → a dataset (observation Box (n,), action Box (m,) or
    `action_space`; episodes end truncated: a recording stops, it does not fail)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(path.rglob("*.json"))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    result = ImportResult(None)
    episodes, dims, names = [], None, None
    for index, file in enumerate(track(unique_files(found, result), "import", "files")):
        try:
            states, actions, rewards, stamps, file_names = _read_sequence(file, result)
            shape = (states.shape[1], actions.shape[1])
            if dims is not None and shape != dims:
                raise ValueError(
                    f"{file}: {shape[0]} state and {shape[1]} action values per frame; the other "
                    f"recordings have {dims[0]} and {dims[1]}"
                )
        except ValueError as err:
            result.errors.append(str(err))
            continue
        dims, names = shape, names or file_names
        result.files.append(str(file))
        flag_nonfinite(str(file), {"states": states, "actions": actions, "rewards": rewards}, result)
        episodes.append(
            _transitions(
                {"obs": states},
                actions,
                rewards,
                index,
                _seconds_to_ns(stamps),
                {"source": np.array(["human"] * len(states), object)},
                False,
            )
        )
    if dims is None:
        raise ImportFormatError(
            f"no importable JSON sequences in {[str(p) for p in paths]}: "
            + "; ".join(result.errors or ["no .json files"])
        )
    action_space = action_space or gym.spaces.Box(-np.inf, np.inf, (dims[1],), np.float32)
    schema = BatchSchema.for_spaces(
        gym.spaces.Box(-np.inf, np.inf, (dims[0],), np.float32), action_space, extras={"source": ColumnSpec(object, ())}
    )
    batches = [
        TransitionBatch({**rows, "action": rows["action"].astype(schema.columns["action"].dtype)}) for rows in episodes
    ]
    imported = _finish(batches, schema, out, "json-sequence", result, "JSON sequences", cfg, [str(p) for p in paths])
    if names and any(names.values()):
        logger.info("feature names: states {}, actions {}", names["states"], names["actions"])
    return imported


# --- Minari ---------------------------------------------------------------------------------


def import_minari(
    dataset_id: str, out: str | Path, datasets_path: str | Path | None = None, cfg: AggregationConfig | None = None
) -> ImportResult:
    """A Minari dataset (by id, from `datasets_path` or Minari's default folder) → a dataset."""
    from harvest.aggregation.export import _minari_root
    from harvest.envs.extras import require

    minari = require("minari", "harvest import minari")

    with _minari_root(datasets_path):
        source = minari.load_dataset(dataset_id)
    result = ImportResult(None, files=[dataset_id])
    env_id = source.spec.env_spec.id if source.spec.env_spec is not None else f"minari:{dataset_id}"
    schema = BatchSchema.for_spaces(source.observation_space, source.action_space)
    batches, start = [], np.datetime64("1970-01-01T00:00:00", "ns")
    for episode in track(source.iterate_episodes(), "import", "episodes", source.total_episodes):
        length = (
            len(episode.actions)
            if not isinstance(episode.actions, dict)
            else len(next(iter(flatten_value(episode.actions, "action").values())))
        )
        obs = flatten_value(episode.observations, "obs")
        rows = {name: np.asarray(values[:length]) for name, values in obs.items()}
        rows.update({"next_" + name: np.asarray(values[1 : length + 1]) for name, values in obs.items()})
        rows.update(flatten_value(episode.actions, "action"))
        rows.update(
            reward=np.asarray(episode.rewards, np.float32),
            terminated=np.asarray(episode.terminations, bool),
            truncated=np.asarray(episode.truncations, bool),
            episode_id=np.full(length, episode.id, np.int64),
            step=np.arange(length, dtype=np.int64),
            collector_id=np.zeros(length, np.int64),
            policy_version=np.zeros(length, np.int64),
            timestamp=np.full(length, start),
        )
        batches.append(
            TransitionBatch({name: np.asarray(rows[name]).astype(spec.dtype) for name, spec in schema.columns.items()})
        )
    if batches:
        flag_nonfinite(
            f"minari:{dataset_id}",
            {
                name: np.concatenate([batch.columns[name] for batch in batches])
                for name in [*schema.obs_columns, *schema.action_columns, "reward"]
            },
            result,
        )
    return _finish(batches, schema, out, env_id, result, "Minari episodes", cfg, [f"minari:{dataset_id}"])


# --- offline-RL dicts (D4RL HDF5 / NPZ) and loose Harvest Parquet files ---------------------

D4RL_REQUIRED = ("observations", "actions", "rewards", "terminals")
_D4RL_KEYS = (*D4RL_REQUIRED, "timeouts", "next_observations")


def _read_d4rl(file: Path) -> dict[str, np.ndarray]:
    """The D4RL keys of an HDF5 or NPZ file (ValueError naming the file and the problem)."""
    if file.suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(file, "r") as h5:
                missing = [key for key in D4RL_REQUIRED if key not in h5]
                if missing:
                    raise ValueError(
                        f"{file}: no {missing} dataset(s); a D4RL file has {list(D4RL_REQUIRED)} "
                        f"(+ timeouts, next_observations); it has {sorted(h5)}"
                    )
                groups = [key for key in _D4RL_KEYS if key in h5 and not isinstance(h5[key], h5py.Dataset)]
                if groups:
                    raise ValueError(f"{file}: {groups} are groups, not arrays; expected one array per key")
                return {key: h5[key][()] for key in _D4RL_KEYS if key in h5}
        except OSError as err:
            raise ValueError(f"{file}: not a readable HDF5 file: {err}") from err
    try:
        with np.load(file, allow_pickle=False) as npz:
            missing = [key for key in D4RL_REQUIRED if key not in npz.files]
            if missing:
                raise ValueError(f"{file}: no {missing} array(s); it has {npz.files}")
            return {key: npz[key] for key in _D4RL_KEYS if key in npz.files}
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise ValueError(
                f"{file}: holds object arrays, which load only by unpickling (refused: pickle runs "
                "code); store plain numeric arrays"
            ) from err
        raise
    except (OSError, EOFError) as err:
        raise ValueError(f"{file}: not a readable NPZ file: {err}") from err


def _check_d4rl(file: Path, data: dict[str, np.ndarray], first: tuple[Path, dict[str, np.ndarray]] | None) -> None:
    """ValueError naming `file` unless its arrays are numeric rows of one length, at least one,
    shaped (and with integer or float actions) like the first file's."""
    not_numeric = {key: str(values.dtype) for key, values in data.items() if values.dtype.kind not in "biuf"}
    if not_numeric:
        raise ValueError(f"{file}: arrays {not_numeric} are not numbers; expected numeric arrays")
    single = [key for key, values in data.items() if values.ndim == 0]
    if single:
        raise ValueError(f"{file}: {single} hold a single value; expected one entry per row")
    count = len(data["actions"])
    if count == 0:
        raise ValueError(f"{file}: no rows (its arrays are empty); expected at least one transition")
    if any(len(values) != count for values in data.values()):
        raise ValueError(f"{file}: arrays of different lengths: { ({k: len(v) for k, v in data.items()}) }")
    if first is None:
        return
    first_file, first_data = first
    if (
        data["observations"].shape[1:] != first_data["observations"].shape[1:]
        or data["actions"].shape[1:] != first_data["actions"].shape[1:]
    ):
        raise ValueError(
            f"{file}: observations {data['observations'].shape[1:]} / actions "
            f"{data['actions'].shape[1:]} differ from {first_file}'s"
        )
    if (data["actions"].dtype.kind in "iu") != (first_data["actions"].dtype.kind in "iu"):
        raise ValueError(
            f"{file}: {data['actions'].dtype} actions, {first_file} has {first_data['actions'].dtype}; "
            "expected integer (discrete) or float actions in every file"
        )


def import_offline_rl(
    paths: list[str | Path], out: str | Path, env_id: str = "offline-rl", cfg: AggregationConfig | None = None
) -> ImportResult:
    """D4RL-style files (`.hdf5`/`.h5`/`.npz` with observations, actions, rewards, terminals and
    optionally timeouts and next_observations) → a dataset; episodes end at terminals/timeouts."""
    missing = [str(p) for p in map(Path, paths) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{missing}: no such files")
    found = [
        p
        for path in map(Path, paths)
        for p in (sorted(path.rglob("*")) if path.is_dir() else [path])
        if p.suffix in (".h5", ".hdf5", ".npz")
    ]
    result, loaded = ImportResult(None), []
    for file in track(unique_files(found, result), "import", "files"):
        try:
            data = _read_d4rl(file)
            _check_d4rl(file, data, loaded[0] if loaded else None)
        except ValueError as err:
            result.errors.append(str(err))
            continue
        loaded.append((file, data))
        result.files.append(str(file))
        flag_nonfinite(
            str(file),
            {key: data[key] for key in ("observations", "actions", "rewards", "next_observations") if key in data},
            result,
        )
    if not loaded:
        raise ImportFormatError(
            f"no importable offline-RL files in {[str(p) for p in paths]}: "
            + "; ".join(result.errors or ["no .hdf5/.h5/.npz files"])
        )
    first = loaded[0][1]
    discrete = first["actions"].ndim == 1 and first["actions"].dtype.kind in "iu"
    action_space = (
        gym.spaces.Discrete(int(max(d["actions"].max() for _, d in loaded)) + 1)
        if discrete
        else gym.spaces.Box(-np.inf, np.inf, first["actions"].shape[1:], np.float32)
    )
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
        rows = {
            "obs": obs,
            "next_obs": np.asarray(next_obs, np.float32),
            "action": data["actions"].astype(schema.columns["action"].dtype),
            "reward": data["rewards"].astype(np.float32),
            "terminated": terminals,
            "truncated": timeouts,
            "episode_id": episode.astype(np.int64),
            "step": step.astype(np.int64),
            "collector_id": np.zeros(count, np.int64),
            "policy_version": np.zeros(count, np.int64),
            "timestamp": np.zeros(count, "datetime64[ns]"),
        }
        batches.append(TransitionBatch(rows))
        episode_base = int(episode.max()) + 1
    return _finish(batches, schema, out, env_id, result, "offline-RL files", cfg, [str(p) for p in paths])


def import_parquet(paths: list[str | Path], out: str | Path, cfg: AggregationConfig | None = None) -> ImportResult:
    """Loose Parquet files written by Harvest (e.g. copied out of datasets) → one dataset; a
    file that is damaged, has another schema, holds no rows or repeats episodes an earlier file
    gave (the rule of `harvest edit merge`: an episode comes from one source) is named and left out."""
    import pyarrow.parquet as pq

    from harvest.rollout.batch import BatchSchemaError

    found = [p for path in map(Path, paths) for p in (sorted(path.rglob("*.parquet")) if path.is_dir() else [path])]
    missing = [str(p) for p in found if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{missing}: no such files")
    result, readable = ImportResult(None), []
    for file in track(unique_files(found, result), "import", "files"):
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
    episode_source: dict[int, Path] = {}
    for (file, table, file_schema), key in zip(readable, keys):
        if key != chosen:
            differing = sorted(
                name
                for name in set(file_schema.columns) | set(reference)
                if file_schema.columns.get(name) != reference.get(name)
            )
            result.errors.append(f"{file}: columns {differing} differ from the other files'")
            continue
        if table.num_rows == 0:
            result.errors.append(f"{file}: no rows; expected at least one transition")
            continue
        episode_ids = np.unique(table.column("episode_id").to_numpy()).tolist()
        repeated = [episode_id for episode_id in episode_ids if episode_id in episode_source]
        if repeated:
            result.errors.append(
                f"{file}: episodes {repeated[:10]}{' ...' if len(repeated) > 10 else ''} are "
                f"also in {episode_source[repeated[0]]}; an episode comes from one file "
                "(as `harvest edit merge` requires)"
            )
            continue
        episode_source.update(dict.fromkeys(episode_ids, file))
        schema = file_schema
        batch = TransitionBatch.from_arrow(table)
        batches.append(batch)
        result.files.append(str(file))
        flag_nonfinite(
            str(file),
            {name: batch.columns[name] for name in [*file_schema.obs_columns, *file_schema.action_columns, "reward"]},
            result,
        )
    if schema is None:
        raise ImportFormatError(
            f"no importable Parquet files in {[str(p) for p in paths]}: "
            + "; ".join(result.errors or ["no .parquet files"])
        )
    return _finish(batches, schema, out, "parquet", result, "Parquet files", cfg, [str(p) for p in paths])
