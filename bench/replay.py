"""Replay throughput and memory: one `ReplayShard` beside TorchRL and cpprb, same rows, same run.

    python bench/replay.py [--quick] [--seconds 1.0] [--repeats 3]

Two row kinds: CartPole (obs float32[4], Discrete(2)) and Generals-sized (obs float32[9, 20, 20],
Discrete(801), an `action_mask` bool[801]), each with `next_obs`, reward, done flags and the
provenance columns. Inserts are batches of 1,000 rows, samples batches of 256; a prioritized
sample is followed by a priority update from random TD errors, as a DQN learner does, and its
rate counts both calls. Every replay is filled to capacity before timing, so inserts measure
the steady state that overwrites the oldest rows.

The shard runs in this process, without Ray, like the libraries beside it:
- TorchRL `ReplayBuffer` (and `PrioritizedReplayBuffer` where its C++ extension loads) over a
  `LazyTensorStorage`, the reference for the target (Harvest ≥ 1x on every row);
- cpprb's `ReplayBuffer` / `PrioritizedReplayBuffer`, a second reference, and the prioritized
  one where TorchRL's cannot run.
Every library gets its inputs pre-built outside the timed region (Harvest `TransitionBatch`es,
TorchRL `TensorDict`s sharing the same numpy memory, cpprb dicts of numpy; timestamps as int64
for the two that have no datetime type), so the clock sees only insert and sample. The
libraries take turns within each repeat, so a noisy phase of the host hits all of them alike;
the figures are medians over the repeats.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
from loguru import logger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harvest.envs.spaces import ColumnSpec  # noqa: E402
from harvest.rollout.allocator import keep_batch_buffers_on_heap  # noqa: E402
from harvest.rollout.batch import TIMESTAMP_DTYPE, BatchSchema, TransitionBatch  # noqa: E402
from harvest.rollout.config import ReplayConfig  # noqa: E402
from harvest.rollout.replay.shard import ReplayShard  # noqa: E402

INSERT_ROWS = 1_000
SAMPLE_ROWS = 256
DISTINCT_BATCHES = 4
"""Pre-built batches inserted in turn (more would only cost memory: the content is random)."""


@dataclass(frozen=True)
class RowKind:
    name: str
    schema: BatchSchema
    capacity_rows: int
    episode_steps: int
    """Mean episode length, for the done flags and provenance columns."""


def row_kinds() -> list[RowKind]:
    cartpole = BatchSchema.for_spaces(gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2))
    generals = BatchSchema.for_spaces(
        gym.spaces.Box(0.0, np.inf, (9, 20, 20), np.float32),
        gym.spaces.Discrete(801),
        extras={"action_mask": ColumnSpec(np.bool_, (801,))},
    )
    # 20k Generals rows are ≈ 0.6 GB per library; three libraries are alive at once.
    return [RowKind("CartPole", cartpole, 100_000, 100), RowKind("9x20x20", generals, 20_000, 500)]


def random_batch(kind: RowKind, num_rows: int, first_episode_id: int, rng: np.random.Generator) -> TransitionBatch:
    """`num_rows` rows with plausible values: consecutive steps of episodes ending at random."""
    batch = kind.schema.empty(num_rows)
    columns = batch.columns
    obs = rng.standard_normal((num_rows + 1, *kind.schema.columns["obs"].shape), dtype=np.float32)
    columns["obs"][:] = obs[:-1]
    columns["next_obs"][:] = obs[1:]
    num_actions = int(kind.schema.action_space.n)
    columns["action"][:] = rng.integers(0, num_actions, num_rows)
    columns["reward"][:] = rng.standard_normal(num_rows, dtype=np.float32)
    done = rng.random(num_rows) < 1.0 / kind.episode_steps
    columns["terminated"][:] = done & (rng.random(num_rows) < 0.9)
    columns["truncated"][:] = done & ~columns["terminated"]
    starts = np.concatenate([[0], np.flatnonzero(done[:-1]) + 1])
    episode_index = np.cumsum(np.isin(np.arange(num_rows), starts)) - 1
    columns["episode_id"][:] = first_episode_id + episode_index
    columns["step"][:] = np.arange(num_rows) - starts[episode_index]
    columns["collector_id"][:] = 0
    columns["policy_version"][:] = 0
    columns["timestamp"][:] = np.datetime64("2026-01-01T00:00:00", "ns") + np.arange(num_rows) * np.timedelta64(
        250, "us"
    )
    if "action_mask" in columns:
        mask = rng.random((num_rows, num_actions)) < 0.1
        mask[np.arange(num_rows), columns["action"]] = True  # the action taken was legal
        columns["action_mask"][:] = mask
    return batch


def numpy_columns(batch: TransitionBatch) -> dict[str, np.ndarray]:
    """The batch's columns with timestamps as int64 (torch and cpprb have no datetime type)."""
    return {
        name: column.view(np.int64) if column.dtype == TIMESTAMP_DTYPE else column
        for name, column in batch.columns.items()
    }


