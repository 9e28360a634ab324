"""Robocode collectors as Ray actors: real engines, real replay shards."""

import numpy as np
import pytest
import ray

from harvest.rollout.batch import TransitionBatch
from harvest.rollout.config import ReplayConfig
from harvest.rollout.replay.replay import start_replay
from harvest.rollout.robocode_collector import RobocodeBattles, RobocodeCollector, robocode_schema
from tests.envs.robocode.test_host import needs_robocode

pytestmark = [pytest.mark.robocode, needs_robocode]


def all_rows(replay) -> TransitionBatch:
    parts = [ray.get(shard.read.remote(0, 1_000_000), timeout=60).batch for shard in replay.shards]
    return TransitionBatch.concat([part for part in parts if part.num_rows])


@pytest.mark.timeout(300)
def test_two_collectors_push_seeded_battles_that_repeat_exactly(ray_cluster, tmp_path):
    replay = start_replay(ReplayConfig(num_shards=2, capacity_rows=50_000, num_cpus=0.1), robocode_schema())
    actor = ray.remote(RobocodeCollector)
    battles = RobocodeBattles(rounds_per_battle=2, seed=40)
    collectors = [
        actor.options(num_cpus=0.25).remote(
            battles, replay, index, 1000 + index, str(tmp_path / f"engine-{index}"), str(tmp_path / "cache")
        )
        for index in range(2)
    ]
    try:
        results = ray.get([collector.collect.remote(1500) for collector in collectors], timeout=240)
    finally:
        for collector in collectors:
            ray.get(collector.close.remote(), timeout=60)
            ray.kill(collector, no_restart=True)
    rows = all_rows(replay)
    replay.kill()
    assert rows.num_rows == sum(result.rows for result in results) >= 3000
    assert all(result.battles >= 1 and not result.dropped_battles for result in results)
    robocode_schema().validate(rows, "test")
    # Every (collector, battle, round, robot) is one episode, with its steps in order.
    keys = np.stack([rows["collector_id"], rows["battle_id"], rows["round"], rows["robot_id"]], axis=1)
    assert len(np.unique(keys, axis=0)) == len(np.unique(rows["episode_id"]))
    for episode_id in np.unique(rows["episode_id"])[:10]:
        mine = rows.take(np.flatnonzero(rows["episode_id"] == episode_id))
        order = np.argsort(mine["step"])
        assert (mine["step"][order] == np.arange(mine.num_rows)).all()
        assert mine["terminated"][order][-1] and mine["terminated"].sum() == 1
    # The same seeds give the same battles in both collectors' engines.
    first_battle = [rows.take(np.flatnonzero((rows["collector_id"] == c) & (rows["seed"] == 40))) for c in (0, 1)]
    orders = [np.lexsort((part["turn"], part["robot_id"], part["round"])) for part in first_battle]
    for name in ("obs", "action", "reward", "next_obs", "turn", "robot_id"):
        np.testing.assert_array_equal(first_battle[0][name][orders[0]], first_battle[1][name][orders[1]], err_msg=name)
