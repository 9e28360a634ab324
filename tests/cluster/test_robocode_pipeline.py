"""Robocode runs through the pipeline: real engines as collector actors, the replay, Parquet,
the Robocode teams' JSON and NPZ formats, the importer, supervision and determinism."""

import json
import threading
import time

import numpy as np
import pyarrow.dataset as pads
import pytest
import ray

from harvest.aggregation.dataset import Dataset
from harvest.cluster.cli import main
from harvest.rollout.batch import TransitionBatch
from harvest.rollout.config import ReplayConfig
from harvest.rollout.replay.replay import start_replay
from harvest.rollout.robocode_collector import RobocodeBattles, RobocodeCollector, robocode_schema
from tests.envs.robocode.test_host import needs_robocode

pytestmark = [pytest.mark.robocode, needs_robocode]

TINY = [
    "env.kwargs.rounds_per_battle=2",
    "rollout.steps=2500",
    "rollout.num_cpus=0.25",
    "replay.num_cpus=0.1",
    "aggregation.num_cpus=0.1",
]


def collect_and_compact(tmp_path, output: str) -> Dataset:
    base = [
        "--run-id",
        "robocode",
        "--set",
        f"run.output_dir={tmp_path / output}",
        *sum((["--set", item] for item in TINY), []),
    ]
    assert main(["collect", "examples/robocode_bc.yaml", *base]) == 0
    assert main(["compact", str(tmp_path / output / "robocode")]) == 0
    return Dataset.open(tmp_path / output / "robocode" / "dataset")


def table_of(dataset: Dataset, columns=None) -> TransitionBatch:
    table = pads.dataset(dataset.files).to_table(columns=columns)
    batch = TransitionBatch.from_arrow(table)
    order = np.lexsort((batch["turn"], batch["round"], batch["battle_id"], batch["collector_id"]))
    return batch.take(order)


@pytest.mark.timeout(600)
def test_a_robocode_run_writes_parquet_seed_json_and_npz_and_repeats_exactly(ray_cluster, tmp_path):
    dataset = collect_and_compact(tmp_path, "first")
    run_dir = tmp_path / "first" / "robocode"
    rows = table_of(dataset)
    assert dataset.manifest.rows == rows.num_rows >= 2500
    assert dataset.manifest.episodes == dataset.manifest.episodes_complete
    assert (rows["robot_id"] == 0).all(), "record: [sample.SpinBot] keeps the expert's rows only"
    assert sorted(np.unique(rows["collector_id"]).tolist()) == [0, 1]

    # The Robocode teams' NPZ, next to the Parquet files.
    with np.load(run_dir / "dataset" / "_aggregated_expert_data.npz", allow_pickle=False) as npz:
        assert npz["observations"].shape == (rows.num_rows, 8) and npz["actions"].shape == (rows.num_rows, 5)
        metadata = json.loads(str(npz["metadata"]))
    assert metadata["total_steps"] == rows.num_rows and metadata["num_collectors"] == 2
    assert "sample.SpinBot vs sample.Target" in metadata["description"]

    # One team-format JSON file per battle; importing them gives the same SpinBot rows back.
    files = sorted((run_dir / "game_states").glob("expert_game_states_*.json"))
    assert len(files) == len(np.unique(rows["battle_id"]))
    assert all(f.name.startswith(("expert_game_states_0_", "expert_game_states_1_")) for f in files)
    assert main(["import", "robocode-json", str(run_dir / "game_states"), "--out", str(tmp_path / "imported")]) == 0
    imported = table_of(Dataset.open(tmp_path / "imported"))
    spinbot = imported.take(np.flatnonzero(imported["robot_id"] == 0))
    assert spinbot.num_rows == rows.num_rows
    assert (imported["robot_id"] == 1).any(), "the JSON files hold Target's turns too"
    for name in ("obs", "action", "next_obs"):
        np.testing.assert_allclose(spinbot[name], rows[name], atol=1e-3, err_msg=name)
    for name in ("reward", "terminated", "round", "turn", "collision", "disabled", "post_round", "collector_id"):
        np.testing.assert_array_equal(spinbot[name], rows[name], err_msg=name)

    # The same config and seed again: the same dataset, row for row (only the wall-clock
    # `timestamp` of each row differs).
    again = table_of(collect_and_compact(tmp_path, "second"))
    assert set(again.columns) == set(rows.columns)
    for name in rows.columns:
        if name != "timestamp":
            np.testing.assert_array_equal(again[name], rows[name], err_msg=name)


