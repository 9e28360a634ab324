"""`LiveConfig` on its own, over a real YAML file: which edits it applies, which it refuses and
why, what it records, and the collection's appliers with a supervisor of the test's making."""

import os

import pytest
import yaml

from harvest.cluster.config import RunConfig, load_config
from harvest.cluster.live import LIVE_KEYS, LiveConfig, collect_appliers, diff, flatten
from tests.waiting import wait_for

BASE = {"env": {"id": "CartPole-v1"}, "rollout": {"num_collectors": 2, "mode": "trajectory"}}


def write(path, data: dict) -> None:
    """Write the config as an editor saves it, a whole second after the last save (the watcher
    tells versions apart by modification time and size)."""
    previous = path.stat().st_mtime_ns if path.exists() else None
    partial = path.with_suffix(".partial")
    partial.write_text(yaml.safe_dump(data))
    partial.replace(path)
    if previous is not None:
        os.utime(path, ns=(previous + 10**9, previous + 10**9))


def edited(**sections: dict) -> dict:
    data = {name: dict(section) for name, section in BASE.items()}
    for name, section in sections.items():
        data.setdefault(name, {}).update(section)
    return data


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "run.yaml"
    write(path, BASE)
    return path


def started(path, overrides=()) -> LiveConfig:
    """A LiveConfig whose watcher thread never polls on its own: the test calls `check()`."""
    return LiveConfig(path, list(overrides), load_config(path, list(overrides)), poll_s=3600)


def test_flatten_gives_dotted_keys_to_leaves():
    assert flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [2], "e": {}}


def test_a_section_that_appears_shows_only_the_keys_set_in_it():
    old = load_config(None)
    new = load_config(None, ["rollout.trajectory_filter={min_return: 5}"])
    assert diff(old, new) == {"rollout.trajectory_filter.min_return": (None, 5.0)}
    assert diff(old, old) == {}


def test_an_unchanged_file_is_no_edit(config_file):
    live = started(config_file)
    assert live.check() is None
    write(config_file, BASE)  # saved again without a change
    assert live.check() is None and live.changes == []


def test_a_live_edit_goes_through_its_applier_and_is_recorded(config_file):
    live = started(config_file)
    seen = []
    with live.watching(
        {"rollout.trajectory_filter": lambda cfg: seen.append(cfg.rollout.trajectory_filter.min_return)}
    ):
        write(config_file, edited(rollout={"trajectory_filter": {"min_return": 20}}))
        record = live.check()
    assert seen == [20.0]
    assert {key: record[key] for key in ("file", "status", "diff", "error")} == {
        "file": str(config_file),
        "status": "applied",
        "diff": {"rollout.trajectory_filter.min_return": [None, 20.0]},
        "error": None,
    }
    assert live.current.rollout.trajectory_filter.min_return == 20.0 and live.changes == [record]


def test_an_edit_of_a_key_that_needs_a_restart_is_refused_whole_naming_it(config_file):
    live = started(config_file)
    applied = []
    with live.watching({"rollout.policy.epsilon": applied.append}):
        write(config_file, edited(replay={"capacity_rows": 5000}, rollout={"policy": {"epsilon": 0.1}}))
        record = live.check()
    assert record["status"] == "rejected" and applied == []
    assert record["error"] == (
        f"replay.capacity_rows cannot change while the run goes on (live keys: {', '.join(LIVE_KEYS)})"
    )
    assert live.current.replay.capacity_rows == RunConfig().replay.capacity_rows
    assert live.check() is None, "the same file is not refused twice"


def test_a_live_key_without_an_applier_at_this_stage_is_refused(config_file):
    live = started(config_file)
    write(config_file, edited(rollout={"policy": {"epsilon": 0.2}}))
    assert live.check()["error"] == "rollout.policy.epsilon cannot change at this stage"
    assert live.current.rollout.policy.epsilon == 0.0


def test_an_applier_that_refuses_keeps_the_old_config(config_file):
    live = started(config_file)

    def refuse(cfg: RunConfig) -> None:
        raise ValueError("rollout.num_collectors: not now")

    with live.watching({"rollout.num_collectors": refuse}):
        write(config_file, edited(rollout={"num_collectors": 4}))
        record = live.check()
    assert (record["status"], record["error"]) == ("rejected", "rollout.num_collectors: not now")
    assert live.current.rollout.num_collectors == 2


