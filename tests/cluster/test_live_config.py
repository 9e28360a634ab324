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

from harvest.aggregation.dataset import Dataset
from harvest.cluster.cli import main
from harvest.cluster.local import metrics_port
from tests.cluster.test_metrics import scrape
from tests.toy_envs import open_gate, waiting_pids
from tests.waiting import wait_for


def _write(path: Path, data: dict) -> None:
    partial = path.with_suffix(".partial")  # the watcher never reads half a file
    partial.write_text(yaml.safe_dump(data))
    partial.replace(path)


def _values(samples: dict, name: str) -> list[float]:
    return [value for _, value in samples.get(name, [])]


def _collect_in_background(
    config: Path, base: dict, run_id: str, gate: Path, collectors: int
) -> tuple[threading.Thread, list[int], Path]:
    """`harvest collect CONFIG` in a thread, returned once its `collectors` wait at the gate
    (each with rows cut): the thread, its exit codes and the run's log."""
    _write(config, base)
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(main(["collect", str(config), "--run-id", run_id])))
    runner.start()
    wait_for(
        lambda: len(waiting_pids(gate)) == collectors or not runner.is_alive(),
        240,
        f"{collectors} collector(s) to reach the gate",
    )
    assert runner.is_alive(), f"the collection ended before its collectors reached the gate: exit codes {codes}"
    return runner, codes, Path(base["run"]["output_dir"]) / run_id / "harvest.log"


@pytest.mark.timeout(600)
def test_a_live_edit_scales_the_collectors_and_changes_the_filters_and_a_broken_edit_is_refused(ray_cluster, tmp_path):
    # Collectors wait at their 150th env step until the test has made its edits (and, here, until
    # the added collectors have rows of their own): what happens before and after is known.
    config, gate = tmp_path / "run.yaml", tmp_path / "gate"
    base = {
        "run": {"output_dir": str(tmp_path / "artifacts")},
        "env": {
            "id": "tests.toy_envs:GatedEnv",
            "num_envs": 2,
            "kwargs": {"step_s": 0.002, "gate_dir": str(gate), "gate_at_step": 150},
        },
        "rollout": {
            "num_collectors": 1,
            "steps": 9000,
            "batch_rows": 100,
            "num_cpus": 0.25,
            "chunk_rows": 500,
            "mode": "trajectory",
            "policy": {"kind": "random"},
        },
        "replay": {"num_cpus": 0.1, "capacity_rows": 30000},
        "aggregation": {"num_cpus": 0.1},
    }
    try:
        runner, codes, log = _collect_in_background(config, base, "live", gate, collectors=1)

        broken = {**base, "rollout": {**base["rollout"], "num_collectors": -1}}
        _write(config, broken)
        wait_for(lambda: "rejected" in log.read_text(), 120, "the broken edit to be refused")
        edited = {
            **base,
            "rollout": {**base["rollout"], "num_collectors": 3, "trajectory_filter": {"min_length": 4}},
            "aggregation": {**base["aggregation"], "filter": {"ended": ["terminated"]}},
        }
        _write(config, edited)
        wait_for(lambda: "applied" in log.read_text(), 120, "the edit to be applied")
        applied = time.monotonic()
        wait_for(lambda: len(waiting_pids(gate)) == 3, 240, "the added collectors to reach the gate")
        # The gauge of wanted collectors follows the edit, and stays while the run goes on: Ray drops a
        # gauge that is not set again within two export intervals (10 s each), so look after three.
        port = metrics_port()
        wait_for(
            lambda: time.monotonic() - applied > 35 and 3 in _values(scrape(port), "collectors"),
            180,
            "ray_harvest_collectors to read 3, 35 s after the edit",
            poll_s=1.0,
        )
    finally:
        open_gate(gate)  # the collectors go on (also when a wait above failed)
    runner.join(timeout=300)
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
    assert table["terminated"].to_numpy().sum() == len(episodes) and not table["truncated"].to_numpy().any(), (
        "the edited aggregation.filter kept terminated episodes only"
    )
    assert collect["rows"] >= 9000


