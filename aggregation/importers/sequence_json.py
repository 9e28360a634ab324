"""`harvest import sequence-json`: JSON sequence recordings made by seed 003 into a dataset.

Each `sequence_*.json` file is one episode: `{"states": [...], "actions": [...], "timestamps"?:
[...], "rewards"?: [...]}` with one entry per frame (a list of numbers, or an object of named
numbers, the same names in every frame). A frame with a missing or non-numeric value (`null`,
`"abc"`) is named and left out; the episode goes on from the frame before to the frame after.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from loguru import logger

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
    array: np.ndarray = np.full((len(frames), width or 1), np.nan, dtype)
    bad: dict[int, str] = {}
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
    file: Path, result: ImportLog
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
    result = ImportLog()
    episodes, dims, names = [], None, None
    for index, file in enumerate(track(unique_files(_json_files(paths), result), "import", "files")):
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
            episode_rows(
                {"obs": states},
                actions,
                rewards,
                index,
                seconds_to_ns(stamps),
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
    imported = finish_import(
        batches, schema, out, "json-sequence", result, "JSON sequences", cfg, [str(p) for p in paths]
    )
    if names and any(names.values()):
        logger.info("feature names: states {}, actions {}", names["states"], names["actions"])
    return imported


def _json_files(paths: list[str | Path]) -> list[Path]:
    """The `.json` files named, and those under the folders named (FileNotFoundError: neither)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(path.rglob("*.json"))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found
