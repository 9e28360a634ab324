"""Live configuration: edits of the run's YAML file take effect while it collects."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import yaml

from aggregation.dataset import Dataset
from cluster.cli import main
from cluster.local import metrics_port
from tests.test_metrics import scrape


def _write(path: Path, data: dict) -> None:
    partial = path.with_suffix(".partial")  # the watcher never reads half a file
    partial.write_text(yaml.safe_dump(data))
    partial.replace(path)


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _collect_in_background(config: Path, base: dict, run_id: str) -> tuple[threading.Thread, list[int], Path]:
    """`harvest collect CONFIG` in a thread, once collecting (and 2 s on): the thread, its exit
    codes and the run's log."""
    _write(config, base)
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(main(["collect", str(config), "--run-id", run_id])))
    runner.start()
    log = Path(base["run"]["output_dir"]) / run_id / "harvest.log"
    _wait_for(lambda: log.is_file() and "collecting" in log.read_text(), 120, "the collection to start")
    time.sleep(2)
    return runner, codes, log


@pytest.mark.timeout(300)
def test_a_live_edit_scales_the_collectors_and_changes_the_filters_and_a_broken_edit_is_refused(ray_cluster,
                                                                                                tmp_path):
    config = tmp_path / "run.yaml"
    base = {"run": {"output_dir": str(tmp_path / "artifacts")},
            "env": {"id": "tests.toy_envs:HangingEnv", "num_envs": 2, "kwargs": {"step_s": 0.002}},
            "rollout": {"num_collectors": 1, "steps": 9000, "batch_rows": 100, "num_cpus": 0.25, "chunk_rows": 500,
                        "mode": "trajectory", "policy": {"kind": "random"}},
            "replay": {"num_cpus": 0.1, "capacity_rows": 30000}, "aggregation": {"num_cpus": 0.1}}
    runner, codes, log = _collect_in_background(config, base, "live")

    broken = {**base, "rollout": {**base["rollout"], "num_collectors": -1}}
    _write(config, broken)
    _wait_for(lambda: "rejected" in log.read_text(), 10, "the broken edit to be refused")
    edited = {**base, "rollout": {**base["rollout"], "num_collectors": 3, "trajectory_filter": {"min_length": 4}},
              "aggregation": {**base["aggregation"], "filter": {"ended": ["terminated"]}}}
    _write(config, edited)
    _wait_for(lambda: "applied" in log.read_text(), 10, "the edit to be applied")
    runner.join(timeout=240)
    assert codes == [0]

    run_dir = tmp_path / "artifacts" / "live"
    assert main(["compact", str(run_dir)]) == 0  # with the config as it was at the end of collection
    collect = json.loads((run_dir / "summary.json").read_text())["collect"]
    rejected, applied = collect["config_changes"]
    assert rejected["status"] == "rejected" and "rollout.num_collectors" in rejected["error"]
    assert applied["status"] == "applied"
    assert applied["diff"]["rollout.num_collectors"] == [1, 3]
    assert applied["diff"]["rollout.trajectory_filter.min_length"] == [None, 4]
    assert collect["scaled"][0]["from"] == 1 and collect["scaled"][0]["to"] == 3

    dataset = Dataset.open(run_dir / "dataset")
    table = pads.dataset(dataset.files).to_table(columns=["collector_id", "episode_id", "terminated", "truncated"])
    collectors = table["collector_id"].to_numpy()
    episodes, lengths = np.unique(table["episode_id"].to_numpy(), return_counts=True)
    first_collector = {episode: collector for episode, collector in zip(table["episode_id"].to_numpy(), collectors)}
    by_collector = {c: lengths[[first_collector[e] == c for e in episodes]] for c in (0, 1, 2)}
    assert set(np.unique(collectors)) == {0, 1, 2}, "the added collectors' rows are in the data"
    assert (by_collector[1] >= 4).all() and (by_collector[2] >= 4).all(), "added collectors push long episodes only"
    assert (by_collector[0] == 3).any(), "before the edit, collector 0 pushed short episodes too"
    assert table["terminated"].to_numpy().sum() == len(episodes) and not table["truncated"].to_numpy().any(), \
        "the edited aggregation.filter kept terminated episodes only"
    assert collect["rows"] >= 9000

    port = metrics_port()  # the gauge of wanted collectors followed the edit
    _wait_for(lambda: any(value == 3 for _, value in scrape(port).get("collectors", [])), 40,
              "ray_harvest_collectors to read 3")


@pytest.mark.timeout(300)
def test_a_live_edit_changes_the_reward_weights_and_the_exploration_from_the_next_step(ray_cluster, tmp_path):
    config = tmp_path / "run.yaml"
    base = {"run": {"output_dir": str(tmp_path / "artifacts")},
            "env": {"id": "tests.toy_envs:WeightedRewardEnv", "num_envs": 2,
                    "kwargs": {"step_s": 0.002, "rewards": {"scale": 1.0}}},
            "rollout": {"num_collectors": 2, "steps": 10000, "batch_rows": 100, "num_cpus": 0.25, "chunk_rows": 500,
                        "policy": {"kind": "custom", "entry_point": "tests.toy_envs:FirstActionPolicy"}},
            "replay": {"num_cpus": 0.1, "capacity_rows": 30000}, "aggregation": {"num_cpus": 0.1}}
    runner, codes, log = _collect_in_background(config, base, "tuned")
    wrong = {**base, "env": {**base["env"], "kwargs": {**base["env"]["kwargs"], "rewards": {"bonus": 2.0}}}}
    _write(config, wrong)  # validates as a config, but the env refuses the weights: nothing changes
    _wait_for(lambda: "rejected" in log.read_text(), 20, "the wrong weights to be refused")
    edited = {**base, "env": {**base["env"], "kwargs": {**base["env"]["kwargs"], "rewards": {"scale": 3.0}}},
              "rollout": {**base["rollout"], "policy": {**base["rollout"]["policy"], "epsilon": 1.0}}}
    _write(config, edited)
    _wait_for(lambda: "applied" in log.read_text(), 20, "the edit to be applied")
    runner.join(timeout=240)
    assert codes == [0]

    run_dir = tmp_path / "artifacts" / "tuned"
    assert main(["compact", str(run_dir)]) == 0
    rejected, applied = json.loads((run_dir / "summary.json").read_text())["collect"]["config_changes"]
    assert "WeightedRewardEnv: rewards takes `scale` only" in rejected["error"]
    assert applied["diff"] == {"env.kwargs.rewards.scale": [1.0, 3.0], "rollout.policy.epsilon": [0.0, 1.0]}
    table = pads.dataset(Dataset.open(run_dir / "dataset").files).to_table(
        columns=["action", "reward", "step", "timestamp"])
    action, reward, step = (table[name].to_numpy() for name in ("action", "reward", "step"))
    at = np.datetime64(applied["at"].replace("+00:00", ""), "ns")  # read before the edit was applied
    when = table["timestamp"].to_numpy().astype("datetime64[ns]")
    before, after = when < at, when > at + np.timedelta64(500, "ms")  # applied within a few ms
    assert before.sum() > 500 and after.sum() > 500, (before.sum(), after.sum())
    np.testing.assert_array_equal(reward[before], 10 * step[before] + action[before])  # scale 1
    assert (action[before] == 0).all(), "no exploration before the edit"
    np.testing.assert_array_equal(reward[after], 3 * (10 * step[after] + action[after]))  # scale 3
    assert 0.4 < action[after].mean() < 0.6, "epsilon 1: uniformly random actions"
