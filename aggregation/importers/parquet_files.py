"""`harvest import parquet`: loose Parquet files written by Harvest (e.g. copied out of datasets)
into one dataset. The schema most files share is the dataset's; a file that is damaged, has
another schema, holds no rows or repeats episodes an earlier file gave is named and left out."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa

from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.importers.result import (
    ImportFormatError,
    ImportLog,
    ImportResult,
    finish_import,
    flag_nonfinite,
    unique_files,
)
from harvest.cluster.logging import track
from harvest.envs.spaces import ColumnSpec
from harvest.rollout.batch import BatchSchema, TransitionBatch


def import_parquet(paths: list[str | Path], out: str | Path, cfg: AggregationConfig | None = None) -> ImportResult:
    """Loose Parquet files written by Harvest (e.g. copied out of datasets) → one dataset; a
    file that is damaged, has another schema, holds no rows or repeats episodes an earlier file
    gave (the rule of `harvest edit merge`: an episode comes from one source) is named and left out."""
    found = [p for path in map(Path, paths) for p in (sorted(path.rglob("*.parquet")) if path.is_dir() else [path])]
    missing = [str(p) for p in found if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{missing}: no such files")
    result = ImportLog()
    readable = _readable_files(found, result)
    # The schema most files share is the dataset's (ties: the first file's); the others are named.
    keys = [json.dumps(file_schema.to_json(), sort_keys=True) for _, _, file_schema in readable]
    chosen = max(keys, key=keys.count) if keys else None
    schema, batches = None, []
    reference = readable[keys.index(chosen)][2].columns if chosen is not None else {}
    episode_source: dict[int, Path] = {}
    for (file, table, file_schema), key in zip(readable, keys):
        problem = _parquet_problem(file, table, file_schema, key == chosen, reference, episode_source)
        if problem is not None:
            result.errors.append(problem)
            continue
        schema = file_schema
        batch = TransitionBatch.from_arrow(table)
        batches.append(batch)
        result.files.append(str(file))
        flag_nonfinite(
            str(file),
            {name: batch.columns[name] for name in [*file_schema.obs_columns, *file_schema.action_columns, "reward"]},
            result,
        )
    if schema is None:
        raise ImportFormatError(
            f"no importable Parquet files in {[str(p) for p in paths]}: "
            + "; ".join(result.errors or ["no .parquet files"])
        )
    return finish_import(batches, schema, out, "parquet", result, "Parquet files", cfg, [str(p) for p in paths])


def _readable_files(found: list[Path], result: ImportLog) -> list[tuple[Path, pa.Table, BatchSchema]]:
    """Each file's table and schema, once it reads as Parquet with columns Harvest writes; the
    others are named in `result.errors`."""
    import pyarrow.parquet as pq

    from harvest.rollout.batch import BatchSchemaError

    readable = []
    for file in track(unique_files(found, result), "import", "files"):
        try:
            table = pq.read_table(file)
            readable.append((file, table, BatchSchema.from_arrow_schema(table.schema)))
        except (pa.ArrowInvalid, OSError) as err:
            result.errors.append(f"{file}: not a readable Parquet file (truncated?): {err}")
        except BatchSchemaError as err:
            result.errors.append(f"{file}: {err}; not a file Harvest wrote")
    return readable


def _parquet_problem(
    file: Path,
    table: pa.Table,
    file_schema: BatchSchema,
    same_schema: bool,
    reference: Mapping[str, ColumnSpec],
    episode_source: dict[int, Path],
) -> str | None:
    """Why `file` is left out (columns unlike the dataset's `reference`, no rows, or episodes an
    earlier file gave), or None: then its episodes are recorded in `episode_source`."""
    if not same_schema:
        differing = sorted(
            name
            for name in set(file_schema.columns) | set(reference)
            if file_schema.columns.get(name) != reference.get(name)
        )
        return f"{file}: columns {differing} differ from the other files'"
    if table.num_rows == 0:
        return f"{file}: no rows; expected at least one transition"
    episode_ids = np.unique(table.column("episode_id").to_numpy()).tolist()
    repeated = [episode_id for episode_id in episode_ids if episode_id in episode_source]
    if repeated:
        return (
            f"{file}: episodes {repeated[:10]}{' ...' if len(repeated) > 10 else ''} are "
            f"also in {episode_source[repeated[0]]}; an episode comes from one file "
            "(as `harvest edit merge` requires)"
        )
    episode_source.update(dict.fromkeys(episode_ids, file))
    return None
