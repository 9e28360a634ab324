"""Editing datasets: filter, delete episodes, split, re-partition and merge. Each writes a new
dataset (never touching its sources) whose manifest lists them under `parents`.

All of them stream file by file: every Parquet file holds whole episodes, so a file is read
(checked against its source's manifest), its rows are selected by episode, and they are
written again with the output's partitioning and file size (`compact_source`, the code
compaction uses). The output is written all-or-nothing (a failed edit leaves nothing at `out`)
and never over an existing dataset.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from loguru import logger

from harvest.aggregation.compact import ShardCompaction, check_new_dataset, compact_source, finish_dataset
from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.dataset import Dataset
from harvest.aggregation.manifest import MANIFEST_NAME, Manifest
from harvest.aggregation.storage import Location, location, staged_folder
from harvest.cluster.logging import track
from harvest.rollout.batch import TransitionBatch
from harvest.rollout.episode_filter import EpisodeFilter, FilterReport, filter_table

Selector = Callable[[pa.Table], pa.Table]


def _layout(
    dataset: Dataset, partition_by: list[str] | None = None, rows_per_file: int | None = None
) -> AggregationConfig:
    """An output config that keeps the source's layout unless told otherwise."""
    rows = max((entry.rows for entry in dataset.manifest.files), default=500_000)
    return AggregationConfig(
        formats=["parquet"],
        partition_by=list(dataset.manifest.partition_by if partition_by is None else partition_by),
        rows_per_file=rows_per_file or max(rows, 1),
        image_compression=dict(dataset.manifest.image_columns),
    )


def rewrite(
    sources: list[Dataset],
    out: str | Path | Location,
    select: Selector,
    cfg: AggregationConfig,
    run_id: str,
    operation: str,
    filtered: Callable[[], dict] | None = None,
) -> Manifest:
    """Every file of `sources`, through `select`, written as one new dataset at `out`
    (`filtered()`, asked once every file is through, describes what a filter kept).

    Raises:
        DatasetExistsError: a dataset is already at `out`.
        DatasetIntegrityError: a source file differs from its manifest (nothing is left at `out`).
    """
    out = location(out)
    check_new_dataset(out)
    schema = sources[0].schema
    results: list[ShardCompaction] = []
    with staged_folder(out, last=MANIFEST_NAME) as staging:
        files = [(dataset, entry) for dataset in sources for entry in dataset.entries]
        for dataset, entry in track(
            files, operation, "rows", sum(entry.rows for _, entry in files), lambda file: file[1].rows
        ):
            table = select(dataset.read_file(entry))
            if dataset.manifest.image_columns:  # back to pixels; the output encodes them again
                table = pa.Table.from_batches([TransitionBatch.from_arrow(table).to_arrow(schema)])
            results.append(compact_source(table.to_batches(), schema, len(results), staging, cfg))
        manifest = finish_dataset(
            results,
            schema,
            staging,
            cfg,
            run_id,
            sources[0].manifest.env_id,
            parents=[str(dataset.folder) for dataset in sources],
            filtered=filtered() if filtered is not None else None,
        )
    logger.info(
        "{} {} -> {}: {:,} rows, {} episodes",
        operation,
        ", ".join(str(d.folder) for d in sources),
        out,
        manifest.rows,
        manifest.episodes,
    )
    return manifest


def _edit_id(operation: str) -> str:
    return f"{operation}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _episodes_in(episode_ids: pa.Array) -> Selector:
    """Keeps the rows of these episodes."""
    return lambda table: table.filter(pc.is_in(table["episode_id"], value_set=episode_ids))


def filter_dataset(dataset: Dataset, out: str | Path | Location, criteria: EpisodeFilter) -> Manifest:
    """The episodes that pass `criteria` (dedupe across the whole dataset)."""
    seen: set[str] = set()
    totals = FilterReport()

    def select(table: pa.Table) -> pa.Table:
        nonlocal totals
        kept, report = filter_table(
            table, criteria, seen, obs_action=[*dataset.schema.obs_columns, *dataset.schema.action_columns]
        )
        totals = totals.merge(report)
        return kept

    criteria_json = {
        key: value.isoformat() if isinstance(value, datetime) else value for key, value in asdict(criteria).items()
    }
    manifest = rewrite(
        [dataset],
        out,
        select,
        _layout(dataset),
        _edit_id("filter"),
        "filter",
        filtered=lambda: {**asdict(totals), "criteria": criteria_json},
    )
    logger.info(
        "filter kept {} of {} episodes; dropped {}", totals.kept_episodes, totals.episodes, totals.dropped or "none"
    )
    return manifest


