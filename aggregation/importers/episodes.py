"""A recorded episode's frames as transition rows (driving sessions, JSON sequences)."""

from __future__ import annotations

import numpy as np


def episode_rows(
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


def seconds_to_ns(seconds: np.ndarray) -> np.ndarray:
    """Unix seconds (float) as datetime64[ns], rounded to the microsecond (a float64 of ~1.7e9 s
    cannot hold nanoseconds)."""
    return (np.round(np.asarray(seconds, np.float64) * 1e6).astype(np.int64) * 1000).astype("datetime64[ns]")
