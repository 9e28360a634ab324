"""Cutting vector-env steps into rows under Gymnasium 1.x autoreset."""

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.cutter import EpisodeIds, TransitionCutter
from harvest.rollout.routing import shard_of
from tests.toy_envs import CountingEnv, DictObsEnv

MODES = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP]


def run_cutter(env, steps: int, batch_rows: int, seed: int = 0, num_shards: int = 1):
    schema = BatchSchema.for_spaces(env.single_observation_space, env.single_action_space)
    cutter = TransitionCutter(
        schema,
        env.num_envs,
        batch_rows,
        env.metadata["autoreset_mode"],
        collector_id=3,
        episode_ids=EpisodeIds(7),
        num_shards=num_shards,
    )
    obs, _ = env.reset(seed=seed)
    cutter.reset(obs)
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(steps):
        actions = (
            env.action_space.sample() if not hasattr(env.single_action_space, "n") else rng.integers(0, 2, env.num_envs)
        )
        obs, reward, terminated, truncated, info = env.step(actions)
        batch = cutter.add_step(obs, actions, reward, terminated, truncated, info, policy_version=4)
        if batch is not None:
            schema.validate(batch, "test")
            batches.append(batch)
    tail = cutter.flush()
    if tail is not None:
        batches.append(tail)
    return schema, cutter, TransitionBatch.concat(batches), batches


def counting_env(num_envs: int, mode: AutoresetMode):
    return SyncVectorEnv([lambda offset=i: CountingEnv(offset) for i in range(num_envs)], autoreset_mode=mode)


def test_exact_rows_of_one_env_next_step():
    # CountingEnv(0): episode 0 lasts 2 steps (truncated), episode 1 lasts 3 (terminated).
    # Steps: e0 t0, e0 t1 (truncated), reset step (no row), e1 t0, e1 t1, e1 t2 (terminated).
    env = SyncVectorEnv([lambda: CountingEnv(0)])
    _, cutter, rows, _ = run_cutter(env, steps=6, batch_rows=100)
    base = 7 << 32
    assert rows["episode_id"].tolist() == [base, base, base + 1, base + 1, base + 1]
    assert rows["step"].tolist() == [0, 1, 0, 1, 2]
    assert rows["obs"].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [1, 2]]
    assert rows["next_obs"].tolist() == [[0, 1], [0, 2], [1, 1], [1, 2], [1, 3]]
    assert rows["terminated"].tolist() == [False, False, False, False, True]
    assert rows["truncated"].tolist() == [False, True, False, False, False]
    assert (rows["reward"] == 10 * rows["step"] + rows["action"]).all()
    assert (rows["collector_id"] == 3).all() and (rows["policy_version"] == 4).all()
    assert [(e.length, e.terminated) for e in cutter.finished_episodes] == [(2, False), (3, True)]


def test_exact_rows_of_one_env_same_step():
    env = SyncVectorEnv([lambda: CountingEnv(0)], autoreset_mode=AutoresetMode.SAME_STEP)
    _, _, rows, _ = run_cutter(env, steps=5, batch_rows=100)
    assert rows["step"].tolist() == [0, 1, 0, 1, 2]
    # The final observation comes from info["final_obs"], not the reset observation.
    assert rows["next_obs"].tolist() == [[0, 1], [0, 2], [1, 1], [1, 2], [1, 3]]
    assert rows["obs"].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [1, 2]]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "num_envs, batch_rows, num_shards", [(1, 1, 1), (3, 7, 1), (4, 64, 1), (5, 1000, 1), (3, 7, 2), (5, 1000, 3)]
)
def test_no_row_crosses_an_episode_boundary(mode, num_envs, batch_rows, num_shards):
    env = counting_env(num_envs, mode)
    schema, cutter, rows, batches = run_cutter(env, steps=41, batch_rows=batch_rows, num_shards=num_shards)
    assert all(batch.num_rows <= max(batch_rows, num_envs) for batch in batches)
    assert rows.num_rows == cutter.rows_cut
    ordered = rows.take(np.lexsort((rows["step"], rows["episode_id"])))
    episode_ids = np.unique(ordered["episode_id"])
    for episode_id in episode_ids:
        mask = ordered["episode_id"] == episode_id
        obs, next_obs, step = ordered["obs"][mask], ordered["next_obs"][mask], ordered["step"][mask]
        assert (step == np.arange(step.size)).all()
        assert (next_obs[:-1] == obs[1:]).all(), "next_obs must be the next row's obs"
        assert len(np.unique(obs[:, 0])) == 1, "one episode, one env episode number"
        assert (obs[:, 1] == step).all() and (next_obs[:, 1] == step + 1).all()
        length = 2 + int(obs[0, 0]) % 4
        ends = ordered["terminated"][mask] | ordered["truncated"][mask]
        assert not ends[:-1].any()
        if step.size == length:  # a finished episode: terminated and truncated kept apart
            assert ordered["terminated"][mask][-1] == (length % 2 == 1)
            assert ordered["truncated"][mask][-1] == (length % 2 == 0)
    finished = {e.episode_id: e for e in cutter.finished_episodes}
    for episode_id, episode in finished.items():
        assert (ordered["episode_id"] == episode_id).sum() == episode.length
    # NEXT_STEP adds no row for the reset step; SAME_STEP has a row every step.
    expected_rows = 41 * num_envs - (len(finished) - _finished_on_last_step(env, mode)) * (mode is MODES[0])
    assert rows.num_rows == expected_rows


