"""The compact stage: the replay (or its snapshot) becomes the run's dataset folder."""

from __future__ import annotations

import json

from loguru import logger

from harvest.aggregation.compact import compact_replay
from harvest.aggregation.dataset import Dataset
from harvest.aggregation.manifest import Manifest
from harvest.aggregation.rotate import Rotation
from harvest.cluster.config import RunConfig
from harvest.cluster.logging import console
from harvest.cluster.run_folder import RunPaths
from harvest.rollout.batch import BatchSchema
from harvest.rollout.env_kinds import env_kind


def compact(
    sources: list, schema: BatchSchema, cfg: RunConfig, run_id: str, paths: RunPaths, rotation: Rotation | None = None
) -> Manifest:
    """Write the dataset folder (Parquet + manifest, other formats on request) from shards or
    snapshots, or finish the `rotation` that has been writing it during the run."""
    if rotation is not None:
        formats = " + ".join(name.upper() for name in cfg.aggregation.formats if name != "parquet")
        with console.status("[bold]compact[/] writing the last rotation" + f" + {formats}" * bool(formats)):
            manifest = rotation.finish()
    else:  # (a bar with rows/s as the shards' tasks finish)
        manifest = compact_replay(
            sources,
            schema,
            paths.dataset,
            cfg.aggregation,
            run_id,
            cfg.env.id,
            description=env_kind(cfg.env).describe(cfg.env, cfg.run.seed),
        )
    logger.info(
        "dataset {}: {:,} rows, {} episodes ({} complete), {} Parquet files{}",
        paths.dataset,
        manifest.rows,
        manifest.episodes,
        manifest.episodes_complete,
        len(manifest.files),
        "".join(f", {name}" for name in manifest.formats.values()),
    )
    return manifest


def compact_snapshot(cfg: RunConfig, run_id: str, paths: RunPaths) -> Manifest:
    """`harvest compact`: the dataset from a snapshot that `harvest collect` wrote."""
    snapshots = sorted(paths.replay_snapshot.glob("shard-*.arrow"))
    schema_path = paths.replay_snapshot / "schema.json"
    if not snapshots or not schema_path.is_file():
        raise FileNotFoundError(
            f"{paths.replay_snapshot}: no replay snapshot (shard-*.arrow and schema.json); run `harvest collect` first"
        )
    schema = BatchSchema.from_json(json.loads(schema_path.read_text()))
    return compact([str(path) for path in snapshots], schema, cfg, run_id, paths)


def finished_dataset(paths: RunPaths) -> Manifest | None:
    """The run's dataset manifest if compaction finished (not a rotation still in progress)."""
    try:
        manifest = Dataset.open(paths.dataset).manifest
    except (FileNotFoundError, ValueError, OSError):
        return None
    return None if getattr(manifest, "in_progress", False) else manifest
