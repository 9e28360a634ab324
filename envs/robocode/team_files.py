"""The Robocode teams' game-state JSON files (`expert_game_states_<collector>_<timestamp>.json`).

A list with one entry per turn, `{"turn", "round", "bot_states": [{"name", "x", "y", "direction",
"gunDirection", "radarDirection", "speed", "gunHeat", "energy", "state", "boxX", "boxY"}],
"bullet_states": [{"id", "owner", "x", "y", "direction", "power", "state"}]}` (degrees, as in
Robocode's API). Each round starts with a turn-0 entry (the robots as placed, before anyone
moved), and `boxX`/`boxY` are the corner of the engine's bounding box (it stays behind after a
ram, and the radar scans the box): with both, importing a file gives exactly the rows the
collector pushed. Files without them (older recordings) still import, with the first turn's and
post-ram sightings approximated.

`write_team_json` writes the host's turn messages in this layout; `read_team_file` reads a file
back into the same messages, naming the file and entry of anything malformed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

BOT_KEYS = ("x", "y", "direction", "gunDirection", "radarDirection", "speed", "gunHeat", "energy")


class TeamFileError(ValueError):
    """A game-state JSON file that does not have the teams' layout."""


def to_team_states(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turn messages of the runner → team-file entries (round numbers from 1, as the teams' files count)."""
    states = []
    for message in messages:
        if message.get("t") not in ("round_start", "turn"):
            continue
        states.append(
            {
                "turn": message["turn"],
                "round": message["round"] + 1,
                "bot_states": [
                    {
                        "name": robot["name"],
                        "x": robot["x"],
                        "y": robot["y"],
                        "direction": math.degrees(robot["heading"]),
                        "gunDirection": math.degrees(robot["gun_heading"]),
                        "radarDirection": math.degrees(robot["radar_heading"]),
                        "speed": robot["velocity"],
                        "gunHeat": robot["gun_heat"],
                        "energy": robot["energy"],
                        "state": robot["state"],
                        **({"boxX": robot["box_x"], "boxY": robot["box_y"]} if "box_x" in robot else {}),
                    }
                    for robot in message["robots"]
                ],
                "bullet_states": [
                    {
                        "id": bullet["id"],
                        "owner": bullet["owner"],
                        "x": bullet["x"],
                        "y": bullet["y"],
                        "direction": math.degrees(bullet["heading"]),
                        "power": bullet["power"],
                        "state": bullet["state"],
                    }
                    for bullet in message["bullets"]
                ],
            }
        )
    return states


def write_team_json(messages: list[dict[str, Any]], path: str | Path) -> Path:
    """The host's turn `messages` as one team file at `path` (its folder made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_team_states(messages)))
    return path


def _from_team_entry(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict) or not isinstance(entry.get("bot_states"), list):
        raise TeamFileError(f"{where}: expected an object with 'turn', 'round' and a 'bot_states' list")
    robots = []
    for index, bot in enumerate(entry["bot_states"]):
        missing = [key for key in BOT_KEYS if not isinstance(bot, dict) or not isinstance(bot.get(key), (int, float))]
        if missing:
            raise TeamFileError(f"{where}, bot_states[{index}]: missing or non-numeric {missing}")
        robots.append(
            {
                "name": str(bot.get("name", f"robot{index}")),
                "x": bot["x"],
                "y": bot["y"],
                "heading": math.radians(bot["direction"]),
                "gun_heading": math.radians(bot["gunDirection"]),
                "radar_heading": math.radians(bot["radarDirection"]),
                "velocity": bot["speed"],
                "gun_heat": bot["gunHeat"],
                "energy": bot["energy"],
                "state": bot.get("state", "ACTIVE" if bot["energy"] > 0 else "DEAD"),
                **({"box_x": bot["boxX"], "box_y": bot["boxY"]} if "boxX" in bot else {}),
            }
        )
    bullets = [
        {"id": bullet["id"], "owner": bullet["owner"], "power": bullet["power"], "state": bullet.get("state", "MOVING")}
        for bullet in entry.get("bullet_states", [])
        if isinstance(bullet, dict) and {"id", "owner", "power"} <= set(bullet)
    ]
    for index, bullet in enumerate(bullets):
        if not (
            isinstance(bullet["id"], int)
            and isinstance(bullet["owner"], int)
            and 0 <= bullet["owner"] < len(robots)
            and isinstance(bullet["power"], (int, float))
        ):
            raise TeamFileError(
                f"{where}, bullet_states[{index}]: id {bullet['id']!r}, owner {bullet['owner']!r}, "
                f"power {bullet['power']!r}; expected an integer id, the owner's index in bot_states "
                f"(0 to {len(robots) - 1}) and a numeric power"
            )
    try:
        turn, round_number = int(entry["turn"]), int(entry["round"]) - 1
    except (KeyError, TypeError, ValueError) as err:
        raise TeamFileError(f"{where}: 'turn' and 'round' must be integers ({err})") from err
    return {
        "t": "round_start" if turn == 0 else "turn",
        "turn": turn,
        "round": round_number,
        "robots": robots,
        "bullets": bullets,
    }


def read_team_file(path: Path) -> list[dict[str, Any]]:
    """The runner-style turn messages of one team-file JSON file.

    Raises:
        TeamFileError: not JSON, not a list, or an entry without the teams' layout (named).
    """
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TeamFileError(f"{path}: not JSON ({err})") from err
    if not isinstance(entries, list) or not entries:
        raise TeamFileError(
            f"{path}: expected a JSON list of turn entries, got "
            f"{'an empty list' if entries == [] else type(entries).__name__}"
        )
    messages = [_from_team_entry(entry, f"{path}, entry {index}") for index, entry in enumerate(entries)]
    first_of_round: dict[int, int] = {}
    for index, message in enumerate(messages):
        first = first_of_round.setdefault(message["round"], index)
        names = [robot["name"] for robot in message["robots"]]
        first_names = [robot["name"] for robot in messages[first]["robots"]]
        if names != first_names:
            raise TeamFileError(
                f"{path}, entry {index}: robots {names}; entry {first} of the same round has "
                f"{first_names} (a round keeps its robots, dead ones included)"
            )
    return messages