@pytest.mark.timeout(600)
def test_a_live_edit_changes_the_reward_weights_and_the_exploration_from_the_next_step(ray_cluster, tmp_path):
    # Both collectors wait at their 400th env step while the edits are made: every row cut before
    # the edit is older than it, every later one is newer (no window of a few ms to allow for).
    config, gate = tmp_path / "run.yaml", tmp_path / "gate"
    base = {
        "run": {"output_dir": str(tmp_path / "artifacts")},
        "env": {
            "id": "tests.toy_envs:GatedRewardEnv",
            "num_envs": 2,
            "kwargs": {"step_s": 0.002, "rewards": {"scale": 1.0}, "gate_dir": str(gate), "gate_at_step": 400},
        },
        "rollout": {
            "num_collectors": 2,
            "steps": 10000,
            "batch_rows": 100,
            "num_cpus": 0.25,
            "chunk_rows": 500,
            "policy": {"kind": "custom", "entry_point": "tests.toy_envs:FirstActionPolicy"},
        },
        "replay": {"num_cpus": 0.1, "capacity_rows": 30000},
        "aggregation": {"num_cpus": 0.1},
    }
    try:
        runner, codes, log = _collect_in_background(config, base, "tuned", gate, collectors=2)
        wrong = {**base, "env": {**base["env"], "kwargs": {**base["env"]["kwargs"], "rewards": {"bonus": 2.0}}}}
        _write(config, wrong)  # validates as a config, but the env refuses the weights: nothing changes
        wait_for(lambda: "rejected" in log.read_text(), 120, "the wrong weights to be refused")
        edited = {
            **base,
            "env": {**base["env"], "kwargs": {**base["env"]["kwargs"], "rewards": {"scale": 3.0}}},
            "rollout": {**base["rollout"], "policy": {**base["rollout"]["policy"], "epsilon": 1.0}},
        }
        _write(config, edited)
        wait_for(lambda: "applied" in log.read_text(), 120, "the edit to be applied")
    finally:
        open_gate(gate)  # the collectors go on (also when a wait above failed)
    runner.join(timeout=300)
    assert codes == [0]

    run_dir = tmp_path / "artifacts" / "tuned"
    assert main(["compact", str(run_dir)]) == 0
    rejected, applied = json.loads((run_dir / "summary.json").read_text())["collect"]["config_changes"]
    assert "WeightedRewardEnv: rewards takes `scale` only" in rejected["error"]
    assert applied["diff"] == {"env.kwargs.rewards.scale": [1.0, 3.0], "rollout.policy.epsilon": [0.0, 1.0]}
    table = pads.dataset(Dataset.open(run_dir / "dataset").files).to_table(
        columns=["action", "reward", "step", "timestamp"]
    )
    action, reward, step = (table[name].to_numpy() for name in ("action", "reward", "step"))
    at = np.datetime64(applied["at"].replace("+00:00", ""), "ns")  # read before the edit was applied
    when = table["timestamp"].to_numpy().astype("datetime64[ns]")
    before, after = when < at, when > at
    assert before.sum() > 500 and after.sum() > 500 and before.sum() + after.sum() == len(when), (
        before.sum(),
        after.sum(),
        len(when),
    )
    np.testing.assert_array_equal(reward[before], 10 * step[before] + action[before])  # scale 1
    assert (action[before] == 0).all(), "no exploration before the edit"
    np.testing.assert_array_equal(reward[after], 3 * (10 * step[after] + action[after]))  # scale 3
    assert 0.4 < action[after].mean() < 0.6, "epsilon 1: uniformly random actions"


@pytest.mark.timeout(600)
def test_a_live_edit_made_before_any_collector_started_is_checked_by_the_first_to_start(ray_cluster, tmp_path):
    # Weights the env refuses, written while both collectors are still being built: before, the
    # edit was "applied" unchecked and every collector then failed as it started.
    config, gate = tmp_path / "run.yaml", tmp_path / "gate"
    base = {
        "run": {"output_dir": str(tmp_path / "artifacts")},
        "env": {
            "id": "tests.toy_envs:StartGatedRewardEnv",
            "num_envs": 2,
            "kwargs": {"step_s": 0.002, "rewards": {"scale": 1.0}, "gate_dir": str(gate)},
        },
        "rollout": {
            "num_collectors": 2,
            "steps": 2000,
            "batch_rows": 100,
            "num_cpus": 0.25,
            "policy": {"kind": "random"},
        },
        "replay": {"num_cpus": 0.1},
        "aggregation": {"num_cpus": 0.1},
    }
    try:
        runner, codes, log = _collect_in_background(config, base, "early", gate, collectors=2)
        wrong = {**base, "env": {**base["env"], "kwargs": {**base["env"]["kwargs"], "rewards": {"bonus": 2.0}}}}
        _write(config, wrong)
        wait_for(lambda: "no collector has started yet" in log.read_text(), 120, "the edit to wait for a collector")
    finally:
        open_gate(gate)
    runner.join(timeout=300)
    assert codes == [0]
    (change,) = json.loads((tmp_path / "artifacts" / "early" / "summary.json").read_text())["collect"]["config_changes"]
    assert change["status"] == "rejected" and "WeightedRewardEnv: rewards takes `scale` only" in change["error"]
