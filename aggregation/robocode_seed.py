"""The Robocode teams' own formats: per-collector JSON game states and the aggregated NPZ.

JSON (`expert_game_states_<collector>_<timestamp>.json`): a list with one entry per turn,
`{"turn", "round", "bot_states": [{"name", "x", "y", "direction", "gunDirection",
"radarDirection", "speed", "gunHeat", "energy", "state", "boxX", "boxY"}], "bullet_states":
[{"id", "owner", "x", "y", "direction", "power", "state"}]}` (degrees, as in Robocode's API).
Each round starts with a turn-0 entry (the robots as placed, before anyone moved), and
`boxX`/`boxY` are the corner of the engine's bounding box (it stays behind after a ram, and
the radar scans the box): with both, importing a file gives exactly the rows the collector
pushed. Files without them (older recordings) still import, with the first turn's and
post-ram sightings approximated.

NPZ (`aggregated_expert_data.npz`): `observations` (N, 8), `actions` (N, 5) and `metadata`, a
JSON string with `total_steps`, `num_collectors` and `description`; it loads with
`allow_pickle=False`.

The importer reads such JSON files into the same transitions Harvest collects; a malformed
file is reported with its path and entry and skipped, the others are still imported.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from harvest.aggregation.storage import Location, location
from harvest.envs.robocode.transitions import STATE_FIELDS, RobotRound, round_transitions, split_rounds

NPZ_NAME = "_aggregated_expert_data.npz"
BOT_KEYS = ("x", "y", "direction", "gunDirection", "radarDirection", "speed", "gunHeat", "energy")


class SeedFormatError(ValueError):
    """A game-state JSON file that does not have the seed layout."""


def to_seed_states(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turn messages of the runner → seed-layout entries (round numbers from 1, as the seeds count)."""
    states = []
    for message in messages:
        if message.get("t") not in ("round_start", "turn"):
            continue
        states.append({
            "turn": message["turn"], "round": message["round"] + 1,
            "bot_states": [{"name": robot["name"], "x": robot["x"], "y": robot["y"],
                            "direction": math.degrees(robot["heading"]),
                            "gunDirection": math.degrees(robot["gun_heading"]),
                            "radarDirection": math.degrees(robot["radar_heading"]), "speed": robot["velocity"],
                            "gunHeat": robot["gun_heat"], "energy": robot["energy"], "state": robot["state"],
                            **({"boxX": robot["box_x"], "boxY": robot["box_y"]} if "box_x" in robot else {})}
                           for robot in message["robots"]],
            "bullet_states": [{"id": bullet["id"], "owner": bullet["owner"], "x": bullet["x"], "y": bullet["y"],
                               "direction": math.degrees(bullet["heading"]), "power": bullet["power"],
                               "state": bullet["state"]} for bullet in message["bullets"]],
        })
    return states


def write_seed_json(messages: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_seed_states(messages)))
    return path


def _from_seed_entry(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict) or not isinstance(entry.get("bot_states"), list):
        raise SeedFormatError(f"{where}: expected an object with 'turn', 'round' and a 'bot_states' list")
    robots = []
    for index, bot in enumerate(entry["bot_states"]):
        missing = [key for key in BOT_KEYS if not isinstance(bot, dict) or not isinstance(bot.get(key), (int, float))]
        if missing:
            raise SeedFormatError(f"{where}, bot_states[{index}]: missing or non-numeric {missing}")
        robots.append({"name": str(bot.get("name", f"robot{index}")), "x": bot["x"], "y": bot["y"],
                       "heading": math.radians(bot["direction"]), "gun_heading": math.radians(bot["gunDirection"]),
                       "radar_heading": math.radians(bot["radarDirection"]), "velocity": bot["speed"],
                       "gun_heat": bot["gunHeat"], "energy": bot["energy"],
                       "state": bot.get("state", "ACTIVE" if bot["energy"] > 0 else "DEAD"),
                       **({"box_x": bot["boxX"], "box_y": bot["boxY"]} if "boxX" in bot else {})})
    bullets = [{"id": bullet["id"], "owner": bullet["owner"], "power": bullet["power"],
                "state": bullet.get("state", "MOVING")} for bullet in entry.get("bullet_states", [])
               if isinstance(bullet, dict) and {"id", "owner", "power"} <= set(bullet)]
    for index, bullet in enumerate(bullets):
        if not (isinstance(bullet["id"], int) and isinstance(bullet["owner"], int)
                and 0 <= bullet["owner"] < len(robots) and isinstance(bullet["power"], (int, float))):
            raise SeedFormatError(f"{where}, bullet_states[{index}]: id {bullet['id']!r}, owner {bullet['owner']!r}, "
                                  f"power {bullet['power']!r}; expected an integer id, the owner's index in bot_states "
                                  f"(0 to {len(robots) - 1}) and a numeric power")
    try:
        turn, round_number = int(entry["turn"]), int(entry["round"]) - 1
    except (KeyError, TypeError, ValueError) as err:
        raise SeedFormatError(f"{where}: 'turn' and 'round' must be integers ({err})") from err
    return {"t": "round_start" if turn == 0 else "turn", "turn": turn, "round": round_number, "robots": robots,
            "bullets": bullets}