def test_an_edit_that_does_not_validate_is_refused_with_the_files_error(config_file):
    live = started(config_file)
    write(config_file, edited(rollout={"num_collectors": "many"}))
    record = live.check()
    assert record["status"] == "rejected" and record["diff"] == {}
    assert record["error"].startswith(f"does not validate: {config_file}: rollout.num_collectors: ")


def test_the_runs_overrides_stay_on_top_of_every_edit(config_file):
    live = started(config_file, ["rollout.num_collectors=3"])
    write(config_file, edited(rollout={"num_collectors": 5}))
    assert live.check() is None and live.current.rollout.num_collectors == 3


def test_a_file_that_is_gone_is_no_edit(config_file):
    live = started(config_file)
    config_file.unlink()
    assert live.check() is None


@pytest.mark.timeout(60)
def test_watching_applies_edits_while_the_block_runs_and_then_lets_its_appliers_go(config_file):
    live = LiveConfig(config_file, [], load_config(config_file), poll_s=0.05)
    seen = []
    with live.watching({"rollout.num_collectors": lambda cfg: seen.append(cfg.rollout.num_collectors)}):
        write(config_file, edited(rollout={"num_collectors": 3}))
        wait_for(lambda: live.changes, 30, "the watcher to apply the edit", poll_s=0.02)
        write(config_file, edited(rollout={"num_collectors": 4}))  # just before the end: still applied
    assert seen[-1] == 4 and [change["status"] for change in live.changes] == ["applied"] * len(seen)
    write(config_file, edited(rollout={"num_collectors": 5}))  # after the block: nobody applies it
    assert live.check()["error"] == "rollout.num_collectors cannot change at this stage"


class Supervisor:
    """Records what the collection's appliers ask of it (the fleet's supervisor does it)."""

    def __init__(self) -> None:
        self.calls = []

    def set_num_collectors(self, count: int) -> None:
        self.calls.append(("set_num_collectors", count))

    def set_reward_weights(self, weights: dict) -> None:
        self.calls.append(("set_reward_weights", weights))

    def set_exploration(self, epsilon: float, deterministic: bool | None) -> None:
        self.calls.append(("set_exploration", epsilon, deterministic))


def appliers(cfg: RunConfig, supervisor=None, rotating: bool = False) -> dict:
    return collect_appliers(LiveConfig("unused.yaml", [], cfg), supervisor, cfg, replay=None, rotating=rotating)


def test_the_collection_hands_live_values_to_its_supervisor():
    cfg = load_config(None, ["rollout.mode=trajectory"])
    supervisor = Supervisor()
    apply = appliers(cfg, supervisor)
    assert set(apply) == set(LIVE_KEYS) - {"run.log_level"}
    apply["rollout.num_collectors"](load_config(None, ["rollout.num_collectors=5"]))
    apply["env.kwargs.rewards"](load_config(None, ["env.kwargs={rewards: {win: 2}}"]))
    apply["rollout.policy.epsilon"](load_config(None, ["rollout.policy.epsilon=0.3"]))
    assert supervisor.calls == [
        ("set_num_collectors", 5),
        ("set_reward_weights", {"win": 2}),
        ("set_exploration", 0.3, None),
    ]


@pytest.mark.parametrize(
    "key, new, kwargs, message",
    [
        ("rollout.num_collectors", [], {"supervisor": None}, "this collection has no simulator collectors to scale"),
        ("rollout.trajectory_filter", [], {}, "rollout.trajectory_filter: applies to rollout.mode: trajectory only"),
        (
            "aggregation.filter",
            [],
            {"rotating": True},
            "aggregation.filter: rotation .* is already writing the dataset",
        ),
        ("replay.rate_limit", [], {}, "replay.rate_limit: can be changed, not turned on or off"),
        ("env.kwargs.rewards", [], {"supervisor": None}, "env.kwargs.rewards: this collection has no simulator"),
        (
            "rollout.policy.deterministic",
            ["rollout.policy.deterministic=false"],
            {},
            "deterministic: false needs a policy that samples \\(kind: torch\\), not kind: expert",
        ),
    ],
)
def test_the_collection_refuses_edits_it_cannot_apply_naming_the_key(key, new, kwargs, message):
    cfg = RunConfig()  # rollout.mode: step
    apply = appliers(cfg, **{"supervisor": Supervisor(), **kwargs})
    with pytest.raises(ValueError, match=message):
        apply[key](load_config(None, new))
