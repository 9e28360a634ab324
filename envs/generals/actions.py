"""The flat discrete action space of a Generals.io player on an H×W board.

Index `((row * W + col) * 4 + direction) * 2 + split` moves from (row, col) in `direction`
(0 up, 1 down, 2 left, 3 right), carrying half the army when `split` is 1 and all but one
otherwise; the last index, `H * W * 8`, passes. So `num_actions = H * W * 8 + 1`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Moves(NamedTuple):
    """Decoded actions: each field an int64 array shaped like the flat actions."""

    passes: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    directions: np.ndarray
    splits: np.ndarray


def num_actions(height: int, width: int) -> int:
    return height * width * 8 + 1


def pass_action(height: int, width: int) -> int:
    return height * width * 8


def encode(rows, cols, directions, splits, height: int, width: int) -> np.ndarray:
    """Flat indices of the moves (row, col, direction, split)."""
    rows, cols, directions, splits = (np.asarray(a, np.int64) for a in (rows, cols, directions, splits))
    return ((rows * width + cols) * 4 + directions) * 2 + splits


def decode(actions, height: int, width: int) -> Moves:
    """(pass, row, col, direction, split) of flat actions.

    Raises:
        ValueError: an index outside [0, num_actions), naming the first one.
    """
    actions = np.asarray(actions, np.int64)
    bad = (actions < 0) | (actions > pass_action(height, width))
    if bad.any():
        raise ValueError(
            f"generals action {int(actions[bad].flat[0])}: expected 0 <= action <= "
            f"{pass_action(height, width)} on a {height}x{width} board"
        )
    passes = actions == pass_action(height, width)
    move = np.where(passes, 0, actions)
    splits, move = move % 2, move // 2
    directions, tile = move % 4, move // 4
    return Moves(passes.astype(np.int64), tile // width, tile % width, directions, splits)


def action_mask(legal_moves: np.ndarray) -> np.ndarray:
    """[..., H*W*8 + 1] int8 from legal moves [..., H, W, 4]: both split choices of a legal move, and pass."""
    lead = legal_moves.shape[:-3]
    num_moves = int(np.prod(legal_moves.shape[-3:]))
    # Each legal flag becomes two equal bytes at once: as uint16, 1 * 0x0101 is bytes (1, 1) in
    # either byte order (7x faster than a broadcast assignment into the interleaved slots).
    pairs = np.ascontiguousarray(legal_moves).reshape(*lead, num_moves).view(np.uint8).astype(np.uint16)
    pairs *= np.uint16(0x0101)
    mask = np.empty((*lead, num_moves * 2 + 1), np.int8)
    mask[..., :-1] = pairs.view(np.int8)
    mask[..., -1] = 1
    return mask
