"""One replay shared by a person's session and simulators: the columns a simulator fills, with
what, in which order, and the errors when the two kinds of rows do not fit together."""

import gymnasium as gym
import numpy as np
import pytest

from harvest.envs.spaces import ColumnSpec
from harvest.rollout.batch import BatchSchema
from harvest.rollout.source_columns import SOURCE_BY_POLICY, merged_schema, shared_columns, with_filled
from tests.rollout.test_batch import random_batch

SPACES = (gym.spaces.Box(-1, 1, (2,), np.float32), gym.spaces.Discrete(3))
HUMAN_EXTRAS = {
    "source": ColumnSpec(object, ()),
    "session": ColumnSpec(object, ()),
    "driver": ColumnSpec(object, ()),
    "frame": ColumnSpec(np.int64, ()),
    "speed": ColumnSpec(np.float32, ()),
    "wheel": ColumnSpec(np.float64, (2,)),
    "paused": ColumnSpec(np.bool_, ()),
}
HUMAN = BatchSchema.for_spaces(*SPACES, extras=HUMAN_EXTRAS)
SIMULATOR = BatchSchema.for_spaces(*SPACES)


def test_a_simulator_fills_each_column_it_lacks_with_its_kind_blank_text_nan_or_minus_one():
    fillers = shared_columns(HUMAN, SIMULATOR, SOURCE_BY_POLICY["torch"], "collector 0")
    assert sorted(fillers) == sorted(HUMAN_EXTRAS)
    filled = {name: filler(3) for name, filler in fillers.items()}
    assert filled["source"].tolist() == ["agent"] * 3 and filled["driver"].tolist() == ["agent"] * 3
    assert filled["session"].tolist() == ["", "", ""]
    assert filled["frame"].tolist() == [-1, -1, -1] and filled["frame"].dtype == np.int64
    assert np.isnan(filled["speed"]).all() and filled["speed"].dtype == np.float32
    assert filled["wheel"].shape == (3, 2) and np.isnan(filled["wheel"]).all()
    assert filled["paused"].tolist() == [False, False, False]


def test_filled_rows_take_the_replays_column_order_and_keep_their_shard_grouping():
    batch = random_batch(SIMULATOR, 4)
    batch.shard_offsets = (0, 1, 4)
    fillers = shared_columns(HUMAN, SIMULATOR, "expert", "collector 2")
    filled = with_filled(batch, fillers, list(HUMAN.columns))
    assert list(filled.columns) == list(HUMAN.columns)
    assert filled.shard_offsets == (0, 1, 4)
    np.testing.assert_array_equal(filled["obs"], batch["obs"])
    assert filled["source"].tolist() == ["expert"] * 4
    HUMAN.validate(filled, "collector 2")  # the rows now fit the replay exactly


def test_rows_that_already_fit_the_replay_are_passed_on_as_they_are():
    batch = random_batch(SIMULATOR, 2)
    assert shared_columns(SIMULATOR, SIMULATOR, "random", "collector 0") == {}
    assert with_filled(batch, {}, list(SIMULATOR.columns)) is batch


def test_a_collector_with_columns_the_replay_lacks_is_refused_naming_them():
    with pytest.raises(
        ValueError,
        match=r"human collector: the replay has no columns "
        r"\['driver', 'frame', 'paused', 'session', 'source', 'speed', 'wheel'\] \(it has \['action', ",
    ):
        shared_columns(SIMULATOR, HUMAN, "human", "human collector")


def test_a_collector_whose_column_has_another_type_is_refused_naming_both_types():
    other = BatchSchema.for_spaces(*SPACES, extras={"frame": ColumnSpec(np.int32, ())})
    with pytest.raises(
        ValueError, match=r"collector 1: columns \['frame'\] are \['int32\[\]'\] here but \['int64\[\]'\] in the replay"
    ):
        shared_columns(HUMAN, other, "expert", "collector 1")


def test_a_column_of_a_type_with_no_blank_value_is_refused_naming_it():
    replay = BatchSchema.for_spaces(*SPACES, extras={"seen_at": ColumnSpec("datetime64[ns]", ())})
    with pytest.raises(
        ValueError, match=r"column 'seen_at' \(datetime64\[ns\]\): no value to fill it with for expert rows"
    ):
        shared_columns(replay, SIMULATOR, "expert", "collector 0")


def test_the_merged_schema_keeps_the_first_order_then_adds_the_seconds_own_columns():
    second = BatchSchema.for_spaces(
        *SPACES, extras={"game_id": ColumnSpec(np.int64, ()), "frame": ColumnSpec(np.int64, ())}
    )
    merged = merged_schema(HUMAN, second)
    assert list(merged.columns) == [*HUMAN.columns, "game_id"]
    assert merged.observation_space == HUMAN.observation_space and merged.action_space == HUMAN.action_space


def test_merging_schemas_with_a_column_of_two_types_names_it():
    second = BatchSchema.for_spaces(*SPACES, extras={"speed": ColumnSpec(np.float64, ())})
    with pytest.raises(ValueError, match=r"columns \['speed'\] have different types in the collectors' rows"):
        merged_schema(HUMAN, second)


def test_merging_schemas_of_different_spaces_is_refused():
    other = BatchSchema.for_spaces(SPACES[0], gym.spaces.Discrete(4))
    with pytest.raises(ValueError, match=r"the collectors' spaces differ: .*Discrete\(3\) vs .*Discrete\(4\)"):
        merged_schema(SIMULATOR, other)
