"""Sliding windows over episodes as a lazy Ray Data dataset, and how many a dataset yields.

A window is `history` consecutive steps of one episode; windows never cross an episode
boundary. Consecutive windows start `stride` steps apart (default a quarter of the history,
as the seed recorders did). With `pad: none`, an episode of length L gives
`floor((L - H) / S) + 1` windows when L >= H and none otherwise. With `pad: repeat_first` or
`zeros`, the episode is extended at the front by H - 1 padding steps (copies of its first step,
or zeros), so it gives `floor((L - 1) / S) + 1` windows and every step ends one when S = 1:
frame stacking is `windows(dataset, k, stride=1, pad="repeat_first")`. Each window row holds
every selected column stacked to (H, ...) plus `episode_id`, `first_step` (negative for padded
windows) and `mask` (H booleans, false on padding).

The dataset is built lazily: one Ray Data task per Parquet file reads that file's columns
(an episode never spans files; the file is checked against the manifest as it is read) and
cuts its windows, so training can iterate it directly (`iter_torch_batches`) without the
windows ever being materialized together.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from harvest.aggregation.dataset import Dataset
from harvest.rollout.batch import TransitionBatch
from harvest.rollout.episode_filter import episode_runs

Pad = Literal["none", "repeat_first", "zeros"]


def default_stride(history: int) -> int:
    return max(1, history // 4)


def windows_per_episode(lengths: np.ndarray, history: int, stride: int, pad: Pad = "none") -> np.ndarray:
    """How many windows each episode of the given lengths yields (see the module doc)."""
    lengths = np.asarray(lengths, np.int64)
    if history < 1 or stride < 1:
        raise ValueError(f"windows: history {history} and stride {stride} must both be at least 1")
    if pad == "none":
        return np.where(lengths >= history, (lengths - history) // stride + 1, 0)
    return np.where(lengths >= 1, (lengths - 1) // stride + 1, 0)


def count_windows(dataset: Dataset, history: int, stride: int | None = None, pad: Pad = "none") -> dict[str, Any]:
    """Samples the dataset yields at this history and stride, from its episode lengths alone."""
    stride = stride or default_stride(history)
    ids = dataset.read_columns(["episode_id"])["episode_id"]
    _, lengths = np.unique(ids, return_counts=True)
    per_episode = windows_per_episode(lengths, history, stride, pad)
    return {
        "history": history,
        "stride": stride,
        "pad": pad,
        "episodes": int(lengths.size),
        "rows": int(lengths.sum()),
        "windows": int(per_episode.sum()),
        "episodes_too_short": int((per_episode == 0).sum()),
    }


def cut_windows(
    columns: dict[str, np.ndarray], history: int, stride: int, pad: Pad = "none", names: list[str] | None = None
) -> dict[str, np.ndarray]:
    """Windows of the episodes in `columns` (each episode contiguous, in step order)."""
    names = names or [name for name in columns if name != "episode_id"]
    ids = columns["episode_id"]
    lead = 0 if pad == "none" else history - 1
    firsts: list[int] = []
    starts: list[int] = []
    episode_ids: list[np.integer] = []
    for episode_start, episode_stop in episode_runs(ids):
        count = int(windows_per_episode(np.array([episode_stop - episode_start]), history, stride, pad)[0])
        firsts.extend(k * stride - lead for k in range(count))  # first step in the episode (< 0: padded)
        starts.extend([episode_start] * count)
        episode_ids.extend([ids[episode_start]] * count)
    first = np.asarray(firsts, np.int64)
    start = np.asarray(starts, np.int64)[:, None]
    index = start + first[:, None] + np.arange(history)  # row numbers; before the episode's start: padding
    mask = index >= start
    safe = np.maximum(index, start)  # padding repeats the first step...
    out = {}
    for name in names:
        values = (
            columns[name][safe] if first.size else np.zeros((0, history, *columns[name].shape[1:]), columns[name].dtype)
        )
        if pad == "zeros":  # ...or is zero
            values = np.where(mask.reshape(mask.shape + (1,) * (values.ndim - 2)), values, np.zeros_like(values))
        out[name] = values
    out.update(episode_id=np.asarray(episode_ids, np.int64), first_step=first, mask=mask.reshape(-1, history))
    return out


class _FileWindows:
    """Ray Data map_batches callable: the windows of one Parquet file per input row."""

    def __init__(self, dataset: Dataset, history: int, stride: int, pad: Pad, names: list[str]) -> None:
        self.reader, self.entries = dataset.reader, {entry.path: entry for entry in dataset.entries}
        self.history, self.stride, self.pad, self.names = history, stride, pad, names

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = []
        for path in batch["path"]:
            table = self.reader.read_table(
                self.entries[str(path)], columns=list(dict.fromkeys([*self.names, "episode_id", "step"]))
            )
            columns = TransitionBatch.from_arrow(
                table.sort_by([("episode_id", "ascending"), ("step", "ascending")])
            ).columns
            parts.append(cut_windows(columns, self.history, self.stride, self.pad, self.names))
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def windows(
    dataset: Dataset, history: int, stride: int | None = None, pad: Pad = "none", columns: list[str] | None = None
):
    """A lazy `ray.data.Dataset` of windows (see the module doc); `columns` default to the
    observations, the action and the reward."""
    import ray.data

    stride = stride or default_stride(history)
    windows_per_episode(np.zeros(0), history, stride, pad)  # validates history and stride
    names = columns or [*dataset.schema.obs_columns, "action", "reward"]
    unknown = [name for name in names if name not in dataset.schema.columns]
    if unknown:
        raise ValueError(
            f"{dataset.folder}: windows over unknown columns {unknown}; it has {list(dataset.schema.columns)}"
        )
    files = ray.data.from_items(
        [{"path": entry.path} for entry in dataset.entries], override_num_blocks=max(1, len(dataset.entries))
    )
    return files.map_batches(_FileWindows(dataset, history, stride, pad, names), batch_size=1, batch_format="numpy")