class Contender:
    """One replay under test: `insert(i)` stores pre-built batch i, `sample(i)` draws (and updates)."""

    label: str
    library: str

    def insert(self, index: int) -> None:
        raise NotImplementedError

    def sample(self, index: int) -> None:
        raise NotImplementedError

    def storage_bytes(self) -> int | None:
        return None


class HarvestShard(Contender):
    library = "harvest"

    def __init__(
        self,
        kind: RowKind,
        sampler: str,
        batches: list[TransitionBatch],
        td_errors: np.ndarray,
        compression: str | None = None,
    ) -> None:
        self.label = f"harvest ReplayShard ({sampler}{', obs ' + compression if compression else ''})"
        # As many CPUs as torch's intra-op threads get (os.cpu_count()): large copies use them.
        self.cfg = ReplayConfig(
            num_shards=1,
            capacity_rows=kind.capacity_rows,
            sampler=sampler,
            num_cpus=os.cpu_count(),
            compression={"obs": compression, "next_obs": compression} if compression else {},
        )
        self.shard = ReplayShard(self.cfg, kind.schema, seed=0)
        self.batches, self.td_errors = batches, td_errors
        self.prioritized = sampler == "prioritized"
        self.next_batch_id = 0

    def insert(self, index: int) -> None:
        # Increasing batch ids, as collectors send them: the shard keeps acks to spot retries.
        self.shard.insert(self.batches[index % len(self.batches)], source="bench", batch_id=self.next_batch_id)
        self.next_batch_id += 1

    def sample(self, index: int) -> None:
        batch = self.shard.sample(SAMPLE_ROWS)
        if self.prioritized:
            self.shard.update_priorities(batch["key"], self.td_errors[index % len(self.td_errors)])

    def storage_bytes(self) -> int:
        return self.shard.stats().memory_bytes


class TorchRLBuffer(Contender):
    library = "torchrl"

    def __init__(self, kind: RowKind, sampler: str, batches: list[TransitionBatch], td_errors: np.ndarray) -> None:
        import torch
        from tensordict import TensorDict
        from torchrl.data import LazyTensorStorage, PrioritizedReplayBuffer, ReplayBuffer

        storage = LazyTensorStorage(kind.capacity_rows)
        if sampler == "prioritized":
            config = ReplayConfig()
            self.label = "TorchRL PrioritizedReplayBuffer + LazyTensorStorage"
            self.buffer = PrioritizedReplayBuffer(
                alpha=config.priority_alpha,
                beta=config.priority_beta,
                eps=config.priority_eps,
                storage=storage,
                batch_size=SAMPLE_ROWS,
            )
        else:
            self.label = "TorchRL ReplayBuffer + LazyTensorStorage"
            self.buffer = ReplayBuffer(storage=storage, batch_size=SAMPLE_ROWS)
        self.prioritized = sampler == "prioritized"
        self.batches = [
            TensorDict(
                {name: torch.from_numpy(column) for name, column in numpy_columns(batch).items()},
                batch_size=[batch.num_rows],
            )
            for batch in batches
        ]
        self.priorities = [torch.from_numpy(np.abs(errors) + ReplayConfig().priority_eps) for errors in td_errors]

    def insert(self, index: int) -> None:
        self.buffer.extend(self.batches[index % len(self.batches)])

    def sample(self, index: int) -> None:
        batch = self.buffer.sample()
        if self.prioritized:
            self.buffer.update_priority(batch["index"], self.priorities[index % len(self.priorities)])

    def storage_bytes(self) -> int:
        tensors = self.buffer.storage._storage  # LazyTensorStorage keeps one TensorDict of capacity rows
        return sum(tensor.nbytes for tensor in tensors.values(include_nested=True, leaves_only=True))


