"""The Robocode teams' aggregated NPZ (`_aggregated_expert_data.npz`) and team files read in bulk.

NPZ: `observations` (N, 8), `actions` (N, 5) and `metadata`, a JSON string with `total_steps`,
`num_collectors` and `description`; it loads with `allow_pickle=False`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from harvest.aggregation.storage import Location, location
from harvest.envs.robocode.team_files import TeamFileError, read_team_file
from harvest.envs.robocode.transitions import STATE_FIELDS, RobotRound, round_transitions, split_rounds

NPZ_NAME = "_aggregated_expert_data.npz"


@dataclass
class TeamFileImport:
    """What an import read: every robot-round of the good files, and one message per bad file."""

    rounds: list[RobotRound] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def import_team_files(paths: list[str | Path]) -> TeamFileImport:
    """Transitions from team-file JSON files; a bad file is named in `errors` and skipped."""
    result = TeamFileImport()
    for path in sorted(Path(p) for p in paths):
        try:
            messages = read_team_file(path)
        except TeamFileError as err:
            result.errors.append(str(err))
            continue
        for turns in split_rounds(messages).values():
            result.rounds.extend(round_transitions(turns))
        result.files.append(str(path))
    return result


def write_aggregated_npz(
    rounds: list[RobotRound], path: str | Path | Location, num_collectors: int, description: str
) -> Location:
    """`observations` (N, 8), `actions` (N, 5) and JSON `metadata`, loadable with allow_pickle=False."""
    observations = np.concatenate([part.obs for part in rounds]) if rounds else np.zeros((0, 8), np.float32)
    actions = np.concatenate([part.action for part in rounds]) if rounds else np.zeros((0, 5), np.float32)
    return _save_npz(observations, actions, path, num_collectors, description)


def write_dataset_npz(
    dataset_dir: str | Path | Location, path: str | Path | Location | None = None, description: str | None = None
) -> Location:
    """`aggregated_expert_data.npz` of a compacted Robocode dataset (default: `_aggregated_expert_data.npz`
    inside its folder),
    rows in the dataset's order (episode by episode)."""
    from harvest.aggregation.dataset import Dataset

    dataset = Dataset.open(dataset_dir)
    for name, width in (("obs", 8), ("action", 5)):
        shape = dataset.schema.columns[name].shape if name in dataset.schema.columns else None
        if shape is None or len(shape) != 1 or shape[0] < width:
            raise ValueError(
                f"{dataset.folder}: column {name!r} has shape {shape}; a Robocode dataset has at "
                f"least {width} values per row"
            )
    columns = dataset.read_columns(["obs", "action"])
    description = description or (
        f"{dataset.manifest.rows} Robocode transitions of run {dataset.manifest.run_id} ({dataset.manifest.env_id})"
    )
    return _save_npz(
        columns["obs"],
        columns["action"],
        path or dataset.folder.join(NPZ_NAME),
        len(dataset.manifest.collectors),
        description,
    )


def _save_npz(
    observations: np.ndarray, actions: np.ndarray, path: str | Path | Location, num_collectors: int, description: str
) -> Location:
    observations = np.ascontiguousarray(observations[:, : len(STATE_FIELDS)], np.float32)  # the teams' 8 values
    actions = np.ascontiguousarray(actions, np.float32)
    metadata = {"total_steps": int(len(observations)), "num_collectors": num_collectors, "description": description}
    buffer = io.BytesIO()
    np.savez(buffer, observations=observations, actions=actions, metadata=np.array(json.dumps(metadata)))
    target = location(path)
    target.write_bytes(pa.py_buffer(buffer.getbuffer()))
    return target
