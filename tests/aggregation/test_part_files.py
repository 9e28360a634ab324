"""A dataset folder is a plain Parquet dataset: pyarrow, pandas, polars and DuckDB read it as it
is (the manifest, the other formats and the inspect report have names they skip; a partition
column lives in the folder names alone), and datasets written before that layout still open."""

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from harvest.aggregation import edit
from harvest.aggregation.compact import DatasetExistsError, check_new_dataset, write_dataset
from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.dataset import Dataset
from harvest.aggregation.importers import import_parquet
from harvest.aggregation.manifest import LEGACY_MANIFEST_NAME, MANIFEST_NAME
from harvest.aggregation.storage import location
from harvest.cluster.cli import main
from harvest.rollout.episode_filter import EpisodeFilter
from tests.aggregation.test_dataset import episodes_batch, read_back

DATA = Path(__file__).resolve().parents[1] / "data"
LAYOUTS = {
    "flat, every format": ([], ["parquet", "npz", "hdf5", "tfrecord"]),
    "by hour": (["time"], ["parquet", "npz"]),
    "by collector": (["collector_id"], ["parquet", "hdf5"]),
    "by collector and hour": (["collector_id", "time"], ["parquet"]),
    "by a boolean": (["truncated"], ["parquet"]),
}


def by_step(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    order = np.lexsort((np.asarray(columns["step"]), np.asarray(columns["episode_id"])))
    return {name: np.asarray(values)[order] for name, values in columns.items()}


def read_with_other_tools(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    """The columns the tests compare, as each tool reads the folder with its defaults."""
    names = ["episode_id", "step", "reward", "collector_id", "truncated"]
    glob = f"{folder}/**/*.parquet"
    tables = {
        "pyarrow.dataset": pads.dataset(folder, partitioning="hive").to_table(),
        "pq.read_table": pq.read_table(folder),
        "pandas": pd.read_parquet(folder),
        "polars": pl.read_parquet(glob, hive_partitioning=True),
        "duckdb": duckdb.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true)").df(),
    }
    read = {}
    for tool, table in tables.items():
        frame = table if isinstance(table, pd.DataFrame) else table.to_pandas()
        read[tool] = by_step(
            {
                name: frame[name]
                .astype(str if name == "truncated" else np.float64 if name == "reward" else np.int64)
                .to_numpy()
                for name in names
            }
        )
    return read


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pyarrow_pandas_polars_and_duckdb_read_every_dataset_folder_as_it_is(tmp_path, layout):
    partition_by, formats = LAYOUTS[layout]
    schema, batch = episodes_batch([30, 5, 70, 12, 40, 7], seed=2)
    folder = tmp_path / "data"
    write_dataset(
        [batch],
        schema,
        folder,
        AggregationConfig(formats=formats, partition_by=partition_by, rows_per_file=25),
        run_id="t",
        env_id="x",
    )
    assert main(["inspect", str(folder), "--json", str(tmp_path / "report.json")]) in (0, 1)  # (1: quality flags)
    assert (folder / "_report" / "index.html").is_file() and (folder / MANIFEST_NAME).is_file()
    outside_names_skipped = [
        path.relative_to(folder)
        for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith("_") for part in path.relative_to(folder).parts)
    ]
    assert outside_names_skipped and all(path.suffix == ".parquet" for path in outside_names_skipped)
    for column in (c for c in partition_by if c != "time"):  # in the folder names, not in the files
        assert all(column not in pq.read_schema(folder / path).names for path in outside_names_skipped)

    expected = by_step({name: batch.columns[name] for name in ("episode_id", "step", "reward", "collector_id")})
    truncated = by_step(batch.columns)["truncated"]  # (a boolean partition folder says 0/1, untyped for the tools)
    expected["truncated"] = truncated.astype(int).astype(str) if "truncated" in partition_by else truncated.astype(str)
    expected["reward"] = expected["reward"].astype(np.float64)
    for tool, columns in read_with_other_tools(folder).items():
        for name, values in expected.items():
            np.testing.assert_array_equal(columns[name], values, err_msg=f"{tool}: {name}")

    # Harvest's own readers give the partition columns back with their types.
    dataset = Dataset.open(folder)
    back = read_back(dataset)
    for name in batch.columns:
        np.testing.assert_array_equal(by_step(back)[name], by_step(batch.columns)[name], err_msg=name)
    table = dataset.to_pyarrow().to_table()
    assert table.schema.names[: len(schema.columns)] == list(schema.arrow_schema().names)
    assert table.schema.field("collector_id").type == schema.arrow_schema().field("collector_id").type
    assert (
        dataset.episode(2)["collector_id"].tolist() == [0] * 70
        and dataset.episode(3)["collector_id"].tolist() == [1] * 12
    )
    assert dataset.read_columns(["collector_id", "truncated"])["truncated"].dtype == np.bool_


