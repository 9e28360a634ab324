"""`RowFilter` on its own: building one from keywords, checking it against a schema, the rows it
keeps, and its JSON form."""

import re

import gymnasium as gym
import numpy as np
import pytest

from harvest.envs.spaces import ColumnSpec
from harvest.rollout.batch import BatchSchema
from harvest.rollout.replay.row_filter import RowFilter

SPACES = (gym.spaces.Box(-1, 1, (2,), np.float32), gym.spaces.Discrete(3))
MULTI_AGENT = BatchSchema.for_spaces(
    *SPACES, extras={"game_id": ColumnSpec(np.int64, ()), "player_id": ColumnSpec(np.int64, ())}
)


def test_of_keeps_the_given_keywords_as_int_tuples_and_drops_the_none_ones():
    where = RowFilter.of(game_id=np.array([3, 4]), player_id=None, collector_id=(1.0,))
    assert where.allowed == {"game_id": (3, 4), "collector_id": (1,)}
    assert type(where.allowed["game_id"][0]) is int


def test_of_with_nothing_to_filter_is_none():
    assert RowFilter.of() is None
    assert RowFilter.of(game_id=None, player_id=None) is None


def test_mask_keeps_rows_that_match_every_column():
    where = RowFilter.of(game_id=[3, 4], player_id=[0])
    columns = {"game_id": np.array([3, 3, 4, 5, 4]), "player_id": np.array([0, 1, 0, 0, 1])}
    assert where.mask(columns.__getitem__).tolist() == [True, False, True, False, False]


def test_mask_with_an_empty_id_list_keeps_nothing():
    where = RowFilter.of(episode_id=[])
    assert where.mask(lambda name: np.array([0, 1, 2])).tolist() == [False, False, False]


def test_check_accepts_scalar_integer_columns_of_the_schema():
    RowFilter.of(game_id=[1], player_id=[0], episode_id=[7]).check(MULTI_AGENT, "stream_experiences")


def test_check_refuses_a_column_that_cannot_be_filtered_on():
    with pytest.raises(ValueError, match=r"stream_experiences: cannot filter on 'reward'; expected one of \['game_id'"):
        RowFilter.of(reward=[1]).check(MULTI_AGENT, "stream_experiences")


def test_check_refuses_a_column_the_rows_do_not_have_naming_it():
    single_agent = BatchSchema.for_spaces(*SPACES)
    with pytest.raises(ValueError, match=r"sample: the replay's rows have no 'game_id' column to filter on"):
        RowFilter.of(game_id=[1]).check(single_agent, "sample")


@pytest.mark.parametrize(
    "spec, described", [(ColumnSpec(np.float32, ()), "float32[]"), (ColumnSpec(np.int64, (2,)), "int64[2]")]
)
def test_check_refuses_a_column_that_is_not_a_scalar_integer(spec, described):
    schema = BatchSchema.for_spaces(*SPACES, extras={"player_id": spec})
    with pytest.raises(
        ValueError, match=rf"read: column 'player_id' is {re.escape(described)}, expected a scalar integer"
    ):
        RowFilter.of(player_id=[0]).check(schema, "read")


def test_json_round_trip_gives_the_same_filter():
    where = RowFilter.of(collector_id=[0, 2], policy_version=[5])
    assert where.to_json() == {"collector_id": [0, 2], "policy_version": [5]}
    assert RowFilter.from_json(where.to_json()) == where
    assert RowFilter.from_json(None) is None and RowFilter.from_json({}) is None