class CpprbBuffer(Contender):
    library = "cpprb"

    def __init__(self, kind: RowKind, sampler: str, batches: list[TransitionBatch], td_errors: np.ndarray) -> None:
        import cpprb

        env_dict = {
            name: {"shape": spec.shape or 1, "dtype": np.int64 if spec.dtype == TIMESTAMP_DTYPE else spec.dtype}
            for name, spec in kind.schema.columns.items()
        }
        config = ReplayConfig()
        self.prioritized = sampler == "prioritized"
        if self.prioritized:
            self.label = "cpprb PrioritizedReplayBuffer"
            self.buffer = cpprb.PrioritizedReplayBuffer(
                kind.capacity_rows, env_dict, alpha=config.priority_alpha, eps=config.priority_eps
            )
        else:
            self.label = "cpprb ReplayBuffer"
            self.buffer = cpprb.ReplayBuffer(kind.capacity_rows, env_dict)
        self.beta = config.priority_beta
        self.batches = [numpy_columns(batch) for batch in batches]
        self.priorities = [np.abs(errors) + config.priority_eps for errors in td_errors]

    def insert(self, index: int) -> None:
        self.buffer.add(**self.batches[index % len(self.batches)])

    def sample(self, index: int) -> None:
        if self.prioritized:
            batch = self.buffer.sample(SAMPLE_ROWS, beta=self.beta)
            self.buffer.update_priorities(batch["indexes"], self.priorities[index % len(self.priorities)])
        else:
            self.buffer.sample(SAMPLE_ROWS)


def rows_per_s(operation: Callable[[int], None], rows_per_call: int, seconds: float) -> float:
    """Rows per second of `operation(0), operation(1), ...` called for about `seconds`."""
    calls, started = 0, time.perf_counter()
    while True:
        operation(calls)
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return calls * rows_per_call / elapsed


def torchrl_prioritized_failure() -> str | None:
    """Why TorchRL's PrioritizedReplayBuffer cannot run here, in one line; None if it can."""
    from torchrl.data import LazyTensorStorage, PrioritizedReplayBuffer

    try:
        PrioritizedReplayBuffer(alpha=0.6, beta=0.4, storage=LazyTensorStorage(16))
    except RuntimeError as err:
        reason = f"{type(err).__name__}: {str(err).split('. ')[0]}"
        try:
            import torchrl._torchrl  # noqa: F401  (the compiled extension its sum tree lives in)
        except ImportError as import_err:
            import torch

            cause = "undefined symbol" if "undefined symbol" in str(import_err) else str(import_err)[:120]
            reason += f" (its C++ extension torchrl._torchrl does not load with torch {torch.__version__}: {cause})"
        return reason
    return None


@dataclass
class Measured:
    kind: str
    sampler: str
    label: str
    library: str
    insert: list[float]
    sample: list[float]
    storage_bytes: int | None
    capacity_rows: int