def _finished_on_last_step(env, mode) -> int:
    # An episode that ended on the very last step has not had its reset step yet.
    return int(np.count_nonzero(env.unwrapped._autoreset_envs)) if mode is AutoresetMode.NEXT_STEP else 0


def test_episode_ids_are_unique_across_envs_and_collectors():
    first = EpisodeIds(1).next(5)
    second = EpisodeIds(2).next(5)
    assert len(set(first) | set(second)) == 10
    assert (first >> 32 == 1).all()


@pytest.mark.parametrize("mode", MODES)
def test_dict_observations_and_multidiscrete_actions(mode):
    env = SyncVectorEnv([DictObsEnv, DictObsEnv], autoreset_mode=mode)
    schema, _, rows, _ = run_cutter(env, steps=10, batch_rows=5)
    assert {"obs.position", "obs.grid", "obs.phase", "next_obs.grid", "action"} <= set(schema.columns)
    assert rows["obs.grid"].shape[1:] == (3, 4, 4) and rows["action"].shape[1:] == (2,)
    assert (rows["next_obs.position"][:, 0] == rows["step"] + 1).all()
    assert (rows["next_obs.grid"][:, 0, 0, 0] == rows["step"] + 1).all()
    assert rows["terminated"][rows["step"] == 2].all()
    assert (rows["reward"] == rows["action"].sum(1)).all()


def test_unsupported_autoreset_mode_is_refused():
    env = SyncVectorEnv([lambda: CountingEnv(0)], autoreset_mode=AutoresetMode.DISABLED)
    schema = BatchSchema.for_spaces(env.single_observation_space, env.single_action_space)
    with pytest.raises(ValueError, match="autoreset mode 'Disabled' is not supported"):
        TransitionCutter(schema, 1, 10, env.metadata["autoreset_mode"], 0, EpisodeIds(0))


@pytest.mark.parametrize("mode", MODES)
def test_rows_grouped_by_shard_are_the_same_rows_in_the_same_order_per_shard(mode):
    # Grouping by shard at cut time must give each shard exactly what routing the ungrouped
    # batch would: the same rows, in the same order (SAME_STEP patches included).
    _, _, _, plain = run_cutter(counting_env(5, mode), steps=30, batch_rows=40)
    _, _, _, grouped = run_cutter(counting_env(5, mode), steps=30, batch_rows=40, num_shards=3)
    assert len(plain) == len(grouped)
    for ungrouped, batch in zip(plain, grouped):
        assert ungrouped.shard_offsets is None
        offsets = batch.shard_offsets
        assert len(offsets) == 4 and offsets[0] == 0 and offsets[-1] == batch.num_rows
        expected_shard = shard_of(ungrouped["episode_id"], 3)
        for shard in range(3):
            part = batch.take(slice(offsets[shard], offsets[shard + 1]))
            expected = ungrouped.take(np.flatnonzero(expected_shard == shard))
            assert set(part.columns) == set(expected.columns)
            for name in set(expected.columns) - {"timestamp"}:  # wall-clock time differs between the runs
                np.testing.assert_array_equal(part[name], expected[name], err_msg=f"{name}, shard {shard}")


def test_too_many_shards_are_refused():
    env = SyncVectorEnv([lambda: CountingEnv(0)])
    schema = BatchSchema.for_spaces(env.single_observation_space, env.single_action_space)
    with pytest.raises(ValueError, match="num_shards=70000"):
        TransitionCutter(schema, 1, 10, env.metadata["autoreset_mode"], 0, EpisodeIds(0), num_shards=70_000)
