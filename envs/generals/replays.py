"""Game records: the map and both players' actions, enough to replay a game exactly.

The engine is deterministic, so a record of a few kilobytes (JSON) replays to every frame of
the game; `GeneralsVectorEnv(record_dir=...)` writes one per finished game, and
`harvest generals-gif` turns a record (or a live game) into an animated GIF.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from harvest.envs.generals.actions import decode
from harvest.envs.generals.engine import GeneralsEngine
from harvest.envs.generals.maps import parse_map
from harvest.envs.generals.render import render_game


class RecordError(ValueError):
    """A game record file that cannot be read or replayed."""


@dataclass
class GameRecord:
    """One game: its id, board size, map (text format of `envs.generals.maps`), the flat actions
    of player 0 and player 1 at every step, and the winner (-1: none, truncated)."""

    game_id: int
    size: int
    map: str
    actions: list[list[int]]
    winner: int

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / f"game-{self.game_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "GameRecord":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            return cls(
                int(data["game_id"]),
                int(data["size"]),
                str(data["map"]),
                [[int(a), int(b)] for a, b in data["actions"]],
                int(data["winner"]),
            )
        except FileNotFoundError as err:
            raise RecordError(f"{path}: no such game record") from err
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise RecordError(
                f"{path}: not a Generals game record (expected JSON with game_id, size, map, actions, winner): {err}"
            ) from err


def replay_frames(record: GameRecord, cell_px: int = 24) -> Iterator[np.ndarray]:
    """RGB frames of the recorded game: the start, then one per step.

    Raises:
        RecordError: the replay ends with another winner than the record names.
    """
    engine = GeneralsEngine(1, record.size, record.size)
    engine.load(np.zeros(1, np.int64), [parse_map(record.map)])
    yield render_game(engine, 0, cell_px)
    for actions in record.actions:
        engine.step(*(field.reshape(1, 2) for field in decode(np.array(actions), record.size, record.size)))
        yield render_game(engine, 0, cell_px)
    if int(engine.winner[0]) != record.winner:
        raise RecordError(
            f"game {record.game_id}: the replay ends with winner {int(engine.winner[0])}, "
            f"the record says {record.winner}"
        )
