import gymnasium as gym
import numpy as np
import pyarrow as pa
import pytest

from harvest.rollout.batch import BatchSchema, BatchSchemaError, TransitionBatch
from tests.envs.test_registry import SPACES


def random_batch(schema: BatchSchema, num_rows: int, seed: int = 0) -> TransitionBatch:
    rng = np.random.default_rng(seed)
    columns = {}
    for name, spec in schema.columns.items():
        shape = (num_rows, *spec.shape)
        if spec.dtype.kind == "M":
            columns[name] = (1_700_000_000_000_000_000 + rng.integers(0, 10**9, num_rows)).astype("datetime64[ns]")
        elif spec.dtype.kind == "b":
            columns[name] = rng.random(shape) < 0.5
        elif spec.dtype.kind in "iu":
            columns[name] = rng.integers(0, 100, shape).astype(spec.dtype)
        else:
            columns[name] = rng.standard_normal(shape).astype(spec.dtype)
    return TransitionBatch(columns)


@pytest.mark.parametrize("obs_name", SPACES)
@pytest.mark.parametrize("action_name", ["discrete", "multidiscrete", "box"])
def test_arrow_round_trip_for_every_space(obs_name, action_name):
    schema = BatchSchema.for_spaces(SPACES[obs_name], SPACES[action_name])
    batch = random_batch(schema, 17)
    record_batch = batch.to_arrow(schema)
    assert record_batch.num_rows == 17
    back = TransitionBatch.from_arrow(record_batch)
    assert list(back.columns) == list(schema.columns)
    for name, column in batch.columns.items():
        assert back[name].dtype == column.dtype, name
        np.testing.assert_array_equal(back[name], column, err_msg=name)
    assert BatchSchema.from_arrow_schema(record_batch.schema).columns == schema.columns


def test_nd_columns_are_fixed_shape_tensors_and_scalars_are_plain():
    schema = BatchSchema.for_spaces(SPACES["image"], SPACES["discrete"])
    record_batch = random_batch(schema, 3).to_arrow(schema)
    assert isinstance(record_batch.schema.field("obs").type, pa.FixedShapeTensorType)
    assert record_batch.schema.field("obs").type.shape == [3, 8, 8]
    assert record_batch.schema.field("action").type == pa.int64()
    assert record_batch.schema.field("timestamp").type == pa.timestamp("ns", tz="UTC")


def test_numeric_columns_convert_without_copying():
    schema = BatchSchema.for_spaces(SPACES["image"], SPACES["discrete"])
    batch = random_batch(schema, 4)
    record_batch = batch.to_arrow(schema)
    assert np.shares_memory(
        TransitionBatch.from_arrow(record_batch)["obs"], record_batch.column("obs").storage.values.to_numpy()
    )


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda c: c.update(obs=c["obs"].astype(np.float64)),
            r"column 'obs' from collector 7: expected float32\[2\], got float64\[2\]",
        ),
        (
            lambda c: c.update(obs=c["obs"][:, :1]),
            r"column 'obs' from collector 7: expected float32\[2\], got float32\[1\]",
        ),
        (lambda c: c.update(reward=c["reward"][:-1]), r"column 'reward' from collector 7: has 4 rows, expected 5"),
        (lambda c: c.pop("terminated"), r"batch from collector 7: missing columns \['terminated'\]"),
        (lambda c: c.update(surprise=np.zeros(5)), r"unexpected columns \['surprise'\]"),
        (lambda c: c.update(action=list(c["action"])), r"column 'action' from collector 7: expected a numpy array"),
    ],
)
def test_validation_names_the_column_and_what_was_expected(mutate, message):
    schema = BatchSchema.for_spaces(SPACES["box"], SPACES["discrete"])
    batch = random_batch(schema, 5)
    mutate(batch.columns)
    with pytest.raises(BatchSchemaError, match=message):
        schema.validate(batch, source="collector 7")


def test_extras_join_the_schema_but_may_not_replace_core_columns():
    from harvest.envs.spaces import ColumnSpec

    schema = BatchSchema.for_spaces(SPACES["box"], SPACES["discrete"], extras={"action_mask": ColumnSpec(bool, (2,))})
    assert schema.columns["action_mask"].shape == (2,)
    with pytest.raises(BatchSchemaError, match="clashes"):
        BatchSchema.for_spaces(SPACES["box"], SPACES["discrete"], extras={"reward": ColumnSpec(float, ())})


def test_schema_json_round_trip():
    schema = BatchSchema.for_spaces(SPACES["dict"], SPACES["multidiscrete"])
    again = BatchSchema.from_json(schema.to_json())
    assert again.columns == schema.columns
    assert again.observation_space == schema.observation_space and again.action_space == schema.action_space
    assert gym.spaces.Discrete(2) != again.action_space
