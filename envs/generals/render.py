"""RGB frames of a Generals.io game as a spectator sees it (no fog), and animated GIFs of them."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw

from harvest.envs.generals.engine import NEUTRAL, GeneralsEngine

CELL_PX = 24
PLAYER_COLOURS = np.array([(220, 70, 70), (60, 110, 225)], np.uint8)
PLAIN, MOUNTAIN, NEUTRAL_CITY, OFF_MAP = (225, 225, 225), (95, 95, 95), (150, 150, 150), (20, 20, 20)
GENERAL_MARK = (250, 210, 40)


def render_game(engine: GeneralsEngine, game: int, cell_px: int = CELL_PX) -> np.ndarray:
    """[H * cell_px, W * cell_px, 3] uint8: owners' colours, mountains, cities (a dark frame),
    generals (a gold frame) and army counts."""
    owner, armies = engine.owner[game], engine.armies[game]
    colours = np.empty((*owner.shape, 3), np.uint8)
    colours[:] = PLAIN
    colours[engine.city[game] & (owner == NEUTRAL)] = NEUTRAL_CITY
    colours[engine.mountain[game]] = MOUNTAIN
    colours[~engine.inside[game]] = OFF_MAP
    for player in (0, 1):
        colours[owner == player] = PLAYER_COLOURS[player]
    image = Image.fromarray(np.repeat(np.repeat(colours, cell_px, 0), cell_px, 1))
    draw = ImageDraw.Draw(image)
    for row, col in np.argwhere(engine.city[game] | engine.general[game]):
        frame = GENERAL_MARK if engine.general[game, row, col] else (40, 40, 40)
        box = (col * cell_px + 1, row * cell_px + 1, (col + 1) * cell_px - 2, (row + 1) * cell_px - 2)
        draw.rectangle(box, outline=frame, width=2)
    for row, col in np.argwhere(armies > 0):
        text = str(int(armies[row, col]))
        draw.text((col * cell_px + cell_px / 2, row * cell_px + cell_px / 2), text, fill=(0, 0, 0), anchor="mm")
    return np.asarray(image)


def write_gif(frames: Iterable[np.ndarray], path: str | Path, fps: float = 6.0) -> Path:
    """Write RGB frames as an animated GIF; returns the path.

    Raises:
        ValueError: no frames.
    """
    images = [Image.fromarray(frame) for frame in frames]
    if not images:
        raise ValueError(f"{path}: no frames to write")
    path = Path(path)
    frame_ms = max(1, round(100 / fps)) * 10  # GIF stores centiseconds
    images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    return path
