"""Episode filters: which whole episodes a collection, a compaction or an edit keeps.

Every criterion looks at whole episodes (rows are never dropped one by one, so what is kept
is still a set of complete episodes): return, length, how the episode ended, the ids its
rows carry (`game_id`, `player_id`, `collector_id`, `source` where the dataset has them), the
time of its first step, and repeats (`dedupe`: an episode whose observations and actions are
byte-for-byte those of an earlier one).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from harvest.rollout.config import EpisodeFilter

__all__ = [
    "EpisodeFilter",
    "FilterReport",
    "filter_table",
    "keep_mask",
    "episode_summary",
    "episode_hashes",
    "episode_runs",
]

ID_COLUMNS = ("game_id", "player_id", "collector_id", "source")


def episode_runs(ids: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of equal consecutive episode ids."""
    if ids.size == 0:
        return []
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return list(zip(starts.tolist(), np.r_[starts[1:], ids.size].tolist()))


@dataclass
class FilterReport:
    """What a filter kept and why it dropped the rest (episodes per reason; an episode failing
    several criteria counts under the first)."""

    episodes: int = 0
    kept_episodes: int = 0
    rows: int = 0
    kept_rows: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def merge(self, other: "FilterReport") -> "FilterReport":
        dropped = dict(self.dropped)
        for reason, count in other.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
        return FilterReport(
            self.episodes + other.episodes,
            self.kept_episodes + other.kept_episodes,
            self.rows + other.rows,
            self.kept_rows + other.kept_rows,
            dropped,
        )


def needed_columns(criteria: EpisodeFilter, available: list[str]) -> list[str]:
    """The columns `episode_summary` reads for these criteria (checked against `available`)."""
    columns = ["episode_id", "reward", "terminated", "truncated", "timestamp"]
    for name, values in (
        ("game_id", criteria.game_ids),
        ("player_id", criteria.player_ids),
        ("collector_id", criteria.collector_ids),
        ("source", criteria.sources),
    ):
        if values:
            if name not in available:
                raise ValueError(f"filter on {name}s: the dataset has no {name!r} column (it has {available})")
            columns.append(name)
    return columns


def episode_summary(table: pa.Table, id_columns: list[str]) -> pa.Table:
    """One row per episode: episode_id, length, return, terminated, truncated, first timestamp,
    and the first value of each id column."""
    aggregations = [
        ("step" if "step" in table.column_names else "episode_id", "count"),
        ("reward", "sum"),
        ("terminated", "max"),
        ("truncated", "max"),
        ("timestamp", "min"),
        *((name, "first") for name in id_columns),
    ]
    summary = table.group_by("episode_id", use_threads=False).aggregate(aggregations)
    names = {
        f"{'step' if 'step' in table.column_names else 'episode_id'}_count": "length",
        "reward_sum": "return",
        "terminated_max": "terminated",
        "truncated_max": "truncated",
        "timestamp_min": "first_timestamp",
        **{f"{name}_first": name for name in id_columns},
    }
    return summary.rename_columns([names.get(name, name) for name in summary.column_names])


def episode_hashes(columns: dict[str, np.ndarray], names: list[str]) -> dict[int, str]:
    """sha256 over the `names` columns of each episode (contiguous rows), by episode id."""
    ids = columns["episode_id"]
    out = {}
    for start, stop in episode_runs(ids):
        digest = hashlib.sha256()
        for name in names:
            digest.update(np.ascontiguousarray(columns[name][start:stop]).tobytes())
        out[int(ids[start])] = digest.hexdigest()
    return out


def keep_mask(
    summary: pa.Table,
    criteria: EpisodeFilter,
    seen_hashes: set[str] | None = None,
    hashes: dict[int, str] | None = None,
) -> tuple[np.ndarray, FilterReport]:
    """Which episodes of `summary` pass, with the report. `seen_hashes` (updated) carries
    dedupe state across calls."""
    count = summary.num_rows
    keep = np.ones(count, bool)
    report = FilterReport(episodes=count, rows=int(pc.sum(summary["length"]).as_py() or 0))

    def drop(reason: str, failing: np.ndarray) -> None:
        newly = failing & keep
        if newly.any():
            report.dropped[reason] = report.dropped.get(reason, 0) + int(newly.sum())
            keep[newly] = False

    returns, lengths = summary["return"].to_numpy(), summary["length"].to_numpy()
    if criteria.min_return is not None:
        drop("min_return", returns < criteria.min_return)
    if criteria.max_return is not None:
        drop("max_return", returns > criteria.max_return)
    if criteria.min_length is not None:
        drop("min_length", lengths < criteria.min_length)
    if criteria.max_length is not None:
        drop("max_length", lengths > criteria.max_length)
    if criteria.ended:
        terminated = summary["terminated"].to_numpy(zero_copy_only=False)
        truncated = summary["truncated"].to_numpy(zero_copy_only=False)
        how = np.where(terminated, "terminated", np.where(truncated, "truncated", "unfinished"))
        drop("ended", ~np.isin(how, criteria.ended))
    for name, values in (
        ("game_id", criteria.game_ids),
        ("player_id", criteria.player_ids),
        ("collector_id", criteria.collector_ids),
        ("source", criteria.sources),
    ):
        if values:
            drop(name, ~np.isin(np.asarray(summary[name].to_pylist(), dtype=object), values))
    if criteria.start is not None or criteria.end is not None:
        first = summary["first_timestamp"].to_numpy(zero_copy_only=False).astype("datetime64[ns]")
        if criteria.start is not None:
            drop("start", first < _utc(criteria.start))
        if criteria.end is not None:
            drop("end", first >= _utc(criteria.end))
    if criteria.exclude_episodes:
        drop("excluded", np.isin(summary["episode_id"].to_numpy(), criteria.exclude_episodes))
    if criteria.dedupe:
        seen = seen_hashes if seen_hashes is not None else set()
        ids = summary["episode_id"].to_numpy()
        repeated = np.zeros(count, bool)
        for i, episode_id in enumerate(ids):
            digest = (hashes or {})[int(episode_id)]
            if keep[i]:
                repeated[i] = digest in seen
                seen.add(digest)
        drop("dedupe", repeated)
    report.kept_episodes = int(keep.sum())
    report.kept_rows = int(lengths[keep].sum())
    return keep, report


def _utc(moment: datetime) -> np.datetime64:
    """A naive UTC datetime64 (naive inputs are taken as UTC)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return np.datetime64(moment, "ns")


def filter_table(
    table: pa.Table, criteria: EpisodeFilter, seen_hashes: set[str] | None = None, obs_action: list[str] | None = None
) -> tuple[pa.Table, FilterReport]:
    """The rows of the episodes in `table` that pass (`obs_action` names the columns dedupe hashes)."""
    ids = [name for name in ID_COLUMNS if name in needed_columns(criteria, table.column_names)]
    summary = episode_summary(table, ids)
    hashes = None
    if criteria.dedupe:
        from harvest.rollout.batch import TransitionBatch

        names = obs_action or [name for name in table.column_names if name.startswith("obs") or name == "action"]
        columns = TransitionBatch.from_arrow(table.select(["episode_id", *names])).columns
        hashes = episode_hashes(columns, names)
    keep, report = keep_mask(summary, criteria, seen_hashes, hashes)
    if keep.all():
        return table, report
    kept_ids = pa.array(summary["episode_id"].to_numpy()[keep])
    return table.filter(pc.is_in(table["episode_id"], value_set=kept_ids)), report