def test_what_edit_and_import_write_is_a_plain_parquet_dataset_too(tmp_path):
    schema, batch = episodes_batch([20, 5, 9, 30], seed=4)
    write_dataset(
        [batch],
        schema,
        tmp_path / "src",
        AggregationConfig(formats=["parquet"], partition_by=["collector_id"]),
        run_id="t",
        env_id="x",
    )
    edit.filter_dataset(Dataset.open(tmp_path / "src"), tmp_path / "long", EpisodeFilter(min_length=9))
    import_parquet([DATA / "parquet" / "part_1.parquet", DATA / "parquet" / "part_2.parquet"], tmp_path / "imported")
    for folder, rows in ((tmp_path / "long", 59), (tmp_path / "imported", 50)):
        assert pads.dataset(folder, partitioning="hive").count_rows() == len(pd.read_parquet(folder)) == rows
        assert Dataset.open(folder).manifest.rows == rows


def test_a_dataset_written_before_format_3_still_opens_and_reads_the_same(tmp_path):
    """tests/data/datasets/legacy-v2-partitioned was written by Harvest before this layout:
    `manifest.json`, `dataset.npz`, and the partition column in the files as well."""
    old = Path(shutil.copytree(DATA / "datasets" / "legacy-v2-partitioned", tmp_path / "old"))
    assert (old / LEGACY_MANIFEST_NAME).is_file() and not (old / MANIFEST_NAME).exists()
    _, batch = episodes_batch([6, 4, 5, 3], seed=3)  # what it was written from
    dataset = Dataset.open(old)
    assert dataset.manifest.partition_by == ["collector_id"] and dataset.manifest.rows == 18
    back = by_step(read_back(dataset))
    for name in batch.columns:
        np.testing.assert_array_equal(back[name], by_step(batch.columns)[name], err_msg=name)
    assert sorted(dataset.to_pyarrow().to_table()["collector_id"].to_pylist()) == sorted(batch.columns["collector_id"])
    assert dataset.episode(1)["collector_id"].tolist() == [1] * 4
    with pytest.raises(DatasetExistsError, match="a dataset is already there"):
        check_new_dataset(location(old))
    assert main(["export", str(old), "--to", "offline-rl", "--out", str(old / "x.hdf5")]) == 2  # inside it: refused

    edit.filter_dataset(dataset, tmp_path / "new", EpisodeFilter(min_length=4))  # what it writes is the new layout
    assert (tmp_path / "new" / MANIFEST_NAME).is_file() and not (tmp_path / "new" / LEGACY_MANIFEST_NAME).exists()
    assert Dataset.open(tmp_path / "new").manifest.format_version == 3
    assert sorted(pd.read_parquet(tmp_path / "new")["collector_id"].astype(int).tolist()) == [0] * 11 + [1] * 4


def test_ray_data_gives_partition_columns_their_types_with_and_without_verify(ray_cluster, tmp_path):
    schema, batch = episodes_batch([10, 5, 7, 4], seed=1)
    write_dataset(
        [batch],
        schema,
        tmp_path / "d",
        AggregationConfig(formats=["parquet"], partition_by=["collector_id", "truncated"]),
        run_id="t",
        env_id="x",
    )
    for verify in (True, False):
        frame = Dataset.open(tmp_path / "d", verify=verify).to_ray().to_pandas()
        assert len(frame) == 26 and frame["truncated"].dtype.kind == "b", (verify, frame.dtypes)
        assert frame["collector_id"].dtype.kind == "i" and sorted(set(frame["collector_id"])) == [0, 1]