def test_a_malformed_game_state_file_is_named_and_the_others_imported(tmp_path, capsys):
    good = [
        {
            "turn": turn,
            "round": 1,
            "bot_states": [
                {
                    "name": name,
                    "x": 100.0 + turn + 300 * i,
                    "y": 100.0,
                    "direction": 90.0,
                    "gunDirection": 90.0,
                    "radarDirection": 90.0,
                    "speed": 1.0,
                    "gunHeat": 0.0,
                    "energy": 100.0,
                    "state": "ACTIVE",
                }
                for i, name in enumerate(["sample.SpinBot", "sample.Target"])
            ],
            "bullet_states": [],
        }
        for turn in range(1, 6)
    ]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "expert_game_states_0_a.json").write_text(json.dumps(good))
    bad = good[:2] + [{"turn": 3, "round": 1, "bot_states": [{"name": "x", "x": "far"}]}]
    (tmp_path / "in" / "expert_game_states_1_b.json").write_text(json.dumps(bad))
    assert main(["import", "robocode-json", str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "expert_game_states_1_b.json, entry 2, bot_states[0]: missing or non-numeric" in err
    dataset = Dataset.open(tmp_path / "out")
    assert dataset.manifest.rows == 2 * 4 and dataset.manifest.collectors == [0]
    assert main(["import", "robocode-json", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2


@pytest.mark.timeout(300)
def test_a_killed_engine_is_restarted_and_the_replay_holds_complete_battles_only(ray_cluster, tmp_path):
    # Two collectors play the same seeded battles; the first one's JVM is killed mid-run (15,000 rows: five
    # battles each, so the kill right after collector 0's first insert lands while it still has battles to play;
    # with a warm engine a battle takes ~0.3 s).
    replay = start_replay(ReplayConfig(num_shards=2, capacity_rows=100_000, num_cpus=0.1), robocode_schema())
    battles = RobocodeBattles(rounds_per_battle=3, seed=70)
    actor = ray.remote(RobocodeCollector)
    collectors = [
        actor.options(num_cpus=0.25, max_concurrency=2).remote(
            battles, replay, index, 2000 + index, str(tmp_path / f"engine-{index}"), str(tmp_path / "cache")
        )
        for index in range(2)
    ]
    killed = []

    def kill_first_engine_mid_run():
        while not replay.rows_by_source().get("collector 0"):  # its battle is in, the next one runs
            time.sleep(0.02)
        pid = ray.get(collectors[0].engine_pid.remote(), timeout=30)
        import os
        import signal

        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_first_engine_mid_run)
    try:
        refs = [collector.collect.remote(15000) for collector in collectors]
        killer.start()
        results = ray.get(refs, timeout=240)
        killer.join(timeout=30)
        assert killed and ray.get(collectors[0].engine_pid.remote(), timeout=30) != killed[0]
    finally:
        for collector in collectors:
            ray.get(collector.close.remote(), timeout=60)
            ray.kill(collector, no_restart=True)
    parts = [ray.get(shard.read.remote(0, 1_000_000), timeout=60).batch for shard in replay.shards]
    replay.kill()
    rows = TransitionBatch.concat([part for part in parts if part.num_rows])
    assert results[0].restarts >= 1 and results[1].restarts == 0
    assert not results[0].dropped_battles
    assert rows.num_rows == sum(result.rows for result in results)
    # Every battle in the replay is whole: all its rounds, every episode from step 0 to its end.
    for collector_id in (0, 1):
        mine = rows.take(np.flatnonzero(rows["collector_id"] == collector_id))
        for battle_id in np.unique(mine["battle_id"]):
            battle = mine.take(np.flatnonzero(mine["battle_id"] == battle_id))
            assert sorted(np.unique(battle["round"]).tolist()) == [0, 1, 2]
            for episode_id in np.unique(battle["episode_id"]):
                steps = np.sort(battle["step"][battle["episode_id"] == episode_id])
                assert (steps == np.arange(steps.size)).all()
                assert battle["terminated"][battle["episode_id"] == episode_id].sum() >= 1
    # The battle the crash interrupted was played again from its seed: the killed collector's
    # rows are exactly the unharmed one's.
    order = [
        np.lexsort((r["turn"], r["robot_id"], r["round"], r["seed"]))
        for r in (rows.take(np.flatnonzero(rows["collector_id"] == c)) for c in (0, 1))
    ]
    first, second = (rows.take(np.flatnonzero(rows["collector_id"] == c)) for c in (0, 1))
    assert first.num_rows == second.num_rows
    for name in ("obs", "action", "reward", "seed", "round", "turn", "robot_id"):
        np.testing.assert_array_equal(first[name][order[0]], second[name][order[1]], err_msg=name)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_harvest_run_trains_a_tank_and_evaluates_it_beside_the_expert_and_random(ray_cluster, repo_root_run):
    # examples/robocode_bc.yaml, shrunk, from the repo root into artifacts/ (the example's run for
    # tests/test_examples.py; a relative home once broke every engine there): engines → replay →
    # Parquet + NPZ → BC → the bridge tank in harvest/Robocode-v0 against both opponents, and
    # SpinBot itself in the engine.
    run_id, run_dir = repo_root_run
    tiny = [
        *TINY,
        "learner.bc.epochs=2",
        "learner.num_cpus=0.5",
        "eval.episodes=2",
        "eval.num_workers=1",
        "eval.scenarios={vs_target: {opponent: sample.Target, max_turns: 300}, "
        "vs_spinbot: {opponent: sample.SpinBot, max_turns: 300}}",
    ]
    argv = ["run", "examples/robocode_bc.yaml", "--run-id", run_id, *sum((["--set", item] for item in tiny), [])]
    assert main(argv) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["eval"]) == {
        f"{policy} @ {scenario}"
        for policy in ("trained", "expert", "random")
        for scenario in ("vs_target", "vs_spinbot")
    }
    for result in summary["eval"].values():
        assert result["episodes"] == 2 and "win_rate" in result
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert all(length <= 301 for length in [evaluation["expert @ vs_target"]["mean_length"]])
    assert (run_dir / "dataset" / "_aggregated_expert_data.npz").is_file()
