"""A person reviews an agent's play frame by frame and labels better actions (DAgger's critic).

The review window shows one frame of the agent's play at a time (the observation's image, or
its numbers as text), with the action the agent took. The reviewer holds the controls of the
action they would have taken (the session's key map) and presses `label_key` (Return) to
record it, `skip_key` (Space) when the agent was right, `back_key` (Backspace) to return to
the previous frame (its label is dropped), and the end key (ESC) to stop: every label so far
is kept. Labels are returned by frame index; the caller turns them into corrections.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from harvest.rollout.human.config import HumanConfig
from harvest.rollout.human.keymap import KeyMap
from harvest.rollout.human.window import TeleopWindow, open_display


@dataclass
class ReviewResult:
    labels: dict[int, np.ndarray | int]
    """Frame index -> the reviewer's action (only frames they labelled)."""
    skipped: int
    reviewed: int
    """Frames the reviewer got to (labelled or skipped) before the end."""
    ended_early: bool


def _frame_picture(obs: np.ndarray | None, size: tuple[int, int]) -> np.ndarray:
    if obs is not None and obs.ndim >= 3:
        return np.asarray(obs[-1] if obs.ndim == 4 else obs, np.uint8)  # stacked frames: the newest
    return np.zeros((size[1], size[0], 3), np.uint8)


def review_frames(
    observations: np.ndarray,
    agent_actions: np.ndarray,
    action_space: gym.Space,
    cfg: HumanConfig,
    label_key: str = "return",
    skip_key: str = "space",
    back_key: str = "backspace",
    timeout_s: float = 3600.0,
) -> ReviewResult:
    """Blocks: the reviewer steps through the frames; their labels."""
    window_size = (cfg.window_size[0], cfg.window_size[1])  # (width, height): the config holds two
    display, xvfb = open_display(cfg.display, window_size)
    keymap = KeyMap(cfg, action_space)
    window = TeleopWindow(
        window_size,
        f"Harvest review - {cfg.operator}",
        cfg.reset_key,
        cfg.end_key,
        cfg.pause_key,
        cfg.advance_key,
        gamepad=False,
    )
    labels: dict[int, np.ndarray | int] = {}
    skipped: set[int] = set()
    index, total, ended = 0, len(agent_actions), False
    try:
        while index < total:
            obs = observations[index] if observations is not None else None
            status = [
                f"frame {index + 1}/{total}  agent: {np.round(np.asarray(agent_actions[index]), 2).tolist()}",
                f"hold your action + {label_key.upper()} | {skip_key.upper()} agent was right | "
                f"{back_key.upper()} back | {cfg.end_key.upper()} done",
            ]
            if obs is not None and np.asarray(obs).ndim < 3:
                status.append(f"obs {np.round(np.asarray(obs, np.float64), 3).tolist()}")
            window.show(_frame_picture(None if obs is None else np.asarray(obs), window.size), status)
            key, received = window.wait_for({label_key, skip_key, back_key}, timeout_s)
            if key is None:
                ended = True
                break
            if key == back_key:
                index = max(0, index - 1)
                labels.pop(index, None)
                skipped.discard(index)
                continue
            if key == label_key:
                labels[index] = keymap.action(keymap.controls_of(received.held_keys))
            else:
                skipped.add(index)
            index += 1
    finally:
        window.close()
        if xvfb is not None:
            xvfb.stop()
    return ReviewResult(labels, len(skipped), len(labels) + len(skipped), ended)