@dataclass
class SeedImport:
    """What an import read: every robot-round of the good files, and one message per bad file."""

    rounds: list[RobotRound] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def read_seed_file(path: Path) -> list[dict[str, Any]]:
    """The runner-style turn messages of one seed-layout JSON file.

    Raises:
        SeedFormatError: not JSON, not a list, or an entry without the seed layout (named).
    """
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SeedFormatError(f"{path}: not JSON ({err})") from err
    if not isinstance(entries, list) or not entries:
        raise SeedFormatError(f"{path}: expected a JSON list of turn entries, got "
                              f"{'an empty list' if entries == [] else type(entries).__name__}")
    messages = [_from_seed_entry(entry, f"{path}, entry {index}") for index, entry in enumerate(entries)]
    first_of_round: dict[int, int] = {}
    for index, message in enumerate(messages):
        first = first_of_round.setdefault(message["round"], index)
        names = [robot["name"] for robot in message["robots"]]
        first_names = [robot["name"] for robot in messages[first]["robots"]]
        if names != first_names:
            raise SeedFormatError(f"{path}, entry {index}: robots {names}; entry {first} of the same round has "
                                  f"{first_names} (a round keeps its robots, dead ones included)")
    return messages


def import_seed_files(paths: list[str | Path]) -> SeedImport:
    """Transitions from seed-layout JSON files; a bad file is named in `errors` and skipped."""
    result = SeedImport()
    for path in sorted(Path(p) for p in paths):
        try:
            messages = read_seed_file(path)
        except SeedFormatError as err:
            result.errors.append(str(err))
            continue
        for turns in split_rounds(messages).values():
            result.rounds.extend(round_transitions(turns))
        result.files.append(str(path))
    return result


def write_aggregated_npz(rounds: list[RobotRound], path: str | Path | Location, num_collectors: int,
                         description: str) -> Location:
    """`observations` (N, 8), `actions` (N, 5) and JSON `metadata`, loadable with allow_pickle=False."""
    observations = np.concatenate([part.obs for part in rounds]) if rounds else np.zeros((0, 8), np.float32)
    actions = np.concatenate([part.action for part in rounds]) if rounds else np.zeros((0, 5), np.float32)
    return _save_npz(observations, actions, path, num_collectors, description)


def write_dataset_npz(dataset_dir: str | Path | Location, path: str | Path | Location | None = None,
                      description: str | None = None) -> Location:
    """`aggregated_expert_data.npz` of a compacted Robocode dataset (default: `_aggregated_expert_data.npz`
    inside its folder),
    rows in the dataset's order (episode by episode)."""
    from harvest.aggregation.dataset import Dataset

    dataset = Dataset.open(dataset_dir)
    for name, width in (("obs", 8), ("action", 5)):
        shape = dataset.schema.columns[name].shape if name in dataset.schema.columns else None
        if shape is None or len(shape) != 1 or shape[0] < width:
            raise ValueError(f"{dataset.folder}: column {name!r} has shape {shape}; a Robocode dataset has at "
                             f"least {width} values per row")
    columns = dataset.read_columns(["obs", "action"])
    description = description or (f"{dataset.manifest.rows} Robocode transitions of run "
                                  f"{dataset.manifest.run_id} ({dataset.manifest.env_id})")
    return _save_npz(columns["obs"], columns["action"], path or dataset.folder.join(NPZ_NAME),
                     len(dataset.manifest.collectors), description)


def _save_npz(observations: np.ndarray, actions: np.ndarray, path: str | Path | Location, num_collectors: int,
              description: str) -> Location:
    observations = np.ascontiguousarray(observations[:, :len(STATE_FIELDS)], np.float32)  # the seeds' 8 values
    actions = np.ascontiguousarray(actions, np.float32)
    metadata = {"total_steps": int(len(observations)), "num_collectors": num_collectors, "description": description}
    buffer = io.BytesIO()
    np.savez(buffer, observations=observations, actions=actions, metadata=np.array(json.dumps(metadata)))
    target = location(path)
    target.write_bytes(pa.py_buffer(buffer.getbuffer()))
    return target