def measure(
    kind: RowKind, sampler: str, makers: list[type[Contender]], seconds: float, repeats: int, rng: np.random.Generator
) -> list[Measured]:
    """Fill every contender to capacity, then time inserts and samples, taking turns each repeat."""
    batches = [random_batch(kind, INSERT_ROWS, 1_000_000 * index, rng) for index in range(DISTINCT_BATCHES)]
    td_errors = [rng.standard_normal(SAMPLE_ROWS) for _ in range(64)]
    contenders = [maker(kind, sampler, batches, td_errors) for maker in makers]
    for contender in contenders:
        for index in range(kind.capacity_rows // INSERT_ROWS + 1):  # fills the ring and wraps it once
            contender.insert(index)
        for index in range(10):
            contender.sample(index)
    results = [
        Measured(kind.name, sampler, c.label, c.library, [], [], c.storage_bytes(), kind.capacity_rows)
        for c in contenders
    ]
    for _ in range(repeats):
        for contender, result in zip(contenders, results):
            result.insert.append(rows_per_s(contender.insert, INSERT_ROWS, seconds))
        for contender, result in zip(contenders, results):
            result.sample.append(rows_per_s(contender.sample, SAMPLE_ROWS, seconds))
    logger.info(
        "{} {} rows/s, each repeat: {}",
        kind.name,
        sampler,
        "; ".join(
            f"{r.library} insert {', '.join(f'{rate:,.0f}' for rate in r.insert)} "
            f"sample {', '.join(f'{rate:,.0f}' for rate in r.sample)}"
            for r in results
        ),
    )
    del contenders, batches
    gc.collect()
    return results


def board_batches(kind: RowKind, rng: np.random.Generator) -> list[TransitionBatch]:
    """Generals-like rows: boards of small integers, zero where a tile is empty or unseen."""
    batches = [random_batch(kind, INSERT_ROWS, 1_000_000 * index, rng) for index in range(DISTINCT_BATCHES)]
    for batch in batches:
        boards = rng.integers(0, 60, (INSERT_ROWS + 1, 9, 20, 20)).astype(np.float32)
        boards[rng.random(boards.shape) < 0.85] = 0.0
        batch.columns["obs"][:], batch.columns["next_obs"][:] = boards[:-1], boards[1:]
    return batches


def compression_rows(kind: RowKind, seconds: float, repeats: int, rng: np.random.Generator) -> None:
    """Context, not a target: what per-column compression buys (bytes) and costs (rows/s)."""
    batches = board_batches(kind, rng)
    print(
        f"compression of obs and next_obs ({kind.name}, Generals-like boards: 85 % empty tiles); "
        "raw bytes/row is the reference"
    )
    print(f"{'library':<52} {'insert rows/s':>14} {'sample rows/s':>14} {'bytes/row':>10} {'/ raw':>7}")
    for codec in (None, "lz4", "zstd"):
        shard = HarvestShard(kind, "uniform", batches, np.zeros(0), compression=codec)
        for index in range(kind.capacity_rows // INSERT_ROWS + 1):
            shard.insert(index)
        inserts = [rows_per_s(shard.insert, INSERT_ROWS, seconds) for _ in range(repeats)]
        samples = [rows_per_s(shard.sample, SAMPLE_ROWS, seconds) for _ in range(repeats)]
        report = shard.shard.memory()
        print(
            f"{shard.label:<52} {statistics.median(inserts):>14,.0f} {statistics.median(samples):>14,.0f} "
            f"{report['bytes_per_row']:>10,.0f} {report['bytes_per_row'] / kind.schema.row_bytes:>7.2f}"
        )
        del shard
        gc.collect()


def print_throughput(results: list[Measured]) -> list[str]:
    """The throughput table; returns the rows where Harvest is below its reference."""
    header = (
        f"{'rows':<9} {'sampler':<12} {'library':<52} {'insert rows/s':>14} {'sample rows/s':>14}  "
        "harvest / this (insert, sample)"
    )
    print(header)
    print("-" * len(header))
    below = []
    for kind, sampler in dict.fromkeys((r.kind, r.sampler) for r in results):
        group = [r for r in results if (r.kind, r.sampler) == (kind, sampler)]
        harvest = next(r for r in group if r.library == "harvest")
        reference = next((r for r in group if r.library == "torchrl"), None) or next(
            (r for r in group if r.library == "cpprb"), None
        )
        for result in group:
            insert, sample = statistics.median(result.insert), statistics.median(result.sample)
            ratio = ""
            if result is not harvest:
                insert_ratio = statistics.median(harvest.insert) / insert
                sample_ratio = statistics.median(harvest.sample) / sample
                ratio = f"{insert_ratio:5.2f}x {sample_ratio:5.2f}x" + ("   <- reference" * (result is reference))
                if result is reference:
                    below += [
                        f"{kind} {sampler} {what}: {value:.2f}x {result.library}"
                        for what, value in (("insert", insert_ratio), ("sample", sample_ratio))
                        if value < 1.0
                    ]
            print(f"{kind:<9} {sampler:<12} {result.label:<52} {insert:>14,.0f} {sample:>14,.0f}  {ratio}")
    return below


def print_memory(results: list[Measured], kinds: list[RowKind]) -> None:
    print(
        f"{'rows':<9} {'capacity':>9} {'raw bytes/row':>14} {'harvest bytes/row':>18} {'harvest / raw':>14} "
        f"{'TorchRL bytes/row':>18} {'TorchRL / raw':>14}"
    )
    for kind in kinds:
        raw = kind.schema.row_bytes
        group = [r for r in results if r.kind == kind.name and r.sampler == "uniform"]
        harvest = next(r for r in group if r.library == "harvest")
        torchrl = next((r for r in group if r.library == "torchrl"), None)
        harvest_per_row = harvest.storage_bytes / harvest.capacity_rows
        torchrl_text = (
            (
                f"{torchrl.storage_bytes / torchrl.capacity_rows:>18,.1f} "
                f"{torchrl.storage_bytes / torchrl.capacity_rows / raw:>14.2f}"
            )
            if torchrl
            else f"{'n/a':>18}"
        )
        print(
            f"{kind.name:<9} {kind.capacity_rows:>9,} {raw:>14,} {harvest_per_row:>18,.1f} "
            f"{harvest_per_row / raw:>14.2f} {torchrl_text}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="short measurements (0.2 s, 2 repeats), for a smoke run")
    args = parser.parse_args()
    seconds, repeats = (0.2, 2) if args.quick else (args.seconds, args.repeats)
    # A shard applies these allocator settings to its process; apply them first so every
    # library runs under the same allocator.
    keep_batch_buffers_on_heap()

    notes = []
    makers: dict[str, list[type[Contender]]] = {"uniform": [HarvestShard], "prioritized": [HarvestShard]}
    try:
        import tensordict  # noqa: F401
        import torchrl
    except ImportError as err:
        notes.append(f"TorchRL: not installed ({err}); its rows are skipped (pip install -e '.[bench]')")
    else:
        logging.getLogger("torchrl").setLevel(logging.WARNING)  # set on import; one INFO line per storage otherwise
        makers["uniform"].append(TorchRLBuffer)
        failure = torchrl_prioritized_failure()
        if failure is None:
            makers["prioritized"].append(TorchRLBuffer)
        else:
            notes.append(
                f"TorchRL {torchrl.__version__} PrioritizedReplayBuffer: not run, {failure}; "
                "cpprb is the prioritized reference"
            )
    try:
        import cpprb  # noqa: F401
    except ImportError as err:
        notes.append(f"cpprb: not installed ({err}); its rows are skipped (pip install -e '.[bench]')")
    else:
        makers["uniform"].append(CpprbBuffer)
        makers["prioritized"].append(CpprbBuffer)

    rng = np.random.default_rng(0)
    kinds = row_kinds()
    started = time.perf_counter()
    results = [
        result
        for kind in kinds
        for sampler in ("uniform", "prioritized")
        for result in measure(kind, sampler, makers[sampler], seconds, repeats, rng)
    ]

    try:
        import torch

        threads = f"; torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        threads = ""
    print(
        f"machine: {os.cpu_count()} cores{threads}; inserts of {INSERT_ROWS:,} rows, samples of {SAMPLE_ROWS} "
        f"(prioritized: + a priority update); median of {repeats} x {seconds:g} s; "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    for note in notes:
        print(note)
    print()
    below = print_throughput(results)
    print()
    print_memory(results, kinds)
    print()
    print()
    compression_rows(kinds[1], seconds, repeats, rng)
    print()
    print(
        "target harvest >= 1x the reference on every row: "
        + ("met" if not below else f"missed on {len(below)}: " + "; ".join(below))
    )


if __name__ == "__main__":
    main()