def delete_episodes(dataset: Dataset, out: str | Path | Location, episode_ids: list[int]) -> Manifest:
    """Every episode but `episode_ids` (ids the dataset does not have are an error)."""
    present = np.unique(dataset.read_columns(["episode_id"])["episode_id"])
    unknown = sorted(set(int(i) for i in episode_ids) - set(present.tolist()))
    if unknown:
        raise ValueError(f"{dataset.folder}: no episodes {unknown[:10]}{' ...' if len(unknown) > 10 else ''}")
    drop = pa.array(np.asarray(episode_ids, np.int64))
    return rewrite(
        [dataset],
        out,
        lambda t: t.filter(pc.invert(pc.is_in(t["episode_id"], value_set=drop))),
        _layout(dataset),
        _edit_id("delete"),
        "delete",
    )


def split_dataset(
    dataset: Dataset, out: str | Path | Location, fractions: dict[str, float], seed: int = 0
) -> dict[str, Manifest]:
    """Whole episodes shuffled with `seed` and dealt into `out/<name>` by `fractions` (e.g.
    {train: 0.8, validation: 0.1, test: 0.1}; they must sum to 1)."""
    if not fractions or any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise ValueError(f"split fractions {fractions} must be non-negative and sum to 1")
    ids = np.unique(dataset.read_columns(["episode_id"])["episode_id"])
    shuffled = np.random.default_rng(seed).permutation(ids)
    bounds = np.round(np.cumsum([0.0, *fractions.values()]) * ids.size).astype(int)
    root = location(out)
    manifests = {}
    for (name, _), low, high in zip(fractions.items(), bounds[:-1], bounds[1:]):
        mine = pa.array(np.sort(shuffled[low:high]))
        manifests[name] = rewrite(
            [dataset],
            root.join(name),
            _episodes_in(mine),
            _layout(dataset),
            _edit_id(f"split-{name}"),
            f"split {name}",
        )
    return manifests


def repartition(
    dataset: Dataset, out: str | Path | Location, partition_by: list[str], rows_per_file: int | None = None
) -> Manifest:
    """The same rows, laid out by `partition_by` (and cut at `rows_per_file`)."""
    return rewrite(
        [dataset],
        out,
        lambda t: t,
        _layout(dataset, partition_by, rows_per_file),
        _edit_id("repartition"),
        "repartition",
    )


def schema_differences(first: Dataset, other: Dataset) -> list[str]:
    """Human-readable differences between two datasets' columns and spaces ([] when compatible)."""
    mine, theirs = first.schema.to_json(), other.schema.to_json()
    problems = []
    for name in sorted(set(mine["columns"]) | set(theirs["columns"])):
        a, b = mine["columns"].get(name), theirs["columns"].get(name)
        if a != b:
            problems.append(f"{name}: {a or 'missing'} in {first.folder} vs {b or 'missing'} in {other.folder}")
    for space in ("observation_space", "action_space"):
        if mine[space] != theirs[space]:
            problems.append(f"{space}: {mine[space]} vs {theirs[space]}")
    return problems


def merge_datasets(datasets: list[Dataset], out: str | Path | Location) -> Manifest:
    """One dataset with every episode of `datasets` (same columns and spaces; distinct episode ids)."""
    if len(datasets) < 2:
        raise ValueError("merge needs at least two datasets")
    for other in datasets[1:]:
        problems = schema_differences(datasets[0], other)
        if problems:
            raise ValueError("merge: the schemas differ:\n  " + "\n  ".join(problems))
    seen: dict[int, str] = {}
    for dataset in datasets:
        for episode_id in np.unique(dataset.read_columns(["episode_id"])["episode_id"]).tolist():
            if episode_id in seen:
                raise ValueError(f"merge: episode {episode_id} is in both {seen[episode_id]} and {dataset.folder}")
            seen[episode_id] = str(dataset.folder)
    return rewrite(datasets, out, lambda t: t, _layout(datasets[0]), _edit_id("merge"), "merge")
