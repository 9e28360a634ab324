"""Dataset writing and reading beside the bare libraries, measured in the same run.

    python bench/datasets.py [--rows 200000] [--board-rows 20000] [--repeats 3]

* Compaction (`write_dataset`: sort, cut at episode boundaries, hash, manifest) beside
  `pyarrow.parquet.write_table` of the same table with the same codec: rows/s and MB/s.
* The HDF5 writer (streaming the Parquet files into chunked, gzip-compressed datasets) beside
  h5py writing the same columns from memory with the same chunks and compression.
* Windowed reading for training (`aggregation.windows`, H = 16, stride 4, through Ray Data)
  beside Ray Data reading the plain columns of the same files: rows of the underlying data per
  second.
* Reading with integrity checks (each file's size and sha256 against the manifest, a freshly
  opened `Dataset` each time) beside `verify=False`, three ways: streaming every column
  (`iter_batches`: inspect, export, HDF5), the columns BC trains on (`read_columns`: the hash
  still reads every byte of a file) and Ray Data (`to_ray`: one task per file against
  `read_parquet`). Target ratio >= 0.9.

Two row kinds: CartPole (4 floats) and a Generals-like 9x20x20 float32 board. Each figure is
the median of `--repeats` alternating runs; the ratio is Harvest / reference (target >= 0.8
on writes, >= 0.9 for verified reads).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pyarrow.parquet as pq
import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harvest.aggregation.compact import write_dataset  # noqa: E402
from harvest.aggregation.config import AggregationConfig, Hdf5Config  # noqa: E402
from harvest.aggregation.dataset import Dataset  # noqa: E402
from harvest.aggregation.hdf5 import write_hdf5  # noqa: E402
from harvest.aggregation.windows import windows  # noqa: E402
from harvest.rollout.batch import BatchSchema, TransitionBatch  # noqa: E402


def make_rows(observation_space: gym.Space, rows: int, episode_length: int) -> tuple[BatchSchema, TransitionBatch]:
    schema = BatchSchema.for_spaces(observation_space, gym.spaces.Discrete(4))
    rng = np.random.default_rng(0)
    shape = observation_space.shape
    obs = rng.random((rows, *shape), dtype=np.float32)
    episode = np.arange(rows) // episode_length
    columns = {
        "obs": obs,
        "next_obs": np.roll(obs, -1, axis=0),
        "action": rng.integers(0, 4, rows),
        "reward": rng.random(rows, dtype=np.float32),
        "terminated": (np.arange(rows) + 1) % episode_length == 0,
        "truncated": np.zeros(rows, bool),
        "episode_id": episode.astype(np.int64),
        "step": (np.arange(rows) % episode_length).astype(np.int64),
        "collector_id": np.zeros(rows, np.int64),
        "policy_version": np.zeros(rows, np.int64),
        "timestamp": (np.datetime64("2026-11-23T12:00:00", "ns") + np.arange(rows).astype("timedelta64[ms]")).astype(
            "datetime64[ns]"
        ),
    }
    return schema, TransitionBatch({name: columns[name].astype(spec.dtype) for name, spec in schema.columns.items()})


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench_kind(
    name: str, schema: BatchSchema, batch: TransitionBatch, repeats: int, scratch: Path, only_reads: bool = False
) -> None:
    rows = batch.num_rows
    megabytes = sum(column.nbytes for column in batch.columns.values()) / 1e6
    cfg = AggregationConfig(formats=["parquet"])  # the defaults a run uses (files of up to 500,000 rows)
    if only_reads:
        write_dataset([batch], schema, scratch / f"{name}-h0", cfg, "bench", "x")
        bench_verified_reads(name, scratch / f"{name}-h0", rows, repeats)
        return
    table = batch.to_arrow(schema)
    import pyarrow as pa

    table = pa.Table.from_batches([table])
    harvest, reference = [], []
    for run in range(repeats):
        harvest.append(
            timed(lambda run=run: write_dataset([batch], schema, scratch / f"{name}-h{run}", cfg, "bench", "x"))
        )
        reference.append(
            timed(lambda run=run: pq.write_table(table, scratch / f"{name}-ref{run}.parquet", compression="zstd"))
        )
    h, r = statistics.median(harvest), statistics.median(reference)
    print(
        f"{name:10s} Parquet write  Harvest {rows / h:12,.0f} rows/s {megabytes / h:8.1f} MB/s   "
        f"pyarrow.write_table {rows / r:12,.0f} rows/s {megabytes / r:8.1f} MB/s   ratio {r / h:.2f}"
    )

    dataset = Dataset.open(scratch / f"{name}-h0")
    columns = batch.columns
    hdf5_cfg = Hdf5Config(compression="gzip", compression_level=4, chunk_rows=4096)
    harvest, reference = [], []
    for run in range(repeats):
        harvest.append(timed(lambda: write_hdf5(dataset.folder, dataset.manifest, hdf5_cfg)))

        def direct(run=run):
            with h5py.File(scratch / f"{name}-ref{run}.h5", "w") as h5:
                for column, values in columns.items():
                    stored = values.astype("datetime64[ns]").astype(np.int64) if values.dtype.kind == "M" else values
                    h5.create_dataset(
                        f"data/{column}",
                        data=stored,
                        chunks=(min(4096, len(stored)), *stored.shape[1:]),
                        compression="gzip",
                        compression_opts=4,
                    )

        reference.append(timed(direct))
    h, r = statistics.median(harvest), statistics.median(reference)
    print(
        f"{name:10s} HDF5 write     Harvest {rows / h:12,.0f} rows/s {megabytes / h:8.1f} MB/s   "
        f"h5py from memory    {rows / r:12,.0f} rows/s {megabytes / r:8.1f} MB/s   ratio {r / h:.2f}"
    )

    def read_windows():
        for _ in windows(dataset, 16, 4, columns=["obs", "action"]).iter_batches(batch_size=256):
            pass

    def read_plain():
        for _ in dataset.to_ray(columns=["obs", "action"]).iter_batches(batch_size=256 * 16):
            pass

    harvest, reference = [], []
    for _ in range(repeats):
        harvest.append(timed(read_windows))
        reference.append(timed(read_plain))
    h, r = statistics.median(harvest), statistics.median(reference)
    print(
        f"{name:10s} read (Ray Data) windows H=16/4 {rows / h:12,.0f} rows/s   plain columns "
        f"{rows / r:12,.0f} rows/s   ratio {r / h:.2f}  (each window reads 16 rows and yields 16x their bytes)"
    )
    bench_verified_reads(name, scratch / f"{name}-h0", rows, repeats)


def bench_verified_reads(name: str, folder: Path, rows: int, repeats: int) -> None:
    """Reads of a freshly opened dataset with and without the integrity checks, alternating."""
    reads = {
        "iter_batches (all columns)": lambda dataset: sum(1 for _ in dataset.iter_batches()),
        "read_columns (obs, action, episode_id)": lambda dataset: dataset.read_columns(["obs", "action", "episode_id"]),
        "to_ray (obs, action)": lambda dataset: sum(
            1 for _ in dataset.to_ray(columns=["obs", "action"]).iter_batches(batch_size=4096)
        ),
    }
    for what, read in reads.items():
        verified, unverified = [], []
        for _ in range(repeats):
            verified.append(timed(lambda read=read: read(Dataset.open(folder))))
            unverified.append(timed(lambda read=read: read(Dataset.open(folder, verify=False))))
        v, u = statistics.median(verified), statistics.median(unverified)
        print(
            f"{name:10s} read {what:38s} verified {rows / v:12,.0f} rows/s   verify=False {rows / u:12,.0f} rows/s"
            f"   ratio {u / v:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="CartPole rows")
    parser.add_argument("--board-rows", type=int, default=20_000, help="9x20x20 board rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only-reads", action="store_true", help="only the verified-read comparison")
    args = parser.parse_args()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}},
    )
    from loguru import logger

    logger.remove()
    print(f"{os.cpu_count()} cores; medians of {args.repeats} runs")
    try:
        with tempfile.TemporaryDirectory(prefix="harvest-bench-") as scratch:
            bench_kind(
                "cartpole",
                *make_rows(gym.spaces.Box(-5, 5, (4,), np.float32), args.rows, 200),
                args.repeats,
                Path(scratch),
                args.only_reads,
            )
            bench_kind(
                "board",
                *make_rows(gym.spaces.Box(0, 1, (9, 20, 20), np.float32), args.board_rows, 200),
                args.repeats,
                Path(scratch),
                args.only_reads,
            )
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
