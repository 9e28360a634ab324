"""Quality checks on a person's episodes, as the driving recorder's users ran them by hand
(seed 002): dropped frames, timestamp gaps, actions outside their range, jerky control, idle
stretches and episodes too short to learn from.

`EpisodeTrace` collects what the checks need while the episode is played (timestamps, actions,
late frames, speed when the env reports it: no images), and `check_episode` turns it into
findings with a severity; a session's summary shows them per episode, and episodes with an
error can be left out of the dataset (`human.discard`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np


@dataclass(frozen=True)
class QualityThresholds:
    late_warning: float = 0.05
    """Share of frames that came late (over 1.5x the frame period) that warns; 4x it is an error."""
    gap_s: float = 1.0
    """A pause between two frames' timestamps this long (or 5 frame periods, if longer) is a gap."""
    jerk_fraction: float = 0.25
    """Share of frames whose action jumps by over half its range that warns (keyboard steering
    taps between left and right through the middle, so a direct flip is the jerk)."""
    idle_s: float = 3.0
    """A stretch this long without any control held (and the car standing, when speed is known)."""
    min_frames: int = 50


@dataclass
class QualityFinding:
    check: str
    severity: str
    """`error` (the episode is suspect; `human.discard: errors` leaves it out) or `warning`."""
    message: str


@dataclass
class EpisodeTrace:
    """What the quality checks read from one episode, gathered frame by frame."""

    episode_id: int
    number: int
    timestamps_ns: list[int] = field(default_factory=list)
    actions: list[Any] = field(default_factory=list)
    late: list[bool] = field(default_factory=list)
    speeds: list[float] = field(default_factory=list)

    def add(self, timestamp_ns: int, action: Any, late: bool, speed: float | None) -> None:
        self.timestamps_ns.append(timestamp_ns)
        self.actions.append(np.asarray(action))
        self.late.append(late)
        if speed is not None:
            self.speeds.append(speed)


def _stretches(mask: np.ndarray) -> list[int]:
    """Lengths of the runs of True in `mask`."""
    padded = np.r_[False, mask, False].astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return (edges[1::2] - edges[::2]).tolist()


def check_episode(
    trace: EpisodeTrace,
    action_space: gym.Space,
    fps: float,
    lockstep: bool,
    thresholds: QualityThresholds = QualityThresholds(),
) -> list[QualityFinding]:
    """The findings on one episode (none when it is clean)."""
    findings: list[QualityFinding] = []
    frames = len(trace.actions)
    if frames < thresholds.min_frames:
        findings.append(QualityFinding("short", "warning", f"{frames} frames (under {thresholds.min_frames})"))
    if frames == 0:
        return findings
    if not lockstep:  # frame pacing only means something by the clock
        late = float(np.mean(trace.late))
        if late > thresholds.late_warning:
            findings.append(
                QualityFinding(
                    "dropped_frames",
                    "error" if late > 4 * thresholds.late_warning else "warning",
                    f"{late:.0%} of frames came late (over 1.5x the {1000 / fps:.0f} ms period)",
                )
            )
        seconds = np.diff(np.asarray(trace.timestamps_ns, np.int64)) / 1e9
        gap = max(thresholds.gap_s, 5 / fps)
        if (seconds > gap).any():
            findings.append(
                QualityFinding(
                    "timestamp_gaps",
                    "warning",
                    f"{int((seconds > gap).sum())} gaps over {gap:.1f}s between frames (longest {seconds.max():.1f}s)",
                )
            )
    actions = np.stack(trace.actions)
    outside = np.array([not action_space.contains(_as_space_value(a, action_space)) for a in trace.actions])
    if outside.any():
        findings.append(QualityFinding("action_range", "error", f"{int(outside.sum())} actions outside {action_space}"))
    if isinstance(action_space, gym.spaces.Box):
        spread = np.where(np.isfinite(action_space.high - action_space.low), action_space.high - action_space.low, 1.0)
        jumps = (np.abs(np.diff(actions.reshape(frames, -1), axis=0)) > 0.5 * spread.reshape(-1)).any(-1)
        neutral = np.all(actions.reshape(frames, -1) == np.clip(0, action_space.low, action_space.high).reshape(-1), -1)
    else:
        jumps = np.diff(actions.reshape(frames)) != 0
        neutral = np.zeros(frames, bool)
    if frames > 1 and jumps.mean() > thresholds.jerk_fraction:
        findings.append(
            QualityFinding(
                "jerky", "warning", f"the action jumps by over half its range on {jumps.mean():.0%} of frames"
            )
        )
    idle = neutral & (np.asarray(trace.speeds) < 1.0) if len(trace.speeds) == frames else neutral
    longest = max(_stretches(idle), default=0)
    if longest >= thresholds.idle_s * fps:
        findings.append(
            QualityFinding(
                "idle",
                "warning",
                f"{longest / fps:.1f}s without any control"
                + (" while standing" if len(trace.speeds) == frames else ""),
            )
        )
    return findings


def _as_space_value(action: np.ndarray, space: gym.Space) -> Any:
    return int(action) if isinstance(space, gym.spaces.Discrete) else action.astype(space.dtype)


def episode_report(trace: EpisodeTrace, findings: list[QualityFinding], episode_return: float) -> dict[str, Any]:
    return {
        "episode_id": trace.episode_id,
        "number": trace.number,
        "frames": len(trace.actions),
        "return": episode_return,
        "findings": [asdict(finding) for finding in findings],
        "errors": sum(finding.severity == "error" for finding in findings),
    }
