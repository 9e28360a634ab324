"""`harvest import robocode-json`: the Robocode teams' game-state JSON files → a Harvest dataset.

Each file is one battle (`expert_game_states_<collector>_<timestamp>.json`, as the collectors
and the seeds' containers write them); every robot-round becomes an episode with the same
columns the collectors push (`rollout.robocode_collector.robocode_schema()`). A malformed file
is named with its entry and skipped, the other files are still imported; NaN/inf values are kept
and flagged per file and column (see `aggregation.importers`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from loguru import logger

from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.importers.result import ImportLog, ImportResult, flag_nonfinite, unique_files
from harvest.aggregation.robocode_npz import NPZ_NAME, write_dataset_npz
from harvest.cluster.logging import track
from harvest.envs.robocode.team_files import TeamFileError, read_team_file
from harvest.rollout.cutter import EpisodeIds
from harvest.rollout.robocode_collector import robocode_schema, robot_rounds, rows_of_rounds

IMPORT_ENV_ID = "robocode"
_COLLECTOR = re.compile(r"expert_game_states_(\d+)_")


def team_json_files(paths: list[str | Path]) -> list[Path]:
    """The JSON files named, and those inside named folders (recursively, sorted), in order."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(path.rglob("*.json"))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files


def import_robocode_json(
    paths: list[str | Path], out_dir: str | Path, run_id: str = "import", cfg: AggregationConfig | None = None
) -> ImportResult:
    """Write the dataset folder `out_dir` (Parquet + manifest + `_aggregated_expert_data.npz`)
    from the teams' game-state JSON files; `seed` is -1 (unknown), `battle_id` the file's index.

    Raises:
        TeamFileError: no file is importable (every file's problem, one line each); nothing is written.
    """
    cfg = cfg or AggregationConfig(formats=["parquet"])
    report = ImportLog()
    schema, batches = robocode_schema(), []
    episode_ids = EpisodeIds(0)
    for index, path in enumerate(track(unique_files(team_json_files(paths), report), "import", "files")):
        try:
            parts = robot_rounds(read_team_file(path))
            if not parts:
                raise TeamFileError(f"{path}: no robot-round with two turns or more; nothing to import")
        except TeamFileError as err:
            report.errors.append(str(err))
            logger.warning("skipped {}", err)
            continue
        match = _COLLECTOR.match(path.name)
        collector_id = int(match.group(1)) if match else 0
        batch = rows_of_rounds(
            parts,
            episode_ids.next(len(parts)),
            collector_id,
            index,
            -1,
            np.datetime64(int(path.stat().st_mtime_ns), "ns"),
        )
        flag_nonfinite(str(path), {name: batch.columns[name] for name in ("obs", "action", "reward")}, report)
        batches.append(batch)
        report.files.append(str(path))
    if not report.files:
        raise TeamFileError(
            f"no importable Robocode game-state files in {[str(p) for p in paths]}: "
            + "; ".join(report.errors or ["no .json files"])
        )
    from harvest.aggregation.compact import write_dataset

    manifest = write_dataset(batches, schema, Path(out_dir), cfg, run_id, IMPORT_ENV_ID)
    write_dataset_npz(out_dir, Path(out_dir) / NPZ_NAME, f"imported from {len(report.files)} Robocode game-state files")
    for warning in report.warnings:
        logger.warning("flagged: {}", warning)
    logger.info(
        "imported {} files ({} rows, {} episodes) into {}; {} files skipped, {} flagged",
        len(report.files),
        manifest.rows,
        manifest.episodes,
        out_dir,
        len(report.errors),
        len(report.warnings),
    )
    return ImportResult(report.files, report.errors, report.warnings, manifest=manifest)
