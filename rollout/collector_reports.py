"""What a collector reports to the driver: `Activity`, what it is doing now, and
`CollectResult`, what one `collect` call did."""

from __future__ import annotations

from dataclasses import dataclass

from harvest.rollout.cutter import FinishedEpisode


@dataclass(frozen=True)
class Activity:
    """What an actor is doing (`env.step`, `replay.insert (ack)`, `idle`, ...) since `since` (epoch s)."""

    what: str
    since: float


@dataclass(frozen=True)
class CollectResult:
    collector_id: int
    rows: int
    """Rows acknowledged by the replay."""
    env_steps: int
    episodes: list[FinishedEpisode]
    seconds: float
    push_wait_seconds: float
    peak_local_bytes: int = 0
    """Most bytes this collector held at once (cut rows, trajectories waiting for their end, buffer)."""
    filtered: dict | None = None
    """`mode: trajectory`: episodes and rows seen and kept, and why the others were dropped."""
    source: str = ""
    """The source its pushes carried (`collector 3`, `collector 3 #1` after a restart)."""

    @property
    def episode_count(self) -> int:
        return len(self.episodes)

    @property
    def episode_returns(self) -> list[float]:
        return [episode.episode_return for episode in self.episodes]

    def details(self) -> str:
        """What the per-collector log line adds: memory held, and a trajectory filter's report."""
        text = f"at most {self.peak_local_bytes / 2**20:.1f} MB held locally"
        if self.filtered is not None:
            text += (
                f"; kept {self.filtered['kept_episodes']} of {self.filtered['episodes']} finished episodes, "
                f"dropped {self.filtered['dropped'] or 'none'}"
            )
        return text
