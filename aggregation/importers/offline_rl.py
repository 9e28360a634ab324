"""`harvest import offline-rl`: offline-RL dicts (D4RL-style HDF5 or NPZ files) into a dataset.

A file holds `observations`, `actions`, `rewards` and `terminals` (optionally `timeouts` and
`next_observations`), one entry per transition; episodes end at terminals and timeouts. A file
that cannot be read, is not numeric, or is shaped unlike the first one is named and left out.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np

from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.importers.result import (
    ImportFormatError,
    ImportLog,
    ImportResult,
    finish_import,
    flag_nonfinite,
    unique_files,
)
from harvest.cluster.logging import track
from harvest.rollout.batch import BatchSchema, TransitionBatch

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
    result = ImportLog()
    loaded = _load_d4rl_files(found, result)
    if not loaded:
        raise ImportFormatError(
            f"no importable offline-RL files in {[str(p) for p in paths]}: "
            + "; ".join(result.errors or ["no .hdf5/.h5/.npz files"])
        )
    schema = _d4rl_schema(loaded)
    batches, episode_base = [], 0
    for _, data in loaded:
        rows = _d4rl_rows(data, episode_base, schema.columns["action"].dtype)
        batches.append(TransitionBatch(rows))
        episode_base = int(rows["episode_id"].max()) + 1
    return finish_import(batches, schema, out, env_id, result, "offline-RL files", cfg, [str(p) for p in paths])


def _load_d4rl_files(found: list[Path], result: ImportLog) -> list[tuple[Path, dict[str, np.ndarray]]]:
    """Each file's arrays, once it reads and matches the first file read; the others are named in
    `result.errors`, the loaded ones in `result.files` (NaN and ±inf flagged)."""
    loaded: list[tuple[Path, dict[str, np.ndarray]]] = []
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
    return loaded


def _d4rl_schema(loaded: list[tuple[Path, dict[str, np.ndarray]]]) -> BatchSchema:
    """Observations a float Box; actions Discrete (one integer per row, up to the largest in any
    file) or a float Box, shaped as the first file's."""
    first = loaded[0][1]
    discrete = first["actions"].ndim == 1 and first["actions"].dtype.kind in "iu"
    action_space = (
        gym.spaces.Discrete(int(max(d["actions"].max() for _, d in loaded)) + 1)
        if discrete
        else gym.spaces.Box(-np.inf, np.inf, first["actions"].shape[1:], np.float32)
    )
    observation_space = gym.spaces.Box(-np.inf, np.inf, first["observations"].shape[1:], np.float32)
    return BatchSchema.for_spaces(observation_space, action_space)


def _d4rl_rows(data: dict[str, np.ndarray], episode_base: int, action_dtype: np.dtype) -> dict[str, np.ndarray]:
    """One file's transitions as rows, its episodes numbered from `episode_base`."""
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
    return {
        "obs": obs,
        "next_obs": np.asarray(next_obs, np.float32),
        "action": data["actions"].astype(action_dtype),
        "reward": data["rewards"].astype(np.float32),
        "terminated": terminals,
        "truncated": timeouts,
        "episode_id": episode.astype(np.int64),
        "step": step.astype(np.int64),
        "collector_id": np.zeros(count, np.int64),
        "policy_version": np.zeros(count, np.int64),
        "timestamp": np.zeros(count, "datetime64[ns]"),
    }
