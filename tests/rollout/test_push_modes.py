"""The collector modes on their own: `TrajectoryGate` lets whole finished episodes through (and
only those its filter keeps), `LocalBuffer` holds batches, compressed or not, until it is full."""

import gymnasium as gym
import numpy as np
import pytest

from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.config import EpisodeFilter
from harvest.rollout.push_modes import LocalBuffer, TrajectoryGate

SCHEMA = BatchSchema.for_spaces(gym.spaces.Box(-1, 1, (2,), np.float32), gym.spaces.Discrete(3))


def rows(episode_ids: list[int], steps: list[int], ended: list[bool], reward: float = 1.0) -> TransitionBatch:
    """Hand-written rows: `obs[:, 0]` is the episode id and `obs[:, 1]` the step, to read them back."""
    num_rows = len(episode_ids)
    obs = np.stack([episode_ids, steps], axis=1).astype(np.float32)
    return TransitionBatch(
        {
            "obs": obs,
            "action": np.zeros(num_rows, np.int64),
            "reward": np.full(num_rows, reward, np.float32),
            "next_obs": obs + 1,
            "terminated": np.array(ended, bool),
            "truncated": np.zeros(num_rows, bool),
            "episode_id": np.array(episode_ids, np.int64),
            "step": np.array(steps, np.int64),
            "collector_id": np.zeros(num_rows, np.int64),
            "policy_version": np.zeros(num_rows, np.int64),
            "timestamp": np.arange(num_rows).astype("datetime64[ns]"),
        }
    )


def episode_steps(batch: TransitionBatch | None) -> list[tuple[int, int]]:
    return [] if batch is None else list(zip(batch["episode_id"].tolist(), batch["step"].tolist()))


def test_the_gate_releases_an_episode_only_once_it_ends_with_the_rows_held_before():
    gate = TrajectoryGate(SCHEMA, criteria=None)
    first = gate.add(rows([1, 2, 1, 2, 1], [0, 0, 1, 1, 2], [False, False, False, False, True]))
    assert episode_steps(first) == [(1, 0), (1, 1), (1, 2)]
    assert gate.pending_rows == 2 and gate.pending_bytes == 2 * SCHEMA.row_bytes
    assert gate.add(rows([2], [2], [False])) is None  # episode 2 still running: nothing yet
    assert gate.pending_rows == 3
    second = gate.add(rows([2, 3], [3, 0], [True, False]))
    assert episode_steps(second) == [(2, 0), (2, 1), (2, 2), (2, 3)]
    assert gate.pending_rows == 1
    report = gate.report
    assert (report.episodes, report.kept_episodes, report.rows, report.kept_rows) == (2, 2, 7, 7)


def test_the_gate_with_an_empty_filter_keeps_every_finished_episode():
    gate = TrajectoryGate(SCHEMA, EpisodeFilter())
    released = gate.add(rows([4, 4], [0, 1], [False, True], reward=-5.0))
    assert episode_steps(released) == [(4, 0), (4, 1)]
    assert gate.pending_rows == 0 and gate.pending_bytes == 0


def test_the_gate_drops_finished_episodes_its_filter_refuses_and_says_why():
    gate = TrajectoryGate(SCHEMA, EpisodeFilter(min_return=2.5))
    # Episode 1: 2 rows, return 2.0 (dropped); episode 2: 3 rows, return 3.0 (kept).
    released = gate.add(rows([1, 2, 1, 2, 2], [0, 0, 1, 1, 2], [False, False, True, False, True]))
    assert episode_steps(released) == [(2, 0), (2, 1), (2, 2)]
    assert gate.report.dropped == {"min_return": 1}
    assert (gate.report.episodes, gate.report.kept_episodes, gate.report.kept_rows) == (2, 1, 3)
    assert gate.add(rows([3], [0], [True])) is None  # return 1.0: dropped, nothing to push
    assert gate.report.dropped == {"min_return": 2} and gate.pending_rows == 0


def test_the_gate_dedupe_drops_an_episode_that_repeats_an_earlier_one_across_calls():
    gate = TrajectoryGate(SCHEMA, EpisodeFilter(dedupe=True))
    once = rows([1, 1], [0, 1], [False, True])
    assert episode_steps(gate.add(once)) == [(1, 0), (1, 1)]
    again = rows([1, 1], [0, 1], [False, True])  # same observations and actions
    again.columns["episode_id"][:] = 2
    assert gate.add(again) is None
    assert gate.report.dropped == {"dedupe": 1}


def test_the_buffer_hands_over_everything_held_once_it_reaches_its_limit():
    buffer = LocalBuffer(SCHEMA, limit_bytes=3 * 2 * SCHEMA.row_bytes, compression=None)
    batches = [rows([i, i], [0, 1], [False, True]) for i in range(3)]
    assert buffer.add(batches[0]) == [] and buffer.add(batches[1]) == []
    assert buffer.nbytes == buffer.raw_bytes == 4 * SCHEMA.row_bytes
    pushed = buffer.add(batches[2])
    assert [batch["episode_id"].tolist() for batch in pushed] == [[0, 0], [1, 1], [2, 2]]
    assert pushed[0] is batches[0]  # uncompressed: held as they came
    assert (buffer.nbytes, buffer.raw_bytes, buffer.drain()) == (0, 0, [])


@pytest.mark.parametrize("compression", ["zstd", "lz4"])
def test_the_compressed_buffer_holds_fewer_bytes_and_gives_the_same_rows_back(compression):
    buffer = LocalBuffer(SCHEMA, limit_bytes=10**9, compression=compression)
    batch = rows([7] * 500, list(range(500)), [False] * 499 + [True])  # compressible: repeated values
    assert buffer.add(batch) == []
    raw = 500 * SCHEMA.row_bytes
    assert buffer.raw_bytes == raw and 0 < buffer.nbytes < raw / 2
    (back,) = buffer.drain()
    assert list(back.columns) == list(SCHEMA.columns)
    for name, column in batch.columns.items():
        np.testing.assert_array_equal(back[name], column, err_msg=name)
    assert buffer.nbytes == 0
